r"""Variants of ISO: the partial-isometry condition with the Euclidean metric on the outputs, and layer by layer.

ISO (Shi-Garrier, Bouaynaya & Delahaye, "Adversarial Robustness with Partial Isometry", Entropy 2024;
:mod:`liplayers.regularizers.iso`) asks the model to be a scaled *partial isometry* from the inputs
(Euclidean metric) to the probability simplex with the **Fisher** metric. Their closing
questions — is the Fisher metric really needed, and can ISO be applied layer by layer like
Parseval regularization (Cissé et al., ICML 2017)? — are what these two variants measure.

Euclidean metric on the outputs
-------------------------------
Let ``φ(x) ∈ R^C`` be either the probabilities ``p = softmax(s(x))`` (``output="probs"``) or the
centred logits ``s̄ = s − (1ᵀs/C)·1`` (``output="logits"``; softmax only sees the logits up
to a common shift). In both cases ``1ᵀφ`` is constant (1, resp. 0), so ``1ᵀJ_φ = 0``: the rows
of ``J_φ = ∂φ/∂x`` (``C × n``) span a subspace of ``T = 1^⊥``, whose orthogonal projector is
``P = I − 11ᵀ/C``. The pull-back of the Euclidean metric of the outputs is ``J_φᵀJ_φ`` and the
partial-isometry condition with length factor ``K`` ("``dφ`` multiplies Euclidean lengths by ``K``
on ``(ker J_φ)^⊥``", the analogue of the Fisher form's ``J_μJ_μᵀ = K²(I − μμᵀ/4)``) reads::

    J_φ J_φᵀ = K² P                                                   (★E)

and the penalty is, as in the Fisher form (eq. 14, with the paper's ``ε²`` prefactor)::

    α_E(x) = ε² · ‖J_φ J_φᵀ − K² P‖_F,        K = δ/ε,

``α_E ≥ 0`` with equality iff (★E). Default ``δ``: for probabilities the Euclidean distance from
a vertex of the simplex to its centre, ``√((C−1)/C)`` (the analogue of ISO's ``δ_m``, the
Fisher–Rao vertex-to-centre distance); the Euclidean distance from a vertex to the argmax
decision boundary is ``1/√2`` (pass ``scale`` to use it). Centred logits have no bounded analogue:
the default is ``δ = 1``. For a linear model ``s = Wx`` the logit form of (★E) is
``P W Wᵀ P = K² P``: the centred rows of ``W`` form a scaled Parseval frame — the Euclidean-logit
ISO of a linear map *is* Parseval regularization, the resemblance the ISO authors anticipate.

Estimators (as in :mod:`liplayers.regularizers.iso`): ``"exact"`` (``torch.func.jacrev``, ``C``
reverse passes, vmapped) or ``"randomized"`` (``k ≥ 2`` forward-mode JVPs ``u_i = J_φ v_i`` with
``E[vvᵀ] = I``; the U-statistic ``mean_{i≠j}(u_iᵀu_j)² − (2/k)Σ_i u_iᵀ(K²P)u_i + K⁴(C−1)`` is an
unbiased estimate of ``‖J_φJ_φᵀ − K²P‖²_F``, hence ``squared=True`` gives an unbiased estimate
of ``α_E²``; ``squared=False`` returns ``ε²√max(U, 0)``, consistent but biased).

Layer-wise ISO
--------------
Split a sequential model into blocks ``f = f_L ∘ … ∘ f_1`` (:func:`layer_blocks`: each block is a
layer with parameters followed by the parameter-free modules after it), ``h_0 = x``,
``h_ℓ = f_ℓ(h_{ℓ−1})`` and ``J_ℓ = ∂f_ℓ/∂h_{ℓ−1}`` at the data point (``m_ℓ × n_ℓ``). The block is a
partial isometry of factor ``K_ℓ`` (Euclidean metric on both sides, kernel left free as ISO leaves
the kernel of the whole map free) iff every non-zero singular value of ``J_ℓ`` equals ``K_ℓ``, i.e.::

    J_ℓ J_ℓᵀ J_ℓ = K_ℓ² J_ℓ,                                            (★L)

and the penalty is ``β_ℓ = ‖J_ℓJ_ℓᵀJ_ℓ − K_ℓ²J_ℓ‖²_F = Σ_i σ_i²(σ_i² − K_ℓ²)²`` (divided by
``m_ℓ`` with ``normalize=True``), summed over the blocks. Why (★L) and not ``J_ℓJ_ℓᵀ = I``
(Parseval at the data points): after a ReLU ``J_ℓ = DW`` with ``D`` the 0/1 diagonal of active
units, and ``DWWᵀD = I`` would forbid inactive units, while ``W Wᵀ = I ⇒ (DW)(DW)ᵀ(DW) = DW``: an
orthonormal-row layer followed by ReLU, or an orthogonal layer followed by MaxMin/GroupSort (a
permutation), satisfies (★L) at *every* input. If all blocks satisfy it,
``‖J_f‖₂ ≤ ∏ K_ℓ`` along the data, but a product of partial isometries need not be one (its
singular values are cosines of principal angles between consecutive ranges and co-kernels):
layer-wise ISO constrains like Parseval and is weaker than ISO of the whole map.

Estimator: for probes ``v`` with ``E[vvᵀ] = I``, ``E‖A v‖² = ‖A‖²_F`` with
``A v = J(Jᵀ(Jv)) − K²Jv`` — two JVPs and one VJP per block and probe (``torch.func``), an
**unbiased** estimate of ``β_ℓ`` and of its parameter gradient. ``estimator="exact"`` forms each
``J_ℓ`` (vmapped ``jacrev``; small blocks only, for testing).

All functions assume the model treats samples independently (no BatchNorm in training mode).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jacrev, jvp, vjp, vmap

from ..functional import random as _rng
from ..losses._common import _check_reduction, _reduce
from ..utils import accepts_renamed_kwargs
from ._iso_common import (_check_estimator, _check_int, _check_logits, _check_positive, _check_x, _gram_terms,
                          _jvp_probes, _output_jacobian, _safe_sqrt, _ScheduledISO)

__all__ = [
    "euclidean_delta",
    "euclidean_output_jacobian",
    "euclidean_iso_penalty",
    "EuclideanISOLoss",
    "layer_blocks",
    "layerwise_iso_penalty",
    "LayerwiseISOLoss",
]

_OUTPUTS = ("probs", "logits")


def euclidean_delta(num_classes: int, output: str = "probs") -> float:
    """Default ``δ`` of the Euclidean variant: ``√((C−1)/C)`` (vertex to centre of the simplex) or 1 (logits)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
    return math.sqrt((num_classes - 1) / num_classes) if output == "probs" else 1.0


