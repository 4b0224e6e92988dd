r"""Dense layer orthonormalized by a Cholesky factorization."""
from __future__ import annotations

from torch.nn.utils import parametrize

from ..parametrizations.cholesky import CholeskyOrthonormal
from ._conv_common import _orthogonal_reset
from .linear import _ParametrizedLinear, _check_features

__all__ = ["CholeskyLinear"]


class CholeskyLinear(_ParametrizedLinear):
    r"""Linear layer with a semi-orthonormal weight from a Cholesky factorization: y = x Wᵀ + b.

    With V the stored parameter (``parametrizations.weight.original``, shape (out, in)):
    out ≥ in: W = V L⁻ᵀ with LLᵀ = VᵀV (orthonormal columns: WᵀW = I, an isometry);
    out < in: W = L⁻¹V with LLᵀ = VVᵀ (orthonormal rows: WWᵀ = I). W is the Gram–Schmidt
    (QR) factor of V, computed with one Cholesky factorization and one triangular solve
    (``torch.linalg.cholesky`` / ``solve_triangular``): cheaper than Björck iterations, but
    its accuracy degrades as eps·κ(V)², so eval-mode weights are computed in float64 (once per
    parameter version, cached). A jitter is added to the Gram matrix only if its
    factorization fails (V numerically rank-deficient); the weight is then a strict
    contraction (see :func:`~liplayers.parametrizations.cholesky.cholesky_orthonormalize`).
    :meth:`lipschitz_bound` is the exact norm of the weight used (float64 SVD).

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.

    Shape:
        - Input: (*, in_features)
        - Output: (*, out_features)

    Hu et al., "A Recipe for Improved Certifiable Robustness", ICLR 2024.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        _check_features("CholeskyLinear", in_features, out_features)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        parametrize.register_parametrization(self, "weight", CholeskyOrthonormal())

    def reset_parameters(self) -> None:
        """Orthogonal V (the map's fixed point), zero bias."""
        _orthogonal_reset(self)
