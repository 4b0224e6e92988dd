"""Convolutional layers: exact orthogonality / 1-Lipschitz by full-Jacobian SVD (float64)."""
import itertools

import pytest
import torch
from torch import nn

from liplayers import OrthoConv2d, RKOConv2d, SpectralConv2d, export
from liplayers.functional.bcop import bcop_kernel
from liplayers.functional.orthogonalization import retract_semi_orthogonal_
from liplayers.functional.conv import circular_conv_singular_values
from liplayers.lipschitz import lipschitz_bound_of

H = W = 8


CONFIGS = list(itertools.product(["circular", "zeros"], [1, 3, 5], [1, 2], [(4, 4), (4, 8), (8, 4)]))
# zero padding of any amount is a restriction of the orthogonal map; circular needs the 'same' total
PADDINGS = [("zeros", 3, 2, 0), ("zeros", 3, 2, 1), ("zeros", 3, 1, 2), ("zeros", 4, 2, 3), ("circular", 3, 2, 1),
            ("circular", 4, 2, 1), ("zeros", 3, 3, 1), ("circular", 7, 3, 3)]


def jacobian_singular_values(layer: nn.Module, cin: int, h: int = H, w: int = W) -> torch.Tensor:
    """All singular values of the (affine) layer's Jacobian, from its impulse responses."""
    layer.eval()
    n = cin * h * w
    basis = torch.eye(n, dtype=torch.float64).reshape(n, cin, h, w)
    with torch.no_grad():
        y = layer(basis) - layer(torch.zeros(1, cin, h, w, dtype=torch.float64))
    return torch.linalg.svdvals(y.reshape(n, -1))


def trained(layer: nn.Module, cin: int, steps: int = 2, lr: float = 0.05, hw: int = H) -> nn.Module:
    """A few Adam steps on a random objective, so the check is not only at initialization."""
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    layer.train()
    for _ in range(steps):
        x = torch.randn(3, cin, hw, hw, dtype=torch.float64, generator=g)
        loss = (layer(x) ** 2).mean() + layer(x).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    layer(torch.randn(1, cin, hw, hw, dtype=torch.float64, generator=g))  # retraction after the last step
    return layer


