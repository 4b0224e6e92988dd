"""SOC, Cayley, BRO, Cholesky layers side by side: train step and eval forward, interleaved.

Setting: convolutions 64→64 channels, 3×3, 32×32 inputs, batch 64; dense layers 1024→1024,
batch 256; float32, one thread by default. Every implementation is first trained for
``--warmup`` Adam steps (lr 1e-3) on a random regression task, then timed in interleaved
rounds: in each round every implementation runs one train step (forward + backward + Adam
step) and one eval forward (no grad; the first eval forward after a step rebuilds eval caches
and is not timed); the table reports the minimum over rounds and the ratio to the plain torch
layer (``nn.Conv2d`` with zero padding, ``nn.Linear``).

Peers are those of ``orthogonium`` when it is installed: FastSOC (its skew kernel
exponentiated into one 7×7 kernel, 3 terms), its copy of the original Cayley layer, and
OrthoLinear with CHOLESKY_ORTHO_PARAMS. For liplayers layers the guaranteed bound at 32×32 is
printed; for the dense layers the measured singular-value range of the eval weight.

Run:  python benchmarks/new_layers_orthogonal.py [--warmup 3] [--rounds 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
import types
import warnings
from typing import Callable, Dict

import torch
from torch import nn

from liplayers.nn.bro import BROConv2d, BROLinear
from liplayers.nn.cayley import CayleyConv2d
from liplayers.nn.cholesky import CholeskyLinear
from liplayers.nn.soc import SOCConv2d

warnings.filterwarnings("ignore")

C, K, N, B = 64, 3, 32, 64
D, BD = 1024, 256


def conv_impls() -> Dict[str, Callable[[], nn.Module]]:
    impls: Dict[str, Callable[[], nn.Module]] = {
        "nn.Conv2d": lambda: nn.Conv2d(C, C, K, padding=1),
        "nn.Conv2d (circular)": lambda: nn.Conv2d(C, C, K, padding=1, padding_mode="circular"),
        "liplayers SOCConv2d": lambda: SOCConv2d(C, C, K),
        "liplayers SOCConv2d (circular)": lambda: SOCConv2d(C, C, K, padding_mode="circular"),
        "liplayers CayleyConv2d (circular)": lambda: CayleyConv2d(C, C, K),
        "liplayers BROConv2d (circular)": lambda: BROConv2d(C, C, K),
        "liplayers BROConv2d (zeros)": lambda: BROConv2d(C, C, K, padding_mode="zeros"),
    }
    try:
        from orthogonium.layers.conv.adaptiveSOC.fast_skew_ortho_conv import FastSOC

        # the 3×3 skew kernel is exponentiated into a 7×7 kernel: pass that kernel's padding
        impls["orthogonium FastSOC"] = lambda: FastSOC(C, C, K, padding=3, padding_mode="zeros")
        impls["orthogonium FastSOC (circular)"] = lambda: FastSOC(C, C, K, padding=3, padding_mode="circular")
    except ImportError:
        pass
    try:
        if "einops" not in sys.modules:  # only its stride-2 path uses einops
            try:
                import einops  # noqa: F401
            except ImportError:
                sys.modules["einops"] = types.ModuleType("einops")
        from orthogonium.legacy.cayley_ortho_conv import Cayley

        impls["orthogonium legacy Cayley (circular)"] = lambda: Cayley(C, C, K)
    except ImportError:
        pass
    return impls


def dense_impls() -> Dict[str, Callable[[], nn.Module]]:
    impls: Dict[str, Callable[[], nn.Module]] = {
        "nn.Linear": lambda: nn.Linear(D, D),
        "liplayers CholeskyLinear": lambda: CholeskyLinear(D, D),
        "liplayers BROLinear": lambda: BROLinear(D, D),
    }
    try:
        from orthogonium.layers.linear.ortho_linear import OrthoLinear
        from orthogonium.reparametrizers import CHOLESKY_ORTHO_PARAMS

        impls["orthogonium OrthoLinear(CHOLESKY)"] = lambda: OrthoLinear(D, D, ortho_params=CHOLESKY_ORTHO_PARAMS)
    except ImportError:
        pass
    return impls


def train_step(m: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, t: torch.Tensor) -> None:
    m.train()
    loss = (m(x) - t).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def run(impls: Dict[str, Callable[[], nn.Module]], x: torch.Tensor, t: torch.Tensor, warmup: int, rounds: int):
    mods, opts = {}, {}
    for name, make in impls.items():
        torch.manual_seed(0)
        m = make()
        mods[name], opts[name] = m, torch.optim.Adam(m.parameters(), lr=1e-3)
        for _ in range(warmup):
            train_step(m, opts[name], x, t)
    times = {name: {"train": [], "eval": []} for name in mods}
    for _ in range(rounds):
        for name, m in mods.items():
            t0 = time.perf_counter()
            train_step(m, opts[name], x, t)
            times[name]["train"].append(time.perf_counter() - t0)
            m.eval()
            with torch.no_grad():
                m(x)  # rebuilds eval caches after the step
                t1 = time.perf_counter()
                m(x)
                times[name]["eval"].append(time.perf_counter() - t1)
    return mods, {n: {k: min(v) for k, v in d.items()} for n, d in times.items()}


def report(title: str, mods, best, ref: str, extra: Callable[[str, nn.Module], str]) -> None:
    print(f"\n{title}")
    print(f"{'implementation':40s} {'train ms':>9s} {'x ref':>6s} {'eval ms':>9s} {'x ref':>6s}  notes")
    for name, b in best.items():
        r = best[ref]
        print(f"{name:40s} {b['train'] * 1e3:9.1f} {b['train'] / r['train']:6.2f} {b['eval'] * 1e3:9.1f} "
              f"{b['eval'] / r['eval']:6.2f}  {extra(name, mods[name])}")


def conv_notes(name: str, m: nn.Module) -> str:
    if isinstance(m, SOCConv2d):
        return f"eval terms {m.eval_terms}, bound {m.lipschitz_bound((C, N, N)):.9f}"
    if isinstance(m, (CayleyConv2d, BROConv2d)):
        return f"bound {m.lipschitz_bound((C, N, N)):.9f}"
    return ""


def dense_notes(name: str, m: nn.Module) -> str:
    m.eval()
    with torch.no_grad():
        sv = torch.linalg.svdvals(m.weight.detach().to(torch.float64))
    note = f"sigma in [{float(sv.min()):.7f}, {float(sv.max()):.7f}]"
    if hasattr(m, "lipschitz_bound"):
        note += f", bound {m.lipschitz_bound():.9f}"
    return note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=["conv", "dense"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), warmup {args.warmup}, "
          f"min over {args.rounds} interleaved rounds")
    if args.only in (None, "conv"):
        x, t = torch.randn(B, C, N, N), 0.1 * torch.randn(B, C, N, N)
        mods, best = run(conv_impls(), x, t, args.warmup, args.rounds)
        report(f"convolutions {C}->{C}, {K}x{K}, {N}x{N}, batch {B}", mods, best, "nn.Conv2d", conv_notes)
    if args.only in (None, "dense"):
        x, t = torch.randn(BD, D), 0.1 * torch.randn(BD, D)
        mods, best = run(dense_impls(), x, t, args.warmup, args.rounds)
        report(f"dense {D}->{D}, batch {BD}", mods, best, "nn.Linear", dense_notes)


if __name__ == "__main__":
    main()
