"""What :func:`liplayers.train.fit` needs besides its loop: optional packages, a deferred Ctrl-C,
callbacks, metrics files (CSV, TensorBoard) and the tensors checkpoints keep outside a state dict."""
from __future__ import annotations

import csv
import importlib.util
import os
import signal
import threading
from pathlib import Path
from typing import Dict, List, Sequence

from torch import Tensor, nn


def _have(module: str) -> bool:
    """Whether the optional package ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class _DeferredInterrupt:
    """While active (main thread, default SIGINT handler): the first Ctrl-C only sets ``requested``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.requested, self._old = enabled, False, None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_DeferredInterrupt":
        if (self.enabled and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _summary_writer(log_dir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("tensorboard_dir= needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(log_dir=str(log_dir))


def _callbacks(callbacks) -> list:
    cbs = list(callbacks or ())
    for cb in cbs:
        if not (callable(getattr(cb, "on_step_end", None)) or callable(getattr(cb, "on_epoch_end", None))):
            raise TypeError(f"callback {cb!r} has neither an on_step_end nor an on_epoch_end method")
    return cbs


def _write_csv(path, history: List[Dict[str, object]], eps: Sequence[float]) -> None:
    eps_cols = [f"certified_accuracy@{float(e):g}" for e in eps]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "loss", "clean_accuracy", *eps_cols, "lipschitz", "lr", "seconds"])
        for r in history:
            cert = r.get("certified_accuracy", {})
            w.writerow([r["epoch"], r["train_loss"], r.get("clean_accuracy", ""),
                        *[cert.get(float(e), "") for e in eps], r.get("lipschitz", ""), r.get("lr", ""),
                        r["seconds"]])
    os.replace(tmp, path)


def _runtime_tensors(model: nn.Module) -> Dict[str, Dict[str, Tensor]]:
    """Tensors modules hold outside their state_dict (e.g. a persistent power-iteration vector),
    except caches (derived data, recomputed): checkpointed so that a resumed run is exact."""
    out: Dict[str, Dict[str, Tensor]] = {}
    for name, module in model.named_modules():
        attrs = {k: v.detach().clone() for k, v in vars(module).items()
                 if isinstance(v, Tensor) and not isinstance(v, nn.Parameter) and "cache" not in k}
        if attrs:
            out[name] = attrs
    return out


def _restore_runtime_tensors(model: nn.Module, saved: Dict[str, Dict[str, Tensor]]) -> None:
    modules = dict(model.named_modules())
    for name, attrs in saved.items():
        module = modules.get(name)
        if module is not None:
            for k, v in attrs.items():
                if isinstance(vars(module).get(k), (Tensor, type(None))):
                    setattr(module, k, v)


def _tensorboard_epoch(writer, row: Dict[str, object]) -> None:
    e = int(row["epoch"])
    writer.add_scalar("train/loss", float(row["train_loss"]), e)
    writer.add_scalar("train/lr", float(row["lr"]), e)
    writer.add_scalar("train/epoch_seconds", float(row["seconds"]), e)
    if "clean_accuracy" in row:
        writer.add_scalar("eval/clean_accuracy", float(row["clean_accuracy"]), e)
        writer.add_scalar("eval/lipschitz_bound", float(row["lipschitz"]), e)
        for eps, acc in row["certified_accuracy"].items():
            writer.add_scalar(f"eval/certified_accuracy@{eps:g}", float(acc), e)
    writer.flush()


def _summary(row: Dict[str, object]) -> str:
    text = f"epoch {row['epoch']}: loss {row['train_loss']:.4f} ({row['seconds']:.1f}s)"
    if "clean_accuracy" in row:
        text += f", clean {100 * row['clean_accuracy']:.1f}%"
        for e, a in row["certified_accuracy"].items():
            text += f", cert@{e:g} {100 * a:.1f}%"
    return text
