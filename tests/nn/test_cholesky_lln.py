"""CholeskyLinear, LinearResidualConv2d, LastLayerNormalizedLinear: bounds against measured norms."""
import pytest
import torch
from layer_checks import adam_steps
import torch.nn.functional as F
from torch import nn

from liplayers.nn.cholesky import CholeskyLinear
from liplayers.nn.last_layer import LastLayerNormalizedLinear
from liplayers.nn.residual_conv import LinearResidualConv2d
from liplayers.parametrizations.cholesky import cholesky_orthonormal, cholesky_orthonormalize
from liplayers.parametrizations.row_normalized import row_normalized

F32_ROUNDING = 32 * torch.finfo(torch.float32).eps


def jacobian_svd(m, x):
    m.eval()
    jac = torch.autograd.functional.jacobian(m, x)
    return torch.linalg.svdvals(jac.reshape(-1, x.numel()).to(torch.float64))


def impulse_svd(m, cin, h, w, dtype):
    m.eval()
    n = cin * h * w
    with torch.no_grad():
        e = torch.eye(n, dtype=dtype).reshape(n, cin, h, w)
        y = m(e) - m(torch.zeros(1, cin, h, w, dtype=dtype))
    return torch.linalg.svdvals(y.reshape(n, -1).to(torch.float64))


