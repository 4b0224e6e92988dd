"""Tests for liplayers.functional.geometry: Fisher-Rao distance, KL, Hellinger, delta_m, boundary distance."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from liplayers.functional.geometry import (
    MAX_BOUNDARY_DISTANCE,
    bhattacharyya_coefficient,
    delta_m,
    distance_to_decision_boundary,
    fisher_rao_distance,
    fisher_rao_distance_binary,
    get_divergence,
    hellinger_distance,
    kl_divergence,
    max_boundary_distance,
    stereographic_coordinates,
)

D64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _logits(*shape, scale=2.0, seed=0, dtype=D64):
    return scale * torch.randn(*shape, generator=_gen(seed), dtype=dtype)


# ----------------------------------------------------------------- closed forms
def test_matches_arccos_form_batched():
    a, b = _logits(4, 3, 5, seed=1), _logits(4, 3, 5, seed=2)
    d = fisher_rao_distance(a, b)
    assert d.shape == (4, 3)
    bc = (torch.softmax(a, -1) * torch.softmax(b, -1)).sqrt().sum(-1)
    torch.testing.assert_close(d, 2 * torch.acos(bc), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(bhattacharyya_coefficient(a, b), bc)
    # probabilities input gives the same value
    torch.testing.assert_close(
        fisher_rao_distance(torch.softmax(a, -1), torch.softmax(b, -1), from_logits=False), d)


def test_symmetric_and_triangle_inequality():
    a, b, c = (_logits(200, 4, seed=s) for s in (3, 4, 5))
    dab, dba = fisher_rao_distance(a, b), fisher_rao_distance(b, a)
    torch.testing.assert_close(dab, dba)
    assert bool((dab <= fisher_rao_distance(a, c) + fisher_rao_distance(c, b) + 1e-12).all())


def test_binary_agrees_with_multiclass_for_two_classes():
    h1 = torch.cat([_logits(500, scale=5.0, seed=6), torch.tensor([-40.0, 0.0, 40.0], dtype=D64)])
    h2 = torch.cat([_logits(500, scale=5.0, seed=7), torch.tensor([35.0, 0.0, -30.0], dtype=D64)])
    zero = torch.zeros_like(h1)
    multi = fisher_rao_distance(torch.stack([zero, h1], -1), torch.stack([zero, h2], -1))
    torch.testing.assert_close(fisher_rao_distance_binary(h1, h2), multi, rtol=1e-9, atol=1e-12)
    # and with Picot et al.'s literal eq. 9 where exp does not overflow
    lit = 2 * (torch.atan(torch.exp(h2 / 2)) - torch.atan(torch.exp(h1 / 2))).abs()
    torch.testing.assert_close(fisher_rao_distance_binary(h1, h2), lit, rtol=1e-9, atol=1e-12)


def test_proposition_1_bound():
    """Picot et al. (2022) Prop. 1: d <= |h(x') - h(x)| / 2, tight for small differences around h = 0."""
    h1, h2 = _logits(2000, scale=6.0, seed=8), _logits(2000, scale=6.0, seed=9)
    d = fisher_rao_distance_binary(h1, h2)
    assert bool((d <= 0.5 * (h2 - h1).abs() + 1e-12).all())
    # tightness: f'(0) = 1/4 is the sup of f', so near h = 0 the ratio tends to 1
    small = torch.tensor([1e-6], dtype=D64)
    ratio = fisher_rao_distance_binary(-small, small) / (0.5 * 2 * small)
    assert abs(float(ratio) - 1.0) < 1e-9


def test_theorem_3_kl_bound_and_hellinger_relation():
    a, b = _logits(3000, 6, scale=3.0, seed=10), _logits(3000, 6, scale=3.0, seed=11)
    d = fisher_rao_distance(a, b)
    for kl in (kl_divergence(a, b), kl_divergence(b, a)):
        assert bool((1 - torch.cos(d / 2) <= kl / 2 + 1e-12).all())
    h = hellinger_distance(a, b)
    torch.testing.assert_close(h ** 2, 2 * (1 - torch.cos(d / 2)), rtol=1e-9, atol=1e-12)  # eq. 47
    assert bool((h <= math.sqrt(2) + 1e-12).all())


def test_kl_is_half_d_squared_for_close_distributions():
    a = _logits(50, 5, seed=12)
    direction = _logits(50, 5, scale=1.0, seed=13)
    errs = []
    for t in (1e-2, 1e-3):
        b = a + t * direction
        d = fisher_rao_distance(a, b)
        rel = ((kl_divergence(a, b) - d ** 2 / 2).abs() / (d ** 2 / 2)).max()
        errs.append(float(rel))
    assert errs[1] < 2e-3  # O(d) relative error
    assert errs[1] < errs[0] / 5  # and it shrinks linearly with the step


def test_kl_probabilities_match_logits_and_inf_for_unsupported():
    a, b = _logits(10, 4, seed=14), _logits(10, 4, seed=15)
    torch.testing.assert_close(
        kl_divergence(torch.softmax(a, -1), torch.softmax(b, -1), from_logits=False), kl_divergence(a, b))
    p = torch.tensor([0.5, 0.5, 0.0], dtype=D64)
    q = torch.tensor([1.0, 0.0, 0.0], dtype=D64)
    assert math.isinf(float(kl_divergence(p, q, from_logits=False)))
    torch.testing.assert_close(kl_divergence(q, p, from_logits=False), torch.tensor(math.log(2), dtype=D64))


def test_pi_for_disjoint_supports_and_zero_for_equal():
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=D64)
    q = torch.tensor([[0.0, 0.0, 0.3, 0.7], [0.0, 1.0, 0.0, 0.0]], dtype=D64)
    torch.testing.assert_close(fisher_rao_distance(p, q, from_logits=False),
                               torch.full((2,), math.pi, dtype=D64), rtol=0, atol=1e-12)
    a = _logits(7, 3, seed=16)
    assert float(fisher_rao_distance(a, a).abs().max()) == 0.0
    # logits far apart approach pi
    far = fisher_rao_distance(torch.tensor([400.0, 0.0], dtype=D64), torch.tensor([0.0, 400.0], dtype=D64))
    assert abs(float(far) - math.pi) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_gradients_at_equal_and_near_one_hot(dtype):
    cases = [
        (torch.tensor([[0.3, -1.0, 2.0]]), None),  # p = q
        (torch.tensor([[60.0, 0.0, 0.0]]), torch.tensor([[60.0, 0.0, 1e-3]])),  # near one-hot, almost equal
        (torch.tensor([[80.0, 0.0, 0.0]]), torch.tensor([[0.0, 80.0, 0.0]])),  # near one-hot, far apart
        (torch.tensor([[-90.0, 90.0]]), torch.tensor([[90.0, -90.0]])),
    ]
    for a0, b0 in cases:
        a = a0.to(dtype).requires_grad_(True)
        b = (a0 if b0 is None else b0).to(dtype).clone().requires_grad_(True)
        for fn in (lambda: fisher_rao_distance(a, b), lambda: fisher_rao_distance(a, b) ** 2,
                   lambda: hellinger_distance(a, b), lambda: kl_divergence(a, b)):
            ga, gb = torch.autograd.grad(fn().sum(), (a, b))
            assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
            assert torch.isfinite(fn()).all()
    # the naive arccos form really has the problem the guard avoids
    a = torch.tensor([[0.3, -1.0, 2.0]], requires_grad=True)
    bc = (torch.softmax(a, -1) * torch.softmax(a, -1)).sqrt().sum(-1)
    (g,) = torch.autograd.grad((2 * torch.acos(bc.clamp(max=1.0))).sum(), a)
    assert not torch.isfinite(g).all() or float(bc) > 1 - 1e-7


