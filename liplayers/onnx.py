r"""Deploy a liplayers model as an ONNX file that any ONNX runtime can run, without liplayers.

:func:`export_onnx` first applies :func:`liplayers.export <liplayers.nn.export.export>` (every liplayers layer becomes
its plain ``torch.nn`` equivalent with the weights it uses in eval mode frozen in), then
replaces the activations that have no ``torch.nn`` counterpart by modules written only with
standard operators that every ONNX runtime implements (:func:`prepare_for_onnx`):

* :class:`~liplayers.nn.MaxMin` → pairs ``(x₂ᵢ, x₂ᵢ₊₁)`` along ``dim`` by a reshape, then
  ``Min`` / ``Max`` and a reshape back — the minimum first, exactly as
  :func:`liplayers.functional.group_sort.max_min`;
* :class:`~liplayers.nn.GroupSort` → reshape into groups of ``group_size`` and an ascending
  sort (ONNX ``TopK``); :class:`~liplayers.nn.FullSort` → a sort of the whole ``dim``;
* :class:`~liplayers.nn.HouseholderActivation` → the reflection with its angles frozen into
  constants.

Sorting, ``Min`` and ``Max`` do no arithmetic, so these layers give bit-identical values in
every runtime (NaN handling may differ: only finite inputs are certified anyway); the dense
and convolutional layers differ from PyTorch by float rounding only (about 1e-7 relative in
float32). The graph is checked in ONNX Runtime against the PyTorch model before the file is
written (``check=True``).

The file also records, in its metadata, the guaranteed L2 Lipschitz bound of the model (from
:func:`liplayers.certify.lipschitz_bound`, computed from the weights that were exported), so
the deployed model carries what is needed for its certificate: a sample whose logits ``f``
have predicted class ``y`` keeps its class within the L2 radius
``(f_y − max_{j≠y} f_j) / (√2 L)`` (minus a rounding allowance; see
:func:`liplayers.certify.certified_radius`).

Exporter: the ``torch.export``-based exporter (``dynamo=True``; needs ``onnxscript``) when
available, else — or when it cannot trace the model — the TorchScript-based one. The
Fourier-domain layers (:class:`~liplayers.nn.CayleyConv2d`, :class:`~liplayers.nn.BROConv2d`,
circular :class:`~liplayers.nn.SOCConv2d`) become convolutions with image-sized kernels for
the given ``input_shape`` (complex FFTs have no ONNX form); layers without a ``to_torch``
equivalent (CPL, SLL, zero-padded SOC) are exported as they run in eval mode. A model that
neither exporter can trace raises with both errors.
Install with ``pip install "liplayers[onnx]"``.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import math
import os
import warnings
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .nn.export import export
# the activations written with standard ONNX operators live in liplayers.nn.onnx_activation
from .nn.onnx_activation import OnnxGroupSort, OnnxHouseholder, OnnxMaxMin, _replace_activations

__all__ = ["export_onnx", "prepare_for_onnx", "OnnxMaxMin", "OnnxGroupSort", "OnnxHouseholder",
           "METADATA_PREFIX"]

METADATA_PREFIX = "liplayers."
"""Prefix of the metadata keys :func:`export_onnx` writes (``liplayers.lipschitz_bound``, …)."""

_NATIVE_OPSET = 18  # the lowest opset the torch.export-based exporter writes directly


def prepare_for_onnx(model: nn.Module, input_shape: Optional[Sequence[int]] = None) -> nn.Module:
    """The eval-mode model as plain ``torch.nn`` modules and ONNX-exportable activations.

    :func:`liplayers.nn.export` (with ``input_shape``, the shape of one input without the batch
    dimension, when given: the layers whose plain equivalent depends on it are converted), then every GroupSort-family and Householder activation is
    replaced by :class:`OnnxMaxMin`, :class:`OnnxGroupSort` or :class:`OnnxHouseholder`. Use it
    to call ``torch.onnx.export`` (or another exporter) with your own options; the input model
    is not modified.

    Example:
        >>> import torch, liplayers
        >>> net = liplayers.Sequential(liplayers.BjorckLinear(4, 4), liplayers.MaxMin(dim=-1))
        >>> prepare_for_onnx(net)
        Sequential(
          (0): Linear(in_features=4, out_features=4, bias=True)
          (1): OnnxMaxMin(dim=-1)
        )
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return _replace_activations(export(model, input_shape)).eval()


