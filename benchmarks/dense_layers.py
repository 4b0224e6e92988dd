"""Dense 1-Lipschitz layers side by side: train step, eval forward and orthogonality.

Every implementation is first trained for ``--warmup`` Adam steps (lr 1e-3; at most
``--warmup-seconds`` each, the steps done are reported) on the same random regression task
from its default initialization (a realistic state: at
initialization an orthogonally initialized layer converges in one iteration and looks faster
than it is), then timed in interleaved rounds: in each round every implementation runs one
train step (forward + backward + Adam step, batch 256) and one eval forward; the table
reports the minimum over rounds (steadier than a median on a shared machine) and the ratio
to ``nn.Linear``. σ_min / σ_max are the singular values of the Jacobian of the layer's real
eval-mode map at a random point (float64 SVD; for the linear layers, their weight; for the
residual CPL / SLL layers, the Jacobian there), ``max|σ−1|`` its distance to an isometry.
"peak MiB" is the memory held by tensors allocated during one forward + backward (the
profiler's memory timeline, :func:`memory.peak_and_saved`; parameters and input excluded).
Peers when installed: torch, deel-torchlip, orthogonium (``OrthoLinear`` presets,
``SDPBasedLipschitzDense`` with an inner dimension equal to the features).

Run:  python benchmarks/dense_layers.py [--sizes 256 1024] [--warmup 200] [--rounds 7] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import Callable, Dict

import torch
from torch import nn

import liplayers as L
from memory import peak_and_saved

warnings.filterwarnings("ignore")


def implementations(n: int) -> Dict[str, Callable[[], nn.Module]]:
    P = nn.utils.parametrizations
    impls: Dict[str, Callable[[], nn.Module]] = {
        "nn.Linear": lambda: nn.Linear(n, n),
        "liplayers BjorckLinear": lambda: L.BjorckLinear(n, n),
        "liplayers BjorckLinear(order=3)": lambda: L.BjorckLinear(n, n, order=3),
        "liplayers BjorckLinear(differentiable)": lambda: L.BjorckLinear(n, n, mode="differentiable"),
        "liplayers SpectralLinear": lambda: L.SpectralLinear(n, n),
        "torch spectral_norm": lambda: P.spectral_norm(nn.Linear(n, n)),
        "torch orthogonal(matrix_exp)": lambda: P.orthogonal(nn.Linear(n, n), orthogonal_map="matrix_exp"),
        "torch orthogonal(cayley)": lambda: P.orthogonal(nn.Linear(n, n), orthogonal_map="cayley"),
        "torch orthogonal(householder)": lambda: P.orthogonal(nn.Linear(n, n), orthogonal_map="householder"),
        "liplayers AOLLinear": lambda: L.AOLLinear(n, n),
        "liplayers CPLLinear": lambda: L.CPLLinear(n),
        "liplayers SLLLinear": lambda: L.SLLLinear(n),
        "liplayers CholeskyLinear": lambda: L.CholeskyLinear(n, n),
        "liplayers BROLinear": lambda: L.BROLinear(n, n),
    }
    try:
        from deel.torchlip import SpectralLinear as DeelSpectralLinear

        impls["deel-torchlip SpectralLinear"] = lambda: DeelSpectralLinear(n, n)
    except ImportError:
        pass
    try:
        from orthogonium.layers.linear import OrthoLinear
        from orthogonium import reparametrizers as R

        for preset in ("DEFAULT_ORTHO_PARAMS", "CHOLESKY_ORTHO_PARAMS", "QR_ORTHO_PARAMS", "EXP_ORTHO_PARAMS"):
            if hasattr(R, preset):
                impls[f"orthogonium OrthoLinear({preset.replace('_ORTHO_PARAMS', '')})"] = (
                    lambda p=getattr(R, preset): OrthoLinear(n, n, ortho_params=p))
    except ImportError:
        pass
    try:
        from orthogonium.layers.conv.SLL.sll_layer import SDPBasedLipschitzDense

        impls["orthogonium SDPBasedLipschitzDense"] = lambda: SDPBasedLipschitzDense(n, n, n)
    except ImportError:
        pass
    return impls


def train_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss = (model(x) - y).square().mean()
    loss.backward()
    opt.step()


def singular_range(model: nn.Module, n: int) -> tuple:
    """(σ_min, σ_max) of the Jacobian of the eval-mode map at a random point (float64 SVD)."""
    model.eval()
    x0 = torch.randn(1, n, generator=torch.Generator().manual_seed(0))
    x = x0.expand(n, n).clone().requires_grad_(True)
    (jac,) = torch.autograd.grad(model(x), x, torch.eye(n))  # row i: ∂y_i/∂x (batch rows independent)
    s = torch.linalg.svdvals(jac.double())
    model.train()
    return float(s.min()), float(s.max())


def run(n: int, batch: int, warmup: int, rounds: int, only=None, warmup_seconds: float = 60.0,
        memory: bool = True) -> list:
    torch.manual_seed(0)
    target = torch.randn(n, n) / n**0.5
    data = [torch.randn(batch, n) for _ in range(8)]
    models, opts, steps_done = {}, {}, {}
    for name, make in implementations(n).items():
        if only and not any(o.lower() in name.lower() for o in only):
            continue
        torch.manual_seed(1)
        m = make()
        o = torch.optim.Adam(m.parameters(), lr=1e-3)
        t0 = time.perf_counter()
        done = 0
        while done < warmup and time.perf_counter() - t0 < warmup_seconds:
            x = data[done % len(data)]
            train_step(m, o, x, x @ target)
            done += 1
        m(data[0])  # a forward after the last step, as in any training loop
        models[name], opts[name] = m, o
        steps_done[name] = done
        print(f"  [{n}] {name}: {done} warm-up steps in {time.perf_counter() - t0:.1f} s", flush=True)
    times = {k: [] for k in models}
    evals = {k: [] for k in models}
    for name, m in models.items():  # one untimed step: every timed step then starts, as in
        x = data[0]                 # training, right after an optimizer step (retraction due)
        train_step(m, opts[name], x, x @ target)
    for r in range(rounds):
        for name, m in models.items():
            x = data[r % len(data)]
            t0 = time.perf_counter()
            train_step(m, opts[name], x, x @ target)
            times[name].append(time.perf_counter() - t0)
            m.eval()
            with torch.no_grad():
                m(x)  # first eval forward after a step may rebuild a cache: not timed
                t0 = time.perf_counter()
                m(x)
                evals[name].append(time.perf_counter() - t0)
            m.train()
    rows = []
    base_t, base_e = min(times["nn.Linear"]), min(evals["nn.Linear"])
    for name, m in models.items():
        m(data[0])
        smin, smax = singular_range(m, n)
        try:
            peak = peak_and_saved(m, data[0])[0] if memory else float("nan")
        except Exception:  # noqa: BLE001 - the profiler's memory timeline fails on some modules
            peak = float("nan")
        rows.append({"peak_mib": peak,
            "size": n, "layer": name, "warmup_steps": steps_done[name],
            "train_ms": 1e3 * min(times[name]), "train_ratio": min(times[name]) / base_t,
            "eval_ms": 1e3 * min(evals[name]), "eval_ratio": min(evals[name]) / base_e,
            "sigma_min": smin, "sigma_max": smax, "max_abs_sigma_minus_1": max(abs(smin - 1), abs(smax - 1)),
        })
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup-seconds", type=float, default=60.0,
                    help="cap on each implementation's warm-up time (slow peers get fewer steps; reported)")
    ap.add_argument("--only", nargs="*", help="substrings of layer names to keep (nn.Linear always kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    ap.add_argument("--no-memory", action="store_true", help="skip the profiler's peak-memory pass")
    ap.add_argument("--json", help="write the rows to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    only = (args.only + ["nn.Linear"]) if args.only else None
    rows = []
    for n in args.sizes:
        rows += run(n, args.batch, args.warmup, args.rounds, only, args.warmup_seconds, not args.no_memory)
    print(f"\nthreads={torch.get_num_threads()}  batch={args.batch}  warm-up={args.warmup} Adam steps  rounds={args.rounds}")
    print("| in=out | layer | warm-up steps | train step ms | × nn.Linear | eval fwd ms | × nn.Linear | peak MiB | "
          "σ_min | σ_max | max abs(σ−1) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['layer']} | {r['warmup_steps']} | {r['train_ms']:.2f} | {r['train_ratio']:.2f} | "
              f"{r['eval_ms']:.2f} | {r['eval_ratio']:.2f} | {r['peak_mib']:.1f} | {r['sigma_min']:.6f} | {r['sigma_max']:.6f} | "
              f"{r['max_abs_sigma_minus_1']:.1e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
