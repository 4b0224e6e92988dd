"""AOL, SLL and CPL convolutions side by side: train step and eval forward, interleaved.

Setting: 64 channels, 3×3 kernels, 32×32 inputs, batch 64, float32, one thread by default.
Every implementation is first trained for ``--warmup`` Adam steps (lr 1e-3) on a random
regression task, then timed in interleaved rounds: in each round every implementation runs
one train step (forward + backward + Adam step) and one eval forward (no grad; the first
eval forward after a step rebuilds eval caches and is not timed); the table reports the
minimum over rounds and the ratio to ``nn.Conv2d`` (zero padding).

Peers, when ``orthogonium`` is importable: ``AOLConv2D`` (its AOL rescaling is recomputed at
every forward, eval included) and ``SDPBasedLipschitzResBlock`` (inner factor 1: an
AOL-normalized kernel K in x − 2Kᵀ ReLU(Kx + b)). For liplayers layers the guaranteed bound at
64×32×32 is printed. ``CPLConv2d`` computes the exact FFT norm of its convolution at every
training step (float64 eigenvalues at 34·18 frequencies): it is included to show that cost.

Run:  python benchmarks/new_layers_aol_sll.py [--warmup 3] [--rounds 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import time
import warnings
from typing import Callable, Dict

import torch
from torch import nn

from liplayers.nn.aol import AOLConv2d
from liplayers.nn.cpl import CPLConv2d
from liplayers.nn.sll import SLLConv2d

warnings.filterwarnings("ignore")

C, K, N, B = 64, 3, 32, 64


def implementations(with_cpl: bool) -> Dict[str, Callable[[], nn.Module]]:
    impls: Dict[str, Callable[[], nn.Module]] = {
        "nn.Conv2d": lambda: nn.Conv2d(C, C, K, padding=1),
        "liplayers AOLConv2d": lambda: AOLConv2d(C, C, K, padding=1),
        "liplayers SLLConv2d": lambda: SLLConv2d(C, kernel_size=K),
    }
    if with_cpl:
        impls["liplayers CPLConv2d"] = lambda: CPLConv2d(C, K)
    try:
        from orthogonium.layers.conv.AOL.aol import AOLConv2D

        impls["orthogonium AOLConv2D"] = lambda: AOLConv2D(C, C, K, padding=1)
    except ImportError:
        pass
    try:
        from orthogonium.layers.conv.SLL.sll_layer import SDPBasedLipschitzResBlock

        impls["orthogonium SDPBasedLipschitzResBlock"] = lambda: SDPBasedLipschitzResBlock(C, 1, kernel_size=K)
    except ImportError:
        pass
    return impls


def train_step(m: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, t: torch.Tensor) -> None:
    m.train()
    loss = (m(x) - t).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def eval_forward(m: nn.Module, x: torch.Tensor) -> None:
    m.eval()
    with torch.no_grad():
        m(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    ap.add_argument("--no-cpl", action="store_true", help="leave out CPLConv2d (slow training step)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    impls = implementations(not args.no_cpl)
    x = torch.randn(B, C, N, N)
    t = torch.randn(B, C, N, N) * 0.1
    mods, opts = {}, {}
    for name, make in impls.items():
        torch.manual_seed(0)
        mods[name] = make()
        opts[name] = torch.optim.Adam(mods[name].parameters(), lr=1e-3)
        for _ in range(args.warmup):
            train_step(mods[name], opts[name], x, t)
    times = {name: {"train": [], "eval": []} for name in mods}
    for _ in range(args.rounds):
        for name, m in mods.items():
            t0 = time.perf_counter()
            train_step(m, opts[name], x, t)
            t1 = time.perf_counter()
            eval_forward(m, x)  # rebuilds eval caches after the update: not timed
            t2 = time.perf_counter()
            eval_forward(m, x)
            t3 = time.perf_counter()
            times[name]["train"].append(t1 - t0)
            times[name]["eval"].append(t3 - t2)
    base_train, base_eval = min(times["nn.Conv2d"]["train"]), min(times["nn.Conv2d"]["eval"])
    print(f"\n{C}→{C} channels, {K}×{K}, {N}×{N}, batch {B}, float32, {torch.get_num_threads()} thread(s), "
          f"{args.warmup} warm-up Adam steps, min of {args.rounds} interleaved rounds\n")
    print("| layer | train step ms | ÷ nn.Conv2d | eval fwd ms | ÷ nn.Conv2d | liplayers bound (64×32×32) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, m in mods.items():
        tr, ev = min(times[name]["train"]), min(times[name]["eval"])
        bound = m.lipschitz_bound((C, N, N)) if hasattr(m, "lipschitz_bound") else None
        b = "n/a" if bound is None else f"{bound:.9f}"
        print(f"| {name} | {1e3 * tr:.1f} | {tr / base_train:.2f} | {1e3 * ev:.1f} | {ev / base_eval:.2f} | {b} |")


if __name__ == "__main__":
    main()
