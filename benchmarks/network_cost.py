"""What a certifiable (GNP) network costs to train, against a plain network of the same shape.

One train step = forward + cross-entropy with temperature CE(τ·logits, y) (``--tau``, default 10,
the usual recipe for Lipschitz networks, e.g. Béthune et al. 2022; the same loss for the plain
network) + backward + Adam step (lr 1e-3), float32, CPU, on one fixed batch of random inputs
(``--batch`` 256). Networks, all with the library's defaults (fused MaxMin, Björck dense layers
with amortized retraction, BCOP convolutions):

* **mlp 784-512-512-10**: ``BjorckLinear`` + ``MaxMin``; plain = ``nn.Linear`` + ``ReLU``.
* **gloro_4c3f**: ``liplayers.zoo.gloro_4c3f()`` (MNIST shape, 1×28×28).
* **lipconvnet(5)**: ``liplayers.zoo.lipconvnet(5)`` (CIFAR-10 shape, 3×32×32).
* **gnp_conv_net()**: ``liplayers.gnp_conv_net()`` (MNIST shape).

The plain network of the same shape (:func:`plain_copy`) replaces every ``OrthoConv2d`` by an
``nn.Conv2d`` with the same channels, kernel, stride and output size (the 'same' padding of a
strided convolution becomes the equivalent explicit padding, symmetric — as a user would
write it — when the extra bottom/right zeros are never read), ``BjorckLinear`` by ``nn.Linear``
and each GroupSort-family activation by ``ReLU``.

Variants: ``GNP`` with the library's defaults (Riemannian gradient of the orthogonal factors:
canonical metric for the dense layers, tangent projection for the convolutions' factors);
``GNP, embedded-metric gradient``: the dense layers with ``riemannian_grad="embedded"`` (the
tangent projection, one more product per step); ``GNP, Euclidean gradient``: the same network
with ``riemannian_grad=False`` in every layer.

Time: every network first trains ``--warmup`` steps; then in each of ``--rounds`` rounds every
network trains ``--steps`` consecutive steps (default: the Björck layers' retraction period, so
that a block holds one full cycle of retraction and rescaled steps), interleaved, and the table
reports the minimum over rounds of the mean step time of a block (steadier than a median on a
shared machine) and the ratio to the plain network. How far an optimizer step moves the
orthonormal weights — hence how often they must be retracted — depends on the data and the
loss: on one fixed random batch with τ = 1, Adam's steps stay large (one step moves the
3136×512 head of 4C3F by ≈ 0.3 in spectral norm) and a retraction is due at almost every step;
on MNIST batches after a few hundred steps one step moves a 512×784 weight by ≈ 0.035.
``--epoch`` measures the second case.

Memory (:func:`peak_memory`): from the profiler's memory timeline
(``torch.profiler.profile(profile_memory=True)``: every tensor allocation and free in time order,
running sum, maximum) of a fresh copy of each network built, warmed up and trained inside the
profiler, so that every allocation and free is seen. Two figures for one block of steps:
*total* — the most bytes alive at once (parameters, optimizer state, the batch, buffers kept
between steps such as the Björck layers' reference copy of each weight, activations and
temporaries) — and *transient* — that minus what was alive when the block began (activations,
gradients, temporaries; a kept buffer replaced during the block counts only while the old and
the new one coexist).

``--epoch``: also one whole epoch of MNIST training (60 000 images, shuffled batches of
``--batch``, the MNIST-shaped networks), plain and GNP steps interleaved batch by batch, with
the summed step time, its ratio and the test accuracy of each network after the epoch (a
sanity check that both trained). The IDX files are read from ``--data-dir`` (or the
``LIPLAYERS_DATA`` environment variable); nothing is downloaded.

Run:  python benchmarks/network_cost.py [--rounds 5] [--threads 1] [--quick] [--epoch --data-dir DIR]
"""
from __future__ import annotations

import argparse
import copy
import gc
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler._memory_profiler import Action  # private, but the only CPU allocation timeline

import liplayers as L
from liplayers import zoo
from liplayers.functional.group_sort import max_min
from liplayers.parametrizations.bjorck import DEFAULT_RETRACT_EVERY

warnings.filterwarnings("ignore")

BATCH = 256
MNIST, CIFAR = (1, 28, 28), (3, 32, 32)


# ---------------------------------------------------------------- networks
def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), L.BjorckLinear(784, 512), L.MaxMin(dim=-1), L.BjorckLinear(512, 512),
                         L.MaxMin(dim=-1), L.BjorckLinear(512, 10))


