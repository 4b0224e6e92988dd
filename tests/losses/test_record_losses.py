"""Offset CE, GloRo, certificate regularization, EMMA, logit annealing and the ε ramp.

Reference values are computed by hand (closed forms written out in the comments) in float64.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from liplayers.losses.certificate import (
    CertificateRegularizedLoss,
    EMMALoss,
    LogitAnnealingLoss,
    certified_radius_of_target,
)
from liplayers.losses.gloro import GloRoLoss, gloro_logits, gloro_predict
from liplayers.losses.offset import OffsetCrossEntropyLoss
from liplayers.losses.schedules import EpsilonRamp

SQ2 = math.sqrt(2.0)
D = torch.float64


def t(*rows):
    return torch.tensor(rows, dtype=D)


def lab(*ys):
    return torch.tensor(ys, dtype=torch.long)


# three unit-ish rows: ‖w0 − w1‖ = √2, ‖w0 − w2‖ = 2, ‖w1 − w2‖ = √2; ‖W‖₂ = √2
W3 = t([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0])
F0 = t([2.0, 1.0, 0.5])  # logits used for most hand values, label 0
Y0 = lab(0)


# --------------------------------------------------------------------------- offset CE
def test_offset_ce_hand_values():
    # u = 0.5, τ = 0.5: τ·(log(e^{(2−0.5)/0.5} + e^{1/0.5} + e^{0.5/0.5}) − (2−0.5)/0.5)
    loss = OffsetCrossEntropyLoss(offset=0.5, temperature=0.5)
    assert loss(F0, Y0).item() == pytest.approx(0.2038029822221903, abs=1e-12)
    # defaults u = √2, τ = 1/4, label 1: 0.25·(log(e^8 + e^{4 − 4√2} + e^2) − (4 − 4√2))
    assert OffsetCrossEntropyLoss()(F0, lab(1)).item() == pytest.approx(2.4148484399673222, abs=1e-12)
    # it is τ·CE((f − u e_y)/τ, y)
    f = torch.randn(5, 4, dtype=D)
    y = torch.randint(0, 4, (5,))
    ref = 0.3 * F.cross_entropy((f - 0.7 * F.one_hot(y, 4).to(D)) / 0.3, y)
    assert OffsetCrossEntropyLoss(0.7, 0.3)(f, y).item() == pytest.approx(ref.item(), abs=1e-12)


def test_offset_ce_limits_and_gradient_signs():
    # τ → 0: hinge max(0, u − (f_y − max_{j≠y} f_j)); margin here is 1
    assert OffsetCrossEntropyLoss(0.5, 1e-3)(F0, Y0).item() == pytest.approx(0.0, abs=1e-6)
    assert OffsetCrossEntropyLoss(1.5, 1e-3)(F0, Y0).item() == pytest.approx(0.5, abs=1e-6)
    f = torch.randn(6, 5, dtype=D, requires_grad=True)
    y = torch.randint(0, 5, (6,))
    OffsetCrossEntropyLoss(1.0, 0.25, reduction="sum")(f, y).backward()
    onehot = F.one_hot(y, 5).bool()
    assert (f.grad[onehot] < 0).all() and (f.grad[~onehot] > 0).all()  # true logit pushed up
    assert torch.allclose(f.grad.sum(1), torch.zeros(6, dtype=D), atol=1e-12)


def test_offset_ce_for_radius_and_set_eps():
    loss = OffsetCrossEntropyLoss.for_radius(36 / 255)
    assert loss.offset == pytest.approx(0.39930735878769746, abs=1e-15)  # 2√2·36/255
    assert loss.temperature == 0.25
    loss = OffsetCrossEntropyLoss.for_radius(0.5, lipschitz=2.0)
    assert loss.offset == pytest.approx(2 * SQ2, abs=1e-15)
    loss.set_eps(0.25)
    assert loss.offset == pytest.approx(SQ2, abs=1e-15) and loss.eps == 0.25
    with pytest.raises(ValueError, match="for_radius"):
        OffsetCrossEntropyLoss(1.0).set_eps(0.1)
    with pytest.raises(ValueError):
        OffsetCrossEntropyLoss.for_radius(-0.1)
    with pytest.raises(ValueError):
        OffsetCrossEntropyLoss.for_radius(0.1, lipschitz=0.0)


# --------------------------------------------------------------------------- GloRo
def test_gloro_hand_values():
    # pairwise, L' = 1, ε = 0.3, anchor = prediction 0:
    # f_⊥ = max(1 + 0.3·√2, 0.5 + 0.3·2) = 1.4242640687...; CE([2, 1, .5, f_⊥], 0)
    z = gloro_logits(F0, 1.0, 0.3, last_weight=W3)
    assert z[0, 3].item() == pytest.approx(1 + 0.3 * SQ2, abs=1e-12)
    assert GloRoLoss(0.3)(F0, Y0, 1.0, W3).item() == pytest.approx(0.7670017861385157, abs=1e-12)
    # global constant √2·L with L = 1.5: f_⊥ = 1 + 0.3·√2·1.5
    assert gloro_logits(F0, 1.5, 0.3)[0, 3].item() == pytest.approx(1.6363961030678928, abs=1e-12)
    # TRADES form, λ = 2: CE(f, 0) + 2·softplus(f_⊥ − logsumexp f)
    assert GloRoLoss(0.3, lam=2.0)(F0, Y0, 1.0, W3).item() == pytest.approx(1.0696347881690869, abs=1e-12)
    # ε = 0: f_⊥ = second largest logit; GloRo CE = CE on the C+1 logits [2, 1, .5, 1]
    assert GloRoLoss(0.0)(F0, Y0, 1.0).item() == pytest.approx(
        math.log(math.exp(2) + 2 * math.exp(1) + math.exp(0.5)) - 2, abs=1e-12)


def test_gloro_trades_kl_identity():
    f = torch.randn(7, 4, dtype=D)
    y = torch.randint(0, 4, (7,))
    z = gloro_logits(f, 1.0, 0.2)
    p = torch.cat([f.softmax(1), torch.zeros(7, 1, dtype=D)], 1)
    log_q = z.log_softmax(1)
    kl = (p[:, :4] * (p[:, :4].log() - log_q[:, :4])).sum(1)  # KL([p, 0] ‖ q)
    got = GloRoLoss(0.2, lam=1.0, reduction="none")(f, y, 1.0)
    assert torch.allclose(got, F.cross_entropy(f, y, reduction="none") + kl, atol=1e-12)


def test_gloro_anchor_target_vs_prediction():
    f, y = t([1.0, 2.0, 0.5]), lab(0)  # misclassified: prediction 1
    # anchor = target 0: f_⊥ = max(2 + 0.3√2, 0.5 + 0.3√2) (global, L = 1)
    assert GloRoLoss(0.3, anchor="target")(f, y, 1.0).item() == pytest.approx(2.1376646420224477, abs=1e-12)
    # anchor = prediction 1: f_⊥ = max(1 + 0.3√2, 0.5 + 0.3√2)
    assert GloRoLoss(0.3)(f, y, 1.0).item() == pytest.approx(1.7670017861385157, abs=1e-12)
    g = torch.randn(9, 5, dtype=D)
    yy = g.argmax(1)  # all correct: both anchors agree
    assert torch.allclose(GloRoLoss(0.4, anchor="target")(g, yy, 1.3), GloRoLoss(0.4)(g, yy, 1.3), atol=1e-14)


def _radius_loops(f, W, L):
    """Independent float64 certified radius of the prediction: explicit pair loops."""
    out = []
    for row in f.tolist():
        a = max(range(len(row)), key=lambda i: row[i])
        r = math.inf
        for j in range(len(row)):
            if j != a:
                k = L * math.dist(W[a].tolist(), W[j].tolist()) if W is not None else SQ2 * L
                r = min(r, (row[a] - row[j]) / k)
        out.append(r)
    return torch.tensor(out, dtype=D)


def test_gloro_bottom_wins_exactly_when_certificate_fails():
    # Linear model f = W x (body = identity, L' = 1): the pairwise certificate is exact.
    x = torch.tensor([[1.5, 0.5]], dtype=D)
    W = t([1.0, 0.0], [0.0, 1.0], [-0.5, 0.0])
    f = x @ W.T  # [1.5, 0.5, -0.75]
    # radius = min((1.5 − 0.5)/√2, (1.5 + 0.75)/1.5) = min(0.7071, 1.5) = 1/√2
    r = 1 / SQ2
    assert certified_radius_of_target(f, lab(0), 1.0, W).item() == pytest.approx(r, abs=1e-15)
    assert gloro_predict(f, 1.0, r - 1e-9, W).item() == 0  # certified
    assert gloro_predict(f, 1.0, r, W).item() == 3  # tie: abstain
    assert gloro_predict(f, 1.0, r + 1e-9, W).item() == 3  # ⊥
    assert gloro_logits(f, 1.0, r + 1e-9, W).argmax(1).item() == 3
    # the abstention is justified: a perturbation of norm just above r flips the class
    d = (W[0] - W[1]) / torch.linalg.vector_norm(W[0] - W[1])
    f_adv = (x - (r + 1e-9) * d) @ W.T
    assert f_adv[0, 1] > f_adv[0, 0]
    # and within radius r no perturbation changes the class (random directions, float64)
    dirs = torch.randn(2000, 2, dtype=D)
    dirs = dirs / torch.linalg.vector_norm(dirs, dim=1, keepdim=True)
    assert ((x + (r * (1 - 1e-9)) * dirs) @ W.T).argmax(1).eq(0).all()


@pytest.mark.parametrize("pairwise", [True, False])
def test_gloro_predict_matches_independent_radius(pairwise):
    g = torch.Generator().manual_seed(3)
    f = torch.randn(300, 6, dtype=D, generator=g) * 2
    W = torch.randn(6, 4, dtype=D, generator=g) if pairwise else None
    L, eps = 0.8, 0.5
    r = _radius_loops(f, W, L)
    pred = gloro_predict(f, L, eps, W)
    assert ((pred == 6) == (r <= eps)).all()
    assert (pred[r > eps] == f.argmax(1)[r > eps]).all()
    assert 30 < int((r <= eps).sum()) < 270  # both outcomes exercised


def test_gloro_global_constant_never_beats_pairwise():
    # with L_total = L'·‖W‖₂ the global √2 L_total ≥ L'‖w_a − w_j‖, so abstention only grows
    g = torch.Generator().manual_seed(4)
    W = torch.randn(5, 3, dtype=D, generator=g)
    f = torch.randn(200, 5, dtype=D, generator=g)
    L_total = torch.linalg.matrix_norm(W, 2).item()
    pair = gloro_predict(f, 1.0, 0.3, W) == 5
    glob = gloro_predict(f, L_total, 0.3) == 5
    assert (glob | ~pair).all()


def test_gloro_gradients_reach_lipschitz_and_weight():
    W = W3.clone().requires_grad_(True)
    L = torch.tensor(1.2, dtype=D, requires_grad=True)
    f = F0.clone().requires_grad_(True)
    GloRoLoss(0.3)(f, Y0, L, W).backward()
    assert L.grad.item() > 0  # a larger bound raises f_⊥ and the loss
    assert torch.isfinite(W.grad).all() and W.grad.abs().sum() > 0
    assert f.grad[0, 0] < 0  # true logit pushed up
    # identical rows (zero pairwise distance) give finite gradients
    Wd = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=D, requires_grad=True)
    GloRoLoss(0.3, anchor="target")(F0, Y0, 1.0, Wd).backward()
    assert torch.isfinite(Wd.grad).all()


@pytest.mark.parametrize("pairwise", [True, False])
def test_dtype_follows_logits(pairwise):
    f = torch.randn(4, 3)  # float32 logits, float64 bound and weight
    W = W3 if pairwise else None
    L = torch.tensor(1.0, dtype=D)
    assert gloro_logits(f, L, 0.2, W).dtype == torch.float32
    assert GloRoLoss(0.2)(f, lab(0, 1, 2, 0), L, W).dtype == torch.float32
    assert EMMALoss(0.2)(f, lab(0, 1, 2, 0), L, W).dtype == torch.float32


def test_gloro_bad_inputs():
    loss = GloRoLoss(0.3)
    with pytest.raises(ValueError):
        GloRoLoss(-0.1)
    with pytest.raises(ValueError):
        GloRoLoss(0.1, lam=-1.0)
    with pytest.raises(ValueError):
        GloRoLoss(0.1, anchor="label")
    with pytest.raises(ValueError):
        GloRoLoss(0.1, reduction="avg")
    with pytest.raises(ValueError, match="lipschitz"):
        loss(F0, Y0, 0.0)
    with pytest.raises(ValueError, match="lipschitz"):
        loss(F0, Y0, float("nan"))
    with pytest.raises(ValueError, match="lipschitz"):
        loss(F0, Y0, torch.ones(2))
    with pytest.raises(ValueError, match="rows"):
        loss(F0, Y0, 1.0, W3[:2])
    with pytest.raises(ValueError, match="class indices"):
        loss(F0, lab(3), 1.0)
    with pytest.raises(ValueError, match="shape"):
        loss(F0, lab(0, 1), 1.0)
    with pytest.raises(ValueError, match="C >= 2"):
        loss(t([1.0]), Y0, 1.0)
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        loss(torch.zeros(2, 3, 4), lab(0, 1), 1.0)
    with pytest.raises(ValueError):
        gloro_logits(F0, 1.0, -0.5)
    with pytest.raises(ValueError):
        gloro_logits(torch.zeros(2, 3, dtype=torch.long), 1.0, 0.5)


# --------------------------------------------------------------------------- certificate regularization
def test_certificate_regularized_hand_values():
    ce = math.log(math.exp(2) + math.exp(1) + math.exp(0.5)) - 2  # 0.4643687841079447
    # global, L = 1: r = (2 − 1)/√2
    assert CertificateRegularizedLoss(0.5)(F0, Y0, 1.0).item() == pytest.approx(0.11081539351467096, abs=1e-12)
    assert CertificateRegularizedLoss(0.5, threshold=0.5)(F0, Y0, 1.0).item() == pytest.approx(
        0.2143687841079447, abs=1e-12)
    # pairwise: r = min(1/√2, 1.5/2) = 1/√2 here; with logits [2, .5, 1]: min(1.5/√2, 1/2) = 0.5
    assert certified_radius_of_target(t([2.0, 0.5, 1.0]), Y0, 1.0, W3).item() == pytest.approx(0.5, abs=1e-15)
    assert CertificateRegularizedLoss(1.0)(t([2.0, 0.5, 1.0]), Y0, 1.0, W3).item() == pytest.approx(
        math.log(math.exp(2) + math.exp(0.5) + math.exp(1)) - 2 - 0.5, abs=1e-12)
    # misclassified: relu(r) = 0, the loss is the cross-entropy
    f = t([1.0, 2.0, 0.5])
    assert CertificateRegularizedLoss(3.0)(f, Y0, 1.0).item() == pytest.approx(F.cross_entropy(f, Y0).item())
    assert ce == pytest.approx(0.4643687841079447)


def test_certificate_regularized_gradient_and_degenerate_rows():
    f = F0.clone().requires_grad_(True)
    CertificateRegularizedLoss(1.0)(f, Y0, 1.0).backward()
    g_cr = f.grad.clone()
    f.grad = None
    F.cross_entropy(f, Y0).backward()
    # the reward adds −1/√2 on f_y and +1/√2 on the runner-up
    assert g_cr[0, 0].item() == pytest.approx(f.grad[0, 0].item() - 1 / SQ2, abs=1e-12)
    assert g_cr[0, 1].item() == pytest.approx(f.grad[0, 1].item() + 1 / SQ2, abs=1e-12)
    # two identical rows: that pair can never swap (radius +inf); capped reward, finite gradient
    Wd = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=D, requires_grad=True)
    f2 = t([1.0, 0.0]).requires_grad_(True)
    assert certified_radius_of_target(f2, Y0, 1.0, Wd).item() == math.inf
    loss = CertificateRegularizedLoss(1.0, threshold=0.3)(f2, Y0, 1.0, Wd)
    loss.backward()
    assert loss.item() == pytest.approx(F.cross_entropy(f2.detach(), Y0).item() - 0.3)
    assert torch.isfinite(Wd.grad).all() and torch.isfinite(f2.grad).all()


def test_certificate_regularized_bad_inputs():
    with pytest.raises(ValueError):
        CertificateRegularizedLoss(-1.0)
    with pytest.raises(ValueError):
        CertificateRegularizedLoss(1.0, threshold=0.0)
    with pytest.raises(ValueError):
        CertificateRegularizedLoss(1.0, threshold=-1.0)
    with pytest.raises(ValueError):
        CertificateRegularizedLoss()(F0, Y0, -2.0)
    with pytest.raises(ValueError):
        CertificateRegularizedLoss()(F0, lab(-1), 1.0)


# --------------------------------------------------------------------------- EMMA
def test_emma_hand_values():
    # ε = 0.3, pairwise: both pairs already certified (1 ≥ 0.3√2, 1.5 ≥ 0.3·2): full lift
    lifted = EMMALoss(0.3).lifted_logits(F0, Y0, 1.0, W3)
    assert torch.allclose(lifted, t([2.0, 1 + 0.3 * SQ2, 1.1]), atol=1e-14)
    assert EMMALoss(0.3)(F0, Y0, 1.0, W3).item() == pytest.approx(0.6774549839298625, abs=1e-12)
    # ε = 1: neither pair certified: both lifted to a tie with f_y → CE = log 3
    assert EMMALoss(1.0)(F0, Y0, 1.0, W3).item() == pytest.approx(math.log(3), abs=1e-12)
    # misclassified (global, L = 1, ε = 0.3): class 1 beats y → floor 0.01·ε·√2;
    # class 2: margin 0.5 ≥ 0.3√2 → full lift
    f = t([1.0, 2.0, 0.5])
    lifted = EMMALoss(0.3).lifted_logits(f, Y0, 1.0)
    assert torch.allclose(lifted, t([1.0, 2 + 0.01 * 0.3 * SQ2, 0.5 + 0.3 * SQ2]), atol=1e-14)
    assert EMMALoss(0.3)(f, Y0, 1.0).item() == pytest.approx(1.5383499913096177, abs=1e-12)
    # ε = 0 is the cross-entropy
    g = torch.randn(5, 4, dtype=D)
    y = torch.randint(0, 4, (5,))
    assert EMMALoss(0.0)(g, y, 1.0).item() == pytest.approx(F.cross_entropy(g, y).item(), abs=1e-14)


def test_emma_stop_gradient():
    # ε_j is a constant: d loss / d f = softmax(f̃) − e_y; at the all-tie point that is 1/3 − e_y
    f = F0.clone().requires_grad_(True)
    EMMALoss(1.0)(f, Y0, 1.0, W3).backward()
    assert torch.allclose(f.grad, t([1 / 3 - 1, 1 / 3, 1 / 3]), atol=1e-12)
    # K keeps its gradient (as the authors' implementation): a larger bound raises the loss
    L = torch.tensor(1.0, dtype=D, requires_grad=True)
    EMMALoss(0.3)(F0, Y0, L).backward()
    assert L.grad.item() > 0


def test_emma_bad_inputs():
    with pytest.raises(ValueError):
        EMMALoss(-0.1)
    with pytest.raises(ValueError):
        EMMALoss(0.1, min_fraction=1.5)
    with pytest.raises(ValueError):
        EMMALoss(0.1)(F0, Y0, 1.0, torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        EMMALoss(0.1)(F0, t(0.0), 1.0)  # float labels


# --------------------------------------------------------------------------- logit annealing
def test_logit_annealing_hand_values():
    # ξ = 2, T = 0.75, β = 5: ce = CE([(2−2)/.75, 1/.75, .5/.75], 0) = 1.9082679056297223,
    # p_t = e^{−ce} = 0.14833709805949274, loss = 0.75·(1 − p_t)^5·ce
    assert LogitAnnealingLoss()(F0, Y0).item() == pytest.approx(0.6412675433963257, abs=1e-12)
    # β = 0 is the offset cross-entropy with the same offset and temperature
    g = torch.randn(6, 5, dtype=D)
    y = torch.randint(0, 5, (6,))
    assert LogitAnnealingLoss(1.3, 0.4, beta=0.0)(g, y).item() == pytest.approx(
        OffsetCrossEntropyLoss(1.3, 0.4)(g, y).item(), abs=1e-12)
    # with the EMMA lift (ε = 1, global L = 1): z = [2, 2, 0.5 + √2] then LA
    assert LogitAnnealingLoss(eps=1.0)(F0, Y0, 1.0).item() == pytest.approx(2.091843115807051, abs=1e-12)
    lifted = EMMALoss(0.7).lifted_logits(g, y, 1.1)
    assert LogitAnnealingLoss(eps=0.7)(g, y, 1.1).item() == pytest.approx(LogitAnnealingLoss()(lifted, y).item(),
                                                                       abs=1e-12)


def test_logit_annealing_anneals_large_margins():
    # the annealing factor shrinks the gradient of a large-margin sample far more than that of a small one
    def grad_norm(loss, f):
        f = f.clone().requires_grad_(True)
        loss(f, Y0).backward()
        return f.grad.norm().item()

    la, ox = LogitAnnealingLoss(), OffsetCrossEntropyLoss(2.0, 0.75)
    small, large = t([1.0, 0.5, 0.0]), t([6.0, 0.5, 0.0])
    assert grad_norm(la, large) / grad_norm(ox, large) < 1e-3 * grad_norm(la, small) / grad_norm(ox, small)
    # p_t → 1 (huge margin): finite value and gradient, in float32 too
    for dtype in (torch.float32, torch.float64):
        f = torch.tensor([[200.0, 0.0, -5.0]], dtype=dtype, requires_grad=True)
        loss = la(f, Y0)
        loss.backward()
        assert loss.item() == pytest.approx(0.0, abs=1e-30) and torch.isfinite(f.grad).all()
    f = F0.clone().requires_grad_(True)
    la(f, Y0).backward()
    assert f.grad[0, 0] < 0 and (f.grad[0, 1:] > 0).all()


def test_logit_annealing_bad_inputs():
    with pytest.raises(ValueError):
        LogitAnnealingLoss(temperature=0.0)
    with pytest.raises(ValueError):
        LogitAnnealingLoss(beta=-1.0)
    with pytest.raises(ValueError):
        LogitAnnealingLoss(offset=float("inf"))
    with pytest.raises(ValueError, match="lipschitz"):
        LogitAnnealingLoss(eps=0.5)(F0, Y0)
    with pytest.raises(ValueError, match="eps > 0"):
        LogitAnnealingLoss()(F0, Y0, 1.0, W3)


# --------------------------------------------------------------------------- reductions (all losses)
def _all_losses():
    return [
        ("offset", lambda r: OffsetCrossEntropyLoss(reduction=r), ()),
        ("gloro", lambda r: GloRoLoss(0.2, reduction=r), (1.0,)),
        ("gloro_trades", lambda r: GloRoLoss(0.2, lam=1.0, reduction=r), (1.0, W3)),
        ("cr", lambda r: CertificateRegularizedLoss(0.5, reduction=r), (1.0,)),
        ("emma", lambda r: EMMALoss(0.2, reduction=r), (1.0, W3)),
        ("la", lambda r: LogitAnnealingLoss(eps=0.2, reduction=r), (1.0,)),
    ]


@pytest.mark.parametrize("name,make,extra", _all_losses(), ids=[n for n, _, _ in _all_losses()])
def test_reductions(name, make, extra):
    f = torch.randn(8, 3, dtype=D)
    y = torch.randint(0, 3, (8,))
    per = make("none")(f, y, *extra)
    assert per.shape == (8,)
    assert make("sum")(f, y, *extra).item() == pytest.approx(per.sum().item(), abs=1e-12)
    assert make("mean")(f, y, *extra).item() == pytest.approx(per.mean().item(), abs=1e-12)
    for i in range(8):  # rows are independent
        assert make("none")(f[i:i + 1], y[i:i + 1], *extra).item() == pytest.approx(per[i].item(), abs=1e-12)
    with pytest.raises(ValueError):
        make("avg")


# --------------------------------------------------------------------------- ε ramp
def test_epsilon_ramp_values():
    lin = EpsilonRamp(0.0, 0.5, 10)
    assert [lin(s) for s in (0, 2.5, 5, 10, 20)] == pytest.approx([0.0, 0.125, 0.25, 0.5, 0.5], abs=1e-15)
    cos = EpsilonRamp(0.0, 0.5, 10, schedule="cosine")
    # 0.5·(1 − cos(π u))/2 at u = 0.25, 0.5
    assert cos(2.5) == pytest.approx(0.0732233047033631, abs=1e-15)
    assert cos(5) == pytest.approx(0.25, abs=1e-15) and cos(0) == 0.0 and cos(10) == 0.5
    delayed = EpsilonRamp(0.1, 0.3, 4, delay=2)
    assert [delayed(s) for s in (0, 2, 4, 6, 100)] == pytest.approx([0.1, 0.1, 0.2, 0.3, 0.3], abs=1e-15)
    assert EpsilonRamp(0.0, 0.4, 0)(0) == 0.0 and EpsilonRamp(0.0, 0.4, 0)(1e-9) == 0.4
    assert EpsilonRamp(1.0, 0.0, 4)(1) == pytest.approx(0.75)  # ramps down
    import numpy as np
    assert lin(np.int64(5)) == pytest.approx(0.25)


def test_epsilon_ramp_drives_losses():
    ramp = EpsilonRamp(0.0, 0.5, 10)
    losses = [GloRoLoss(0.0), EMMALoss(0.0), LogitAnnealingLoss(), OffsetCrossEntropyLoss.for_radius(0.0)]
    assert ramp.update(4, *losses) == pytest.approx(0.2)
    assert all(loss.eps == pytest.approx(0.2) for loss in losses)
    assert losses[3].offset == pytest.approx(2 * SQ2 * 0.2)
    with pytest.raises(ValueError, match="set_eps"):
        ramp.update(1, CertificateRegularizedLoss())
    with pytest.raises(ValueError):
        losses[0].set_eps(-0.1)


def test_epsilon_ramp_bad_inputs():
    with pytest.raises(ValueError):
        EpsilonRamp(-0.1, 0.5, 10)
    with pytest.raises(ValueError):
        EpsilonRamp(0.0, float("nan"), 10)
    with pytest.raises(ValueError):
        EpsilonRamp(0.0, 0.5, -1)
    with pytest.raises(ValueError):
        EpsilonRamp(0.0, 0.5, 10, schedule="exp")
    with pytest.raises(ValueError):
        EpsilonRamp(0.0, 0.5, 10)(-1)
