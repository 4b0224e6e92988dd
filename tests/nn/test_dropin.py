"""Drop-in compatibility with torch.nn: types, constructor defaults, ``weight``, state dicts, export.

``OrthoConv2d`` with stride s runs one stride-s convolution with the polyphase-rearranged BCOP
kernel; it is checked here, values and gradients, against the reference implementation it
replaces (pixel unshuffle followed by the coarse BCOP kernel), which is also what old
checkpoints were saved from.
"""
import inspect
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from liplayers import BjorckLinear, OrthoConv2d, RKOConv2d, SpectralConv2d, SpectralLinear, export
from liplayers.functional.bcop import bcop_kernel
from liplayers.functional.conv import circular_conv_norm, conv2d_lipschitz_bound, resolve_padding
from liplayers.functional.orthogonalization import retract_semi_orthogonal_
from liplayers.lipschitz import lipschitz_bound_of, linf_lipschitz_bound_of

CONVS = [OrthoConv2d, SpectralConv2d, RKOConv2d]
LINEARS = [BjorckLinear, SpectralLinear]


def unshuffle_reference(layer: OrthoConv2d, x: torch.Tensor) -> torch.Tensor:
    """The previous implementation: pixel unshuffle by s, then the coarse kernel, coarse 'same' padding."""
    s = layer.stride[0]
    kc = bcop_kernel(layer.ortho, layer.projectors, layer.coarse_kernel_size)
    z = F.pixel_unshuffle(x, s) if s > 1 else x
    (pt, pb), (pl, pr) = resolve_padding("same", layer.coarse_kernel_size, layer.dilation)
    mode = "constant" if layer.padding_mode == "zeros" else "circular"
    return F.conv2d(F.pad(z, (pl, pr, pt, pb), mode=mode), kc, layer.bias, 1, 0, layer.dilation)


def perturbed(layer: OrthoConv2d) -> OrthoConv2d:
    """Factors moved off the manifold (as after an optimizer step) and a non-zero bias."""
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return layer


# ---- types and constructors ---------------------------------------------------------------------
@pytest.mark.parametrize("cls,base", [(c, nn.Conv2d) for c in CONVS] + [(c, nn.Linear) for c in LINEARS])
def test_isinstance_and_signature_of_torch(cls, base):
    layer = cls(4, 6, 3) if base is nn.Conv2d else cls(4, 6)
    assert isinstance(layer, base)
    ours = inspect.signature(cls.__init__).parameters
    theirs = inspect.signature(base.__init__).parameters
    positional = [n for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == list(theirs)  # same arguments in the same order ...
    for name, p in theirs.items():
        assert ours[name].default == p.default, name  # ... with torch's defaults (padding=0)


@pytest.mark.parametrize("cls", CONVS)
@pytest.mark.parametrize("stride", [1, 2])
def test_default_padding_is_torchs(cls, stride):
    torch.manual_seed(0)
    layer = cls(3, 8, 3, stride=stride)
    assert layer.padding == (0, 0) and layer.padding_mode == "zeros"
    x = torch.randn(2, 3, 10, 10)
    plain = nn.Conv2d(3, 8, layer.kernel_size, stride=stride)
    assert layer(x).shape == plain(x).shape


def test_same_padding_stays_available():
    x = torch.randn(1, 2, 8, 8)
    assert OrthoConv2d(2, 4, 3, padding="same")(x).shape == (1, 4, 8, 8)
    assert OrthoConv2d(2, 8, 3, stride=2, padding="same", padding_mode="circular")(x).shape == (1, 8, 4, 4)
    assert SpectralConv2d(2, 4, 3, padding="same")(x).shape == (1, 4, 8, 8)
    assert RKOConv2d(2, 4, 3, padding="same", padding_mode="circular")(x).shape == (1, 4, 8, 8)


# ---- OrthoConv2d: one strided convolution with the kernel it reports ------------------------------
@pytest.mark.parametrize("mode,k,s", list(itertools.product(["zeros", "circular"], [2, 3, 4, 5], [2, 3])))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_strided_path_equals_unshuffle_implementation(mode, k, s, dtype, tol):
    torch.manual_seed(0)
    layer = perturbed(OrthoConv2d(3, 5, k, stride=s, padding="same", padding_mode=mode, dtype=dtype,
                                  riemannian_grad=False))  # the reference differentiates the factors plainly
    assert layer.kernel_size == (s * -(-k // s),) * 2
    x = torch.randn(2, 3, 4 * s, 6 * s, dtype=dtype, requires_grad=True)
    y = layer(x)  # training mode: retracts the factors, then the differentiable kernel
    ref = unshuffle_reference(layer, x)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=0, atol=tol)
    g = torch.randn_like(y)
    params = [p for p in (x, layer.ortho, layer.projectors, layer.bias) if p.numel()]  # k ≤ s: no projectors
    for a, b in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b, rtol=0, atol=10 * tol)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), unshuffle_reference(layer, x), rtol=0, atol=tol)


