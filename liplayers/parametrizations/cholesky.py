r"""Cholesky orthonormalization as a weight map (``torch.nn.utils.parametrize``)."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._common import EvalCachedMap, compute_dtype

__all__ = ["CholeskyOrthonormal", "cholesky_orthonormal", "cholesky_orthonormalize"]

# jitter schedule (relative to the mean diagonal of the Gram matrix), tried in order only when
# the Cholesky factorization of the unmodified Gram matrix fails
_JITTERS = (0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


def cholesky_orthonormalize(v: Tensor) -> Tensor:
    r"""Semi-orthonormal factor of ``v`` (…, m, n) by a Cholesky factorization of its smaller Gram matrix.

    m ≥ n: W = V L⁻ᵀ with LLᵀ = VᵀV (orthonormal columns, WᵀW = I); m < n: W = L⁻¹V with
    LLᵀ = VVᵀ (orthonormal rows). W is the Q factor of the QR (Gram–Schmidt) factorization of
    V with a positive diagonal, computed with one Cholesky factorization and one triangular
    solve (differentiable). In floating point WᵀW − I ~ eps·κ(V)².

    Jitter: only if the factorization fails (the Gram matrix is numerically not positive
    definite, i.e. V is rank-deficient to working precision), the Gram matrix is replaced by
    G + δI with δ = j·mean(diag G), j the first of 1e-7, 1e-6, …, 1e-2 that succeeds. Then
    W = V(G + δI)^{-1/2}-like has every singular value s/√(s² + δ) < 1: never expansive,
    but no longer exactly orthonormal (the certificate uses the norm of the weight actually
    used, so it stays sound).
    """
    if v.dim() < 2:
        raise ValueError(f"cholesky_orthonormalize expects (..., m, n), got shape {tuple(v.shape)}")
    tall = v.shape[-2] >= v.shape[-1]
    if torch.is_grad_enabled() and v.requires_grad:
        # hand-written backward when the unmodified Gram matrix factorizes (the usual case)
        vt = v if tall else v.mT
        with torch.no_grad():
            chol, info = torch.linalg.cholesky_ex(vt.mT @ vt)
        if not bool((info != 0).any()):
            w = _CholeskyQ.apply(vt, chol)
            return w if tall else w.mT
    g = v.mT @ v if tall else v @ v.mT
    k = g.shape[-1]
    scale = g.diagonal(dim1=-2, dim2=-1).mean(-1).detach().clamp_min(torch.finfo(g.dtype).tiny)
    eye = torch.eye(k, dtype=g.dtype, device=g.device)
    for j in _JITTERS:
        gj = g if j == 0.0 else g + (j * scale)[..., None, None] * eye
        chol, info = torch.linalg.cholesky_ex(gj)
        if not bool((info != 0).any()):
            break
    else:
        raise ValueError("cholesky_orthonormalize: the weight is numerically zero or not finite")
    if tall:
        return torch.linalg.solve_triangular(chol.mT, v, upper=True, left=False)  # V L^{-T}
    return torch.linalg.solve_triangular(chol, v, upper=False)  # L^{-1} V


class _CholeskyQ(torch.autograd.Function):
    r"""W = V L⁻ᵀ for a tall V (…, m, n), LLᵀ = VᵀV (L given), with a hand-written backward.

    W is the Q factor of V = WR, R = Lᵀ. Differentiating V = WR: WᵀdV R⁻¹ = WᵀdW + dR R⁻¹,
    a skew-symmetric plus an upper-triangular matrix (WᵀW = I), which separates them; then
    dW = dV R⁻¹ − W dR R⁻¹, and for a gradient Ĝ of W

        ∂L/∂V = (Ĝ − W S) L⁻¹,   S = triu(M) + triu(M, 1)ᵀ,   M = WᵀĜ

    — two matrix products and one triangular solve, instead of the four products, three
    solves and the copies of autograd through the Gram matrix, the Cholesky factorization and
    the solve.
    """

    @staticmethod
    def forward(ctx, v, chol):  # type: ignore[override]
        w = torch.linalg.solve_triangular(chol.mT, v, upper=True, left=False)
        ctx.save_for_backward(w, chol)
        return w

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gw):  # type: ignore[override]
        w, chol = ctx.saved_tensors
        m = w.mT @ gw
        s = m.triu()
        s = s + m.triu(1).mT
        y = torch.addmm(gw, w, s, alpha=-1.0) if w.dim() == 2 else gw - w @ s
        return torch.linalg.solve_triangular(chol, y, upper=False, left=False), None


class CholeskyOrthonormal(EvalCachedMap):
    r"""Parametrization ``W = cholesky_orthonormalize(V)``: semi-orthonormal rows or columns.

    Training: the differentiable Cholesky map in float32 at least (bf16/fp16 upcast).
    Eval: computed once per version of the stored parameter in **float64** (orthonormal to
    ~1e-16·κ(V)², then rounded to the parameter's dtype) and cached. Hu et al., "A Recipe for
    Improved Certifiable Robustness", ICLR 2024. See :func:`cholesky_orthonormalize` for the
    jitter used when V is numerically rank-deficient.
    """

    def _compute_eval(self, v: Tensor) -> Tensor:
        return cholesky_orthonormalize(v.to(torch.float64)).to(v.dtype).contiguous()

    def forward(self, v: Tensor) -> Tensor:
        if v.dim() != 2:
            raise ValueError(f"CholeskyOrthonormal expects a 2-D weight (out, in), got shape {tuple(v.shape)}")
        if not self.training:
            return self._eval_weight(v)
        return cholesky_orthonormalize(v.to(compute_dtype(v.dtype))).to(v.dtype).contiguous()

    def right_inverse(self, w: Tensor) -> Tensor:
        """Any full-rank weight is accepted (a semi-orthonormal one is a fixed point)."""
        return w


def cholesky_orthonormal(module: nn.Module, name: str = "weight") -> nn.Module:
    """Register :class:`CholeskyOrthonormal` on ``module.<name>`` (a 2-D weight); returns ``module``.

    Like ``torch.nn.utils.parametrizations.orthogonal``: the stored parameter becomes
    ``module.parametrizations.<name>.original`` and ``module.<name>`` reads the orthonormal factor.
    """
    w = getattr(module, name, None)
    if not isinstance(w, Tensor) or w.dim() != 2:
        raise ValueError(f"cholesky_orthonormal: module.{name} must be a 2-D tensor, got {type(w).__name__}")
    parametrize.register_parametrization(module, name, CholeskyOrthonormal())
    return module
