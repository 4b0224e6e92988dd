"""liplayers: orthogonal and 1-Lipschitz layers for PyTorch with sound robustness certificates.

Public layers are importable from the top level; the pure tensor algorithms live in
:mod:`liplayers.functional`.
"""
from . import functional
from .activations import FullSort, GroupSort, MaxMin
from .containers import Sequential
from .export import export
from .linear import BjorckLinear, SpectralLinear
from .lipschitz import LipschitzModule, UnboundedModuleError, lipschitz_bound_of, register_lipschitz_bound
from .parametrizations import BjorckOrthonormal, SpectralNormalized
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
    "export",
    "LipschitzModule",
    "UnboundedModuleError",
    "lipschitz_bound_of",
    "register_lipschitz_bound",
    # issue 9
    "HouseholderActivation",
    "L1BallRows",
    "LInfLinear",
    "linf_lipschitz_bound_of",
    "register_linf_lipschitz_bound",
]