def _phi(logits: Tensor, output: str) -> Tensor:
    if output == "probs":
        return torch.softmax(logits, dim=-1)
    return logits - logits.mean(dim=-1, keepdim=True)


def _check_output(output: str) -> str:
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
    return output


def euclidean_output_jacobian(model: nn.Module, x: Tensor, output: str = "probs", *, return_logits: bool = False):
    """Exact ``J_φ = ∂φ/∂x`` per sample, ``(B, C, n)``, ``φ`` = probabilities or centred logits."""
    _check_output(output)
    J, logits = _output_jacobian(model, x, lambda lg: _phi(lg, output))
    return (J, logits) if return_logits else J


def _euclid(model, x, eps, scale, output, estimator, num_probes, generator, squared, probe):
    _check_x(x)
    eps = _check_positive("eps", eps)
    _check_output(output)
    if scale is not None:
        _check_positive("scale", scale)
    if estimator == "exact":
        J, logits = euclidean_output_jacobian(model, x, output, return_logits=True)
        C = logits.shape[1]
        K = scale if scale is not None else euclidean_delta(C, output) / eps
        P = torch.eye(C, dtype=J.dtype, device=J.device) - 1.0 / C
        A = J @ J.transpose(1, 2) - K * K * P
        sq = (A * A).sum((1, 2))
    elif estimator == "randomized":
        k = _check_int("num_probes (the unbiased U-statistic needs two independent probes)", num_probes, 2)
        _, u, logits = _jvp_probes(model, x, k, probe, generator, lambda lg: _phi(lg, output))
        _check_logits(logits, x.shape[0])
        C = logits.shape[1]
        K = scale if scale is not None else euclidean_delta(C, output) / eps
        u = u.reshape(k, x.shape[0], C)
        mean_off, diag = _gram_terms(u)
        uCu = K * K * (diag - u.sum(-1).transpose(0, 1).pow(2) / C)  # u^T (K^2 P) u
        sq = mean_off - (2.0 / k) * uCu.sum(1) + K ** 4 * (C - 1)
    else:
        _check_estimator(estimator)
    e2 = eps * eps
    return (e2 * e2 * sq if squared else e2 * _safe_sqrt(sq)), logits


