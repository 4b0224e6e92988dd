r"""Parseval regularization (Cissé et al. 2017): penalty and retraction.

Both styles are supported:

* **penalty in the loss**: ``loss = task_loss + parseval_penalty(model, beta)`` with
  β/2 · Σ_W ‖W Wᵀ − I‖²_F (on the smaller Gram side, see below);
* **separate retraction step** (Parseval networks proper, Cissé et al. 2017: the
  regularization is a step separate from learning): after each ``optimizer.step()``,
  W ← (1 + β) W − β W Wᵀ W, via :func:`parseval_retraction_`, the :class:`ParsevalRetraction`
  helper, or a hook installed by :func:`register_parseval_retraction`.

Maths. For W of shape (m, n), R(W) = ¼‖WᵀW − I‖²_F has gradient W(WᵀW − I), so the retraction is
exactly one gradient step of size β on R. On singular values it acts as
σ ← g(σ) = (1 + β)σ − βσ³, and g(σ) − 1 = (σ − 1)(1 − βσ(σ + 1)): whenever
0 < σ and βσ(σ + 1) ≤ 1 (e.g. β ≤ ½ and ‖W‖₂ ≤ 1, or β ≤ ⅙ and ‖W‖₂ ≤ 2), every singular
value moves monotonically towards 1 without overshoot, so ‖W Wᵀ − I‖_F (smaller side)
decreases at each step. β = ½ is exactly one Björck step W ← W(3I − WᵀW)/2 (Anil, Lucas &
Grosse 2019); Cissé et al. use β ≈ 3·10⁻⁴, which (Anil et al.) leaves weights far
from orthonormal. Singular values equal to 0 stay 0.

Smaller side. Only min(m, n) singular values exist; WWᵀ − I (m ≤ n) or WᵀW − I (m > n) is the
Gram matrix of that side, so the penalty does not count the n − m unavoidable zero
singular values of the larger Gram matrix (which would make a wide matrix's penalty ≥ n − m
for any W). The retraction is the same matrix either way; only the product order differs.

Convolutions. A kernel (out, in, *k) is reshaped to (out, in·∏k) as in Cissé et al. Making this
matrix orthonormal does **not** make the convolution 1-Lipschitz: for stride 1 the bound is
‖conv‖₂ ≤ √(∏k)·‖W_reshaped‖₂ (each input pixel is in at most ∏k patches). Parseval is a
regularizer, never a certificate: certify with :func:`liplayers.certify.lipschitz_bound`, which
bounds the layers from their actual weights.

Which weights: :func:`parseval_weights` collects the ``weight`` of every ``nn.Linear`` and
``nn.Conv1d/2d/3d`` (and their subclasses). The penalty reads parametrized weights through
their parametrization (and computed weights, such as the kernel of an ``OrthoConv2d``, as
computed); the retraction acts only on stored ``nn.Parameter`` weights: it skips parametrized
weights (a ``BjorckLinear`` is already kept orthonormal, and its read weight cannot be modified
in place) and weights that are computed from other parameters (modifying such a tensor in place
would change nothing, or corrupt a cache).
"""
from __future__ import annotations

import math
from typing import Iterable, List, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = [
    "parseval_weights",
    "parseval_penalty",
    "parseval_retraction_",
    "ParsevalRetraction",
    "register_parseval_retraction",
]

Weights = Union[nn.Module, Tensor, Iterable[Tensor]]
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_beta(beta: float) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    return float(beta)


def _as_matrix(w: Tensor) -> Tensor:
    """(out, in) view of a dense weight or (out, in·∏k) of a convolution kernel."""
    if not isinstance(w, Tensor) or not w.is_floating_point() or w.dim() < 2:
        raise ValueError("Parseval: weights must be floating-point tensors with >= 2 dims (out, in, *kernel), got "
                         f"{tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__}")
    return w.reshape(w.shape[0], -1)


def parseval_weights(model: nn.Module, include_parametrized: bool = True) -> List[Tensor]:
    """The ``weight`` of every ``nn.Linear`` / ``nn.ConvNd`` in ``model`` (including itself).

    ``include_parametrized=False`` keeps only weights stored as an ``nn.Parameter`` (what the
    retraction modifies): it skips weights read through a parametrization and weights computed
    from other parameters (e.g. ``OrthoConv2d.weight``, a property). Layers without a weight
    tensor are skipped.
    """
    out: List[Tensor] = []
    for m in model.modules():
        if isinstance(m, _LAYERS):
            if not include_parametrized and (parametrize.is_parametrized(m, "weight")
                                             or not isinstance(m.weight, nn.Parameter)):
                continue
            w = m.weight
            if isinstance(w, Tensor):
                out.append(w)
    return out


