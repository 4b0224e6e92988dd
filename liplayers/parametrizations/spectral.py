"""Spectral normalization by power iteration as a weight map (``torch.nn.utils.parametrize``)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..functional.spectral import power_iteration
from ..utils import accepts_renamed_kwargs, renamed_attribute
from ._common import compute_dtype as _compute_dtype, version_key as _version_key

__all__ = ["SpectralNormalized"]


class SpectralNormalized(nn.Module):
    r"""Parametrization ``W = V / σ(V)`` with σ estimated by power iteration.

    In training, each forward runs ``n_power_iterations`` power iterations from the persistent
    vector ``u`` (a buffer, so it is saved, synchronised by DDP and restored); V moves little
    per step, so the estimate keeps converging across steps (torch's ``spectral_norm`` runs
    one). In eval no iteration runs per forward: once per parameter version, σ is refined
    from ``u`` until it changes by less than ``tol`` relative (at most ``max_iterations``) and
    the normalized weight is cached. Iterations run in float64 (matrix–vector products). σ
    is treated as a constant in backward only if ``detach_sigma``; by default the gradient
    flows through σ = uᵀVv as in Miyato et al.

    Power iteration converges to σ from below, so ‖W‖₂ can exceed 1 by the estimate's error;
    certificates use the exact norm of the weight actually used (see ``lipschitz_bound``).
    """

    @accepts_renamed_kwargs({"train_iterations": "n_power_iterations"})
    def __init__(self, shape: torch.Size, tol: float = 1e-10, max_iterations: int = 100,
                 detach_sigma: bool = False, generator: Optional[torch.Generator] = None,
                 n_power_iterations: int = 3) -> None:
        super().__init__()
        if len(shape) != 2:
            raise ValueError(f"SpectralNormalized expects a 2-D weight shape, got {tuple(shape)}")
        if max_iterations < 1 or n_power_iterations < 1:
            raise ValueError(f"max_iterations and n_power_iterations must be >= 1, got {max_iterations}, "
                             f"{n_power_iterations}")
        self.n_power_iterations = n_power_iterations
        self.tol = tol
        self.max_iterations = max_iterations
        self.detach_sigma = detach_sigma
        u = torch.randn(shape[0], generator=generator)
        self.register_buffer("u", u / u.norm())
        self._cache_key: Optional[tuple] = None
        self._cache: Optional[Tensor] = None

    train_iterations = renamed_attribute("train_iterations", "n_power_iterations")

    def _power(self, v: Tensor, update: bool):
        """(σ, u, v) by power iteration from the persistent ``u`` (no grad); ``update`` stores u."""
        # matrix-vector products are cheap: iterate in float64 so the stopping test is not
        # fooled by float32 rounding of σ
        dtype = torch.complex128 if v.is_complex() else torch.float64
        iterations, tol = (self.n_power_iterations, 0.0) if update else (self.max_iterations, self.tol)
        sigma, u, vec = power_iteration(v.detach().to(dtype), self.u.to(dtype), iterations, tol)
        if update:
            with torch.no_grad():
                self.u.copy_(u.to(self.u.dtype))
        return sigma, u, vec

    @torch.compiler.disable  # in-place buffer update from a loop: eager, one graph break under compile
    def _train_vectors(self, v: Tensor):
        return self._power(v, update=True)

    def _sigma(self, v: Tensor, sigma: Tensor, u: Tensor, vec: Tensor) -> Tensor:
        cd = _compute_dtype(v.dtype)  # σ and V/σ in float32 at least (bf16/fp16 weights)
        if self.detach_sigma:
            return sigma.to(cd)
        return (u.to(cd) @ v.to(cd) @ vec.to(cd))  # differentiable σ = uᵀVv

    def forward(self, v: Tensor) -> Tensor:
        if v.dim() != 2:
            raise ValueError(f"SpectralNormalized expects a 2-D weight, got shape {tuple(v.shape)}")
        if self.training:
            sigma = self._sigma(v, *self._train_vectors(v))
            return (v.to(_compute_dtype(v.dtype)) / sigma).to(v.dtype)
        return self._eval_weight(v)

    @torch.compiler.disable  # the version check must run on every call (see BjorckOrthonormal)
    def _eval_weight(self, v: Tensor) -> Tensor:
        key = _version_key(v)
        if self._cache_key != key:
            with torch.no_grad():
                sigma = self._sigma(v, *self._power(v, update=False))
                self._cache = (v.to(_compute_dtype(v.dtype)) / sigma).to(v.dtype)
            self._cache_key = key
        return self._cache

    def right_inverse(self, w: Tensor) -> Tensor:
        return w
