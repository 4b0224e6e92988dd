"""Convolutional 1-Lipschitz layers side by side: train step, eval forward, peak memory, σ range.

Setting: 64→64 channels, 3×3, 32×32 inputs, batch 64, float32 (SLL and CPL with an inner
dimension equal to the channels). Every implementation is first trained for ``--warmup`` Adam
steps (lr 1e-3) on a random regression task (so the measurements are not those of the
initialization), then timed in interleaved rounds: in each round every implementation runs one
train step (forward + backward + Adam step) and one eval forward (no grad; the first eval
forward after a step rebuilds eval caches and is not timed); the table reports the minimum over
rounds (steadier than a median on a shared machine) and the ratio to ``nn.Conv2d`` (zero padding).

* peak MiB: memory held by tensors allocated during one forward + backward (the profiler's
  memory timeline, :func:`memory.peak_and_saved`), parameters and input excluded;
* σ_max / σ_min: singular values of the Jacobian of the layer's real eval-mode map at a random
  point of a small input (``--sv-size``, 64×6×6 by default: all 2,304 singular values, float64
  SVD; the layer is run in float64 where it can be, else in float32). For the linear layers it
  is their operator at that size; σ_max > 1 means the layer is not 1-Lipschitz as it runs;
* bound: liplayers' guaranteed bound of the layer as it runs (``lipschitz_bound_of`` with the
  32×32 input shape), "n/a" when liplayers cannot bound it (a module overriding
  ``Conv2d.forward``).

Peers, when installed: torch, deel-torchlip, orthogonium (AOC, RKO, ``AOLConv2D``,
``SDPBasedLipschitzResBlock`` with inner factor 1, ``FastSOC`` (its skew kernel exponentiated
into one 7×7 kernel with 3 terms; ``SOCConv2d(train_terms=3)`` is the same series), its copy of
the original Cayley layer).

Run:  python benchmarks/conv_layers.py [--warmup 3] [--rounds 3] [--threads 1] [--only SOC FastSOC]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import types
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

import liplayers as L
from liplayers.lipschitz import UnboundedModuleError, lipschitz_bound_of
from memory import peak_and_saved

warnings.filterwarnings("ignore")

C, K, N, B = 64, 3, 32, 64


def implementations() -> Dict[str, Tuple[Callable[[], nn.Module], str]]:
    """name → (factory, padding mode)."""
    P = nn.utils.parametrizations
    impls: Dict[str, Tuple[Callable[[], nn.Module], str]] = {
        "nn.Conv2d": (lambda: nn.Conv2d(C, C, K, padding=1), "zeros"),
        "nn.Conv2d (circular)": (lambda: nn.Conv2d(C, C, K, padding=1, padding_mode="circular"), "circular"),
        "liplayers OrthoConv2d": (lambda: L.OrthoConv2d(C, C, K, padding=1), "zeros"),
        "liplayers OrthoConv2d (circular)": (lambda: L.OrthoConv2d(C, C, K, padding=1, padding_mode="circular"),
                                             "circular"),
        "liplayers SpectralConv2d": (lambda: L.SpectralConv2d(C, C, K, padding=1, input_size=(N, N)), "zeros"),
        "liplayers SpectralConv2d (circular)": (
            lambda: L.SpectralConv2d(C, C, K, padding=1, padding_mode="circular", input_size=(N, N)), "circular"),
        "liplayers RKOConv2d": (lambda: L.RKOConv2d(C, C, K, padding=1), "zeros"),
        "torch spectral_norm(Conv2d)": (lambda: P.spectral_norm(nn.Conv2d(C, C, K, padding=1)), "zeros"),
        "liplayers AOLConv2d": (lambda: L.AOLConv2d(C, C, K, padding=1), "zeros"),
        "liplayers SLLConv2d": (lambda: L.SLLConv2d(C, C, K), "zeros"),
        "liplayers CPLConv2d": (lambda: L.CPLConv2d(C, K), "zeros"),
        "liplayers SOCConv2d": (lambda: L.SOCConv2d(C, C, K), "zeros"),
        "liplayers SOCConv2d(train_terms=3)": (lambda: L.SOCConv2d(C, C, K, train_terms=3), "zeros"),
        "liplayers SOCConv2d (circular)": (lambda: L.SOCConv2d(C, C, K, padding_mode="circular"), "circular"),
        "liplayers SOCConv2d(train_terms=3) (circular)": (
            lambda: L.SOCConv2d(C, C, K, padding_mode="circular", train_terms=3), "circular"),
        "liplayers CayleyConv2d (circular)": (lambda: L.CayleyConv2d(C, C, K), "circular"),
        "liplayers BROConv2d (circular)": (lambda: L.BROConv2d(C, C, K), "circular"),
        "liplayers BROConv2d": (lambda: L.BROConv2d(C, C, K, padding_mode="zeros"), "zeros"),
        "liplayers LOTConv2d (circular)": (lambda: L.LOTConv2d(C, C, K), "circular"),
        "liplayers LinearResidualConv2d": (lambda: L.LinearResidualConv2d(C, C, K), "zeros"),
    }
    try:
        from deel.torchlip import SpectralConv2d as DeelSpectralConv2d

        impls["deel-torchlip SpectralConv2d"] = (lambda: DeelSpectralConv2d(C, C, K, padding=1), "zeros")
    except ImportError:
        pass
    try:
        from orthogonium.layers.conv.AOC import AdaptiveOrthoConv2d  # stride 1: FastBlockConv2d (BCOP)
        from orthogonium.layers.conv.AOC import RKOConv2d as OrthRKO

        impls["orthogonium AOC"] = (lambda: AdaptiveOrthoConv2d(C, C, K, padding_mode="zeros"), "zeros")
        impls["orthogonium AOC (circular)"] = (lambda: AdaptiveOrthoConv2d(C, C, K, padding_mode="circular"),
                                               "circular")
        impls["orthogonium RKO"] = (lambda: OrthRKO(C, C, K, padding="same", padding_mode="zeros"), "zeros")
    except ImportError:
        pass
    try:
        from orthogonium.layers.conv.adaptiveSOC.fast_skew_ortho_conv import FastSOC

        # its 3×3 skew kernel is exponentiated into a 7×7 kernel; padding='same' is computed for 3×3
        # (output 28×28), so pass the padding of the 7×7 kernel explicitly
        impls["orthogonium FastSOC"] = (lambda: FastSOC(C, C, K, padding=3, padding_mode="zeros"), "zeros")
        impls["orthogonium FastSOC (circular)"] = (lambda: FastSOC(C, C, K, padding=3, padding_mode="circular"),
                                                   "circular")
    except ImportError:
        pass
    # orthogonium.legacy.block_ortho_conv.BCOP (the original Li et al. code) allocates its bias with
    # .cuda() and cannot run on a CPU-only torch; its maintained BCOP is AOC's FastBlockConv2d above.
    try:
        from orthogonium.layers.conv.AOL.aol import AOLConv2D

        impls["orthogonium AOLConv2D"] = (lambda: AOLConv2D(C, C, K, padding=1), "zeros")
    except ImportError:
        pass
    try:
        from orthogonium.layers.conv.SLL.sll_layer import SDPBasedLipschitzResBlock

        impls["orthogonium SDPBasedLipschitzResBlock"] = (lambda: SDPBasedLipschitzResBlock(C, 1, kernel_size=K),
                                                          "zeros")
    except ImportError:
        pass
    try:
        if "einops" not in sys.modules:  # only its stride-2 path uses einops
            try:
                import einops  # noqa: F401
            except ImportError:
                sys.modules["einops"] = types.ModuleType("einops")
        from orthogonium.legacy.cayley_ortho_conv import Cayley

        impls["orthogonium legacy Cayley (circular)"] = (lambda: Cayley(C, C, K), "circular")
    except ImportError:
        pass
    return impls


def train_step(m: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, t: torch.Tensor) -> None:
    m.train()
    loss = (m(x) - t).square().mean()
    opt.zero_grad(set_to_none=True)
    x.grad = None
    loss.backward()
    opt.step()


def eval_forward(m: nn.Module, x: torch.Tensor) -> None:
    m.eval()
    with torch.no_grad():
        m(x)


def jacobian_singular_values(m: nn.Module, shape: Tuple[int, ...]) -> Tuple[float, float, str]:
    """(σ_max, σ_min, dtype) of the Jacobian of the eval-mode map at a random point of ``shape``."""
    try:
        f, dtype = copy.deepcopy(m).double().eval(), torch.float64
        with torch.no_grad():
            f(torch.zeros(1, *shape, dtype=dtype))
    except Exception:  # noqa: BLE001 - peers that cannot run in float64: measure in float32
        f, dtype = m.eval(), torch.float32
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, *shape, generator=g).to(dtype)
    n = x0.numel()
    rows = []
    for start in range(0, n, 512):  # rows of J by vector–Jacobian products, 512 at a time
        eye = torch.eye(n, dtype=dtype)[start:start + 512].reshape(-1, *shape)
        x = x0.expand(eye.shape[0], *shape).clone().requires_grad_(True)
        y = f(x)
        (gx,) = torch.autograd.grad(y, x, eye)
        rows.append(gx.reshape(eye.shape[0], -1).double())
    s = torch.linalg.svdvals(torch.cat(rows))
    return float(s.max()), float(s.min()), "f64" if dtype == torch.float64 else "f32"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--input-grad", action="store_true",
                    help="the input requires grad (a layer inside a network: the input gradient is computed too)")
    ap.add_argument("--sv-size", type=int, default=6, help="spatial size of the input of the Jacobian SVD")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    ap.add_argument("--only", nargs="*", default=None, help="substrings of implementation names to run")
    ap.add_argument("--no-memory", action="store_true", help="skip the profiler's peak-memory pass")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    impls = implementations()
    if args.only:
        impls = {k: v for k, v in impls.items() if any(s in k for s in args.only) or k == "nn.Conv2d"}
    x = torch.randn(B, C, N, N).requires_grad_(args.input_grad)
    t = torch.randn(B, C, N, N) * 0.1
    mods, opts = {}, {}
    for name, (make, _) in impls.items():
        torch.manual_seed(0)
        m = make()
        mods[name] = m
        opts[name] = torch.optim.Adam(m.parameters(), lr=1e-3)
        for _ in range(args.warmup):
            train_step(m, opts[name], x, t)
    times = {name: {"train": [], "eval": []} for name in mods}
    for _ in range(args.rounds):
        for name, m in mods.items():
            t0 = time.perf_counter()
            train_step(m, opts[name], x, t)
            t_train = time.perf_counter() - t0
            eval_forward(m, x)  # first eval forward after an update rebuilds eval caches
            t1 = time.perf_counter()
            eval_forward(m, x)
            t2 = time.perf_counter()
            times[name]["train"].append(t_train)
            times[name]["eval"].append(t2 - t1)
    base_train = min(times["nn.Conv2d"]["train"])
    base_eval = min(times["nn.Conv2d"]["eval"])
    rows = []
    for name, m in mods.items():
        m.train()
        try:
            peak = float("nan") if args.no_memory else peak_and_saved(m, x)[0]
        except Exception:  # noqa: BLE001 - the profiler's memory timeline fails on some modules
            peak = float("nan")
        try:
            smax, smin, sv_dtype = jacobian_singular_values(m, (C, args.sv_size, args.sv_size))
        except Exception:  # noqa: BLE001 - layers tied to the training input size (legacy Cayley)
            smax = smin = float("nan")
            sv_dtype = "n/a"
        try:
            bound = lipschitz_bound_of(m.eval(), (C, N, N))
        except (UnboundedModuleError, Exception):  # noqa: BLE001 - any failure means "cannot bound"
            bound = None
        tr, ev = min(times[name]["train"]), min(times[name]["eval"])
        rows.append(dict(name=name, padding=impls[name][1], train_ms=1e3 * tr, train_ratio=tr / base_train,
                         eval_ms=1e3 * ev, eval_ratio=ev / base_eval, peak_mib=peak, sigma_max=smax, sigma_min=smin,
                         sv_dtype=sv_dtype, bound=bound))
        print(f"  {name}: done", file=sys.stderr, flush=True)
    print(f"\n{C}→{C}, {K}×{K}, {N}×{N}, batch {B}, float32, {torch.get_num_threads()} thread(s), "
          f"{args.warmup} warm-up Adam steps, min of {args.rounds} interleaved rounds; "
          f"σ of the Jacobian at {C}×{args.sv_size}×{args.sv_size}\n")
    print("| layer | padding | train step ms | ÷ nn.Conv2d | eval fwd ms | ÷ | peak MiB | σ_max | σ_min | "
          "liplayers bound |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        bound = "n/a" if r["bound"] is None else f"{r['bound']:.6f}"
        mark = {"f64": "", "f32": " (f32)"}.get(r["sv_dtype"], " (n/a)")
        print(f"| {r['name']} | {r['padding']} | {r['train_ms']:.1f} | {r['train_ratio']:.2f} | {r['eval_ms']:.1f} | "
              f"{r['eval_ratio']:.2f} | {r['peak_mib']:.0f} | {r['sigma_max']:.6f}{mark} | {r['sigma_min']:.6f} | "
              f"{bound} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
