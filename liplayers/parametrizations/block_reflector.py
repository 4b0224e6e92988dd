r"""Block reflector (BRO) as a weight map (``torch.nn.utils.parametrize``)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..functional.skew import block_reflector as _block_reflector
from ._common import EvalCachedMap, compute_dtype

__all__ = ["BlockReflector", "block_reflector"]


class BlockReflector(EvalCachedMap):
    r"""Parametrization ``W = (I − 2V(VᵀV)⁻¹Vᵀ)[:out, :in]`` from a stored V of shape (n, rank).

    n = max(out, in). I − 2V(VᵀV)⁻¹Vᵀ = I − 2P (P the orthogonal projector onto range V) is
    orthogonal and symmetric, eigenvalues −1 (rank times) and +1; its top-left out×in block has
    orthonormal columns (out ≥ in) or rows (out < in). Ranks k and n − k give the same
    matrices up to sign (I − 2P' = −(I − 2P) for the complementary projector), so rank ≤ n/2
    loses nothing; the default is n // 2 (Lai et al., "Enhancing Certified Robustness via
    Block Reflector Orthogonal Layers and Logit Annealing Loss", ICML 2025).

    Training: the formula with a linear solve of the Gram matrix plus a tiny jitter
    δ = 1e-6·mean(diag VᵀV) (with δ > 0 every eigenvalue is in (−1, 1], never expansive; it
    only guards against a numerically singular Gram matrix), float32 at least. Eval: a float64
    Householder QR (orthogonal to ~1e-16 whatever the conditioning of V), rounded to the
    parameter's dtype, cached per version of V.

    The stored tensor has shape (n, rank), not the weight's: :meth:`right_inverse` maps a
    weight W to the V of the nearest block reflector in the sense of the symmetric part: the
    eigenvectors of sym(W̃) for its ``rank`` smallest eigenvalues (W̃ = W embedded into I_n),
    exact for a block reflector of that rank.
    """

    _TRAIN_JITTER = 1e-6

    def __init__(self, out_features: int, in_features: int, rank: Optional[int] = None) -> None:
        super().__init__()
        for name, v in (("out_features", out_features), ("in_features", in_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"BlockReflector: {name} must be a positive integer, got {v!r}")
        n = max(out_features, in_features)
        if rank is None:
            rank = max(1, n // 2)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= n:
            raise ValueError(f"BlockReflector: rank must be an integer in [1, {n}], got {rank!r}")
        self.out_features, self.in_features, self.n, self.rank = out_features, in_features, n, rank

    def _check(self, v: Tensor) -> None:
        if tuple(v.shape) != (self.n, self.rank):
            raise ValueError(f"BlockReflector expects V of shape {(self.n, self.rank)}, got {tuple(v.shape)}")

    def _compute_eval(self, v: Tensor) -> Tensor:
        if not bool(torch.isfinite(v).all()):
            raise ValueError("BlockReflector: V contains non-finite values (NaN or Inf)")
        w = _block_reflector(v.to(torch.float64), self.out_features, self.in_features, "qr")
        return w.to(v.dtype).contiguous()

    def forward(self, v: Tensor) -> Tensor:
        self._check(v)
        if not self.training:
            return self._eval_weight(v)
        w = _block_reflector(v.to(compute_dtype(v.dtype)), self.out_features, self.in_features, "solve",
                             jitter=self._TRAIN_JITTER)
        return w.to(v.dtype)

    def right_inverse(self, w: Tensor) -> Tensor:
        if tuple(w.shape) != (self.out_features, self.in_features):
            raise ValueError(f"BlockReflector: weight of shape {tuple(w.shape)}, expected "
                             f"{(self.out_features, self.in_features)}")
        with torch.no_grad():
            wd = w.detach().to(torch.float64)
            full = torch.eye(self.n, dtype=torch.float64, device=w.device)
            full[: self.out_features, : self.in_features] = wd
            _, vecs = torch.linalg.eigh((full + full.mT) / 2)  # ascending eigenvalues
            return vecs[:, : self.rank].contiguous().to(w.dtype)

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, in_features={self.in_features}, rank={self.rank}"


def block_reflector(module: nn.Module, name: str = "weight", rank: Optional[int] = None) -> nn.Module:
    """Register :class:`BlockReflector` on ``module.<name>`` (a 2-D weight (out, in)); returns ``module``.

    The stored parameter ``module.parametrizations.<name>.original`` becomes V (max(out, in),
    rank), initialized from the current weight by :meth:`BlockReflector.right_inverse`.
    """
    w = getattr(module, name, None)
    if not isinstance(w, Tensor) or w.dim() != 2:
        raise ValueError(f"block_reflector: module.{name} must be a 2-D tensor, got {type(w).__name__}")
    param = BlockReflector(w.shape[0], w.shape[1], rank)
    parametrize.register_parametrization(module, name, param, unsafe=True)
    return module
