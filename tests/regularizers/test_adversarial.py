"""PGD adversarial training loss (Madry et al. 2018): value, ball and box, modes, gradients."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from liplayers.losses.schedules import EpsilonRamp
from liplayers.regularizers.adversarial import AdversarialTrainingLoss

D = torch.float64


def tiny_model(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 16)]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.ReLU(), nn.Dropout(0.2) if bn else nn.Identity(), nn.Linear(16, 3)]
    return nn.Sequential(*layers).to(D)


def data(n: int = 32):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 6, dtype=D, generator=g)
    x[:4, :2] = 0.0  # samples on the box boundary
    x[4:8, 2:4] = 1.0
    return x, torch.randint(0, 3, (n,), generator=g)


def test_linear_model_hand_value():
    # two classes, f = W x, d = w0 − w1 = (1, −2, 0.5, 0); CE(f(x'), 0) = softplus(−d·x')
    # is maximized over the L∞ ball by x' = x − ε sign(d) (the box is not active at x = 0.5).
    model = nn.Linear(4, 2, bias=False).to(D)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=D))
    x, y = torch.full((1, 4), 0.5, dtype=D), torch.tensor([0])
    loss = AdversarialTrainingLoss(0.1, steps=10, random_start=False)
    value = loss(model, x, y)
    assert torch.allclose(loss.last_adv, torch.tensor([[0.4, 0.6, 0.4, 0.5]], dtype=D), atol=1e-12)
    # d·x' = 0.4 − 1.2 + 0.2 = −0.6 → CE = log(1 + e^{0.6})
    assert value.item() == pytest.approx(1.0374879504858856, abs=1e-12)
    # L2: x' = x − ε d/‖d‖, d·x' = −0.25 − ε‖d‖ with ‖d‖ = √5.25
    loss2 = AdversarialTrainingLoss(0.1, norm="l2", steps=20, random_start=False)
    assert loss2(model, x, y).item() == pytest.approx(math.log1p(math.exp(0.25 + 0.1 * math.sqrt(5.25))), abs=1e-9)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_adversarial_loss_at_least_clean_and_in_ball_and_box(norm):
    model = tiny_model().eval()
    x, y = data()
    eps = 0.1 if norm == "linf" else 0.5
    g = torch.Generator().manual_seed(2)
    clean = F.cross_entropy(model(x), y, reduction="none")
    best = AdversarialTrainingLoss(eps, norm=norm, keep_best=True, reduction="none", generator=g)(model, x, y)
    assert (best >= clean - 1e-12).all()  # keep_best includes the clean point
    last = AdversarialTrainingLoss(eps, norm=norm, reduction="none", generator=g)
    adv = last(model, x, y)
    # the Madry last iterate is a real attack: it raises the loss of (nearly) every sample,
    # by more than a random point of the ball does
    assert (adv > clean).double().mean() >= 0.9
    noise = torch.rand(x.shape, dtype=D, generator=g) * 2 - 1
    noise = noise * eps / (noise.abs().amax(1, keepdim=True) if norm == "linf"
                           else torch.linalg.vector_norm(noise, dim=1, keepdim=True))
    rand = F.cross_entropy(model((x + noise).clamp(0, 1)), y, reduction="none")
    assert (adv - clean).mean() > 2 * (rand - clean).abs().mean()
    delta = (last.last_adv - x).reshape(len(x), -1)
    size = delta.abs().amax(1) if norm == "linf" else torch.linalg.vector_norm(delta, dim=1)
    assert (size <= eps * (1 + 1e-12)).all() and size.max() > 0.5 * eps
    assert (last.last_adv >= 0).all() and (last.last_adv <= 1).all()


def test_eps_zero_is_clean_cross_entropy_and_set_eps():
    model = tiny_model().eval()
    x, y = data(8)
    loss = AdversarialTrainingLoss(0.0)
    assert loss(model, x, y).item() == pytest.approx(F.cross_entropy(model(x), y).item(), abs=1e-14)
    EpsilonRamp(0.0, 0.2, 10).update(5, loss)
    assert loss.eps == pytest.approx(0.1)
    loss(model, x, y)
    assert (loss.last_adv - x).abs().max() <= 0.1 + 1e-15


def test_modes_restored_and_running_stats_untouched_by_attack():
    model = tiny_model(bn=True).train()
    model[3].eval()  # a mixed configuration must come back exactly
    flags = [m.training for m in model.modules()]
    x, y = data()
    reference = copy.deepcopy(model)
    loss = AdversarialTrainingLoss(0.1, generator=torch.Generator().manual_seed(3))
    value = loss(model, x, y)
    assert [m.training for m in model.modules()] == flags
    # the attack ran in eval mode: the only BatchNorm update is the final forward on x_adv
    reference(loss.last_adv)
    assert torch.allclose(model[1].running_mean, reference[1].running_mean, atol=1e-15)
    assert model[1].num_batches_tracked.item() == 1
    assert torch.isfinite(value)


def test_modes_restored_when_attack_raises():
    model = tiny_model(bn=True).train()
    x, _ = data(8)
    with pytest.raises(ValueError, match="class indices"):
        AdversarialTrainingLoss(0.1)(model, x, torch.full((8,), 5))
    assert all(m.training for m in model.modules())


def test_no_parameter_gradients_from_attack():
    model = tiny_model().train()
    x, y = data(16)
    loss = AdversarialTrainingLoss(0.1, steps=5)(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_deterministic_with_generator_and_reductions():
    model = tiny_model().eval()
    x, y = data(8)
    a = AdversarialTrainingLoss(0.1, reduction="none", generator=torch.Generator().manual_seed(5))(model, x, y)
    b = AdversarialTrainingLoss(0.1, reduction="none", generator=torch.Generator().manual_seed(5))(model, x, y)
    assert torch.equal(a, b) and a.shape == (8,)
    s = AdversarialTrainingLoss(0.1, reduction="sum", generator=torch.Generator().manual_seed(5))(model, x, y)
    m = AdversarialTrainingLoss(0.1, generator=torch.Generator().manual_seed(5))(model, x, y)
    assert s.item() == pytest.approx(a.sum().item(), abs=1e-12)
    assert m.item() == pytest.approx(a.mean().item(), abs=1e-12)


def test_bad_arguments():
    for kwargs in ({"eps": -0.1}, {"eps": float("nan")}, {"eps": 0.1, "norm": "l1"}, {"eps": 0.1, "steps": -1},
                   {"eps": 0.1, "steps": 2.5}, {"eps": 0.1, "step_size": 0.0}, {"eps": 0.1, "reduction": "avg"},
                   {"eps": 0.1, "attack_mode": "test"}, {"eps": 0.1, "domain": (1.0, 0.0)}):
        with pytest.raises(ValueError):
            AdversarialTrainingLoss(**kwargs)
    model = tiny_model().eval()
    x, y = data(4)
    loss = AdversarialTrainingLoss(0.1)
    with pytest.raises(ValueError):
        loss(model, x, y[:3])
    with pytest.raises(ValueError):
        loss(model, x, y.to(D))
    with pytest.raises(ValueError, match="domain"):
        loss(model, x + 2.0, y)
    with pytest.raises(ValueError):
        loss.set_eps(-1.0)
