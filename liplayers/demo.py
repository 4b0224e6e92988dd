"""The main job: ``liplayers demo`` (same as ``python -m liplayers demo``); its command line is :mod:`liplayers.cli`.

Trains a gradient-norm-preserving network (BjorckLinear + MaxMin) and an unconstrained ReLU
network of the same size, then prints, for several L2 radii ε, the GNP network's *certified*
accuracy (a proof: no input within ε changes its prediction) next to the accuracy of both
networks under a PGD attack (an empirical upper bound of their robust accuracy). On a fresh
install it uses sklearn's digits (no download) and takes about a minute on a laptop CPU;
``--dataset mnist --data-dir DIR`` reads MNIST from IDX files. ``--out DIR`` writes
``results.json``, ``certified_accuracy.png``, per-epoch ``training_*.csv`` and a checkpoint.

Ctrl-C during training finishes the current step, writes a checkpoint and exits with status
130; ``liplayers demo --resume DIR`` continues and gives the same result as an uninterrupted run.

Soundness self-check: every test point certified at ε is attacked by PGD at ε; a successful
attack on a certified point would be a bug and is reported as a violation (there should be 0).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from ._train_support import _have

__all__ = ["run_demo", "dense_gnp", "dense_relu", "conv_gnp", "make_loss", "pgd_accuracy", "format_table",
           "plot_demo", "DemoError", "DemoInterrupted"]

DEFAULT_EPS = {"digits": (0.25, 0.5, 1.0), "mnist": (0.5, 1.0, 1.58), "fashion-mnist": (0.5, 1.0, 1.58)}
IMAGE_SIZE = {"digits": 8, "mnist": 28, "fashion-mnist": 28}
MNIST_NOTE = "trained on reconstructed MNIST training images"
CHECKPOINT_CONFIG = "demo.json"
# options that define the computation: a resumed run takes them from its checkpoint
RUN_OPTIONS = ("dataset", "arch", "width", "depth", "loss", "margin", "alpha", "tau", "epochs", "lr", "batch_size",
               "eps", "pgd_steps", "test_limit", "seed", "quick")
KEPT_OPTIONS = ("data_dir", "out", "no_plot", "tensorboard")  # from the checkpoint unless given again


class DemoError(Exception):
    """A problem found before training (missing data or optional dependency): one line, exit 2."""


class DemoInterrupted(KeyboardInterrupt):
    """The demo was interrupted; its checkpoint directory is :attr:`checkpoint`."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(str(checkpoint))
        self.checkpoint = checkpoint


# --------------------------------------------------------------------------- models and losses
def dense_gnp(in_features: int, num_classes: int, width: int = 128, depth: int = 3) -> nn.Module:
    """Flatten → [BjorckLinear(width) → MaxMin] × depth → BjorckLinear(num_classes).

    Built by ``liplayers.zoo.architectures.gnp_mlp``. Every weight is (semi-)orthonormal and MaxMin is a permutation: a 1-Lipschitz,
    gradient-norm-preserving network (Anil, Lucas & Grosse, 2019). Its certified bound is
    computed from the weights by :func:`liplayers.certify.lipschitz_bound`, not assumed.
    """
    from .zoo.architectures import gnp_mlp

    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return gnp_mlp(in_features, num_classes, widths=(width,) * depth)


def dense_relu(in_features: int, num_classes: int, width: int = 128, depth: int = 3) -> nn.Module:
    """The unconstrained baseline of the same shape: Flatten → [Linear → ReLU] × depth → Linear."""
    layers: List[nn.Module] = [nn.Flatten()]
    d = in_features
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


def conv_gnp(input_shape: Sequence[int], num_classes: int, width: int, depth: int) -> nn.Module:
    """``liplayers.zoo.architectures.gnp_conv_net``: ``depth`` stages of ``width`` channels.

    Each stage is one orthogonal 3×3 convolution and a strided one (halving the resolution),
    with MaxMin over channels; dense Björck head of 128 units.
    """
    from .zoo.architectures import gnp_conv_net

    c, h, w = input_shape
    if h != w or h % (2 ** depth):
        raise ValueError(f"--arch conv: a square input whose size is divisible by 2**depth is needed, got "
                         f"{h}x{w} with depth {depth}")
    return gnp_conv_net(in_channels=c, num_classes=num_classes, input_size=h, width=width, blocks=depth,
                        convs_per_block=1, hidden=128)


