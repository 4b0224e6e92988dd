import pytest
import torch
from torch import nn

import liplayers as L

SHAPES = [(32, 32), (48, 16), (16, 48)]  # (in, out): square, "wide input" (out < in), "tall"


def train_steps(layer, in_features, dtype, steps=8, lr=1e-2):
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    target = torch.randn(in_features, layer.out_features, dtype=dtype)
    for _ in range(steps):
        x = torch.randn(64, in_features, dtype=dtype)
        loss = (layer(x) - x @ target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layer


def singular_values(layer):
    layer.eval()
    x = torch.zeros(1, layer.in_features, dtype=layer.bias.dtype)
    jac = torch.autograd.functional.jacobian(lambda z: layer(z), x).reshape(layer.out_features, layer.in_features)
    return torch.linalg.svdvals(jac.double())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
@pytest.mark.parametrize("mode", ["retract", "differentiable"])
def test_bjorck_linear_is_orthonormal_after_training(shape, dtype, tol, mode):
    layer = L.BjorckLinear(*shape, dtype=dtype, mode=mode)
    train_steps(layer, shape[0], dtype)
    s = singular_values(layer)  # measured from the layer's real input-output map
    assert float((s - 1).abs().max()) <= tol
    assert len(s) == min(shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_spectral_linear_norm_at_most_one(shape, dtype):
    layer = L.SpectralLinear(*shape, dtype=dtype)
    train_steps(layer, shape[0], dtype)
    s = singular_values(layer)
    assert float(s.max()) <= 1 + 1e-4
    assert float(s.max()) >= 1 - 1e-4
    assert layer.lipschitz_bound() >= float(s.max())


def test_retraction_keeps_parameter_on_manifold_and_eval_is_plain_linear():
    layer = L.BjorckLinear(64, 64, dtype=torch.float64, retract_every=1)  # retract at every step
    train_steps(layer, 64, torch.float64, steps=3)
    layer(torch.randn(2, 64, dtype=torch.float64))  # retracts the last step
    v = layer.parametrizations.weight.original
    assert float(L.functional.orthogonality_error(v)) < 1e-9
    layer.eval()
    x = torch.randn(5, 64, dtype=torch.float64)
    assert torch.allclose(layer(x), nn.functional.linear(x, v, layer.bias))


def test_eval_cache_invalidated_by_parameter_change():
    layer = L.BjorckLinear(8, 8, dtype=torch.float64).eval()
    x = torch.randn(3, 8, dtype=torch.float64)
    y1 = layer(x)
    with torch.no_grad():
        layer.parametrizations.weight.original.copy_(torch.randn(8, 8, dtype=torch.float64))
    y2 = layer(x)
    assert not torch.allclose(y1, y2)
    s = torch.linalg.svdvals(layer.weight)
    assert torch.allclose(s, torch.ones_like(s), atol=1e-9)


def test_unconverged_layer_reports_its_true_norm():
    # one differentiable Björck step from a badly scaled weight does not reach σ = 1
    layer = L.BjorckLinear(16, 16, dtype=torch.float64, mode="differentiable", max_iterations=1)
    with torch.no_grad():
        layer.parametrizations.weight.original.copy_(torch.randn(16, 16, dtype=torch.float64))
    sv = torch.linalg.svdvals(layer.eval_weight())
    true_norm = float(sv[0])
    assert float(sv[-1]) < 0.5  # not converged...
    assert layer.lipschitz_bound() >= true_norm  # ...and the bound says so
    assert layer.lipschitz_bound() <= true_norm * (1 + 1e-8)


def test_gradient_flows_and_no_grad_works():
    layer = L.BjorckLinear(10, 6)
    x = torch.randn(4, 10, requires_grad=True)
    layer(x).sum().backward()
    assert layer.parametrizations.weight.original.grad is not None
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        y = layer(torch.randn(4, 10))
    assert not y.requires_grad


def test_state_dict_round_trip():
    a = L.BjorckLinear(12, 7)
    train_steps(a, 12, torch.float32, steps=2)
    a(torch.randn(1, 12))
    b = L.BjorckLinear(12, 7)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 12)
    a.eval(), b.eval()
    assert torch.allclose(a(x), b(x), atol=1e-6)
    c = L.SpectralLinear(12, 7)
    c(torch.randn(1, 12))
    d = L.SpectralLinear(12, 7)
    d.load_state_dict(c.state_dict())
    c.eval(), d.eval()
    assert torch.allclose(c(x), d(x), atol=1e-6)


def test_load_arbitrary_weight_is_orthonormalized():
    layer = L.BjorckLinear(20, 20, dtype=torch.float64)
    sd = layer.state_dict()
    sd["parametrizations.weight.original"] = torch.randn(20, 20, dtype=torch.float64) * 5
    layer.load_state_dict(sd)
    s = singular_values(layer)
    assert float((s - 1).abs().max()) < 1e-6


def test_drop_in_inside_any_module():
    model = nn.Sequential(L.BjorckLinear(4, 4), nn.ReLU(), L.SpectralLinear(4, 2))
    assert model(torch.randn(3, 4)).shape == (3, 2)
    assert isinstance(model[0], nn.Linear) and isinstance(model[2], nn.Linear)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        L.BjorckLinear(3, 3, mode="exact")
    with pytest.raises(ValueError, match="order"):
        L.BjorckLinear(3, 3, order=7)
    layer = L.BjorckLinear(3, 3)
    with torch.no_grad():
        layer.parametrizations.weight.original.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        layer(torch.randn(1, 3))


def test_bfloat16_state_dict_round_trip_is_exact():
    a = L.BjorckLinear(32, 32, dtype=torch.bfloat16)
    opt = torch.optim.SGD(a.parameters(), lr=1e-2)
    a(torch.randn(4, 32, dtype=torch.bfloat16)).float().square().mean().backward()
    opt.step()
    a(torch.randn(1, 32, dtype=torch.bfloat16))  # retract the last step
    b = L.BjorckLinear(32, 32, dtype=torch.bfloat16)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    assert torch.equal(a.weight, b.weight)  # no re-orthonormalization of a stored weight
    s = torch.linalg.svdvals(b.weight.double())
    assert float((s - 1).abs().max()) < 2e-2
