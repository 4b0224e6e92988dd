"""Tests for liplayers.analysis.attacks: PGD projection, domain, ascent, determinism, no state change."""
import math

import pytest
import torch
from torch import nn

from liplayers.analysis.attacks import divergence_pgd, margin_objective, pgd, pgd_attack
from liplayers.functional.geometry import fisher_rao_distance, hellinger_distance, kl_divergence

D64 = torch.float64


def _model(seed=0, dtype=D64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5)).to(dtype)


def _data(B=16, seed=1, dtype=D64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, 4, generator=g, dtype=dtype), torch.randint(0, 5, (B,), generator=g)


def _gen(s=0):
    return torch.Generator().manual_seed(s)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_stays_in_ball_and_domain(norm, per_sample):
    model = _model()
    x, y = _data()
    eps = torch.linspace(0.05, 0.8, x.shape[0], dtype=D64) if per_sample else 0.4
    x_adv = pgd_attack(model, x, y, eps, norm=norm, steps=15, generator=_gen())
    delta = (x_adv - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
    bound = eps if per_sample else torch.full((x.shape[0],), eps, dtype=D64)
    assert bool((size <= bound * (1 + 1e-9) + 1e-12).all())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    # the budget is actually used by an attack with a large step (it is not a no-op)
    assert float(size.max()) > 0.5 * float(bound.max())
    assert not x_adv.requires_grad


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_domain_none_and_custom_domain(norm):
    model = _model()
    x, y = _data()
    x2 = 2 * x - 1  # in [-1, 1]
    x_adv = pgd_attack(model, x2, y, 0.5, norm=norm, steps=5, domain=(-1.0, 1.0), generator=_gen())
    assert float(x_adv.min()) >= -1.0 and float(x_adv.max()) <= 1.0
    x_free = pgd_attack(model, x2, y, 3.0, norm=norm, steps=5, domain=None, generator=_gen())
    assert float(x_free.abs().max()) > 1.0  # no clamping: leaves the box


def test_margin_attack_increases_objective_and_is_near_optimal_for_linear_model():
    """Two-class linear model, no box: the margin is linear, its max over the L2 ball is
    (f_j - f_y)(x) + eps*|w_j - w_y|, which PGD must reach.  (With more classes the margin is
    a max of linear functions - convex - and PGD may stop in a local maximum.)"""
    torch.manual_seed(3)
    lin = nn.Linear(6, 2).to(D64)
    x = torch.randn(32, 6, dtype=D64, generator=_gen(4))
    y = torch.randint(0, 2, (32,), generator=_gen(5))
    eps = 0.3
    obj = margin_objective(y)
    # from x itself the normalized steps go straight along w_j - w_y and stop on the sphere
    x_adv = pgd_attack(lin, x, y, eps, norm="l2", steps=50, domain=None, random_start=False)
    with torch.no_grad():
        clean, adv = obj(lin(x)), obj(lin(x_adv))
        W, b = lin.weight, lin.bias
        # optimum: max_j (f_j - f_y)(x) + eps |w_j - w_y|
        f = lin(x)
        gap = f - f.gather(1, y[:, None]) + eps * (W[None] - W[y][:, None]).norm(dim=-1)
        gap.scatter_(1, y[:, None], -math.inf)
        opt = gap.max(1).values
    assert bool((adv >= clean - 1e-12).all())
    assert float((adv - clean).min()) > 0
    assert float((opt - adv).max()) < 1e-6 and bool((adv <= opt + 1e-9).all())
    # multi-class: still never below the clean margin, and strictly above on average
    lin4 = nn.Linear(6, 4).to(D64)
    y4 = torch.randint(0, 4, (32,), generator=_gen(6))
    obj4 = margin_objective(y4)
    x4 = pgd_attack(lin4, x, y4, eps, norm="l2", steps=20, domain=None, generator=_gen())
    with torch.no_grad():
        gain = obj4(lin4(x4)) - obj4(lin4(x))
    assert bool((gain >= 0).all()) and float(gain.mean()) > 0.5 * eps * float(lin4.weight.detach().norm(dim=1).min())


def test_linf_attack_on_linear_model_reaches_corner():
    torch.manual_seed(6)
    lin = nn.Linear(5, 2).to(D64)
    x = torch.full((4, 5), 0.5, dtype=D64)
    y = torch.zeros(4, dtype=torch.long)
    x_adv = pgd_attack(lin, x, y, 0.1, norm="linf", steps=10, generator=_gen())
    direction = torch.sign(lin.weight[1] - lin.weight[0])
    torch.testing.assert_close(x_adv, (x + 0.1 * direction).expand_as(x))


def test_generic_objective_keep_best_never_decreases():
    model = _model()
    x, _ = _data()
    g = torch.randn(5, dtype=D64, generator=_gen(7))

    def objective(logits):
        return -(logits - g).pow(2).sum(-1)  # a concave objective: PGD may oscillate

    for keep_best in (True, False):
        x_adv = pgd(model, x, objective, 0.3, steps=8, step_size=0.5, generator=_gen(), keep_best=keep_best)
        with torch.no_grad():
            gain = objective(model(x_adv)) - objective(model(x))
        if keep_best:
            assert bool((gain >= 0).all())


def test_deterministic_given_generator():
    model = _model()
    x, y = _data()
    a = pgd_attack(model, x, y, 0.3, generator=_gen(11))
    b = pgd_attack(model, x, y, 0.3, generator=_gen(11))
    c = pgd_attack(model, x, y, 0.3, generator=_gen(12), steps=0)
    d = pgd_attack(model, x, y, 0.3, generator=_gen(13), steps=0)
    assert torch.equal(a, b)
    assert not torch.equal(c, d)


def test_model_state_untouched():
    model = _model()
    model.train()
    x, y = _data()
    pgd_attack(model, x, y, 0.3, generator=_gen())
    divergence_pgd(model, x, "kl", eps=0.1, generator=_gen())
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    pgd_attack(model, x, y, 0.3, generator=_gen())
    assert not model.training


def test_no_random_start_zero_steps_returns_input():
    model = _model()
    x, y = _data()
    assert torch.equal(pgd_attack(model, x, y, 0.3, steps=0, random_start=False), x)


@pytest.mark.parametrize("name,fn", [("fisher_rao", fisher_rao_distance), ("kl", kl_divergence),
                                     ("hellinger", hellinger_distance)])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_divergence_pgd_increases_divergence(name, fn, norm):
    model = _model()
    x, _ = _data()
    eps = 0.2 if norm == "linf" else 0.6
    start = divergence_pgd(model, x, name, eps=eps, norm=norm, steps=0, generator=_gen(3))
    x_adv = divergence_pgd(model, x, name, eps=eps, norm=norm, steps=10, generator=_gen(3), keep_best=True)
    with torch.no_grad():
        clean = model(x)
        d_start, d_adv = fn(clean, model(start)), fn(clean, model(x_adv))
    assert bool((d_adv >= d_start - 1e-12).all())
    assert float(d_adv.mean()) > 1.5 * float(d_start.mean())
    delta = (x_adv - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-9)


def test_fire_and_hellinger_attacks_coincide():
    """d_FR is an increasing function of H and PGD uses the step direction only."""
    model = _model()
    x, _ = _data()
    a = divergence_pgd(model, x, "fisher_rao", eps=0.2, generator=_gen(5))
    b = divergence_pgd(model, x, "hellinger", eps=0.2, generator=_gen(5))
    torch.testing.assert_close(a, b)


def test_bad_inputs_raise():
    model = _model()
    x, y = _data()
    with pytest.raises(ValueError, match="norm"):
        pgd_attack(model, x, y, 0.1, norm="l1")
    with pytest.raises(ValueError, match="non-negative"):
        pgd_attack(model, x, y, -0.1)
    with pytest.raises(ValueError, match="shape"):
        pgd_attack(model, x, y, torch.ones(3, dtype=D64))
    with pytest.raises(ValueError, match="outside the input domain"):
        pgd_attack(model, x + 2, y, 0.1)
    with pytest.raises(ValueError, match="per-sample"):
        pgd(model, x, lambda logits: logits.sum(), 0.1)
    with pytest.raises(ValueError, match="steps"):
        pgd_attack(model, x, y, 0.1, steps=-1)
    with pytest.raises(ValueError, match="labels"):
        pgd_attack(model, x, y.double(), 0.1)
    with pytest.raises(ValueError, match="unknown divergence"):
        divergence_pgd(model, x, "tv", eps=0.1)
    with pytest.raises(ValueError, match="non-finite"):
        pgd_attack(model, x * float("nan"), y, 0.1)
    with pytest.raises(ValueError, match="domain"):
        pgd_attack(model, x, y, 0.1, domain=(1.0, 0.0))
