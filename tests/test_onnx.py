"""ONNX export: round trip through ONNX Runtime, the certificate from the deployed model, no liplayers needed."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import liplayers as L  # noqa: E402
from liplayers.certify import certified_radius, lipschitz_bound  # noqa: E402
from liplayers.functional.group_sort import group_sort  # noqa: E402
from liplayers.lipschitz import UnboundedModuleError  # noqa: E402
from liplayers.onnx import (  # noqa: E402
    OnnxGroupSort, OnnxHouseholder, OnnxMaxMin, export_onnx, prepare_for_onnx,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# OrthoConv2d exports a stride-2 block as a 'same'-padded convolution: torch notes the padded copy
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def _metadata(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _trained(net, x, steps=5):
    """A few Adam steps so the weights are not at their initialization."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    return net.eval()


def _round_trip(net, path, input_shape, batches=(1, 7)):
    K = lipschitz_bound(net, input_shape)
    proto = export_onnx(net, path, input_shape)
    assert proto.opset_import[0].version == 17
    meta = _metadata(path)
    assert float(meta["liplayers.lipschitz_bound"]) == K
    assert json.loads(meta["liplayers.input_shape"]) == list(input_shape)
    for b in batches:  # the batch dimension is dynamic
        x = torch.randn(b, *input_shape)
        with torch.no_grad():
            want = net(x)
        got = _run(path, x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        # the certificate of the deployed model, with the original model's bound, is the original's
        torch.testing.assert_close(certified_radius(got, K), certified_radius(want, K), rtol=0, atol=1e-5)
        assert torch.equal(got.argmax(1), want.argmax(1))
    return K


def test_gnp_mlp_round_trip(tmp_path):
    net = L.gnp_mlp(20, 6, widths=(32, 16))
    _trained(net.train(), torch.randn(64, 20))
    K = _round_trip(net, tmp_path / "mlp.onnx", (20,))
    assert 1.0 <= K < 1.001
    assert any(isinstance(m, L.MaxMin) for m in net.modules())  # the model itself is not modified
    assert not net.training


def test_gnp_conv_net_round_trip(tmp_path):
    net = L.gnp_conv_net(width=8).eval()
    _round_trip(net, tmp_path / "conv.onnx", (1, 28, 28), batches=(3,))


def test_layer_without_torch_equivalent_round_trip(tmp_path):
    """A layer exported as it runs in eval mode (no ``to_torch``): the exporters trace it, the check holds."""
    net = nn.Sequential(nn.Flatten(), L.nn.CPLLinear(12), L.MaxMin(), L.BjorckLinear(12, 4))
    _trained(net.train(), torch.randn(32, 12))
    _round_trip(net, tmp_path / "cpl.onnx", (12,), batches=(5,))


def test_activations_match_liplayers_exactly():
    x = torch.randn(3, 8, 6, 4)
    for dim in (1, 2, -1):
        torch.testing.assert_close(OnnxMaxMin(dim)(x), L.MaxMin(dim)(x), rtol=0, atol=0)
    for g in (1, 2, 4, None):
        torch.testing.assert_close(OnnxGroupSort(g, 1)(x), group_sort(x, g, 1), rtol=0, atol=0)
    # adjacent pairs (2i, 2i + 1), minimum first — not the halves (i, i + C/2)
    assert OnnxMaxMin(-1)(torch.tensor([[3.0, 1.0, -2.0, 5.0]])).tolist() == [[1.0, 3.0, -2.0, 5.0]]
    h = L.HouseholderActivation(8, dim=1)
    with torch.no_grad():
        h.phi.uniform_(-3.0, 3.0)
    torch.testing.assert_close(OnnxHouseholder(h)(x), h(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="batch dimension"):
        OnnxMaxMin(0)(x)
    with pytest.raises(ValueError, match="divisible"):
        OnnxGroupSort(3, 1)(x)


@pytest.mark.parametrize("dynamo", [None, False])
def test_every_activation_in_onnx_runtime(tmp_path, dynamo):
    net = nn.Sequential(
        nn.Flatten(), L.BjorckLinear(16, 16), L.HouseholderActivation(16, dim=-1), L.GroupSort(4, dim=-1),
        L.BjorckLinear(16, 16), L.FullSort(dim=-1), L.BjorckLinear(16, 8), L.MaxMin(dim=-1), L.BjorckLinear(8, 3),
    )
    with torch.no_grad():
        net[2].phi.uniform_(-3.0, 3.0)
    net.eval()
    kinds = [type(m) for m in prepare_for_onnx(net)]
    assert OnnxHouseholder in kinds and OnnxGroupSort in kinds and OnnxMaxMin in kinds
    path = tmp_path / "act.onnx"
    export_onnx(net, path, (16,), dynamo=dynamo)
    x = torch.randn(9, 16)
    with torch.no_grad():
        torch.testing.assert_close(_run(path, x), net(x), rtol=0, atol=1e-5)


def _docs_snippet():
    """The numpy-only certificate of the deployment page (the code the docs show is the code tested)."""
    with open(os.path.join(ROOT, "docs", "deployment.md"), encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"<!-- radius-snippet -->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/deployment.md lost its marked radius snippet"
    return match.group(1)


def test_deployed_model_runs_and_certifies_without_liplayers(tmp_path):
    net = L.gnp_mlp(12, 4, widths=(16,))
    _trained(net.train(), torch.randn(32, 12))
    path = tmp_path / "net.onnx"
    export_onnx(net, path, (12,))
    x = torch.randn(6, 12)
    K = lipschitz_bound(net, (12,))
    with torch.no_grad():
        logits = net(x)
    want = certified_radius(logits, K, scale=1.0 + K * x.flatten(1).norm(dim=1))
    script = "\n".join([
        "import sys, json",
        "sys.modules['liplayers'] = None  # importing liplayers now fails",
        "sys.modules['torch'] = None",
        "import numpy as np",
        _docs_snippet(),
        f"x = np.array({x.tolist()!r}, dtype=np.float32)",
        f"logits, radius = certify_onnx({str(path)!r}, x)",
        "print(json.dumps({'logits': logits.tolist(), 'radius': radius.tolist()}))",
    ])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    torch.testing.assert_close(torch.tensor(res["logits"]), logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(res["radius"], dtype=torch.float64), want, rtol=0, atol=1e-5)
    assert (want > 0).any()


def test_export_options_and_errors(tmp_path):
    net = L.gnp_mlp(4, 3, widths=(4,)).eval()
    proto = export_onnx(net, tmp_path / "fixed.onnx", (4,), dynamic_batch=False, batch_size=5, opset=18,
                        check=False)
    assert proto.opset_import[0].version == 18
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [5, 4]
    for bad in ((), (0, 3), "4", (4.0,)):
        with pytest.raises(ValueError, match="input_shape"):
            export_onnx(net, tmp_path / "x.onnx", bad)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(net, tmp_path / "x.onnx", (4,), opset=9)

    class Square(nn.Module):  # no bound is proved for it: refused, unless no bound is asked for
        def forward(self, x):
            return x * x

    odd = nn.Sequential(nn.Linear(4, 4), Square()).eval()
    with pytest.raises(UnboundedModuleError):
        export_onnx(odd, tmp_path / "odd.onnx", (4,))
    assert not (tmp_path / "odd.onnx").exists()
    export_onnx(odd, tmp_path / "odd.onnx", (4,), store_bound=False)
    assert "liplayers.lipschitz_bound" not in _metadata(tmp_path / "odd.onnx")

    net.train()  # exported as in eval mode; the model's own mode is left as it was
    export_onnx(net, tmp_path / "train_mode.onnx", (4,), dynamo=False)
    assert net.training and all(m.training for m in net.modules())


def test_docstring_examples():
    import doctest

    import liplayers.nn.onnx_activation as activations
    import liplayers.onnx as module

    results = [doctest.testmod(m, optionflags=doctest.NORMALIZE_WHITESPACE) for m in (module, activations)]
    assert sum(r.failed for r in results) == 0 and sum(r.attempted for r in results) >= 4
