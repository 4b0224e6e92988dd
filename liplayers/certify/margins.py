r"""Margin certificates: certified radii from logits and a Lipschitz bound.

Multiclass (logits (B, C), C ≥ 2, predicted class y = argmax). If the logit map f is
L-Lipschitz in L2, each difference f_y − f_j = (e_y − e_j)ᵀf is √2·L-Lipschitz, so no input
within L2 distance

    r = (f_y − max_{j≠y} f_j) / (√2 L)

of x can make another logit reach f_y: the prediction is constant on the ball (ties count
as a change). With a last linear layer W after an L_body-Lipschitz body,
f_y − f_j = (w_y − w_j)ᵀh + b_y − b_j is ‖w_y − w_j‖·L_body-Lipschitz, and

    r = min_{j≠y} (f_y − f_j) / (‖w_y − w_j‖ L_body)

is at least as large (‖w_y − w_j‖ ≤ √2‖W‖₂). Binary single logit (shape (B,) or (B, 1),
class 1 iff f > 0): r = |f| / L. A pair of identical rows (‖w_y − w_j‖ = 0) can never swap
(infinite radius for that pair).

Norms (``norm``): ``"l2"`` gives the L2 radius. ``"linf"`` gives an L∞ radius from the same
L2 Lipschitz bound: since ‖δ‖₂ ≤ √n‖δ‖∞ for δ ∈ Rⁿ, r∞ = r₂ / √n (``input_dim`` = n must
be given). The conversions live in ``_NORMS`` so that other threat models (e.g. a bound
from an ∞→∞ Lipschitz constant) can be added without changing the signature.

Floating point (the safety margin). The logits are computed in floating point, at x and
at any x′, so the computed difference can deviate from the exact one by a rounding error
δ at each. We assume the float error of each logit is at most ``rtol·(|f_k| + s)``, where
``s`` (``scale``, default 1) is the magnitude of the values inside the network (rounding
errors are relative to them, not to the logits: :func:`~liplayers.certify.certify` passes
s = 1 + L‖x‖₂, since an L-Lipschitz network moves its values by at most L‖x‖₂ away from
those at x = 0), with default ``rtol`` = 32 × machine epsilon of the logits' dtype (3.8e-6
for float32, 7.1e-15 for float64), and subtract twice the error of the pair, at x and at
x′, from each margin:

    m_j = f_y − f_j − 2·rtol·(|f_y| + |f_j| + 2s)

and the Lipschitz bound is inflated by a relative 1e-6 (covering the rounding of the radius
computation, done in float64, and of ‖x′ − x‖ in the caller's dtype). This is a documented
engineering margin, not a rigorous forward-error analysis of the network (which would
depend on depth and widths): pass a larger ``rtol`` for deep or low-precision models,
``rtol=0`` to disable it. Radii are never negative: a non-positive margin gives 0.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Union

import torch
from torch import Tensor

__all__ = [
    "ABSTAIN",
    "certified_radius",
    "certified_radius_last_layer",
    "predict_from_logits",
    "default_rtol",
    "normalize_norm",
]

#: label used for "abstain" (class ⊥) by the abstaining and smoothed classifiers
ABSTAIN = -1

_L_INFLATION = 1.0 + 1e-6

# L2 radius → radius in the threat norm, given the input dimension n
_NORMS: Dict[str, Callable[[Tensor, Optional[int]], Tensor]] = {
    "l2": lambda r, n: r,
    "linf": lambda r, n: r / math.sqrt(n),
}
_NEEDS_DIM = {"l2": False, "linf": True}
_ALIASES = {"l2": "l2", "2": "l2", "linf": "linf", "inf": "linf", "l∞": "linf"}


def normalize_norm(norm: Union[str, int, float]) -> str:
    """Canonical name (``"l2"`` or ``"linf"``) of a threat norm; ``ValueError`` otherwise."""
    if isinstance(norm, str):
        key = norm.lower().replace("_", "").replace("-", "")
        if key in _ALIASES:
            return _ALIASES[key]
    elif not isinstance(norm, bool) and norm == 2:
        return "l2"
    elif not isinstance(norm, bool) and isinstance(norm, float) and norm == math.inf:
        return "linf"
    raise ValueError(f"norm must be one of {sorted(_NORMS)} (aliases {sorted(_ALIASES)}), got {norm!r}")


def default_rtol(dtype: torch.dtype) -> float:
    """Default relative floating-point error assumed for logits of ``dtype``: 32·eps (≤ 0.25)."""
    return min(32.0 * torch.finfo(dtype).eps, 0.25)


def _check_logits(logits: Tensor) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
    if logits.dim() not in (1, 2):
        raise ValueError(f"logits must have shape (B, C) or (B,) for a single binary logit, got {tuple(logits.shape)}")
    if logits.dim() == 2 and logits.shape[1] == 0:
        raise ValueError("logits have no class")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain non-finite values (NaN or Inf): no certificate can be given")
    return logits


def _is_binary(logits: Tensor) -> bool:
    return logits.dim() == 1 or logits.shape[1] == 1


def predict_from_logits(logits: Tensor) -> Tensor:
    """Predicted classes (B,) int64: argmax, or (f > 0) for a single binary logit."""
    _check_logits(logits)
    if _is_binary(logits):
        return (logits.reshape(-1) > 0).to(torch.int64)
    return logits.argmax(dim=1)


def _positive(value, name: str, allow_tensor: bool = True) -> Union[float, Tensor]:
    if isinstance(value, Tensor):
        if not allow_tensor:
            raise TypeError(f"{name} must be a float")
        v = value.detach().to(torch.float64)
        if not bool(torch.isfinite(v).all()) or bool((v <= 0).any()):
            raise ValueError(f"{name} must be finite and > 0")
        return v
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def _per_sample(L, f: Tensor, name: str):
    """A float, or a tensor reshaped to (B,) (one bound per sample); other shapes raise."""
    if isinstance(L, Tensor):
        B = f.shape[0]
        if L.numel() == 1:
            return L.reshape(()).to(f.device)
        if L.dim() != 1 or L.shape[0] != B:
            raise ValueError(f"{name} must be a float, a one-element tensor or a ({B},) tensor, got shape {tuple(L.shape)}")
        return L.to(f.device)
    return L


def _rtol(rtol: Optional[float], dtype: torch.dtype) -> float:
    if rtol is None:
        return default_rtol(dtype)
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not math.isfinite(rtol) or rtol < 0:
        raise ValueError(f"rtol must be a finite float >= 0, got {rtol!r}")
    return float(rtol)


def _convert(r2: Tensor, norm: str, input_dim: Optional[int]) -> Tensor:
    norm = normalize_norm(norm)
    n = None
    if _NEEDS_DIM[norm]:
        if isinstance(input_dim, bool) or not isinstance(input_dim, int) or input_dim < 1:
            raise ValueError(f"norm={norm!r} needs input_dim (number of input coordinates, int >= 1), got {input_dim!r}")
        n = input_dim
    return _NORMS[norm](r2, n)


def _scale(scale, f: Tensor) -> Tensor:
    """(B,) float64 magnitude scale of the rounding allowance (see module docstring)."""
    if scale is None:
        return torch.ones(f.shape[0], dtype=torch.float64, device=f.device)
    if isinstance(scale, Tensor):
        s = scale.detach().to(device=f.device, dtype=torch.float64).reshape(-1)
        if s.numel() == 1:
            s = s.expand(f.shape[0])
    elif isinstance(scale, (int, float)) and not isinstance(scale, bool):
        s = torch.full((f.shape[0],), float(scale), dtype=torch.float64, device=f.device)
    else:
        raise TypeError(f"scale must be a float or a (B,) tensor, got {type(scale).__name__}")
    if s.shape != (f.shape[0],) or not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError(f"scale must be finite, >= 0, a float or of shape ({f.shape[0]},)")
    return s


def _pair_margins(f: Tensor, y: Tensor, rtol: float, s: Tensor) -> Tensor:
    """(B, C) float64 margins f_y − f_j minus the rounding allowance; +inf at j = y."""
    fy = f.gather(1, y[:, None])
    m = fy - f - 2.0 * rtol * (fy.abs() + f.abs() + 2.0 * s[:, None])
    return m.scatter(1, y[:, None], math.inf)


def certified_radius(
    logits: Tensor,
    lipschitz: Union[float, Tensor],
    norm: str = "l2",
    *,
    input_dim: Optional[int] = None,
    rtol: Optional[float] = None,
    scale: Union[None, float, Tensor] = None,
) -> Tensor:
    r"""Certified radius of the predicted class of each sample (see module docstring).

    Args:
        logits: (B, C) with C ≥ 2 (multiclass, prediction = argmax), or (B,) / (B, 1) for a
            single binary logit (prediction = f > 0). Finite.
        lipschitz: guaranteed upper bound L > 0 of the L2 Lipschitz constant of the logit map
            (float, or a (B,) tensor of per-sample bounds), e.g. from
            :func:`~liplayers.certify.lipschitz_bound`.
        norm: threat norm of the returned radius, ``"l2"`` or ``"linf"``.
        input_dim: number of input coordinates n (needed for ``"linf"``: r∞ = r₂/√n).
        rtol: relative float error assumed per logit (default :func:`default_rtol`).
        scale: magnitude s of the network's internal values for the rounding allowance
            (float or (B,); default 1).

    Returns:
        (B,) float64 radii ≥ 0, in input units of ``norm``: every x′ with ‖x′ − x‖ ≤ r gets
        the same prediction as x.

    Example:
        >>> import torch
        >>> from liplayers.certify import certified_radius
        >>> logits = torch.tensor([[3.0, 1.0, 0.0]])
        >>> r = certified_radius(logits, 1.0, rtol=0.0)  # margin 2 over √2·L
        >>> round(float(r[0]), 4)
        1.4142
    """
    f = _check_logits(logits).detach().to(torch.float64)
    L = _per_sample(_positive(lipschitz, "lipschitz"), f, "lipschitz")
    tol = _rtol(rtol, logits.dtype)
    s = _scale(scale, f)
    if _is_binary(logits):
        f = f.reshape(-1)
        margin = f.abs() - 2.0 * tol * (f.abs() + s)
        denom = L * _L_INFLATION
    else:
        if f.shape[1] < 2:  # pragma: no cover - guarded by _is_binary
            raise ValueError("multiclass logits need C >= 2")
        y = f.argmax(dim=1)
        margin = _pair_margins(f, y, tol, s).min(dim=1).values
        denom = math.sqrt(2.0) * L * _L_INFLATION
    if isinstance(denom, Tensor) and denom.dim() == 1:
        denom = denom.reshape(-1)
    r2 = (margin.clamp_min(0.0) / denom)
    return _convert(r2, norm, input_dim)


def certified_radius_last_layer(
    logits: Tensor,
    last_weight: Tensor,
    lipschitz_body: Union[float, Tensor],
    norm: str = "l2",
    *,
    input_dim: Optional[int] = None,
    rtol: Optional[float] = None,
    scale: Union[None, float, Tensor] = None,
) -> Tensor:
    r"""Tighter certified radius using the last linear layer: min_j (f_y − f_j)/(‖w_y − w_j‖ L_body).

    Args:
        logits: (B, C) logits of ``x ↦ W h(x) + b`` (or (B,) / (B, 1) binary with W of shape (1, d)).
        last_weight: the weight W (C, d) that the last layer *uses in eval mode* (e.g.
            ``BjorckLinear.eval_weight()``), not the intended one.
        lipschitz_body: guaranteed L2 Lipschitz upper bound of h (everything before W).
        norm, input_dim, rtol, scale: as in :func:`certified_radius`.

    Returns:
        (B,) float64 radii ≥ 0 (≥ the radius of :func:`certified_radius` with
        L = ‖W‖₂·L_body, up to the rounding allowance).
    """
    f = _check_logits(logits).detach().to(torch.float64)
    if not isinstance(last_weight, Tensor) or last_weight.dim() != 2:
        raise ValueError("last_weight must be a 2-D tensor (C, d)")
    if not bool(torch.isfinite(last_weight).all()):
        raise ValueError("last_weight contains non-finite values")
    Lb = _per_sample(_positive(lipschitz_body, "lipschitz_body"), f, "lipschitz_body")
    tol = _rtol(rtol, logits.dtype)
    s = _scale(scale, f)
    w = last_weight.detach().to(torch.float64)
    C = 1 if _is_binary(logits) else f.shape[1]
    if w.shape[0] != C:
        raise ValueError(f"last_weight has {w.shape[0]} rows but the logits have {C} classes")
    if _is_binary(logits):
        f = f.reshape(-1)
        wn = torch.linalg.vector_norm(w) * (1.0 + 1e-9)
        margin = f.abs() - 2.0 * tol * (f.abs() + s)
        if float(wn) == 0.0:  # constant output: the prediction never changes
            r2 = torch.where(margin > 0, torch.full_like(f, math.inf), torch.zeros_like(f))
        else:
            r2 = margin.clamp_min(0.0) / (wn * Lb * _L_INFLATION)
        return _convert(r2, norm, input_dim)
    y = f.argmax(dim=1)
    dist = torch.cdist(w[None], w[None], compute_mode="donot_use_mm_for_euclid_dist")[0] * (1.0 + 1e-9)
    d = dist[y]  # (B, C): ‖w_y − w_j‖
    m = _pair_margins(f, y, tol, s)
    ratio = torch.where(d > 0, m / d.clamp_min(1e-300),
                        torch.where(m > 0, torch.full_like(m, math.inf), torch.zeros_like(m)))
    ratio = ratio.scatter(1, y[:, None], math.inf)
    r2 = ratio.min(dim=1).values.clamp_min(0.0)
    r2 = r2 / (Lb * _L_INFLATION)
    return _convert(r2, norm, input_dim)
