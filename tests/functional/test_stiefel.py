"""Riemannian gradients on the Stiefel manifold (tangent projection, canonical metric) and their
use by OrthoConv2d and BjorckLinear."""
import pickle

import pytest
import torch

import liplayers as L
from liplayers.functional import (riemannian_gradient, stiefel_canonical_gradient, stiefel_tangent_projection,
                                  with_tangent_gradient)
from liplayers.functional.stiefel import scaled_linear
from liplayers.functional.orthogonalization import retract_semi_orthogonal_

F64 = torch.float64


def _stiefel(m, n, seed, batch=()):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(*batch, max(m, n), min(m, n), generator=g, dtype=F64))
    return q if m >= n else q.mT


@pytest.mark.parametrize("shape", [(9, 4), (4, 9), (6, 6)])
def test_projection_is_tangent_idempotent_and_orthogonal(shape):
    x = _stiefel(*shape, seed=0, batch=(3,))
    g = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    z = stiefel_tangent_projection(x, g)
    # tangent: the derivative of XᵀX (tall) or XXᵀ (wide) vanishes along z
    d = x.mT @ z + z.mT @ x if shape[0] >= shape[1] else z @ x.mT + x @ z.mT
    assert float(d.abs().max()) < 1e-12
    torch.testing.assert_close(stiefel_tangent_projection(x, z), z, rtol=0, atol=1e-12)
    # the removed part is orthogonal to every tangent vector
    t = stiefel_tangent_projection(x, torch.randn(3, *shape, dtype=F64))
    assert abs(float(((g - z) * t).sum())) < 1e-10
    # and it is undone by the retraction: polar(X + s·N) = X + O(s²)
    for s in (1e-3, 1e-4):
        y = (x + s * (g - z))[0].clone()
        retract_semi_orthogonal_(y)
        assert float((y - x[0]).abs().max()) < 50 * s * s


@pytest.mark.parametrize("shape", [(9, 4), (4, 9), (6, 6)])
def test_canonical_gradient_is_the_gradient_of_the_canonical_metric(shape):
    """grad_c is tangent and represents the differential: g_c(grad_c, ξ) = ⟨G, ξ⟩ for every
    tangent ξ, with g_c(Δ, ξ) = tr Δᵀ(I − ½XXᵀ)ξ for tall X (of the transposes for wide X)."""
    x = _stiefel(*shape, seed=3, batch=(2,))
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(2, *shape, generator=gen, dtype=F64)
    z = stiefel_canonical_gradient(x, g)
    d = x.mT @ z + z.mT @ x if shape[0] >= shape[1] else z @ x.mT + x @ z.mT
    assert float(d.abs().max()) < 1e-12
    tall = shape[0] >= shape[1]
    xt, zt, gt = (x, z, g) if tall else (x.mT, z.mT, g.mT)
    metric = torch.eye(xt.shape[-2], dtype=F64) - 0.5 * xt @ xt.mT
    for k in range(4):
        xi = stiefel_tangent_projection(x, torch.randn(2, *shape, generator=gen, dtype=F64))
        xit = xi if tall else xi.mT
        lhs = (zt * (metric @ xit)).sum((-2, -1))
        torch.testing.assert_close(lhs, (gt * xit).sum((-2, -1)), rtol=1e-12, atol=1e-12)
    if shape[0] == shape[1]:  # square orthogonal X: twice the projection
        torch.testing.assert_close(z, 2 * stiefel_tangent_projection(x, g), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(riemannian_gradient(x, g, "canonical"), z, rtol=0, atol=0)
    torch.testing.assert_close(riemannian_gradient(x, g), stiefel_tangent_projection(x, g), rtol=0, atol=0)
    with pytest.raises(ValueError, match="metric"):
        riemannian_gradient(x, g, "euclidean")
    with pytest.raises(ValueError, match="one shape"):
        stiefel_canonical_gradient(x, g[..., :-1])


def test_with_tangent_gradient_forward_identity_backward_projection():
    x = _stiefel(7, 3, seed=2).requires_grad_(True)
    w = torch.randn(7, 3, dtype=F64)
    y = with_tangent_gradient(x)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, stiefel_tangent_projection(x.detach(), w), rtol=0, atol=1e-14)
    e = torch.empty(0, 3, requires_grad=True)
    assert with_tangent_gradient(e) is e
    with pytest.raises(ValueError, match="one shape"):
        stiefel_tangent_projection(torch.zeros(3, 2), torch.zeros(2, 3))