NETWORKS: Dict[str, Tuple[Callable[[], nn.Module], Tuple[int, ...]]] = {
    "mlp 784-512-512-10": (mlp, MNIST),
    "gloro_4c3f": (lambda: zoo.gloro_4c3f(), MNIST),
    "lipconvnet(5)": (lambda: zoo.lipconvnet(5), CIFAR),
    "gnp_conv_net()": (lambda: L.gnp_conv_net(), MNIST),
}


EUCLID = "GNP, Euclidean gradient"
EMBEDDED = "GNP, embedded-metric gradient"


def with_gradient(build: Callable[[], nn.Module], option) -> nn.Module:
    """The same GNP network (same seed) with ``riemannian_grad=option`` in every layer that has it
    (``False``: all; a metric name: the dense layers, the only ones that offer a choice)."""
    torch.manual_seed(0)
    net = build()
    for m in net.modules():
        if hasattr(m, "riemannian_grad") and (option is False or isinstance(m, L.BjorckLinear)):
            m.riemannian_grad = option
    return net


def euclidean(build: Callable[[], nn.Module]) -> nn.Module:
    """The same GNP network (same seed) with ``riemannian_grad=False`` in every layer that has it."""
    return with_gradient(build, False)


def variants(build: Callable[[], nn.Module], shape: Tuple[int, ...]) -> Dict[str, Callable[[], nn.Module]]:
    """Builders of the compared networks, by variant name (the plain one first)."""
    return {"plain": lambda: plain_copy(build(), shape), "GNP": build,
            EMBEDDED: lambda: with_gradient(build, "embedded"), EUCLID: lambda: euclidean(build)}


def _same_padding(size: int, k: int, s: int, d: int) -> Tuple[int, int]:
    """(left, right) zero padding of 'same' (output ⌈size / s⌉), the extra pixel on the right."""
    total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def plain_copy(net: nn.Module, input_shape: Tuple[int, ...]) -> nn.Module:
    """The plain network of the same shape (see the module docstring); ``net`` is not modified."""
    sizes: Dict[nn.Module, Tuple[int, ...]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: sizes.__setitem__(m, tuple(a[0].shape[2:])))
             for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net.eval()(torch.zeros((1,) + tuple(input_shape)))
    net.train()
    for h in hooks:
        h.remove()

    def convert(m: nn.Module) -> nn.Module:
        if isinstance(m, L.BjorckLinear):
            return nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        if isinstance(m, L.GroupSort):
            return nn.ReLU()
        if isinstance(m, nn.Conv2d) and type(m) is not nn.Conv2d:
            if isinstance(m.padding, str):
                pads = [(0, 0)] * 2 if m.padding == "valid" else [
                    _same_padding(n, k, s, d) for n, k, s, d in zip(sizes[m], m.kernel_size, m.stride, m.dilation)]
            else:
                pads = [(p, p) for p in m.padding]
            if m.padding_mode == "zeros":  # extra bottom/right zeros no window reads: the symmetric padding
                pads = [(lo, lo) if hi > lo and (n + lo + hi - d * (k - 1) - 1) // s == (n + 2 * lo - d * (k - 1) - 1) // s
                        else (lo, hi) for (lo, hi), n, k, s, d in zip(pads, sizes[m], m.kernel_size, m.stride, m.dilation)]
            symmetric = all(a == b for a, b in pads)
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                             padding=tuple(a for a, _ in pads) if symmetric else 0, dilation=m.dilation,
                             groups=m.groups, bias=m.bias is not None,
                             padding_mode=m.padding_mode if symmetric else "zeros")
            if symmetric:
                return conv
            pad = {"zeros": nn.ZeroPad2d, "circular": nn.CircularPad2d, "reflect": nn.ReflectionPad2d,
                   "replicate": nn.ReplicationPad2d}[m.padding_mode]
            return nn.Sequential(pad((pads[1][0], pads[1][1], pads[0][0], pads[0][1])), conv)
        children = list(m.named_children())
        if not children:
            return copy.deepcopy(m)
        out = copy.copy(m)
        out._modules = {name: convert(child) for name, child in children}
        return out

    return convert(net)


# ---------------------------------------------------------------- measurement
class Runner:
    """A model, its Adam optimizer and one fixed batch."""

    def __init__(self, model: nn.Module, input_shape: Tuple[int, ...], batch: int, seed: int,
                 tau: float = 10.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.tau = tau
        self.model = model.train()
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.x = torch.randn((batch,) + tuple(input_shape), generator=g)
        self.y = torch.randint(0, 10, (batch,), generator=g)

    def step(self, x: Optional[Tensor] = None, y: Optional[Tensor] = None) -> float:
        x, y = (self.x, self.y) if x is None else (x, y)
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.tau * self.model(x), y)
        loss.backward()
        self.opt.step()
        return float(loss)

    def timed_block(self, steps: int) -> float:
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        return (time.perf_counter() - t) / steps


