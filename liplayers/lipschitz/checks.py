"""Argument checks read when a bound is computed (deny by default: values outside a proof are refused)."""
from __future__ import annotations

import math
import numbers
from typing import Optional

from torch import nn

from .protocol import Shape, UnboundedModuleError

__all__ = ["feature_dim", "real_arg", "int_arg"]


def _who(module: nn.Module) -> str:
    return type(module).__name__


def real_arg(module: nn.Module, name: str, lo: Optional[float] = None, hi: Optional[float] = None,
             lo_open: bool = False, hi_open: bool = False) -> float:
    """``module.<name>`` as a finite float within [lo, hi] (open ends if asked), else UnboundedModuleError."""
    v = getattr(module, name)
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))
    if ok:
        v = float(v)
        ok = (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{')' if hi_open else ']'}"
        raise UnboundedModuleError(f"{_who(module)}.{name} = {getattr(module, name)!r}: a Lipschitz bound is only "
                                   f"proved for finite values in {rng}")
    return v


def int_arg(module: nn.Module, name: str, lo: int = 1) -> int:
    """``module.<name>`` as an int ≥ ``lo``, else UnboundedModuleError."""
    v = getattr(module, name)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < lo:
        raise UnboundedModuleError(f"{_who(module)}.{name} = {v!r}: a bound is only proved for integers >= {lo}")
    return int(v)


def feature_dim(module: nn.Module, dim, input_shape: Shape, name: str = "dim") -> Optional[int]:
    """Refuse a ``dim`` that may be the batch dimension (a module mixing the samples of a batch).

    Returns the non-negative dim when ``input_shape`` (without batch) is known, else ``None``.
    With an unknown input rank, a negative dim other than -1 could reach the batch dimension and is refused.
    """
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise UnboundedModuleError(f"{_who(module)}.{name} = {dim!r} must be an int")
    dim = int(dim)
    if input_shape is None:
        if dim == 0 or dim < -1:
            raise UnboundedModuleError(
                f"{_who(module)}.{name} = {dim}: this may be the batch dimension, and a module whose output for "
                "one sample depends on the other samples has no per-sample Lipschitz bound"
                + ("" if dim == 0 else "; pass input_shape to check it"))
        return None
    ndim = len(input_shape) + 1
    d = dim + ndim if dim < 0 else dim
    if not 0 <= d < ndim:
        raise UnboundedModuleError(f"{_who(module)}.{name} = {dim} is out of range for inputs of rank {ndim}")
    if d == 0:
        raise UnboundedModuleError(
            f"{_who(module)}.{name} = {dim} is the batch dimension for inputs of shape (B, {', '.join(map(str, input_shape))}): "
            "a module whose output for one sample depends on the other samples has no per-sample Lipschitz bound")
    return d
