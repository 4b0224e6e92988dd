"""Helpers shared by the weight maps: working precision, orthogonal init, the eval-mode cache key, the
accessor of a layer's weight map."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["compute_dtype", "orthogonal_init_", "eval_mode_weight", "version_key", "weight_parametrization",
           "EvalCachedMap"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision used for orthonormalization: float32 at least (bf16/fp16 weights are upcast)."""
    return dtype if dtype in (torch.float64, torch.complex64, torch.complex128) else torch.float32


def orthogonal_init_(w: Tensor) -> Tensor:
    """``nn.init.orthogonal_`` for any floating dtype, in place; returns ``w``.

    torch's QR (``geqrf``) has no bfloat16/float16 kernel, so low-precision weights are
    initialized in float32 (:func:`compute_dtype`) and rounded into ``w``. Works on a view
    (e.g. a reshaped kernel) and under ``torch.no_grad``.
    """
    with torch.no_grad():
        if w.dtype in (torch.float32, torch.float64):
            return nn.init.orthogonal_(w)
        tmp = torch.empty(w.shape, dtype=compute_dtype(w.dtype), device=w.device)
        nn.init.orthogonal_(tmp)
        w.copy_(tmp)
    return w


def eval_mode_weight(module: nn.Module, name: str = "weight") -> Tensor:
    """The (parametrized) tensor ``module.<name>`` as eval mode computes it, detached and cloned,
    without leaving the module's train/eval mode changed."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return getattr(module, name).detach().clone()
    finally:
        module.train(was_training)


def version_key(*xs: Tensor) -> tuple:
    """Key of the eval-mode caches: changes whenever any of ``xs`` is modified in place, moved or resized."""
    return tuple((x._version, x.data_ptr(), x.dtype, x.device, tuple(x.shape)) for x in xs)



def weight_parametrization(module: nn.Module, name: str = "weight") -> nn.Module:
    """The weight map registered on ``module.<name>`` (``module.parametrizations[name][0]``).

    Every parametrized layer exposes it as its ``parametrization`` property
    (``parametrization = property(weight_parametrization)``).
    """
    return module.parametrizations[name][0]


class EvalCachedMap(nn.Module):
    """Base of the weight maps whose eval-mode weight is computed once per version of the stored
    parameter and cached, so that an eval forward costs the plain layer.

    Subclasses implement ``_compute_eval(v)`` (``v`` detached, under ``no_grad``; returns the
    weight used in eval mode) and may extend ``_eval_key(v)`` (default :func:`version_key`) with
    the settings the value depends on; ``forward`` returns ``self._eval_weight(v)`` in eval mode.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache_key: Optional[tuple] = None
        self._cache: Optional[Tensor] = None

    def _eval_key(self, v: Tensor) -> tuple:
        return version_key(v)

    def _compute_eval(self, v: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # The version check must run on every call: a compiled graph does not guard on a tensor's
    # version, so under torch.compile this runs eagerly (one graph break).
    @torch.compiler.disable
    def _eval_weight(self, v: Tensor) -> Tensor:
        key = self._eval_key(v)
        if self._cache_key != key:
            with torch.no_grad():
                self._cache = self._compute_eval(v.detach())
            self._cache_key = key
        return self._cache  # type: ignore[return-value]
