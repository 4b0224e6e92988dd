r"""Information geometry of categorical distributions (pure tensor functions).

All functions are batched: the **last dimension indexes the classes** and every other
dimension is a batch dimension.  Inputs are logits (``from_logits=True``, the default) or
probability vectors (``from_logits=False``).

References: Shi-Garrier, Bouaynaya & Delahaye, "Adversarial Robustness with Partial
Isometry", Entropy 2024 (ISO); Picot et al., "Adversarial Robustness via Fisher-Rao
Regularization", IEEE TPAMI 2022 (FIRE).  Equation numbers below are those of these papers.

Geometry used throughout
------------------------
The Fisher information metric on the open simplex,
``g = sum_i dθ_i² / θ_i`` (Shi-Garrier et al. 2024 eq. 2; Picot et al. 2022 Sec. 6.1), becomes
the Euclidean metric of the sphere of radius 2 in the square-root coordinates ``μ = 2√θ``
(Shi-Garrier et al. 2024 eq. 11):
``dμ_i = dθ_i / √θ_i``.  Hence the Fisher–Rao (geodesic) distance is the arc length on that
sphere,

    d(p, q) = 2·arccos( Σ_i √(p_i q_i) )                    (Picot et al. 2022 eq. 15)
            = 4·arcsin( ‖√p − √q‖₂ / 2 ),

the second form being the chord-to-arc conversion (‖√p‖ = ‖√q‖ = 1 and
‖√p − √q‖² = 2 − 2·Σ√(p_i q_i)).  We always evaluate the arcsin form: arccos has an
infinite derivative at 1, i.e. exactly where p = q, and loses all precision for close
distributions (1 − cos is quadratic), whereas the chord is accurate to machine precision.
``√p`` is computed as ``exp(½·log_softmax(logits))`` so no ``sqrt`` of an underflowed
probability is ever differentiated.  Because ``‖√p − √q‖ ≤ √2`` for non-negative unit
vectors, the arcsin argument never exceeds 1/√2: value and gradient are finite everywhere
and d ∈ [0, π], with d = π exactly for disjoint supports.

Two constants that Shi-Garrier et al. (2024) conflate
-----------------------------------------------------
* :func:`delta_m` — ``δ_m = 2·arccos(1/√(m+1))`` with ``m + 1`` classes (Shi-Garrier et al.
  2024 eq. 5 as printed).  It is the Fisher–Rao distance from a vertex of the simplex to its
  centre (the uniform distribution).  The paper calls it the largest distance to the decision
  boundaries; that is only true for two classes.
* :func:`max_boundary_distance` — ``π/2`` for every number of classes: the largest
  Fisher–Rao distance from a point of the simplex to the **argmax decision boundary**
  ``{θ : the largest coordinate is attained at least twice}`` (attained, as a supremum,
  by a vertex; the nearest boundary point is the midpoint of an edge).  See
  :func:`distance_to_decision_boundary` for the closed form at any point.
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MAX_BOUNDARY_DISTANCE",
    "sqrt_probabilities",
    "sphere_coordinates",
    "stereographic_coordinates",
    "bhattacharyya_coefficient",
    "fisher_rao_distance",
    "fisher_rao_distance_binary",
    "kl_divergence",
    "hellinger_distance",
    "delta_m",
    "max_boundary_distance",
    "distance_to_decision_boundary",
    "DIVERGENCES",
    "get_divergence",
]

#: Largest Fisher–Rao distance from a point of the simplex to the argmax decision boundary
#: (any number of classes ≥ 2).  Not the δ_m of Shi-Garrier et al. (2024); see :func:`max_boundary_distance`.
MAX_BOUNDARY_DISTANCE: float = math.pi / 2


# --------------------------------------------------------------------------- validation
def _check_tensor(name: str, a: Tensor, *, min_classes: int = 1) -> None:
    if not isinstance(a, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(a).__name__}")
    if not a.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {a.dtype}")
    if a.dim() < 1:
        raise ValueError(f"{name} must have at least one dimension (the classes), got a scalar")
    if a.shape[-1] < min_classes:
        raise ValueError(
            f"{name} must have at least {min_classes} classes in its last dimension, "
            f"got shape {tuple(a.shape)}"
        )
    if not bool(torch.isfinite(a.detach()).all()):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")


def _prob_tolerance(dtype: torch.dtype) -> float:
    return 1e-6 if dtype == torch.float64 else 1e-4


def _check_probabilities(name: str, p: Tensor) -> None:
    tol = _prob_tolerance(p.dtype)
    pd = p.detach()
    if bool((pd < -tol).any()):
        raise ValueError(f"{name}: probabilities must be non-negative (from_logits=False)")
    s = pd.sum(-1)
    if bool(((s - 1).abs() > tol).any()):
        worst = float((s - 1).abs().max())
        raise ValueError(
            f"{name}: probabilities must sum to 1 over the last dimension (from_logits=False); "
            f"largest deviation {worst:.3g} exceeds tolerance {tol:g}. Did you mean from_logits=True?"
        )


def _check_pair(a: Tensor, b: Tensor, from_logits: bool, min_classes: int = 1) -> None:
    _check_tensor("a", a, min_classes=min_classes)
    _check_tensor("b", b, min_classes=min_classes)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: a has shape {tuple(a.shape)}, b has shape {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise ValueError(f"dtype mismatch: a is {a.dtype}, b is {b.dtype}")
    if not from_logits:
        _check_probabilities("a", a)
        _check_probabilities("b", b)


# --------------------------------------------------------------------------- coordinates
def _sqrt_probs(a: Tensor, from_logits: bool) -> Tensor:
    if from_logits:
        return torch.exp(0.5 * F.log_softmax(a, dim=-1))
    # sqrt'(0) = inf: clamp below at the smallest normal number so the gradient at an
    # exact zero is 0 instead of inf/nan; the value changes by at most sqrt(tiny) ~ 1e-19.
    return torch.sqrt(a.clamp_min(torch.finfo(a.dtype).tiny))


def _log_probs(a: Tensor, from_logits: bool) -> Tensor:
    return F.log_softmax(a, dim=-1) if from_logits else torch.log(a)


def sqrt_probabilities(a: Tensor, from_logits: bool = True, *, validate: bool = True) -> Tensor:
    """``√p`` (shape of ``a``): a point of the unit sphere's positive orthant.

    From logits it is ``exp(½·log_softmax(a))`` (finite value and gradient everywhere).
    """
    if validate:
        _check_tensor("a", a)
        if not from_logits:
            _check_probabilities("a", a)
    return _sqrt_probs(a, from_logits)


def sphere_coordinates(a: Tensor, from_logits: bool = True, *, validate: bool = True) -> Tensor:
    """Square-root coordinates ``μ = 2√p`` (Shi-Garrier et al. 2024 §3.4), all m+1 classes kept.

    Shape of ``a``.  ``μ`` lies on the sphere of radius 2, on which the Fisher information
    metric is the induced Euclidean metric (Shi-Garrier et al. 2024 eq. 11).
    """
    return 2.0 * sqrt_probabilities(a, from_logits, validate=validate)


def stereographic_coordinates(a: Tensor, from_logits: bool = True, *, validate: bool = True) -> Tensor:
    r"""Stereographic coordinates ``t = 2μ_{1:m} / (2 − μ_{m+1})`` (Shi-Garrier et al. 2024 §3.4).

    Input ``(..., m+1)``, output ``(..., m)``.  Projection from the pole ``μ = 2e_{m+1}``
    (the vertex of the **last** class).  In these coordinates the Fisher metric is
    ``4/(1 + ‖t/2‖²)² · Σ dt_i²`` (Shi-Garrier et al. 2024 eq. 12) and ``1 + ‖t/2‖² = 2/(1 − √θ_{m+1})``,
    which blows up when the last class is predicted with confidence.  Provided to reproduce
    and test the paper's formulation; the library's ISO regularizer works in ``μ`` instead.
    """
    mu = sphere_coordinates(a, from_logits, validate=validate)
    if mu.shape[-1] < 2:
        raise ValueError("stereographic coordinates need at least 2 classes")
    return 2.0 * mu[..., :-1] / (2.0 - mu[..., -1:])


# --------------------------------------------------------------------------- divergences
def bhattacharyya_coefficient(a: Tensor, b: Tensor, from_logits: bool = True, *, validate: bool = True) -> Tensor:
    """``BC(p, q) = Σ_i √(p_i q_i) = cos(d/2)`` in [0, 1]; shape ``a.shape[:-1]``."""
    if validate:
        _check_pair(a, b, from_logits)
    return (_sqrt_probs(a, from_logits) * _sqrt_probs(b, from_logits)).sum(-1)


def fisher_rao_distance(a: Tensor, b: Tensor, from_logits: bool = True, *, validate: bool = True) -> Tensor:
    r"""Fisher–Rao distance between categorical distributions (Picot et al. 2022 eq. 15).

    ``d(p, q) = 2 arccos Σ √(p_i q_i) = 4 arcsin(‖√p − √q‖₂ / 2)``, evaluated in the arcsin
    form (see the module docstring): finite value and gradient everywhere, including
    ``p = q`` and near-one-hot ``p`` in float32.

    Args:
        a, b: logits (``from_logits=True``) or probabilities, same shape ``(..., C)``.
        from_logits: interpret the inputs as logits (softmax over the last dim).
        validate: check shapes, finiteness and (for probabilities) normalisation.

    Returns:
        Tensor of shape ``(...)``, values in ``[0, π]`` (radians of arc on the sphere of
        radius 2, the natural unit of the Fisher metric).  ``KL ≈ d²/2`` for close
        distributions (Picot et al. 2022 eq. 17).

    Raises:
        ValueError: mismatched shapes/dtypes, non-finite entries, or probabilities that are
            negative or do not sum to 1 (``from_logits=False``).
    """
    if validate:
        _check_pair(a, b, from_logits)
    diff = _sqrt_probs(a, from_logits) - _sqrt_probs(b, from_logits)
    half_chord = torch.linalg.vector_norm(diff, dim=-1) / 2
    return 4.0 * torch.asin(half_chord.clamp(0.0, 1.0))


def fisher_rao_distance_binary(h1: Tensor, h2: Tensor, *, validate: bool = True) -> Tensor:
    r"""Fisher–Rao distance of the binary model ``q(y|x) = 1/(1 + e^{−y·h})`` (Picot et al. 2022 eq. 9).

    ``d = 2·|arctan(e^{h2/2}) − arctan(e^{h1/2})|`` for real logits ``h1, h2`` of the same
    shape (any shape; no class dimension).  Evaluated overflow-free through
    ``arctan(e^{z/2}) = π/4 + arctan(tanh(z/4))``.  Equals :func:`fisher_rao_distance` of the
    two-class logits ``[0, h]`` (Picot et al. 2022 eq. 40) and satisfies ``d ≤ ½|h2 − h1|``
    (Picot et al. 2022 Prop. 1).
    """
    if validate:
        for name, h in (("h1", h1), ("h2", h2)):
            if not isinstance(h, Tensor) or not h.is_floating_point():
                raise ValueError(f"{name} must be a floating-point tensor")
            if not bool(torch.isfinite(h.detach()).all()):
                raise ValueError(f"{name} contains non-finite values (nan or inf)")
        if h1.shape != h2.shape:
            raise ValueError(f"shape mismatch: h1 has shape {tuple(h1.shape)}, h2 has shape {tuple(h2.shape)}")
    return 2.0 * (torch.atan(torch.tanh(h2 / 4)) - torch.atan(torch.tanh(h1 / 4))).abs()


def kl_divergence(a: Tensor, b: Tensor, from_logits: bool = True, *, validate: bool = True) -> Tensor:
    r"""Kullback–Leibler divergence ``KL(p ‖ q) = Σ p_i (log p_i − log q_i)`` (nats).

    ``p`` from ``a``, ``q`` from ``b``; shape ``(...)``.  Terms with ``p_i = 0`` count 0;
    with probabilities, ``q_i = 0 < p_i`` gives ``+inf``.  TRADES uses
    ``KL(p(x) ‖ p(x'))`` (clean first).  ``1 − cos(d/2) ≤ KL/2`` (Picot et al. 2022 Thm. 3).
    """
    if validate:
        _check_pair(a, b, from_logits)
    if from_logits:
        logp = F.log_softmax(a, dim=-1)
        logq = F.log_softmax(b, dim=-1)
        return (logp.exp() * (logp - logq)).sum(-1)
    return (torch.special.xlogy(a, a) - torch.special.xlogy(a, b)).sum(-1)


def hellinger_distance(a: Tensor, b: Tensor, from_logits: bool = True, *, validate: bool = True) -> Tensor:
    r"""Hellinger distance as in Picot et al. (2022) eq. 46: ``H = √2·(1 − Σ√(p_i q_i))^{1/2} = ‖√p − √q‖₂``.

    Shape ``(...)``, values in ``[0, √2]`` (note: some texts include a factor 1/√2).
    ``H² = 2(1 − cos(d/2))`` (Picot et al. 2022 eq. 47), so ``H² ≈ d²/4`` for close distributions.
    Computed as the norm of ``√p − √q`` (no cancellation); its gradient at ``p = q`` is 0.
    """
    if validate:
        _check_pair(a, b, from_logits)
    return torch.linalg.vector_norm(_sqrt_probs(a, from_logits) - _sqrt_probs(b, from_logits), dim=-1)


# --------------------------------------------------------------------------- constants
def _check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise ValueError(f"num_classes must be an int, got {num_classes!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return num_classes


def delta_m(num_classes: int) -> float:
    r"""``δ_m = 2·arccos(1/√(m+1))``, ``m+1 = num_classes`` (Shi-Garrier et al. 2024, eq. 5 as printed).

    This is the Fisher–Rao distance from a vertex of the simplex to the uniform
    distribution.  The paper states it is ``sup_θ d(θ, B)``; for the argmax decision
    boundary that supremum is ``π/2`` for every number of classes
    (:func:`max_boundary_distance`), which equals ``δ_m`` only for two classes
    (``δ_m > π/2`` for three or more).  Kept to reproduce the paper (ISO's default scale
    ``K = δ_m/ε`` uses it).
    """
    n = _check_num_classes(num_classes)
    return 2.0 * math.acos(1.0 / math.sqrt(n))


def max_boundary_distance(num_classes: int | None = None) -> float:
    r"""``π/2``: the largest Fisher–Rao distance from a point to the argmax decision boundary.

    Independent of the number of classes (the argument is only validated).  In sphere
    coordinates ``s = √p`` the boundary between the top class ``i`` and the runner-up
    ``j`` is the great sphere ``s_i = s_j``, so the distance is
    ``2·arcsin((s_(1) − s_(2))/√2) ≤ 2·arcsin(1/√2) = π/2`` (equality at a vertex, whose
    nearest boundary point is an edge midpoint).  Contrast with :func:`delta_m`, the
    vertex-to-centre distance.
    """
    if num_classes is not None:
        _check_num_classes(num_classes)
    return MAX_BOUNDARY_DISTANCE


def distance_to_decision_boundary(a: Tensor, from_logits: bool = True, *, validate: bool = True) -> Tensor:
    r"""Fisher–Rao distance from ``p`` to the argmax decision boundary; shape ``(...)``.

    ``2·arcsin((√p_(1) − √p_(2)) / √2)`` with ``p_(1) ≥ p_(2)`` the two largest
    probabilities (derivation in :func:`max_boundary_distance`).  In ``[0, π/2]``.
    """
    if validate:
        _check_tensor("a", a, min_classes=2)
        if not from_logits:
            _check_probabilities("a", a)
    s = _sqrt_probs(a, from_logits)
    top2 = torch.topk(s, 2, dim=-1).values
    gap = (top2[..., 0] - top2[..., 1]) / math.sqrt(2.0)
    return 2.0 * torch.asin(gap.clamp(0.0, 1.0))


# --------------------------------------------------------------------------- registry
#: divergence name -> function(a, b, from_logits=True, *, validate=True) -> (...)
DIVERGENCES: Dict[str, Callable[..., Tensor]] = {
    "fisher_rao": fisher_rao_distance,
    "kl": kl_divergence,
    "hellinger": hellinger_distance,
}


def get_divergence(name: str) -> Callable[..., Tensor]:
    """Look up a divergence by name: ``"fisher_rao"``, ``"kl"`` or ``"hellinger"``."""
    try:
        return DIVERGENCES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown divergence {name!r}; expected one of {sorted(DIVERGENCES)}") from None
