"""Generated sweep over every type of the bound registries: refused, or bound ≥ measured constant.

For each registered type (and each liplayers module with argument-dependent bounds), arguments are
drawn from their whole range — negative, zero, huge, non-finite, boundary values, values changed
after construction — with small input shapes, including inputs smaller than the window. Each draw
is either refused (UnboundedModuleError / ValueError) or its L2 and ∞ bounds are at least the
constant measured independently in float64 (Jacobian norms at random points, finite differences
over close and far pairs, and a dense grid for elementwise maps). ``benchmarks/soundness_sweep.py``
runs the same sweep with many more draws and reports the counts.
"""
from __future__ import annotations

import collections
import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import liplayers as L
from liplayers.lipschitz import L2_BOUNDS, LINF_BOUNDS
from liplayers.lipschitz import torch_activations as ta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sweep's shared strategy modules
from sweep_check import check  # noqa: E402
from sweep_strategies import ours, strategy_for  # noqa: E402

TORCH_TYPES = sorted(set(L2_BOUNDS.bounds) | set(LINF_BOUNDS.bounds), key=lambda t: t.__name__)
TORCH_TYPES = [t for t in TORCH_TYPES if t.__module__.startswith("torch.")]
OURS = [L.GroupSort, L.MaxMin, L.FullSort, L.Residual, L.L2NormPool2d, L.ScaledAvgPool2d, L.GlobalL2Pool2d,
        L.HouseholderActivation, L.LinearResidualConv2d, L.AOLLinear, L.AOLConv2d, L.CPLLinear, L.CPLConv2d,
        L.SLLLinear, L.SLLConv2d, L.SOCConv2d, L.CayleyConv2d, L.BROConv2d, L.BROLinear, L.CholeskyLinear,
        L.LastLayerNormalizedLinear]
ELEMENTWISE = set(ta._CONSTANTS) | {torch.nn.ELU, torch.nn.CELU, torch.nn.LeakyReLU, torch.nn.RReLU,
                                    torch.nn.Softshrink}
COUNTS: dict = collections.defaultdict(collections.Counter)
SETTINGS = settings(max_examples=6, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def test_every_registered_torch_type_has_a_strategy():
    missing = [t.__name__ for t in TORCH_TYPES if strategy_for(t) is None]
    assert not missing, f"registered types the sweep does not cover: {missing}"
    assert len(TORCH_TYPES) >= 60


@pytest.mark.parametrize("cls", TORCH_TYPES, ids=lambda t: t.__name__)
def test_torch_type_bound_sound(cls):
    @SETTINGS
    @given(st.data())
    def run(data):
        m, shape = data.draw(strategy_for(cls))
        gen = torch.Generator().manual_seed(0)
        COUNTS[cls.__name__][check(m, shape, gen, elementwise=cls in ELEMENTWISE and cls is not torch.nn.PReLU)] += 1

    run()


@pytest.mark.parametrize("cls", OURS, ids=lambda t: t.__name__)
def test_liplayers_module_bound_sound(cls):
    @SETTINGS
    @given(st.data())
    def run(data):
        m, shape = data.draw(ours(cls))
        gen = torch.Generator().manual_seed(0)
        COUNTS[cls.__name__][check(m, shape, gen)] += 1

    run()


def test_sweep_counts():
    """Every type was exercised; most have both accepted and refused draws (the sweep can fail)."""
    total = sum(sum(c.values()) for c in COUNTS.values())
    checked = sum(c["checked"] for c in COUNTS.values())
    print(f"\nsoundness sweep: {total} configurations, {checked} bounded and checked, "
          f"{total - checked} refused, over {len(COUNTS)} types")
    if len(COUNTS) < len(TORCH_TYPES) + len(OURS):
        pytest.skip("run together with the sweep tests")
    assert checked >= len(TORCH_TYPES)
