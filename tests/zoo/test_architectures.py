"""Record architectures (GloRo 4C3F/6C2F, LipConvNet, Downsize ConvNet, LiResNet) and the family registry."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from liplayers.certify import lipschitz_bound
from liplayers.nn.container import Sequential
from liplayers.zoo import (
    CONV_FAMILIES,
    DENSE_FAMILIES,
    PRESETS,
    ChannelPad,
    FirstChannels,
    build_preset,
    conv_layers,
    dense_layers,
    downsize_convnet,
    gloro_4c3f,
    gloro_6c2f,
    liresnet,
    lipconvnet,
)
from liplayers.zoo import _families

# presets are built at a fraction of their widths: the same layer lists, a CPU-sized cost
# (the exact float64 bounds of the full-width layers take seconds to a minute each)
PRESET_WIDTH = {"downsize-m-cifar10": 0.125, "downsize-s-cifar10": 0.125, "lipconvnet-20-cifar10": 0.125}


def _jacobian_norm(model: nn.Module, x: torch.Tensor) -> float:
    """Spectral norm of the input Jacobian of the eval-mode model at one input (float64 SVD)."""
    model.eval()
    jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x)
    return float(torch.linalg.matrix_norm(jac.reshape(jac.shape[0], -1).double(), ord=2))


def _train_step(model: nn.Module, shape, classes: int = 10) -> float:
    x = torch.rand(4, *shape)
    y = torch.randint(0, classes, (4,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_trains_and_is_bounded(name):
    preset = PRESETS[name]
    model = build_preset(name, width=PRESET_WIDTH.get(name, 0.25))
    assert isinstance(model, Sequential)
    shape = preset.input_shape
    out = model(torch.rand(4, *shape))
    assert out.shape == (4, 10)
    assert torch.isfinite(torch.tensor(_train_step(model, shape)))
    bound = lipschitz_bound(model, shape)
    assert bound == pytest.approx(model.lipschitz_bound(shape))
    # every layer of these presets is 1-Lipschitz up to the rounding of its exact bound
    assert 0.0 < bound <= 1.0 + 1e-3
    assert _jacobian_norm(model, torch.rand(*shape)) <= bound * (1 + 1e-5)


def test_preset_names_and_errors():
    for key in ("4c3f-mnist", "6c2f-cifar10", "lipconvnet-10-cifar10", "downsize-s-cifar10",
                "liresnet-small-cifar10"):
        assert key in PRESETS
    assert PRESETS["4c3f-mnist"].input_shape == (1, 28, 28)
    with pytest.raises(ValueError, match="unknown preset"):
        build_preset("vgg16-cifar10")


@pytest.mark.parametrize("conv", sorted(CONV_FAMILIES))
def test_every_conv_family_fits_4c3f(conv):
    """Strided and channel-changing layers of every family (adapters where needed), checked
    against the Jacobian at a few points: the bound is computed from the layers actually built."""
    model = gloro_4c3f(conv=conv, width=0.125, input_size=16)
    shape = (1, 16, 16)
    assert model(torch.rand(2, *shape)).shape == (2, 10)
    _train_step(model, shape)
    bound = model.lipschitz_bound(shape)
    assert 0.0 < bound <= 1.0 + 1e-3
    for _ in range(2):
        assert _jacobian_norm(model, torch.rand(*shape)) <= bound * (1 + 1e-5)


@pytest.mark.parametrize("dense", sorted(DENSE_FAMILIES))
def test_every_dense_family_fits_6c2f(dense):
    model = gloro_6c2f(dense=dense, width=0.0625, input_size=8)
    _train_step(model, (3, 8, 8))
    bound = model.lipschitz_bound((3, 8, 8))
    assert 0.0 < bound <= 1.0 + 1e-3
    assert _jacobian_norm(model, torch.rand(3, 8, 8)) <= bound * (1 + 1e-5)


def test_gloro_layer_lists():
    m = gloro_4c3f()
    convs = [l for l in m if type(l).__name__ == "OrthoConv2d"]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (1, 32, 3, 1), (32, 32, 4, 2), (32, 64, 3, 1), (64, 64, 4, 2)]
    dense = [l for l in m if isinstance(l, nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(64 * 7 * 7, 512), (512, 512), (512, 10)]
    m6 = gloro_6c2f(width=0.5)
    convs = [l for l in m6 if type(l).__name__ == "OrthoConv2d"]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (16, 3, 1), (16, 3, 1), (16, 4, 2), (32, 3, 1), (32, 3, 1), (32, 4, 2)]
    assert [l.out_features for l in m6 if isinstance(l, nn.Linear)] == [256, 10]


def test_lipconvnet_structure():
    m = lipconvnet(depth=10, conv="soc", width=0.125, input_size=32)
    convs = [l for l in m if type(l).__name__ == "SOCConv2d"]
    assert len(convs) == 10
    # SOC has no stride: stride-2 layers are pixel unshuffle + a 3×3 (1×1 in the last stage) stride-1 layer
    assert sum(type(l).__name__ == "InvertibleDownsampling" for l in m) == 5
    assert [c.out_channels for c in convs] == [4, 8, 8, 16, 16, 32, 32, 64, 64, 128]
    assert convs[-1].kernel_size == (1, 1) and convs[1].kernel_size == (3, 3)
    with pytest.raises(ValueError, match="multiple of 5"):
        lipconvnet(depth=12)
    with pytest.raises(ValueError, match="divisible by 32"):
        lipconvnet(input_size=28)


def test_downsize_structure_and_residual_families():
    m = downsize_convnet("xs", conv="sll", width=0.5, layers_per_block=1)
    assert type(m[0]).__name__ == "ChannelPad" and m[0].channels == 8
    assert sum(type(l).__name__ == "SLLConv2d" for l in m) == 1 + 5
    assert isinstance(m[-1], FirstChannels) and m[-1].channels == 10
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert m.lipschitz_bound((3, 32, 32)) <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="size"):
        downsize_convnet("xxl")


def test_liresnet_uses_linear_residual_blocks():
    m = liresnet(depth=2, width=0.125, input_size=16)
    blocks = [l for l in m if type(l).__name__ == "LinearResidualConv2d"]
    assert len(blocks) == 2 and blocks[0].input_size == (8, 8)
    _train_step(m, (3, 16, 16))
    assert m.lipschitz_bound((3, 16, 16)) <= 1.0 + 1e-3
    with pytest.raises(ValueError, match="divisible by 8"):
        liresnet(input_size=28)


def test_last_layer_normalized_head():
    from liplayers.nn.last_layer import LastLayerNormalizedLinear

    for m in (gloro_4c3f(width=0.125, last_layer_normalized=True),
              lipconvnet(5, width=0.125, last_layer_normalized=True),
              downsize_convnet("xs", width=0.5, layers_per_block=1, last_layer_normalized=True),
              liresnet(1, width=0.125, input_size=16, last_layer_normalized=True)):
        assert isinstance(m[-1], LastLayerNormalizedLinear)
        rows = m[-1].eval_weight().norm(dim=1)
        assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)


def test_callable_families_and_plain_torch_layers():
    calls = []

    def conv(cin, cout, k, stride=1, padding="same"):
        calls.append((cin, cout, k, stride, padding))
        return nn.Conv2d(cin, cout, k, stride=stride, padding=padding)

    m = gloro_4c3f(conv=conv, dense=nn.Linear, width=0.125)
    assert calls[1] == (4, 4, 4, 2, 1)  # 'same' with a stride: the integer padding giving H/2
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    bound = lipschitz_bound(m, (1, 28, 28))  # plain torch layers: their registered bounds
    assert _jacobian_norm(m, torch.rand(1, 28, 28)) <= bound * (1 + 1e-5)


def test_adapters_are_norm_preserving_or_projections():
    x = torch.randn(3, 5, 4, 4)
    y = ChannelPad(8)(x)
    assert y.shape == (3, 8, 4, 4) and torch.equal(y[:, :5], x) and not y[:, 5:].any()
    assert torch.equal(FirstChannels(2)(x), x[:, :2])
    assert ChannelPad(8).lipschitz_bound() == 1.0 == FirstChannels(2).lipschitz_bound()
    with pytest.raises(ValueError):
        ChannelPad(4)(x)
    with pytest.raises(ValueError):
        FirstChannels(6)(x)


@pytest.mark.parametrize("conv", ["bcop", "aol", "cpl", "cayley", "spectral"])
@pytest.mark.parametrize("k, s, pad", [(4, 2, "same"), (3, 2, "same"), (4, 4, "valid"), (3, 1, "same")])
def test_conv_layers_output_shapes(conv, k, s, pad):
    layers = nn.Sequential(*conv_layers(conv, 6, 10, k, stride=s, padding=pad))
    out = layers.eval()(torch.rand(2, 6, 16, 16))
    expected = 16 // s if pad == "same" else (16 - k) // s + 1
    assert out.shape == (2, 10, expected, expected)


def test_family_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown conv family"):
        conv_layers("lot", 4, 4, 3)
    with pytest.raises(ValueError, match="unknown dense family"):
        dense_layers("sandwich", 4, 4)
    with pytest.raises(ValueError, match="odd"):
        conv_layers("soc", 4, 4, 4)
    with pytest.raises(ValueError, match="'valid'"):
        conv_layers("soc", 4, 4, 4, stride=2, padding="valid")
    missing = _families.ConvFamily("ghost", "ghost_layer:GhostConv2d", True, False, False, False, "nobody")
    monkeypatch.setitem(CONV_FAMILIES, "ghost", missing)
    with pytest.raises(ImportError, match="liplayers.nn.ghost_layer.GhostConv2d"):
        conv_layers("ghost", 4, 4, 3)
    with pytest.raises(ValueError, match="width"):
        gloro_4c3f(width=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        gloro_4c3f(input_size=30)
