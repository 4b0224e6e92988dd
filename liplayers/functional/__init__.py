"""Pure tensor algorithms (no modules): orthonormalization, spectral norms and bounds."""
from .l1_projection import l1_ball_threshold, project_l1_ball
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
    "project_l1_ball",
    "l1_ball_threshold",
]
