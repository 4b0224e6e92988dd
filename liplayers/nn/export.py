"""Export a liplayers model to plain ``torch.nn`` modules with the normalized weights frozen in."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..lipschitz import LipschitzModule, eval_mode

__all__ = ["export"]


def _replacements(module: nn.Module, memo: dict) -> None:
    """``memo[id(m)] = m.to_torch()`` for the outermost liplayers layers of the *original* model.

    ``to_torch`` is called on the original (in eval mode), so the exported weights are exactly
    the ones the original uses now — the ones its certificate was computed from. A deep copy
    would recompute them (the eval caches are keyed on storage, so a copy starts cold) and,
    for bfloat16/float16 weights, re-orthonormalizing an already rounded weight gives a
    different rounding: the exported model would not be the certified one.
    """
    if isinstance(module, LipschitzModule):
        try:
            out = module.to_torch()
        except NotImplementedError:
            out = None
        if out is not None:
            memo[id(module)] = copy.deepcopy(out) if out is module else out
            return
    for child in module.children():
        _replacements(child, memo)


def _export_inplace(module: nn.Module) -> nn.Module:
    if isinstance(module, LipschitzModule):
        try:
            return module.to_torch()
        except NotImplementedError:
            pass
    if parametrize.is_parametrized(module):
        for name in list(module.parametrizations.keys()):
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    for name, child in list(module.named_children()):
        setattr(module, name, _export_inplace(child))
    return module


def export(model: nn.Module) -> nn.Module:
    """An equivalent model without parametrizations, for inference and deployment.

    Every liplayers layer is replaced by its plain ``torch.nn`` equivalent (``BjorckLinear`` →
    ``nn.Linear`` with the orthonormal weight it uses in eval mode, ``Sequential`` →
    ``nn.Sequential``); ``torch.nn.utils.parametrize`` parametrizations of other modules are
    removed with their current value frozen in. Parameter-free activations with no torch.nn
    counterpart (GroupSort family) are kept: they are built from torch operations only. No
    forward pass is needed. The input model is not modified; the result is in eval mode and
    its outputs match the original's eval-mode outputs to float rounding.

    Example:
        >>> import torch, liplayers as L
        >>> net = L.Sequential(L.BjorckLinear(4, 4), L.MaxMin(), L.BjorckLinear(4, 2)).eval()
        >>> plain = L.export(net)
        >>> type(plain[0]).__name__, type(plain).__name__
        ('Linear', 'Sequential')
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(plain(x), net(x), atol=1e-6)
        True
    """
    with eval_mode(model):  # the modes of model and its children are restored after
        with torch.no_grad():
            memo: dict = {}
            _replacements(model, memo)
            if id(model) in memo:
                out = memo[id(model)]
            else:
                out = _export_inplace(copy.deepcopy(model, memo))
    out.eval()
    for p in out.parameters():
        p.requires_grad_(True)
    return out
