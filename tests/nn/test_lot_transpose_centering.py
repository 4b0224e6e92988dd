"""LOTConv2d, OrthoConvTranspose2d, SpectralConvTranspose2d, BatchCentering2d, LayerCentering2d:
the eval maps measured independently (float64 impulse responses / Jacobians) against the bounds."""
import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from layer_checks import adam_steps, dense
from torch import nn

from liplayers.functional.lot import newton_schulz_polar, newton_schulz_polar_to_tolerance, polar_residual
from liplayers.functional.skew import fft_symbol
from liplayers.lipschitz import UnboundedModuleError, lipschitz_bound_of
from liplayers.nn.centering import BatchCentering2d, LayerCentering2d
from liplayers.functional.conv_transpose import conv_transpose2d_lipschitz_bound
from liplayers.nn.conv_transpose import OrthoConvTranspose2d, SpectralConvTranspose2d
from liplayers.nn.lot import LOTConv2d

F32_ROUNDING = 32 * torch.finfo(torch.float32).eps


def eval_matrix(m, c, h, w, **kwargs):
    """Dense float64 matrix of the eval map of ``m`` (affine: the bias response is subtracted)."""
    m.eval()
    dt = next(m.parameters()).dtype
    with torch.no_grad():
        zero = m(torch.zeros(1, c, h, w, dtype=dt), **kwargs).to(torch.float64)
        return dense(lambda z: m(z.to(dt), **kwargs).to(torch.float64) - zero, c, h, w)


def rounding(dt):
    return F32_ROUNDING if dt == torch.float32 else 1e-12


# ---- LOT -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cin,cout,k,n", [(4, 4, 3, 8), (3, 6, 3, 6), (8, 2, 5, 6), (5, 5, 5, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lot_circular_is_orthogonal_after_training(cin, cout, k, n, dtype):
    m = LOTConv2d(cin, cout, k, dtype=dtype)
    adam_steps(m, torch.randn(8, cin, n, n, dtype=dtype))
    sv = torch.linalg.svdvals(eval_matrix(m, cin, n, n))
    top = sv[: min(cin, cout) * n * n]
    close = 1e-5 if dtype == torch.float32 else 1e-9
    assert float((top - 1).abs().max()) <= close
    bound = m.lipschitz_bound((cin, n, n))
    assert float(sv.max()) <= bound * (1 + rounding(dtype))
    assert abs(bound - 1) <= close + 2e-9  # the bound carries a 1e-9 rounding margin
    assert lipschitz_bound_of(m, (cin, n, n)) == bound


@pytest.mark.parametrize("cin,cout", [(4, 4), (3, 5), (6, 2)])
def test_lot_zero_padding_is_a_sound_contraction(cin, cout):
    m = LOTConv2d(cin, cout, 3, padding_mode="zeros")
    adam_steps(m, torch.randn(8, cin, 6, 6))
    sv = torch.linalg.svdvals(eval_matrix(m, cin, 6, 6))
    bound = m.lipschitz_bound((cin, 6, 6))
    assert float(sv.max()) <= bound * (1 + F32_ROUNDING)
    assert bound <= 1 + 1e-5


def test_lot_eval_symbol_is_the_polar_factor_and_training_iterates_below_one():
    m = LOTConv2d(3, 5, 3, bias=False, dtype=torch.float64)
    with torch.no_grad():
        m.weight.normal_()  # a generic, not well-conditioned kernel
    v = fft_symbol(m.weight.detach(), (6, 5))
    u, _, vh = torch.linalg.svd(v, full_matrices=False)
    assert torch.allclose(m.eval_weight((3, 6, 5)), u @ vh, atol=1e-9)
    assert float(polar_residual(m.eval_weight((3, 6, 5))).max()) <= m.eval_tol
    w_train = newton_schulz_polar(v, 3)  # far from converged: singular values still in [0, 1]
    s = torch.linalg.svdvals(w_train)
    assert float(s.max()) <= 1 + 1e-12 and float(s.min()) < 0.99


