"""Peak memory of one training step: liplayers dense/conv layers against nn.Linear / nn.Conv2d.

CPU-only, no ``torch.cuda``. Two figures per layer, for one train step (forward + backward of
``sum(y²)``, parameters' gradients included; the optimizer's state is excluded because it is
the same for every layer of a given parameter count):

* **peak**: the largest amount of memory held by tensors allocated *during* the step, from
  the profiler's memory timeline (``torch.profiler.profile(profile_memory=True,
  record_shapes=True, with_stack=True)._memory_profile().timeline``: every tensor creation
  and destruction in time order; running sum, maximum). The input batch and the
  parameters themselves (allocated before the step) are not counted; outputs, saved
  activations, workspaces and gradients are.
* **saved**: bytes of the tensors autograd keeps for backward (counted once per storage with
  ``torch.autograd.graph.saved_tensors_hooks``). This is what backpropagating through the
  Björck iterations of the differentiable mode costs.

The layers are put in a realistic state first: a few Adam steps (lr 1e-3) from their
default initialization, so retract-mode layers do their usual 1–2 retraction steps; for the
differentiable Björck mode the free weight is additionally a generic (Gaussian) matrix, as it
is after long training without retraction, so the forward runs its full ~10–15 iterations.

Run:  python benchmarks/memory.py [--dense 1024] [--batch 256] [--conv-channels 64] [--conv-size 32]
"""
from __future__ import annotations

import argparse
import warnings
from typing import Callable, Dict, Tuple

import torch
from torch import nn
from torch.profiler._memory_profiler import Action  # private, but the only CPU allocation timeline

import liplayers as L

warnings.filterwarnings("ignore")


def peak_and_saved(model: nn.Module, x: torch.Tensor) -> Tuple[float, float]:
    """(peak MiB allocated during one forward+backward, MiB saved for backward)."""
    model.zero_grad(set_to_none=True)
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except Exception:  # pragma: no cover - tensors without storage
            pass
        return t

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                record_shapes=True, with_stack=True) as prof:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = model(x)
        y.square().sum().backward()
        del y
    # the profiler's memory timeline: every tensor allocation (CREATE) and free (DESTROY) in
    # time order; tensors that existed before the step (PREEXISTING) are not counted
    cur = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            cur += size
        elif action == Action.DESTROY:
            cur -= size
        peak = max(peak, cur)
    mib = float(2**20)
    return peak / mib, sum(seen.values()) / mib


def warm_up(model: nn.Module, shape, steps: int = 3) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(shape, generator=g)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    model.zero_grad(set_to_none=True)


def _generic(layer: L.BjorckLinear) -> L.BjorckLinear:
    with torch.no_grad():
        layer.parametrizations.weight.original.normal_(0, layer.in_features ** -0.5)
    return layer


def dense_layers(n: int) -> Dict[str, Callable[[], nn.Module]]:
    return {
        "nn.Linear": lambda: nn.Linear(n, n),
        "BjorckLinear (retract)": lambda: L.BjorckLinear(n, n),
        "BjorckLinear (differentiable, near-orthogonal V)": lambda: L.BjorckLinear(n, n, mode="differentiable"),
        "BjorckLinear (differentiable, generic V)": lambda: _generic(L.BjorckLinear(n, n, mode="differentiable")),
        "SpectralLinear": lambda: L.SpectralLinear(n, n),
        "LInfLinear": lambda: L.LInfLinear(n, n),
    }


def conv_layers(c: int, hw: int) -> Dict[str, Callable[[], nn.Module]]:
    return {
        "nn.Conv2d": lambda: nn.Conv2d(c, c, 3, padding=1),
        "OrthoConv2d": lambda: L.OrthoConv2d(c, c, 3, padding=1),
        "SpectralConv2d": lambda: L.SpectralConv2d(c, c, 3, padding=1, input_size=(hw, hw)),
        "RKOConv2d": lambda: L.RKOConv2d(c, c, 3, padding=1),
    }


def run(table: Dict[str, Callable[[], nn.Module]], shape) -> list:
    rows = []
    base = None
    for name, make in table.items():
        torch.manual_seed(0)
        model = make()
        warm_up(model, shape)
        x = torch.randn(shape)
        peak_and_saved(model, x)  # first call: lazy state (retraction, power-iteration vectors)
        peak, saved = min((peak_and_saved(model, x) for _ in range(2)), key=lambda r: r[0])
        if base is None:
            base = peak
        rows.append((name, peak, saved, peak / base))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--conv-channels", type=int, default=64)
    ap.add_argument("--conv-size", type=int, default=32)
    ap.add_argument("--conv-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n, b = args.dense, args.batch
    c, hw, cb = args.conv_channels, args.conv_size, args.conv_batch
    print(f"torch {torch.__version__}, CPU, float32; one train step (forward + backward), optimizer excluded\n")
    print(f"| layer | input | peak MiB | saved for backward MiB | peak / torch |")
    print(f"|---|---|---:|---:|---:|")
    for name, peak, saved, ratio in run(dense_layers(n), (b, n)):
        print(f"| {name} | ({b}, {n}) | {peak:.1f} | {saved:.1f} | {ratio:.2f} |")
    for name, peak, saved, ratio in run(conv_layers(c, hw), (cb, c, hw, hw)):
        print(f"| {name} | ({cb}, {c}, {hw}, {hw}) | {peak:.1f} | {saved:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
