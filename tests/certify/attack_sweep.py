"""Models built from every layer family, trained briefly, certified and attacked inside their radii.

Shared by ``tests/certify/test_attack_sweep.py`` (small) and ``benchmarks/soundness_sweep.py`` (large).
"""
from __future__ import annotations

import torch
from torch import nn

import liplayers as L
from liplayers import certify as C
from liplayers.nn.aol import AOLConv2d, AOLLinear
from liplayers.nn.bro import BROConv2d, BROLinear
from liplayers.nn.cayley import CayleyConv2d
from liplayers.nn.cholesky import CholeskyLinear
from liplayers.nn.cpl import CPLConv2d, CPLLinear
from liplayers.nn.last_layer import LastLayerNormalizedLinear
from liplayers.nn.residual_conv import LinearResidualConv2d
from liplayers.nn.sll import SLLConv2d, SLLLinear
from liplayers.nn.soc import SOCConv2d

D, C_IN, HW, K = 8, 4, 6, 3  # dense width, conv channels, image size, classes


def _dense(layer):
    return lambda dt: L.Sequential(layer(dt), L.MaxMin(), L.BjorckLinear(D, K, dtype=dt))


def _conv(layer):
    return lambda dt: L.Sequential(layer(dt), L.MaxMin(), nn.Flatten(), L.BjorckLinear(C_IN * HW * HW, K, dtype=dt))


FAMILIES = {
    "bjorck": _dense(lambda dt: L.BjorckLinear(D, D, dtype=dt)),
    "spectral": _dense(lambda dt: L.SpectralLinear(D, D, dtype=dt)),
    "aol": _dense(lambda dt: AOLLinear(D, D, dtype=dt)),
    "cholesky": _dense(lambda dt: CholeskyLinear(D, D, dtype=dt)),
    "bro": _dense(lambda dt: BROLinear(D, D, dtype=dt)),
    "cpl": _dense(lambda dt: CPLLinear(D, dtype=dt)),
    "sll": _dense(lambda dt: SLLLinear(D, dtype=dt)),
    "lln-head": lambda dt: L.Sequential(L.BjorckLinear(D, D, dtype=dt), L.MaxMin(), LastLayerNormalizedLinear(D, K, dtype=dt)),
    "bcop": _conv(lambda dt: L.OrthoConv2d(C_IN, C_IN, 3, padding="same", dtype=dt)),
    "spectral-conv": _conv(lambda dt: L.SpectralConv2d(C_IN, C_IN, 3, padding="same", dtype=dt)),
    "rko": _conv(lambda dt: L.RKOConv2d(C_IN, C_IN, 3, padding="same", dtype=dt)),
    "aol-conv": _conv(lambda dt: AOLConv2d(C_IN, C_IN, 3, padding=1, dtype=dt)),
    "cpl-conv": _conv(lambda dt: CPLConv2d(C_IN, 3, dtype=dt)),
    "sll-conv": _conv(lambda dt: SLLConv2d(C_IN, dtype=dt)),
    "soc": _conv(lambda dt: SOCConv2d(C_IN, C_IN, 3, dtype=dt)),
    "cayley": _conv(lambda dt: CayleyConv2d(C_IN, C_IN, 3, dtype=dt)),
    "bro-conv": _conv(lambda dt: BROConv2d(C_IN, C_IN, 3, dtype=dt)),
    "linear-residual": _conv(lambda dt: LinearResidualConv2d(C_IN, C_IN, 3, dtype=dt)),
}
CONV = {"bcop", "spectral-conv", "rko", "aol-conv", "cpl-conv", "sll-conv", "soc", "cayley", "bro-conv",
        "linear-residual"}


def data(name: str, n: int, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (C_IN, HW, HW) if name in CONV else (D,)
    x = torch.randn(n, *shape, generator=g).to(dtype)
    y = torch.randint(0, K, (n,), generator=g)
    return x, y


def build_and_train(name: str, dtype, steps: int = 5, seed: int = 0):
    torch.manual_seed(seed)
    model = FAMILIES[name](dtype)
    x, y = data(name, 32, dtype, seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def sweep_one(name: str, dtype, n_points: int = 16, steps: int = 20, restarts: int = 2, seed: int = 0,
              torchattacks=None):
    """(points certified and attacked, violations) for one family and dtype."""
    model = build_and_train(name, dtype, seed=seed)
    x, _ = data(name, n_points, dtype, seed + 1)
    pred, radius = C.certify(model, x)
    keep = radius > 0
    if not bool(keep.any()):
        return 0, 0
    report = C.attack_check(model, x[keep], radius=radius[keep], steps=steps, restarts=restarts,
                            torchattacks=torchattacks, generator=torch.Generator().manual_seed(seed))
    if torchattacks and report.skipped:
        print(f"{name}/{dtype}: torchattacks skipped: {report.skipped}")
    return int(keep.sum()), int(report.violations)
