"""Fixed-budget comparison of 1-Lipschitz convolution families on MNIST (the protocol of Prach,
Brau, Buttazzo & Lampert, "1-Lipschitz Layers Compared", CVPR 2024, scaled to a CPU).

Every family trains the same architecture with the same recipe for the same budget of **CPU time**
of its own process (one thread; CPU time rather than wall time, so that other jobs on a shared
machine do not decide the ranking), one family after the other, each in a fresh subprocess (so
peak memory is its own). Architecture (28×28 → 10): invertible downsampling to 4×14×14, a 1×1
orthogonal stem to c channels, 3 × [family conv 3×3 → MaxMin], invertible downsampling, a 1×1
orthogonal conv to c channels, 2 × [family conv 3×3 → MaxMin], a Björck dense head. Loss: offset
cross-entropy for ε = 1.58 (Prach et al. 2023: offset 2√2·ε, temperature 1/4); Adam, learning
rate on a cosine over the budget. Reported: epochs done, clean and certified accuracy at
ε = 1.58 on the first N test images, training CPU-seconds per epoch, the peak memory of one
training step (profiler timeline) and the process's peak RSS. ``--families`` may also name
orthogonium's implementations (``orthogonium-aoc``, ``orthogonium-aol``, ``orthogonium-sll``).
Trained on reconstructed MNIST training images (the development copy beside the checkout).

    python benchmarks/family_budget.py [--budget 300] [--families bcop,aol,...] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAMILIES = ["bcop", "aol", "sll", "cpl", "soc", "cayley", "bro", "linear-residual"]
# orthogonium's implementations of the same methods (when installed); certified with liplayers'
# own bounds — a layer liplayers cannot bound (a custom forward) gets no certified accuracy
PEER_FAMILIES = ["orthogonium-aoc", "orthogonium-aol", "orthogonium-sll"]


def build(family: str, c: int = 16):
    import torch.nn as nn
    import liplayers as L

    def conv(ch):
        return {
            "bcop": lambda: L.OrthoConv2d(ch, ch, 3, padding="same"),
            "aol": lambda: L.AOLConv2d(ch, ch, 3, padding=1),
            "sll": lambda: L.SLLConv2d(ch, ch, 3),
            "cpl": lambda: L.CPLConv2d(ch, 3),
            "soc": lambda: L.SOCConv2d(ch, ch, 3),
            "cayley": lambda: L.CayleyConv2d(ch, ch, 3),
            "bro": lambda: L.BROConv2d(ch, ch, 3),
            "linear-residual": lambda: L.LinearResidualConv2d(ch, ch, 3),
            "orthogonium-aoc": lambda: _peer("aoc", ch),
            "orthogonium-aol": lambda: _peer("aol", ch),
            "orthogonium-sll": lambda: _peer("sll", ch),
        }[family]()

    layers = [L.InvertibleDownsampling(2), L.OrthoConv2d(4, c, 1)]
    for _ in range(3):
        layers += [conv(c), L.MaxMin(dim=1)]
    layers += [L.InvertibleDownsampling(2), L.OrthoConv2d(4 * c, c, 1)]
    for _ in range(2):
        layers += [conv(c), L.MaxMin(dim=1)]
    layers += [nn.Flatten(), L.BjorckLinear(c * 49, 10)]
    return L.Sequential(*layers)


def _peer(name: str, ch: int):
    if name == "aoc":
        from orthogonium.layers.conv.AOC import AdaptiveOrthoConv2d

        return AdaptiveOrthoConv2d(ch, ch, 3, padding_mode="zeros")
    if name == "aol":
        from orthogonium.layers.conv.AOL.aol import AOLConv2D

        return AOLConv2D(ch, ch, 3, padding=1)
    from orthogonium.layers.conv.SLL.sll_layer import SDPBasedLipschitzResBlock

    return SDPBasedLipschitzResBlock(ch, inner_dim_factor=1, kernel_size=3)


def _step_peak_mib(model, x) -> float:
    """Peak memory of one forward + backward (the profiler's memory timeline; benchmarks/memory.py)."""
    sys.path.insert(0, str(HERE))
    from memory import peak_and_saved

    model.train()
    try:
        return peak_and_saved(model, x)[0]
    except AssertionError:  # the profiler's data-flow graph fails on some modules (orthogonium's AOC)
        return float("nan")


def run_one(args) -> dict:
    import torch
    from liplayers.certify import certified_accuracy
    from liplayers.data import load_dataset
    from liplayers.losses import OffsetCrossEntropyLoss

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    train, test = load_dataset("mnist", args.data_dir)
    xtr, ytr = train.tensors
    xte, yte = test.tensors
    model = build(args.family, args.channels)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = OffsetCrossEntropyLoss.for_radius(1.58)
    steps_per_epoch = math.ceil(len(xtr) / args.batch_size)
    cpu0 = time.process_time()
    step = 0
    while True:
        used = time.process_time() - cpu0
        if used >= args.budget:
            break
        for g in opt.param_groups:
            g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * min(used / args.budget, 1.0)))
        if step % steps_per_epoch == 0:
            perm = torch.randperm(len(xtr))
        i = step % steps_per_epoch
        idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
        model.train()
        loss = loss_fn(model(xtr[idx]), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    train_cpu = time.process_time() - cpu0
    peak = _step_peak_mib(model, xtr[:args.batch_size])
    model.eval()
    n = args.test_limit
    out = {"family": args.family, "steps": step, "epochs": step / steps_per_epoch, "train_cpu_s": train_cpu,
           "cpu_s_per_epoch": train_cpu / max(step / steps_per_epoch, 1e-9), "step_peak_mib": peak,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        res = certified_accuracy(model, (xte[:n], yte[:n]), eps=(0.5, 1.0, 1.58))
    except Exception as e:  # no proved bound (deny by default): clean accuracy only
        with torch.no_grad():
            out["clean"] = float((model(xte[:n]).argmax(1) == yte[:n]).float().mean())
        out.update(certified=None, refused=f"{type(e).__name__}: {str(e)[:160]}", n_test=n)
        return out
    out.update(clean=res.clean_accuracy, certified={str(e): a for e, a in zip(res.eps, res.certified_accuracy)},
               lipschitz=res.lipschitz, n_test=res.n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=300.0, help="training CPU-seconds per family")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--out", default="results/family_budget")
    ap.add_argument("--family", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.family:  # child process
        print(json.dumps(run_one(args)), flush=True)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for fam in args.families.split(","):
        passed = {k: v for k, v in vars(args).items() if k not in ("families", "family")}
        cmd = [sys.executable, __file__, "--family", fam] + [x for k, v in passed.items()
                                                              for x in (f"--{k.replace('_', '-')}", str(v))]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{fam}: failed\n{proc.stderr[-2000:]}", flush=True)
            rows.append({"family": fam, "error": proc.stderr[-500:]})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["wall_s"] = time.time() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "family_budget.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    lines = [f"| family | epochs in {args.budget:.0f} CPU-s | CPU-s / epoch | clean | cert. 0.5 | cert. 1.0 | cert. 1.58 | "
             "train-step peak MiB | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['family']} | failed | | | | | | | |")
            continue
        c = r["certified"]
        cert = ("no proved bound | — | —" if c is None else
                f"{100 * c['0.5']:.1f} | {100 * c['1.0']:.1f} | {100 * c['1.58']:.1f}")
        lines.append(f"| {r['family']} | {r['epochs']:.2f} | {r['cpu_s_per_epoch']:.0f} | {100 * r['clean']:.1f} | "
                     f"{cert} | {r.get('step_peak_mib', float('nan')):.0f} | {r['peak_rss_mb']:.0f} |")
    md = "\n".join(lines)
    print(md)
    (out / "family_budget.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
