"""The main job: ``liplayers demo`` (same as ``python -m liplayers demo``).

Trains a gradient-norm-preserving network (BjorckLinear + MaxMin) and an unconstrained ReLU
network of the same size, then prints, for several L2 radii ε, the GNP network's *certified*
accuracy (a proof: no input within ε changes its prediction) next to the accuracy of both
networks under a PGD attack (an empirical upper bound of their robust accuracy). On a fresh
install it uses sklearn's digits (no download) and takes about a minute on a laptop CPU;
``--dataset mnist --data-dir DIR`` reads MNIST from IDX files. ``--out DIR`` writes
``results.json`` and ``certified_accuracy.png``.

Soundness self-check: every test point certified at ε is attacked by PGD at ε; a successful
attack on a certified point would be a bug and is reported as a violation (there should be 0).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["main", "build_parser", "run_demo", "dense_gnp", "dense_relu", "make_loss", "format_table"]

DEFAULT_EPS = {"digits": (0.25, 0.5, 1.0), "mnist": (0.5, 1.0, 1.58), "fashion-mnist": (0.5, 1.0, 1.58)}
MNIST_NOTE = "trained on reconstructed MNIST training images"


# --------------------------------------------------------------------------- models and losses
def dense_gnp(in_features: int, num_classes: int, width: int = 128, depth: int = 3) -> nn.Module:
    """Flatten → [BjorckLinear(width) → MaxMin] × depth → BjorckLinear(num_classes) (``liplayers.zoo.architectures.gnp_mlp``).

    Every weight is (semi-)orthonormal and MaxMin is a permutation: a 1-Lipschitz,
    gradient-norm-preserving network (seed 004). Its certified bound is computed from the
    weights by :func:`liplayers.certify.lipschitz_bound`, not assumed.
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
    """``liplayers.zoo.architectures.gnp_conv_net`` (imported lazily): ``depth`` stages of ``width`` channels.

    Each stage is one orthogonal 3×3 convolution and a strided one (halving the resolution),
    with MaxMin over channels; dense Björck head of 128 units.
    """
    try:
        from .zoo.architectures import gnp_conv_net  # the convolutional GNP builders (optional here)
    except ImportError as exc:
        raise SystemExit("--arch conv needs liplayers.zoo.architectures.gnp_conv_net, which is not available in this "
                         f"installation ({exc}); use --arch dense") from None
    c, h, w = input_shape
    if h != w or h % (2 ** depth):
        raise SystemExit(f"--arch conv: a square input whose size is divisible by 2**depth is needed, got "
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


# --------------------------------------------------------------------------- evaluation
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


def _linear_decay(total_steps: int):
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / max(total_steps, 1)))


