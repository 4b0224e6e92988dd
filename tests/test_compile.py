"""torch.compile: every layer and a whole GNP network give eager's outputs and gradients.

Per-layer tests use ``backend="aot_eager"`` (Dynamo tracing + AOTAutograd, the parts that can
change semantics, without the slow C++ code generation); one small network runs through the
default ``"inductor"`` backend when a C++ compiler is present (skipped otherwise).

The eval-mode caches and the retraction are keyed on the parameter's version counter; these
checks run eagerly under compile (``torch.compiler.disable``: one graph break per
parametrized layer), so after an optimizer step a compiled model retracts and, in eval,
uses the normalized weight of the *current* parameter. The graph-break budget (at most one
per parametrized layer) and the absence of recompilation after warm-up are tested on a GNP
convolutional network.
"""
import copy
import logging
import shutil

import pytest
import torch
import torch._dynamo
from torch import nn

import liplayers as L
from liplayers import certify as C
from liplayers.functional import orthogonality_error

pytestmark = pytest.mark.filterwarnings("ignore")

LAYERS = {
    "bjorck": (lambda: L.BjorckLinear(6, 6), (3, 6)),
    "bjorck_diff": (lambda: L.BjorckLinear(6, 4, mode="differentiable"), (3, 6)),
    "spectral": (lambda: L.SpectralLinear(6, 4), (3, 6)),
    "linf": (lambda: L.LInfLinear(6, 4), (3, 6)),
    "groupsort": (lambda: nn.Sequential(nn.Linear(6, 6), L.GroupSort(3)), (3, 6)),
    "maxmin_fullsort": (lambda: nn.Sequential(nn.Linear(6, 6), L.MaxMin(), L.FullSort()), (3, 6)),
    "householder": (lambda: nn.Sequential(nn.Linear(6, 6), L.HouseholderActivation(6, dim=-1)), (3, 6)),
    "orthoconv": (lambda: L.OrthoConv2d(2, 4, 3, padding="same"), (2, 2, 4, 4)),
    "orthoconv_s2": (lambda: L.OrthoConv2d(2, 8, 3, stride=2, padding="same"), (2, 2, 4, 4)),
    "orthoconv_s2_circ": (lambda: L.OrthoConv2d(2, 8, 3, stride=2, padding=1, padding_mode="circular"), (2, 2, 4, 4)),
    "specconv": (lambda: L.SpectralConv2d(2, 4, 3, padding=1), (2, 2, 4, 4)),
    "rko": (lambda: L.RKOConv2d(2, 4, 3), (2, 2, 4, 4)),
    "pooling": (lambda: nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), L.L2NormPool2d(2), L.ScaledAvgPool2d(2)), (2, 2, 4, 4)),
    # the layer families of the records
    "aol": (lambda: L.AOLLinear(6, 4), (3, 6)),
    "aol_conv": (lambda: L.AOLConv2d(2, 4, 3, padding=1), (2, 2, 4, 4)),
    "cpl": (lambda: L.CPLLinear(6), (3, 6)),
    "cpl_conv": (lambda: L.CPLConv2d(2, 3), (2, 2, 4, 4)),
    "sll": (lambda: L.SLLLinear(6), (3, 6)),
    "sll_conv": (lambda: L.SLLConv2d(2), (2, 2, 4, 4)),
    "soc": (lambda: L.SOCConv2d(2, 2, 3), (2, 2, 4, 4)),
    "cayley": (lambda: L.CayleyConv2d(2, 2, 3), (2, 2, 4, 4)),
    "bro": (lambda: L.BROLinear(6, 6), (3, 6)),
    "bro_conv": (lambda: L.BROConv2d(2, 2, 3), (2, 2, 4, 4)),
    "cholesky": (lambda: L.CholeskyLinear(6, 4), (3, 6)),
    "linear_residual": (lambda: L.LinearResidualConv2d(2, 2, 3), (2, 2, 4, 4)),
    "last_layer": (lambda: L.LastLayerNormalizedLinear(6, 3), (3, 6)),
}


def _has_compiler() -> bool:
    return any(shutil.which(c) for c in ("gcc", "cc", "clang", "g++"))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._logging.set_logs(dynamo=logging.ERROR)
    torch._dynamo.reset()  # per-code-object recompile limits must not make later tests fall back to eager
    yield
    torch._dynamo.reset()


def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m: f"{what}: {m}")


def _run_both(eager: nn.Module, compiled_module: nn.Module, compiled, x: torch.Tensor, steps: int = 2):
    """Train both copies identically; compare outputs, input gradients and parameter gradients."""
    opt_e = torch.optim.Adam(eager.parameters(), lr=0.05)
    opt_c = torch.optim.Adam(compiled_module.parameters(), lr=0.05)
    for step in range(steps):
        xe = x.clone().requires_grad_(True)
        xc = x.clone().requires_grad_(True)
        ye, yc = eager(xe), compiled(xc)
        _close(yc, ye, f"train output, step {step}")
        ye.square().sum().backward()
        yc.square().sum().backward()
        _close(xc.grad, xe.grad, f"input gradient, step {step}")
        for (n, pe), pc in zip(eager.named_parameters(), compiled_module.parameters()):
            _close(pc.grad, pe.grad, f"gradient of {n}, step {step}")
        opt_e.step()
        opt_c.step()
        opt_e.zero_grad()
        opt_c.zero_grad()