_MARK = 7919  # bytes of the marker allocation that separates warm-up from the measured block


def peak_memory(build: Callable[[], nn.Module], shape: Tuple[int, ...], batch: int, warmup: int, steps: int,
                tau: float) -> Tuple[float, float]:
    """(transient, total) peak MiB of ``steps`` train steps of a freshly built network.

    The network, its optimizer and the batch are created *inside* the profiler, so every
    allocation and every free is on the timeline (a tensor created before profiling starts has
    no size there, and a persistent buffer replaced during the block — e.g. the Björck layers'
    reference copy — would otherwise count as new memory without the free of the one it
    replaces). ``total``: the most bytes alive at once during the block (parameters, optimizer
    state, batch, every kept buffer, activations, temporaries); ``transient``: that minus what
    was alive when the block started.
    """
    gc.collect()  # objects of an earlier measurement must not be freed inside this one
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                record_shapes=True, with_stack=True) as prof:
        torch.manual_seed(0)
        runner = Runner(build(), shape, batch, 0, tau)
        gc.collect()
        for _ in range(max(warmup, 1)):
            runner.step()
        mark = torch.empty(_MARK, dtype=torch.uint8)
        del mark
        for _ in range(steps):
            runner.step()
    cur, base, peak = 0, None, 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            if base is None and size == _MARK:
                base = peak = cur
                continue
            cur += size
        elif action == Action.DESTROY:
            if base is not None and size == _MARK and cur == base:
                continue
            cur -= size
        if base is not None:
            peak = max(peak, cur)
    if base is None:
        raise RuntimeError("memory timeline: the marker allocation was not recorded")
    return (peak - base) / 2**20, peak / 2**20