def _collect(model_or_weights: Weights, include_parametrized: bool) -> List[Tensor]:
    if isinstance(model_or_weights, nn.Module):
        weights = parseval_weights(model_or_weights, include_parametrized)
        if not weights and include_parametrized:
            raise ValueError(f"no nn.Linear / nn.ConvNd weight found in {type(model_or_weights).__name__}")
        return weights
    if isinstance(model_or_weights, Tensor):
        return [model_or_weights]
    try:
        weights = list(model_or_weights)
    except TypeError:
        raise TypeError("model_or_weights must be an nn.Module, a tensor or an iterable of tensors, got "
                        f"{type(model_or_weights).__name__}") from None
    if not weights:
        raise ValueError("model_or_weights is an empty iterable")
    return weights


def _gram_defect(w: Tensor) -> Tensor:
    """Smaller-side Gram matrix minus identity: W Wᵀ − I (m ≤ n) or WᵀW − I (m > n)."""
    m = _as_matrix(w)
    a = m @ m.mT if m.shape[0] <= m.shape[1] else m.mT @ m
    return a - torch.eye(a.shape[0], dtype=a.dtype, device=a.device)


def parseval_penalty(model_or_weights: Weights, beta: float = 1.0) -> Tensor:
    r"""β/2 · Σ_W ‖W Wᵀ − I‖²_F over the weights (smaller Gram side; convs reshaped).

    Args:
        model_or_weights: a module (every ``nn.Linear`` / ``nn.ConvNd`` weight inside it, read
            through parametrizations), one weight tensor or an iterable of them; each of shape
            (out, in) or (out, in, *kernel).
        beta: β ≥ 0.
    Returns:
        A differentiable scalar (dtype/device of the first weight). Add it to the task loss.
    """
    beta = _check_beta(beta)
    weights = _collect(model_or_weights, include_parametrized=True)
    total = sum(_gram_defect(w).square().sum() for w in weights)
    return 0.5 * beta * total


@torch.no_grad()
def parseval_retraction_(weight: Tensor, beta: float = 0.5) -> Tensor:
    r"""In place: W ← (1 + β) W − β W Wᵀ W; returns ``weight``.

    One gradient step of size β on ¼‖WᵀW − I‖²_F (see the module docstring for when it
    decreases ‖W Wᵀ − I‖_F monotonically: βσ(σ + 1) ≤ 1 for every singular value σ). The
    product is formed on the smaller side ((W Wᵀ) W if out ≤ in, else W (WᵀW)); a convolution
    kernel (out, in, *k) is treated as its (out, in·∏k) reshape. Computed in float32 at least.
    """
    beta = _check_beta(beta)
    m = _as_matrix(weight)
    work = m if m.dtype in (torch.float32, torch.float64) else m.float()
    if work.shape[0] <= work.shape[1]:
        prod = (work @ work.mT) @ work
    else:
        prod = work @ (work.mT @ work)
    new = (1.0 + beta) * work - beta * prod
    weight.copy_(new.reshape(weight.shape).to(weight.dtype))
    return weight


class ParsevalRetraction:
    r"""Applies the Parseval retraction to a model's plain dense / conv weights; call it after ``optimizer.step()``.

    >>> retract = ParsevalRetraction(model, beta=0.5)
    >>> loss.backward(); optimizer.step(); retract()

    The weights are collected once, at construction: from a module, only weights stored as an
    ``nn.Parameter`` (parametrized and computed weights are skipped; see the module docstring);
    an explicit tensor computed by autograd (with a ``grad_fn``) is refused, as modifying it
    would not change the parameters it comes from. ``iterations`` retraction steps are
    applied per call.

    Args:
        model: module whose ``nn.Linear`` / ``nn.ConvNd`` weights are retracted, or an iterable
            of weight tensors (parameters).
        beta: β ≥ 0 (0.5 = one Björck step; Cissé et al. use 3e-4).
        iterations: steps per call (≥ 1).
    """

    def __init__(self, model: Weights, beta: float = 0.5, iterations: int = 1) -> None:
        self.beta = _check_beta(beta)
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
        self.iterations = iterations
        self.weights: Sequence[Tensor] = _collect(model, include_parametrized=False)
        if not self.weights:
            raise ValueError("ParsevalRetraction: no plain nn.Linear / nn.ConvNd weight (stored as an nn.Parameter; "
                             "parametrized and computed weights are skipped) to retract")
        for w in self.weights:
            _as_matrix(w)
            if w.grad_fn is not None:
                raise ValueError("ParsevalRetraction: a weight is computed from other tensors (it has a grad_fn, "
                                 "e.g. a parametrized or property weight); pass the stored parameter instead")

    def __call__(self) -> None:
        for w in self.weights:
            for _ in range(self.iterations):
                parseval_retraction_(w, self.beta)

    step = __call__

    def __repr__(self) -> str:
        return f"ParsevalRetraction(beta={self.beta}, iterations={self.iterations}, weights={len(self.weights)})"


def register_parseval_retraction(optimizer: torch.optim.Optimizer, modules: Weights, beta: float = 0.5,
                                 iterations: int = 1):
    """Run :class:`ParsevalRetraction` automatically after every ``optimizer.step()``.

    Uses ``optimizer.register_step_post_hook``; returns the hook's handle (``handle.remove()``
    stops it).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    retraction = ParsevalRetraction(modules, beta, iterations)
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: retraction())
