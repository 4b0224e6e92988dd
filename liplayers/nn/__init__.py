"""Drop-in modules mirroring ``torch.nn``: orthogonal and 1-Lipschitz layers, one family per file.

==========================  ============================================================  =========================
family                      classes                                                       file
==========================  ============================================================  =========================
Björck / spectral dense     ``BjorckLinear``, ``SpectralLinear``                          ``linear.py``
L∞ dense                    ``LInfLinear``                                                ``linf_linear.py``
almost-orthogonal (AOL)     ``AOLLinear``, ``AOLConv2d``                                  ``aol.py``
convex potential (CPL)      ``CPLLinear``, ``CPLConv2d``                                  ``cpl.py``
SDP-based residual (SLL)    ``SLLLinear``, ``SLLConv2d``                                  ``sll.py``
Cholesky                    ``CholeskyLinear``                                            ``cholesky.py``
block reflector (BRO)       ``BROLinear``, ``BROConv2d``                                  ``bro.py``
BCOP                        ``OrthoConv2d``                                               ``conv_bcop.py``
operator-normalized conv    ``SpectralConv2d``, ``RKOConv2d``                             ``conv_normalized.py``
skew-orthogonal (SOC)       ``SOCConv2d``                                                 ``soc.py``
Cayley                      ``CayleyConv2d``                                              ``cayley.py``
LOT                         ``LOTConv2d``                                                 ``lot.py``
transposed convolutions     ``OrthoConvTranspose2d``, ``SpectralConvTranspose2d``         ``conv_transpose.py``
centering                   ``BatchCentering2d``, ``LayerCentering2d``                    ``centering.py``
LiResNet / last layer       ``LinearResidualConv2d``, ``LastLayerNormalizedLinear``       ``residual_conv.py``, ``last_layer.py``
activations                 ``GroupSort``, ``MaxMin``, ``FullSort``, ``HouseholderActivation``  ``activation.py``, ``householder.py``
pooling                     ``L2NormPool2d``, ``ScaledAvgPool2d``, ``GlobalL2Pool2d``, ...  ``pooling.py``
containers                  ``Sequential``, ``Residual``; ``export``                      ``container.py``, ``export.py``
==========================  ============================================================  =========================
"""
from .activation import FullSort, GroupSort, MaxMin
from .aol import AOLConv2d, AOLLinear
from .bro import BROConv2d, BROLinear
from .cayley import CayleyConv2d
from .centering import BatchCentering2d, LayerCentering2d
from .cholesky import CholeskyLinear
from .container import Residual, Sequential
from .conv_bcop import OrthoConv2d
from .conv_normalized import RKOConv2d, SpectralConv2d
from .conv_transpose import OrthoConvTranspose2d, SpectralConvTranspose2d
from .cpl import CPLConv2d, CPLLinear
from .export import export
from .householder import HouseholderActivation
from .last_layer import LastLayerNormalizedLinear
from .linear import BjorckLinear, SpectralLinear
from .linf_linear import LInfLinear
from .lot import LOTConv2d
from .pooling import GlobalL2Pool2d, InvertibleDownsampling, InvertibleUpsampling, L2NormPool2d, ScaledAvgPool2d
from .residual_conv import LinearResidualConv2d
from .sll import SLLConv2d, SLLLinear
from .soc import SOCConv2d

__all__ = [
    "BjorckLinear", "SpectralLinear", "LInfLinear", "AOLLinear", "CPLLinear", "SLLLinear", "CholeskyLinear",
    "BROLinear", "LastLayerNormalizedLinear",
    "OrthoConv2d", "SpectralConv2d", "RKOConv2d", "AOLConv2d", "CPLConv2d", "SLLConv2d", "SOCConv2d",
    "CayleyConv2d", "BROConv2d", "LOTConv2d", "LinearResidualConv2d",
    "OrthoConvTranspose2d", "SpectralConvTranspose2d", "BatchCentering2d", "LayerCentering2d",
    "GroupSort", "MaxMin", "FullSort", "HouseholderActivation",
    "L2NormPool2d", "ScaledAvgPool2d", "GlobalL2Pool2d", "InvertibleDownsampling", "InvertibleUpsampling",
    "Sequential", "Residual", "export",
]
