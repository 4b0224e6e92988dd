"""Soundness sweep at scale: the registry sweep and the attack sweep of the test suite, with many draws.

1. Registry sweep: every type of the L2 and ∞ bound registries (and the liplayers modules whose bound
   depends on arguments), arguments drawn from their whole range, small inputs; each draw is refused
   or its bounds are ≥ the constants measured in float64 (tests/lipschitz/sweep_check.py).
2. Attack sweep: models from every layer family, trained briefly, in float32 / float64 / bfloat16;
   every certified point is attacked inside its radius by our PGD (and torchattacks' L2 attacks
   when installed).

Prints the counts and writes OUT/soundness_sweep.json.

    python benchmarks/soundness_sweep.py [--examples 100] [--points 64] [--steps 50] [--restarts 3] [--out DIR]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings, strategies as st

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests" / "lipschitz"), str(HERE.parent / "tests" / "certify")]

from attack_sweep import FAMILIES, sweep_one  # noqa: E402
from sweep_check import check  # noqa: E402
from sweep_strategies import ours, strategy_for  # noqa: E402

import liplayers as L  # noqa: E402
from liplayers.lipschitz import L2_BOUNDS, LINF_BOUNDS  # noqa: E402
from liplayers.lipschitz import torch_activations as ta  # noqa: E402


def registry_sweep(examples: int) -> dict:
    types = sorted({t for t in set(L2_BOUNDS.bounds) | set(LINF_BOUNDS.bounds) if t.__module__.startswith("torch.")},
                   key=lambda t: t.__name__)
    mine = [L.GroupSort, L.MaxMin, L.FullSort, L.Residual, L.L2NormPool2d, L.ScaledAvgPool2d, L.GlobalL2Pool2d,
            L.HouseholderActivation]
    elementwise = set(ta._CONSTANTS) | {torch.nn.ELU, torch.nn.CELU, torch.nn.LeakyReLU, torch.nn.RReLU,
                                        torch.nn.Softshrink}
    counts = collections.defaultdict(collections.Counter)
    cfg = settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck))
    for cls in types + mine:
        strat = strategy_for(cls) if cls in types else ours(cls)

        @cfg
        @given(strat)
        def run(drawn):
            m, shape = drawn
            counts[cls.__name__][check(m, shape, torch.Generator().manual_seed(0),
                                       elementwise=cls in elementwise)] += 1

        run()
    return {k: dict(v) for k, v in counts.items()}


def attack_sweep(points: int, steps: int, restarts: int, seeds: int, torchattacks=None) -> dict:
    out = {}
    for name in sorted(FAMILIES):
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            tot = viol = 0
            for seed in range(seeds):
                try:
                    p, v = sweep_one(name, dtype, n_points=points, steps=steps, restarts=restarts, seed=seed,
                                     torchattacks=torchattacks)
                except (RuntimeError, NotImplementedError, TypeError) as exc:
                    out[f"{name}/{dtype}"] = {"skipped": str(exc)[:120]}
                    break
                tot, viol = tot + p, viol + v
            else:
                out[f"{name}/{dtype}"] = {"attacked": tot, "violations": viol}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=100, help="hypothesis draws per registered type")
    ap.add_argument("--points", type=int, default=64, help="points certified and attacked per model")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2, help="models (seeds) per family and dtype")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/soundness_sweep")
    ap.add_argument("--skip-registry", action="store_true")
    ap.add_argument("--torchattacks", action="store_true",
                    help="also run torchattacks' L2 attacks (installed with pip install --no-deps torchattacks)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    reg = {} if args.skip_registry else registry_sweep(args.examples)
    t1 = time.time()
    from liplayers.certify.empirical import DEFAULT_TORCHATTACKS

    att = attack_sweep(args.points, args.steps, args.restarts, args.seeds,
                       DEFAULT_TORCHATTACKS if args.torchattacks else None)
    t2 = time.time()
    total = sum(sum(v.values()) for v in reg.values())
    checked = sum(v.get("checked", 0) for v in reg.values())
    attacked = sum(v.get("attacked", 0) for v in att.values())
    violations = sum(v.get("violations", 0) for v in att.values())
    skipped = [k for k, v in att.items() if "skipped" in v]
    print(f"registry sweep: {total} configurations over {len(reg)} types: {checked} bounded and checked "
          f"(0 below the measured constant), {total - checked} refused  [{t1 - t0:.0f} s]")
    print(f"attack sweep: {attacked} certified points attacked over {len(att) - len(skipped)} (family, dtype) "
          f"models x {args.seeds} seeds: {violations} violations  [{t2 - t1:.0f} s]; skipped: {skipped}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soundness_sweep.json").write_text(json.dumps(
        {"args": vars(args), "registry": reg, "attack": att, "configurations": total, "checked": checked,
         "attacked_points": attacked, "violations": violations}, indent=2))


if __name__ == "__main__":
    main()
