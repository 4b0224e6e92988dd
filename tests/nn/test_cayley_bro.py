"""CayleyConv2d, BROConv2d, BROLinear: exactly orthogonal layers from per-frequency / dense transforms."""
import pytest
import torch
from layer_checks import adam_steps, dense
import torch.nn.functional as F
from torch import nn

from liplayers.functional.skew import block_reflector, cayley, fft_symbol, spectral_conv2d
from liplayers.nn.bro import BROConv2d, BROLinear
from liplayers.nn.cayley import CayleyConv2d
from liplayers.parametrizations.block_reflector import BlockReflector, block_reflector as register_block_reflector

F32_ROUNDING = 32 * torch.finfo(torch.float32).eps


def impulse_svd(m, cin, h, w, dtype):
    m.eval()
    n = cin * h * w
    with torch.no_grad():
        e = torch.eye(n, dtype=dtype).reshape(n, cin, h, w)
        y = m(e) - m(torch.zeros(1, cin, h, w, dtype=dtype))
    return torch.linalg.svdvals(y.reshape(n, -1).to(torch.float64))


CONV = [CayleyConv2d, BROConv2d]
CASES = [(4, 4, 3, 8), (3, 6, 3, 6), (8, 2, 5, 6), (2, 2, 1, 8), (5, 5, 5, 6)]


# ---- exact orthogonality of the real map after training ------------------------------------------
@pytest.mark.parametrize("cls", CONV)
@pytest.mark.parametrize("cin,cout,k,n", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_circular_layers_are_orthogonal_after_training(cls, cin, cout, k, n, dtype):
    m = cls(cin, cout, k, dtype=dtype)
    adam_steps(m, torch.randn(8, cin, n, n, dtype=dtype))
    sv = impulse_svd(m, cin, n, n, dtype)
    top = sv[: min(cin, cout) * n * n]  # the nonzero singular values
    close = 1e-5 if dtype == torch.float32 else 1e-10
    assert float((top - 1).abs().max()) <= close
    bound = m.lipschitz_bound((cin, n, n))
    assert float(sv.max()) <= bound * (1 + (F32_ROUNDING if dtype == torch.float32 else 1e-12))
    assert abs(bound - 1) <= close + 2e-9  # the bound carries a 1e-9 rounding margin


@pytest.mark.parametrize("cls", CONV)
@pytest.mark.parametrize("cin,cout,k", [(4, 4, 3), (3, 5, 5), (6, 2, 3)])
def test_zero_padding_is_a_contraction_and_sound(cls, cin, cout, k):
    m = cls(cin, cout, k, padding_mode="zeros")
    adam_steps(m, torch.randn(8, cin, 6, 6))
    sv = impulse_svd(m, cin, 6, 6, torch.float32)
    bound = m.lipschitz_bound((cin, 6, 6))
    assert float(sv.max()) <= bound * (1 + F32_ROUNDING)
    assert bound <= 1 + 1e-5


# ---- the maths against dense float64 constructions ---------------------------------------------
@pytest.mark.parametrize("cin,cout", [(3, 3), (2, 4), (4, 2)])
def test_cayley_conv_is_the_cayley_transform_of_the_skew_convolution(cin, cout):
    """Q = first columns/rows of (I − A)(I + A)⁻¹, A = C − Cᵀ for the circular conv C (square-padded)."""
    h, w, c = 5, 4, max(cin, cout)
    m = CayleyConv2d(cin, cout, 3, bias=False, dtype=torch.float64)
    adam_steps(m, torch.randn(4, cin, h, w, dtype=torch.float64), steps=2)
    with torch.no_grad():
        k = m.alpha * m.weight / m.weight.norm()
        ksq = torch.zeros(c, c, 3, 3, dtype=torch.float64)
        ksq[:cout, :cin] = k
        cmat = dense(lambda x: F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), ksq), c, h, w)
        a = cmat - cmat.T
        eye = torch.eye(c * h * w, dtype=torch.float64)
        q = (eye - a) @ torch.linalg.inv(eye + a)
        q = q[: cout * h * w, : cin * h * w]  # channel-major ordering: first channels
        m.eval()
        layer = dense(m, cin, h, w)
    assert torch.allclose(layer, q, atol=1e-10)


@pytest.mark.parametrize("cin,cout", [(3, 3), (2, 4), (4, 2)])
def test_bro_conv_is_the_block_reflector_of_the_v_convolution(cin, cout):
    """W = (I − 2P)[:out, :in], P the projector onto the range of the circular conv with kernel V."""
    h, w, n = 5, 4, max(cin, cout)
    m = BROConv2d(cin, cout, 3, bias=False, dtype=torch.float64, rank=1)
    adam_steps(m, torch.randn(4, cin, h, w, dtype=torch.float64), steps=2)
    with torch.no_grad():
        vmat = dense(lambda x: F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), m.weight), 1, h, w)  # (n·hw, hw)
        p = vmat @ torch.linalg.solve(vmat.T @ vmat, vmat.T)
        ref = (torch.eye(n * h * w, dtype=torch.float64) - 2 * p)[: cout * h * w, : cin * h * w]
        m.eval()
        layer = dense(m, cin, h, w)
    assert torch.allclose(layer, ref, atol=1e-9)


