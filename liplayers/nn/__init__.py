"""Drop-in modules mirroring ``torch.nn``: 1-Lipschitz / orthogonal layers, one family per file."""
from .activation import FullSort, GroupSort, MaxMin
from .container import Residual, Sequential
from .conv_bcop import OrthoConv2d
from .conv_normalized import RKOConv2d, SpectralConv2d
from .export import export
from .householder import HouseholderActivation
from .linear import BjorckLinear, SpectralLinear
from .linf_linear import LInfLinear
from .pooling import GlobalL2Pool2d, InvertibleDownsampling, InvertibleUpsampling, L2NormPool2d, ScaledAvgPool2d

__all__ = [
    "BjorckLinear", "SpectralLinear", "LInfLinear",
    "OrthoConv2d", "SpectralConv2d", "RKOConv2d",
    "GroupSort", "MaxMin", "FullSort", "HouseholderActivation",
    "L2NormPool2d", "ScaledAvgPool2d", "GlobalL2Pool2d", "InvertibleDownsampling", "InvertibleUpsampling",
    "Sequential", "Residual", "export",
]