def make_loss(name: str, *, margin: float, alpha: float, tau: float) -> nn.Module:
    """``hkr`` → HKRLoss(alpha, margin); ``hinge`` → HingeMarginLoss(margin); ``tau-ce`` → TauCrossEntropyLoss(tau)."""
    from .losses import HingeMarginLoss, HKRLoss, TauCrossEntropyLoss

    if name == "hkr":
        return HKRLoss(alpha=alpha, margin=margin)
    if name == "hinge":
        return HingeMarginLoss(margin=margin)
    if name == "tau-ce":
        return TauCrossEntropyLoss(tau=tau)
    raise ValueError(f"unknown loss {name!r}; expected hkr, hinge or tau-ce")


# --------------------------------------------------------------------------- evaluation and report
def pgd_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float], steps: int, seed: int,
                 batch_size: int = 1000) -> Tuple[Dict[float, float], Dict[float, Tensor]]:
    """Accuracy under an L2 PGD margin attack (``liplayers.analysis.attacks.pgd_attack``) at each ε.

    Returns ``({eps: accuracy}, {eps: (N,) bool tensor "still correct after the attack"})``.
    """
    from .analysis.attacks import pgd_attack

    model.eval()
    gen = torch.Generator().manual_seed(seed)
    acc, robust = {}, {}
    for e in eps:
        ok = []
        for s in range(0, x.shape[0], batch_size):
            xb, yb = x[s:s + batch_size], y[s:s + batch_size]
            x_adv = pgd_attack(model, xb, yb, float(e), norm="l2", steps=steps, domain=(0.0, 1.0), generator=gen)
            with torch.no_grad():
                ok.append(model(x_adv).argmax(1) == yb)
        robust[float(e)] = torch.cat(ok)
        acc[float(e)] = float(robust[float(e)].float().mean())
    return acc, robust


def format_table(eps: Sequence[float], gnp: dict, base: dict, title: str) -> str:
    """The printed comparison table (accuracies in %)."""
    head = f"{'L2 radius':>10} | {'GNP certified':>13} | {'GNP PGD':>8} | {'ReLU PGD':>8} | {'ReLU certified':>14}"
    lines = [title, head, "-" * len(head)]
    for e in [0.0, *eps]:
        if e == 0.0:
            row = (gnp["clean_accuracy"], gnp["clean_accuracy"], base["clean_accuracy"], base["clean_accuracy"])
            label = "0 (clean)"
        else:
            k = str(float(e))
            row = (gnp["certified_accuracy"][k], gnp["pgd_accuracy"][k], base["pgd_accuracy"][k],
                   base["certified_accuracy"][k])
            label = f"{e:g}"
        lines.append(f"{label:>10} | {100 * row[0]:12.1f}% | {100 * row[1]:7.1f}% | {100 * row[2]:7.1f}% | "
                     f"{100 * row[3]:13.1f}%")
    lines.append(f"Lipschitz bounds (certified, L2): GNP {gnp['lipschitz']:.4f}, ReLU {base['lipschitz']:.4g}. "
                 "Certified = proved for every input within the radius; PGD = accuracy under an attack "
                 "(an upper bound of the true robust accuracy).")
    return "\n".join(lines)


