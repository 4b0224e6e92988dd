"""End-to-end: every layer family, trained briefly, in float32, float64 and bfloat16; the points
it certifies are attacked inside their radii (our PGD with restarts): 0 violations."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attack_sweep import FAMILIES, sweep_one  # noqa: E402

TOTAL = {"points": 0}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_no_violation_inside_certified_radii(name, dtype):
    try:
        points, violations = sweep_one(name, dtype, n_points=8, steps=10, restarts=2)
    except (RuntimeError, NotImplementedError, TypeError) as exc:  # an op without a kernel for this dtype
        if dtype is torch.bfloat16:
            pytest.skip(f"{name} does not run in bfloat16 here: {exc}")
        raise
    TOTAL["points"] += points
    assert violations == 0


def test_the_attack_finds_violations_of_an_understated_bound():
    """The sweep can fail: a layer claiming a tenth of its real bound is caught by the attack."""
    from liplayers import certify as C
    import liplayers as L

    class Liar(L.BjorckLinear):
        def lipschitz_bound(self, input_shape=None):
            return 0.1 * super().lipschitz_bound(input_shape)

    torch.manual_seed(0)
    model = L.Sequential(Liar(8, 8), L.MaxMin(), L.BjorckLinear(8, 3)).eval()
    x = torch.randn(16, 8)
    _, radius = C.certify(model, x)
    report = C.attack_check(model, x, radius=radius, steps=20, restarts=2, torchattacks=None)
    assert report.violations > 0
