r"""Saving and loading whole models (architecture and weights), including parametrized layers.

``torch.save(model)`` refuses a network that contains a layer with a weight parametrization
(:class:`~liplayers.nn.BjorckLinear`, :class:`~liplayers.nn.SpectralConv2d`, ...): the class
``torch.nn.utils.parametrize`` substitutes for such a module is created at run time and
forbids pickling ("Serialization of parametrized modules is only supported through
state_dict()"). A ``state_dict`` alone does not hold the architecture. :func:`save` stores the
whole module instead: every parametrized module is pickled as an instance of its original
class together with its ``parametrizations`` (the stored free tensors and the weight maps with
their state — power-iteration vectors, input sizes, tolerances), and :func:`load` re-registers
the parametrizations on the rebuilt module exactly as they were, without re-running any
``right_inverse`` or consistency forward (which could change the weights). This works for any
architecture, including user-defined modules, with nothing to declare.

Eval-mode caches survive the round trip: a layer caches its eval weight under a key made of
its parameters' version counters and addresses, which change in a new process. :func:`save` records which key matched which parameter *at
save time*; :func:`load` rebuilds those keys for the loaded parameters (same values, so the
cache is still exact) and discards any key that did not match (the layer then recomputes from
the weights, as after any change). The loaded model is in eval mode; its outputs and its
:func:`liplayers.certify.lipschitz_bound` equal the saved model's in eval mode, bit for bit.

Files are pickles: load only files you trust (``torch.load(..., weights_only=False)``).

Plain ``torch.save(model)`` works only if the class of every parametrized layer inherits
:class:`PicklableParametrizationMixin` (it defines ``__reduce_ex__``/``__setstate__``; eval
caches are then recomputed after loading). :func:`save` needs nothing of the classes: use it
for any network.
"""
from __future__ import annotations

import os
import pickle
import types
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor, nn
from .utils import restore_renamed_attributes
from .parametrizations._pickle import (PicklableParametrizationMixin, _injected, _module_state, _new_module,
                                      _original_class, _reinject_parametrizations)

__all__ = ["save", "load", "atomic_save", "PicklableParametrizationMixin", "FORMAT"]

FORMAT = "liplayers.model"
_FORMAT_VERSION = 1
PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------- atomic writes
def atomic_save(obj: Any, path: PathLike, **torch_save_kwargs) -> None:
    """``torch.save(obj, path)`` atomically: to a temporary file in the same directory, then
    ``os.replace`` (an interrupted write never leaves a truncated file; the old one survives)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp, **torch_save_kwargs)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _restore_module(module: nn.Module, payload) -> None:
    """``state_setter`` of :func:`save`'s reduction: set the state, re-register parametrizations."""
    state, parametrized = payload
    setstate = getattr(type(module), "__setstate__", None)
    if setstate is not None:
        setstate(module, state)
    else:  # pragma: no cover - nn.Module defines __setstate__
        module.__dict__.update(state)
    if parametrized and not _injected(type(module)):  # (the layers' own __setstate__ may have done it)
        _reinject_parametrizations(module)


