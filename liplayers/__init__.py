"""liplayers: orthogonal and 1-Lipschitz layers for PyTorch with sound robustness certificates.

Public layers are importable from the top level; the pure tensor algorithms live in
:mod:`liplayers.functional`.
"""
from . import functional
from .activations import FullSort, GroupSort, MaxMin
from .containers import Residual, Sequential
from .export import export
from .linear import BjorckLinear, SpectralLinear
from .lipschitz import LipschitzModule, UnboundedModuleError, lipschitz_bound_of, register_lipschitz_bound
from .parametrizations import BjorckOrthonormal, SpectralNormalized
# --- convolutions, pooling, small GNP models (issue 5) ---
from .conv import OrthoConv2d, RKOConv2d, SpectralConv2d
from .models import gnp_conv_net, gnp_mlp
from .pooling import GlobalL2Pool2d, InvertibleDownsampling, InvertibleUpsampling, L2NormPool2d, ScaledAvgPool2d
# --- L∞-Lipschitz layers and the Householder activation (issue 9) ---
from .householder import HouseholderActivation
from .linf import L1BallRows, LInfLinear, linf_lipschitz_bound_of, register_linf_lipschitz_bound

__version__ = "0.1.0"

__all__ = [
    "functional",
    "BjorckLinear",
    "SpectralLinear",
    "BjorckOrthonormal",
    "SpectralNormalized",
    "GroupSort",
    "MaxMin",
    "FullSort",
    "Sequential",
    "Residual",
    "export",
    "LipschitzModule",
    "UnboundedModuleError",
    "lipschitz_bound_of",
    "register_lipschitz_bound",
    # issue 5
    "OrthoConv2d",
    "SpectralConv2d",
    "RKOConv2d",
    "L2NormPool2d",
    "ScaledAvgPool2d",
    "GlobalL2Pool2d",
    "InvertibleDownsampling",
    "InvertibleUpsampling",
    "gnp_conv_net",
    "gnp_mlp",
    # issue 9
    "HouseholderActivation",
    "L1BallRows",
    "LInfLinear",
    "linf_lipschitz_bound_of",
    "register_linf_lipschitz_bound",
]
