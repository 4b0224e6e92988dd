"""Margin and temperature losses: hand-computed values, gradient signs, limits, stability."""
import math

import pytest
import torch
import torch.nn.functional as F

from liplayers.losses.margin import (
    BinaryHingeLoss,
    HingeMarginLoss,
    HKRLoss,
    KRLoss,
    TauBCEWithLogitsLoss,
    TauCrossEntropyLoss,
)

LOGITS = torch.tensor([[2.0, 1.5, -1.0], [0.0, 1.0, 0.5]], dtype=torch.float64)
LABELS = torch.tensor([0, 0])


def grad_of(loss_fn, logits, target):
    x = logits.clone().requires_grad_(True)
    loss_fn(x, target).backward()
    return x.grad


def test_hinge_hand_values_and_gradient_signs():
    # sample 0: margins 0.5, 3.0 -> sum relu(1 - m) = 0.5; sample 1: margins -1.0, -0.5 -> 2 + 1.5
    loss = HingeMarginLoss(margin=1.0, reduction="none")
    assert torch.allclose(loss(LOGITS, LABELS), torch.tensor([0.5, 3.5], dtype=torch.float64))
    assert torch.allclose(HingeMarginLoss(1.0, aggregate="max", reduction="none")(LOGITS, LABELS),
                          torch.tensor([0.5, 2.0], dtype=torch.float64))
    assert float(HingeMarginLoss(1.0)(LOGITS, LABELS)) == pytest.approx(2.0)
    assert float(HingeMarginLoss(1.0, reduction="sum")(LOGITS, LABELS)) == pytest.approx(4.0)
    g = grad_of(HingeMarginLoss(1.0, reduction="sum"), LOGITS, LABELS)
    # true logit pushed up (negative gradient), active competitors pushed down, inactive untouched
    assert torch.equal(g, torch.tensor([[-1.0, 1.0, 0.0], [-2.0, 1.0, 1.0]], dtype=torch.float64))


def test_hinge_zero_iff_margin_reached():
    f = torch.tensor([[3.0, 0.0, 1.0]])
    assert float(HingeMarginLoss(2.0)(f, torch.tensor([0]))) == 0.0
    assert float(HingeMarginLoss(2.0 + 1e-3)(f, torch.tensor([0]))) > 0.0


def test_binary_hinge_hand_values_and_labels():
    f = torch.tensor([0.5, -2.0, 0.2])
    for y in (torch.tensor([1, 0, 0]), torch.tensor([1.0, -1.0, -1.0]), torch.tensor([[1], [-1], [-1]])):
        per = BinaryHingeLoss(margin=1.0, reduction="none")(f, y)
        assert torch.allclose(per, torch.tensor([0.5, 0.0, 1.2]))
    g = grad_of(BinaryHingeLoss(1.0, reduction="sum"), f[:, None], torch.tensor([1, 0, 0]))
    assert g.flatten().tolist() == [-1.0, 0.0, 1.0]


def test_kr_binary_and_multiclass_hand_values():
    f = torch.tensor([3.0, 1.0, -1.0, 0.0], dtype=torch.float64)
    y = torch.tensor([1, 1, 0, 0])
    # -(mean_pos - mean_neg) = -(2 - (-0.5)) = -2.5
    assert float(KRLoss()(f, y)) == pytest.approx(-2.5)
    assert float(KRLoss(reduction="sum")(f, y)) == pytest.approx(-10.0)
    g = grad_of(KRLoss(), f, y)
    assert (g[:2] < 0).all() and (g[2:] > 0).all()
    # multiclass, 3 classes: class k column: mean over y=k minus mean over y!=k, averaged over k
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 2])
    expected = -((1.0 - 1.0 / 3) + (2.0 - 1.0 / 3) + (2.0 - 0.0)) / 3
    assert float(KRLoss()(logits, labels)) == pytest.approx(expected)


def test_kr_missing_class_and_single_class_batch_are_finite():
    logits = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 0, 1])  # classes 2 and 3 absent
    loss = KRLoss()(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[:, 2:] == 0)  # absent classes contribute nothing
    # the value equals the 2-class computation on the present classes (averaged over them)
    assert float(loss.detach()) == pytest.approx(float(KRLoss()(logits.detach()[:, :2], labels)), rel=1e-6)
    # a single-class batch: no valid class, loss 0, gradient 0 (not NaN)
    one = torch.randn(5, 3, requires_grad=True)
    l1 = HKRLoss(alpha=5.0)(one, torch.zeros(5, dtype=torch.long))
    l1.backward()
    assert torch.isfinite(l1) and torch.isfinite(one.grad).all()
    b = torch.randn(4, requires_grad=True)
    lb = KRLoss()(b, torch.ones(4))
    lb.backward()
    assert float(lb.detach()) == 0.0 and torch.all(b.grad == 0)