def test_lot_rank_deficient_symbol_falls_back_to_a_unitary_polar_factor():
    v = torch.randn(4, 3, 3, dtype=torch.complex128)
    v[0, :, 2] = 0  # rank 2: the iteration never reaches the tolerance there
    w, steps = newton_schulz_polar_to_tolerance(v, 1e-10, 60)
    assert steps == 60
    assert float(polar_residual(w).max()) <= 1e-10
    m = LOTConv2d(4, 4, 3, dtype=torch.float64, eval_max_iterations=30)
    with torch.no_grad():
        m.weight.normal_()
        m.weight[:, 0] = 0  # every V(ω) singular
    sv = torch.linalg.svdvals(eval_matrix(m, 4, 5, 5))
    assert float((sv - 1).abs().max()) <= 1e-9 and m.lipschitz_bound((4, 5, 5)) <= 1 + 1e-8


def test_lot_module_behaviour_and_arguments():
    m = LOTConv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    adam_steps(m, x, steps=2)
    m.eval()
    with torch.no_grad():
        y = m(x)
        assert m(torch.randn(2, 3, 5, 7)).shape == (2, 4, 5, 7)
        assert set(m._cache) == {(8, 8), (5, 7)}
        m2 = LOTConv2d(3, 4, 3)
        m2.load_state_dict(m.state_dict())
        m2.eval()
        assert torch.equal(m2(x), y)
        m.weight.add_(0.5 * torch.randn_like(m.weight))  # in-place change invalidates the cache
        assert not torch.allclose(m(x), y)
    with pytest.raises(ValueError):
        m.lipschitz_bound(None)
    for kwargs in (dict(stride=2), dict(groups=3), dict(padding_mode="reflect"), dict(n_iterations=0),
                   dict(eval_tol=0.0), dict(eval_max_iterations=-1), dict(padding=0)):
        with pytest.raises(ValueError):
            LOTConv2d(3, 3, 3, **kwargs)


# ---- transposed convolutions ---------------------------------------------------------------------
ORTHO_CIRCULAR = [  # (in, out, kernel, stride, padding, dilation): the output is stride× the input
    (4, 4, 3, 1, 1, 1), (8, 2, 6, 2, 2, 1), (12, 3, 4, 2, 1, 1), (3, 2, 2, 2, 0, 1), (2, 2, 3, 1, 2, 2),
    (2, 5, 3, 1, 1, 1)]


@pytest.mark.parametrize("cin,cout,k,s,p,d", ORTHO_CIRCULAR)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ortho_conv_transpose_circular_is_orthogonal_after_training(cin, cout, k, s, p, d, dtype):
    m = OrthoConvTranspose2d(cin, cout, k, s, p, dilation=d, padding_mode="circular", dtype=dtype)
    x = torch.randn(4, cin, 5, 5, dtype=dtype)
    adam_steps(m, x)
    a = eval_matrix(m, cin, 5, 5)
    sv = torch.linalg.svdvals(a)
    close = 1e-5 if dtype == torch.float32 else 1e-10
    assert float((sv[: min(a.shape)] - 1).abs().max()) <= close
    bound = m.lipschitz_bound((cin, 5, 5))
    assert float(sv.max()) <= bound * (1 + rounding(dtype)) and bound <= 1 + close + 2e-9
    assert float(sv.max()) <= m.lipschitz_bound() * (1 + rounding(dtype))
    assert float(a.abs().sum(1).max()) <= m.linf_lipschitz_bound() * (1 + rounding(dtype))
    # the adjoint of the circular convolution with the same kernel, built independently
    n = 5 * s
    kern = m.eval_weight().to(torch.float64)
    span = d * (m.kernel_size[0] - 1)
    idx = torch.arange(-p, n + span - p) % n
    conv = dense(lambda z: F.conv2d(z[..., idx, :][..., :, idx], kern, None, s, 0, d), cout, n, n)
    assert torch.allclose(a, conv.T, atol=1e-5 if dtype == torch.float32 else 1e-12)
    exported = m.to_torch()
    with torch.no_grad():
        assert torch.equal(exported(x), m(x))


@pytest.mark.parametrize("cin,cout,k,s,p,op", [(8, 2, 2, 2, 0, 0), (8, 2, 6, 2, 2, 1), (3, 5, 3, 1, 1, 0),
                                               (4, 3, 5, 3, 0, 2)])
