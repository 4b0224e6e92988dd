"""Fast MaxMin / GroupSort (liplayers.functional.group_sort): exact against the torch-ops
implementation, permutation gradients everywhere, every path (eager, no-grad, functional,
compiled, sorting network, torch.sort) and every documented edge case."""
import logging
import shutil

import pytest
import torch

import importlib

GS = importlib.import_module("liplayers.functional.group_sort")
from liplayers.functional.group_sort import group_sort, max_min

pytestmark = pytest.mark.filterwarnings("ignore")


def reference_group_sort(x, group_size, dim=-1):
    """The torch-ops implementation this module replaces (verbatim semantics)."""
    size = x.shape[dim]
    if group_size is None or group_size == size:
        return torch.sort(x, dim=dim).values
    dim = dim % x.dim()
    shape = x.shape
    grouped = x.reshape(*shape[:dim], size // group_size, group_size, *shape[dim + 1:])
    if group_size == 2:
        a, b = grouped.unbind(dim + 1)
        out = torch.stack((torch.minimum(a, b), torch.maximum(a, b)), dim=dim + 1)
    else:
        out = torch.sort(grouped, dim=dim + 1).values
    return out.reshape(shape)


@pytest.fixture
def network_always(monkeypatch):
    """Send power-of-two groups (up to 64, not along the innermost memory axis) through the
    sorting network whatever the tensor's size."""
    monkeypatch.setattr(GS, "_NETWORK_MIN_NUMEL", 0)


def _value_and_grad(f, x, g):
    x = x.detach().requires_grad_(True)
    y = f(x)
    (gx,) = torch.autograd.grad(y, x, g)
    return y.detach(), gx


CASES = [((6, 8, 3, 5), 1), ((6, 8, 3, 5), -3), ((5, 12), -1), ((5, 12), 1), ((4, 3, 16), 2), ((16, 7), 0)]


@pytest.mark.parametrize("shape,dim", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_min_values_and_gradients_equal_reference(shape, dim, dtype):
    x = torch.randn(*shape, dtype=dtype)
    g = torch.randn(*shape, dtype=dtype)
    y, gx = _value_and_grad(lambda t: max_min(t, dim), x, g)
    yr, gr = _value_and_grad(lambda t: reference_group_sort(t, 2, dim), x, g)
    assert torch.equal(y, yr) and torch.equal(gx, gr)
    with torch.no_grad():
        assert torch.equal(max_min(x, dim), yr)
    assert torch.equal(group_sort(x, 2, dim), yr)


def test_plain_cpu_tensors_take_the_fast_eager_paths(network_always):
    x = torch.randn(2, 8, 3, requires_grad=True)
    assert type(max_min(x, 1).grad_fn).__name__ == "_MaxMinEagerBackward"
    assert type(group_sort(x, 4, 1).grad_fn).__name__ == "_NetworkEagerBackward"
    along_innermost = group_sort(torch.randn(2, 3, 8, requires_grad=True), 4, -1)  # torch.sort
    assert type(along_innermost.grad_fn.next_functions[0][0]).__name__ == "SortBackward0"


def test_minimum_first_within_each_pair():
    x = torch.tensor([[3.0, 1.0, -2.0, 5.0]])
    assert torch.equal(max_min(x, -1), torch.tensor([[1.0, 3.0, -2.0, 5.0]]))


@pytest.mark.parametrize("group", [1, 3, 4, 6, 8, 16, 32, None])
@pytest.mark.parametrize("shape,dim", [((4, 96, 2, 3), 1), ((6, 96), -1), ((96, 5), 0)])
def test_group_sort_equals_reference_on_network_and_sort_paths(group, shape, dim, network_always):
    x = torch.randn(*shape, dtype=torch.float64)
    g = torch.randn(*shape, dtype=torch.float64)
    y, gx = _value_and_grad(lambda t: group_sort(t, group, dim), x, g)
    yr, gr = _value_and_grad(lambda t: reference_group_sort(t, group, dim), x, g)
    assert torch.equal(y, yr) and torch.equal(gx, gr)
    with torch.no_grad():
        assert torch.equal(group_sort(x, group, dim), yr)


@pytest.mark.parametrize("size", [4, 8, 16])
def test_network_sorts_every_binary_input(size, network_always):
    """0–1 principle: a comparator network that sorts all 2^n binary inputs sorts everything."""
    codes = torch.arange(2 ** size)
    bits = ((codes[None, :] >> torch.arange(size)[:, None]) & 1).double()  # (size, 2^size), dim 0
    out = group_sort(bits, size, 0)
    assert (out[1:] >= out[:-1]).all()
    assert torch.equal(out.sum(0), bits.sum(0))


@pytest.mark.parametrize("group,dim", [(2, 1), (2, -1), (4, 1), (8, 1), (3, 1), (None, 1)])
def test_gradcheck_and_double_backward_float64(group, dim, network_always):
    x = torch.randn(2, 24, 2, dtype=torch.float64, requires_grad=True)
    f = lambda t: group_sort(t, group, dim)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))
    (gx,) = torch.autograd.grad((f(x) ** 2).sum(), x, create_graph=True)
    (hv,) = torch.autograd.grad(gx.sum(), x)
    assert torch.equal(hv, 2 * torch.ones_like(x))  # (σ(x)²)'' = 2 on a.e. piece: the permutation is constant


