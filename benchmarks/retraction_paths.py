"""How the amortized retraction of ``BjorckLinear`` bounds each training step on real data.

Trains the 784-512-512-10 Björck MLP (MaxMin, cross-entropy at temperature 10, Adam lr 1e-3,
batch 256, one thread) on MNIST for ``--steps`` steps and times every bound / retraction of the
weights (``BjorckOrthonormal._update``), by layer and path: ``free`` (‖R‖₂ + ‖V − R‖_F),
``gram`` (Gram matrix, Lanczos and a Cholesky-proved eigenvalue bound) or ``retraction``.
Also reports the median bound b of the first layer (its training weight is V / b).

    python benchmarks/retraction_paths.py --data-dir DATA [--retract-every 16] [--max-drift 0.25]
        [--gradient canonical|embedded|euclidean] [--steps 234]
"""
from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
import torch.nn.functional as F

import liplayers as L
from liplayers.data import load_idx_dataset
from liplayers.parametrizations import bjorck
from network_cost import mlp  # the same MLP as the network-cost table (this script's folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="directory of the MNIST IDX files (else $LIPLAYERS_DATA)")
    ap.add_argument("--retract-every", type=int, default=bjorck.DEFAULT_RETRACT_EVERY)
    ap.add_argument("--max-drift", type=float, default=bjorck.DEFAULT_MAX_DRIFT)
    ap.add_argument("--gradient", choices=("canonical", "embedded", "euclidean"), default="canonical")
    ap.add_argument("--steps", type=int, default=234, help="train steps (234: one epoch)")
    args = ap.parse_args()
    if args.steps < 1 or args.steps * 256 > 60000:
        ap.error("--steps must be in [1, 234]")
    torch.set_num_threads(1)
    train, _ = load_idx_dataset("mnist", args.data_dir)
    x, y = train.tensors
    x = x.float().reshape(len(x), -1)
    x = x / 255 if x.max() > 1.5 else x
    torch.manual_seed(0)
    net = mlp()
    option = False if args.gradient == "euclidean" else args.gradient
    for m in net.modules():
        if isinstance(m, L.BjorckLinear):
            m.riemannian_grad = option
            m.parametrization.retract_every, m.parametrization.max_drift = args.retract_every, args.max_drift
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    spent, count, bounds = collections.defaultdict(float), collections.Counter(), []
    update = bjorck.BjorckOrthonormal._update

    def timed(self, v):
        t = time.perf_counter()
        s = update(self, v)
        key = (tuple(v.shape), self.last_path)
        spent[key] += time.perf_counter() - t
        count[key] += 1
        if v.shape[1] == 784:
            bounds.append(self.last_bound)
        return s

    bjorck.BjorckOrthonormal._update = timed
    perm = torch.randperm(60000, generator=torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    for i in range(args.steps):
        idx = perm[i * 256:(i + 1) * 256]
        loss = F.cross_entropy(net(x[idx]) * 10, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    total = time.perf_counter() - t0
    bjorck.BjorckOrthonormal._update = update
    n = args.steps
    print(f"{args.gradient} gradient, retract_every {args.retract_every}, max_drift {args.max_drift}: "
          f"{1e3 * total / n:.1f} ms per step, of which bounds and retractions {1e3 * sum(spent.values()) / n:.1f} ms; "
          f"final loss {loss.item():.3f}\n")
    print("| weight | path | steps | share | ms each |")
    print("|---|---|---:|---:|---:|")
    for key in sorted(count):
        print(f"| {key[0][0]}×{key[0][1]} | {key[1]} | {count[key]} | {count[key] / n:.0%} | {1e3 * spent[key] / count[key]:.2f} |")
    print(f"\nmedian bound b of the 512×784 weight: {statistics.median(bounds):.3f}")


if __name__ == "__main__":
    main()
