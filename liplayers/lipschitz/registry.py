r"""One bound registry per pair of norms, deny by default.

A :class:`BoundRegistry` answers "what is a guaranteed upper bound of the Lipschitz constant of
this module, as it runs now in eval mode?" for one pair of norms (L2→L2, ∞→∞). It knows two
kinds of modules:

* modules that **declare their own bound** through the registry's protocol method
  (``lipschitz_bound`` for L2, ``linf_lipschitz_bound`` for ∞): liplayers layers and any user
  module following the protocol;
* **plain torch types** with a bound registered by :meth:`BoundRegistry.register`, read from
  the module's arguments *when the bound is computed* (attributes can change after
  construction). A registered bound covers exactly the argument values it has a proof for and
  raises :class:`~liplayers.lipschitz.UnboundedModuleError` naming the argument for any other.

Everything else is refused: an unknown type; a module whose call path is not the one the bound
reasons about — a ``forward``/``__call__`` (or another method on the call path, such as
``_conv_forward``) assigned on the instance, or overridden in a subclass *below* the class that
provides the bound; forward hooks or pre-hooks on the module or global ones (they can change
what it computes); a bound that is not a finite number ≥ 0 (a negative bound would turn into
a positive wrong one in a product).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Callable, Dict, Optional, Sequence, Tuple, Type

from torch import nn
from torch.nn.utils import parametrize

from .protocol import HookedModuleError, Shape, UnboundedModuleError

__all__ = ["BoundRegistry", "CALL_PATH", "allow_hooks", "check_call_path", "check_hooks", "global_hooks"]

_HOOKS_ALLOWED = contextvars.ContextVar("liplayers_hooks_allowed", default=False)


@contextlib.contextmanager
def allow_hooks(allowed: bool = True):
    """Context in which forward hooks are trusted not to change outputs (the caller's responsibility)."""
    token = _HOOKS_ALLOWED.set(bool(allowed))
    try:
        yield
    finally:
        _HOOKS_ALLOWED.reset(token)

#: methods through which ``module(x)`` reaches its computation; overriding any of them changes
#: the function a bound was proved for
CALL_PATH = ("forward", "__call__", "_call_impl", "_wrapped_call_impl", "_conv_forward", "_output_padding",
             "__getattr__", "__getattribute__", "_apply_padding")


def global_hooks() -> int:
    """Number of global ``nn.Module`` forward hooks and pre-hooks currently registered."""
    from torch.nn.modules import module as _m

    return sum(len(getattr(_m, name, {}) or {}) for name in ("_global_forward_hooks", "_global_forward_pre_hooks"))


def check_hooks(module: nn.Module, label: Optional[str] = None) -> None:
    """Refuse a module with forward hooks or pre-hooks (they may change what it computes)."""
    if _HOOKS_ALLOWED.get():
        return
    if global_hooks():
        raise HookedModuleError(
            "global nn.Module forward hooks are registered; they may change what the model computes, so no "
            "bound is given (pass allow_hooks=True if they do not)")
    if len(module._forward_hooks) or len(module._forward_pre_hooks):
        raise HookedModuleError(
            f"module {label or type(module).__name__} ({type(module).__name__}) has forward hooks or pre-hooks; "
            "they may change what it computes (e.g. legacy torch.nn.utils.spectral_norm / weight_norm recompute "
            "the weight in a hook), so no bound is given. Use torch.nn.utils.parametrizations instead, or pass "
            "allow_hooks=True to the certifying function if the hooks do not change outputs")


def _defining_class(cls: type, name: str) -> Optional[type]:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass
    return None


def _user_classes(module: nn.Module) -> Tuple[type, ...]:
    """The module's MRO without torch's parametrization wrapper class (which only adds properties)."""
    mro = type(module).__mro__
    if parametrize.is_parametrized(module) and mro[0].__name__.startswith("Parametrized"):
        mro = mro[1:]
    return mro


def check_call_path(module: nn.Module, provider: type, label: Optional[str] = None) -> None:
    """Refuse ``module`` if its call path differs from that of ``provider`` (the class whose bound is used).

    Refused: a call-path method stored on the instance, or defined by a class of the module's
    MRO that lies strictly below ``provider`` (a subclass overriding what the bound reasons about).
    """
    who = f"module {label or type(module).__name__} ({type(module).__name__})"
    for name in CALL_PATH:
        if name in module.__dict__:
            raise UnboundedModuleError(
                f"{who} has {name} assigned on the instance: the bound of its class does not describe that "
                "function. Wrap the computation in a module class that implements lipschitz_bound")
    for klass in _user_classes(module):
        if klass is provider:
            return
        for name in CALL_PATH:
            if name in klass.__dict__:
                raise UnboundedModuleError(
                    f"{who}: class {klass.__name__} overrides {name} below {provider.__name__}, whose bound "
                    f"does not describe the new function. Implement the bound method in {klass.__name__} or "
                    "register a bound for it")


def _checked(value, module: nn.Module, norm: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise UnboundedModuleError(f"the {norm} bound of {type(module).__name__} is not a number: {value!r}") from exc
    if not math.isfinite(v) or v < 0:
        raise UnboundedModuleError(
            f"the {norm} bound of {type(module).__name__} is {v!r}: a bound must be a finite number >= 0 "
            "(non-finite weights, or a bound function that is wrong for these arguments)")
    return v


class BoundRegistry:
    """Bounds of module types for one pair of norms (see the module docstring for the rules)."""

    def __init__(self, norm: str, method: str, hint: str) -> None:
        self.norm, self.method, self.hint = norm, method, hint
        self.bounds: Dict[Type[nn.Module], Callable[[nn.Module, Shape], float]] = {}

    def register(self, *types: Type[nn.Module]):
        """Decorator registering ``fn(module, input_shape) -> float`` as the bound of ``types``.

        ``fn`` must read every argument of the module it depends on when called and raise
        :class:`~liplayers.lipschitz.UnboundedModuleError` for values outside its proof.
        """

        def deco(fn: Callable[[nn.Module, Shape], float]):
            for t in types:
                if not (isinstance(t, type) and issubclass(t, nn.Module)):
                    raise TypeError(f"can only register nn.Module subclasses, got {t!r}")
                self.bounds[t] = fn
            return fn

        return deco

    def provider(self, module: nn.Module) -> Tuple[type, Optional[Callable]]:
        """``(class, registered function or None)`` that gives the bound of ``module``."""
        own = _defining_class(type(module), self.method)
        for klass in _user_classes(module):
            if own is not None and klass is own:
                return own, None
            if klass in self.bounds:
                return klass, self.bounds[klass]
        raise UnboundedModuleError(
            f"no {self.norm} Lipschitz bound is known for module {type(module).__name__} ({module!r}); {self.hint}")

    def bound_of(self, module: nn.Module, input_shape: Shape = None) -> float:
        """Guaranteed bound of ``module`` as it runs now (eval-mode behaviour), after all the checks."""
        if not isinstance(module, nn.Module):
            raise TypeError(f"expected an nn.Module, got {type(module).__name__}")
        if self.method in module.__dict__:
            raise UnboundedModuleError(
                f"module {type(module).__name__} has {self.method} assigned on the instance; bounds come from "
                "classes (implement it in a subclass)")
        klass, fn = self.provider(module)
        check_call_path(module, klass)
        check_hooks(module)
        value = getattr(module, self.method)(input_shape) if fn is None else fn(module, input_shape)
        return _checked(value, module, self.norm)

    def compose(self, modules: Sequence[nn.Module], input_shape: Shape = None) -> float:
        """Product of the bounds of modules applied in sequence (shapes propagated)."""
        from .shapes import output_shape

        bound, shape = 1.0, input_shape
        for m in modules:
            bound *= self.bound_of(m, shape)
            if shape is not None:
                shape = output_shape(m, shape)
        return bound