@pytest.mark.parametrize("kw", [dict(), dict(padding=1), dict(padding=(2, 1), dilation=2),
                                dict(padding="same", padding_mode="circular"),
                                dict(stride=2, padding=1), dict(stride=2, padding=1, padding_mode="circular")])
def test_weight_is_the_kernel_used(kw):
    """``nn.Conv2d`` with the layer's own attributes and ``weight`` computes the layer (train and eval)."""
    torch.manual_seed(0)
    layer = perturbed(OrthoConv2d(3, 4, 3, dtype=torch.float64, **kw))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for training in (True, False):
        layer.train(training)
        plain = nn.Conv2d(3, 4, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                          padding_mode=layer.padding_mode, dtype=torch.float64)
        plain.load_state_dict({"weight": layer.weight.detach(), "bias": layer.bias.detach()})
        torch.testing.assert_close(layer(x), plain(x), rtol=0, atol=1e-12)
    assert torch.equal(layer.eval_weight(), layer.weight)
    with pytest.raises(AttributeError, match="read-only"):
        layer.weight = torch.zeros(4, 3, 3, 3)


def test_bounds_of_the_kernel_used():
    """The L2 bound is the kernel's exact FFT norm (circular) and the registry accepts the layer."""
    torch.manual_seed(0)
    layer = perturbed(OrthoConv2d(2, 8, 3, stride=2, padding="same", padding_mode="circular", dtype=torch.float64))
    layer(torch.randn(1, 2, 8, 8, dtype=torch.float64))  # retract
    layer.eval()
    bound = lipschitz_bound_of(layer, (2, 8, 8))
    assert bound == pytest.approx(circular_conv_norm(layer.weight, (8, 8), 2), rel=1e-12)
    assert bound == pytest.approx(1.0, abs=2e-9)  # exactly orthogonal, up to the 1e-9 margin
    k = layer.weight
    assert linf_lipschitz_bound_of(layer, (2, 8, 8)) >= float(k.abs().sum((1, 2, 3)).max())


# ---- state dicts ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,s", [("zeros", 1), ("zeros", 2), ("circular", 2)])
def test_old_orthoconv_checkpoint_loads(mode, s):
    """Checkpoints keep the keys ``ortho``, ``projectors``, ``bias`` and compute the same function."""
    torch.manual_seed(0)
    old = perturbed(OrthoConv2d(3, 6, 3, stride=s, padding="same", padding_mode=mode, dtype=torch.float64))
    state = {k: v.clone() for k, v in old.state_dict().items()}
    assert set(state) == {"ortho", "projectors", "bias"}
    new = OrthoConv2d(3, 6, 3, stride=s, padding="same", padding_mode=mode, dtype=torch.float64)
    new.load_state_dict(state)
    new.eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    # the eval map of the loaded (off-manifold) factors: that of their polar factors
    with torch.no_grad():
        retract_semi_orthogonal_(old.ortho)
        retract_semi_orthogonal_(old.projectors)
        torch.testing.assert_close(new(x), unshuffle_reference(old, x), rtol=0, atol=1e-12)
    assert torch.equal(new.ortho, state["ortho"])  # eval did not modify the loaded parameters


