"""Tests of the ISO variants: Euclidean output metric and layer-wise partial isometry."""
import math

import pytest
import torch
from torch import nn

from liplayers.nn.activation import MaxMin
from liplayers.regularizers.iso_variants import (
    EuclideanISOLoss,
    LayerwiseISOLoss,
    euclidean_delta,
    euclidean_iso_penalty,
    euclidean_output_jacobian,
    layer_blocks,
    layerwise_iso_penalty,
)

D64 = torch.float64


def _gen(s=0):
    return torch.Generator().manual_seed(s)


def _orth_rows(m, n, seed=0):
    """(m, n) with orthonormal rows (m <= n) or columns (m > n), float64."""
    q, _ = torch.linalg.qr(torch.randn(max(m, n), min(m, n), generator=_gen(seed), dtype=D64))
    return q.T if m <= n else q


def _linear(W, bias=None):
    lin = nn.Linear(W.shape[1], W.shape[0], bias=bias is not None).to(D64)
    with torch.no_grad():
        lin.weight.copy_(W)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def _mlp(n=6, C=4, width=8, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n, width), nn.Tanh(), nn.Linear(width, C)).to(D64)


# ------------------------------------------------------------------ Euclidean output metric
def test_euclidean_delta():
    assert euclidean_delta(10) == pytest.approx(math.sqrt(0.9))
    # vertex-to-centre distance of the simplex
    C = 7
    e = torch.zeros(C, dtype=D64)
    e[0] = 1
    assert euclidean_delta(C) == pytest.approx(float((e - 1 / C).norm()))
    assert euclidean_delta(5, "logits") == 1.0
    with pytest.raises(ValueError):
        euclidean_delta(1)
    with pytest.raises(ValueError):
        euclidean_delta(3, "fisher")


@pytest.mark.parametrize("C,n,eps", [(3, 5, 0.5), (10, 16, 2.0)])
def test_logit_variant_vanishes_on_scaled_orthonormal_linear_map(C, n, eps):
    """s = K Q x with Q Qᵀ = I: P J Jᵀ P = K² P at every x, so α_E = 0 everywhere."""
    K = euclidean_delta(C, "logits") / eps
    model = _linear(K * _orth_rows(C, n, seed=C), bias=torch.randn(C, generator=_gen(1), dtype=D64))
    x = torch.randn(4, n, generator=_gen(2), dtype=D64)
    alpha = euclidean_iso_penalty(model, x, eps, output="logits")
    assert alpha.shape == (4,)
    assert float(alpha.detach().abs().max()) < 1e-10
    # a different scale is penalized: ε²‖(c² − 1)K²P‖_F = ε² |c² − 1| K² √(C − 1)
    alpha2 = euclidean_iso_penalty(model, x, eps, scale=2 * K, output="logits")
    assert torch.allclose(alpha2, torch.full_like(alpha2, eps ** 2 * 3 * K * K * math.sqrt(C - 1)), rtol=1e-10)


@pytest.mark.parametrize("C,n", [(3, 4), (10, 12)])
def test_prob_variant_vanishes_at_the_uniform_point(C, n):
    """At logits = 0 the softmax Jacobian is P/C, so s = c Q x gives J_p J_pᵀ = (c/C)² P."""
    eps, c = 1.0, 3.0
    model = _linear(c * _orth_rows(C, n, seed=n))
    x = torch.zeros(2, n, dtype=D64)
    assert float(euclidean_iso_penalty(model, x, eps, scale=c / C).detach().abs().max()) < 1e-12
    # away from the uniform point the same model is not a partial isometry
    x1 = torch.randn(2, n, generator=_gen(3), dtype=D64)
    assert float(euclidean_iso_penalty(model, x1, eps, scale=c / C).detach().min()) > 1e-4


