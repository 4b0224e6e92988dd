"""Parseval penalty and retraction (Cissé et al. 2017)."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from liplayers import BjorckLinear
from liplayers.regularizers.parseval import (
    ParsevalRetraction,
    parseval_penalty,
    parseval_retraction_,
    register_parseval_retraction,
)


def defect(w):
    """‖W Wᵀ − I‖_F on the smaller side, float64, reshaping conv kernels."""
    m = w.detach().double().reshape(w.shape[0], -1)
    a = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return float(torch.linalg.matrix_norm(a - torch.eye(a.shape[0], dtype=a.dtype)))


def test_penalty_hand_value_and_smaller_side():
    w = 2.0 * torch.eye(3, dtype=torch.float64)
    assert float(parseval_penalty(w, beta=0.1)) == pytest.approx(0.05 * 9 * 3)  # β/2 · ‖3I‖²_F
    # a wide matrix with orthonormal rows has zero penalty (smaller side), though WᵀW ≠ I
    q = torch.linalg.qr(torch.randn(7, 3, dtype=torch.float64)).Q.T  # (3, 7), orthonormal rows
    assert float(parseval_penalty(q)) == pytest.approx(0.0, abs=1e-24)
    assert float(parseval_penalty(q.T.contiguous())) == pytest.approx(0.0, abs=1e-24)
    # a sum over several tensors
    assert float(parseval_penalty([w, q], beta=0.1)) == pytest.approx(0.05 * 27)


def test_penalty_gradient_matches_closed_form():
    w = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    beta = 0.3
    parseval_penalty(w, beta).backward()
    d = w.detach() @ w.detach().T - torch.eye(5, dtype=torch.float64)
    assert torch.allclose(w.grad, 2 * beta * d @ w.detach())


def test_penalty_on_model_covers_linear_and_conv():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 10), BjorckLinear(10, 6))
    got = float(parseval_penalty(model, beta=2.0).detach())
    want = sum(defect(m.weight) ** 2 for m in (model[0], model[3], model[4]))
    assert got == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="no nn.Linear"):
        parseval_penalty(nn.ReLU())


@pytest.mark.parametrize("shape", [(6, 9), (9, 6), (4, 3, 3, 3)])
def test_retraction_is_a_gradient_step_on_quarter_defect(shape):
    torch.manual_seed(1)
    w = 0.3 * torch.randn(*shape, dtype=torch.float64)
    beta = 0.2
    x = w.clone().requires_grad_(True)
    m = x.reshape(shape[0], -1)
    (0.25 * (m.T @ m - torch.eye(m.shape[1], dtype=m.dtype)).square().sum()).backward()
    expected = w - beta * x.grad
    got = parseval_retraction_(w.clone(), beta)
    assert torch.allclose(got, expected, atol=1e-12)
    assert float(parseval_retraction_(w.clone(), 0.0).sub(w).abs().max()) == 0.0


@pytest.mark.parametrize("shape", [(20, 50), (50, 20), (30, 30)])
@pytest.mark.parametrize("beta", [0.5, 0.1, 0.01])
def test_retraction_decreases_defect_monotonically(shape, beta):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    w /= torch.linalg.matrix_norm(w, 2)  # ‖W‖₂ = 1 so that βσ(σ+1) ≤ 1 for β ≤ ½
    errs = [defect(w)]
    for _ in range(40):
        parseval_retraction_(w, beta)
        errs.append(defect(w))
    # strictly decreasing down to the float64 rounding floor (~1e-15), where it stalls
    assert all(b < a for a, b in zip(errs, errs[1:]) if a > 1e-12), errs
    if beta == 0.5:  # one Björck step per iteration: converges to the Stiefel manifold
        assert errs[-1] < 1e-10


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 12), n=st.integers(2, 12), scale=st.floats(0.05, 2.0),
       beta=st.floats(0.001, 1.0 / 6.0), seed=st.integers(0, 10_000))
def test_retraction_monotone_property(m, n, scale, beta, seed):
    """βσ(σ+1) ≤ 1 for every σ ≤ 2 when β ≤ 1/6: the defect never increases."""
    w = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w *= scale / torch.linalg.matrix_norm(w, 2)
    before = defect(w)
    parseval_retraction_(w, beta)
    assert defect(w) <= before + 1e-12


def test_reshaped_conv_orthonormality_does_not_make_conv_1_lipschitz():
    """The documented caveat, measured: power iteration on the real operator."""
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight /= torch.linalg.matrix_norm(conv.weight.reshape(4, -1), 2)
    for _ in range(60):
        parseval_retraction_(conv.weight, 0.5)
    assert defect(conv.weight) < 1e-10
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(200):
            x = F.conv_transpose2d(conv(x), conv.weight, padding=1)
            x /= x.norm()
        sigma = float(conv(x).norm())  # a lower bound of the operator norm
    assert 1.0 < sigma <= 3.0 * (1 + 1e-9)  # ≤ √(k·k)·‖W_reshaped‖₂ = 3


def test_parseval_retraction_helper_and_optimizer_hook():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), BjorckLinear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for m in (model[0], model[4]):
            m.weight /= torch.linalg.matrix_norm(m.weight, 2)
    retract = ParsevalRetraction(model, beta=0.5)
    assert len(retract.weights) == 2  # the BjorckLinear (parametrized) is skipped
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    handle = register_parseval_retraction(opt, model, beta=0.5)
    before = [defect(model[0].weight), defect(model[4].weight)]
    x, y = torch.randn(32, 12), torch.randint(0, 3, (32,))
    for _ in range(8):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    after = [defect(model[0].weight), defect(model[4].weight)]
    assert all(a < 0.1 * b for a, b in zip(after, before)), (before, after)
    handle.remove()
    w0 = model[0].weight.detach().clone()
    retract()  # the explicit style, after a step, does the same thing
    assert defect(model[0].weight) <= defect(w0)
    with pytest.raises(ValueError, match="beta"):
        ParsevalRetraction(model, beta=-1.0)
    with pytest.raises(ValueError, match="no plain"):
        ParsevalRetraction(nn.Sequential(BjorckLinear(3, 3)))
    with pytest.raises(TypeError):
        register_parseval_retraction("sgd", model)
