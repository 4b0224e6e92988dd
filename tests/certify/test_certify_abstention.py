"""Abstaining classifier (class ⊥) on handcrafted cases with known radii."""
import math

import pytest
import torch
from torch import nn

from liplayers.certify import ABSTAIN, AbstainingClassifier


def binary_model():
    """f(x) = x₁ (one logit, L = 1): radius |x₁|, class 1 iff x₁ > 0."""
    lin = nn.Linear(2, 1, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0]], dtype=torch.float64))
        lin.bias.zero_()
    return lin


def test_binary_report_by_hand():
    x = torch.tensor([[-2.0, 0.0], [-0.5, 1.0], [-0.05, 0.0], [0.05, 3.0], [0.3, 0.0], [1.5, -1.0]],
                     dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    clf = AbstainingClassifier(binary_model(), margin=0.1)
    assert clf(x).tolist() == [0, 0, ABSTAIN, ABSTAIN, 1, 1]
    pred, radius = clf.certify(x)
    assert torch.allclose(radius, x[:, 0].abs(), rtol=1e-6)
    rep = clf.report((x, y))
    assert (rep.n, rep.abstained, rep.accepted, rep.correct) == (6, 2, 4, 2)
    assert rep.abstention_rate == pytest.approx(2 / 6)
    assert rep.accuracy == pytest.approx(2 / 6)
    assert rep.selective_accuracy == pytest.approx(2 / 4)
    assert rep.error_rate == pytest.approx(2 / 6)
    assert rep.clean_accuracy == pytest.approx(4 / 6)
    # labels in {-1, +1} are read as {0, 1}
    assert clf.report((x, 2 * y - 1)) == rep
    # margin 0 never abstains; a huge margin always does
    assert AbstainingClassifier(binary_model(), 0.0).report((x, y)).abstained == 0
    big = AbstainingClassifier(binary_model(), 10.0).report((x, y))
    assert big.abstained == 6 and math.isnan(big.selective_accuracy) and big.accuracy == 0.0


def test_multiclass_report_by_hand():
    model = nn.Sequential(nn.Linear(3, 3, bias=False, dtype=torch.float64))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3, dtype=torch.float64))  # logits = x, L = 1
    x = torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.9, 0.0], [0.0, 0.0, 0.5], [0.2, 0.0, 0.0]], dtype=torch.float64)
    # radii (f_y − f_runner-up)/√2: 2.12, 0.0707, 0.354, 0.141
    y = torch.tensor([0, 1, 2, 0])
    clf = AbstainingClassifier(model, margin=0.1)
    assert clf.predict(x).tolist() == [0, ABSTAIN, 2, 0]
    rep = clf.report((x, y))
    assert (rep.abstained, rep.correct, rep.accepted) == (1, 3, 3)
    assert rep.selective_accuracy == 1.0 and rep.error_rate == 0.0 and rep.clean_accuracy == pytest.approx(3 / 4)
    clf2 = AbstainingClassifier(model, margin=0.2)
    assert clf2.predict(x).tolist() == [0, ABSTAIN, 2, ABSTAIN]
    assert "abstained" in str(rep)


def test_bad_arguments():
    with pytest.raises(ValueError, match="margin"):
        AbstainingClassifier(binary_model(), -1.0)
    with pytest.raises(ValueError, match="norm"):
        AbstainingClassifier(binary_model(), 0.1, norm="l1")
    with pytest.raises(ValueError, match="empty"):
        AbstainingClassifier(binary_model(), 0.1).report([])