def _eval_both(eager, compiled_module, compiled, x, what):
    eager.eval()
    compiled_module.eval()
    with torch.no_grad():
        _close(compiled(x), eager(x), what)
    eager.train()
    compiled_module.train()


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_compiles_like_eager(name):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    eager = make().double()
    cmod = copy.deepcopy(eager)
    compiled = torch.compile(cmod, backend="aot_eager")
    x = torch.randn(shape, dtype=torch.float64)
    _run_both(eager, cmod, compiled, x)
    _eval_both(eager, cmod, compiled, x, "eval after training")
    # the eval cache must follow the parameter: one more step, then eval again
    _run_both(eager, cmod, compiled, x, steps=1)
    _eval_both(eager, cmod, compiled, x, "eval after one more step")
    # and the state of both copies is identical (retractions, power-iteration buffers)
    for (k, a), b in zip(eager.state_dict().items(), cmod.state_dict().values()):
        _close(b, a, f"state {k}")


def test_compiled_eval_uses_orthonormal_weight_of_current_parameter():
    """Eval after a train step under compile returns polar(V_current), not a stale cache."""
    torch.manual_seed(1)
    layer = L.BjorckLinear(8, 8, bias=False).double()
    compiled = torch.compile(layer, backend="aot_eager")
    x = torch.eye(8, dtype=torch.float64)
    opt = torch.optim.SGD(layer.parameters(), lr=0.3)
    for _ in range(2):
        layer.eval()
        w_eval = compiled(x).T  # x = I: the output is the eval weight (transposed)
        layer.train()
        compiled(torch.randn(4, 8, dtype=torch.float64)).sum().backward()
        opt.step()
        opt.zero_grad()
        layer.eval()
        w_new = compiled(x).T
        assert not torch.allclose(w_new, w_eval), "the eval weight must change after a step"
        assert float(orthogonality_error(w_new)) < 1e-9
        # polar factor of the current stored parameter, computed independently by SVD
        v = layer.parametrizations.weight.original.detach()
        u, _, vh = torch.linalg.svd(v)
        torch.testing.assert_close(w_new, u @ vh, atol=1e-8, rtol=0)
        layer.train()


def test_gnp_network_compiles_like_eager():
    """The zoo's GNP conv net (strided orthogonal convs, circular padding): compiled training and
    eval equal eager; at most one graph break per parametrized layer (the eager version checks),
    no other kind of break, and no recompilation after warm-up."""
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    torch.manual_seed(2)
    eager = L.gnp_conv_net(in_channels=4, num_classes=3, input_size=8, width=4, hidden=8,
                           padding_mode="circular").double()
    n_layers = sum(isinstance(m, (L.OrthoConv2d, L.BjorckLinear)) for m in eager.modules())
    assert n_layers == 8
    cmod = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(cmod, backend=counter, dynamic=False)  # static shapes: compiles 2x faster
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    counters.clear()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        _run_both(eager, cmod, compiled, x, steps=1)  # warm-up: one training step ...
        breaks = counters["graph_break"]
        assert 0 < sum(breaks.values()) <= n_layers, dict(breaks)
        assert all("torch.compiler.disable" in reason for reason in breaks), list(breaks)
        _eval_both(eager, cmod, compiled, x, "network eval")  # ... and one eval forward
        warm = counter.frame_count
        _run_both(eager, cmod, compiled, x, steps=2)
        _eval_both(eager, cmod, compiled, x, "network eval after more steps")
        assert counter.frame_count == warm, "recompiled after warm-up"
    b_e, b_c = C.lipschitz_bound(eager, (4, 8, 8)), C.lipschitz_bound(cmod, (4, 8, 8))
    assert b_c == pytest.approx(b_e, rel=1e-12) and b_c <= 1 + 1e-8
    # GNP (square or co-isometric circular convs, wide dense layers: every Jacobian has
    # orthonormal rows): the input gradient of one logit has norm exactly 1 in the compiled model
    cmod.eval()
    xi = x[:1].clone().requires_grad_(True)
    compiled(xi)[0, 0].backward()
    assert float(xi.grad.norm()) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.skipif(not _has_compiler(), reason="inductor needs a C++ compiler; none on this platform")
def test_inductor_dense_gnp_network():
    torch.manual_seed(3)
    eager = L.Sequential(L.BjorckLinear(8, 8), L.MaxMin(), L.BjorckLinear(8, 4))
    cmod = copy.deepcopy(eager)
    compiled = torch.compile(cmod)  # default backend: inductor
    x = torch.randn(4, 8)
    opt_e = torch.optim.Adam(eager.parameters(), lr=0.05)
    opt_c = torch.optim.Adam(cmod.parameters(), lr=0.05)
    for step in range(2):
        ye, yc = eager(x), compiled(x)
        torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-6)
        ye.square().sum().backward()
        yc.square().sum().backward()
        for pe, pc in zip(eager.parameters(), cmod.parameters()):
            torch.testing.assert_close(pc.grad, pe.grad, rtol=1e-5, atol=1e-6)
        for o in (opt_e, opt_c):
            o.step()
            o.zero_grad()
    eager.eval()
    cmod.eval()
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-6)