# ------------------------------------------------------------------------------------------ export
def _check_shape(input_shape) -> Tuple[int, ...]:
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or not input_shape or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in input_shape):
        raise ValueError(f"input_shape must be a sequence of positive ints (one input, without the batch "
                         f"dimension), got {input_shape!r}")
    return tuple(int(s) for s in input_shape)


def _example(model: nn.Module, shape: Tuple[int, ...], batch: int) -> Tensor:
    p = next((t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()), None)
    dtype = p.dtype if p is not None else torch.get_default_dtype()
    device = p.device if p is not None else "cpu"
    g = torch.Generator(device="cpu").manual_seed(0)
    return torch.randn((batch, *shape), generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporters' own deprecation notices and progress logs (nothing about the model)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            yield
    finally:
        logger.setLevel(level)


class _ConversionError(ValueError):
    """The exported graph could not be converted down to the requested opset."""


def _summary(exc: BaseException) -> str:
    """The informative part of an exporter's error (torch.export's carry a long generic preamble)."""
    text = str(exc)
    if "Exception summary" in text:
        text = text.split("Exception summary", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]


def _has_dynamo_exporter() -> bool:
    try:
        if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
            return False
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def _to_proto(module: nn.Module, x: Tensor, opset: int, dynamic_batch: bool, dynamo: bool):
    import onnx

    names = {"input_names": ["input"], "output_names": ["output"]}
    with _quiet_exporter(), torch.no_grad():
        if dynamo:
            shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
            program = torch.onnx.export(module, (x,), None, dynamo=True, opset_version=max(opset, _NATIVE_OPSET),
                                        dynamic_shapes=shapes, verbose=False, **names)
            proto = program.model_proto
            if opset < _NATIVE_OPSET:
                from onnx import version_converter

                try:
                    proto = version_converter.convert_version(proto, opset)
                except Exception as exc:  # the converter raises RuntimeError / ValueError
                    raise _ConversionError(f"cannot convert the exported graph from opset {_NATIVE_OPSET} to "
                                           f"{opset} ({exc}); use opset >= {_NATIVE_OPSET} or dynamo=False") from exc
        else:
            buf = io.BytesIO()
            extra = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
            with contextlib.redirect_stdout(io.StringIO()):  # it prints its whole graph on a failure
                torch.onnx.export(module, (x,), buf, opset_version=opset, dynamic_axes=axes, **names, **extra)
            proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    return proto


def _run_onnxruntime(proto, x: Tensor):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError("export_onnx(check=True) runs the graph in onnxruntime: pip install 'liplayers[onnx]' "
                          "(or pass check=False)") from exc
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})[0]