@pytest.mark.parametrize("layout", ["transposed", "sliced", "channels_last", "expanded"])
@pytest.mark.parametrize("group", [2, 4])
def test_non_contiguous_inputs(layout, group, network_always):
    base = torch.randn(4, 8, 6, 6, dtype=torch.float64)
    x = {
        "transposed": base.transpose(1, 3),
        "sliced": base[:, :, ::2],
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "expanded": base[:1].expand(4, -1, -1, -1),
    }[layout]
    dim = 3 if layout == "transposed" else 1
    x = x.detach().requires_grad_(True)
    g = torch.randn(x.shape, dtype=torch.float64)
    y = group_sort(x, group, dim)
    (gx,) = torch.autograd.grad(y, x, g)
    yr, gr = _value_and_grad(lambda t: reference_group_sort(t, group, dim), x.contiguous(), g)
    assert torch.equal(y, yr) and torch.equal(gx, gr)
    if layout == "channels_last" and group == 2:
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("group", [2, 4])
def test_low_precision_dtypes(dtype, group, network_always):
    n = 128  # distinct integers: exact in every dtype, no ties
    x = (torch.randperm(4 * n) - 2 * n).reshape(4, n, 1, 1).expand(4, n, 2, 2).to(dtype).contiguous()
    g = torch.randn(x.shape).to(dtype)
    y, gx = _value_and_grad(lambda t: group_sort(t, group, 1), x, g)
    yr, gr = _value_and_grad(lambda t: reference_group_sort(t.double(), group, 1), x, g.double())
    assert y.dtype == dtype and gx.dtype == dtype
    assert torch.equal(y.double(), yr) and torch.equal(gx.double(), gr)


def test_ties_route_the_gradient_by_a_permutation():
    """At a = b the reference (torch.minimum/maximum) averages the two gradients; we keep the pair."""
    x = torch.tensor([[1.0, 1.0, 0.0, 0.0, 2.0, -3.0]], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[1.0, 5.0, -2.0, 7.0, 3.0, 4.0]], dtype=torch.float64)
    (gx,) = torch.autograd.grad(max_min(x, -1), x, g)
    assert torch.equal(gx, torch.tensor([[1.0, 5.0, -2.0, 7.0, 4.0, 3.0]], dtype=torch.float64))
    (gr,) = torch.autograd.grad(reference_group_sort(x, 2, -1), x, g)
    assert gr[0, 0] == gr[0, 1] == 3.0  # averaged: not gradient-norm preserving


def test_gradient_norm_preserved_on_a_lattice_full_of_ties(network_always):
    x = torch.randint(-2, 3, (64, 16, 4, 4)).double().requires_grad_(True)
    g = torch.randn(x.shape, dtype=torch.float64)
    for group in (2, 4, 8, 16):
        (gx,) = torch.autograd.grad(group_sort(x, group, 1), x, g)
        assert torch.equal(gx.flatten().sort().values, g.flatten().sort().values)  # a permutation of g


