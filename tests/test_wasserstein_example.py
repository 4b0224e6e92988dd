"""Smoke test of examples/wasserstein.py --quick (W₁ by KR duality with GNP networks)."""
import json
import math
import os
import sys

import pytest
import torch

pytest.importorskip("scipy")
pytest.importorskip("matplotlib")

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.fixture(scope="module")
def wasserstein():
    sys.path.insert(0, EXAMPLES)
    try:
        import wasserstein as mod
    finally:
        sys.path.remove(EXAMPLES)
    return mod


def test_closed_forms_agree(wasserstein):
    """Quantile formula vs ∫|F − G| for every 1-D case; ‖μ₁ − μ₂‖ for the shifted Gaussians."""
    cases = {c.name: c for c in wasserstein.make_cases()}
    assert cases["gauss-shift-2d"].truth == pytest.approx(math.sqrt(5))
    assert cases["1d-scale"].truth == pytest.approx(math.sqrt(2 / math.pi), rel=1e-8)  # E|Z|
    checked = [c for c in cases.values() if c.check is not None]
    assert checked  # at least one case has an independent check
    for c in checked:
        assert c.truth == pytest.approx(c.check, rel=1e-6), c.name


def test_quick_run(wasserstein, tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = wasserstein.main(["--quick", "--out", str(tmp_path), "--no-progress",
                                "--cases", "gauss-shift-2d,1d-scale"])
    finally:
        torch.set_num_threads(n)
    assert os.path.getsize(tmp_path / "wasserstein.png") > 1000
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["rows"]) == 2
    for row in res["rows"]:
        # duality on the eval samples is exact: never above the empirical W₁ of those samples
        assert row["net on them<=emp"], row
        # population lower bound, up to the sampling noise of the estimate
        assert row["estimate"] <= row["W1 (truth)"] + 3 * row["2se"] / 2, row
        assert row["L bound"] <= 1 + 1e-4
        # even 40 steps learn most of the distance
        assert row["est/truth"] > 0.5, row