def test_fft_symbol_matches_circular_conv_including_wrap_around():
    for kh, kw, h, w in [(3, 3, 6, 6), (5, 3, 5, 7), (7, 7, 4, 5)]:
        k = torch.randn(3, 2, kh, kw, dtype=torch.float64)
        x = torch.randn(2, 2, h, w, dtype=torch.float64)
        ph, pw = (kh - 1) // 2, (kw - 1) // 2
        ref = torch.zeros(2, 3, h, w, dtype=torch.float64)
        for a in range(kh):
            for b in range(kw):
                shifted = torch.roll(x, shifts=(-(a - ph), -(b - pw)), dims=(2, 3))
                ref += torch.einsum("oi,bihw->bohw", k[:, :, a, b], shifted)
        assert torch.allclose(spectral_conv2d(x, fft_symbol(k, (h, w))), ref, atol=1e-12)


def test_functional_cayley_and_block_reflector_are_semi_unitary():
    for o, i in [(5, 5), (6, 3), (3, 6)]:
        q = cayley(torch.randn(7, o, i, dtype=torch.complex128))
        g = q.mH @ q if o >= i else q @ q.mH
        assert torch.allclose(g, torch.eye(min(o, i), dtype=torch.complex128), atol=1e-12)
    v = torch.randn(4, 6, 2, dtype=torch.complex128)
    v[0, :, 1] = v[0, :, 0]  # rank-deficient: QR still gives a unitary reflector
    w = block_reflector(v, method="qr")
    assert torch.allclose(w.mH @ w, torch.eye(6, dtype=torch.complex128), atol=1e-12)
    assert torch.allclose(w, w.mH, atol=1e-12)
    ws = block_reflector(v[1:], method="solve")
    assert torch.allclose(ws, w[1:], atol=1e-10)


# ---- module behaviour ----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CONV)
def test_conv_train_eval_agree_state_dict_and_sizes(cls):
    m = cls(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    adam_steps(m, x, steps=2)
    m.train()
    y_train = m(x).detach()
    m.eval()
    with torch.no_grad():
        y_eval = m(x)
        assert torch.allclose(y_train, y_eval, atol=1e-4)
        y_small = m(torch.randn(2, 3, 5, 7))  # another size: its own cached matrices
        assert y_small.shape == (2, 4, 5, 7)
        assert set(m._cache) == {(8, 8), (5, 7)}
        m2 = cls(3, 4, 3)
        m2.load_state_dict(m.state_dict())
        m2.eval()
        assert torch.equal(m2(x), y_eval)
        assert m2.eval_weight((3, 8, 8)).shape == (8, 5, 4, 3)
        m.weight.add_(torch.randn_like(m.weight))  # in-place change invalidates the cache
        assert not torch.allclose(m(x), y_eval)
    with pytest.raises(ValueError):
        m.lipschitz_bound(None)
    with pytest.raises(ValueError):
        m.lipschitz_bound((2, 8, 8))
    with pytest.raises(ValueError):
        m(torch.randn(1, 2, 8, 8))


@pytest.mark.parametrize("cls", CONV)
@pytest.mark.parametrize("kwargs", [dict(stride=2), dict(dilation=2), dict(groups=3), dict(padding=0),
                                    dict(padding_mode="reflect"), dict(padding="valid")])
def test_conv_rejects_bad_arguments(cls, kwargs):
    with pytest.raises(ValueError):
        cls(3, 3, 3, **kwargs)


def test_bro_conv_rank_validation():
    for rank in (0, 7, 2.5):
        with pytest.raises(ValueError):
            BROConv2d(3, 6, 3, rank=rank)
    assert BROConv2d(3, 6, 3).rank == 3


# ---- BROLinear -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fin,fout,rank", [(8, 8, None), (5, 9, 2), (9, 4, 6), (1, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bro_linear_is_an_orthogonal_block_reflector_after_training(fin, fout, rank, dtype):
    m = BROLinear(fin, fout, rank=rank, dtype=dtype)
    adam_steps(m, torch.randn(16, fin, dtype=dtype))
    m.eval()
    jac = torch.autograd.functional.jacobian(m, torch.randn(fin, dtype=dtype)).to(torch.float64)
    sv = torch.linalg.svdvals(jac)
    close = 1e-5 if dtype == torch.float32 else 1e-10
    assert float((sv - 1).abs().max()) <= close
    assert float(sv.max()) <= m.lipschitz_bound() * (1 + (F32_ROUNDING if dtype == torch.float32 else 1e-12))
    if fin == fout:  # symmetric involution with eigenvalue −1 of multiplicity rank
        w = m.eval_weight().to(torch.float64)
        assert torch.allclose(w, w.T, atol=close)
        eig = torch.linalg.eigvalsh(w)
        assert int((eig < 0).sum()) == m.rank
    lin = m.to_torch()
    assert type(lin) is nn.Linear
    x = torch.randn(3, fin, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(lin(x), m(x))
    m2 = BROLinear(fin, fout, rank=rank, dtype=dtype)
    m2.load_state_dict(m.state_dict())
    m2.eval()
    with torch.no_grad():
        assert torch.equal(m2(x), m(x))


def test_block_reflector_parametrization_round_trip_and_register():
    p = BlockReflector(6, 6, 2)
    v = torch.randn(6, 2, dtype=torch.float64)
    p.eval()
    w = p(v)
    v2 = p.right_inverse(w)  # spans the same space: same reflector
    assert torch.allclose(p(v2 + 0), w, atol=1e-12)
    lin = register_block_reflector(nn.Linear(4, 7), rank=3)
    assert lin.parametrizations.weight.original.shape == (7, 3)
    lin.eval()
    assert torch.allclose(lin.weight.T @ lin.weight, torch.eye(4), atol=1e-6)
    with pytest.raises(ValueError):
        BlockReflector(4, 4, 5)
    with pytest.raises(ValueError):
        BROLinear(0, 3)
    with pytest.raises(ValueError):
        p(torch.randn(5, 2))