def test_exact_penalty_matches_an_independent_jacobian():
    model = _mlp()
    x = torch.randn(3, 6, generator=_gen(4), dtype=D64)
    eps, K = 0.7, 1.3
    for output in ("probs", "logits"):
        alpha = euclidean_iso_penalty(model, x, eps, scale=K, output=output)
        J = euclidean_output_jacobian(model, x, output)
        for b in range(3):
            def phi(z):
                s = model(z[None])[0]
                return torch.softmax(s, -1) if output == "probs" else s - s.mean()
            Jb = torch.autograd.functional.jacobian(phi, x[b])
            assert torch.allclose(J[b], Jb, atol=1e-12)
            assert torch.allclose(Jb.sum(0), torch.zeros(6, dtype=D64), atol=1e-12)  # 1ᵀJ = 0
            P = torch.eye(4, dtype=D64) - 1 / 4
            ref = eps ** 2 * torch.linalg.matrix_norm(Jb @ Jb.T - K * K * P)
            assert float(alpha[b]) == pytest.approx(float(ref), rel=1e-10)


@pytest.mark.parametrize("output", ["probs", "logits"])
def test_randomized_squared_is_unbiased(output):
    model = _mlp(seed=5)
    x = torch.randn(2, 6, generator=_gen(6), dtype=D64)
    eps, K = 1.0, 0.5
    exact = euclidean_iso_penalty(model, x, eps, scale=K, output=output, squared=True)
    g = _gen(7)
    draws = torch.stack([euclidean_iso_penalty(model, x, eps, scale=K, output=output, estimator="randomized",
                                               num_probes=4, generator=g, squared=True) for _ in range(300)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert bool(((mean - exact).abs() < 5 * se + 1e-9).all()), (mean, exact, se)


def test_relabelling_invariance_and_errors():
    model = _mlp(seed=8)
    perm = torch.tensor([2, 0, 3, 1])

    class Permuted(nn.Module):
        def forward(self, z):
            return model(z)[:, perm]

    x = torch.randn(3, 6, generator=_gen(9), dtype=D64)
    a = euclidean_iso_penalty(model, x, 1.0)
    b = euclidean_iso_penalty(Permuted(), x, 1.0)
    assert torch.allclose(a, b, rtol=1e-12)
    with pytest.raises(ValueError):
        euclidean_iso_penalty(model, x, 0.0)
    with pytest.raises(ValueError):
        euclidean_iso_penalty(model, x, 1.0, output="fisher")
    with pytest.raises(ValueError):
        euclidean_iso_penalty(model, x, 1.0, estimator="randomized", num_probes=1)
    with pytest.raises(ValueError):
        euclidean_iso_penalty(model, x, 1.0, estimator="bogus")


def test_euclidean_loss_trains_and_follows_schedule():
    torch.manual_seed(0)
    model = _mlp(seed=10)
    x = torch.randn(16, 6, generator=_gen(11), dtype=D64)
    y = torch.randint(0, 4, (16,), generator=_gen(12))
    loss_fn = EuclideanISOLoss(eps=1.0, num_epochs=3, estimator="randomized", generator=_gen(13))
    loss_fn.set_epoch(2)
    assert loss_fn.lam == pytest.approx(0.006)
    loss = loss_fn(model, x, y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # the logged batch means are the two terms the loss combines: (1 − lam)·CE + lam·α_E
    torch.testing.assert_close(loss.detach(), (1 - 0.006) * loss_fn.last_ce + 0.006 * loss_fn.last_alpha)


# ------------------------------------------------------------------ layer-wise
def test_layer_blocks_split_and_compose():
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Identity(),
                        nn.Linear(8, 3)).to(D64)
    blocks = layer_blocks(net)
    assert [len(b) for b in blocks] == [3, 3, 1]
    x = torch.randn(2, 2, 3, generator=_gen(14), dtype=D64)
    h = x
    for b in blocks:
        h = b(h)
    assert torch.equal(h, net(x))
    with pytest.raises(ValueError):
        layer_blocks(nn.Linear(2, 2))
    with pytest.raises(ValueError):
        layer_blocks(nn.Sequential(nn.ReLU()))


def _gnp_like(n=6, width=8, C=4, seed=0):
    """Orthogonal / semi-orthogonal layers with ReLU after wide-or-square and MaxMin after tall layers."""
    return nn.Sequential(
        _linear(_orth_rows(width, n, seed), torch.randn(width, generator=_gen(seed + 1), dtype=D64)),  # tall: MaxMin
        MaxMin(dim=-1),
        _linear(_orth_rows(width, width, seed + 2), torch.randn(width, generator=_gen(seed + 3), dtype=D64)),
        nn.ReLU(),  # square orthogonal + ReLU: J = DW is a partial isometry
        _linear(_orth_rows(C, width, seed + 4)),  # wide: orthonormal rows
    )


@pytest.mark.parametrize("estimator", ["exact", "randomized"])
def test_layerwise_vanishes_on_partial_isometries(estimator):
    net = _gnp_like()
    x = torch.randn(5, 6, generator=_gen(15), dtype=D64)
    pen = layerwise_iso_penalty(net, x, estimator=estimator, num_probes=2, generator=_gen(16))
    assert pen.shape == (5,)
    assert float(pen.abs().max()) < 1e-20
    # scaled layers with matching scales also vanish; mismatched scales do not
    with torch.no_grad():
        net[0].weight.mul_(2.0)
    pen = layerwise_iso_penalty(net, x, scales=[2.0, 1.0, 1.0], estimator=estimator, generator=_gen(17))
    assert float(pen.abs().max()) < 1e-20
    assert float(layerwise_iso_penalty(net, x, estimator="exact").min()) > 0.1


def test_layerwise_exact_formula_and_unbiased_estimate():
    net = _mlp(seed=18)
    x = torch.randn(2, 6, generator=_gen(19), dtype=D64)
    exact = layerwise_iso_penalty(net, x, scales=[0.8, 1.5], estimator="exact", normalize=False)
    # independent check from the singular values: Σ σ²(σ² − K²)²
    ref = torch.zeros(2, dtype=D64)
    for b in range(2):
        h0 = x[b]
        J1 = torch.autograd.functional.jacobian(lambda z: torch.tanh(net[0](z)), h0)
        h1 = torch.tanh(net[0](h0))
        J2 = torch.autograd.functional.jacobian(net[2], h1)
        for J, K in ((J1, 0.8), (J2, 1.5)):
            s = torch.linalg.svdvals(J)
            ref[b] += (s ** 2 * (s ** 2 - K * K) ** 2).sum()
    assert torch.allclose(exact, ref, rtol=1e-10)
    g = _gen(20)
    draws = torch.stack([layerwise_iso_penalty(net, x, scales=[0.8, 1.5], num_probes=2, normalize=False,
                                               generator=g) for _ in range(300)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert bool(((mean - exact).abs() < 5 * se).all()), (mean, exact, se)
    # skip_last drops the logits block; normalize divides by the output width
    only_first = layerwise_iso_penalty(net, x, scales=[0.8, 1.5], estimator="exact", skip_last=True)
    s1 = layerwise_iso_penalty(net[:2], x, scales=0.8, estimator="exact", normalize=False) / 8
    assert torch.allclose(only_first, s1, rtol=1e-12)


def test_layerwise_loss_gradients_and_conv_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 10))
    x = torch.rand(4, 1, 8, 8)
    y = torch.randint(0, 10, (4,))
    loss_fn = LayerwiseISOLoss(lam=0.5, generator=_gen(21))
    loss = loss_fn(net, x, y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert float(loss_fn.last_alpha) > 0
    with pytest.raises(ValueError):
        LayerwiseISOLoss(lam=-1.0)
    with pytest.raises(ValueError):
        layerwise_iso_penalty(net, x, scales=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError):
        layerwise_iso_penalty(net, x, estimator="bogus")