def test_float32_accuracy_for_close_distributions():
    a64 = _logits(100, 10, seed=17)
    b64 = a64 + 1e-4 * _logits(100, 10, scale=1.0, seed=18)
    ref = fisher_rao_distance(a64, b64)
    got = fisher_rao_distance(a64.float(), b64.float()).double()
    assert float((got - ref).abs().max()) < 2e-6  # arccos(BC) in float32 loses everything below ~5e-4


def test_probability_gradient_finite_at_zero_entries():
    p = torch.tensor([[0.5, 0.5, 0.0]], dtype=D64, requires_grad=True)
    q = torch.tensor([[0.2, 0.3, 0.5]], dtype=D64)
    (g,) = torch.autograd.grad(fisher_rao_distance(p, q, from_logits=False).sum(), p)
    assert torch.isfinite(g).all()


# ----------------------------------------------------------------- constants
@pytest.mark.parametrize("num_classes", range(2, 11))
def test_delta_m_is_vertex_to_uniform_distance(num_classes):
    vertex = torch.zeros(num_classes, dtype=D64)
    vertex[0] = 1.0
    uniform = torch.full((num_classes,), 1.0 / num_classes, dtype=D64)
    d = fisher_rao_distance(vertex, uniform, from_logits=False)
    assert abs(float(d) - delta_m(num_classes)) < 1e-12
    assert abs(delta_m(num_classes) - 2 * math.acos(1 / math.sqrt(num_classes))) < 1e-15
    # from logits: the limit of a confident prediction
    logits = torch.zeros(num_classes, dtype=D64)
    logits[0] = 200.0
    assert abs(float(fisher_rao_distance(logits, torch.zeros_like(logits))) - delta_m(num_classes)) < 1e-12
    # the two constants coincide for two classes only
    if num_classes == 2:
        assert abs(delta_m(2) - max_boundary_distance(2)) < 1e-15
    else:
        assert delta_m(num_classes) > max_boundary_distance(num_classes) + 0.3


