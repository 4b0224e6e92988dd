"""Projection onto the L1 ball (row by row) and the L∞-Lipschitz dense layer.

Part 1 — ``project_l1_ball`` on an (n, n) float32 weight with N(0, 1) entries (every row far
outside the unit L1 ball, the case of a freshly updated free parameter): ``newton``
(vectorized Michelot/Newton iterations from Condat's lower bound, with filtering), ``sort``
(O(n log n) reference) and ``condat`` (Condat 2016 literally, a Python loop per row; only for
the small size), forward only and forward + backward. Also the number of Newton steps.

Part 2 — a train step (forward + backward + Adam, batch 256) and an eval forward of
``LInfLinear(n, n)`` vs ``nn.Linear`` and ``BjorckLinear``, after ``--warmup`` Adam steps.

Timings are the minimum over ``--rounds`` interleaved rounds (steadier on a shared machine).

Run:  python benchmarks/l1_projection.py [--sizes 256 1024] [--rounds 7] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Callable, Dict

import torch
from torch import nn

import liplayers as L
from liplayers.functional.l1_projection import project_l1_ball


def timeit(fn: Callable[[], object], repeat: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def newton_steps(a: torch.Tensor) -> int:
    """Count Newton steps to convergence (instrumented copy of the loop's stopping rule)."""
    n = a.shape[-1]
    tau = torch.maximum((a.sum(-1) - 1) / n, a.amax(-1) - 1)
    mask = a > tau[:, None]
    for k in range(1, 200):
        cnt = mask.sum(-1).clamp_min(1).to(a.dtype)
        new = torch.maximum((torch.where(mask, a, torch.zeros(())).sum(-1) - 1) / cnt, tau)
        new_mask = a > new[:, None]
        tau = new
        if torch.equal(new_mask, mask):
            return k
        mask = new_mask
    return -1


def part1(n: int, rounds: int) -> list:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, n, generator=g)
    methods = ["newton", "sort"] + (["condat"] if n <= 256 else [])
    best: Dict[str, list] = {m: [float("inf"), float("inf")] for m in methods}
    rep = max(1, 2000 // n)
    for _ in range(rounds):
        for m in methods:
            r = 1 if m == "condat" else rep
            best[m][0] = min(best[m][0], timeit(lambda: project_l1_ball(w, 1.0, method=m), r))
            if m != "condat":
                wg = w.clone().requires_grad_(True)
                v = torch.randn_like(w)

                def fb():
                    (project_l1_ball(wg, 1.0, method=m) * v).sum().backward()

                best[m][1] = min(best[m][1], timeit(fb, r))
    steps = newton_steps(w.abs())
    ref = project_l1_ball(w.double(), method="sort")
    rows = []
    for m in methods:
        err = float((project_l1_ball(w, method=m).double() - ref).abs().max())
        rows.append({"n": n, "method": m, "forward_ms": 1e3 * best[m][0],
                     "fwd+bwd_ms": 1e3 * best[m][1] if m != "condat" else None,
                     "newton_steps": steps if m == "newton" else None, "max_err_vs_sort_f64": err})
    return rows


def part2(n: int, rounds: int, warmup: int) -> list:
    impls: Dict[str, Callable[[], nn.Module]] = {
        "nn.Linear": lambda: nn.Linear(n, n),
        "LInfLinear (newton)": lambda: L.LInfLinear(n, n),
        "LInfLinear (sort)": lambda: L.LInfLinear(n, n, method="sort"),
        "BjorckLinear": lambda: L.BjorckLinear(n, n),
    }
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, n, generator=g)
    target = torch.randn(256, n, generator=g)
    state = {}
    for name, make in impls.items():
        torch.manual_seed(0)
        layer = make()
        opt = torch.optim.Adam(layer.parameters(), lr=1e-3)
        for _ in range(warmup):
            loss = (layer(x) - target).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        state[name] = (layer, opt)
    best = {k: [float("inf"), float("inf")] for k in impls}
    for _ in range(rounds):
        for name, (layer, opt) in state.items():
            layer.train()

            def step():
                loss = (layer(x) - target).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

            best[name][0] = min(best[name][0], timeit(step, 5))
            layer.eval()
            with torch.no_grad():
                best[name][1] = min(best[name][1], timeit(lambda: layer(x), 20))
    base = best["nn.Linear"]
    rows = []
    for name, (layer, _) in state.items():
        layer.eval()
        w = layer.weight.detach().double()
        rows.append({"n": n, "layer": name, "train_step_ms": 1e3 * best[name][0],
                     "x nn.Linear": best[name][0] / base[0], "eval_fwd_ms": 1e3 * best[name][1],
                     "eval x nn.Linear": best[name][1] / base[1],
                     "max row L1 (inf->inf)": float(w.abs().sum(-1).max()),
                     "spectral norm": float(torch.linalg.matrix_norm(w, 2))})
    return rows


def table(rows: list) -> str:
    cols = list(rows[0].keys())

    def fmt(v):
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    r1 = [row for n in args.sizes for row in part1(n, args.rounds)]
    print("### project_l1_ball, (n, n) float32 N(0,1) weight, radius 1\n")
    print(table(r1) + "\n")
    r2 = [row for n in args.sizes for row in part2(n, args.rounds, args.warmup)]
    print("### dense layers: train step (batch 256, fwd+bwd+Adam) and eval forward\n")
    print(table(r2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"projection": r1, "layers": r2, "threads": args.threads}, fh, indent=2)


if __name__ == "__main__":
    main()
