"""Time per training step of the information-geometric regularizers.

Same small CNN (2 conv layers + dense, MNIST-sized 1x28x28 random input, 10 classes),
same batch, one SGD step each of: CE, TRADES, FIRE, Hellinger, ISO-exact, ISO-randomized,
ISO-rand-frob, JAC.  ISO-randomized is the single-probe unbiased estimator of the squared
Gaussian-deviation penalty (``deviation="gaussian"``, one JVP); ISO-rand-frob the
two-probe U-statistic, unbiased for the squared Frobenius penalty of eq. 14 of Shi-Garrier et al.
(2024).  Methods are interleaved within each repeat and the minimum over repeats is reported
(robust to noise from other processes sharing the CPU), with the ratio to CE.

    python benchmarks/regularizers.py [--batch 64] [--repeats 7] [--threads 1] [--pgd-steps 10]

Goal: ISO-randomized <= 3x CE, FIRE no slower than TRADES (same PGD budget).
Shi-Garrier, Bouaynaya & Delahaye ("Adversarial Robustness with Partial Isometry", Entropy 2024,
§4.2) report ISO training at about 12x plain training.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from liplayers.losses import FIRELoss, HellingerLoss, TRADESLoss
from liplayers.regularizers import ISOLoss, JacobianLoss


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pgd-steps", type=int, default=10)
    ap.add_argument("--probes", type=int, default=2, help="JVP probes of ISO-rand-frob (>= 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.rand(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    gen = torch.Generator().manual_seed(args.seed)
    eps = 0.3  # MNIST L-inf budget of Picot et al. (2022)
    pgd = dict(eps=eps, norm="linf", steps=args.pgd_steps, step_size=0.01, generator=gen)

    methods = {
        "CE": lambda: F.cross_entropy(model(x), y),
        "TRADES": TRADESLoss(**pgd),
        "FIRE": FIRELoss(**pgd),
        "Hellinger": HellingerLoss(**pgd),
        "ISO-exact": ISOLoss(eps=1.0, lam=0.005, estimator="exact"),
        # unbiased for alpha^2 (Frobenius form, eq. 14 of Shi-Garrier et al. 2024): U-statistic of `--probes` JVPs
        "ISO-rand-frob": ISOLoss(eps=1.0, lam=0.005, estimator="randomized", squared=True,
                                 num_probes=args.probes, generator=gen),
        # unbiased for the Gaussian-deviation form ((tr A)^2 + 2||A||_F^2) from ONE JVP
        "ISO-randomized": ISOLoss(eps=1.0, lam=0.005, estimator="randomized", squared=True,
                                  deviation="gaussian", num_probes=1, generator=gen),
        "JAC": JacobianLoss(lam=0.01, num_probes=1, estimator="jvp", generator=gen),
    }

    def step(name: str) -> float:
        fn = methods[name]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = fn() if name == "CE" else fn(model, x, y)
        loss.backward()
        opt.step()
        t = time.perf_counter() - t0
        if not torch.isfinite(loss):
            raise RuntimeError(f"{name}: non-finite loss")
        return t

    for _ in range(args.warmup):
        for name in methods:
            step(name)
    best = {name: float("inf") for name in methods}
    for _ in range(args.repeats):
        for name in methods:
            best[name] = min(best[name], step(name))

    ce = best["CE"]
    print(f"small CNN, batch {args.batch}, 1x28x28, 10 classes, {args.threads} thread(s), "
          f"PGD steps {args.pgd_steps}, ISO-rand-frob probes {args.probes}; min over {args.repeats} interleaved repeats")
    print(f"{'method':<16}{'ms/step':>10}{'x CE':>8}")
    for name, t in best.items():
        print(f"{name:<16}{1e3 * t:>10.1f}{t / ce:>8.2f}")
    print(f"goal: ISO-randomized <= 3x CE: {'met' if best['ISO-randomized'] <= 3 * ce else 'NOT met'}; "
          f"FIRE <= TRADES: {'met' if best['FIRE'] <= best['TRADES'] else 'NOT met'} "
          f"(FIRE/TRADES = {best['FIRE'] / best['TRADES']:.2f})")


if __name__ == "__main__":
    main()