# --------------------------------------------------------------------------- eval-cache keys
class _TensorRef:
    """A version-key entry of the tensor at ``name`` (relative to the saved root module)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __getstate__(self):
        return self.name

    def __setstate__(self, name) -> None:
        self.name = name


class _Unmatched:
    """A version-key entry that matched no tensor of the model at save time (the cache was stale)."""


def _is_key_entry(x) -> bool:
    return (isinstance(x, tuple) and len(x) == 5 and isinstance(x[0], int) and isinstance(x[1], int)
            and isinstance(x[2], torch.dtype) and isinstance(x[3], torch.device) and isinstance(x[4], tuple))


def _entry(t: Tensor) -> tuple:
    return (t._version, t.data_ptr(), t.dtype, t.device, tuple(t.shape))


def _encode_key(value, entries: Dict[tuple, str]):
    """(encoded value, whether it held a version-key entry)."""
    if _is_key_entry(value):
        name = entries.get(value)
        return (_TensorRef(name) if name is not None else _Unmatched()), True
    if isinstance(value, tuple) and type(value) is tuple:
        out, found = [], False
        for v in value:
            e, f = _encode_key(v, entries)
            out.append(e)
            found |= f
        return (tuple(out), True) if found else (value, False)
    return value, False


def _decode_key(value, tensors: Dict[str, Tensor]):
    if isinstance(value, _Unmatched):
        raise LookupError
    if isinstance(value, _TensorRef):
        t = tensors.get(value.name)
        if t is None:
            raise LookupError
        return _entry(t)
    if isinstance(value, tuple) and type(value) is tuple:
        return tuple(_decode_key(v, tensors) for v in value)
    return value


def _has_refs(value) -> bool:
    if isinstance(value, (_TensorRef, _Unmatched)):
        return True
    return isinstance(value, tuple) and type(value) is tuple and any(_has_refs(v) for v in value)


def _named_tensors(root: nn.Module) -> Dict[str, Tensor]:
    named = dict(root.named_parameters(remove_duplicate=False))
    named.update(root.named_buffers(remove_duplicate=False))
    return named


class _Pickler(pickle.Pickler):
    """Pickler for :func:`save`: parametrized modules by their original class, cache keys by name."""

    entries: Dict[tuple, str] = {}

    def reducer_override(self, obj):
        if not isinstance(obj, nn.Module):
            return NotImplemented
        base = _original_class(obj)
        cls = base if base is not None else type(obj)
        state, rewritten = None, False
        for attr, value in obj.__dict__.items():
            if isinstance(value, tuple):
                enc, found = _encode_key(value, self.entries)
                if found:
                    if state is None:
                        state = _module_state(obj, cls)
                    state[attr] = enc
                    rewritten = True
        if base is None and not rewritten:
            return NotImplemented  # an ordinary module: torch's own pickling
        if state is None:
            state = _module_state(obj, cls)
        return _new_module, (cls,), (state, base is not None), None, None, _restore_module


def _pickle_module(entries: Dict[tuple, str]) -> types.ModuleType:
    mod = types.ModuleType("liplayers_model_pickle")
    mod.Pickler = type("Pickler", (_Pickler,), {"entries": entries})  # type: ignore[attr-defined]
    mod.Unpickler = pickle.Unpickler  # type: ignore[attr-defined]
    mod.load = pickle.load  # type: ignore[attr-defined]
    mod.dump = pickle.dump  # type: ignore[attr-defined]
    return mod


# --------------------------------------------------------------------------- public API
def save(model: nn.Module, path: PathLike, *, metadata: Optional[Dict[str, Any]] = None) -> None:
    """Save ``model`` (architecture, weights, parametrizations and eval caches) to ``path``.

    Works for any ``nn.Module`` built from liplayers layers, ``torch.nn`` modules and your own
    classes (they must be importable when loading). The file is written atomically.

    Args:
        model: the module to save (its train/eval mode is kept in the file; :func:`load`
            returns it in eval mode).
        path: destination file (parent directories are created).
        metadata: optional JSON-like dict stored beside the model (read it back with
            ``load(path, with_metadata=True)``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    from . import __version__

    entries: Dict[tuple, str] = {}
    for name, t in _named_tensors(model).items():
        entries.setdefault(_entry(t), name)
    payload = {"format": FORMAT, "format_version": _FORMAT_VERSION, "liplayers_version": __version__,
               "torch_version": torch.__version__, "metadata": dict(metadata or {}), "model": model}
    atomic_save(payload, path, pickle_module=_pickle_module(entries))


def load(path: PathLike, map_location="cpu", *, with_metadata: bool = False):
    """Load a model written by :func:`save`; returns it in eval mode (trusted files only).

    Its outputs and Lipschitz bound equal those of the saved model in eval mode. A plain
    ``torch.save(module)`` file is accepted too.

    Args:
        path: a file written by :func:`save`.
        map_location: as for ``torch.load`` (default ``"cpu"``).
        with_metadata: also return the ``metadata`` dict given to :func:`save`.

    Returns:
        The module (eval mode), or ``(module, metadata)`` with ``with_metadata=True``.

    Raises:
        FileNotFoundError: no such file. ValueError: the file holds no module.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    obj = torch.load(path, map_location=map_location, weights_only=False)
    meta: Dict[str, Any] = {}
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if int(obj.get("format_version", 0)) > _FORMAT_VERSION:
            raise ValueError(f"{path} was written by a newer liplayers ({obj.get('liplayers_version')}); upgrade "
                             "liplayers to load it")
        model, meta = obj["model"], dict(obj.get("metadata") or {})
    elif isinstance(obj, nn.Module):
        model = obj
    else:
        raise ValueError(f"{path} does not hold a model saved by liplayers.io.save (found {type(obj).__name__})")
    tensors = _named_tensors(model)
    for module in model.modules():
        restore_renamed_attributes(module)  # a file written before an attribute was renamed
        for attr, value in list(module.__dict__.items()):
            if _has_refs(value):
                try:
                    module.__dict__[attr] = _decode_key(value, tensors)
                except LookupError:
                    module.__dict__[attr] = None  # stale at save time: recompute from the weights
    model.eval()
    return (model, meta) if with_metadata else model
