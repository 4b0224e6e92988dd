"""L1-ball projection, LInfLinear, ∞→∞ bounds and the L∞ margin certificate (Anil, Lucas & Grosse 2019)."""
import itertools
import math

import pytest
import torch
from torch import nn

import liplayers as L
from liplayers.certify.linf import certified_radius_linf, certify_linf, linf_margin_condition
from liplayers.functional.l1_projection import l1_ball_threshold, project_l1_ball
from liplayers.nn.householder import HouseholderActivation
from liplayers import LInfLinear
from liplayers.lipschitz import linf_lipschitz_bound_of, linf_operator_norm
from liplayers.lipschitz import UnboundedModuleError

METHODS = ["newton", "sort", "condat"]


def brute_force_linf_norm(W: torch.Tensor) -> float:
    """max over the vertices of the ∞ unit ball of ‖Wx‖∞ (a convex function peaks at a vertex)."""
    n = W.shape[1]
    best = 0.0
    for signs in itertools.product((-1.0, 1.0), repeat=n):
        x = torch.tensor(signs, dtype=torch.float64)
        best = max(best, float((W.double() @ x).abs().max()))
    return best


# ------------------------------------------------------------------ projection
def test_linf_operator_norm_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    for shape in [(3, 4), (5, 6), (1, 7)]:
        W = torch.randn(*shape, generator=g, dtype=torch.float64)
        bf = brute_force_linf_norm(W)
        ub = linf_operator_norm(W)
        assert bf <= ub <= bf * (1 + 1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("radius", [1.0, 0.3, 5.0])
def test_projection_satisfies_kkt(method, radius):
    """Independent optimality check: v − p = τ·sign(p) on the support, |v − p| ≤ τ off it, ‖p‖₁ = r."""
    g = torch.Generator().manual_seed(2)
    v = torch.randn(40, 25, generator=g, dtype=torch.float64) * 2
    v[0] = v[0] * 1e-3  # a row already inside the ball
    p = project_l1_ball(v, radius, method=method)
    inside = v.abs().sum(-1) <= radius
    assert bool(inside[0])
    assert torch.equal(p[inside], v[inside])
    out = ~inside
    assert torch.allclose(p[out].abs().sum(-1), torch.full_like(p[out][:, 0], radius), atol=1e-12)
    for vi, pi in zip(v[out], p[out]):
        d = vi - pi
        supp = pi != 0
        tau = d[supp].abs().mean()
        assert tau > 0
        assert torch.allclose(d[supp], tau * torch.sign(pi[supp]), atol=1e-12)
        assert bool((d[~supp].abs() <= tau + 1e-12).all())
        assert bool((torch.sign(pi[supp]) == torch.sign(vi[supp])).all())


@pytest.mark.parametrize("method", METHODS)
def test_projection_variational_inequality(method):
    """(v − p)ᵀ(q − p) ≤ 0 for every q in the ball: p is the nearest point (checked on random q)."""
    g = torch.Generator().manual_seed(3)
    v = torch.randn(6, 10, generator=g, dtype=torch.float64) * 3
    p = project_l1_ball(v, 1.0, method=method)
    q = torch.randn(500, 6, 10, generator=g, dtype=torch.float64)
    q = q / q.abs().sum(-1, keepdim=True) * torch.rand(500, 6, 1, generator=g, dtype=torch.float64)
    assert bool((((v - p) * (q - p)).sum(-1) <= 1e-12).all())
    # and no random point of the ball is closer than p
    assert bool(((q - v).norm(dim=-1) >= (p - v).norm(dim=-1) - 1e-12).all())


def test_methods_agree_and_handle_ties_dims_and_dtypes():
    g = torch.Generator().manual_seed(4)
    v = torch.randn(3, 50, 7, generator=g)
    v[0, :, 0] = 0.5  # ties
    v[1, :, 1] = 0.0  # zeros
    ref = project_l1_ball(v.double(), 2.0, dim=1, method="sort")
    for m in METHODS:
        p = project_l1_ball(v, 2.0, dim=1, method=m)
        assert p.dtype == v.dtype and p.shape == v.shape
        assert torch.allclose(p.double(), ref, atol=1e-5)
    tau = l1_ball_threshold(v.double(), 2.0, dim=1)
    assert tau.shape == (3, 7)
    assert torch.allclose(ref.abs().sum(1)[tau > 0], torch.full_like(tau[tau > 0], 2.0), atol=1e-12)


def test_newton_falls_back_to_sort_when_capped():
    g = torch.Generator().manual_seed(5)
    v = torch.randn(8, 300, generator=g, dtype=torch.float64) * 10
    assert torch.allclose(project_l1_ball(v, method="newton", max_iterations=1), project_l1_ball(v, method="sort"))


@pytest.mark.parametrize("method", ["newton", "sort"])
def test_projection_gradient_is_exact(method):
    g = torch.Generator().manual_seed(6)
    v = (torch.randn(3, 6, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: project_l1_ball(z, 1.0, method=method), (v,))
    # analytic Jacobian of one row: I − s sᵀ/|A| on the active set
    row = v[0].detach()
    J = torch.autograd.functional.jacobian(lambda z: project_l1_ball(z[None], 1.0, method=method)[0], row)
    p = project_l1_ball(row[None], 1.0)[0]
    A = p != 0
    s = torch.sign(row) * A
    expected = torch.diag(A.double()) - s[:, None] * s[None, :] / A.sum()
    assert torch.allclose(J, expected, atol=1e-12)


def test_projection_rejects_bad_input():
    with pytest.raises(ValueError, match="radius"):
        project_l1_ball(torch.randn(3), radius=0.0)
    with pytest.raises(ValueError, match="method"):
        project_l1_ball(torch.randn(3), method="bisect")
    with pytest.raises(TypeError):
        project_l1_ball(torch.arange(3))
    with pytest.raises(ValueError, match="non-finite"):
        project_l1_ball(torch.tensor([1.0, float("nan")]))


# ------------------------------------------------------------------ LInfLinear
def _train(model, d, steps=30, lr=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        x = torch.randn(64, d, generator=g)
        y = (x[:, 0] > x[:, 1]).long()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_linf_linear_is_linf_nonexpansive_after_training():
    layer = LInfLinear(6, 4, dtype=torch.float64)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    for _ in range(5):  # big steps push the free parameter far outside the ball
        loss = -layer(torch.randn(32, 6, dtype=torch.float64)).abs().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    layer.eval()
    assert float(layer.parametrizations.weight.original.detach().abs().sum(-1).max()) > 1.5
    jac = torch.autograd.functional.jacobian(layer, torch.zeros(1, 6, dtype=torch.float64)).reshape(4, 6)
    bf = brute_force_linf_norm(jac)  # measured from the layer's real input-output map
    assert bf <= 1 + 1e-12
    assert bf >= 1 - 1e-12  # the projection lands on the sphere for rows that were outside
    assert layer.linf_lipschitz_bound() >= bf
    assert layer.lipschitz_bound() >= float(torch.linalg.matrix_norm(jac, 2)) * (1 - 1e-12)
    # export is a plain nn.Linear with the same eval weight
    lin = layer.to_torch()
    assert type(lin) is nn.Linear and torch.equal(lin.weight, layer.weight)
    x = torch.randn(5, 6, dtype=torch.float64)
    assert torch.allclose(L.export(layer)(x), layer(x))


def test_linf_linear_radius_and_l2_bound_can_exceed_one():
    layer = LInfLinear(8, 8, radius=0.5, bias=False)
    w = torch.zeros(8, 8)
    w[:, 0] = 3.0
    with torch.no_grad():
        layer.weight = w  # every row projected to 0.5·e₁
    layer.eval()
    assert torch.allclose(layer.weight[:, 0], torch.full((8,), 0.5))
    assert abs(layer.linf_lipschitz_bound() - 0.5) < 1e-6
    assert abs(layer.lipschitz_bound() - 0.5 * math.sqrt(8)) < 1e-5  # ‖W‖₂ = ‖column‖₂ = √2 > 1


def test_linf_bound_of_network_is_sound_empirically():
    torch.manual_seed(0)
    net = nn.Sequential(LInfLinear(5, 16), L.GroupSort(4), LInfLinear(16, 8), nn.ReLU(), LInfLinear(8, 3))
    _train(net, 5, steps=10)
    K = linf_lipschitz_bound_of(net)
    assert K <= 1 + 1e-5
    assert linf_lipschitz_bound_of(L.Sequential(*net)) == K
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2000, 5, generator=g, dtype=torch.float64)
    y = x + torch.randn(2000, 5, generator=g, dtype=torch.float64) * 0.3
    net = net.double()
    with torch.no_grad():
        ratio = (net(x) - net(y)).abs().amax(1) / (x - y).abs().amax(1)
    assert float(ratio.max()) <= K * (1 + 1e-9)


def test_linf_bound_of_known_and_unknown_modules():
    lin = nn.Linear(3, 2)
    assert linf_lipschitz_bound_of(lin) == pytest.approx(float(lin.weight.detach().abs().sum(-1).max()), rel=1e-6)
    bj = L.BjorckLinear(4, 4)
    assert linf_lipschitz_bound_of(bj) == pytest.approx(float(bj.eval_weight().abs().sum(-1).max()), rel=1e-6)
    hh = HouseholderActivation(4, dim=-1)
    with torch.no_grad():
        hh.phi.fill_(math.pi / 4)  # |cos| + |sin| = √2
    assert linf_lipschitz_bound_of(hh) == pytest.approx(math.sqrt(2), rel=1e-6)
    assert linf_lipschitz_bound_of(nn.LeakyReLU(0.1)) == 1.0
    with pytest.raises(UnboundedModuleError, match="Bilinear"):
        linf_lipschitz_bound_of(nn.Bilinear(2, 2, 3))
    with pytest.raises(UnboundedModuleError, match="Softmax"):
        linf_lipschitz_bound_of(nn.Sequential(LInfLinear(2, 2), nn.Softmax(-1)))


# ------------------------------------------------------------------ certificates
def test_linf_margin_constant_is_tight_and_seed_constant_is_not_sound():
    """f(x) = (x₁, −x₁) is 1-Lipschitz in ∞; margin 2x₁ falls by exactly 2ε under δ = −εe₁."""
    layer = LInfLinear(2, 2, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    layer.eval()
    K = linf_lipschitz_bound_of(layer)
    assert K == pytest.approx(1.0)
    x = torch.tensor([[0.3, 0.0]], dtype=torch.float64)
    logits = layer(x)
    r = float(certified_radius_linf(logits, K)[0])
    assert r == pytest.approx(0.3, rel=1e-5) and r <= 0.3
    # the sometimes-stated condition M > Kε/2 would certify ε = 1.1 (M = 0.6 > 0.55): the attack breaks it
    eps = 1.1
    assert float(logits[0, 0] - logits[0, 1]) > K * eps / 2
    x_adv = x - torch.tensor([[eps, 0.0]], dtype=torch.float64)
    assert int(layer(x_adv).argmax()) != 0
    # our condition refuses it, and just above the radius the attack succeeds too
    assert not bool(certify_linf(logits, K, eps)[0])
    assert int(layer(x - torch.tensor([[r * 1.01, 0.0]], dtype=torch.float64)).argmax()) != 0
    assert linf_margin_condition(K, eps) == pytest.approx(2.2)


def test_linf_certificate_survives_pgd_on_trained_net():
    from liplayers.analysis import attacks
    torch.manual_seed(0)
    net = nn.Sequential(LInfLinear(2, 16), L.MaxMin(), LInfLinear(16, 16), L.MaxMin(), LInfLinear(16, 3)).double()
    g = torch.Generator().manual_seed(8)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    hinge = nn.MultiMarginLoss(margin=0.5)
    for _ in range(100):
        x = torch.rand(128, 2, generator=g, dtype=torch.float64)
        y = (x[:, 0] * 3).long().clamp(max=2)
        loss = hinge(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    K = linf_lipschitz_bound_of(net)
    x = torch.rand(128, 2, generator=g, dtype=torch.float64)
    y = (x[:, 0] * 3).long().clamp(max=2)
    with torch.no_grad():
        logits = net(x)
    r = certified_radius_linf(logits, K, y)
    keep = r > 1e-3
    assert int(keep.sum()) >= 30  # the net learned something certifiable
    x, y, r = x[keep], y[keep], r[keep]
    adv = attacks.pgd_attack(net, x, y, eps=r * 0.999, norm="linf", steps=50, domain=None,
                             generator=torch.Generator().manual_seed(9))
    assert bool(((adv - x).abs().amax(1) <= r * 0.999 + 1e-12).all())
    with torch.no_grad():
        assert bool((net(adv).argmax(1) == y).all())
    # the attack has teeth: at 4× the radius (the too-optimistic Kε/2 condition) it flips some points
    adv4 = attacks.pgd_attack(net, x, y, eps=r * 4, norm="linf", steps=50, domain=None,
                              generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert int((net(adv4).argmax(1) != y).sum()) > 0


def test_certified_radius_linf_last_layer_and_binary():
    g = torch.Generator().manual_seed(10)
    W = torch.randn(4, 6, generator=g, dtype=torch.float64)
    W = W / W.abs().sum(-1, keepdim=True)  # rows on the unit L1 sphere
    h = torch.randn(32, 6, generator=g, dtype=torch.float64)
    logits = h @ W.T
    plain = certified_radius_linf(logits, 1.0)
    tight = certified_radius_linf(logits, 1.0, last_layer_weight=W)
    assert bool((tight >= plain - 1e-12).all()) and bool((tight > plain).any())
    # exactness of the last-layer radius for a linear model: the worst δ = −r·sign(w_t − w_i)
    t = logits.argmax(1)
    for b in range(8):
        diffs = (logits[b, t[b]] - logits[b]) / (W[t[b]] - W).abs().sum(-1)
        diffs[t[b]] = math.inf
        i = int(diffs.argmin())
        delta = -float(tight[b]) * 1.0001 * torch.sign(W[t[b]] - W[i])
        out = (h[b] + delta) @ W.T
        assert out[i] >= out[t[b]]
    # binary single logit: |f|/K, 0 when misclassified
    f = torch.tensor([0.5, -0.2, 0.1])
    r = certified_radius_linf(f, 2.0, torch.tensor([1, 0, 0]))
    assert torch.allclose(r, torch.tensor([0.25, 0.1, 0.0], dtype=torch.float64), atol=1e-4)
    assert bool((r <= torch.tensor([0.25, 0.1, 0.0], dtype=torch.float64)).all())
    with pytest.raises(ValueError, match="linf_lipschitz"):
        certified_radius_linf(f, 0.0)


# ------------------------------------------------------------------ property-based and plumbing
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.lists(st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 3.0]), min_size=1, max_size=9),
                min_size=1, max_size=4).filter(lambda rows: len({len(r) for r in rows}) == 1),
       st.sampled_from([0.1, 1.0, 2.5]))
def test_projection_methods_agree_on_ties_and_zeros(rows, radius):
    v = torch.tensor(rows, dtype=torch.float64)
    ref = project_l1_ball(v, radius, method="sort")
    for m in ("newton", "condat"):
        assert torch.allclose(project_l1_ball(v, radius, method=m), ref, atol=1e-12)
    assert bool((ref.abs().sum(-1) <= radius * (1 + 1e-12)).all())
    # non-expansive in L2 (a projection onto a convex set)
    w = v + 0.1
    assert bool(((project_l1_ball(w, radius) - ref).norm(dim=-1) <= (w - v).norm(dim=-1) + 1e-12).all())


def test_linf_linear_state_dict_round_trip_and_cached():
    a = LInfLinear(5, 3)
    with torch.no_grad():
        a.weight = torch.randn(3, 5) * 4
    b = LInfLinear(5, 3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(7, 5)
    a.eval()
    b.eval()
    assert torch.equal(a(x), b(x))
    with torch.nn.utils.parametrize.cached():
        assert torch.equal(a(x), b(x))
    assert a.linf_lipschitz_bound() <= 1 + 1e-6


def test_linf_bound_refuses_a_subclass_that_overrides_forward():
    class Doubled(torch.nn.ReLU):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(UnboundedModuleError, match="overrides forward"):
        linf_lipschitz_bound_of(Doubled())
