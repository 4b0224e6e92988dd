"""Random draws that honour a ``torch.Generator`` on any device.

``torch.randn(..., generator=g, device=d)`` fails when ``g`` lives on another device than
``d`` (a CPU generator with CUDA inputs). These wrappers draw on the generator's device and
move the result, so a seeded CPU generator gives the same numbers whatever the device.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["rand", "randn", "randint", "probes"]


def _draw(fn, args, generator: Optional[torch.Generator], device, **kwargs):
    if generator is not None and device is not None and torch.device(device) != generator.device:
        return fn(*args, generator=generator, device=generator.device, **kwargs).to(device)
    return fn(*args, generator=generator, device=device, **kwargs)


def randn(*size, generator: Optional[torch.Generator] = None, dtype=None, device=None) -> torch.Tensor:
    """``torch.randn`` drawn on the generator's device, returned on ``device``."""
    return _draw(torch.randn, size, generator, device, dtype=dtype)


def rand(*size, generator: Optional[torch.Generator] = None, dtype=None, device=None) -> torch.Tensor:
    """``torch.rand`` drawn on the generator's device, returned on ``device``."""
    return _draw(torch.rand, size, generator, device, dtype=dtype)


def randint(low: int, high: int, size, generator: Optional[torch.Generator] = None, dtype=None,
            device=None) -> torch.Tensor:
    """``torch.randint`` drawn on the generator's device, returned on ``device``."""
    kwargs = {"dtype": dtype} if dtype is not None else {}
    return _draw(torch.randint, (low, high, size), generator, device, **kwargs)


def probes(shape, k: int, kind: str, generator: Optional[torch.Generator], dtype, device) -> torch.Tensor:
    """``k`` random probe vectors of ``shape`` (result (k, *shape)) with E[v vᵀ] = I.

    ``kind``: ``"rademacher"`` (±1 entries) or ``"gaussian"`` (standard normal), as used by
    Hutchinson-type unbiased estimators of traces and Frobenius norms.
    """
    if kind == "rademacher":
        r = randint(0, 2, (k,) + tuple(shape), generator=generator, device=device)
        return (2 * r - 1).to(dtype)
    if kind == "gaussian":
        return randn((k,) + tuple(shape), generator=generator, dtype=dtype, device=device)
    raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {kind!r}")
