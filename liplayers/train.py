"""A small training loop: epochs, progress bar, periodic clean/certified evaluation, checkpoints.

The library is layers, not a framework: :func:`fit` is ~100 lines meant for the examples and
the main job (``liplayers demo``), and to be copied and changed freely.

* Determinism: batch order of epoch e comes from a generator seeded with (seed, e), so
  training for 2 epochs equals training 1 epoch, stopping, and resuming for 1 more.
* Checkpoints (``checkpoint=PATH``): after every epoch the model, optimizer, scheduler, epoch
  and history are written atomically (to a temporary file in the same directory, then
  ``os.replace``), so an interrupted run never leaves a truncated checkpoint. With
  ``resume=True`` an existing checkpoint is loaded and training continues after its epoch.
* Evaluation: :func:`evaluate` reports clean accuracy and certified accuracy at each radius via
  :func:`liplayers.certify.certified_accuracy` (sound bounds of the model as it runs in eval).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = ["fit", "evaluate", "save_checkpoint", "load_checkpoint", "as_dataset"]

Data = Union[Dataset, Tuple[Tensor, Tensor]]


def as_dataset(data: Data) -> Dataset:
    """A ``Dataset`` from a dataset or an ``(inputs, labels)`` pair of tensors."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        if data[0].shape[0] != data[1].shape[0]:
            raise ValueError(f"inputs and labels differ in length: {data[0].shape[0]} vs {data[1].shape[0]}")
        return TensorDataset(*data)
    raise TypeError(f"data must be a torch Dataset or an (inputs, labels) tuple of tensors, got {type(data).__name__}")


def _tensors(data: Data) -> Tuple[Tensor, Tensor]:
    ds = as_dataset(data)
    if isinstance(ds, TensorDataset):
        return ds.tensors[0], ds.tensors[1]
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.as_tensor(ys)


def evaluate(model: nn.Module, data: Data, eps: Sequence[float] = (), input_shape=None) -> Dict[str, object]:
    """Clean accuracy and certified accuracy (L2) at each radius in ``eps``, model in eval mode.

    Returns ``{"clean_accuracy": float, "certified_accuracy": {eps: float}, "lipschitz": float}``
    (fractions in [0, 1]); the certified figures come from :mod:`liplayers.certify`.
    """
    from .certify import certified_accuracy  # noqa: PLC0415 - certify sits above the objectives

    x, y = _tensors(data)
    was_training = model.training
    model.eval()
    try:
        res = certified_accuracy(model, (x, y), eps=list(eps))
    finally:
        model.train(was_training)
    return {"clean_accuracy": float(res.clean_accuracy),
            "certified_accuracy": {float(e): float(a) for e, a in zip(eps, res.certified_accuracy)},
            "lipschitz": float(res.lipschitz)}


def save_checkpoint(path: Union[str, os.PathLike], state: Dict[str, object]) -> None:
    """``torch.save(state)`` to ``path`` atomically (temporary file in the same directory + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: Union[str, os.PathLike], map_location="cpu") -> Dict[str, object]:
    """Load a checkpoint written by :func:`save_checkpoint` (trusted files only: full unpickling)."""
    return torch.load(path, map_location=map_location, weights_only=False)


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional extra
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


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
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> List[Dict[str, object]]:
    """Train ``model`` on ``train_data`` with ``loss_fn(logits, labels)``; return the history.

    Args:
        epochs: total number of epochs (a resumed run continues up to this number).
        lr, batch_size: Adam learning rate (when ``optimizer`` is None) and batch size.
        optimizer: any torch optimizer over the model's parameters (default Adam(lr)).
        scheduler: ``optimizer -> LR scheduler``, stepped after every batch (its state is
            checkpointed).
        eval_data, eval_every, eps: every ``eval_every`` epochs (and after the last one),
            :func:`evaluate` on ``eval_data`` at the L2 radii ``eps``.
        after_step: called after every ``optimizer.step()`` (e.g. a
            :class:`~liplayers.regularizers.ParsevalRetraction`).
        checkpoint, resume: see the module docstring.
        seed: seeds the batch order (per epoch) for deterministic, resumable runs.
        progress: tqdm bar over the batches of each epoch. log: where epoch summaries go
            (default: nowhere).
    Returns:
        One dict per epoch: ``epoch``, ``train_loss`` (mean over batches), ``seconds`` and, on
        evaluated epochs, the keys of :func:`evaluate`.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every!r}")
    dataset = as_dataset(train_data)
    opt = optimizer if optimizer is not None else torch.optim.Adam(model.parameters(), lr=lr)
    sched = scheduler(opt) if scheduler is not None else None
    history: List[Dict[str, object]] = []
    start = 0
    if checkpoint is not None and resume and Path(checkpoint).is_file():
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler") is not None:
            sched.load_state_dict(state["scheduler"])
        history, start = list(state["history"]), int(state["epoch"])
        if log:
            log(f"resumed from {checkpoint} after epoch {start}")
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        model.train()
        gen = torch.Generator().manual_seed(int(seed) * 100_003 + epoch)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen)
        total, batches = 0.0, 0
        for x, y in _progress(loader, progress, f"epoch {epoch + 1}/{epochs}"):
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step()
            if sched is not None:
                sched.step()
            total, batches = total + float(loss.detach()), batches + 1
        row: Dict[str, object] = {"epoch": epoch + 1, "train_loss": total / max(batches, 1),
                                  "seconds": time.perf_counter() - t0}
        if eval_data is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            row.update(evaluate(model, eval_data, eps))
        history.append(row)
        if log:
            log(_summary(row))
        if checkpoint is not None:
            save_checkpoint(checkpoint, {"epoch": epoch + 1, "model": model.state_dict(),
                                         "optimizer": opt.state_dict(),
                                         "scheduler": sched.state_dict() if sched is not None else None,
                                         "history": history})
    return history


def _summary(row: Dict[str, object]) -> str:
    text = f"epoch {row['epoch']}: loss {row['train_loss']:.4f} ({row['seconds']:.1f}s)"
    if "clean_accuracy" in row:
        text += f", clean {100 * row['clean_accuracy']:.1f}%"
        for e, a in row["certified_accuracy"].items():
            text += f", cert@{e:g} {100 * a:.1f}%"
    return text
