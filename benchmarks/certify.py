"""Cost of certification: Lipschitz bound, certified accuracy, randomized smoothing.

Measures, on a GNP MLP (BjorckLinear + MaxMin, MNIST-sized 784 → 10, random inputs):

* ``lipschitz_bound`` of the whole network (exact float64 SVD per layer);
* ``certified_accuracy`` over N samples, against a plain eval forward over the same samples
  (the overhead is one bound per call plus the margins: it should be a small factor);
* ``lipschitz_lower_bound`` at 64 points (C = 10 vector–Jacobian products + SVD per point);
* ``SmoothedClassifier.certify`` (Cohen et al.) per input, with n0 = 100 and n samples;
* ``attack_check`` with our PGD (50 steps) on 256 points.

Each measurement is the minimum over ``--repeats`` runs (robust to noise from other
processes on a shared CPU).

    python benchmarks/certify.py [--n 10000] [--width 512] [--smooth-n 10000] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import torch

import liplayers as L
from liplayers.certify import (
    SmoothedClassifier,
    attack_check,
    certified_accuracy,
    lipschitz_bound,
    lipschitz_lower_bound,
)


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: lazy imports (scipy), caches
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000, help="samples for certified_accuracy")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--smooth-points", type=int, default=10)
    ap.add_argument("--smooth-n", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    w = args.width
    net = L.Sequential(L.BjorckLinear(784, w), L.MaxMin(), L.BjorckLinear(w, w), L.MaxMin(),
                       L.BjorckLinear(w, w // 2), L.MaxMin(), L.BjorckLinear(w // 2, 10)).eval()
    x = torch.rand(args.n, 784)
    y = torch.randint(0, 10, (args.n,))

    def forward():
        with torch.no_grad():
            for s in range(0, args.n, args.batch):
                net(x[s:s + args.batch])

    rows = []
    t_fwd = best_time(forward, args.repeats)
    rows.append((f"eval forward, {args.n} samples", t_fwd, 1.0))
    t_bound = best_time(lambda: lipschitz_bound(net, (784,)), args.repeats)
    rows.append(("lipschitz_bound (4 layers, exact SVD)", t_bound, t_bound / t_fwd))
    res = None

    def cert():
        nonlocal res
        res = certified_accuracy(net, (x, y), eps=[0.0, 0.1, 0.5, 1.0], batch_size=args.batch)

    t_cert = best_time(cert, args.repeats)
    rows.append((f"certified_accuracy, {args.n} samples, 4 eps", t_cert, t_cert / t_fwd))
    t_lower = best_time(lambda: lipschitz_lower_bound(net, x[:64], steps=0), args.repeats)
    rows.append(("lipschitz_lower_bound, 64 points", t_lower, t_lower / t_fwd))
    t_att = best_time(lambda: attack_check(net, x[:256], steps=50, torchattacks=None), 1)
    rows.append(("attack_check (our PGD, 50 steps), 256 points", t_att, t_att / t_fwd))

    smooth = SmoothedClassifier(net, sigma=0.25)
    pts = x[:args.smooth_points]

    def smooth_cert():
        smooth.certify(pts, n0=100, n=args.smooth_n, alpha=0.001, batch_size=args.batch,
                       generator=torch.Generator().manual_seed(0))

    t_smooth = best_time(smooth_cert, args.repeats)
    rows.append((f"SmoothedClassifier.certify, {args.smooth_points} pts, n={args.smooth_n}", t_smooth,
                 t_smooth / t_fwd))
    per_point = t_smooth / args.smooth_points

    print(f"GNP MLP 784-{w}-{w}-{w // 2}-10, threads={args.threads}, batch={args.batch}, min of {args.repeats}")
    print(f"| {'measurement':<52} | {'time (s)':>9} | {'÷ forward':>9} |")
    print(f"|{'-' * 54}|{'-' * 11}|{'-' * 11}|")
    for name, t, ratio in rows:
        print(f"| {name:<52} | {t:>9.4f} | {ratio:>9.2f} |")
    print(f"smoothing: {per_point:.3f} s per certified input; Lipschitz certificate: "
          f"{t_cert / args.n * 1e6:.1f} µs per input")
    print(f"(random inputs: clean accuracy {res.clean_accuracy:.3f}, L = {res.lipschitz:.6f})")


if __name__ == "__main__":
    main()
