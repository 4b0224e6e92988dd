"""Helpers shared by every layer of the library (imports only torch): data adapters and validation."""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Iterator, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = ["iter_batches", "as_dataset", "check_positive_int", "check_finite_tensor"]


def check_positive_int(value, name: str) -> int:
    """``value`` as an int ≥ 1, else ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_finite_tensor(x, name: str, min_dim: int = 1) -> Tensor:
    """A floating-point tensor with at least ``min_dim`` dims and finite entries, else ``ValueError``."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < min_dim:
        raise ValueError(f"{name} must be a floating-point tensor with at least {min_dim} dimension(s), got "
                         f"{type(x).__name__ if not isinstance(x, Tensor) else f'{x.dtype} of shape {tuple(x.shape)}'}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
    return x


def _is_pair(data) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)


def as_dataset(data) -> Dataset:
    """A ``Dataset`` from a ``Dataset``, or an ``(x, y)`` pair of tensors (same first dimension)."""
    if isinstance(data, Dataset):
        return data
    if _is_pair(data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y have different lengths: {x.shape[0]} vs {y.shape[0]}")
        return TensorDataset(x, y)
    raise TypeError(f"data must be a Dataset, a DataLoader or an (x, y) pair of tensors, got {type(data).__name__}")


def iter_batches(data, batch_size: int) -> Iterator[Tuple[Tensor, Tensor]]:
    """``(x, y)`` batches from a ``Dataset``, a ``DataLoader`` (or any iterable of ``(x, y, ...)``
    batches) or an ``(x, y)`` pair of tensors — the data types every function of the library accepts."""
    batch_size = check_positive_int(batch_size, "batch_size")
    if _is_pair(data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y have different lengths: {x.shape[0]} vs {y.shape[0]}")
        for s in range(0, x.shape[0], batch_size):
            yield x[s:s + batch_size], y[s:s + batch_size]
        return
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if not isinstance(data, Iterable):
        raise TypeError("data must be a Dataset, a DataLoader (or an iterable of (x, y) batches) or an (x, y) pair "
                        f"of tensors, got {type(data).__name__}")
    for item in data:
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError("each batch of data must be a tuple (x, y, ...)")
        yield item[0], item[1]
