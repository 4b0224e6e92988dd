"""Export a liplayers model to plain ``torch.nn`` modules with the normalized weights frozen in."""
from __future__ import annotations

import copy
import inspect
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..lipschitz import InputShapeRequiredError, LipschitzModule, eval_mode
from .container import Sequential

__all__ = ["export"]

# to_torch refusals that keep the layer as it is: no plain equivalent (a residual nonlinear map,
# a zero-padded SOC), or one that depends on an input size the export was not given
_KEEP = (NotImplementedError, InputShapeRequiredError)


def _input_shapes(model: nn.Module, input_shape: Sequence[int]) -> Dict[str, Tuple[int, ...]]:
    """Shape (without the batch dimension) of the first input of every submodule, by name, from one
    eval forward of a zero batch through a copy of ``model`` (the model itself is not run)."""
    probe = copy.deepcopy(model).eval()
    shapes: Dict[str, Tuple[int, ...]] = {}
    handles = []
    for name, m in probe.named_modules():
        def hook(_m, args, name=name):
            if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 1:
                shapes.setdefault(name, tuple(args[0].shape[1:]))
        handles.append(m.register_forward_pre_hook(hook))
    p = next((t for t in list(probe.parameters()) + list(probe.buffers()) if t.is_floating_point()), None)
    x = torch.zeros((1, *input_shape), dtype=p.dtype if p is not None else torch.get_default_dtype(),
                    device=p.device if p is not None else "cpu")
    try:
        with torch.no_grad():
            probe(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


def _to_torch(module: LipschitzModule, shape: Optional[Tuple[int, ...]]):
    """``module.to_torch()``, given the input shape when it takes one; None if it keeps the layer."""
    try:
        if shape is not None and "input_shape" in inspect.signature(module.to_torch).parameters:
            return module.to_torch(input_shape=shape)
        return module.to_torch()
    except _KEEP:
        return None


def _replacements(module: nn.Module, memo: dict, shapes: Optional[dict] = None, prefix: str = "") -> None:
    """``memo[id(m)] = m.to_torch()`` for the outermost liplayers layers of the *original* model.

    ``to_torch`` is called on the original (in eval mode), so the exported weights are exactly
    the ones the original uses now — the ones its certificate was computed from. A deep copy
    would recompute them (the eval caches are keyed on storage, so a copy starts cold) and,
    for bfloat16/float16 weights, re-orthonormalizing an already rounded weight gives a
    different rounding: the exported model would not be the certified one.
    """
    # a container's to_torch exports its layers without their shapes: with shapes, visit them here
    if isinstance(module, LipschitzModule) and not (shapes is not None and isinstance(module, Sequential)):
        out = _to_torch(module, (shapes or {}).get(prefix))
        if out is not None:
            memo[id(module)] = copy.deepcopy(out) if out is module else out
            return
    for name, child in module.named_children():
        _replacements(child, memo, shapes, f"{prefix}.{name}" if prefix else name)


def _export_inplace(module: nn.Module) -> nn.Module:
    kept = False
    if isinstance(module, LipschitzModule):
        out = _to_torch(module, None)
        if out is not None:
            return out
        kept = True  # a layer kept as it is keeps the weight maps it computes with
    if not kept and parametrize.is_parametrized(module):
        for name in list(module.parametrizations.keys()):
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    for name, child in list(module.named_children()):
        setattr(module, name, _export_inplace(child))
    return module


def export(model: nn.Module, input_shape: Optional[Sequence[int]] = None) -> nn.Module:
    """An equivalent model without parametrizations, for inference and deployment.

    Every liplayers layer is replaced by its plain ``torch.nn`` equivalent (``BjorckLinear`` →
    ``nn.Linear`` with the orthonormal weight it uses in eval mode, ``Sequential`` →
    ``nn.Sequential``); ``torch.nn.utils.parametrize`` parametrizations of other modules are
    removed with their current value frozen in. Parameter-free activations with no torch.nn
    counterpart (GroupSort family) are kept: they are built from torch operations only. No
    forward pass is needed. The input model is not modified; the result is in eval mode and
    its outputs match the original's eval-mode outputs to float rounding.

    Layers without a plain equivalent are kept as they are (they compute their eval-mode map
    with their eval caches): the residual nonlinear CPL and SLL layers, SOC with zero padding.
    Layers whose equivalent depends on the input size (Cayley and BRO convolutions: an H×W
    kernel; SOC on inputs smaller than its composed kernel; SpectralConv2d and
    LinearResidualConv2d before their size is known) are converted only when ``input_shape``
    is given, and kept otherwise.

    Args:
        model: the model (not modified).
        input_shape: optional shape of one input without the batch dimension; the input shape
            of every layer is then found by one eval forward of a zero batch through a copy of
            the model, and the exported model is valid for inputs of that shape.

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
    shapes = None
    if input_shape is not None:
        if isinstance(input_shape, (str, bytes)) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in input_shape):
            raise ValueError(f"input_shape must be a sequence of positive ints (one input, without the batch "
                             f"dimension), got {input_shape!r}")
        shapes = _input_shapes(model, tuple(input_shape))
    with eval_mode(model):  # the modes of model and its children are restored after
        with torch.no_grad():
            memo: dict = {}
            _replacements(model, memo, shapes)
            if id(model) in memo:
                out = memo[id(model)]
            else:
                out = _export_inplace(copy.deepcopy(model, memo))
    out.eval()
    for p in out.parameters():
        p.requires_grad_(True)
    return out
