"""What a certifiable (GNP) network costs to train, against a plain network of the same shape.

One train step = forward + cross-entropy + backward + Adam step (lr 1e-3), batch 256 of
random MNIST-shaped inputs (1×28×28), float32, CPU. Three pairs of networks:

* **mlp**: 784-512-512-10; GNP = BjorckLinear + MaxMin, plain = nn.Linear + ReLU.
* **4c3f** (the GloRo 4C3F shape): conv 32 3×3, conv 32 4×4 stride 2, conv 64 3×3, conv 64
  4×4 stride 2, dense 512, 512, 10; GNP = OrthoConv2d(padding='same') + MaxMin over channels +
  Björck head, plain = nn.Conv2d + ReLU + nn.Linear.
* **gnp_conv_net**: ``liplayers.gnp_conv_net()`` (defaults) and a plain copy of its shape
  (each OrthoConv2d → nn.Conv2d with the same channels, kernel and stride, BjorckLinear →
  nn.Linear, MaxMin → ReLU).

Two variants of the GNP side, set by swapping the ``forward`` of every MaxMin instance in
the benchmark (the library is not touched): **torch ops**, MaxMin as it was written before
(``torch.minimum`` / ``torch.maximum`` of the two halves, ``torch.stack``, autograd through
them), and **fused**, :func:`liplayers.functional.group_sort.max_min` (one comparison mask
saved, bitwise gradient swap).

Time: every network is first trained for ``--warmup`` steps; then in each of ``--rounds``
rounds every variant runs one timed step, interleaved, and the table reports the minimum
over rounds (steadier than a median on a shared machine) and the ratio to the plain network.

Memory: peak of the bytes held by tensors allocated during one train step, from the
profiler's memory timeline (``torch.profiler.profile(profile_memory=True)``: every tensor
allocation and free in time order, running sum, maximum; tensors that existed before the
step — parameters, optimizer state, the batch — are not counted). ``tracemalloc`` does not
see torch's CPU allocations, and the process RSS mostly measures the allocator.

Run:  python benchmarks/network_cost.py [--rounds 5] [--warmup 2] [--threads 1] [--quick]
"""
from __future__ import annotations

import argparse
import time
import warnings
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler._memory_profiler import Action  # private, but the only CPU allocation timeline

import liplayers as L
from liplayers.functional.group_sort import max_min

warnings.filterwarnings("ignore")

BATCH, SHAPE = 256, (1, 28, 28)


