"""Björck orthonormalization as a weight map (``torch.nn.utils.parametrize``)."""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..functional.orthogonalization import (bjorck, bjorck_step, default_tolerance, gram_eigenvalue_bound,
                                            gram_symmetric, lanczos_extremes, polar_step_gain, predicted_error,
                                            step_coefficients)
from ._common import compute_dtype as _compute_dtype, version_key as _version_key

__all__ = ["BjorckOrthonormal", "DEFAULT_RETRACT_EVERY", "DEFAULT_MAX_DRIFT"]

# chosen by measurement (see the class docstring)
DEFAULT_RETRACT_EVERY = 16
DEFAULT_MAX_DRIFT = 0.25


@functools.lru_cache(maxsize=4096)
def _next_error(e: float, order: int) -> float:
    return predicted_error(e, order, tuned=order == 5)


def _cheapest_order(e: float, tol: float, r: int, n: int, depth: int = 5) -> int:
    """Order (3 or 5) of the next step on the cheapest predicted path from error e to ``tol``.

    A step costs the weight product (r²n multiply-adds), 3/4 r²n more for the Gram matrix of
    the next step if one follows, and r³ for A² in an order-5 step (r ≤ n the sides of W);
    errors follow :func:`predicted_error` (e rounded to 3 digits, cached).
    """
    big, small = float(r) * r * n, float(r) ** 3

    def cost(err: float, left: int) -> float:
        if left == 0:
            return math.inf
        best = math.inf
        for order in (3, 5):
            nxt = _next_error(float(f"{err:.3g}"), order)
            here = big + (small if order == 5 else 0.0)
            best = min(best, here if nxt <= tol else here + 0.75 * big + cost(nxt, left - 1))
        return best

    def first(order: int) -> float:
        nxt = _next_error(float(f"{e:.3g}"), order)
        return (small if order == 5 else 0.0) + (0.0 if nxt <= tol else 0.75 * big + cost(nxt, depth - 1))

    return 5 if first(5) < first(3) else 3


def _detached_copy(t: Tensor, v: Tensor) -> Tensor:
    """``t``, cloned if it shares memory with the parameter ``v`` (which the optimizer modifies in place)."""
    return t.clone() if t.untyped_storage().data_ptr() == v.untyped_storage().data_ptr() else t


def _distance(a: Tensor, b: Tensor, rows: int = 128) -> float:
    """‖a − b‖_F, by blocks of rows (no temporary the size of the weight); float64 accumulation."""
    if a.shape[0] <= rows:
        return float(torch.dist(a, b))
    return math.sqrt(sum(float(torch.dist(a[i:i + rows], b[i:i + rows])) ** 2 for i in range(0, a.shape[0], rows)))


