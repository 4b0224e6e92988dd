"""Tests for FIRE / TRADES / Hellinger losses (liplayers.losses.information)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from liplayers.analysis.attacks import divergence_pgd
from liplayers.functional.geometry import fisher_rao_distance, hellinger_distance, kl_divergence
from liplayers.losses import FIRELoss, HellingerLoss, TRADESLoss

LOSSES = [(FIRELoss, "fisher_rao", lambda a, b: fisher_rao_distance(a, b) ** 2, 12.0),
          (TRADESLoss, "kl", kl_divergence, 6.0),
          (HellingerLoss, "hellinger", lambda a, b: hellinger_distance(a, b) ** 2, 12.0)]


def _gen(s=0):
    return torch.Generator().manual_seed(s)


def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 5))


def _data(B=16, seed=1):
    g = _gen(seed)
    return torch.rand(B, 1, 8, 8, generator=g), torch.randint(0, 5, (B,), generator=g)


@pytest.mark.parametrize("cls,name,div,lam", LOSSES)
def test_short_training_run_finite(cls, name, div, lam):
    model = _cnn()
    x, y = _data()
    loss_fn = cls(eps=0.1, steps=3, generator=_gen(2))
    assert loss_fn.lam == lam  # documented default
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        assert torch.isfinite(loss)
        loss.backward()
        for p in model.parameters():
            assert torch.isfinite(p.grad).all()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]  # it trains
    assert loss_fn.last_reg is not None and torch.isfinite(loss_fn.last_reg)


@pytest.mark.parametrize("cls,name,div,lam", LOSSES)
def test_value_is_ce_plus_lambda_divergence(cls, name, div, lam):
    model = _cnn().double()
    x, y = _data()
    x = x.double()
    loss_fn = cls(lam=2.5, eps=0.1, norm="l2", steps=4, generator=_gen(3), reduction="none")
    got = loss_fn(model, x, y)
    x_adv = divergence_pgd(model, x, name, eps=0.1, norm="l2", steps=4, generator=_gen(3))
    logits = model(x)
    want = F.cross_entropy(logits, y, reduction="none") + 2.5 * div(logits, model(x_adv))
    torch.testing.assert_close(got, want)
    assert got.shape == (x.shape[0],)
    mean_fn = cls(lam=2.5, eps=0.1, norm="l2", steps=4, generator=_gen(3))
    torch.testing.assert_close(mean_fn(model, x, y), got.mean())
    zero = cls(lam=0.0, eps=0.1, steps=2, generator=_gen(3))
    torch.testing.assert_close(zero(model, x, y), F.cross_entropy(logits, y))


@pytest.mark.parametrize("cls,name,div,lam", LOSSES)
def test_nan_guard_constant_and_saturated_models(cls, name, div, lam):
    """p(x') = p(x) exactly (constant model) and saturated float32 softmax: gradients stay finite.

    The reference FIRE form 2*acos(sum sqrt(p q)) has an infinite/NaN gradient in both cases.
    """
    x, y = _data()
    const = _cnn()
    with torch.no_grad():
        const[0].weight.zero_()
        const[0].bias.zero_()
    loss = cls(eps=0.1, steps=2, generator=_gen(4))(const, x, y)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in const.parameters())
    saturated = _cnn()
    with torch.no_grad():
        saturated[-1].weight.mul_(300.0)
    loss = cls(eps=0.1, steps=2, generator=_gen(4))(saturated, x, y)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in saturated.parameters())
    # the naive reference expression does produce non-finite gradients at p = q
    logits = const(x).detach().requires_grad_(True)
    p = torch.softmax(logits, -1)
    naive = 2 * torch.acos((p * p).sqrt().sum(-1))  # sum rounds to 1 or above: nan value or inf slope
    (g,) = torch.autograd.grad(naive.sum(), logits)
    assert not (torch.isfinite(naive).all() and torch.isfinite(g).all())


def test_model_state_and_grads_untouched_by_inner_attack():
    model = _cnn()
    model.eval()
    x, y = _data()
    loss_fn = FIRELoss(eps=0.1, steps=2, generator=_gen())
    loss_fn(model, x, y)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())  # forward only: attack left .grad alone


def test_fire_no_more_expensive_than_trades_in_model_calls():
    """Same budget: FIRE and TRADES call the model the same number of times."""
    calls = {"n": 0}

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _cnn()

        def forward(self, x):
            calls["n"] += 1
            return self.net(x)

    model = Counting()
    x, y = _data()
    counts = {}
    for cls in (FIRELoss, TRADESLoss, HellingerLoss):
        calls["n"] = 0
        cls(eps=0.1, steps=5, generator=_gen())(model, x, y).backward()
        counts[cls.__name__] = calls["n"]
    assert counts["FIRELoss"] == counts["TRADESLoss"] == counts["HellingerLoss"] == 5 + 2


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="lam"):
        FIRELoss(lam=-1.0)
    with pytest.raises(ValueError, match="eps"):
        TRADESLoss(eps=-0.1)
    with pytest.raises(ValueError, match="norm"):
        HellingerLoss(norm="l1")
    with pytest.raises(ValueError, match="reduction"):
        FIRELoss(reduction="avg")
    with pytest.raises(ValueError, match="steps"):
        FIRELoss(steps=-2)
    model = _cnn()
    x, y = _data()
    with pytest.raises(ValueError, match="shape"):
        FIRELoss(eps=0.1, steps=1)(model, x, y[:3])
    with pytest.raises(ValueError, match="non-finite"):
        FIRELoss(eps=0.1, steps=1)(lambda z: model(z) * float("nan"), x, y)