def test_ortho_conv_transpose_zero_padding_is_a_sound_contraction(cin, cout, k, s, p, op):
    m = OrthoConvTranspose2d(cin, cout, k, s, p, op)
    x = torch.randn(4, cin, 4, 5)
    adam_steps(m, x)
    bound = m.lipschitz_bound((cin, 4, 5))
    assert bound <= 1 + 1e-5
    for size in (None, [m(x).shape[-2] - op, m(x).shape[-1] - op]):  # output_size picks another padding
        sv = torch.linalg.svdvals(eval_matrix(m, cin, 4, 5, output_size=size))
        assert float(sv.max()) <= bound * (1 + F32_ROUNDING)
    if k == s:  # no overlap: orthogonal even with zero padding
        sv = torch.linalg.svdvals(eval_matrix(m, cin, 4, 5))
        assert float((sv - 1).abs().max()) <= 1e-5
    exported = m.to_torch()
    assert type(exported) is nn.ConvTranspose2d
    with torch.no_grad():
        assert torch.equal(exported(x), m(x))


def test_ortho_conv_transpose_module_behaviour_and_arguments():
    m = OrthoConvTranspose2d(8, 2, 4, 2, 1)
    assert isinstance(m, nn.ConvTranspose2d) and m.weight.shape == (8, 2, 4, 4)
    x = torch.randn(2, 8, 5, 5)
    adam_steps(m, x, steps=2)
    m.eval()
    m2 = OrthoConvTranspose2d(8, 2, 4, 2, 1)
    m2.load_state_dict(m.state_dict())
    m2.eval()
    with torch.no_grad():
        assert torch.equal(m2(x), m(x))
        assert torch.equal(m(x[0]), m(x)[0])  # unbatched input
    assert copy.deepcopy(m).lipschitz_bound((8, 5, 5)) == m.lipschitz_bound((8, 5, 5))
    assert lipschitz_bound_of(m, (8, 5, 5)) == m.lipschitz_bound((8, 5, 5))
    with pytest.raises(AttributeError):
        m.weight = torch.zeros(8, 2, 4, 4)
    with pytest.raises(ValueError):
        m(torch.randn(1, 3, 5, 5))
    bad = [dict(groups=2), dict(padding_mode="reflect"), dict(padding="same"), dict(stride=(1, 2)),
           dict(stride=2, dilation=2), dict(stride=2, output_padding=2), dict(padding_mode="circular", padding=0),
           dict(padding_mode="circular", padding=1, output_padding=1, stride=2)]
    for kwargs in bad:
        with pytest.raises(ValueError):
            OrthoConvTranspose2d(4, 4, 3, **kwargs)


SPECTRAL = [(4, 6, 3, 2, 1, 1, 2, 1), (3, 2, 4, 2, 0, 0, 1, 1), (2, 3, 3, 1, 2, 1, 1, 2), (4, 4, 5, 3, 1, 2, 1, 1)]


@pytest.mark.parametrize("cin,cout,k,s,p,op,g,d", SPECTRAL)
def test_spectral_conv_transpose_is_sound_and_normalized(cin, cout, k, s, p, op, g, d):
    m = SpectralConvTranspose2d(cin, cout, k, s, p, op, g, dilation=d, dtype=torch.float64, n_power_iterations=2)
    x = torch.randn(4, cin, 5, 4, dtype=torch.float64)
    adam_steps(m, x)
    bound = m.lipschitz_bound((cin, 5, 4))
    assert bound <= 1 + 1e-8  # normalized at this size, for every output padding a forward can use
    sizes = [None] + [[m(x).shape[-2] - op + j, m(x).shape[-1] - op + j] for j in range(s)]
    for size in sizes:
        a = eval_matrix(m, cin, 5, 4, output_size=size)
        assert float(torch.linalg.svdvals(a).max()) <= bound * (1 + 1e-12)
        assert float(torch.linalg.svdvals(a).max()) <= m.lipschitz_bound() * (1 + 1e-12)
        assert float(a.abs().sum(1).max()) <= m.linf_lipschitz_bound() * (1 + 1e-12)
    assert lipschitz_bound_of(m, (cin, 5, 4)) == bound
    exported = m.to_torch()
    assert type(exported) is nn.ConvTranspose2d
    with torch.no_grad():
        assert torch.equal(exported(x), m(x))
    plain = nn.ConvTranspose2d(cin, cout, k, s, p, op, g, dilation=d, dtype=torch.float64)
    m2 = SpectralConvTranspose2d(cin, cout, k, s, p, op, g, dilation=d, dtype=torch.float64, input_size=(5, 4))
    m2.load_state_dict(plain.state_dict())  # the plain kernel becomes the free kernel
    assert torch.equal(m2.parametrizations.weight.original, plain.weight)


