"""Pure tensor algorithms (no modules): orthonormalization, spectral norms and bounds, convolution
symbols, BCOP kernels, AOL rescaling, GroupSort, L1 projection, Fisher–Rao geometry."""
from . import geometry
from .bcop import bcop_kernel
from .group_sort import group_sort, max_min
from .l1_projection import l1_ball_threshold, project_l1_ball
from .orthogonalization import bjorck, bjorck_step, default_tolerance, orthogonality_error, retract_semi_orthogonal_
from .spectral import gram_spectral_bound, power_iteration, spectral_norm_exact
from .stiefel import riemannian_gradient, stiefel_canonical_gradient, stiefel_tangent_projection, with_tangent_gradient

__all__ = [
    "geometry",
    "bjorck",
    "bjorck_step",
    "default_tolerance",
    "orthogonality_error",
    "retract_semi_orthogonal_",
    "stiefel_tangent_projection",
    "stiefel_canonical_gradient",
    "riemannian_gradient",
    "with_tangent_gradient",
    "gram_spectral_bound",
    "power_iteration",
    "spectral_norm_exact",
    "project_l1_ball",
    "l1_ball_threshold",
    "bcop_kernel",
    "group_sort",
    "max_min",
]
