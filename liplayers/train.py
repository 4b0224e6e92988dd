"""A small training loop: epochs, progress, evaluation, callbacks, metrics files, checkpoints.

The library is layers, not a framework: :func:`fit` is meant for the examples and the main
job (``liplayers demo``), and to be copied and changed freely.

* Data: a ``Dataset``, a ``DataLoader`` or an ``(x, y)`` pair of tensors, for training and
  for evaluation.
* Determinism: for a ``Dataset`` or a pair, the batch order of epoch e comes from a generator
  seeded with (seed, e); a ``DataLoader`` is iterated as it is (seed its sampler yourself).
* Checkpoints (``checkpoint=PATH``): after every epoch the model, optimizer, scheduler, epoch,
  random state and history are written atomically (temporary file + ``os.replace``). With
  ``resume=True`` an existing checkpoint is loaded and training continues where it stopped.
* Checkpoints also keep the tensors that modules hold outside their ``state_dict`` (such as
  the persistent power-iteration vector of a Björck layer), so a resumed run is exact.
* Interruption: with a checkpoint, Ctrl-C (SIGINT) during :func:`fit` lets the current step
  finish, writes a mid-epoch checkpoint and raises :class:`TrainingInterrupted` (a
  ``KeyboardInterrupt``); a ``KeyboardInterrupt`` raised by a callback does the same. Resuming
  from it (skip the batches already seen, restore the random state) gives the same weights as
  an uninterrupted run. A second Ctrl-C stops at once (the last epoch checkpoint is kept).
* Evaluation: :func:`evaluate` reports clean accuracy and certified accuracy at each radius via
  :func:`liplayers.certify.certified_accuracy` (sound bounds of the model as it runs in eval).
* Callbacks: objects with optional ``on_step_end(state)`` / ``on_epoch_end(state)`` methods,
  ``state`` a :class:`TrainState`; set ``state.stop = True`` to end training early.
* Logging: ``metrics_csv=PATH`` (one row per epoch), ``tensorboard_dir=DIR`` (scalars; needs
  the ``tensorboard`` package), a tqdm bar when stderr is a terminal (``progress``).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ._train_support import (_callbacks, _DeferredInterrupt, _have, _restore_runtime_tensors, _runtime_tensors,
                             _summary, _summary_writer, _tensorboard_epoch, _write_csv)
from .io import atomic_save
from .utils import as_dataset

__all__ = ["fit", "evaluate", "save_checkpoint", "load_checkpoint", "as_dataset", "TrainState",
           "TrainingInterrupted", "resolve_progress"]

Data = Union[Dataset, DataLoader, Tuple[Tensor, Tensor]]


@dataclass
class TrainState:
    """What a callback sees. ``epoch`` is 1-based; ``step`` counts optimizer steps since the start
    of training (all epochs); ``loss`` is the last batch's loss in ``on_step_end`` and the epoch's
    mean loss in ``on_epoch_end``; ``metrics`` is the epoch's history row in ``on_epoch_end``
    (``{"loss", "lr"}`` after a step). Set ``stop = True`` to end training after this call."""

    epoch: int
    step: int
    loss: float
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    metrics: Dict[str, Any] = field(default_factory=dict)
    stop: bool = False


class TrainingInterrupted(KeyboardInterrupt):
    """Training was interrupted and a checkpoint was written to :attr:`checkpoint`."""

    def __init__(self, checkpoint: Union[str, os.PathLike]) -> None:
        super().__init__(f"training interrupted; checkpoint written to {checkpoint}")
        self.checkpoint = Path(checkpoint)


def evaluate(model: nn.Module, data: Data, eps: Sequence[float] = (), input_shape=None,
             batch_size: int = 256) -> Dict[str, object]:
    """Clean accuracy and certified accuracy (L2) at each radius in ``eps``, model in eval mode.

    ``data``: a ``Dataset``, a ``DataLoader`` or an ``(x, y)`` pair. Returns
    ``{"clean_accuracy": float, "certified_accuracy": {eps: float}, "lipschitz": float}``
    (fractions in [0, 1]); the certified figures come from :mod:`liplayers.certify`.
    ``input_shape`` is accepted for compatibility (the shape is read from the data).
    """
    from .certify import certified_accuracy  # noqa: PLC0415 - certify sits above the objectives
    from .lipschitz import eval_mode

    if not isinstance(data, DataLoader):
        data = as_dataset(data)  # validates pairs (equal lengths) and types
    with eval_mode(model):
        res = certified_accuracy(model, data, eps=list(eps), batch_size=batch_size)
    return {"clean_accuracy": float(res.clean_accuracy),
            "certified_accuracy": {float(e): float(a) for e, a in zip(eps, res.certified_accuracy)},
            "lipschitz": float(res.lipschitz)}


def save_checkpoint(path: Union[str, os.PathLike], state: Dict[str, object]) -> None:
    """``torch.save(state)`` to ``path`` atomically (temporary file in the same directory + ``os.replace``)."""
    atomic_save(state, path)


def load_checkpoint(path: Union[str, os.PathLike], map_location="cpu") -> Dict[str, object]:
    """Load a checkpoint written by :func:`save_checkpoint` (trusted files only: full unpickling)."""
    return torch.load(path, map_location=map_location, weights_only=False)


def resolve_progress(progress: Union[bool, str]) -> str:
    """``"bar"`` or ``"none"``: ``True``/``"auto"`` is a tqdm bar when stderr is a terminal and
    tqdm is installed; ``"bar"`` requires tqdm (``ImportError`` naming ``pip install tqdm``)."""
    if progress is True or progress == "auto":
        return "bar" if _have("tqdm") and getattr(sys.stderr, "isatty", lambda: False)() else "none"
    if progress is False or progress in ("none", "lines"):
        return "none"
    if progress == "bar":
        if not _have("tqdm"):
            raise ImportError("a progress bar needs tqdm, an optional dependency: pip install tqdm")
        return "bar"
    raise ValueError(f"progress must be True, False, 'auto', 'bar' or 'none', got {progress!r}")


def _epoch_loader(train_data, dataset, batch_size: int, seed: int, epoch: int):
    if dataset is None:
        return train_data
    gen = torch.Generator().manual_seed(int(seed) * 100_003 + epoch)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen)


def fit(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    train_data: Data,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Callable[[torch.optim.Optimizer], object]] = None,
    eval_data: Optional[Data] = None,
    eval_every: int = 1,
    eps: Sequence[float] = (),
    after_step: Optional[Callable[[], None]] = None,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    resume: bool = True,
    seed: int = 0,
    progress: Union[bool, str] = True,
    log: Optional[Callable[[str], None]] = None,
    callbacks: Sequence[object] = (),
    metrics_csv: Optional[Union[str, os.PathLike]] = None,
    tensorboard_dir: Optional[Union[str, os.PathLike]] = None,
    desc: Optional[str] = None,
) -> List[Dict[str, object]]:
    """Train ``model`` on ``train_data`` with ``loss_fn(logits, labels)``; return the history.

    Args:
        train_data, eval_data: a ``Dataset``, a ``DataLoader`` or an ``(x, y)`` pair of tensors.
        epochs: total number of epochs (a resumed run continues up to this number).
        lr, batch_size: Adam learning rate (when ``optimizer`` is None) and batch size (unused
            for a ``DataLoader``).
        optimizer: any torch optimizer over the model's parameters (default Adam(lr)).
        scheduler: ``optimizer -> LR scheduler``, stepped after every batch (checkpointed).
        eval_every, eps: every ``eval_every`` epochs (and after the last one), :func:`evaluate`
            on ``eval_data`` at the L2 radii ``eps``.
        after_step: called after every ``optimizer.step()`` (e.g. a
            :class:`~liplayers.regularizers.ParsevalRetraction`).
        checkpoint, resume: see the module docstring.
        seed: seeds the batch order (per epoch) for deterministic, resumable runs.
        progress: ``True``/``"auto"`` (a tqdm bar when stderr is a terminal and tqdm is
            installed), ``"bar"``, or ``False``/``"none"``. ``log``: where epoch summaries go.
        callbacks: objects with optional ``on_step_end(state)`` / ``on_epoch_end(state)``.
        metrics_csv: file rewritten after every epoch: epoch, loss, clean accuracy, certified
            accuracy per ε, Lipschitz bound, learning rate, seconds (empty cells when not evaluated).
        tensorboard_dir: TensorBoard scalars (needs ``pip install tensorboard``).
        desc: label of the progress bar.
    Returns:
        One dict per epoch: ``epoch``, ``train_loss`` (mean over batches), ``lr``, ``seconds``
        and, on evaluated epochs, the keys of :func:`evaluate`.
    Raises:
        TrainingInterrupted: on Ctrl-C with a ``checkpoint`` (after writing it).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every!r}")
    dataset = None if isinstance(train_data, DataLoader) else as_dataset(train_data)
    if eval_data is not None and not isinstance(eval_data, DataLoader):
        eval_data = as_dataset(eval_data)
    cbs = _callbacks(callbacks)
    mode = resolve_progress(progress)
    writer = _summary_writer(tensorboard_dir) if tensorboard_dir is not None else None
    opt = optimizer if optimizer is not None else torch.optim.Adam(model.parameters(), lr=lr)
    sched = scheduler(opt) if scheduler is not None else None
    history: List[Dict[str, object]] = []
    start, partial, rng = 0, None, None
    have_checkpoint = False  # a checkpoint of this run exists (resumed from, or written)
    if checkpoint is not None and resume and Path(checkpoint).is_file():
        have_checkpoint = True
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        _restore_runtime_tensors(model, state.get("runtime", {}))
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler") is not None:
            sched.load_state_dict(state["scheduler"])
        history, start = list(state["history"]), int(state["epoch"])
        partial, rng = state.get("partial"), state.get("rng")
        if log:
            log(f"resumed from {checkpoint} after epoch {start}"
                + (f" and {partial['step']} steps" if partial else ""))
    try:
        steps_per_epoch: Optional[int] = len(_epoch_loader(train_data, dataset, batch_size, seed, 0))
    except TypeError:  # an iterable-style DataLoader has no length
        steps_per_epoch = None
    global_step = start * (steps_per_epoch or 0) + (partial["step"] if partial else 0)
    bar = None
    if mode == "bar" and start < epochs:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * steps_per_epoch if steps_per_epoch else None, initial=global_step, desc=desc,
                   dynamic_ncols=True)

    def snapshot(epoch: int, extra: Optional[dict]) -> Dict[str, object]:
        return {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None, "history": history,
                "partial": extra, "rng": torch.get_rng_state(), "runtime": _runtime_tensors(model)}

    guard = _DeferredInterrupt(checkpoint is not None)
    consistent, cur = True, None  # cur: in-epoch progress (for a mid-epoch checkpoint)
    try:
        with guard:
            for epoch in range(start, epochs):
                resumed = partial if epoch == start else None
                if resumed is not None:
                    torch.set_rng_state(resumed["rng_epoch"])
                elif epoch == start and rng is not None:
                    torch.set_rng_state(rng)
                cur = {"step": 0, "total": 0.0, "batches": 0, "seconds": 0.0, "rng_epoch": torch.get_rng_state()}
                model.train()
                batches = iter(_epoch_loader(train_data, dataset, batch_size, seed, epoch))
                if resumed is not None:
                    for _ in range(int(resumed["step"])):
                        if next(batches, None) is None:
                            raise ValueError(f"{checkpoint}: the checkpoint is {resumed['step']} steps into epoch "
                                             f"{epoch + 1}, but the training data has fewer batches")
                    cur.update({k: resumed[k] for k in ("step", "total", "batches", "seconds")})
                    torch.set_rng_state(resumed["rng"])
                t0 = time.perf_counter() - float(cur["seconds"])
                for item in batches:
                    consistent = False
                    x, y = item[0], item[1]
                    loss = loss_fn(model(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if after_step is not None:
                        after_step()
                    if sched is not None:
                        sched.step()
                    value = float(loss.detach())
                    global_step += 1
                    cur.update(step=cur["step"] + 1, total=cur["total"] + value, batches=cur["batches"] + 1)
                    consistent = True
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(f"epoch {epoch + 1}/{epochs}, loss {value:.4f}", refresh=False)
                    if writer is not None:
                        writer.add_scalar("train/loss_step", value, global_step)
                    ts = TrainState(epoch + 1, global_step, value, model, opt, sched,
                                    {"loss": value, "lr": opt.param_groups[0]["lr"]})
                    for cb in cbs:
                        if hasattr(cb, "on_step_end"):
                            cb.on_step_end(ts)
                    if guard.requested:
                        raise KeyboardInterrupt
                    if ts.stop:
                        break
                else:
                    ts = None
                row: Dict[str, object] = {"epoch": epoch + 1, "train_loss": cur["total"] / max(cur["batches"], 1),
                                          "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
                if eval_data is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
                    row.update(evaluate(model, eval_data, eps))
                history.append(row)
                cur = None
                if log and bar is not None:
                    with bar.external_write_mode():  # the line above the bar, not through it
                        log(_summary(row))
                elif log:
                    log(_summary(row))
                if bar is not None:
                    bar.set_postfix_str(_summary(row), refresh=True)
                if metrics_csv is not None:
                    _write_csv(metrics_csv, history, eps)
                if writer is not None:
                    _tensorboard_epoch(writer, row)
                if checkpoint is not None:
                    save_checkpoint(checkpoint, snapshot(epoch + 1, None))
                    have_checkpoint = True
                es = TrainState(epoch + 1, global_step, float(row["train_loss"]), model, opt, sched, row)
                for cb in cbs:
                    if hasattr(cb, "on_epoch_end"):
                        cb.on_epoch_end(es)
                if guard.requested:
                    raise KeyboardInterrupt
                if es.stop or (ts is not None and ts.stop):
                    break
    except KeyboardInterrupt:
        if checkpoint is None:
            raise
        if consistent and cur is not None:  # between two steps: the exact place to resume
            cur["seconds"] = time.perf_counter() - t0
            cur["rng"] = torch.get_rng_state()
            save_checkpoint(checkpoint, snapshot(len(history), cur))
        elif not have_checkpoint:  # interrupted inside a step before any checkpoint of this run
            raise
        raise TrainingInterrupted(checkpoint) from None
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    return history