def export_onnx(
    model: nn.Module,
    path: Union[str, os.PathLike],
    input_shape: Sequence[int],
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    batch_size: int = 1,
    store_bound: bool = True,
    check: bool = True,
    dynamo: Optional[bool] = None,
):
    """Write ``model`` (in eval mode, weights as they are now) to an ONNX file.

    The graph uses standard ONNX operators only (see the module docstring): any ONNX runtime
    runs it, liplayers is not needed to deploy it. The input is named ``"input"``, the output
    ``"output"``, and the first (batch) dimension is dynamic unless ``dynamic_batch=False``.

    Args:
        model: a liplayers or plain PyTorch model with one tensor input and one tensor output.
            Not modified.
        path: file to write (its parent directory must exist).
        input_shape: shape of one input *without* the batch dimension, e.g. ``(1, 28, 28)``
            (the convention of :func:`liplayers.certify.lipschitz_bound`).
        opset: ONNX operator set version (≥ 13). The ``torch.export``-based exporter writes
            opset 18 and the file is converted down when a lower one is asked for.
        dynamic_batch: make the batch dimension symbolic (``"batch"``).
        batch_size: the fixed batch size when ``dynamic_batch=False``.
        store_bound: compute the guaranteed L2 Lipschitz bound of ``model`` with
            :func:`liplayers.certify.lipschitz_bound` and store it in the metadata
            (``liplayers.lipschitz_bound``, with ``liplayers.input_shape``). A model for which
            no bound is proved raises :class:`~liplayers.lipschitz.UnboundedModuleError`: pass
            ``False`` to export it without a bound.
        check: run the graph in ONNX Runtime on a random batch and raise ``RuntimeError`` if
            its outputs differ from the PyTorch model's by more than ``1e-4 · max(1, max|y|)``.
        dynamo: ``True`` for the ``torch.export``-based exporter (needs ``onnxscript``),
            ``False`` for the TorchScript-based one, ``None`` for the first when available and
            the second if the first fails (layers whose eval cache ``torch.export`` cannot
            trace; the ONNX Runtime check still applies).

    Returns:
        The exported ``onnx.ModelProto`` (also written to ``path``).

    Raises:
        ValueError: bad ``input_shape``, ``opset`` or ``batch_size``.
        ImportError: ``onnx`` (or ``onnxruntime`` with ``check=True``, ``onnxscript`` with
            ``dynamo=True``) is not installed.

    Example:
        >>> import os, tempfile, torch, liplayers
        >>> from liplayers.onnx import export_onnx
        >>> net = liplayers.gnp_mlp(8, 3, widths=(16,))
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     proto = export_onnx(net, os.path.join(folder, "net.onnx"), (8,))
        >>> meta = {p.key: p.value for p in proto.metadata_props}
        >>> float(meta["liplayers.lipschitz_bound"]) <= 1.001
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    shape = _check_shape(input_shape)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 13:
        raise ValueError(f"opset must be an int >= 13, got {opset!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("export_onnx needs the onnx package: pip install 'liplayers[onnx]'") from exc
    if dynamo and not _has_dynamo_exporter():
        raise ImportError("dynamo=True needs torch.onnx.export(dynamo=...) (torch >= 2.5) and onnxscript")

    bound = None
    if store_bound:
        from .certify import lipschitz_bound

        bound = lipschitz_bound(model, shape)
    module = prepare_for_onnx(model, shape)
    # a batch of 2 keeps torch.export from specializing the symbolic batch size to 1
    x = _example(module, shape, 2 if dynamic_batch else batch_size)
    if dynamo is None and _has_dynamo_exporter():
        try:
            proto = _to_proto(module, x, opset, dynamic_batch, True)
        except Exception as first:  # noqa: BLE001 - any failure: the other exporter, then the check decides
            try:
                proto = _to_proto(module, x, opset, dynamic_batch, False)
            except Exception as second:
                raise RuntimeError(f"export_onnx: neither exporter could export the model.\n"
                                   f"torch.export-based: {_summary(first)}\nTorchScript-based: {_summary(second)}"
                                   ) from second
    else:
        proto = _to_proto(module, x, opset, dynamic_batch, bool(dynamo))

    if check:
        with torch.no_grad():
            want = module(x).detach().cpu().to(torch.float64)
        got = torch.from_numpy(_run_onnxruntime(proto, x)).to(torch.float64)
        tol = 1e-4 * max(1.0, float(want.abs().max()) if want.numel() else 1.0)
        if got.shape != want.shape or not bool(((got - want).abs() <= tol).all()):
            err = float((got - want).abs().max()) if got.shape == want.shape else math.inf
            raise RuntimeError(f"export_onnx: ONNX Runtime outputs differ from the PyTorch model's "
                               f"(shapes {tuple(got.shape)} vs {tuple(want.shape)}, max difference {err:.3g})")

    from . import __version__

    meta = {"version": __version__, "input_shape": json.dumps(list(shape))}
    if bound is not None:
        meta["lipschitz_bound"] = repr(float(bound))
        meta["certificate"] = ("L2 radius of a sample with logits f and predicted class y: "
                               "(f_y - max_{j != y} f_j) / (sqrt(2) * lipschitz_bound), minus a rounding "
                               "allowance; |f| / lipschitz_bound for a single binary logit")
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({METADATA_PREFIX + key: value for key, value in meta.items()})
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = "liplayers"
    proto.producer_version = __version__
    onnx.save(proto, os.fspath(path))
    return proto