def measure(name: str, batch: int, warmup: int, rounds: int, steps: int, memory: bool, tau: float) -> List[Tuple]:
    build, shape = NETWORKS[name]
    builders = variants(build, shape)
    runners = {}
    for k, make in builders.items():
        torch.manual_seed(0)
        runners[k] = Runner(make(), shape, batch, 0, tau)
    for r in runners.values():
        for _ in range(warmup):
            r.step()
    best = {k: float("inf") for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            best[k] = min(best[k], r.timed_block(steps))
    nan = (float("nan"), float("nan"))
    peaks = {k: (peak_memory(builders[k], shape, batch, warmup, steps, tau) if memory else nan) for k in runners}
    return [(name, k, 1e3 * best[k], best[k] / best["plain"], *peaks[k], peaks[k][0] / peaks["plain"][0],
             peaks[k][1] / peaks["plain"][1]) for k in runners]


def epoch(names: List[str], batch: int, data_dir: Optional[str], tau: float) -> List[Tuple]:
    """One MNIST epoch per MNIST-shaped network, plain and GNP interleaved batch by batch."""
    from liplayers.data import load_idx_dataset

    train, test = load_idx_dataset("mnist", data_dir)
    x_all, y_all = train.tensors
    xt, yt = test.tensors
    rows = []
    for name in names:
        build, shape = NETWORKS[name]
        if shape != MNIST:
            continue
        runners = {}
        for k, make in variants(build, shape).items():
            torch.manual_seed(0)
            runners[k] = Runner(make(), shape, 1, 0, tau)
        perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(1))
        spent = {k: 0.0 for k in runners}
        for i in range(len(x_all) // batch):
            idx = perm[i * batch:(i + 1) * batch]
            xb, yb = x_all[idx], y_all[idx]
            for k, r in runners.items():
                t = time.perf_counter()
                r.step(xb, yb)
                spent[k] += time.perf_counter() - t
        for k, r in runners.items():
            r.model.eval()
            with torch.no_grad():
                correct = sum(int((r.model(xt[j:j + 1000]).argmax(1) == yt[j:j + 1000]).sum())
                              for j in range(0, len(xt), 1000))
            rows.append((name, k, spent[k], spent[k] / spent["plain"], correct / len(xt)))
    return rows


def max_min_torch_ops(x: Tensor, dim: int) -> Tensor:
    """MaxMin from torch ops (the implementation before the fused kernel), for reference."""
    dim = dim % x.dim()
    shape = x.shape
    grouped = x.reshape(*shape[:dim], shape[dim] // 2, 2, *shape[dim + 1:])
    a, b = grouped.unbind(dim + 1)
    return torch.stack((torch.minimum(a, b), torch.maximum(a, b)), dim=dim + 1).reshape(shape)


ACTIVATION_SHAPES = [((256, 32, 28, 28), 1), ((256, 64, 14, 14), 1), ((256, 64, 7, 7), 1), ((256, 512), -1)]


def activation_alone(rounds: int, compiled: bool) -> List[Tuple]:
    """(shape, dim, ms ReLU, MaxMin torch ops, MaxMin library[, compiled]): forward + backward, min over rounds."""
    rows = []
    for shape, dim in ACTIVATION_SHAPES:
        x = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape)
        fns = {"relu": torch.relu, "ops": lambda t: max_min_torch_ops(t, dim), "lib": lambda t: max_min(t, dim)}
        if compiled:
            torch._dynamo.reset()
            fns["compiled"] = torch.compile(lambda t: max_min(t, dim), fullgraph=True, dynamic=False)
        best = {k: float("inf") for k in fns}
        for _ in range(rounds + 2):  # the first rounds warm up (and compile)
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
    ap.add_argument("--steps", type=int, default=DEFAULT_RETRACT_EVERY, help="train steps per timed block")
    ap.add_argument("--warmup", type=int, default=2, help="untimed train steps per network first")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--tau", type=float, default=10.0, help="temperature of the cross-entropy (both networks)")
    ap.add_argument("--networks", default=",".join(NETWORKS), help="comma-separated subset of: " + ", ".join(NETWORKS))
    ap.add_argument("--no-memory", action="store_true", help="skip the profiler's peak-memory pass")
    ap.add_argument("--epoch", action="store_true", help="also time one MNIST epoch (MNIST-shaped networks)")
    ap.add_argument("--data-dir", default=None, help="directory of the MNIST IDX files (else $LIPLAYERS_DATA)")
    ap.add_argument("--compiled-activation", action="store_true",
                    help="add a torch.compile (inductor) column to the activation table")
    ap.add_argument("--quick", action="store_true", help="1 warm-up step, 2 rounds, no memory pass")
    args = ap.parse_args()
    if args.quick:
        args.warmup, args.rounds, args.no_memory = 1, 2, True
    if min(args.rounds, args.steps, args.threads, args.batch) < 1 or args.warmup < 0 or not args.tau > 0:
        ap.error("--rounds, --steps, --threads and --batch must be >= 1, --warmup >= 0, --tau > 0")
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.networks.split(",") if n.strip()]
    unknown = [n for n in names if n not in NETWORKS]
    if unknown:
        ap.error(f"unknown network(s) {unknown}; choose from {list(NETWORKS)}")

    t0 = time.perf_counter()
    print(f"train step (forward + cross-entropy(τ = {args.tau:g}) + backward + Adam), batch {args.batch}, "
          f"float32, {args.threads} thread(s), random inputs; min over {args.rounds} rounds of the mean of "
          f"{args.steps} consecutive steps, after {args.warmup} warm-up steps; peak = profiler memory "
          f"timeline of {args.steps} steps; Björck layers retract every {DEFAULT_RETRACT_EVERY} steps "
          f"(default) or when drifted\n")
    print("| network | variant | step ms | × plain | transient peak MiB | × plain | total peak MiB | × plain |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for n in names:
        for net, var, ms, r, mib, tot, rm, rtot in measure(n, args.batch, args.warmup, args.rounds, args.steps,
                                                           not args.no_memory, args.tau):
            mem = "| | | |" if mib != mib else f"| {mib:.1f} | {rm:.2f} | {tot:.1f} | {rtot:.2f} |"
            print(f"| {net} | {var} | {ms:.1f} | {r:.2f} {mem}", flush=True)
    if args.epoch:
        print(f"\none MNIST epoch (batch {args.batch}, plain and GNP steps interleaved):\n")
        print("| network | variant | epoch s | × plain | test accuracy |")
        print("|---|---|---:|---:|---:|")
        for net, var, s, r, acc in epoch(names, args.batch, args.data_dir, args.tau):
            print(f"| {net} | {var} | {s:.1f} | {r:.2f} | {acc:.4f} |", flush=True)
    print("\nthe activation alone, forward + backward (ms):\n")
    extra = " | MaxMin compiled" if args.compiled_activation else ""
    print(f"| input | dim | ReLU | MaxMin torch ops | MaxMin{extra} |")
    print("|---|---:|---:|---:|---:|" + ("---:|" if args.compiled_activation else ""))
    for shape, dim, *ms in activation_alone(args.rounds, args.compiled_activation):
        print(f"| {'×'.join(map(str, shape))} | {dim} | " + " | ".join(f"{v:.2f}" for v in ms) + " |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