def plot_demo(path, eps: Sequence[float], cert, base_cert, gnp_pgd: Dict[float, float],
              base_pgd: Dict[float, float], title: str):
    """Certified-accuracy curves of both networks (from their certified radii) and their measured
    accuracy under PGD (markers at the attacked radii; ε = 0 is the clean accuracy) → ``path`` (PNG).
    Uses matplotlib's object API only (no pyplot, no change of backend); returns the Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    grid = torch.linspace(0.0, 1.2 * max(eps), 400, dtype=torch.float64)
    ax.plot(grid.numpy(), cert.curve(grid).numpy(), "-", color="C0", drawstyle="steps-post",
            label="1-Lipschitz network, certified")
    ax.plot(grid.numpy(), base_cert.curve(grid).numpy(), "--", color="C1", drawstyle="steps-post",
            label="standard network, certified")
    radii = [0.0, *map(float, eps)]
    ax.plot(radii, [cert.clean_accuracy, *gnp_pgd.values()], linestyle="none", marker="o", markersize=7,
            color="C0", label="1-Lipschitz network, PGD attack")
    ax.plot(radii, [base_cert.clean_accuracy, *base_pgd.values()], linestyle="none", marker="s", markersize=7,
            color="C1", label="standard network, PGD attack")
    ax.set_xlabel("L2 radius ε (pixel values in [0, 1])")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlim(-0.02 * float(grid[-1]), float(grid[-1]))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title(title, fontsize="medium")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


# --------------------------------------------------------------------------- the run
def _progress_mode(args) -> str:
    mode = "none" if getattr(args, "no_progress", False) else getattr(args, "progress", "auto")
    if mode == "auto":
        return "bar" if _have("tqdm") and sys.stderr.isatty() else "lines"
    return mode


def _linear_decay(total_steps: int):
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / max(total_steps, 1)))


def _prepare_checkpoint(args) -> Tuple[Path, bool]:
    """(checkpoint directory, whether it is temporary); a fresh run clears an old one."""
    resume = getattr(args, "resume", None)
    if resume:
        return Path(resume), False
    path = getattr(args, "checkpoint", None) or (Path(args.out) / "checkpoint" if args.out else None)
    temporary = path is None
    path = Path(tempfile.mkdtemp(prefix="liplayers-demo-")) if temporary else Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in ("gnp.pt", "relu.pt"):
        (path / name).unlink(missing_ok=True)
    config = {k: getattr(args, k, None) for k in RUN_OPTIONS + KEPT_OPTIONS}
    (path / CHECKPOINT_CONFIG).write_text(json.dumps({"format": "liplayers-demo-checkpoint", "args": config},
                                                     indent=1))
    return path, temporary


def _keep_temporary(path: Path) -> Path:
    """Move an interrupted run's temporary checkpoint to ./liplayers-demo-checkpoint[-N]."""
    for i in range(100):
        dest = Path.cwd() / ("liplayers-demo-checkpoint" + (f"-{i}" if i else ""))
        if not dest.exists():
            try:
                shutil.move(str(path), str(dest))
                return dest
            except OSError:
                return path
    return path