def test_hkr_is_alpha_hinge_plus_kr():
    torch.manual_seed(1)
    logits, labels = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 5, (16,))
    hkr = HKRLoss(alpha=7.0, margin=0.5)(logits, labels)
    ref = 7.0 * HingeMarginLoss(0.5)(logits, labels) + KRLoss()(logits, labels)
    assert float(hkr) == pytest.approx(float(ref))
    per = HKRLoss(alpha=7.0, margin=0.5, reduction="none")(logits, labels)
    assert per.shape == (16,) and float(per.mean()) == pytest.approx(float(hkr))
    f, y = torch.randn(10, 1, dtype=torch.float64), torch.randint(0, 2, (10,))
    assert float(HKRLoss(2.0)(f, y)) == pytest.approx(float(2.0 * BinaryHingeLoss()(f, y) + KRLoss()(f, y)))


def test_tau_cross_entropy_value_and_gradient():
    tau = 3.0
    loss = TauCrossEntropyLoss(tau, reduction="none")(LOGITS, LABELS)
    z = tau * LOGITS
    hand = torch.logsumexp(z, 1) - z[:, 0]
    assert torch.allclose(loss, hand)
    g = grad_of(TauCrossEntropyLoss(tau, reduction="sum"), LOGITS, LABELS)
    assert torch.allclose(g, tau * (torch.softmax(z, 1) - F.one_hot(LABELS, 3)))
    assert (g[:, 0] < 0).all() and (g[:, 1:] > 0).all()
    assert torch.allclose(TauCrossEntropyLoss(tau, divide_by_tau=True, reduction="none")(LOGITS, LABELS), hand / tau)


def test_tau_limits():
    torch.manual_seed(2)
    f, y = torch.randn(32, 10, dtype=torch.float64) * 3, torch.randint(0, 10, (32,))
    # tau -> infinity: CE(tau f)/tau -> max(0, max_{j!=y} f_j - f_y), the margin-0 hinge
    hinge0 = HingeMarginLoss(0.0, aggregate="max", reduction="none")(f, y)
    err = [float((TauCrossEntropyLoss(t, divide_by_tau=True, reduction="none")(f, y) - hinge0).abs().max())
           for t in (1.0, 10.0, 100.0, 1e4)]
    assert err[-1] < 1e-3 and all(a > b for a, b in zip(err, err[1:]))
    assert err[-1] <= math.log(10) / 1e4 + 1e-12  # bound log(C)/tau
    # huge tau in float32: finite
    f32 = f.float().requires_grad_(True)
    big = TauCrossEntropyLoss(1e6)(f32, y)
    big.backward()
    assert torch.isfinite(big) and torch.isfinite(f32.grad).all()
    # tiny tau: CE(tau f) -> log C, finite value and gradient
    x = f.clone().requires_grad_(True)
    small = TauCrossEntropyLoss(1e-8)(x, y)
    small.backward()
    assert float(small.detach()) == pytest.approx(math.log(10), abs=1e-6)
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().max()) < 1e-8
    assert math.isfinite(float(TauCrossEntropyLoss(1e-8, divide_by_tau=True)(f, y)))


def test_tau_bce_value_limits_and_gradient():
    f = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    y = torch.tensor([1, 1, 0])
    tau = 2.0
    per = TauBCEWithLogitsLoss(tau, reduction="none")(f, y)
    s = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    assert torch.allclose(per, -torch.log(torch.sigmoid(tau * s * f)))
    assert torch.allclose(per, F.binary_cross_entropy_with_logits(tau * f, y.double(), reduction="none"))
    g = grad_of(TauBCEWithLogitsLoss(tau), f, y)
    assert g[0] < 0 and g[1] < 0 and g[2] > 0
    big = TauBCEWithLogitsLoss(1e5, divide_by_tau=True, reduction="none")(f, y)
    assert torch.allclose(big, torch.relu(-s * f), atol=1e-4)
    assert torch.isfinite(TauBCEWithLogitsLoss(1e4)(f.float() * 1e3, y))  # tau*f = 2e7: softplus stays finite


@pytest.mark.parametrize("bad", [
    lambda: HingeMarginLoss(margin=-1.0),
    lambda: HingeMarginLoss(aggregate="mean"),
    lambda: TauCrossEntropyLoss(tau=0.0),
    lambda: KRLoss(reduction="avg"),
    lambda: HingeMarginLoss()(torch.randn(3, 4), torch.tensor([0, 1, 4])),
    lambda: HingeMarginLoss()(torch.randn(3, 4), torch.randn(3)),
    lambda: TauBCEWithLogitsLoss()(torch.randn(3, 2), torch.ones(3)),
])
def test_bad_input_raises_value_error(bad):
    with pytest.raises(ValueError):
        bad()