def test_plain_conv_state_dict_into_orthoconv_is_refused():
    with pytest.raises(RuntimeError, match="BCOP factors"):
        OrthoConv2d(3, 4, 3).load_state_dict(nn.Conv2d(3, 4, 3).state_dict())


@pytest.mark.parametrize("cls", LINEARS)
def test_linear_state_dict_both_ways(cls):
    torch.manual_seed(0)
    plain = nn.Linear(6, 4, dtype=torch.float64)
    layer = cls(6, 4, dtype=torch.float64)
    layer.load_state_dict(plain.state_dict())  # strict: plain keys weight, bias
    assert torch.equal(layer.parametrizations.weight.original, plain.weight)
    assert torch.equal(layer.bias, plain.bias)
    w = layer.eval_weight()
    u, sv, vh = torch.linalg.svd(plain.weight.detach(), full_matrices=False)
    expected = u @ vh if cls is BjorckLinear else plain.weight.detach() / sv[0]
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-8)
    x = torch.randn(3, 6, dtype=torch.float64)
    layer.eval()
    exported = export(layer)
    assert type(exported) is nn.Linear
    back = nn.Linear(6, 4, dtype=torch.float64)
    back.load_state_dict(exported.state_dict())  # strict
    torch.testing.assert_close(back(x), layer(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [SpectralConv2d, RKOConv2d])
def test_conv_state_dict_both_ways(cls):
    torch.manual_seed(0)
    plain = nn.Conv2d(3, 4, 3, padding=1, dtype=torch.float64)
    layer = cls(3, 4, 3, padding=1, dtype=torch.float64)
    layer.load_state_dict(plain.state_dict())  # strict, the free kernel is the plain kernel
    assert torch.equal(layer.parametrizations.weight.original, plain.weight)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    layer(x)  # first forward: input size (SpectralConv2d), retraction (RKOConv2d)
    layer.eval()
    w = layer.eval_weight()
    if cls is SpectralConv2d:  # the plain kernel divided by the norm of its operator at 8×8
        torch.testing.assert_close(w * conv2d_lipschitz_bound(plain.weight, (8, 8), 1, 1) / (1 + 1e-9),
                                   plain.weight.detach(), rtol=1e-9, atol=0)
    else:  # RKO: the reshaped plain kernel's polar factor, scaled
        u, _, vh = torch.linalg.svd(plain.weight.detach().reshape(4, -1), full_matrices=False)
        torch.testing.assert_close(w.reshape(4, -1) * (layer.patch_multiplicity ** 0.5), u @ vh, rtol=0, atol=1e-8)
    exported = export(layer)
    assert type(exported) is nn.Conv2d
    back = nn.Conv2d(3, 4, 3, padding=1, dtype=torch.float64)
    back.load_state_dict(exported.state_dict())
    torch.testing.assert_close(back(x), layer(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(), dict(padding="same"), dict(stride=2, padding="same"),
                                dict(stride=2, padding="same", padding_mode="circular"),
                                dict(stride=2, padding=1, padding_mode="circular")])
def test_orthoconv_export_is_plain_torch_with_sound_bound(kw):
    torch.manual_seed(0)
    layer = perturbed(OrthoConv2d(2, 8, 3, dtype=torch.float64, **kw)).eval()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    plain = export(layer)
    assert all(type(m).__module__.startswith("torch.nn") for m in plain.modules())
    torch.testing.assert_close(plain(x), layer(x), rtol=0, atol=1e-12)
    assert lipschitz_bound_of(plain, (2, 8, 8)) >= lipschitz_bound_of(layer, (2, 8, 8)) * (1 - 1e-9)