def run_demo(args: argparse.Namespace, log=print, *, callbacks: Sequence[object] = (), progress_log=None) -> dict:
    """Run the main job with parsed ``args`` (see :func:`build_parser`); return the results dict.

    ``log`` receives the report (header, table, files written); ``progress_log`` the per-epoch
    progress lines (default: stderr); ``callbacks`` are passed to both training runs.
    Raises :class:`DemoInterrupted` on Ctrl-C (after writing the checkpoint), FileNotFoundError
    when the data is missing.
    """
    from .certify import certified_accuracy
    from .data import load_dataset
    from .train import fit

    if progress_log is None:
        progress_log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    quick = args.quick
    limit = 2000 if (quick and args.dataset != "digits") else None
    train, test = load_dataset(args.dataset, args.data_dir, seed=args.seed, limit=limit)
    x_test, y_test = test.tensors
    if args.test_limit:
        x_test, y_test = x_test[:args.test_limit], y_test[:args.test_limit]
    input_shape = tuple(train.tensors[0].shape[1:])
    in_features = math.prod(input_shape)
    num_classes = int(max(train.tensors[1].max(), y_test.max())) + 1
    eps = tuple(args.eps) if args.eps else DEFAULT_EPS[args.dataset]
    epochs = args.epochs if args.epochs is not None else (3 if quick else (30 if args.dataset == "digits" else 10))
    conv = args.arch == "conv"
    width = args.width if args.width is not None else (8 if conv and quick else 16 if conv else 32 if quick else 128)
    depth = args.depth if args.depth is not None else (1 if conv and quick else 2 if conv or quick else 3)
    pgd_steps = args.pgd_steps if args.pgd_steps is not None else (5 if quick else 20)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    note = MNIST_NOTE if args.dataset == "mnist" else None

    if conv:
        gnp = conv_gnp(input_shape, num_classes, width, depth)
        base = dense_relu(in_features, num_classes, 32 if quick else 128, 2 if quick else 3)
    else:
        gnp = dense_gnp(in_features, num_classes, width, depth)
        base = dense_relu(in_features, num_classes, width, depth)
    loss = make_loss(args.loss, margin=args.margin, alpha=args.alpha, tau=args.tau)
    log(f"liplayers demo: {args.dataset} ({len(train)} train / {x_test.shape[0]} test images"
        f"{', ' + note if note else ''}), "
        f"{args.arch} GNP width {width} depth {depth}, loss {loss!r}, {epochs} epochs")

    lr = args.lr if args.lr is not None else (1e-2 if quick else 1e-3)
    mode = _progress_mode(args)
    out = Path(args.out) if args.out else None
    tb = getattr(args, "tensorboard", None)
    ckpt, temporary = _prepare_checkpoint(args)
    if getattr(args, "resume", None):
        log(f"resuming from {ckpt}")

    def train_one(model, criterion, tag):
        t0 = time.perf_counter()
        fit(model, criterion, train, epochs=epochs, lr=lr, batch_size=args.batch_size, seed=args.seed,
            scheduler=_linear_decay(epochs * steps_per_epoch), eval_data=(x_test, y_test), eval_every=epochs,
            eps=eps, checkpoint=ckpt / f"{tag}.pt", resume=True, callbacks=callbacks,
            progress="bar" if mode == "bar" else "none", desc="GNP" if tag == "gnp" else "ReLU",
            log=(lambda s: progress_log(f"  {'GNP ' if tag == 'gnp' else 'ReLU'} {s}")) if mode == "lines" else None,
            metrics_csv=out / f"training_{tag}.csv" if out else None,
            tensorboard_dir=Path(tb) / tag if tb else None)
        return time.perf_counter() - t0

    try:
        gnp_seconds = train_one(gnp, loss, "gnp")
        base_seconds = train_one(base, nn.CrossEntropyLoss(), "relu")
        gnp.eval()
        base.eval()
        cert = certified_accuracy(gnp, (x_test, y_test), eps=list(eps))
        base_cert = certified_accuracy(base, (x_test, y_test), eps=list(eps))
        gnp_pgd, gnp_robust = pgd_accuracy(gnp, x_test, y_test, eps, pgd_steps, args.seed)
        base_pgd, _ = pgd_accuracy(base, x_test, y_test, eps, pgd_steps, args.seed)
    except KeyboardInterrupt:
        raise DemoInterrupted(_keep_temporary(ckpt) if temporary else ckpt) from None
    except BaseException:
        if temporary:
            shutil.rmtree(ckpt, ignore_errors=True)
        raise
    if temporary:
        shutil.rmtree(ckpt, ignore_errors=True)
    violations = {str(float(e)): int((cert.correct & (cert.radii >= e) & ~gnp_robust[float(e)]).sum()) for e in eps}

    def summary(res, pgd, seconds):
        return {"clean_accuracy": res.clean_accuracy, "lipschitz": res.lipschitz, "train_seconds": seconds,
                "certified_accuracy": {str(float(e)): a for e, a in zip(res.eps, res.certified_accuracy)},
                "pgd_accuracy": {str(float(e)): a for e, a in pgd.items()}}

    results = {
        "dataset": args.dataset, "note": note, "n_train": len(train), "n_test": int(x_test.shape[0]),
        "eps": [float(e) for e in eps], "norm": "l2", "pixel_scale": "[0, 1]",
        "config": {k: v for k, v in vars(args).items() if k not in ("func",)} | {
            "epochs": epochs, "width": width, "depth": depth, "pgd_steps": pgd_steps, "lr": lr},
        "gnp": summary(cert, gnp_pgd, gnp_seconds) | {"certificate_violations": violations},
        "baseline": summary(base_cert, base_pgd, base_seconds),
        "device": "cpu", "torch_threads": torch.get_num_threads(),
        "checkpoint": None if temporary else str(ckpt),
    }
    title = (f"{args.dataset}: {x_test.shape[0]} test images, L2 radii in [0, 1] pixel units"
             + (f" ({note})" if note else ""))
    table = format_table(eps, results["gnp"], results["baseline"], title)
    if any(violations.values()):
        table += f"\nWARNING: PGD broke certified points (a soundness bug; please report): {violations}"
    results["table"] = table
    results["wall_time_s"] = time.perf_counter() - t_start
    log(table)
    log(f"wall time {results['wall_time_s']:.1f}s (GNP training {gnp_seconds:.1f}s, ReLU training {base_seconds:.1f}s)")

    if out:
        out.mkdir(parents=True, exist_ok=True)
        results["plot"] = None
        if not getattr(args, "no_plot", False):
            try:
                plot_demo(out / "certified_accuracy.png", eps, cert, base_cert, gnp_pgd, base_pgd,
                          f"{args.dataset}: certified vs attacked accuracy" + (f"\n{note}" if note else ""))
                results["plot"] = str(out / "certified_accuracy.png")
            except ImportError:
                log("matplotlib is not installed: no plot (pip install matplotlib)")
        (out / "results.json").write_text(json.dumps(results, indent=2))
        log(f"wrote {out / 'results.json'}" + (f" and {results['plot']}" if results.get("plot") else ""))
    return results