# ---- Cholesky --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fin,fout", [(8, 8), (4, 9), (9, 4), (1, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cholesky_linear_is_semi_orthogonal_after_training(fin, fout, dtype):
    m = CholeskyLinear(fin, fout, dtype=dtype)
    adam_steps(m, torch.randn(16, fin, dtype=dtype))
    sv = jacobian_svd(m, torch.randn(fin, dtype=dtype))
    close = 1e-5 if dtype == torch.float32 else 1e-10
    assert float((sv - 1).abs().max()) <= close
    bound = m.lipschitz_bound()
    assert float(sv.max()) <= bound * (1 + (F32_ROUNDING if dtype == torch.float32 else 1e-12))
    assert bound <= 1 + close + 2e-9  # the bound carries a 1e-9 rounding margin
    w = m.eval_weight().to(torch.float64)
    g = w.T @ w if fout >= fin else w @ w.T
    assert torch.allclose(g, torch.eye(min(fin, fout), dtype=torch.float64), atol=close)
    lin = m.to_torch()
    assert type(lin) is nn.Linear
    x = torch.randn(3, fin, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(lin(x), m(x))
    m2 = CholeskyLinear(fin, fout, dtype=dtype)
    m2.load_state_dict(m.state_dict())
    m2.eval()
    with torch.no_grad():
        assert torch.equal(m2(x), m(x))


def test_cholesky_orthonormalize_is_the_positive_qr_factor_and_jitter_only_when_needed():
    v = torch.randn(7, 4, dtype=torch.float64)
    q, r = torch.linalg.qr(v)
    q = q * torch.sign(torch.diagonal(r))
    assert torch.allclose(cholesky_orthonormalize(v), q, atol=1e-12)
    assert torch.allclose(cholesky_orthonormalize(v.T), q.T, atol=1e-12)
    # rank-deficient: the factorization of the Gram matrix fails, a jitter is added: finite, contractive
    v[:, 3] = v[:, 2]
    w = cholesky_orthonormalize(v)
    assert bool(torch.isfinite(w).all())
    assert float(torch.linalg.matrix_norm(w, ord=2)) <= 1.0
    with pytest.raises(ValueError):
        cholesky_orthonormalize(torch.zeros(3, 2))


def test_cholesky_register_function_and_errors():
    lin = cholesky_orthonormal(nn.Linear(6, 3))
    lin.eval()
    assert torch.allclose(lin.weight @ lin.weight.T, torch.eye(3), atol=1e-6)
    with pytest.raises(ValueError):
        cholesky_orthonormal(nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError):
        CholeskyLinear(0, 3)
    with pytest.raises(ValueError):
        CholeskyLinear(3, True)


# ---- LinearResidualConv2d --------------------------------------------------------------------------
RES = [(4, 3, "zeros", "block"), (4, 3, "circular", "block"), (2, 5, "zeros", "conv"), (8, 1, "circular", "conv"),
       (3, 3, "zeros", None), (6, 5, "circular", None)]


@pytest.mark.parametrize("c,k,mode,normalize", RES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_residual_bound_covers_the_measured_norm(c, k, mode, normalize, dtype):
    n = 6
    m = LinearResidualConv2d(c, c, k, padding_mode=mode, normalize=normalize, dtype=dtype)
    adam_steps(m, torch.randn(8, c, n, n, dtype=dtype))
    sv = impulse_svd(m, c, n, n, dtype)
    bound = m.lipschitz_bound((c, n, n))
    allowance = F32_ROUNDING if dtype == torch.float32 else 1e-12
    assert float(sv.max()) <= bound * (1 + allowance)
    assert bound <= m.lipschitz_bound(None) * (1 + 1e-12)
    if normalize == "block":
        assert bound <= 1 + 1e-6  # normalized at the configured size by the exact torus norm
        if mode == "circular":
            assert float(sv.max()) >= 1 - 1e-5  # exact for circular padding
    if normalize is None:  # the kernel is the identity plus the stored one, nothing else
        e = m.eval_weight()
        e[torch.arange(c), torch.arange(c), k // 2, k // 2] -= 1
        assert torch.allclose(e, m.weight.detach(), atol=1e-6)
        assert bound > 1  # the raw block is reported as it is


@pytest.mark.parametrize("mode", ["zeros", "circular"])
def test_linear_residual_is_x_plus_conv_and_exports(mode):
    c = 3
    m = LinearResidualConv2d(c, c, 3, padding_mode=mode, normalize=None, dtype=torch.float64)
    x = torch.randn(2, c, 7, 7, dtype=torch.float64)
    m.eval()
    with torch.no_grad():
        xp = F.pad(x, (1, 1, 1, 1), mode="circular" if mode == "circular" else "constant")
        ref = x + F.conv2d(xp, m.weight) + m.bias.view(1, -1, 1, 1)
        assert torch.allclose(m(x), ref, atol=1e-12)
        conv = m.to_torch()
        assert type(conv) is nn.Conv2d
        assert torch.allclose(conv(x), m(x), atol=1e-12)


def test_linear_residual_train_eval_state_dict_and_input_size():
    m = LinearResidualConv2d(4, 4, 3)
    x = torch.randn(2, 4, 8, 8)
    adam_steps(m, x, steps=3, lr=0.01)
    assert m.input_size == (8, 8)
    for _ in range(20):  # converge the power iteration
        m(x)
    m.train()
    y_train = m(x).detach()
    m.eval()
    with torch.no_grad():
        y_eval = m(x)
        assert torch.allclose(y_train, y_eval, atol=1e-2 * float(y_eval.abs().max()))  # power iteration ≈ exact norm
        m2 = LinearResidualConv2d(4, 4, 3)
        m2.load_state_dict(m.state_dict())  # adopts the power-iteration buffer's shape
        m2.input_size = m.input_size
        m2.eval()
        assert torch.equal(m2(x), y_eval)
    m3 = LinearResidualConv2d(4, 4, 3, input_size=(8, 8))
    assert m3.input_size == (8, 8)


@pytest.mark.parametrize("kwargs", [dict(out_channels=5), dict(kernel_size=2), dict(stride=2), dict(groups=2),
                                    dict(padding=0), dict(padding_mode="reflect"), dict(normalize="spectral"),
                                    dict(n_power_iterations=0), dict(dilation=2)])
def test_linear_residual_rejects_bad_arguments(kwargs):
    args = dict(in_channels=4, out_channels=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError):
        LinearResidualConv2d(**args)


# ---- LastLayerNormalizedLinear ---------------------------------------------------------------------
@pytest.mark.parametrize("fin,fout", [(6, 10), (8, 3), (5, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_last_layer_normalized_bound_is_the_exact_norm(fin, fout, dtype):
    m = LastLayerNormalizedLinear(fin, fout, dtype=dtype)
    adam_steps(m, torch.randn(16, fin, dtype=dtype))
    w = m.eval_weight().to(torch.float64)
    assert torch.allclose(w.norm(dim=1), torch.ones(fout, dtype=torch.float64), atol=1e-6)
    sv = jacobian_svd(m, torch.randn(fin, dtype=dtype))
    bound = m.lipschitz_bound()
    assert float(sv.max()) <= bound * (1 + (F32_ROUNDING if dtype == torch.float32 else 1e-12))
    assert bound <= float(sv.max()) * (1 + 1e-6)  # exact, not a loose bound
    d = m.row_difference_norms()
    assert d.dtype == torch.float64 and d.shape == (fout, fout)
    assert torch.allclose(d, torch.cdist(w, w), atol=1e-12)
    assert float(d.max()) <= 2 * (1 + 1e-6)
    lin = m.to_torch()
    x = torch.randn(3, fin, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(lin(x), m(x))
    m2 = LastLayerNormalizedLinear(fin, fout, dtype=dtype)
    m2.load_state_dict(m.state_dict())
    m2.eval()
    with torch.no_grad():
        assert torch.equal(m2(x), m(x))


def test_last_layer_normalized_is_not_reported_as_one_lipschitz():
    m = LastLayerNormalizedLinear(3, 4)
    with torch.no_grad():  # correlated rows: spectral norm close to √4
        m.parametrizations.weight.original.copy_(torch.ones(4, 3) + 0.01 * torch.randn(4, 3))
    assert m.lipschitz_bound() > 1.9
    with torch.no_grad():
        m.parametrizations.weight.original[0].zero_()  # a zero row stays zero
    m.eval()
    assert float(m.weight[0].abs().max()) == 0.0


def test_row_normalized_register_function_and_errors():
    lin = row_normalized(nn.Linear(4, 6))
    lin.eval()
    assert torch.allclose(lin.weight.norm(dim=1), torch.ones(6), atol=1e-6)
    with pytest.raises(ValueError):
        row_normalized(nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError):
        LastLayerNormalizedLinear(4, 0)
    bad = LastLayerNormalizedLinear(2, 2)
    with torch.no_grad():
        bad.parametrizations.weight.original[0, 0] = float("inf")
    bad.eval()
    with pytest.raises(ValueError):
        bad(torch.randn(1, 2))


def _cholesky_reference(v):
    """W = V L⁻ᵀ (tall) or L⁻¹V (wide) with autograd through the Gram matrix, Cholesky and solve."""
    tall = v.shape[-2] >= v.shape[-1]
    chol = torch.linalg.cholesky(v.mT @ v if tall else v @ v.mT)
    if tall:
        return torch.linalg.solve_triangular(chol.mT, v, upper=True, left=False)
    return torch.linalg.solve_triangular(chol, v, upper=False)


@pytest.mark.parametrize("shape", [(7, 7), (9, 4), (4, 9), (3, 6, 5), (3, 5, 6)])
def test_cholesky_hand_written_backward_equals_autograd(shape):
    torch.manual_seed(sum(shape))
    v = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    g = torch.randn(*shape, dtype=torch.float64)
    w, ref = cholesky_orthonormalize(v), _cholesky_reference(v)
    torch.testing.assert_close(w, ref, rtol=1e-13, atol=1e-13)
    (got,) = torch.autograd.grad((w * g).sum(), v)
    (want,) = torch.autograd.grad((ref * g).sum(), v)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(cholesky_orthonormalize, (v.detach()[..., :4, :3].clone().requires_grad_(),))
