"""SOCConv2d: skew-symmetric convolution, truncated exponential with a guaranteed remainder."""
import math

import pytest
import torch
from layer_checks import adam_steps as _adam_steps
import torch.nn.functional as F

from liplayers.functional.conv import circular_conv2d
from liplayers.functional.skew import (
    conv_exponential,
    exp_tail_bound,
    exp_terms_for_tolerance,
    skew_kernel,
    transpose_kernel,
)
from liplayers.nn.soc import SOCConv2d

F32_ROUNDING = 32 * torch.finfo(torch.float32).eps  # relative allowance for the float32 forward


def impulse_svd(m, cin, h, w, dtype):
    """Singular values (float64) of the eval-mode map x ↦ m(x) − m(0), from its impulse responses."""
    m.eval()
    n = cin * h * w
    with torch.no_grad():
        e = torch.eye(n, dtype=dtype).reshape(n, cin, h, w)
        y = m(e) - m(torch.zeros(1, cin, h, w, dtype=dtype))
    return torch.linalg.svdvals(y.reshape(n, -1).to(torch.float64))


def adam_steps(m, cin, h, w, dtype, steps=5, lr=0.2):
    _adam_steps(m, torch.randn(8, cin, h, w, dtype=dtype), steps, lr)


def dense(op, c, h, w):
    n = c * h * w
    return op(torch.eye(n, dtype=torch.float64).reshape(n, c, h, w)).reshape(n, n).T


# ---- functional -------------------------------------------------------------------------------
@pytest.mark.parametrize("a", [1e-3, 0.3, 0.7, 1.0, 2.5])
@pytest.mark.parametrize("k", [0, 1, 4, 8, 12])
def test_exp_tail_bound_is_a_tight_upper_bound(a, k):
    tail = sum(a ** i / math.factorial(i) for i in range(k + 1, k + 80))
    b = exp_tail_bound(a, k)
    assert b >= tail
    if a <= (k + 2) / 2:  # geometric ratio ≤ 1/2: within a factor 2 of the true tail
        assert b <= 2 * tail


def test_exp_terms_for_tolerance_is_minimal():
    for a in (0.1, 0.7, 1.3):
        k = exp_terms_for_tolerance(a, 1e-6)
        assert exp_tail_bound(a, k) <= 1e-6 < exp_tail_bound(a, k - 1)
    assert exp_tail_bound(0.0, 0) == 0.0
    assert exp_tail_bound(5.0, 2) == math.inf
    with pytest.raises(ValueError):
        exp_terms_for_tolerance(30.0, 1e-6, max_terms=10)
    with pytest.raises(ValueError):
        exp_tail_bound(-1.0, 3)


