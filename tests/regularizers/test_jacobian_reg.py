"""Tests for the Jacobian regularizer (liplayers.regularizers.jacobian)."""
import math

import pytest
import torch
from torch import nn

from liplayers.regularizers import JacobianLoss, jacobian_penalty

D64 = torch.float64


def _gen(s=0):
    return torch.Generator().manual_seed(s)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 4)).to(D64)


def test_exact_matches_autograd_and_linear_closed_form():
    net = _mlp()
    x = torch.randn(3, 6, generator=_gen(1), dtype=D64)
    exact = jacobian_penalty(net, x, estimator="exact")
    for b in range(3):
        J = torch.autograd.functional.jacobian(lambda z: net(z[None])[0], x[b])
        torch.testing.assert_close(exact[b], J.pow(2).sum())
    lin = nn.Linear(6, 4).to(D64)
    torch.testing.assert_close(jacobian_penalty(lin, x, estimator="exact"),
                               lin.weight.detach().pow(2).sum().expand(3))


@pytest.mark.parametrize("estimator,probe", [("jvp", "rademacher"), ("jvp", "gaussian"), ("vjp", "rademacher")])
def test_random_projections_unbiased(estimator, probe):
    net = _mlp()
    x = torch.randn(3, 6, generator=_gen(2), dtype=D64)
    exact = jacobian_penalty(net, x, estimator="exact").detach()
    R = 3000
    draws = jacobian_penalty(net, x.repeat(R, 1), estimator=estimator, probe=probe,
                             generator=_gen(3)).detach().reshape(R, 3)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(R)
    assert bool(((mean - exact).abs() <= 5 * se).all())
    assert float((se / exact).max()) < 0.03


def test_jacobian_loss_training_and_value():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    x = torch.rand(8, 1, 6, 6, generator=_gen(1))
    y = torch.randint(0, 3, (8,), generator=_gen(2))
    loss_fn = JacobianLoss(lam=0.1, num_probes=2, generator=_gen(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(4):
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
    exact_fn = JacobianLoss(lam=0.1, estimator="exact", reduction="none")
    want = nn.functional.cross_entropy(model(x), y, reduction="none") + 0.05 * jacobian_penalty(model, x, estimator="exact")
    torch.testing.assert_close(exact_fn(model, x, y), want)


def test_bad_arguments():
    net = _mlp()
    x = torch.randn(2, 6, dtype=D64)
    with pytest.raises(ValueError, match="num_probes"):
        jacobian_penalty(net, x, num_probes=0)
    with pytest.raises(ValueError, match="estimator"):
        jacobian_penalty(net, x, estimator="hutch")
    with pytest.raises(ValueError, match="target"):
        jacobian_penalty(net, x, target="softmax")
    with pytest.raises(ValueError, match="lam"):
        JacobianLoss(lam=-1.0)