def _frobenius64(s: Tensor, rows: int = 128) -> float:
    """‖s‖_F computed in float64 by blocks of rows (no float64 copy of the whole matrix)."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(s[i:i + rows].to(torch.float64))) ** 2
                         for i in range(0, s.shape[0], rows)))


class BjorckOrthonormal(nn.Module):
    r"""Parametrization ``W = polar(V)``: orthonormal rows or columns, read through Björck.

    Two modes:

    * ``"retract"`` (default): the stored parameter V is kept near the Stiefel manifold and
      replaced in place, without gradient, by its orthonormalized version (a retraction)
      every ``retract_every`` optimizer steps, and divided by a guaranteed bound of its norm
      in between (see *Amortized retraction*).
    * ``"differentiable"``: V is free; W = bjorck(V) with autograd through every iteration
      (Anil et al., 2019). Slower; the method of Anil, Lucas & Grosse (2019) as published.

    **Amortized retraction** (retract mode, training). At each training forward after V has
    changed (an optimizer step, ``load_state_dict``) the weight used is W = V / max(1, b), b a
    *guaranteed* upper bound of ‖V‖₂ for the V then stored, obtained by the first of:

    1. *free*: ‖V‖₂ ≤ b_R + ‖V − R‖_F, R the last matrix whose norm was proved (below) and
       b_R that bound (one pass over the weight), accepted if b ≤ 1 + ``max_drift``;
    2. *Gram*: A = VᵀV on the smaller side (one product, as three half-size blocks) and
       b² = a Cholesky-proved bound of λ_max(A)
       (:func:`~liplayers.functional.orthogonalization.gram_eigenvalue_bound`, ~2 ms for a
       512-sided A), accepted if the estimate of ‖A − I‖₂ is ≤ 2·``max_drift`` and
       b ≤ 1 + ``max_drift``;
    3. *retraction*: V is replaced in place by its polar factor to the tolerance (the adaptive
       steps below, the first reusing A), and b = max over x ∈ [0, λ] of √x·|p(x)| for the
       polynomial p of the last step and a proved bound λ of the Gram matrix it was applied to
       (:func:`~liplayers.functional.orthogonalization.polar_step_gain`: exactly 1 after a
       Björck step).

    A retraction is done at the first forward, every ``retract_every``-th change of V, and
    whenever 1 and 2 fail (the weight drifted too far). So **the layer is 1-Lipschitz at every
    training step** — in exact arithmetic on the Gram matrix as formed in the working
    precision (float32 at least): that rounding (O(√n·2⁻²⁴) relative) and, for bfloat16 /
    float16 weights, the rounding of W to the storage type are not covered. **It is
    orthogonal to the tolerance** (every singular value within ≈ ``tol``/2 of 1) at a
    retraction step, where b ≤ 1 + O(tol), and **in eval mode, always**: eval reads polar(V)
    of the current V computed to the tolerance (cached per version of V; V is not modified),
    so the eval weight — the one :meth:`lipschitz_bound`, ``eval_weight()`` and the
    certificates use — is orthogonal whatever the phase of training. Between retractions the
    training weight is only 1-Lipschitz: its singular values lie in [σ_min(V)/b, 1] with
    1 ≤ b ≤ 1 + ``max_drift``. (On MNIST with Adam at lr 1e-3, one step moves a 512×784
    weight by ≈ 0.035 in spectral and ≈ 0.09 in Frobenius norm.)

    The gradient treats 1/max(1, b) as a constant, as the retraction is not differentiated
    either: ∂L/∂V = ∂L/∂W / max(1, b), the Euclidean gradient of the weight used up to a
    factor in [1/(1 + ``max_drift``), 1] — a projected gradient step with a lazy projection.
    Differentiating b (a bound, piecewise defined by the tests above) would add a term along
    the top singular pair of V that pulls V back toward the manifold, which the next
    retraction does exactly.

    Cost: path 1 is one pass over the weight; path 2 one Gram product and a Cholesky of the
    small side; a retraction after one Adam step 2–4 products (a Gram and a weight product per
    step). Defaults :data:`DEFAULT_RETRACT_EVERY` = 16 and :data:`DEFAULT_MAX_DRIFT` = 0.25,
    measured on MNIST (Adam lr 1e-3, batch 256, cross-entropy at temperature 10, one CPU
    thread; all settings interleaved step by step on the same batches): for the
    784-512-512-10 MLP over one epoch, 39.9 ms per step with ``retract_every=1``, 24.1 with
    8, 23.2 with 16 (final loss 0.172 / 0.160 / 0.155, test accuracy 95.9 / 96.0 / 95.6%);
    for 4C3F over 150 steps, 254.8 ms with 8 and 253.9 with 16 (test accuracy 96.0 / 96.2%).
    (An earlier measurement, with the Euclidean gradient: 35.0, 19.8 with 4, 18.4 with 8 ms
    for the MLP; 4C3F 312, 273, 276 ms for 1, 4, 8.) With real data the drift bound, not the
    period, triggers most retractions (the MLP's 512×784 layer: ≈ 60% free steps, 30% Gram
    bounds, 10% retractions); on one repeated batch (``benchmarks/network_cost.py``) the period
    does, and 16 instead of 8 takes the MLP's step from 2.09 to 1.91 × the plain network's.
    ``retract_every=1`` retracts at every step (the behaviour before amortization, now with the bound b).

    **Steps of a retraction.** Each step's Gram matrix A = WᵀW gives an estimate e of
    ‖A − I‖₂ (the extreme Ritz values of A − I after 12 Lanczos steps, times a safety factor,
    capped by the guaranteed ‖A − I‖_F); iteration stops once the predicted error after the
    step (:func:`~liplayers.functional.predicted_error`) is ≤ ``tol``. With ``order=5`` (the
    default) each step is a Björck step or a tuned cubic step (one more product of the small
    side, cubic convergence), whichever starts the cheapest predicted path to the tolerance
    (e.g. a single tuned step after one Adam step at lr 1e-3, e ≈ 0.06). Far from the manifold
    (e > 0.5, e.g. at the first forward after loading an arbitrary weight) the weight is first
    divided by a guaranteed upper bound of its norm (the Cholesky-proved bound of λ_max(A),
    which also rescales A without a new product). The certificate never relies on this: the
    Lipschitz bound of a layer is computed from the weight it actually uses.

    Args:
        mode: ``"retract"`` or ``"differentiable"``.
        tol: target ‖WᵀW − I‖₂ (≈ 2 max |σ − 1|); default :func:`default_tolerance` of the dtype.
        max_iterations: cap on Björck steps per call.
        order: 3 (Björck steps only) or 5 (also the tuned cubic step when it is cheaper).
        retract_every: retract mode: a full retraction every this many changes of V (≥ 1;
            default :data:`DEFAULT_RETRACT_EVERY`); ``mode="differentiable"`` accepts only None/1.
        max_drift: retract mode, in (0, 1]: between retractions b ≤ 1 + max_drift (else retract).
    """

    # Ritz values lie inside the spectrum: inflate the estimate for stopping. After 12 Lanczos
    # steps they are within a few percent of ‖A − I‖₂ for the Gram matrices met here.
    _SAFETY = 1.15

    def __init__(
        self,
        mode: str = "retract",
        tol: Optional[float] = None,
        max_iterations: int = 40,
        order: int = 5,
        retract_every: Optional[int] = None,
        max_drift: float = DEFAULT_MAX_DRIFT,
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
        if retract_every is not None and (isinstance(retract_every, bool) or not isinstance(retract_every, int)
                                          or retract_every < 1):
            raise ValueError(f"retract_every must be a positive integer or None, got {retract_every!r}")
        if mode == "differentiable" and retract_every not in (None, 1):
            raise ValueError("retract_every applies to mode='retract' only (the differentiable mode "
                             "orthonormalizes at every forward)")
        if isinstance(max_drift, bool) or not isinstance(max_drift, (int, float)) or not 0 < max_drift <= 1:
            raise ValueError(f"max_drift must be a number in (0, 1], got {max_drift!r}")
        self.mode = mode
        self.tol = tol
        self.max_iterations = max_iterations
        self.order = order
        self.retract_every = DEFAULT_RETRACT_EVERY if retract_every is None else retract_every
        self.max_drift = float(max_drift)
        self._init_state()

    def _init_state(self) -> None:
        """Training-time state (not in the state dict: rebuilt by the next retraction)."""
        self._cache_key: Optional[tuple] = None  # eval cache (any mode)
        self._cache: Optional[Tensor] = None
        self._retracted_key: Optional[tuple] = None  # version of the stored parameter when last retracted
        self._train_key: Optional[tuple] = None  # version of the stored parameter the training scale is for
        self._train_scale = 1.0
        self._since: Optional[int] = None  # changes of V seen since the last retraction (None: never)
        self._anchor: Optional[Tensor] = None  # last matrix with a proved norm bound (working precision)
        self._anchor_bound = 1.0  # that bound
        self._fro = math.inf  # ‖A − I‖_F of the last Gram matrix estimated
        self._extremes = (0.0, 0.0)  # its extreme Ritz values
        self.last_steps = 0  # Björck steps taken by the last orthonormalization (diagnostics)
        self.last_bound = 1.0  # guaranteed bound b of ‖V‖₂ at the last training forward (diagnostics)
        self.last_path = ""  # how the last changed V was bounded: "free", "gram" or "retraction" (diagnostics)

    def __setstate__(self, state) -> None:
        """Unpickling, also of objects saved before the amortized retraction existed: missing
        attributes get their defaults (the next training forward then retracts)."""
        super().__setstate__(state)
        saved = dict(self.__dict__)
        self._init_state()
        self.__dict__.update(saved)
        self.__dict__.pop("_probe", None)  # the power-iteration vector of earlier versions
        self.__dict__.setdefault("retract_every", DEFAULT_RETRACT_EVERY)
        self.__dict__.setdefault("max_drift", DEFAULT_MAX_DRIFT)

    # -- training state in the state dict ------------------------------------------------
    # The amortized retraction carries state between optimizer steps (how many changes of V
    # since the last retraction; the last matrix R with a proved norm bound). It is saved as
    # the module's extra state so that training resumed from a checkpoint takes exactly the
    # steps the uninterrupted run would have taken. A state dict without it (plain torch
    # weights, checkpoints of earlier versions) loads as "never retracted": the next training
    # forward retracts.
    # Packed as one uint8 tensor (like BatchNorm's integer ``num_batches_tracked``, skipped by
    # code that averages floating-point entries): int64 header (since or −1, rows, cols, dtype
    # code), float64 bound, then the bytes of R in its working dtype.
    _DTYPES = (torch.float32, torch.float64)

    def get_extra_state(self) -> Tensor:
        r = self._anchor
        if r is not None and r.dtype not in self._DTYPES:
            r = None
        rows, cols = (0, 0) if r is None else tuple(r.shape)
        code = -1 if r is None else self._DTYPES.index(r.dtype)
        since = -1 if self._since is None else int(self._since)
        head = torch.tensor([since, rows, cols, code], dtype=torch.int64).view(torch.uint8)
        bound = torch.tensor([self._anchor_bound], dtype=torch.float64).view(torch.uint8)
        parts = [head, bound]
        if r is not None:
            parts.append(r.detach().cpu().contiguous().view(-1).view(torch.uint8))
        return torch.cat(parts)

    def set_extra_state(self, state) -> None:
        if not isinstance(state, Tensor) or state.dtype != torch.uint8 or state.dim() != 1 or state.numel() < 40:
            raise ValueError("BjorckOrthonormal: the state dict's '_extra_state' entry is not one written by "
                             "this class (expected a 1-D uint8 tensor)")
        state = state.detach().cpu().contiguous()
        since, rows, cols, code = (int(v) for v in state[:32].view(torch.int64))
        self._since = None if since < 0 else since
        self._anchor_bound = float(state[32:40].view(torch.float64)[0])
        if code < 0:
            self._anchor = None
        else:
            dtype = self._DTYPES[code]
            data = state[40:]
            if data.numel() != rows * cols * dtype.itemsize:
                raise ValueError("BjorckOrthonormal: truncated '_extra_state' entry in the state dict")
            self._anchor = data.view(dtype).reshape(rows, cols).clone()
        self._train_key = None  # V was (re)loaded: bound it again at the next training forward

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key = prefix + "_extra_state"
        absent = key not in state_dict
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if absent:  # plain torch weights or an earlier checkpoint: as if never retracted
            if key in missing_keys:
                missing_keys.remove(key)
            self._since, self._anchor, self._anchor_bound, self._train_key = None, None, 1.0, None

    # -- the algorithm -------------------------------------------------------------------
    def _estimate(self, a: Tensor) -> float:
        """Estimate e of ‖A − I‖₂ for the smaller Gram matrix A (no grad): the larger extreme Ritz
        value of A − I (:func:`~liplayers.functional.orthogonalization.lanczos_extremes`) times a
        safety factor, capped by the guaranteed ‖A − I‖_F. Sets ``_fro`` and ``_extremes``."""
        # A − I in the working precision (the subtraction is exact for diagonal entries in
        # [1/2, 2] and rounded once otherwise: the factor below covers it), ‖·‖_F accumulated
        # in float64 by blocks of rows (no float64 copy of A)
        s = a.detach().clone() if a.dtype in (torch.float32, torch.float64) else a.detach().to(torch.float32)
        s.diagonal().sub_(1.0)
        fro = _frobenius64(s) * (1.0 + 2.0 * torch.finfo(s.dtype).eps)
        if not math.isfinite(fro):
            raise ValueError("BjorckOrthonormal: the weight contains non-finite values (NaN or Inf) "
                             "or values too large for its Gram matrix")
        lo, hi = lanczos_extremes(s)
        self._fro, self._extremes = fro, (lo, hi)
        return min(self._SAFETY * max(-lo, hi, 0.0), fro)

    @staticmethod
    def _result_bound(last: tuple, tol: float) -> float:
        """Guaranteed bound of ‖W‖₂ of the result of :meth:`_polar` from the record of its last step.

        First from the free bound λ_max(A) ≤ 1 + ‖A − I‖_F (exact: 1 after a Björck step), and
        when that is not within tol/8 of 1, from the Cholesky-proved λ_max(A)."""
        kind, a, fro, coeffs, extremes = last
        cheap = math.sqrt(1.0 + fro) if kind == "gram" else polar_step_gain(coeffs, 1.0 + fro)
        if cheap <= 1.0 + tol / 8:
            return cheap
        lam = gram_eigenvalue_bound(a, extremes)
        return min(cheap, math.sqrt(lam) if kind == "gram" else polar_step_gain(coeffs, lam))

    def _polar(self, w: Tensor, a: Optional[Tensor] = None, e: Optional[float] = None,
               want_bound: bool = False):
        """Adaptive steps toward the polar factor of ``w`` (working precision, no grad).

        ``a``, ``e``: the Gram matrix of ``w`` and its estimate if already computed (then the
        last :meth:`_estimate` must be that of ``a``); ``a`` may be handed over in a one-element
        list, emptied here, so that the caller holds no reference to it (each Gram matrix is
        then freed as soon as the next one exists). Returns ``(w, b)``, b a guaranteed bound of
        ‖w‖₂ of the result if ``want_bound`` (else None).
        """
        if isinstance(a, list):
            a = a.pop()
        tol = self.tol if self.tol is not None else default_tolerance(w.dtype)
        steps = 0
        # ("gram", A, ‖A−I‖_F, None, Ritz): the result has Gram matrix A;
        # ("step", A, ‖A−I‖_F, p, Ritz): the result is W_prev p(A), A the Gram matrix of W_prev
        last = None
        while steps < self.max_iterations:
            if a is None:
                last = None  # (it holds the previous Gram matrix: free it before forming the next)
                a = gram_symmetric(w)
                e = self._estimate(a)
            if e <= tol:  # already on the manifold to the tolerance: keep it exactly
                last = ("gram", a, self._fro, None, self._extremes)
                break
            if e > 0.5:  # far from the manifold: guaranteed pre-scaling, then a Björck step
                lam = gram_eigenvalue_bound(a, self._extremes)  # λ_max(A) ≤ lam, proved (one Cholesky)
                if lam > 1.0:  # W / √lam has every singular value in (0, 1]: Björck converges
                    w, a = w / math.sqrt(lam), a / lam
                w = bjorck_step(w, a, order=3)
                steps, a, last = steps + 1, None, None
                continue
            if self.order == 5 and _cheapest_order(e, tol, min(w.shape), max(w.shape)) == 5:
                # tuned cubic step (one more small product): fewer steps to the tolerance
                w = bjorck_step(w, a, order=5, e=e)
                steps, last = steps + 1, ("step", a, self._fro, step_coefficients(5, e), self._extremes)
                if predicted_error(e, 5, tuned=True) <= tol:
                    break
                a = None
                continue
            w = bjorck_step(w, a, order=3)
            steps, last = steps + 1, ("step", a, self._fro, step_coefficients(3), self._extremes)
            if predicted_error(e, 3) <= tol:
                break
            a = None
        self.last_steps = steps
        if not want_bound:
            return w, None
        if last is None:  # stopped by max_iterations right after a pre-scaled step
            a = gram_symmetric(w)
            self._estimate(a)
            last = ("gram", a, self._fro, None, self._extremes)
        return w, self._result_bound(last, tol)

    def orthonormalize(self, v: Tensor) -> Tensor:
        """Polar factor of ``v`` (2-D, (out, in)) to the tolerance, without gradient."""
        with torch.no_grad():
            return self._polar(v.detach().to(_compute_dtype(v.dtype)))[0].to(v.dtype)

    def _update(self, v: Tensor) -> float:
        """V changed in training: bound it (cheaply if possible) or retract it; returns 1/max(1, b)."""
        with torch.no_grad():
            w = v.detach().to(_compute_dtype(v.dtype))
            due = self._since is None or self._since + 1 >= self.retract_every
            ref = self._anchor
            if ref is not None and ref.shape == w.shape and ref.dtype == w.dtype:
                if ref.device != w.device:  # loaded on another device
                    ref = self._anchor = ref.to(w.device)
                d = _distance(w, ref)
                if not math.isfinite(d):
                    raise ValueError("BjorckOrthonormal: the weight contains non-finite values (NaN or Inf)")
                if d == 0.0:  # V is R itself (e.g. just reloaded): not a change of V
                    return self._record(self._anchor_bound, "unchanged", v.dtype)
                # (1) ‖V‖₂ ≤ ‖R‖₂ + ‖V − R‖₂ ≤ b_R + ‖V − R‖_F, R the last matrix with a proved bound b_R
                b = self._anchor_bound + d * (1.0 + 1e-5)  # + rounding of the norm
                if not due and b - 1.0 <= self.max_drift:
                    self._since += 1
                    return self._record(b, "free", v.dtype)
            a = gram_symmetric(w)
            e = self._estimate(a)
            if not due and e <= 2.0 * self.max_drift:
                # (2) ‖V‖₂² ≤ the Cholesky-proved bound of λ_max(VᵀV)
                b = math.sqrt(gram_eigenvalue_bound(a, self._extremes))
                if b - 1.0 <= self.max_drift:
                    self._since += 1
                    self._anchor, self._anchor_bound = _detached_copy(w, v), b
                    return self._record(b, "gram", v.dtype)
            # (3) retraction, the first step reusing the Gram matrix
            handed = [a]
            del a
            q, b = self._polar(w, handed, e, want_bound=True)
            if q is not w:
                v.copy_(q)  # retraction of the stored parameter (rounded to its dtype)
            self._retracted_key = _version_key(v)
            self._since = 0
            self._anchor, self._anchor_bound = _detached_copy(q, v), b
            if v.dtype != q.dtype:  # the stored weight is q rounded to a lower precision
                b = b + float(torch.dist(v.to(q.dtype), q)) * (1.0 + 1e-5)
            return self._record(b, "retraction", v.dtype)

    def _record(self, b: float, path: str, dtype: torch.dtype) -> float:
        """Store the diagnostics; the scale 1/max(1, b) (1 when b exceeds 1 by less than half an
        ulp of the weight's dtype, where the product would round back to V)."""
        self.last_bound, self.last_path = b, path
        return 1.0 if b - 1.0 <= torch.finfo(dtype).eps / 2 else 1.0 / b

    # -- parametrization protocol -------------------------------------------------------------
    # The two helpers below read the parameter's version counter to decide whether to
    # retract / recompute. Under ``torch.compile`` that check must run on every call (a
    # compiled graph does not guard on ``_version``: a traced check went stale after an
    # optimizer step and kept using the un-retracted weight), so they always run eagerly
    # (``torch.compiler.disable``; one graph break per layer, a few small matrix products).
    @torch.compiler.disable
    def train_scale(self, v: Tensor) -> float:
        """The factor 1/max(1, b) of the training weight V / max(1, b) (retract mode, training).

        Retracts V in place first when one is due (see *Amortized retraction*); computed once
        per version of V. A layer may apply it to its output instead of its weight —
        x (sV)ᵀ = s·(x Vᵀ) — so that no scaled copy of the weight is kept for backward.
        """
        if v.dim() != 2:
            raise ValueError(f"BjorckOrthonormal expects a 2-D weight (out, in), got shape {tuple(v.shape)}")
        if self.mode != "retract":
            raise RuntimeError("train_scale applies to mode='retract' only")
        if self._train_key != _version_key(v):
            self._train_scale = self._update(v)
            self._train_key = _version_key(v)
        return self._train_scale

    def _train_weight(self, v: Tensor) -> Tensor:
        """The training weight V / max(1, b); retracts V in place first when one is due."""
        s = self.train_scale(v)
        return v if s == 1.0 else v * s

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
        return self._train_weight(v)

    def right_inverse(self, w: Tensor) -> Tensor:
        """Any full-rank weight is accepted; it is orthonormalized at the next forward."""
        return w

    def extra_repr(self) -> str:
        extra = (f", retract_every={self.retract_every}, max_drift={self.max_drift}"
                 if self.mode == "retract" else "")
        return f"mode={self.mode!r}, tol={self.tol}, max_iterations={self.max_iterations}, order={self.order}" + extra
