"""Helpers shared by the weight maps: working precision, orthogonal init, the eval-mode cache key."""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["compute_dtype", "orthogonal_init_", "eval_mode_weight", "version_key"]


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

