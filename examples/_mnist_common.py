"""Shared helpers of the MNIST experiments (``examples/mnist_*.py``; not part of the library API).

* data: MNIST from IDX files (``--data-dir``, via :func:`liplayers.data.load_dataset`), a
  deterministic random subset of ``--n-train`` / ``--n-test`` images, or ``--synthetic``
  28×28 ten-class data (class prototypes plus noise) so the scripts run without the files;
* models: the LeNet of Shi-Garrier et al. 2024 (conv 32 → conv 64 → dense 128), the small CNN of
  Zhang et al. 2019 used by Picot et al. 2022 on MNIST, and a small GNP convolutional network;
* a plain training loop that times every epoch, and the step-time measurement used to
  compare two objectives interleaved (alternating A, B, A, B so that load changes hit both);
* evaluation: clean accuracy, L∞/L2 PGD accuracy (:func:`liplayers.analysis.attacks.pgd_attack`),
  AutoAttack through ``torchattacks`` when it is installed, Gaussian-noise accuracy.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from _common import progress  # noqa: E402
from liplayers.analysis.attacks import pgd_attack  # noqa: E402
from liplayers.data import load_dataset  # noqa: E402
from liplayers.zoo.architectures import gnp_conv_net  # noqa: E402

Data = Tuple[Tensor, Tensor, Tensor, Tensor]


# --------------------------------------------------------------------------- data
def add_data_args(p: argparse.ArgumentParser, n_train: int, n_test: int) -> None:
    """``--data-dir``, ``--synthetic``, ``--n-train``, ``--n-test``, ``--device``."""
    p.add_argument("--data-dir", default=None, help="folder with the MNIST IDX .gz files (or $LIPLAYERS_DATA)")
    p.add_argument("--synthetic", action="store_true", help="synthetic 28x28 ten-class data instead of MNIST")
    p.add_argument("--n-train", type=int, default=n_train, help="training images (random subset; 0 = all)")
    p.add_argument("--n-test", type=int, default=n_test, help="test images (random subset; 0 = all)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")


def synthetic_mnist(n_train: int, n_test: int, seed: int = 0) -> Data:
    """Ten smooth 28×28 prototypes in [0, 1], samples = shifted prototype + noise (learnable, not trivial)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
    protos = []
    for _ in range(10):
        c = torch.rand(3, 2, generator=g) * 1.2 - 0.6
        img = sum(torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.08) for cx, cy in c)
        protos.append(img / img.max())
    protos = torch.stack(protos)

    def draw(n):
        y = torch.randint(0, 10, (n,), generator=g)
        shift = torch.randint(-2, 3, (n, 2), generator=g)
        x = torch.stack([torch.roll(protos[c], (int(s[0]), int(s[1])), (0, 1)) for c, s in zip(y, shift)])
        x = (x + 0.25 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        return x[:, None].float(), y

    x_tr, y_tr = draw(n_train)
    x_te, y_te = draw(n_test)
    return x_tr, y_tr, x_te, y_te


def _subset(x: Tensor, y: Tensor, n: int, seed: int) -> Tuple[Tensor, Tensor]:
    if not n or n >= x.shape[0]:
        return x, y
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def load_data(args: argparse.Namespace, seed: int = 0) -> Tuple[Data, str]:
    """``((x_tr, y_tr, x_te, y_te), description)`` on ``args.device``; subsets are fixed by ``seed``."""
    if args.synthetic:
        data, name = synthetic_mnist(args.n_train or 2000, args.n_test or 500, seed), "synthetic 28x28"
    else:
        train, test = load_dataset("mnist", args.data_dir)
        x_tr, y_tr = _subset(*train.tensors, args.n_train, seed)
        x_te, y_te = _subset(*test.tensors, args.n_test, seed + 1)
        data, name = (x_tr, y_tr, x_te, y_te), "MNIST"
    dev = torch.device(args.device)
    data = tuple(t.to(dev) for t in data)
    return data, f"{name}: {data[0].shape[0]} train / {data[2].shape[0]} test images"


# --------------------------------------------------------------------------- models
def lenet(num_classes: int = 10, channels: Sequence[int] = (32, 64), hidden: int = 128) -> nn.Sequential:
    """LeNet of Shi-Garrier et al. 2024 §4.2: conv3×3(32) → ReLU → conv3×3(64) → ReLU → maxpool 2 → dense 128 → 10."""
    c1, c2 = channels
    return nn.Sequential(nn.Conv2d(1, c1, 3), nn.ReLU(), nn.Conv2d(c1, c2, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(c2 * 12 * 12, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def small_cnn(num_classes: int = 10, dropout: float = 0.5) -> nn.Sequential:
    """The MNIST CNN of Zhang et al. 2019 (TRADES), used by Picot et al. 2022: 4 convs (32, 32, 64, 64), 200, 200."""
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 4 * 4, 200), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, num_classes))


def gnp_cnn(width: int = 16, hidden: int = 128, num_classes: int = 10) -> nn.Module:
    """GNP network: orthogonal convs + MaxMin, two stride-2 stages, Björck dense head (1-Lipschitz)."""
    return gnp_conv_net(1, num_classes, 28, width=width, blocks=2, convs_per_block=1, hidden=hidden)


# --------------------------------------------------------------------------- training
def train(model: nn.Module, loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor], x: Tensor, y: Tensor, *,
          epochs: int, batch_size: int, optimizer: torch.optim.Optimizer, seed: int,
          scheduler=None, set_epoch: Optional[Callable[[int], None]] = None,
          after_step: Optional[Callable[[], None]] = None, desc: str = "") -> Dict[str, List[float]]:
    """Mini-batch training; ``loss_fn(model, x, y)``. Returns per-epoch wall times and mean losses."""
    g = torch.Generator().manual_seed(seed)
    times, losses = [], []
    for epoch in progress(range(epochs), desc=desc):
        if set_epoch is not None:
            set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(x.shape[0], generator=g).to(x.device)
        tot, nb = 0.0, 0
        for s in range(0, x.shape[0], batch_size):
            idx = perm[s:s + batch_size]
            loss = loss_fn(model, x[idx], y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            tot, nb = tot + float(loss.detach()), nb + 1
        if scheduler is not None:
            scheduler.step()
        _sync(x.device)
        times.append(time.perf_counter() - t0)
        losses.append(tot / max(nb, 1))
    model.eval()
    return {"epoch_s": times, "loss": losses}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(steps: Dict[str, Callable[[], None]], rounds: int, warmup: int = 1,
                     device="cpu") -> Dict[str, List[float]]:
    """Wall time of each callable, run alternately (A, B, A, B, …) ``rounds`` times after ``warmup`` rounds."""
    out: Dict[str, List[float]] = {k: [] for k in steps}
    for r in range(warmup + rounds):
        order = list(steps.items()) if r % 2 == 0 else list(reversed(list(steps.items())))
        for name, fn in order:
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if r >= warmup:
                out[name].append(time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 500) -> Tensor:
    model.eval()
    return torch.cat([model(x[s:s + batch_size]).argmax(1) for s in range(0, x.shape[0], batch_size)])


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((predict(model, x) == y).float().mean())


def pgd_correct(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, norm: str = "linf", steps: int = 40,
                step_size: Optional[float] = 0.01, seed: int = 0, batch_size: int = 250) -> Tensor:
    """(N,) bool: correct after an untargeted PGD attack (margin loss, random start, best iterate kept)."""
    model.eval()
    g = torch.Generator(device=x.device).manual_seed(seed)
    ok = []
    for s in range(0, x.shape[0], batch_size):
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        adv = pgd_attack(model, xb, yb, eps, norm=norm, steps=steps, step_size=step_size, domain=(0.0, 1.0),
                         generator=g)
        with torch.no_grad():
            ok.append(model(adv).argmax(1) == yb)
    return torch.cat(ok)


def have_torchattacks() -> bool:
    try:
        import torchattacks  # noqa: F401
    except Exception:
        return False
    return True


def autoattack_correct(model: nn.Module, x: Tensor, y: Tensor, eps: float, version: str = "standard",
                       steps: int = 100, seed: int = 0, batch_size: int = 250) -> Optional[Tensor]:
    """(N,) bool under AutoAttack (torchattacks), or None when torchattacks is missing.

    ``version="standard"``: ``torchattacks.AutoAttack`` (APGD-CE, APGD-T, FAB-T, Square, with
    torchattacks' own step counts); ``"apgd"``: its two gradient components only, APGD-CE and
    APGD-T with ``steps`` iterations (the parameter-free part of AutoAttack, much cheaper than
    Square's 5000 queries on a CPU).
    """
    if not have_torchattacks():
        return None
    import torchattacks

    model.eval()
    if version == "standard":
        atk = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=seed)
    elif version == "apgd":
        atk = torchattacks.MultiAttack([
            torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, loss="ce", seed=seed),
            torchattacks.APGDT(model, norm="Linf", eps=eps, steps=steps, n_classes=10, seed=seed)])
    else:
        raise ValueError(f"version must be 'standard' or 'apgd', got {version!r}")
    ok = []
    for s in range(0, x.shape[0], batch_size):
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        adv = atk(xb, yb)
        with torch.no_grad():
            ok.append(model(adv).argmax(1) == yb)
    return torch.cat(ok)


@torch.no_grad()
def noise_accuracy(model: nn.Module, x: Tensor, y: Tensor, sigma: float, draws: int = 4, seed: int = 0) -> float:
    """Mean accuracy under additive Gaussian noise N(0, σ²I), clamped to [0, 1]."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    accs = []
    for _ in range(draws):
        xn = (x + sigma * torch.randn(x.shape, generator=g, device=x.device)).clamp(0, 1)
        accs.append(accuracy(model, xn, y))
    return float(np.mean(accs))


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    v = [float(a) for a in values if a is not None and not (isinstance(a, float) and math.isnan(a))]
    if not v:
        return float("nan"), float("nan")
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)


def fmt_ms(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± std`` (or the single value)."""
    m, s = mean_std(values)
    if math.isnan(m):
        return "—"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")