@pytest.mark.parametrize("mode,k,s,ch", CONFIGS)
def test_ortho_conv_exact(mode, k, s, ch):
    torch.manual_seed(0)
    cin, cout = ch
    layer = trained(OrthoConv2d(cin, cout, k, stride=s, padding="same", padding_mode=mode, dtype=torch.float64), cin)
    sv = jacobian_singular_values(layer, cin)
    rank = min(cin * H * W, cout * (H // s) * (W // s))
    if mode == "circular":
        assert (sv[:rank] - 1).abs().max() < 1e-6
    else:
        assert sv.max() <= 1 + 1e-6
    bound = layer.lipschitz_bound((cin, H, W))
    assert bound >= sv.max()
    assert bound <= 1 + 1e-6
    assert layer.lipschitz_bound() >= sv.max()


@pytest.mark.parametrize("cls", [SpectralConv2d, RKOConv2d])
@pytest.mark.parametrize("mode,k,s,ch", CONFIGS)
def test_normalized_convs_are_1_lipschitz(cls, mode, k, s, ch):
    torch.manual_seed(0)
    cin, cout = ch
    layer = cls(cin, cout, k, stride=s, padding="same", padding_mode=mode, dtype=torch.float64)
    layer = trained(layer, cin)
    sv = jacobian_singular_values(layer, cin)
    assert sv.max() <= 1 + 1e-5
    assert layer.lipschitz_bound((cin, H, W)) >= sv.max()
    assert lipschitz_bound_of(layer, None) >= sv.max()
    if cls is SpectralConv2d and mode == "circular":  # exact FFT normalization
        assert sv.max() >= 1 - 1e-8


def test_spectral_conv_power_iteration_tracks_operator_norm():
    torch.manual_seed(0)
    layer = SpectralConv2d(4, 6, 3, padding_mode="circular", input_size=(H, W), dtype=torch.float64,
                           n_power_iterations=5)
    x = torch.randn(2, 4, H, W, dtype=torch.float64)
    layer.train()
    for _ in range(20):
        layer(x)
    w_train = layer.weight.detach()
    sv = circular_conv_singular_values(w_train, (H, W))
    assert abs(float(sv.max()) - 1) < 1e-3  # training normalizer = power-iteration estimate
    # the gradient flows through σ: d/dV of the normalized kernel is not the identity / σ
    v = layer.parametrizations.weight.original
    g = torch.autograd.grad(layer(x).sum(), v)[0]
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_spectral_conv_input_size_from_first_forward():
    layer = SpectralConv2d(3, 5, 3, dtype=torch.float64)
    assert layer.parametrization.input_size is None
    layer(torch.randn(1, 3, 6, 10, dtype=torch.float64))
    assert layer.parametrization.input_size == (6, 10)
    sv = jacobian_singular_values(layer, 3, 6, 10)
    assert sv.max() <= 1 + 1e-9


def test_ortho_conv_float32_after_training():
    torch.manual_seed(0)
    layer = OrthoConv2d(16, 16, 3, padding="same", padding_mode="circular")
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for _ in range(5):
        loss = layer(torch.randn(4, 16, 16, 16)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    layer.eval()
    sv = circular_conv_singular_values(layer.weight, (16, 16))
    assert (sv - 1).abs().max() <= 1e-4
    assert layer.lipschitz_bound((16, 16, 16)) >= float(sv.max())


def test_retraction_keeps_factors_on_manifold():
    torch.manual_seed(0)
    layer = OrthoConv2d(6, 6, 3, dtype=torch.float64)
    with torch.no_grad():
        layer.ortho.add_(0.1 * torch.randn_like(layer.ortho))
        layer.projectors.add_(0.1 * torch.randn_like(layer.projectors))
    layer.train()
    layer(torch.randn(1, 6, H, W, dtype=torch.float64))
    eye = torch.eye(6, dtype=torch.float64)
    assert torch.allclose(layer.ortho @ layer.ortho.T, eye, atol=1e-10)
    q = layer.projectors
    assert torch.allclose(q.mT @ q, torch.eye(q.shape[-1], dtype=torch.float64).expand_as(q.mT @ q), atol=1e-10)


def test_eval_does_not_modify_parameters_but_is_orthogonal():
    torch.manual_seed(0)
    layer = OrthoConv2d(4, 4, 3, padding="same", padding_mode="circular", dtype=torch.float64)
    with torch.no_grad():
        layer.ortho.mul_(1.7)
    before = layer.ortho.detach().clone()
    sv = jacobian_singular_values(layer, 4)  # eval mode
    assert torch.equal(layer.ortho, before)
    assert (sv - 1).abs().max() < 1e-9


def test_isometry_preserves_norms_and_gradients():
    torch.manual_seed(0)
    layer = OrthoConv2d(4, 8, 3, padding="same", padding_mode="circular", bias=False, dtype=torch.float64).eval()
    x = torch.randn(3, 4, H, W, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert torch.allclose(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-10)
    gy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, gy)
    # co-isometry adjoint: ‖Jᵀg‖ ≤ ‖g‖, equality on the range; for an isometry Jᵀ is a co-isometry
    assert (gx.flatten(1).norm(dim=1) <= gy.flatten(1).norm(dim=1) * (1 + 1e-10)).all()


def test_bcop_kernel_symbol_is_unitary():
    torch.manual_seed(0)
    h = torch.randn(5, 5, dtype=torch.float64)
    q = torch.randn(4, 5, 2, dtype=torch.float64)
    retract_semi_orthogonal_(h)
    retract_semi_orthogonal_(q)
    k = bcop_kernel(h, q, (3, 3))
    assert k.shape == (5, 5, 3, 3)
    sv = circular_conv_singular_values(k, (7, 9))
    assert (sv - 1).abs().max() < 1e-10


@pytest.mark.parametrize("cls,kw", [
    (OrthoConv2d, dict(kernel_size=3, stride=2)),
    (OrthoConv2d, dict(kernel_size=3, stride=2, padding="same")),
    (OrthoConv2d, dict(kernel_size=3, stride=2, padding=1)),
    (OrthoConv2d, dict(kernel_size=3, stride=2, padding="same", padding_mode="circular")),
    (OrthoConv2d, dict(kernel_size=3, stride=2, padding=1, padding_mode="circular")),
    (OrthoConv2d, dict(kernel_size=3, padding="same", padding_mode="circular")),
    (OrthoConv2d, dict(kernel_size=2, padding="same")),
    (OrthoConv2d, dict(kernel_size=2)),
    (SpectralConv2d, dict(kernel_size=3, stride=2, padding="same")),
    (SpectralConv2d, dict(kernel_size=3, padding="same", padding_mode="circular")),
    (RKOConv2d, dict(kernel_size=3, padding=1)),
])
def test_export_equivalence(cls, kw):
    torch.manual_seed(0)
    layer = cls(4, 6, dtype=torch.float64, **kw)
    layer = trained(layer, 4)
    layer.eval()
    x = torch.randn(2, 4, H, W, dtype=torch.float64)
    plain = export(layer)
    assert not any(isinstance(m, (OrthoConv2d, SpectralConv2d, RKOConv2d)) for m in plain.modules())
    assert torch.allclose(plain(x), layer(x), atol=1e-12)
    # the plain module's registered bound is sound too
    sv = jacobian_singular_values(plain, 4)
    assert lipschitz_bound_of(plain, (4, H, W)) >= sv.max()


@pytest.mark.parametrize("cls", [OrthoConv2d, SpectralConv2d, RKOConv2d])
def test_state_dict_round_trip(cls):
    torch.manual_seed(0)
    a = trained(cls(4, 4, 3, dtype=torch.float64), 4)
    b = cls(4, 4, 3, dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 4, H, W, dtype=torch.float64)
    assert torch.allclose(a.eval()(x), b.eval()(x), atol=1e-12)


@pytest.mark.parametrize("cls,kw,msg", [
    (OrthoConv2d, dict(padding_mode="reflect"), "reflect"),
    (OrthoConv2d, dict(padding_mode="circular"), "circular padding must be 'same'"),  # default padding 0
    (OrthoConv2d, dict(padding_mode="circular", stride=2, padding=2), "circular padding must be 'same'"),
    (OrthoConv2d, dict(groups=2), "groups"),
    (OrthoConv2d, dict(stride=(1, 2)), "square strides"),
    (OrthoConv2d, dict(stride=2, dilation=2), "dilation"),
    (OrthoConv2d, dict(padding="full"), "padding must be"),
    (SpectralConv2d, dict(padding_mode="replicate"), "replicate"),
    (RKOConv2d, dict(groups=2), "groups"),
])
def test_invalid_configurations_raise(cls, kw, msg):
    with pytest.raises(ValueError, match=msg):
        cls(4, 4, 3, **kw)


def test_odd_size_with_stride_raises_for_circular_only():
    layer = OrthoConv2d(2, 2, 3, stride=2, padding="same", padding_mode="circular")
    with pytest.raises(ValueError, match="divisible"):
        layer(torch.randn(1, 2, 7, 8))
    with pytest.raises(ValueError, match="divisible"):
        layer.lipschitz_bound((2, 7, 8))
    zeros = OrthoConv2d(2, 2, 3, stride=2, padding="same")  # zero padding: any size, as nn.Conv2d
    assert zeros(torch.randn(1, 2, 7, 8)).shape == (1, 2, 3, 4)


@pytest.mark.parametrize("mode,k,s,p", PADDINGS)
def test_ortho_conv_any_padding(mode, k, s, p):
    """Integer paddings on the input grid (as nn.Conv2d): circular stays orthogonal, zeros ≤ 1."""
    torch.manual_seed(0)
    cin, cout, h = 2, 2 * s * s, 6 * s
    layer = trained(OrthoConv2d(cin, cout, k, stride=s, padding=p, padding_mode=mode, dtype=torch.float64), cin, hw=h)
    ref = nn.Conv2d(cin, cout, layer.kernel_size, s, p, padding_mode=mode, dtype=torch.float64)
    x = torch.randn(2, cin, h, h, dtype=torch.float64)
    layer.eval()
    assert layer(x).shape == ref(x).shape  # nn.Conv2d's output size for the kernel used
    sv = jacobian_singular_values(layer, cin, h, h)
    bound = layer.lipschitz_bound((cin, h, h))
    if mode == "circular":
        assert (sv - 1).abs().max() < 1e-6
    else:
        assert sv.max() <= 1 + 1e-6
    assert sv.max() <= bound <= 1 + 1e-6
    assert sv.max() <= layer.lipschitz_bound() <= 1 + 1e-6


@pytest.mark.parametrize("mode,padding", [("circular", "same"), ("zeros", 1), ("zeros", "same")])
def test_ortho_conv_dilated(mode, padding):
    torch.manual_seed(0)
    layer = trained(OrthoConv2d(3, 3, 3, dilation=2, padding=padding, padding_mode=mode, dtype=torch.float64), 3)
    sv = jacobian_singular_values(layer, 3)
    if mode == "circular":
        assert (sv - 1).abs().max() < 1e-6
    assert sv.max() <= layer.lipschitz_bound((3, H, W)) <= 1 + 1e-6
    assert sv.max() <= layer.lipschitz_bound() <= 1 + 1e-6