@pytest.mark.parametrize("cin,cout,k,s", [(4, 6, 3, 1), (6, 4, 3, 1), (2, 8, 4, 2), (8, 8, 3, 1)])
def test_orthoconv_riemannian_gradient_is_the_projected_euclidean_one(cin, cout, k, s):
    """Same forward; the factors' gradients are the tangent projections of the Euclidean ones."""
    torch.manual_seed(0)
    a = L.OrthoConv2d(cin, cout, k, stride=s, padding="same", dtype=F64)
    b = L.OrthoConv2d(cin, cout, k, stride=s, padding="same", dtype=F64, riemannian_grad=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, cin, 8, 8, dtype=F64)
    ya, yb = a(x), b(x)
    assert torch.equal(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(a.ortho.grad, stiefel_tangent_projection(b.ortho.detach(), b.ortho.grad),
                               rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(a.projectors.grad,
                               stiefel_tangent_projection(b.projectors.detach(), b.projectors.grad),
                               rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(a.bias.grad, b.bias.grad)
    assert "riemannian_grad=False" in repr(b) and "riemannian_grad" not in repr(a)


def test_riemannian_training_stays_orthogonal_and_keeps_a_sound_bound():
    torch.manual_seed(1)
    layer = L.OrthoConv2d(4, 4, 3, padding=1, padding_mode="circular", dtype=F64)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(5):
        x = torch.randn(3, 4, 6, 6, dtype=F64)
        opt.zero_grad()
        layer(x).square().sum().backward()
        opt.step()
    layer.eval()
    from liplayers.functional.conv import circular_conv_singular_values
    sv = circular_conv_singular_values(layer.weight, (6, 6))
    assert float((sv - 1).abs().max()) < 1e-9
    assert layer.lipschitz_bound((4, 6, 6)) >= float(sv.max())


def test_transposed_layer_option_and_objects_pickled_without_the_attribute():
    t = L.OrthoConvTranspose2d(4, 4, 3, padding=1, riemannian_grad=False)
    assert not t.riemannian_grad
    with pytest.raises(ValueError, match="riemannian_grad"):
        L.OrthoConv2d(2, 2, 3, riemannian_grad=1)
    layer = L.OrthoConv2d(2, 2, 3)
    del layer.__dict__["riemannian_grad"]  # as an object saved before the option existed
    restored = pickle.loads(pickle.dumps(layer))
    assert restored.riemannian_grad is True
    restored(torch.randn(1, 2, 5, 5)).sum().backward()


@pytest.mark.parametrize("shape", [(12, 7), (7, 12)])
@pytest.mark.parametrize("option", [True, "canonical", "embedded"])
def test_bjorck_linear_riemannian_gradient_is_that_of_the_euclidean_one(shape, option):
    """Training forward unchanged; the gradient of V is the Riemannian gradient at V of the
    Euclidean one (canonical metric by default, or the tangent projection)."""
    torch.manual_seed(4)
    a = L.BjorckLinear(*shape, dtype=F64, max_drift=0.5, riemannian_grad=option)
    b = L.BjorckLinear(*shape, dtype=F64, max_drift=0.5, riemannian_grad=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, shape[0], dtype=F64)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, rtol=1e-14, atol=1e-14)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    va, vb = a.parametrizations.weight.original, b.parametrizations.weight.original
    metric = "embedded" if option == "embedded" else "canonical"
    torch.testing.assert_close(va.grad, riemannian_gradient(vb.detach(), vb.grad, metric), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(a.bias.grad, b.bias.grad)
    for bad in ("yes", 1, None, "euclidean"):
        with pytest.raises(ValueError, match="riemannian_grad"):
            L.BjorckLinear(3, 3, riemannian_grad=bad)
    differentiable = L.BjorckLinear(*shape, dtype=F64, mode="differentiable")  # flag unused: autograd through Björck
    differentiable(x).sum().backward()


@pytest.mark.parametrize("out_f,in_f,batch", [(8, 20, 3), (20, 8, 3), (8, 20, 30), (6, 9, (2, 2)), (8, 20, 12)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("metric", ["canonical", "embedded"])
@pytest.mark.parametrize("input_grad", [True, False])
def test_riemannian_linear_batch_form_equals_the_riemannian_gradient(out_f, in_f, batch, bias, metric, input_grad):
    """Both code paths (the formed gradient, or from the batch when that is cheaper; which one
    runs depends on B, the metric and whether x needs a gradient) give s·(xVᵀ) + b and the
    Riemannian gradient of the Euclidean one, also off the manifold."""
    g = torch.Generator().manual_seed(5)
    v = (_stiefel(out_f, in_f, seed=6) + 0.05 * torch.randn(out_f, in_f, generator=g, dtype=F64)).requires_grad_(True)
    shape = batch if isinstance(batch, tuple) else (batch,)
    x = torch.randn(*shape, in_f, generator=g, dtype=F64, requires_grad=input_grad)
    b = torch.randn(out_f, generator=g, dtype=F64, requires_grad=True) if bias else None
    y = scaled_linear(x, v, 0.9, b, metric=metric)
    x2, v2 = x.detach().clone().requires_grad_(input_grad), v.detach().clone().requires_grad_(True)
    b2 = b.detach().clone().requires_grad_(True) if bias else None
    y2 = torch.nn.functional.linear(x2, 0.9 * v2, b2)
    torch.testing.assert_close(y, y2, rtol=1e-14, atol=1e-14)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, [t for t in (x, v, b) if t is not None and t.requires_grad], gy)
    ref = torch.autograd.grad(y2, [t for t in (x2, v2, b2) if t is not None and t.requires_grad], gy)
    if input_grad:
        torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-13)
        got, ref = got[1:], ref[1:]
    torch.testing.assert_close(got[0], riemannian_gradient(v.detach(), ref[0], metric), rtol=1e-12, atol=1e-13)
    if bias:
        torch.testing.assert_close(got[1], ref[1], rtol=1e-12, atol=1e-13)
    if input_grad:
        assert torch.autograd.gradcheck(lambda t: scaled_linear(t, v.detach(), 0.9, None, metric=metric),
                                        (x.detach().clone().requires_grad_(True),))


def test_scaled_linear_takes_the_batch_form_exactly_when_it_is_cheaper():
    """The batch form costs k products of B·out·in (k = 1 canonical / 2 embedded, + 1 without
    input gradient), the formed projection two of min(out, in)·out·in."""
    v = _stiefel(8, 20, seed=7).requires_grad_(True)
    for metric, input_grad, batch, expected in [("canonical", True, 15, True), ("canonical", True, 16, False),
                                                ("canonical", False, 7, True), ("canonical", False, 8, False),
                                                ("embedded", True, 7, True), ("embedded", True, 8, False),
                                                ("embedded", False, 5, True), ("embedded", False, 6, False)]:
        x = torch.randn(batch, 20, dtype=F64, requires_grad=input_grad)
        y = scaled_linear(x, v, 1.0, None, metric=metric)
        nodes, seen = [y.grad_fn], set()
        while nodes:
            n = nodes.pop()
            if n is not None and n not in seen:
                seen.add(n)
                nodes += [f for f, _ in n.next_functions]
        batch_form = any(type(n).__name__ == "_RiemannianLinearBackward" for n in seen)
        assert batch_form == expected, (metric, input_grad, batch)
    with pytest.raises(ValueError, match="metric"):
        scaled_linear(x, v, metric="flat")
