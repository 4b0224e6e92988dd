r"""Shared argument checks and reductions for the criteria of :mod:`liplayers.losses`.

One copy of each helper, imported by the loss modules:

* :func:`_check_reduction` / :func:`_reduce` — ``"mean"``, ``"sum"`` or ``"none"``.
* :func:`_nonneg` / :func:`_positive` — finite Python numbers ≥ 0 / > 0 (booleans refused).
* :func:`_check_logits` / :func:`_multiclass` — ``(B, C)`` floating-point logits with C ≥ 2 and
  ``(B,)`` integer class indices in ``[0, C)``.
* :func:`_lipschitz` / :func:`_pair_constants` — the Lipschitz constant K_{aj} of each logit
  difference f_a − f_j used by margin certificates (see below).

Pairwise constants.  If the logit map f is L-Lipschitz (L2), every difference f_a − f_j is
√2·L-Lipschitz (‖e_a − e_j‖₂ = √2), so K_{aj} = √2·L for all j ≠ a.  If f = W·g + b with an
L'-Lipschitz body g and last-layer rows w_j, then f_a − f_j = (w_a − w_j)·g + const is
L'·‖w_a − w_j‖₂-Lipschitz, which is never larger than √2·L'·‖W‖₂ (‖w_a − w_j‖₂ = ‖Wᵀ(e_a − e_j)‖₂) and often smaller.
The distances ‖w_a − w_j‖₂ are computed by direct differences (no Gram-matrix expansion,
whose cancellation could round a distance *down*), with a finite gradient where two rows
coincide.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

_REDUCTIONS = ("mean", "sum", "none")

LipschitzType = Union[float, Tensor]


# --------------------------------------------------------------------------- reductions
def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


# --------------------------------------------------------------------------- numbers
def _nonneg(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- logits / labels
def _check_logits(input: Tensor, who: str) -> Tensor:
    """Validate floating-point multiclass logits of shape (B, C) with C >= 2."""
    if not isinstance(input, Tensor) or not input.is_floating_point() or input.dim() != 2:
        raise ValueError(f"{who}: input must be floating-point logits of shape (B, C), got "
                         f"{tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__}")
    if input.shape[1] < 2:
        raise ValueError(f"{who}: multiclass input needs C >= 2 logits, got shape {tuple(input.shape)}; "
                         "use a binary loss for a single logit")
    return input


def _multiclass(input: Tensor, target: Tensor, who: str) -> Tensor:
    """Validate (B, C) logits and (B,) integer labels; return labels as int64."""
    _check_logits(input, who)
    if not isinstance(target, Tensor) or target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"{who}: target must be an integer tensor of class indices of shape (B,)")
    if target.shape != (input.shape[0],):
        raise ValueError(f"{who}: target must have shape ({input.shape[0]},), got {tuple(target.shape)}")
    target = target.to(device=input.device, dtype=torch.int64)
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= input.shape[1]):
        raise ValueError(f"{who}: class indices must lie in [0, {input.shape[1]}), got range "
                         f"[{int(target.min())}, {int(target.max())}]")
    return target


# --------------------------------------------------------------------------- Lipschitz constants
def _lipschitz(lipschitz: LipschitzType, who: str, name: str = "lipschitz") -> LipschitzType:
    """A Lipschitz bound: a finite number > 0, or a one-element floating tensor > 0 (kept, with its graph)."""
    if isinstance(lipschitz, Tensor):
        if not lipschitz.is_floating_point() or lipschitz.numel() != 1:
            raise ValueError(f"{who}: {name} must be a number or a one-element floating tensor, got "
                             f"a {lipschitz.dtype} tensor of shape {tuple(lipschitz.shape)}")
        value = float(lipschitz.detach())
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{who}: {name} must be finite and > 0, got {value!r}")
        return lipschitz.reshape(())
    if isinstance(lipschitz, bool) or not isinstance(lipschitz, (int, float)) or not math.isfinite(lipschitz) \
            or lipschitz <= 0:
        raise ValueError(f"{who}: {name} must be a finite number > 0, got {lipschitz!r}")
    return float(lipschitz)


def _last_weight(last_weight: Tensor, num_classes: int, who: str) -> Tensor:
    if not isinstance(last_weight, Tensor) or not last_weight.is_floating_point() or last_weight.dim() != 2:
        got = tuple(last_weight.shape) if isinstance(last_weight, Tensor) else type(last_weight).__name__
        raise ValueError(f"{who}: last_weight must be a floating-point matrix (C, d) of last-layer rows, got {got}")
    if last_weight.shape[0] != num_classes:
        raise ValueError(f"{who}: last_weight has {last_weight.shape[0]} rows but the logits have "
                         f"{num_classes} classes")
    if not bool(torch.isfinite(last_weight.detach()).all()):
        raise ValueError(f"{who}: last_weight contains non-finite values")
    return last_weight


def _pair_constants(input: Tensor, anchor: Tensor, lipschitz: LipschitzType,
                    last_weight: Optional[Tensor], who: str) -> Tensor:
    r"""(B, C) Lipschitz constants K_{a j} of f_a − f_j for the anchor class a of each row (0 at j = a).

    ``last_weight is None``: K = √2·L with L the bound of the whole logit map.
    Otherwise K_{aj} = L'·‖w_a − w_j‖₂ with L' the bound of the body before the last layer.
    Gradients flow into ``lipschitz`` (tensor) and ``last_weight``.
    """
    lip = _lipschitz(lipschitz, who)
    B, C = input.shape
    if last_weight is None:
        off = 1.0 - torch.nn.functional.one_hot(anchor, C).to(input.dtype)
        return (off * (math.sqrt(2.0) * lip)).to(input.dtype)
    W = _last_weight(last_weight, C, who)
    dist = torch.cdist(W[None], W[None], compute_mode="donot_use_mm_for_euclid_dist")[0]  # (C, C), exact 0 diag
    return (lip * dist.index_select(0, anchor)).to(input.dtype)
