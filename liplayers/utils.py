"""Helpers shared by every layer of the library (imports only torch): data adapters, validation and
deprecated names."""
from __future__ import annotations

import functools
import numbers
import warnings
from typing import Callable, Dict, Iterable, Iterator, Mapping, Tuple, TypeVar

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = ["iter_batches", "as_dataset", "check_positive_int", "check_finite_tensor", "renamed_kwargs",
           "accepts_renamed_kwargs", "renamed_attribute", "restore_renamed_attributes"]

_F = TypeVar("_F", bound=Callable)


def _warn_renamed(who: str, old: str, new: str, what: str = "argument", stacklevel: int = 3) -> None:
    warnings.warn(f"{who}: the {what} {old!r} is deprecated, use {new!r}", DeprecationWarning,
                  stacklevel=stacklevel + 1)


def renamed_kwargs(kwargs: Dict[str, object], renames: Mapping[str, str], who: str,
                   stacklevel: int = 3) -> Dict[str, object]:
    """Move deprecated keyword arguments of ``kwargs`` to their new names, in place, and return ``kwargs``.

    Each old name present (``renames`` maps old → new) raises a ``DeprecationWarning`` naming
    ``who``, the old and the new name; giving both names is a ``TypeError``, as a duplicate
    argument is. ``stacklevel`` 3 points the warning at the caller of a function that calls this
    one directly (the wrapper of :func:`accepts_renamed_kwargs` is such a function).
    """
    for old, new in renames.items():
        if old in kwargs:
            if new in kwargs:
                raise TypeError(f"{who}: got both {old!r} (deprecated) and {new!r}; pass only {new!r}")
            _warn_renamed(who, old, new, stacklevel=stacklevel)
            kwargs[new] = kwargs.pop(old)
    return kwargs


def accepts_renamed_kwargs(renames: Mapping[str, str]) -> Callable[[_F], _F]:
    """Decorator: the function (or ``__init__``) also accepts the old keyword names of ``renames``
    (old → new), with a ``DeprecationWarning`` (:func:`renamed_kwargs`). Positional calls are unchanged."""
    renames = dict(renames)

    def wrap(fn: _F) -> _F:
        name = fn.__qualname__
        who = name[: -len(".__init__")] if name.endswith(".__init__") else name

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            if kwargs:
                renamed_kwargs(kwargs, renames, who)
            return fn(*args, **kwargs)

        inner.__renamed_kwargs__ = renames  # type: ignore[attr-defined]
        return inner  # type: ignore[return-value]

    return wrap


class _RenamedAttribute(property):
    """A property that forwards to the attribute ``new`` (see :func:`renamed_attribute`)."""

    old: str
    new: str


def renamed_attribute(old: str, new: str) -> property:
    """A deprecated property ``old`` that reads and writes the attribute ``new`` with a ``DeprecationWarning``.

    Objects pickled before the rename keep ``old`` in their ``__dict__``;
    :func:`restore_renamed_attributes` moves it to ``new`` (``liplayers.io.load`` does).
    """

    def fget(self):
        _warn_renamed(type(self).__name__, old, new, "attribute", stacklevel=2)
        return getattr(self, new)

    def fset(self, value):
        _warn_renamed(type(self).__name__, old, new, "attribute", stacklevel=2)
        setattr(self, new, value)

    prop = _RenamedAttribute(fget, fset, doc=f"Deprecated alias of ``{new}``.")
    prop.old, prop.new = old, new
    return prop


def restore_renamed_attributes(obj) -> None:
    """Move the values an object unpickled from an older version stores under renamed attribute
    names (``renamed_attribute`` properties of its class) to the new names."""
    state = getattr(obj, "__dict__", None)
    if not state:
        return
    for klass in type(obj).__mro__:
        for prop in vars(klass).values():
            if isinstance(prop, _RenamedAttribute) and prop.old in state and prop.new not in state:
                state[prop.new] = state.pop(prop.old)


def check_positive_int(value, name: str) -> int:
    """``value`` as an int ≥ 1, else ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_bool(value, name: str) -> bool:
    """``value`` if it is ``True`` or ``False``, else ``ValueError`` naming it."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


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