@accepts_renamed_kwargs({"epsilon": "eps"})
def euclidean_iso_penalty(model: nn.Module, x: Tensor, eps: float, scale: Optional[float] = None,
                          output: str = "probs", estimator: str = "exact", num_probes: int = 2,
                          generator: Optional[torch.Generator] = None, *, squared: bool = False,
                          probe: str = "rademacher") -> Tensor:
    r"""``α_E(x) = ε²‖J_φJ_φᵀ − K²(I − 11ᵀ/C)‖_F`` per sample, ``(B,)`` (module docstring).

    Args:
        model: ``x (B, ...) → logits (B, C)``; samples must not interact.
        x: inputs; the Jacobian is taken w.r.t. all ``n = x[0].numel()`` features.
        eps: ``ε > 0``, a radius in input units; prefactor ``ε²`` and default ``K = δ/ε``.
        scale: ``K > 0`` (default ``δ/ε`` with :func:`euclidean_delta`).
        output: ``"probs"`` (softmax probabilities) or ``"logits"`` (centred logits).
        estimator, num_probes, generator, squared, probe: as in
            :func:`liplayers.regularizers.iso_penalty` (Frobenius deviation only).

    Returns:
        ``(B,)``, differentiable w.r.t. the parameters; 0 iff ``J_φJ_φᵀ = K²P`` (exact estimator).

    Shape: x (B, ...) → (B,).
    """
    return _euclid(model, x, eps, scale, output, estimator, num_probes, generator, squared, probe)[0]


class EuclideanISOLoss(_ScheduledISO):
    r"""ISO's eq. 15 with the Euclidean output metric: ``loss = (1 − lam)·CE(f(x), y) + lam·α_E(x)``.

    Args: ``eps``, ``scale``, ``output``, ``estimator``, ``num_probes``, ``squared``, ``probe``,
    ``generator`` as in :func:`euclidean_iso_penalty`; ``lam``, ``lam_min``, ``lam_max``,
    ``num_epochs``, ``reduction`` as in :class:`liplayers.regularizers.ISOLoss` (a fixed ``lam``,
    or call :meth:`set_epoch` each epoch for the schedule). ``forward(model, x, y) -> loss``.

    Shape: x (B, ...), y (B,) → scalar, or (B,) with ``reduction="none"``.
    """

    @accepts_renamed_kwargs({"epsilon": "eps", "eta": "lam", "eta_min": "lam_min", "eta_max": "lam_max"})
    def __init__(self, eps: float, scale: Optional[float] = None, *, output: str = "probs",
                 lam: Optional[float] = None, lam_min: float = 0.002, lam_max: float = 0.006, num_epochs: int = 30,
                 estimator: str = "exact", num_probes: int = 2, squared: bool = False, probe: str = "rademacher",
                 reduction: str = "mean", generator: Optional[torch.Generator] = None):
        super().__init__(eps, scale, lam, lam_min, lam_max, num_epochs, estimator, reduction)
        self.output = _check_output(output)
        self.num_probes, self.squared, self.probe = num_probes, squared, probe
        self.generator = generator

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        pen, logits = _euclid(model, x, self.eps, self.scale, self.output, self.estimator, self.num_probes,
                              self.generator, self.squared, self.probe)
        return self._combine(F.cross_entropy(logits, y, reduction="none"), pen)


