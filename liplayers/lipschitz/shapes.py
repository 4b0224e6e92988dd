"""Shapes propagated through a network for the bounds that depend on the input size."""
from __future__ import annotations

import torch
from torch import nn

from .protocol import Shape

__all__ = ["output_shape", "eval_mode"]


class eval_mode:
    """Context manager: put ``module`` in eval mode and restore its (and its children's) modes after.

    ``with eval_mode(model): ...`` — the one helper for "run this in eval mode and restore the mode".
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self._modes = None

    def __enter__(self) -> nn.Module:
        self._modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        return self.module

    def __exit__(self, *exc) -> None:
        for m, mode in self._modes:
            m.training = mode


def output_shape(module: nn.Module, input_shape: Shape) -> Shape:
    """Shape (without batch) of ``module``'s output for one input of ``input_shape``.

    Found by an eval-mode forward of one zero input (the module's modes are restored).
    """
    if input_shape is None:
        return None
    p = next(iter(module.parameters()), None)
    x = torch.zeros((1, *input_shape), dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32,
                    device=p.device if p is not None else "cpu")
    try:
        with torch.no_grad(), eval_mode(module):
            y = module(x)
    except Exception as exc:
        raise ValueError(f"cannot propagate input shape {tuple(input_shape)} through {type(module).__name__}: "
                         f"{exc}") from exc
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{type(module).__name__} does not return a tensor")
    return tuple(y.shape[1:])