def _numeric_boundary_distance(p: np.ndarray, iters: int = 2000) -> float:
    """min over the argmax boundary of d(p, q), by optimization over boundary points.

    Boundary face (i, j): sqrt(q) = w/|w| with w_i = w_j = 1 (the tied maxima) and
    w_k in [0, 1] for the other classes.  d = 2 arccos(<sqrt p, w>/|w|) is minimized over
    the free w_k by projected gradient ascent of the cosine, all faces and two starts at
    once (vectorized numpy), then the best face is taken.
    """
    C = len(p)
    sp = np.sqrt(p)
    faces = list(itertools.combinations(range(C), 2))
    free = np.ones((len(faces), C), dtype=bool)
    for f, (i, j) in enumerate(faces):
        free[f, [i, j]] = False
    free = np.concatenate([free, free])
    w = np.where(free, np.repeat([0.1, 0.9], len(faces))[:, None], 1.0)
    for _ in range(iters):
        nw = np.linalg.norm(w, axis=1, keepdims=True)
        c = (w @ sp)[:, None] / nw
        grad = (sp[None] - c * w / nw) / nw
        w = np.where(free, np.clip(w + 0.5 * grad, 0.0, 1.0), 1.0)
    c = (w @ sp) / np.linalg.norm(w, axis=1)
    return float(2 * np.arccos(min(c.max(), 1.0)))


def test_boundary_distance_closed_form_matches_numeric_minimization():
    rng = np.random.default_rng(0)
    for C in (2, 3, 4):
        for _ in range(4):
            p = rng.dirichlet(np.full(C, 0.5))
            closed = float(distance_to_decision_boundary(torch.tensor(p, dtype=D64), from_logits=False))
            assert abs(closed - _numeric_boundary_distance(p)) < 1e-6


@pytest.mark.parametrize("num_classes", [2, 3, 4])
def test_largest_distance_to_decision_boundary_is_pi_over_2(num_classes):
    """Maximize the distance to the argmax boundary over the simplex numerically.

    Batched gradient ascent on the logits of 64 random starts (the closed form, validated
    against numeric minimization over boundary points above), then the numeric boundary
    minimization at the maximizer found.
    """
    z = (3 * torch.randn(64, num_classes, generator=_gen(num_classes), dtype=D64)).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        (-distance_to_decision_boundary(z).sum()).backward()
        opt.step()
    with torch.no_grad():
        d = distance_to_decision_boundary(z)
    best = int(d.argmax())
    assert abs(float(d[best]) - math.pi / 2) < 1e-4
    p_best = torch.softmax(z[best].detach(), -1).numpy()
    assert abs(_numeric_boundary_distance(p_best) - math.pi / 2) < 1e-4
    # never above pi/2 (random points, numeric), and exactly pi/2 at a vertex
    rng = np.random.default_rng(num_classes)
    for _ in range(10):
        assert _numeric_boundary_distance(rng.dirichlet(np.ones(num_classes))) <= math.pi / 2 + 1e-9
    vertex = np.zeros(num_classes)
    vertex[0] = 1.0
    assert abs(_numeric_boundary_distance(vertex) - math.pi / 2) < 1e-8
    assert MAX_BOUNDARY_DISTANCE == max_boundary_distance(num_classes) == math.pi / 2
    if num_classes > 2:  # Shi-Garrier et al.'s delta_m is not this supremum
        assert float(d.max()) < delta_m(num_classes) - 0.3


def test_stereographic_conformal_factor():
    """1 + |t/2|^2 = 2 / (1 - sqrt(theta_last)) (the identity behind the erratum in eq. 13 of Shi-Garrier et al. 2024)."""
    a = _logits(20, 4, seed=19)
    t = stereographic_coordinates(a)
    last = torch.softmax(a, -1)[:, -1]
    torch.testing.assert_close(1 + (t / 2).pow(2).sum(-1), 2 / (1 - last.sqrt()))


# ----------------------------------------------------------------- errors
def test_bad_inputs_raise():
    a = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="shape mismatch"):
        fisher_rao_distance(a, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="non-finite"):
        fisher_rao_distance(torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="non-finite"):
        kl_divergence(torch.tensor([[0.0, float("inf")]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="sum to 1"):
        fisher_rao_distance(torch.tensor([[0.5, 0.6]]), torch.tensor([[0.5, 0.5]]), from_logits=False)
    with pytest.raises(ValueError, match="non-negative"):
        hellinger_distance(torch.tensor([[1.5, -0.5]]), torch.tensor([[0.5, 0.5]]), from_logits=False)
    with pytest.raises(ValueError, match="dtype mismatch"):
        fisher_rao_distance(a, a.double())
    with pytest.raises(ValueError, match="floating-point"):
        fisher_rao_distance(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="scalar"):
        fisher_rao_distance(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="shape mismatch"):
        fisher_rao_distance_binary(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError):
        delta_m(1)
    with pytest.raises(ValueError):
        delta_m(3.0)
    with pytest.raises(ValueError):
        max_boundary_distance(1)
    with pytest.raises(ValueError, match="unknown divergence"):
        get_divergence("wasserstein")
    with pytest.raises(ValueError, match="at least 2"):
        distance_to_decision_boundary(torch.zeros(3, 1))
