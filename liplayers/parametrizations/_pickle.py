"""Pickling of parametrized layers: ``torch.save(model)``, ``pickle`` and ``copy.deepcopy``.

``torch.nn.utils.parametrize`` swaps a module's class for a generated ``Parametrized<Base>`` class
that refuses to be pickled. :class:`PicklableParametrizationMixin` (a base of every liplayers
layer through :class:`~liplayers.lipschitz.LipschitzModule`) pickles the module as its original
class with its ``parametrizations`` and re-registers them on unpickling, unchanged (no
``right_inverse``, no forward).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from torch import nn
from torch.nn.utils import parametrize

__all__ = ["PicklableParametrizationMixin"]


def _injected(cls: type) -> bool:
    """Whether ``cls`` is a class made by ``torch.nn.utils.parametrize`` (``Parametrized<Base>``)."""
    return bool(cls.__bases__) and cls.__name__ == f"Parametrized{cls.__bases__[0].__name__}" \
        and "__getstate__" in vars(cls)


def _original_class(module: nn.Module) -> Optional[type]:
    """The class a parametrized module had before ``register_parametrization`` (None if not parametrized)."""
    if not parametrize.is_parametrized(module):
        return None
    cls = type(module)
    if not _injected(cls):
        raise TypeError(f"cannot pickle {cls.__name__}: not a class made by torch.nn.utils.parametrize")
    return cls.__bases__[0]


def _new_module(cls: type) -> nn.Module:
    return cls.__new__(cls)


def _reinject_parametrizations(module: nn.Module) -> None:
    """Turn a module restored with a ``parametrizations`` ModuleDict back into a parametrized one."""
    try:
        inject_class, inject_property = parametrize._inject_new_class, parametrize._inject_property
    except AttributeError as exc:  # pragma: no cover - depends on the torch version
        raise RuntimeError("this version of torch.nn.utils.parametrize has no _inject_new_class / "
                           "_inject_property; cannot rebuild a parametrized module") from exc
    inject_class(module)
    for name in module.parametrizations.keys():  # type: ignore[union-attr]
        inject_property(module, name)


def _module_state(module: nn.Module, cls: type) -> Dict[str, Any]:
    getstate = getattr(cls, "__getstate__", None)
    state = getstate(module) if getstate is not None else module.__dict__
    if not isinstance(state, dict):
        raise TypeError(f"cannot pickle {cls.__name__}: its __getstate__ does not return a dict")
    return dict(state)


class PicklableParametrizationMixin:
    """Mixin for layers that register weight parametrizations: makes ``torch.save(layer)``,
    ``pickle`` and ``copy.deepcopy`` work (put it first among the bases).

    The module is pickled as its original class with its ``parametrizations``; unpickling
    re-registers them unchanged (no ``right_inverse``, no forward). Eval caches are keyed by
    parameter addresses, so they are recomputed after loading (use :func:`save` to keep them).
    """

    def __reduce_ex__(self, protocol):
        cls = _original_class(self)  # type: ignore[arg-type]
        if cls is None:
            return super().__reduce_ex__(protocol)
        return _new_module, (cls,), _module_state(self, cls)  # type: ignore[arg-type]

    def __setstate__(self, state) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        modules = self.__dict__.get("_modules", {})
        if "parametrizations" in modules and not _injected(type(self)):
            _reinject_parametrizations(self)  # type: ignore[arg-type]