# --------------------------------------------------------------------------- layer-wise
def layer_blocks(model: nn.Sequential) -> List[nn.Sequential]:
    """Split a sequential model into blocks: a module with parameters plus the parameter-free modules after it.

    Parameter-free modules before the first parametrized one join the first block; the
    composition of the blocks is the model. Raises ``ValueError`` for a non-sequential model
    or one without parameters.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"layer-wise ISO needs an nn.Sequential (or a list of blocks), got {type(model).__name__}")
    def has_params(m: nn.Module) -> bool:
        return any(True for _ in m.parameters())

    if not any(has_params(m) for m in model):
        raise ValueError("layer-wise ISO: the model has no parameters")
    groups: List[List[nn.Module]] = [[]]
    for m in model:
        if has_params(m) and any(has_params(g) for g in groups[-1]):
            groups.append([])
        groups[-1].append(m)
    return [nn.Sequential(*g) for g in groups]


def _scales(scales, L: int) -> List[float]:
    if isinstance(scales, (int, float)) and not isinstance(scales, bool):
        out = [float(scales)] * L
    else:
        out = [float(s) for s in scales]
        if len(out) != L:
            raise ValueError(f"scales has {len(out)} entries for {L} blocks")
    for s in out:
        _check_positive("scale", s)
    return out


def _block_defect(block: nn.Module, h: Tensor, K: float, estimator: str, num_probes: int, probe: str,
                  generator: Optional[torch.Generator]):
    """(output of the block, per-sample ‖JJᵀJ − K²J‖²_F (B,))."""
    B = h.shape[0]
    if estimator == "exact":
        out = block(h)

        def single(z):
            return block(z[None])[0]

        J = vmap(jacrev(single))(h).reshape(B, out[0].numel(), h[0].numel())
        A = J @ J.transpose(1, 2) @ J - K * K * J
        return out, (A * A).sum((1, 2))
    V = _rng.probes(h.shape, num_probes, probe, generator, h.dtype, h.device)
    total = h.new_zeros(B)
    out = None
    for v in V:  # k is small (1-2)
        out, u = jvp(block, (h,), (v,))
        _, pull = vjp(block, h)
        (w,) = pull(u)
        _, z = jvp(block, (h,), (w,))
        total = total + (z - K * K * u).reshape(B, -1).pow(2).sum(1)
    return out, total / num_probes


def layerwise_iso_penalty(model: Union[nn.Sequential, Sequence[nn.Module]], x: Tensor,
                          scales: Union[float, Sequence[float]] = 1.0, *, skip_last: bool = False,
                          estimator: str = "randomized", num_probes: int = 1, probe: str = "rademacher",
                          normalize: bool = True, generator: Optional[torch.Generator] = None,
                          return_logits: bool = False):
    r"""Layer-wise ISO ``Σ_ℓ ‖J_ℓJ_ℓᵀJ_ℓ − K_ℓ²J_ℓ‖²_F`` per sample, ``(B,)`` (module docstring).

    Args:
        model: an ``nn.Sequential`` (split by :func:`layer_blocks`) or the list of its blocks.
        x: inputs ``(B, ...)``.
        scales: ``K_ℓ > 0``, one float for every block or one per block (default 1).
        skip_last: leave the last block (the logits layer) unpenalized: its scale then is free,
            as the logit scale a cross-entropy needs.
        estimator: ``"randomized"`` (default, unbiased, ``num_probes ≥ 1``) or ``"exact"``.
        probe: ``"rademacher"`` or ``"gaussian"``.
        normalize: divide each block's term by its number of output features ``m_ℓ``.
        generator: :class:`torch.Generator` for the probes.
        return_logits: also return the model's output (computed on the way; no extra pass).

    Returns:
        ``(B,)`` (and the logits), differentiable w.r.t. the parameters; 0 iff every
        (penalized) block is a partial isometry of factor ``K_ℓ`` at the data (exact estimator).

    Shape: x (B, ...) → (B,) (logits (B, C) with ``return_logits``).
    """
    _check_x(x)
    blocks = layer_blocks(model) if isinstance(model, nn.Module) else list(model)
    if not blocks or not all(isinstance(b, nn.Module) for b in blocks):
        raise ValueError("model must be an nn.Sequential or a non-empty sequence of nn.Module blocks")
    if _check_estimator(estimator) == "randomized":
        _check_int("num_probes", num_probes, 1)
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    Ks = _scales(scales, len(blocks))
    h = x
    total = x.new_zeros(x.shape[0])
    for i, (block, K) in enumerate(zip(blocks, Ks)):
        if skip_last and i == len(blocks) - 1:
            h = block(h)
            break
        out, d = _block_defect(block, h, K, estimator, num_probes, probe, generator)
        total = total + (d / out[0].numel() if normalize else d)
        h = out
    return (total, h) if return_logits else total


class LayerwiseISOLoss(nn.Module):
    r"""``loss = CE(f(x), y) + lam·Σ_ℓ β_ℓ(x)`` with the layer-wise ISO penalty (:func:`layerwise_iso_penalty`).

    Args:
        lam: weight ``lam ≥ 0`` of the penalty.
        scales, skip_last, estimator, num_probes, probe, normalize, generator: as in
            :func:`layerwise_iso_penalty`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    ``forward(model, x, y) -> loss``; the logits come from the same pass as the penalty.

    Shape: x (B, ...), y (B,) → scalar, or (B,) with ``reduction="none"``.
    """

    def __init__(self, lam: float = 1.0, scales: Union[float, Sequence[float]] = 1.0, *, skip_last: bool = True,
                 estimator: str = "randomized", num_probes: int = 1, probe: str = "rademacher",
                 normalize: bool = True, reduction: str = "mean", generator: Optional[torch.Generator] = None):
        super().__init__()
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (lam >= 0) or not math.isfinite(lam):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        self.reduction = _check_reduction(reduction)
        self.lam, self.scales, self.skip_last, self.estimator = float(lam), scales, skip_last, estimator
        self.num_probes, self.probe, self.normalize = num_probes, probe, normalize
        self.generator = generator
        self.last_ce: Optional[Tensor] = None
        self.last_alpha: Optional[Tensor] = None

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        pen, logits = layerwise_iso_penalty(model, x, self.scales, skip_last=self.skip_last,
                                            estimator=self.estimator, num_probes=self.num_probes, probe=self.probe,
                                            normalize=self.normalize, generator=self.generator, return_logits=True)
        ce = F.cross_entropy(logits, y, reduction="none")
        self.last_ce, self.last_alpha = ce.detach().mean(), pen.detach().mean()
        return _reduce(ce + self.lam * pen, self.reduction)
