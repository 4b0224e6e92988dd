"""Pure tensor algorithms (no modules): orthonormalization, spectral norms and bounds."""
from .orthogonalization import bjorck, bjorck_step, default_tolerance, orthogonality_error
from .spectral import gram_spectral_bound, power_iteration, spectral_norm_exact

__all__ = [
    "bjorck",
    "bjorck_step",
    "default_tolerance",
    "orthogonality_error",
    "gram_spectral_bound",
    "power_iteration",
    "spectral_norm_exact",
]