def max_min_torch_ops(x: Tensor, dim: int) -> Tensor:
    """MaxMin as it was implemented before the fused kernel (minimum first in each pair)."""
    dim = dim % x.dim()
    shape = x.shape
    grouped = x.reshape(*shape[:dim], shape[dim] // 2, 2, *shape[dim + 1:])
    a, b = grouped.unbind(dim + 1)
    return torch.stack((torch.minimum(a, b), torch.maximum(a, b)), dim=dim + 1).reshape(shape)


IMPLEMENTATIONS: Dict[str, Callable[[Tensor, int], Tensor]] = {"torch ops": max_min_torch_ops, "fused": max_min}


def use_max_min(model: nn.Module, impl: Callable[[Tensor, int], Tensor]) -> nn.Module:
    """Swap the forward of every MaxMin (GroupSort of 2) instance of ``model`` for ``impl``."""
    for m in model.modules():
        if isinstance(m, L.GroupSort) and m.group_size == 2:
            m.forward = (lambda d: lambda x: impl(x, d))(m.dim)
    return model


# ---------------------------------------------------------------- networks
def mlp(gnp: bool) -> nn.Module:
    lin, act = (L.BjorckLinear, lambda: L.MaxMin(dim=-1)) if gnp else (nn.Linear, nn.ReLU)
    return nn.Sequential(nn.Flatten(), lin(784, 512), act(), lin(512, 512), act(), lin(512, 10))


def gloro_4c3f(gnp: bool) -> nn.Module:
    convs = [(1, 32, 3, 1), (32, 32, 4, 2), (32, 64, 3, 1), (64, 64, 4, 2)]
    layers: List[nn.Module] = []
    for cin, cout, k, s in convs:
        if gnp:
            layers += [L.OrthoConv2d(cin, cout, k, stride=s, padding="same"), L.MaxMin(dim=1)]
        else:
            layers += [nn.Conv2d(cin, cout, k, stride=s, padding="same" if s == 1 else (k - 1) // 2), nn.ReLU()]
    lin, act = (L.BjorckLinear, lambda: L.MaxMin(dim=-1)) if gnp else (nn.Linear, nn.ReLU)
    layers += [nn.Flatten(), lin(64 * 7 * 7, 512), act(), lin(512, 512), act(), lin(512, 10)]
    return nn.Sequential(*layers)


def gnp_conv_net(gnp: bool) -> nn.Module:
    net = L.gnp_conv_net()
    if gnp:
        return net
    plain: List[nn.Module] = []
    for m in net:
        if isinstance(m, L.OrthoConv2d):
            k, s = m.kernel_size[0], m.stride[0]
            plain.append(nn.Conv2d(m.in_channels, m.out_channels, k, stride=s,
                                   padding="same" if s == 1 else (k - 1) // 2))
        elif isinstance(m, L.BjorckLinear):
            plain.append(nn.Linear(m.in_features, m.out_features))
        elif isinstance(m, L.GroupSort):
            plain.append(nn.ReLU())
        else:
            plain.append(m)
    return nn.Sequential(*plain)


NETWORKS = {"mlp 784-512-512-10": mlp, "4c3f (GloRo)": gloro_4c3f, "gnp_conv_net()": gnp_conv_net}


# ---------------------------------------------------------------- measurement
class Runner:
    """A model, its Adam optimizer and one fixed batch."""

    def __init__(self, model: nn.Module, batch: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.model = model
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.x = torch.randn((batch,) + SHAPE, generator=g)
        self.y = torch.randint(0, 10, (batch,), generator=g)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.step()

    def timed_step(self) -> float:
        t = time.perf_counter()
        self.step()
        return time.perf_counter() - t

    def peak_mib(self) -> float:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                    record_shapes=True, with_stack=True) as prof:
            self.step()
        cur = peak = 0
        for _, action, _, size in prof._memory_profile().timeline:
            if action == Action.CREATE:
                cur += size
            elif action == Action.DESTROY:
                cur -= size
            peak = max(peak, cur)
        return peak / 2**20


def measure(name: str, build, batch: int, warmup: int, rounds: int, memory: bool) -> List[Tuple]:
    runners: Dict[str, Runner] = {}
    torch.manual_seed(0)
    runners["plain"] = Runner(build(False), batch, 0)
    for impl_name, impl in IMPLEMENTATIONS.items():
        torch.manual_seed(0)  # same initial weights for both GNP variants
        runners[f"GNP, MaxMin {impl_name}"] = Runner(use_max_min(build(True), impl), batch, 0)
    with torch.no_grad():  # the variants compute the same function
        a, b = (runners[f"GNP, MaxMin {k}"] for k in IMPLEMENTATIONS)
        assert torch.equal(a.model(a.x), b.model(b.x)), "MaxMin variants disagree"
    for r in runners.values():
        for _ in range(warmup):
            r.step()
    best = {k: float("inf") for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            best[k] = min(best[k], r.timed_step())
    peaks = {k: (r.peak_mib() if memory else float("nan")) for k, r in runners.items()}
    base_t, base_m = best["plain"], peaks["plain"]
    return [(name, k, 1e3 * best[k], best[k] / base_t, peaks[k], peaks[k] / base_m) for k in runners]


ACTIVATION_SHAPES = [((256, 32, 28, 28), 1), ((256, 64, 14, 14), 1), ((256, 64, 7, 7), 1), ((256, 512), -1)]


def activation_alone(rounds: int) -> List[Tuple]:
    """(shape, dim, ms ReLU, ms MaxMin torch ops, ms MaxMin fused): forward + backward, min over rounds."""
    rows = []
    for shape, dim in ACTIVATION_SHAPES:
        x = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape)
        fns = {"relu": torch.relu, **{k: (lambda f: lambda t: f(t, dim))(f) for k, f in IMPLEMENTATIONS.items()}}
        best = {k: float("inf") for k in fns}
        for _ in range(rounds + 1):  # the first round warms up
            for k, f in fns.items():
                t = time.perf_counter()
                f(x).backward(g)
                best[k] = min(best[k], time.perf_counter() - t)
                x.grad = None
        rows.append((shape, dim, *(1e3 * best[k] for k in fns)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (minimum reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed train steps per variant first")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 or 2)")
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--networks", default=",".join(NETWORKS), help="comma-separated subset of: " + ", ".join(NETWORKS))
    ap.add_argument("--no-memory", action="store_true", help="skip the profiler's peak-memory pass")
    ap.add_argument("--quick", action="store_true", help="1 warm-up step, 2 rounds, no memory pass (< 30 s)")
    args = ap.parse_args()
    if args.quick:
        args.warmup, args.rounds, args.no_memory = 1, 2, True
    if args.rounds < 1 or args.warmup < 0 or args.threads < 1 or args.batch < 1:
        ap.error("--rounds, --threads and --batch must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.networks.split(",") if n.strip()]
    unknown = [n for n in names if n not in NETWORKS]
    if unknown:
        ap.error(f"unknown network(s) {unknown}; choose from {list(NETWORKS)}")

    print(f"train step (forward + cross-entropy + backward + Adam), batch {args.batch}, float32, "
          f"{args.threads} thread(s), min over {args.rounds} rounds after {args.warmup} warm-up steps; "
          f"peak = profiler memory timeline of one step\n")
    print("| network | variant | step ms | × plain | peak MiB | × plain |")
    print("|---|---|---:|---:|---:|---:|")
    t0 = time.perf_counter()
    for n in names:
        for row in measure(n, NETWORKS[n], args.batch, args.warmup, args.rounds, not args.no_memory):
            net, var, ms, r, mib, rm = row
            mem = "" if mib != mib else f"{mib:.1f}"
            rmem = "" if rm != rm else f"{rm:.2f}"
            print(f"| {net} | {var} | {ms:.1f} | {r:.2f} | {mem} | {rmem} |", flush=True)
    print("\nthe activation alone, forward + backward (ms):\n")
    print("| input | dim | ReLU | MaxMin torch ops | MaxMin fused | torch ops / fused |")
    print("|---|---:|---:|---:|---:|---:|")
    for shape, dim, relu, ops, fused in activation_alone(args.rounds):
        print(f"| {'×'.join(map(str, shape))} | {dim} | {relu:.2f} | {ops:.2f} | {fused:.2f} | {ops / fused:.1f} |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
