"""liplayers: orthogonal and 1-Lipschitz layers for PyTorch with sound robustness certificates.

Layout (nothing imports from a package listed after it):

* :mod:`liplayers.functional` — pure tensor algorithms (orthogonalization, spectral bounds,
  convolution symbols, BCOP kernels, L1 projection, Fisher–Rao geometry);
* :mod:`liplayers.parametrizations` — weight maps for ``torch.nn.utils.parametrize``;
* :mod:`liplayers.lipschitz` — the bound protocol, the registries and the bounds of torch types;
* :mod:`liplayers.nn` — drop-in modules mirroring ``torch.nn``;
* :mod:`liplayers.losses`, :mod:`liplayers.regularizers`, :mod:`liplayers.analysis`;
* :mod:`liplayers.certify` — certified radii and accuracy;
* the front: :mod:`liplayers.zoo`, :mod:`liplayers.train`, :mod:`liplayers.data`, :mod:`liplayers.cli`.

Public layers are importable from the top level.
"""
import sys as _sys

from . import functional, lipschitz, parametrizations
from .lipschitz import (
    LipschitzModule,
    UnboundedModuleError,
    linf_lipschitz_bound_of,
    lipschitz_bound_of,
    register_linf_lipschitz_bound,
    register_lipschitz_bound,
)
from .parametrizations import BjorckOrthonormal, SpectralNormalized
from .parametrizations.l1_ball import L1BallRows
from . import nn
from .nn import (
    AOLConv2d,
    AOLLinear,
    BROConv2d,
    BROLinear,
    BatchCentering2d,
    CayleyConv2d,
    CholeskyLinear,
    LayerCentering2d,
    LOTConv2d,
    OrthoConvTranspose2d,
    SpectralConvTranspose2d,
    CPLConv2d,
    CPLLinear,
    LastLayerNormalizedLinear,
    LinearResidualConv2d,
    SLLConv2d,
    SLLLinear,
    SOCConv2d,
    BjorckLinear,
    FullSort,
    GlobalL2Pool2d,
    GroupSort,
    HouseholderActivation,
    InvertibleDownsampling,
    InvertibleUpsampling,
    L2NormPool2d,
    LInfLinear,
    MaxMin,
    OrthoConv2d,
    Residual,
    RKOConv2d,
    ScaledAvgPool2d,
    Sequential,
    SpectralConv2d,
    SpectralLinear,
    export,
)
from . import analysis, zoo
from .onnx import export_onnx
from .zoo import gnp_conv_net, gnp_mlp

__version__ = "0.2.0"

# Module paths of version 0.1 (flat layout), kept importable; see CHANGELOG.md.
_MOVED = {
    "activations": nn.activation, "containers": nn.container, "linear": nn.linear, "householder": nn.householder,
    "pooling": nn.pooling, "linf": nn.linf_linear, "geometry": functional.geometry, "attacks": analysis.attacks,
    "curvature": analysis.curvature, "models": zoo.architectures,
}
for _old, _mod in _MOVED.items():
    _sys.modules.setdefault(f"{__name__}.{_old}", _mod)
    globals().setdefault(_old, _mod)
# liplayers.conv held the convolution layers (now in liplayers.nn); liplayers.export the function's module
_sys.modules.setdefault(f"{__name__}.conv", nn)
_sys.modules.setdefault(f"{__name__}.export", _sys.modules[f"{__name__}.nn.export"])
del _old, _mod

__all__ = [
    "functional", "parametrizations", "lipschitz", "nn", "analysis", "zoo",
    "BjorckLinear", "SpectralLinear", "LInfLinear", "BjorckOrthonormal", "SpectralNormalized", "L1BallRows",
    "OrthoConv2d", "SpectralConv2d", "RKOConv2d",
    "AOLLinear", "AOLConv2d", "CPLLinear", "CPLConv2d", "SLLLinear", "SLLConv2d", "SOCConv2d", "CayleyConv2d",
    "LOTConv2d", "OrthoConvTranspose2d", "SpectralConvTranspose2d", "BatchCentering2d", "LayerCentering2d",
    "BROLinear", "BROConv2d", "CholeskyLinear", "LinearResidualConv2d", "LastLayerNormalizedLinear",
    "GroupSort", "MaxMin", "FullSort", "HouseholderActivation",
    "L2NormPool2d", "ScaledAvgPool2d", "GlobalL2Pool2d", "InvertibleDownsampling", "InvertibleUpsampling",
    "Sequential", "Residual", "export", "export_onnx", "gnp_conv_net", "gnp_mlp",
    "LipschitzModule", "UnboundedModuleError", "lipschitz_bound_of", "register_lipschitz_bound",
    "linf_lipschitz_bound_of", "register_linf_lipschitz_bound",
]