def test_nan_propagation():
    x = torch.tensor([[float("nan"), 1.0, 2.0, 3.0, 5.0, 4.0, 7.0, 6.0]], requires_grad=True)
    y = max_min(x, -1)
    assert torch.isnan(y[0, :2]).all() and torch.equal(y[0, 2:], torch.tensor([2.0, 3.0, 4.0, 5.0, 6.0, 7.0]))
    g = torch.arange(1.0, 9.0)[None]
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(gx.sort().values, g)  # still a permutation, no NaN created
    with torch.no_grad():
        assert torch.isnan(max_min(x, -1)[0, :2]).all()
    big = torch.randn(2, 16, 64, 64)
    big[0, 5, 3, 3] = float("nan")
    net = group_sort(big.requires_grad_(True), 8, 1)  # network (NaN spreads over its group)
    assert torch.isnan(net[0, :8, 3, 3]).all() and not torch.isnan(net[0, 8:, 3, 3]).any()
    assert torch.isnan(net).sum() == 8
    srt = group_sort(big, 16, -1)  # torch.sort along a contiguous axis: NaN last
    assert torch.isnan(srt).sum() == 1


@pytest.mark.parametrize("make,match", [
    (lambda: max_min(torch.randn(2, 5), 1), "not divisible by group_size 2"),
    (lambda: max_min(torch.randn(2, 4), 2), "dim 2 is out of range"),
    (lambda: max_min(torch.randn(2, 4), -3), "dim -3 is out of range"),
    (lambda: max_min(torch.tensor(1.0), 0), "out of range"),
    (lambda: max_min(torch.randn(2, 4, dtype=torch.complex64), 1), "complex"),
    (lambda: group_sort(torch.randn(2, 6), 4, 1), "not divisible by group_size 4"),
    (lambda: group_sort(torch.randn(2, 6), 0, 1), "positive integer"),
    (lambda: group_sort(torch.randn(2, 6), 2.0, 1), "positive integer"),
    (lambda: group_sort(torch.randn(2, 6), True, 1), "positive integer"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_integer_and_empty_inputs():
    assert torch.equal(max_min(torch.tensor([[3, 1, 2, 5]]), 1), torch.tensor([[1, 3, 2, 5]]))
    assert max_min(torch.empty(0, 4), 1).shape == (0, 4)
    assert max_min(torch.empty(3, 0), 1).shape == (3, 0)


@pytest.mark.parametrize("group,bytes_per_entry", [(2, 0.5), (4, 1.25), (8, 2.375)])
def test_memory_kept_for_backward(group, bytes_per_entry, network_always):
    saved = []
    x = torch.randn(8, 32, 10, 10, requires_grad=True)  # float32
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        group_sort(x, group, 1)
    assert sum(t.numel() * t.element_size() for t in saved) == x.numel() * bytes_per_entry


@pytest.mark.parametrize("group,dim", [(2, 1), (2, -1), (4, 1), (3, -1)])
def test_torch_func_transforms_and_forward_ad(group, dim, network_always):
    x = torch.randn(3, 8, 6, dtype=torch.float64)
    f = lambda t: group_sort(t, group, dim)  # noqa: E731
    jac = torch.autograd.functional.jacobian(f, x)
    assert torch.equal(torch.func.jacrev(f)(x), jac)
    v = torch.randn_like(x)
    _, jv = torch.func.jvp(f, (x,), (v,))
    assert torch.allclose(jv, (jac.reshape(x.numel(), -1) @ v.reshape(-1)).reshape(x.shape))
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        assert torch.equal(fwAD.unpack_dual(f(fwAD.make_dual(x, v))).tangent, jv)
    inner = dim - 1 if dim > 0 else dim
    assert torch.equal(torch.func.vmap(lambda r: group_sort(r, group, inner))(x), f(x))


@pytest.mark.parametrize("group,dim", [(2, 1), (2, -1), (4, 1), (8, 1)])
def test_compiles_without_graph_break(group, dim, network_always):
    torch._logging.set_logs(dynamo=logging.ERROR)
    torch._dynamo.reset()
    f = lambda t: group_sort(t, group, dim)  # noqa: E731
    x = torch.randn(3, 16, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(x.shape, dtype=torch.float64)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)  # fullgraph: a break raises
    y, gx = _value_and_grad(compiled, x, g)
    yr, gr = _value_and_grad(f, x, g)
    assert torch.equal(y, yr) and torch.equal(gx, gr)
    torch._dynamo.reset()


@pytest.mark.skipif(not any(shutil.which(c) for c in ("gcc", "cc", "clang", "g++")), reason="no C++ compiler")
def test_inductor_max_min():
    torch._logging.set_logs(dynamo=logging.ERROR)
    torch._dynamo.reset()
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    g = torch.randn(x.shape)
    y, gx = _value_and_grad(torch.compile(lambda t: max_min(t, 1), fullgraph=True), x, g)
    yr, gr = _value_and_grad(lambda t: max_min(t, 1), x, g)
    assert torch.equal(y, yr) and torch.equal(gx, gr)
    torch._dynamo.reset()


def _tricky(dtype, shape=(4, 8, 3, 5)):
    """Random entries plus exact ties, signed zeros and a NaN pair member."""
    x = torch.randn(*shape).to(dtype)
    x[0, 0], x[0, 1] = 1.5, 1.5  # ties
    x[1, 2], x[1, 3] = 0.0, -0.0  # +0 / -0
    x[2, 4, 0, 0] = float("nan")
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("dim", [1, -1])
def test_compiled_max_min_bit_exact_with_eager(dtype, dim):
    """The compile formulation (integer sign mask, bitwise gradient swap) gives eager's values and
    gradients bit for bit, ties, signed zeros and NaN included."""
    torch._logging.set_logs(dynamo=logging.ERROR)
    torch._dynamo.reset()
    shape = (4, 8, 3, 6)
    x = _tricky(dtype, shape)
    g = torch.randn(shape).to(dtype)
    compiled = torch.compile(lambda t: max_min(t, dim), backend="aot_eager", fullgraph=True)
    y, gx = _value_and_grad(compiled, x, g)
    ye, ge = _value_and_grad(lambda t: max_min(t, dim), x, g)
    assert torch.equal(y.isnan(), ye.isnan()) and torch.equal(y.nan_to_num(), ye.nan_to_num())
    assert torch.equal(gx.view(torch.int16 if dtype == torch.bfloat16 else gx.dtype),
                       ge.view(torch.int16 if dtype == torch.bfloat16 else ge.dtype))
    torch._dynamo.reset()


def test_compiled_max_min_saves_no_boolean_tensor():
    """Inductor's CPU code stores boolean masks element by element (~10× slower than eager):
    the compiled forward must save only the integer sign mask (half an input) for backward."""
    from torch._dynamo.backends.common import aot_autograd

    torch._logging.set_logs(dynamo=logging.ERROR)
    torch._dynamo.reset()
    outputs = []

    def fw(gm, _inputs):
        outputs.extend(n.meta["val"] for n in gm.graph.find_nodes(op="output")[0].args[0])
        return gm

    backend = aot_autograd(fw_compiler=fw, bw_compiler=lambda gm, _i: gm)
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    y = torch.compile(lambda t: max_min(t, 1), backend=backend, fullgraph=True)(x)
    y.sum().backward()
    saved = outputs[1:]  # the first output is the result, the rest is saved for backward
    assert saved and all(t.dtype == torch.int32 for t in saved), [(t.dtype, tuple(t.shape)) for t in saved]
    assert sum(t.numel() for t in saved) == x.numel() // 2
    torch._dynamo.reset()


@pytest.mark.skipif(not any(shutil.which(c) for c in ("gcc", "cc", "clang", "g++")), reason="no C++ compiler")
def test_inductor_group_sort_network_and_ties(network_always):
    torch._logging.set_logs(dynamo=logging.ERROR)
    torch._dynamo.reset()
    x = _tricky(torch.float32, (4, 8, 3, 5))
    g = torch.randn(x.shape)
    for group in (2, 4):
        f = lambda t: group_sort(t, group, 1)  # noqa: E731
        y, gx = _value_and_grad(torch.compile(f, fullgraph=True), x, g)
        yr, gr = _value_and_grad(f, x, g)
        assert torch.equal(y.isnan(), yr.isnan()) and torch.equal(y.nan_to_num(), yr.nan_to_num())
        nan_group = torch.zeros(x.shape, dtype=torch.bool)
        nan_group[2, 4 - 4 % group:4 - 4 % group + group, 0, 0] = True
        assert torch.equal(gx[~nan_group], gr[~nan_group])
        # inside a group holding NaN the sign of the NaNs produced by the compiled min / max may
        # differ from eager's, and with it the (still permutation) routing of later stages
        assert torch.equal(gx[nan_group].sort().values, g[nan_group].sort().values)
    torch._dynamo.reset()