def run_demo(args: argparse.Namespace, log=print) -> dict:
    """Run the main job with parsed ``args`` (see :func:`build_parser`); return the results dict."""
    from .certify import certified_accuracy, plot_certified_accuracy
    from .data import load_dataset
    from .train import fit

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
    log(f"liplayers demo: {args.dataset} ({len(train)} train / {x_test.shape[0]} test images{', ' + note if note else ''}), "
        f"{args.arch} GNP width {width} depth {depth}, loss {loss!r}, {epochs} epochs")

    lr = args.lr if args.lr is not None else (1e-2 if quick else 1e-3)
    common = dict(epochs=epochs, lr=lr, batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress,
                  scheduler=_linear_decay(epochs * steps_per_epoch))
    t0 = time.perf_counter()
    fit(gnp, loss, train, log=lambda s: log("  GNP  " + s), **common)
    gnp_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit(base, nn.CrossEntropyLoss(), train, log=lambda s: log("  ReLU " + s), **common)
    base_seconds = time.perf_counter() - t0

    gnp.eval()
    base.eval()
    cert = certified_accuracy(gnp, (x_test, y_test), eps=list(eps))
    base_cert = certified_accuracy(base, (x_test, y_test), eps=list(eps))
    gnp_pgd, gnp_robust = pgd_accuracy(gnp, x_test, y_test, eps, pgd_steps, args.seed)
    base_pgd, _ = pgd_accuracy(base, x_test, y_test, eps, pgd_steps, args.seed)
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

    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            ax = plot_certified_accuracy({f"GNP ({args.loss}) certified": cert})
            ax.plot([0.0, *eps], [base_cert.clean_accuracy, *base_pgd.values()], "o--", label="ReLU, PGD (empirical)")
            ax.plot([0.0, *eps], [cert.clean_accuracy, *gnp_pgd.values()], "s:", label="GNP, PGD (empirical)")
            ax.legend()
            ax.set_ylabel("accuracy")
            ax.set_title(f"{args.dataset}: certified vs attacked accuracy" + (f"\n{note}" if note else ""))
            ax.figure.savefig(out / "certified_accuracy.png", dpi=120, bbox_inches="tight")
            plt.close(ax.figure)
            results["plot"] = str(out / "certified_accuracy.png")
        except ImportError:
            log("matplotlib is not installed: no plot (pip install matplotlib)")
            results["plot"] = None
        (out / "results.json").write_text(json.dumps(results, indent=2))
        log(f"wrote {out / 'results.json'}" + (f" and {results['plot']}" if results.get("plot") else ""))
    return results


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liplayers", description="liplayers command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a certified-robust GNP network and compare it with an unconstrained one",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--dataset", choices=("digits", "mnist", "fashion-mnist"), default="digits")
    demo.add_argument("--data-dir", default=None,
                      help="directory with the MNIST / Fashion-MNIST IDX .gz files (default: $LIPLAYERS_DATA)")
    demo.add_argument("--arch", choices=("dense", "conv"), default="dense")
    demo.add_argument("--width", type=int, default=None,
                      help="dense: hidden width (default 128; 32 with --quick); conv: channels of the first stage "
                           "(default 16; 8 with --quick)")
    demo.add_argument("--depth", type=int, default=None,
                      help="dense: hidden layers (default 3; 2 with --quick); conv: stages halving the resolution "
                           "(default 2; 1 with --quick)")
    demo.add_argument("--loss", choices=("hkr", "hinge", "tau-ce"), default="tau-ce")
    demo.add_argument("--margin", type=float, default=1.0, help="hinge / HKR margin κ in logit units (default 1.0)")
    demo.add_argument("--alpha", type=float, default=10.0, help="HKR hinge weight α (default 10)")
    demo.add_argument("--tau", type=float, default=3.0, help="temperature τ of tau-ce (default 3)")
    demo.add_argument("--epochs", type=int, default=None, help="default 30 on digits, 10 on MNIST, 3 with --quick")
    demo.add_argument("--lr", type=float, default=None,
                      help="Adam learning rate, decayed linearly to 0 (default 1e-3; 1e-2 with --quick)")
    demo.add_argument("--batch-size", type=int, default=128)
    demo.add_argument("--eps", type=float, nargs="+", default=None,
                      help="L2 radii (default 0.25 0.5 1 on digits, 0.5 1 1.58 on MNIST)")
    demo.add_argument("--pgd-steps", type=int, default=None, help="PGD steps (default 20; 5 with --quick)")
    demo.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images only")
    demo.add_argument("--threads", type=int, default=None,
                      help="torch CPU threads (default 1 for digits or --quick, where more threads only add "
                           "synchronisation cost; else torch's default)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default=None, help="directory for results.json and certified_accuracy.png")
    demo.add_argument("--quick", action="store_true", help="a tiny run (seconds), for tests")
    demo.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("width", "depth", "epochs", "pgd_steps", "test_limit", "threads"):
        v = getattr(args, name)
        if v is not None and v < (0 if name in ("epochs", "pgd_steps") else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {v}")
    if args.batch_size < 1 or (args.lr is not None and not args.lr > 0):
        parser.error("--batch-size and --lr must be positive")
    if args.eps and any(not (e > 0 and math.isfinite(e)) for e in args.eps):
        parser.error(f"--eps values must be finite and > 0, got {args.eps}")
    if args.margin < 0 or args.alpha < 0 or not args.tau > 0:
        parser.error("--margin and --alpha must be >= 0 and --tau > 0")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (``liplayers``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        _check_args(parser, args)
        threads = args.threads or (1 if args.quick or args.dataset == "digits" else None)
        if threads:
            torch.set_num_threads(threads)
        try:
            run_demo(args)
        except FileNotFoundError as exc:
            print(f"liplayers demo: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
