"""Convolutional 1-Lipschitz layers side by side: train step, eval forward, operator norms.

Setting: 64→64 channels, 3×3, 32×32 inputs, batch 64, float32. Every
implementation is first trained for ``--warmup`` Adam steps (lr 1e-3) on a random regression
task (so the measurements are not those of the initialization), then timed in interleaved
rounds: in each round every implementation runs one train step (forward + backward + Adam
step) and one eval forward (no grad); the table reports the minimum over rounds (steadier
than a median on a shared machine) and the ratio to ``nn.Conv2d`` (zero padding).

Operator norms are measured on the layer's real eval-mode map x ↦ f(x) − f(0) at 32×32:

* σ_max: power iteration on JᵀJ (adjoint by autograd) from a random start, ``--power``
  iterations, float64 copy of the layer where possible — a *lower* estimate of σ_max;
* for circular padding and layers that are a plain convolution with a readable kernel,
  the exact σ_max / σ_min from the FFT (all 32·32·64 singular values);
* otherwise σ_min: power iteration on c·I − JᵀJ (an *upper* estimate, marked ≈).

"bound" is liplayers' guaranteed bound of the layer as it runs (``lipschitz_bound_of`` with the
input shape), "n/a" when liplayers cannot bound it (a module overriding ``Conv2d.forward``).

Run:  python benchmarks/conv_layers.py [--warmup 20] [--rounds 5] [--power 300] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

import liplayers as L
from liplayers.functional.conv import circular_conv_singular_values
from liplayers.lipschitz import UnboundedModuleError, lipschitz_bound_of

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
        impls["orthogonium SOC (circular)"] = (lambda: FastSOC(C, C, K, padding=3, padding_mode="circular"),
                                               "circular")
    except ImportError:
        pass
    # orthogonium.legacy.block_ortho_conv.BCOP (the original Li et al. code) allocates its bias with
    # .cuda() and cannot run on a CPU-only torch; its maintained BCOP is AOC's FastBlockConv2d above.
    try:
        from orthogonium.layers.conv.AOL.aol import AOLConv2D

        impls["orthogonium AOL"] = (lambda: AOLConv2D(C, C, K, padding=1), "zeros")
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


def plain_kernel(m: nn.Module) -> Optional[torch.Tensor]:
    """The kernel of a layer that is exactly one stride-1 conv with 'same' circular padding."""
    if isinstance(m, L.OrthoConv2d) and m.stride == (1, 1):
        return m.eval_weight()
    if isinstance(m, (L.SpectralConv2d, L.RKOConv2d)) and m.stride == (1, 1):
        return m.eval_weight()
    if isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward:
        m.eval()
        with torch.no_grad():
            return m.weight.detach().clone()
    return None


def operator_norms(m: nn.Module, mode: str, iters: int) -> Tuple[float, float, bool, str]:
    """(σ_max, σ_min, σ_min exact?, method) of the eval-mode operator at C×N×N."""
    m.eval()
    k = plain_kernel(m) if mode == "circular" else None
    if k is not None:
        sv = circular_conv_singular_values(k, (N, N))
        return float(sv.max()), float(sv.min()), True, "FFT"
    try:
        f = copy.deepcopy(m).double().eval()
        dtype = torch.float64
        with torch.no_grad():
            f0 = f(torch.zeros(1, C, N, N, dtype=dtype))
    except Exception:  # noqa: BLE001 - peers that cannot run in float64: measure in float32
        f, dtype = m, torch.float32
        with torch.no_grad():
            f0 = f(torch.zeros(1, C, N, N, dtype=dtype))

    def op(x):
        return f(x) - f0

    def jtj(v):
        x = v.detach().requires_grad_(True)
        y = op(x)
        (g,) = torch.autograd.grad(y, x, y.detach())
        return g.detach()

    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, C, N, N, dtype=dtype, generator=g)
    v /= v.norm()
    lam = 0.0
    for _ in range(iters):
        w = jtj(v)
        lam = float((w * v).sum())
        v = w / w.norm()
    smax = lam ** 0.5
    c = 1.01 * lam
    u = torch.randn(1, C, N, N, dtype=dtype, generator=g)
    u /= u.norm()
    mu = 0.0
    for _ in range(iters):
        w = c * u - jtj(u)
        mu = float((w * u).sum())
        u = w / w.norm()
    smin = max(c - mu, 0.0) ** 0.5
    return smax, smin, False, "power"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--power", type=int, default=300)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--only", nargs="*", default=None, help="substrings of implementation names to run")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    impls = implementations()
    if args.only:
        impls = {k: v for k, v in impls.items() if any(s in k for s in args.only) or k == "nn.Conv2d"}
    x = torch.randn(B, C, N, N)
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
        mode = impls[name][1]
        smax, smin, exact, method = operator_norms(m, mode, args.power)
        try:
            bound = lipschitz_bound_of(m, (C, N, N))
        except (UnboundedModuleError, Exception):  # noqa: BLE001 - any failure means "cannot bound"
            bound = None
        tr, ev = min(times[name]["train"]), min(times[name]["eval"])
        rows.append(dict(name=name, padding=mode, train_ms=1e3 * tr, train_ratio=tr / base_train, eval_ms=1e3 * ev,
                         eval_ratio=ev / base_eval, sigma_max=smax, sigma_min=smin, sigma_min_exact=exact,
                         method=method, bound=bound))
    print(f"\n{C}→{C}, {K}×{K}, {N}×{N}, batch {B}, float32, {torch.get_num_threads()} threads, "
          f"{args.warmup} warm-up Adam steps, min of {args.rounds} interleaved rounds\n")
    print("| layer | padding | train step ms | ÷ nn.Conv2d | eval fwd ms | ÷ | σ_max | σ_min | liplayers bound |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        smin = f"{r['sigma_min']:.6f}" if r["sigma_min_exact"] else f"≈{r['sigma_min']:.3f}"
        smax = f"{r['sigma_max']:.6f}" + ("" if r["method"] == "FFT" else " (pi)")
        bound = "n/a" if r["bound"] is None else f"{r['bound']:.6f}"
        print(f"| {r['name']} | {r['padding']} | {r['train_ms']:.1f} | {r['train_ratio']:.2f} | {r['eval_ms']:.1f} | "
              f"{r['eval_ratio']:.2f} | {smax} | {smin} | {bound} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