@pytest.mark.parametrize("mode", ["zeros", "circular"])
@pytest.mark.parametrize("ks", [(3, 3), (5, 3), (1, 1)])
def test_skew_kernel_gives_an_exactly_skew_operator(mode, ks):
    c, h, w = 3, 6, 5
    k = torch.randn(c, c, *ks, dtype=torch.float64)
    assert torch.equal(transpose_kernel(transpose_kernel(k)), k)
    s = skew_kernel(k)
    pad = (ks[0] // 2, ks[1] // 2)
    op = (lambda x: circular_conv2d(x, s)) if mode == "circular" else (lambda x: F.conv2d(x, s, padding=pad))
    a = dense(op, c, h, w)
    assert torch.allclose(a, -a.T, atol=1e-13)
    # the truncated series is within the tail bound of the exact exponential (orthogonal)
    anorm = float(torch.linalg.matrix_norm(a, ord=2))
    for terms in (3, 8):
        t = dense(lambda x: conv_exponential(x, s, terms, mode), c, h, w)
        e = torch.linalg.matrix_exp(a)
        assert float(torch.linalg.matrix_norm(t - e, ord=2)) <= exp_tail_bound(anorm, terms) + 1e-12
        assert torch.allclose(e.T @ e, torch.eye(c * h * w, dtype=torch.float64), atol=1e-10)


def test_skew_kernel_rejects_bad_kernels():
    with pytest.raises(ValueError):
        skew_kernel(torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError):
        skew_kernel(torch.randn(2, 2, 2, 3))


# ---- the layer ----------------------------------------------------------------------------------
CASES = [(4, 4, 3, "zeros", 8), (4, 4, 3, "circular", 8), (3, 6, 3, "zeros", 6), (8, 2, 5, "circular", 6),
         (2, 5, 1, "zeros", 6), (6, 6, 5, "zeros", 6)]


@pytest.mark.parametrize("cin,cout,k,mode,n", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_soc_is_sound_and_nearly_orthogonal_after_training(cin, cout, k, mode, n, dtype):
    m = SOCConv2d(cin, cout, k, padding_mode=mode, dtype=dtype)
    adam_steps(m, cin, n, n, dtype)
    sv = impulse_svd(m, cin, n, n, dtype)
    bound = m.lipschitz_bound((cin, n, n))
    tol = m._tol()
    allowance = F32_ROUNDING if dtype == torch.float32 else 1e-12
    assert float(sv.max()) <= bound * (1 + allowance)
    # 1 + tail, times the 1e-9 rounding margin (circular: the exact norm of the rounded matrices used)
    assert bound <= m.lipschitz_bound(None) * (1 + allowance) <= 1 + tol + 2e-9 + allowance
    assert float(sv.max()) <= 1 + 1e-5
    # the min(in, out)·n² nonzero singular values are those of T_k(A) restricted: within tol of 1
    top = sv[: min(cin, cout) * n * n]
    close = 1e-5 if dtype == torch.float32 else 1e-10
    assert float((top - 1).abs().max()) <= close
    _, terms, a = m._eval_cache()
    assert terms == m.eval_terms and exp_tail_bound(a, terms) <= tol


@pytest.mark.parametrize("cin,cout,k", [(4, 4, 3), (3, 5, 5), (5, 2, 1)])
def test_soc_circular_eval_in_fourier_domain_equals_the_conv_series(cin, cout, k):
    m = SOCConv2d(cin, cout, k, padding_mode="circular", dtype=torch.float64)
    adam_steps(m, cin, 7, 6, torch.float64, steps=2)
    m.eval()
    x = torch.randn(3, cin, 7, 6, dtype=torch.float64)
    c = max(cin, cout)
    with torch.no_grad():
        ref = conv_exponential(F.pad(x, (0, 0, 0, 0, 0, c - cin)), m.eval_weight(), m.eval_terms, "circular")
        assert torch.allclose(m(x), ref[:, :cout] + m.bias.view(1, -1, 1, 1), atol=1e-12)
    assert set(m._fft_cache) == {(7, 6)}


def test_soc_train_and_eval_agree_and_gradients_flow():
    m = SOCConv2d(4, 4, 3)
    x = torch.randn(2, 4, 8, 8)
    m.train()
    y_train = m(x)
    y_train.square().sum().backward()
    assert m.weight.grad is not None and bool(torch.isfinite(m.weight.grad).all())
    assert float(m.weight.grad.abs().max()) > 0
    m.eval()
    with torch.no_grad():
        y_eval = m(x)
    # train: 6 terms and a power-iteration σ; eval: the tolerance-driven terms and the grid's exact σ
    assert torch.allclose(y_train.detach(), y_eval, atol=5e-3 * float(x.abs().max()))


def test_soc_eval_cache_and_state_dict_round_trip():
    m = SOCConv2d(3, 5, 3, padding_mode="circular")
    adam_steps(m, 3, 6, 6, torch.float32, steps=2)
    m.eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        y1 = m(x)
        k1 = m.eval_weight()
        assert m._eval_cache()[0] is m._eval_cache()[0]  # cached per parameter version
        m2 = SOCConv2d(3, 5, 3, padding_mode="circular")
        m2.load_state_dict(m.state_dict())
        m2.eval()
        assert torch.equal(m2(x), y1)
        assert m2.lipschitz_bound((3, 6, 6)) == m.lipschitz_bound((3, 6, 6))
        m.weight.mul_(3.0)  # in-place change: the cache must be rebuilt
        assert not torch.equal(m.eval_weight(), k1)
    assert torch.allclose(k1, -transpose_kernel(k1))  # the eval kernel is skew


def test_soc_bias_and_float64_terms():
    m = SOCConv2d(2, 2, 3, dtype=torch.float64, bias=True)
    with torch.no_grad():
        m.bias.fill_(0.5)
    m.eval()
    assert torch.allclose(m(torch.zeros(1, 2, 5, 5, dtype=torch.float64)), torch.full((1, 2, 5, 5), 0.5, dtype=torch.float64))
    assert m.eval_terms > SOCConv2d(2, 2, 3).eval_terms  # tolerance 1e-12 needs more terms than 1e-6


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=2), dict(kernel_size=3, stride=2), dict(kernel_size=3, groups=2),
    dict(kernel_size=3, padding_mode="reflect"), dict(kernel_size=3, padding=0), dict(kernel_size=3, padding="valid"),
    dict(kernel_size=3, dilation=2), dict(kernel_size=3, train_terms=0), dict(kernel_size=3, tol=0.0),
    dict(kernel_size=3, correction=-1.0), dict(kernel_size=5, grid=4), dict(kernel_size=3, n_power_iterations=0),
])
def test_soc_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SOCConv2d(4, 4, **kwargs)


def test_soc_rejects_bad_inputs():
    m = SOCConv2d(4, 4, 3)
    with pytest.raises(ValueError):
        m(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError):
        m.lipschitz_bound((3, 8, 8))
    with pytest.raises(ValueError):
        SOCConv2d(0, 4, 3)
    with torch.no_grad():
        m.weight[0, 0, 0, 0] = float("nan")
    m.eval()
    with pytest.raises(ValueError):
        m(torch.randn(1, 4, 8, 8))


def _series_reference(x, k, terms, mode):
    """The term-by-term sum Σ Aⁱx/i! with autograd through every convolution."""
    z = term = x
    for i in range(1, terms + 1):
        conv = circular_conv2d(term, k) if mode == "circular" else F.conv2d(term, k, None, 1, k.shape[-1] // 2)
        term = conv / float(i)
        z = z + term
    return z


@pytest.mark.parametrize("mode", ["zeros", "circular"])
@pytest.mark.parametrize("terms", [1, 3, 5])
@pytest.mark.parametrize("input_grad", [True, False])
def test_conv_exponential_values_and_gradients_equal_the_term_by_term_series(mode, terms, input_grad):
    torch.manual_seed(terms)
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=input_grad)
    w = torch.randn(4, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    k = skew_kernel(w) * 0.3
    g = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    y, ref = conv_exponential(x, k, terms, mode), _series_reference(x, k, terms, mode)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    inputs = [w] + ([x] if input_grad else [])
    got = torch.autograd.grad((y * g).sum(), inputs, retain_graph=True)
    want = torch.autograd.grad((ref * g).sum(), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the no-grad (eval) path is the same series
        torch.testing.assert_close(conv_exponential(x, k, terms, mode), ref.detach(), rtol=1e-12, atol=1e-12)
