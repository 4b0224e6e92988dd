"""Augmentation (seeded, label- and shape-preserving) and the training-recipe optimizers and schedules."""
import math

import pytest
import torch
from torch import nn

from liplayers.augment import ImageAugmentation, random_crop, random_horizontal_flip
from liplayers.certify import lipschitz_bound
from liplayers.nn.activation import MaxMin
from liplayers.nn.container import Sequential
from liplayers.nn.conv_bcop import OrthoConv2d
from liplayers.nn.linear import BjorckLinear
from liplayers.optim import Lookahead, WeightEMA, one_cycle, retract_, warmup_cosine


# ---- augmentation ------------------------------------------------------------------------------
def test_random_crop_is_a_per_image_translation():
    x = torch.rand(16, 3, 8, 8)
    y = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):  # each output is one of the 25 windows of its own padded image
        windows = [padded[i, :, a:a + 8, b:b + 8] for a in range(5) for b in range(5)]
        assert any(torch.equal(y[i], w) for w in windows)
    assert not all(torch.equal(y[i], x[i]) for i in range(16))
    assert torch.equal(random_crop(x, 0), x)


def test_flip_and_seeding():
    x = torch.rand(32, 1, 4, 5)
    y = random_horizontal_flip(x, 0.5, torch.Generator().manual_seed(1))
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(32)]
    kept = [torch.equal(y[i], x[i]) for i in range(32)]
    assert all(f or k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < 32
    assert torch.equal(random_horizontal_flip(x, 1.0), x.flip(-1))
    aug = ImageAugmentation(padding=3, flip=True, seed=7)
    labels = torch.arange(32)
    a1, l1 = aug(x, labels)
    a2, l2 = ImageAugmentation(padding=3, flip=True, seed=7)(x, labels)
    assert torch.equal(a1, a2) and l1 is labels and torch.equal(l2, labels)
    assert a1.shape == x.shape and a1.dtype == x.dtype
    assert not torch.equal(aug(x), a1)  # the generator advances
    with pytest.raises(ValueError):
        random_crop(torch.rand(3, 4, 4), 1)
    with pytest.raises(ValueError):
        ImageAugmentation(padding=-1)
    with pytest.raises(ValueError):
        random_horizontal_flip(x, 1.5)


# ---- Lookahead -------------------------------------------------------------------------------
def test_lookahead_step_semantics_on_a_quadratic():
    """f(θ) = ½‖θ‖², SGD(η): k fast steps give (1 − η)^k φ, then φ ← φ + α((1 − η)^k φ − φ)."""
    theta0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    p = nn.Parameter(theta0.clone())
    eta, k, alpha = 0.1, 3, 0.5
    opt = Lookahead(torch.optim.SGD([p], lr=eta), k=k, alpha=alpha)
    phi = theta0.clone()
    fast = theta0.clone()
    for t in range(1, 2 * k + 2):
        opt.zero_grad()
        (0.5 * (p ** 2).sum()).backward()
        opt.step()
        fast = (1 - eta) * fast
        if t % k == 0:
            phi = phi + alpha * (fast - phi)
            fast = phi.clone()
        assert torch.allclose(p.detach(), fast, atol=1e-15), t
        assert torch.allclose(opt.slow_weight(p), phi, atol=1e-15)
    # state round trip
    sd = opt.state_dict()
    p2 = nn.Parameter(p.detach().clone())
    opt2 = Lookahead(torch.optim.SGD([p2], lr=eta), k=1, alpha=0.9)
    opt2.load_state_dict(sd)
    assert opt2.k == k and opt2.fast_steps == opt.fast_steps and torch.equal(opt2.slow_weight(p2), phi)
    with pytest.raises(ValueError):
        Lookahead(torch.optim.SGD([p], lr=eta), k=0)
    with pytest.raises(ValueError):
        Lookahead(torch.optim.SGD([p], lr=eta), alpha=0.0)


def test_lookahead_with_nadam_and_schedulers():
    model = nn.Linear(4, 2)
    opt = Lookahead(torch.optim.NAdam(model.parameters(), lr=1e-2), k=2)
    sched = one_cycle(opt, max_lr=1e-2, total_steps=10)
    assert opt.optimizer.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(sched.get_last_lr()[0])
    extra = nn.Parameter(torch.zeros(3))
    opt.add_param_group({"params": [extra]})
    assert len(opt.optimizer.param_groups) == 2 and torch.equal(opt.slow_weight(extra), extra.detach())


def test_warmup_cosine_factors():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0) and lrs[2] == pytest.approx(1.0)
    assert lrs[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lrs[10] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        warmup_cosine(opt, total_steps=5, warmup_steps=6)


# ---- weight EMA ------------------------------------------------------------------------------
def _bjorck_mlp():
    return Sequential(nn.Flatten(), BjorckLinear(12, 16), MaxMin(), BjorckLinear(16, 16), MaxMin(),
                      BjorckLinear(16, 4))


def test_ema_eval_model_is_retracted_and_certified():
    model = _bjorck_mlp()
    ema = WeightEMA(model, decay=0.9, warmup=False)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)  # large steps: far-apart weights to average
    for _ in range(10):
        opt.zero_grad()
        model(torch.randn(8, 12)).pow(2).sum().backward()
        opt.step()
        ema.update()
    # the raw average of orthogonal matrices is not orthogonal
    raw = ema.shadow["3.parametrizations.weight.original"].double()
    assert (torch.linalg.svdvals(raw) - 1).abs().max() > 1e-2
    ev = ema.eval_model()
    assert not ev.training and ev is not model
    for layer in (ev[1], ev[3], ev[5]):  # stored parameters retracted in place
        w = layer.parametrizations.weight.original.detach().double()
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        assert torch.allclose(gram, torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-4)
    bound = lipschitz_bound(ev, (12,))
    assert bound <= 1 + 1e-4 and bound == pytest.approx(ema.lipschitz_bound((12,)))
    # independent check: the Jacobian of the averaged network at a point
    x = torch.randn(12)
    jac = torch.autograd.functional.jacobian(lambda v: ev(v[None])[0], x)
    assert float(torch.linalg.matrix_norm(jac.double(), ord=2)) <= bound * (1 + 1e-6)
    # the trained model is untouched, and the averages differ from it
    assert not torch.equal(model[3].parametrizations.weight.original, ev[3].parametrizations.weight.original)


def test_ema_averages_and_warmup():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = WeightEMA(lin, decay=0.5, warmup=False)
    with torch.no_grad():
        lin.weight.fill_(2.0)
    ema.update()
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 1.0))
    warm = WeightEMA(lin, decay=0.999)
    assert warm.current_decay() == pytest.approx(0.1)
    state = ema.state_dict()
    ema2 = WeightEMA(lin, decay=0.1)
    ema2.load_state_dict(state)
    assert ema2.decay == 0.5 and torch.equal(ema2.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(ValueError):
        WeightEMA(lin, decay=1.0)


def test_retract_restores_bcop_factors_and_modes():
    conv = OrthoConv2d(4, 4, 3)
    conv.eval()
    with torch.no_grad():
        conv.ortho.mul_(0.7).add_(0.05)
    retract_(conv)
    h = conv.ortho.detach().double()
    assert torch.allclose(h @ h.T, torch.eye(4, dtype=torch.float64), atol=1e-6)
    assert not conv.training
    assert conv.lipschitz_bound((4, 8, 8)) <= 1 + 1e-5
