"""Björck orthonormalization as a weight map (``torch.nn.utils.parametrize``)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..functional.orthogonalization import bjorck, bjorck_step, default_tolerance, gram, predicted_error
from ._common import compute_dtype as _compute_dtype, version_key as _version_key

__all__ = ["BjorckOrthonormal"]


class BjorckOrthonormal(nn.Module):
    r"""Parametrization ``W = polar(V)``: orthonormal rows or columns, read through Björck.

    Two modes:

    * ``"retract"`` (default): the stored parameter V is itself kept on the Stiefel manifold.
      Whenever V has changed (an optimizer step, ``load_state_dict``), the next forward
      replaces it in place, without gradient, by its orthonormalized version (a retraction:
      after an Adam step V is a distance ~lr·√n off the manifold, and one or two Björck steps
      bring it back to float precision). The weight is then V itself and the gradient is the
      Euclidean gradient: training is projected gradient descent on the Stiefel manifold. A
      training step costs 2–4 products of the smaller side instead of 2×15 differentiated ones.
    * ``"differentiable"``: V is free; W = bjorck(V) with autograd through every iteration
      (Anil et al., 2019). Slower; the method of Anil, Lucas & Grosse (2019) as published.

    The number of steps adapts: each step's Gram matrix A = WᵀW gives an estimate e of
    ‖A − I‖₂ (a few power iterations on A − I from a persistent vector, times a safety factor,
    capped by the guaranteed ‖A − I‖_F); iteration stops once the predicted error after the
    step (:func:`~liplayers.functional.predicted_error`) is ≤ ``tol``. With ``order=5`` (the
    default) a step that a Björck step cannot finish but one tuned cubic step can is done
    with the latter (3 products instead of 4 for two Björck steps): after an Adam step at
    lr 1e-3 on a 1024×1024 weight (e ≈ 0.06) this is the common case. Far from the manifold
    (e > 0.5, e.g. at the first forward after loading an arbitrary weight) the weight is first
    divided by a guaranteed upper bound of its norm. The certificate never relies on this: the
    Lipschitz bound of a layer is computed from the weight it actually uses.

    Args:
        mode: ``"retract"`` or ``"differentiable"``.
        tol: target ‖WᵀW − I‖₂ (≈ 2 max |σ − 1|); default :func:`default_tolerance` of the dtype.
        max_iterations: cap on Björck steps per call.
        order: 3 (Björck steps only) or 5 (also the tuned cubic step when it finishes sooner).
    """

    # power iteration gives a lower bound of ‖A − I‖₂; inflate it for stopping. With the probe
    # kept across calls, 8 iterations reach 96–99% of the true value after an optimizer step.
    _SAFETY = 1.15
    _PROBE_ITERATIONS = 8

    def __init__(
        self,
        mode: str = "retract",
        tol: Optional[float] = None,
        max_iterations: int = 40,
        order: int = 5,
    ) -> None:
        super().__init__()
        if mode not in ("retract", "differentiable"):
            raise ValueError(f"mode must be 'retract' or 'differentiable', got {mode!r}")
        if order not in (3, 5):
            raise ValueError(f"order must be 3 or 5, got {order}")
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        if tol is not None and not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        self.mode = mode
        self.tol = tol
        self.max_iterations = max_iterations
        self.order = order
        self._probe: Optional[Tensor] = None  # persistent vector for the ‖A − I‖ estimate
        self._cache_key: Optional[tuple] = None  # eval cache (any mode)
        self._cache: Optional[Tensor] = None
        self._retracted_key: Optional[tuple] = None  # version of the stored parameter when last retracted
        self.last_steps = 0  # Björck steps taken by the last orthonormalization (diagnostics)

    # -- the algorithm -------------------------------------------------------------------
    def _estimate(self, a: Tensor) -> float:
        """Estimate of ‖A − I‖₂ for the smaller Gram matrix A (no grad)."""
        s = a.detach().clone()
        s.diagonal().sub_(1.0)
        n = s.shape[-1]
        if self._probe is None or self._probe.shape[0] != n or self._probe.dtype != s.dtype:
            g = torch.Generator(device="cpu").manual_seed(n)
            self._probe = torch.randn(n, generator=g, dtype=s.dtype).to(s.device)
        v = self._probe.to(s.device)
        est = 0.0
        for _ in range(self._PROBE_ITERATIONS):
            sv = s @ v
            nrm = float(sv.norm())
            if nrm == 0.0 or not math.isfinite(nrm):
                break
            est, v = nrm, sv / nrm
        self._probe = v
        fro = float(torch.linalg.matrix_norm(s))
        if not math.isfinite(fro):
            return fro
        return min(self._SAFETY * est, fro)

    def orthonormalize(self, v: Tensor) -> Tensor:
        """Polar factor of ``v`` (2-D, (out, in)) to the tolerance, without gradient."""
        with torch.no_grad():
            dtype = _compute_dtype(v.dtype)
            w = v.detach().to(dtype)
            tol = self.tol if self.tol is not None else default_tolerance(v.dtype)
            steps = 0
            while steps < self.max_iterations:
                a = gram(w)
                e = self._estimate(a)
                if not math.isfinite(e):  # the Gram matrix is finite iff the weight is (and not huge)
                    raise ValueError("BjorckOrthonormal: the weight contains non-finite values (NaN or Inf) "
                                     "or values too large for its Gram matrix")
                if e <= tol:  # already on the manifold to the tolerance: keep it exactly
                    break
                if e > 0.5:  # far from the manifold: guaranteed pre-scaling, classic steps
                    w = bjorck(w, iterations=1, tol=0.0, prescale=True)
                    steps += 1
                    continue
                if self.order == 5 and predicted_error(e, 3) > tol and predicted_error(e, 5, tuned=True) <= tol:
                    # one tuned cubic step (3 products) finishes where a Björck step would not
                    w = bjorck_step(w, a, order=5, e=e)
                    steps += 1
                    break
                w = bjorck_step(w, a, order=3)
                steps += 1
                if predicted_error(e, 3) <= tol:
                    break
            self.last_steps = steps
            return w.to(v.dtype)

    # -- parametrization protocol -------------------------------------------------------------
    # The two helpers below read the parameter's version counter to decide whether to
    # retract / recompute. Under ``torch.compile`` that check must run on every call (a
    # compiled graph does not guard on ``_version``: a traced check went stale after an
    # optimizer step and kept using the un-retracted weight), so they always run eagerly
    # (``torch.compiler.disable``; one graph break per layer, a few small matrix products).
    @torch.compiler.disable
    def _retract_if_changed(self, v: Tensor) -> None:
        """Retract the stored parameter in place (no grad) if it changed since the last call."""
        if self._retracted_key != _version_key(v):
            q = self.orthonormalize(v)
            with torch.no_grad():
                v.copy_(q)  # retraction of the stored parameter onto the manifold
            self._retracted_key = _version_key(v)

    @torch.compiler.disable
    def _eval_weight(self, v: Tensor) -> Tensor:
        """The eval-mode weight, cached per version of the stored parameter (no grad)."""
        key = _version_key(v)
        if self._cache_key != key:
            if self.mode == "differentiable":
                tol = self.tol if self.tol is not None else default_tolerance(v.dtype)
                with torch.no_grad():
                    w = bjorck(v.detach().to(_compute_dtype(v.dtype)), iterations=self.max_iterations, tol=tol,
                               order=self.order).to(v.dtype)
                self._cache = w
            else:
                self._cache = v.detach() if self._retracted_key == key else self.orthonormalize(v)
            self._cache_key = key
        return self._cache

    def forward(self, v: Tensor) -> Tensor:
        if v.dim() != 2:
            raise ValueError(f"BjorckOrthonormal expects a 2-D weight (out, in), got shape {tuple(v.shape)}")
        if not self.training:
            return self._eval_weight(v)
        if self.mode == "differentiable":
            tol = self.tol if self.tol is not None else default_tolerance(v.dtype)
            return bjorck(v.to(_compute_dtype(v.dtype)), iterations=self.max_iterations, tol=tol,
                          order=self.order).to(v.dtype)
        self._retract_if_changed(v)
        return v

    def right_inverse(self, w: Tensor) -> Tensor:
        """Any full-rank weight is accepted; it is orthonormalized at the next forward."""
        return w

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, tol={self.tol}, max_iterations={self.max_iterations}, order={self.order}"