def test_conv_transpose_bound_is_the_adjoint_bound_on_random_kernels():
    for cin, cout, k, s, p, op, g, d in [(2, 3, 3, 2, 1, 1, 1, 1), (4, 2, 4, 3, 2, 0, 2, 1), (3, 3, 3, 1, 0, 1, 1, 2)]:
        kern = torch.randn(cin, cout // g, k, k, dtype=torch.float64)
        bound = conv_transpose2d_lipschitz_bound(kern, (cin, 4, 5), s, p, op, d, g)
        free = conv_transpose2d_lipschitz_bound(kern, None, s, p, op, d, g)
        for o in sorted({op} | set(range(s))):
            a = dense(lambda z: F.conv_transpose2d(z, kern, None, s, p, o, g, d), cin, 4, 5)
            assert float(torch.linalg.svdvals(a).max()) <= min(bound, free) * (1 + 1e-12)
        assert float(torch.linalg.svdvals(a).max()) >= 0.5 * bound  # not vacuous


def test_spectral_conv_transpose_arguments():
    for kwargs in (dict(padding_mode="circular"), dict(padding="same"), dict(stride=2, output_padding=2),
                   dict(n_power_iterations=0)):
        with pytest.raises(ValueError):
            SpectralConvTranspose2d(4, 4, 3, **kwargs)
    m = SpectralConvTranspose2d(4, 4, 3)
    m.padding_mode = "reflect"  # read when the bound is computed
    with pytest.raises(UnboundedModuleError):
        m.lipschitz_bound((4, 5, 5))


# ---- centering -----------------------------------------------------------------------------------
def test_batch_centering_statistics_eval_translation_and_export():
    m = BatchCentering2d(3, momentum=0.2)
    bn = nn.BatchNorm2d(3, momentum=0.2, affine=False)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(3):
        x = torch.randn(6, 3, 4, 5) * 3 + 2
        y = m(x)
        assert torch.allclose(y, x - x.mean((0, 2, 3), keepdim=True) + m.bias.view(1, -1, 1, 1), atol=1e-6)
        bn(x)
        (y - torch.randn_like(y)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert torch.allclose(m.running_mean, bn.running_mean, atol=1e-6) and float(m.bias.abs().max()) > 0
    m.eval()
    x = torch.randn(2, 3, 4, 5)
    with torch.no_grad():
        assert torch.allclose(m(x), x - m.running_mean.view(1, -1, 1, 1) + m.bias.view(1, -1, 1, 1), atol=1e-6)
        assert torch.equal(m(x[:1]), m(x)[:1])  # eval: each sample on its own
    jac = torch.autograd.functional.jacobian(m, x[:1]).reshape(60, 60).to(torch.float64)
    assert torch.allclose(jac, torch.eye(60, dtype=torch.float64))
    assert m.lipschitz_bound((3, 4, 5)) == 1.0 == lipschitz_bound_of(m, (3, 4, 5))
    exported = m.to_torch()
    assert type(exported) is nn.BatchNorm2d and not exported.training
    with torch.no_grad():
        assert torch.equal(exported(x), m(x))
    m2 = BatchCentering2d(3)
    m2.load_state_dict(m.state_dict())
    m2.eval()
    with torch.no_grad():
        assert torch.equal(m2(x), m(x))


def test_batch_centering_cumulative_average_and_refusals():
    m = BatchCentering2d(2, momentum=None, affine=False)
    xs = [torch.randn(3, 2, 2, 2) + i for i in range(3)]
    for x in xs:
        m(x)
    assert torch.allclose(m.running_mean, torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0), atol=1e-6)
    assert m.bias is None and m.to_torch().bias is not None
    free = BatchCentering2d(2, track_running_stats=False).eval()
    x = torch.randn(4, 2, 3, 3)
    assert torch.allclose(free(x).mean((0, 2, 3)), torch.zeros(2), atol=1e-6)  # batch statistics in eval
    with pytest.raises(UnboundedModuleError):
        free.lipschitz_bound((2, 3, 3))
    with pytest.raises(UnboundedModuleError):
        free.to_torch()
    for kwargs in (dict(num_features=0), dict(num_features=2, momentum=1.5)):
        with pytest.raises(ValueError):
            BatchCentering2d(**kwargs)
    with pytest.raises(ValueError):
        m(torch.randn(2, 3, 4, 4))


@pytest.mark.parametrize("h,w", [(4, 3), (1, 1)])
def test_layer_centering_is_the_spatial_mean_projection(h, w):
    m = LayerCentering2d(3, dtype=torch.float64)
    with torch.no_grad():
        m.bias.copy_(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    for mode in (True, False):
        m.train(mode)
        y = m(x)
        assert torch.allclose(y.mean((-2, -1)), m.bias.expand(2, 3), atol=1e-12)
        assert torch.allclose(m(x[0]), y[0], atol=1e-15)
        a = dense(lambda z: m(z) - m(torch.zeros_like(z[:1])), 3, h, w)
        eye = torch.eye(h * w, dtype=torch.float64)
        proj = torch.block_diag(*[eye - 1.0 / (h * w)] * 3)
        assert torch.allclose(a, proj, atol=1e-12)
        sv = torch.linalg.svdvals(a)
        assert float(sv.max()) <= m.lipschitz_bound((3, h, w)) * (1 + 1e-12)
        assert float(a.abs().sum(1).max()) <= m.linf_lipschitz_bound((3, h, w)) * (1 + 1e-12)
    assert int((sv > 0.5).sum()) == 3 * (h * w - 1)  # exactly 1 on the zero-mean images, 0 on constants
    assert lipschitz_bound_of(m, (3, h, w)) == 1.0
    m2 = LayerCentering2d(3, dtype=torch.float64)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2(x), m(x))
    with pytest.raises(ValueError):
        m(torch.randn(2, 4, h, w, dtype=torch.float64))


# ---- torch.compile -------------------------------------------------------------------------------
def test_compiled_layers_match_eager():
    torch._dynamo.reset()
    layers = [(LOTConv2d(3, 3, 3), (2, 3, 6, 6)), (OrthoConvTranspose2d(4, 2, 2, 2), (2, 4, 3, 3)),
              (SpectralConvTranspose2d(3, 2, 3, 2, 1, 1), (2, 3, 4, 4)), (BatchCentering2d(3), (4, 3, 4, 4)),
              (LayerCentering2d(3), (2, 3, 4, 4))]
    for m, shape in layers:
        ref = copy.deepcopy(m)
        compiled = torch.compile(m, backend="eager")
        x = torch.randn(shape)
        for mode in (True, False):
            m.train(mode)
            ref.train(mode)
            yc, ye = compiled(x), ref(x)
            assert torch.allclose(yc, ye, atol=1e-6), type(m).__name__
            if mode:
                params = [(a, b) for a, b in zip(m.parameters(), ref.parameters()) if a.numel()]
                gc = torch.autograd.grad(yc.square().sum(), [a for a, _ in params])
                ge = torch.autograd.grad(ye.square().sum(), [b for _, b in params])
                assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(gc, ge)), type(m).__name__
    torch._dynamo.reset()


@pytest.mark.parametrize("cls,base", [(OrthoConvTranspose2d, nn.ConvTranspose2d),
                                      (SpectralConvTranspose2d, nn.ConvTranspose2d),
                                      (BatchCentering2d, nn.BatchNorm2d)])
def test_signature_and_defaults_of_torch(cls, base):
    ours = inspect.signature(cls.__init__).parameters
    theirs = inspect.signature(base.__init__).parameters
    positional = [n for n, p in theirs.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [n for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD] == positional
    for name, p in theirs.items():
        assert ours[name].default == p.default, name
