"""The command line: ``liplayers demo`` (same as ``python -m liplayers demo``).

Parses and checks the options (one-line errors, exit status 2), reads a resumed run's options
from its checkpoint, and runs the demo of :mod:`liplayers.demo` (whose description is the
``demo`` command's help). Exit status: 0 success, 2 bad option or missing data / optional
dependency, 130 interrupted (checkpoint written).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import demo as _demo
from ._train_support import _have
# the demo itself lives in liplayers.demo; its public names stay importable from here
from .demo import (CHECKPOINT_CONFIG, DEFAULT_EPS, IMAGE_SIZE, KEPT_OPTIONS, RUN_OPTIONS, DemoError,  # noqa: F401
                   DemoInterrupted, conv_gnp, dense_gnp, dense_relu, format_table, make_loss, pgd_accuracy,
                   plot_demo, run_demo)

__all__ = ["main", "build_parser", "run_demo", "dense_gnp", "dense_relu", "make_loss", "format_table",
           "plot_demo", "DemoError", "DemoInterrupted"]


# --------------------------------------------------------------------------- command line
class _Parser(argparse.ArgumentParser):
    """``error`` prints one line (no usage block) and exits with status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="liplayers", description="liplayers command line: certified-robust 1-Lipschitz networks")
    parser.add_argument("--version", action="version", version=f"liplayers {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="train a certified-robust GNP network and compare it with an unconstrained one",
                          description=_demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = demo.add_argument
    a("--dataset", choices=("digits", "mnist", "fashion-mnist"), default="digits",
      help="digits (in scikit-learn, no download), mnist or fashion-mnist (IDX files in --data-dir) (default: digits)")
    a("--data-dir", default=None, metavar="DIR",
      help="directory with the MNIST / Fashion-MNIST IDX .gz files (default: $LIPLAYERS_DATA)")
    a("--arch", choices=("dense", "conv"), default="dense",
      help="dense: BjorckLinear + MaxMin; conv: orthogonal convolutions + MaxMin (default: dense)")
    a("--width", type=int, default=None, metavar="N",
      help="even (MaxMin pairs units); dense: hidden width; conv: channels of the first stage "
           "(default: dense 128, 32 with --quick; conv 16, 8 with --quick)")
    a("--depth", type=int, default=None, metavar="N",
      help="dense: hidden layers; conv: stages halving the resolution (default: dense 3, 2 with --quick; conv 2, "
           "1 with --quick)")
    a("--loss", choices=("hkr", "hinge", "tau-ce"), default="tau-ce", help="training loss of the GNP network "
      "(default: tau-ce)")
    a("--margin", type=float, default=1.0, help="hinge / HKR margin κ in logit units (default: 1.0)")
    a("--alpha", type=float, default=10.0, help="HKR hinge weight α (default: 10)")
    a("--tau", type=float, default=3.0, help="temperature τ of tau-ce (default: 3)")
    a("--epochs", type=int, default=None, metavar="N", help="default: 30 on digits, 10 on MNIST, 3 with --quick")
    a("--lr", type=float, default=None,
      help="Adam learning rate, decayed linearly to 0 (default: 1e-3; 1e-2 with --quick)")
    a("--batch-size", type=int, default=128, metavar="N", help="default: 128")
    a("--eps", type=float, nargs="+", default=None, metavar="EPS",
      help="L2 radii (default: 0.25 0.5 1 on digits, 0.5 1 1.58 on MNIST)")
    a("--pgd-steps", type=int, default=None, metavar="N", help="PGD steps (default: 20; 5 with --quick)")
    a("--test-limit", type=int, default=None, metavar="N", help="evaluate on the first N test images only "
      "(default: all)")
    a("--threads", type=int, default=None, metavar="N",
      help="torch CPU threads (default: 1 for digits or --quick, where more threads only add synchronisation "
           "cost; else torch's default)")
    a("--seed", type=int, default=0, help="random seed of initialization, data order and attacks (default: 0)")
    a("--out", default=None, metavar="DIR", help="directory for results.json, certified_accuracy.png, "
      "training_*.csv and the checkpoint (default: none, print only)")
    a("--checkpoint", default=None, metavar="DIR",
      help="checkpoint directory, written every epoch (default: OUT/checkpoint with --out; otherwise a temporary "
           "one, kept as ./liplayers-demo-checkpoint only if interrupted)")
    a("--resume", default=None, metavar="DIR",
      help="continue an interrupted run from its checkpoint directory, with its options (default: start afresh)")
    a("--quick", action="store_true", help="a tiny run of a few seconds, for tests (default: off)")
    a("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
      help="training progress on stderr: a tqdm bar, one line per epoch, or nothing (default: auto = a bar when "
           "stderr is a terminal and tqdm is installed, else lines)")
    a("--no-progress", action="store_true", help="same as --progress none (default: off)")
    a("--no-plot", action="store_true", help="do not draw certified_accuracy.png (default: off; the plot needs "
      "matplotlib)")
    a("--tensorboard", default=None, metavar="DIR",
      help="write TensorBoard scalars there (needs the tensorboard package) (default: none)")
    return parser


def _check_dir(parser, flag: str, value: Optional[str]) -> None:
    """``value`` is (or can be created as) a writable directory, else a one-line error."""
    if value is None:
        return
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        parser.error(f"{flag} {value}: exists and is not a directory")
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                parser.error(f"{flag} {value}: {p} is a file, not a directory")
            if not os.access(p, os.W_OK | os.X_OK):
                parser.error(f"{flag} {value}: {p} is not writable")
            return


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every option, before anything runs: ``parser.error`` (one line, exit status 2) on the first bad one."""
    for name, low in (("width", 2), ("depth", 1), ("epochs", 1), ("pgd_steps", 1), ("test_limit", 1),
                      ("threads", 1), ("batch_size", 1), ("seed", 0)):
        v = getattr(args, name)
        if v is not None and v < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {v}")
    if args.width is not None and args.width % 2:
        parser.error(f"--width must be even (MaxMin sorts pairs of units), got {args.width}")
    if args.arch == "conv" and args.depth is not None and IMAGE_SIZE[args.dataset] % (2 ** args.depth):
        parser.error(f"--depth {args.depth}: --arch conv halves the {IMAGE_SIZE[args.dataset]}-pixel images of "
                     f"{args.dataset} {args.depth} times, which needs a size divisible by {2 ** args.depth}")
    for name, value, strict in (("lr", args.lr, True), ("tau", args.tau, True), ("margin", args.margin, False),
                                ("alpha", args.alpha, False)):
        if value is not None and not (math.isfinite(value) and (value > 0 if strict else value >= 0)):
            parser.error(f"--{name} must be finite and {'> 0' if strict else '>= 0'}, got {value}")
    if args.eps and any(not (math.isfinite(e) and e > 0) for e in args.eps):
        parser.error(f"--eps values must be finite and > 0, got {' '.join(map(str, args.eps))}")
    for flag in ("out", "checkpoint", "tensorboard"):
        _check_dir(parser, f"--{flag}", getattr(args, flag))
    if args.dataset != "digits" and args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        parser.error(f"--data-dir {args.data_dir}: no such directory")


def _check_environment(args: argparse.Namespace) -> None:
    """Optional dependencies the options need, before anything runs (:class:`DemoError`)."""
    if args.dataset == "digits" and not _have("sklearn"):
        raise DemoError("the digits dataset needs scikit-learn: pip install scikit-learn "
                        "(or use --dataset mnist --data-dir DIR)")
    if args.out and not args.no_plot and not _have("matplotlib"):
        raise DemoError("the plot needs matplotlib: pip install matplotlib (or pass --no-plot)")
    if args.progress == "bar" and not args.no_progress and not _have("tqdm"):
        raise DemoError("--progress bar needs tqdm: pip install tqdm (or use --progress lines)")
    if args.tensorboard and not _have("tensorboard"):
        raise DemoError("--tensorboard needs the tensorboard package: pip install tensorboard")


def _apply_resume(parser, args: argparse.Namespace) -> None:
    """Take the run's options from the checkpoint in ``--resume DIR``; refuse options that contradict it."""
    path = Path(args.resume).expanduser()
    try:
        config = json.loads((path / CHECKPOINT_CONFIG).read_text())["args"]
    except (OSError, ValueError, KeyError, TypeError):
        parser.error(f"--resume {args.resume}: not a liplayers demo checkpoint directory (no readable "
                     f"{CHECKPOINT_CONFIG})")
    defaults = vars(build_parser().parse_args(["demo"]))
    for key in RUN_OPTIONS:
        given, stored = getattr(args, key), config.get(key, defaults[key])
        if given != defaults[key] and given != stored:
            parser.error(f"--resume: --{key.replace('_', '-')} {given} differs from the interrupted run's "
                         f"{stored}; leave it out")
        setattr(args, key, stored)
    for key in KEPT_OPTIONS:
        if getattr(args, key) == defaults[key]:
            setattr(args, key, config.get(key, defaults[key]))


def _err(message: str) -> None:
    print(f"liplayers demo: error: {message}", file=sys.stderr)


def _run(argv: Optional[Sequence[str]], callbacks: Sequence[object]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "demo":  # pragma: no cover - the only command
        return 0
    demo_parser = _Parser(prog="liplayers demo")
    if args.resume:
        _apply_resume(demo_parser, args)
    _check_args(demo_parser, args)
    try:
        _check_environment(args)
    except DemoError as exc:
        _err(str(exc))
        return 2
    threads = args.threads or (1 if args.quick or args.dataset == "digits" else None)
    if threads:
        torch.set_num_threads(threads)
    try:
        run_demo(args, callbacks=callbacks)
    except (FileNotFoundError, DemoError) as exc:
        _err(" ".join(str(exc).split()))
        return 2
    except DemoInterrupted as exc:
        print(f"interrupted: checkpoint written to {exc.checkpoint}, continue with "
              f"liplayers demo --resume {exc.checkpoint}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before training started: nothing to keep
        print("interrupted before training started: nothing written", file=sys.stderr)
        return 130
    return 0


def main(argv: Optional[Sequence[str]] = None, *, _callbacks: Sequence[object] = ()) -> int:
    """Console entry point (``liplayers``, ``python -m liplayers``).

    Exit status: 0 success; 2 bad option (argparse-style one-line error; raised as
    ``SystemExit(2)`` by the parser), missing data or missing optional dependency (one line,
    returned); 130 interrupted (checkpoint written). With an explicit ``argv`` the status is
    returned; with ``argv=None`` (the command line) it is raised as ``SystemExit``.
    """
    code = _run(argv, _callbacks)
    if argv is None:
        raise SystemExit(code)
    return code


if __name__ == "__main__":
    main()
