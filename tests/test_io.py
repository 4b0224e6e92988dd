"""Whole-model save/load (liplayers.io): parametrized layers, eval caches, exact outputs and bounds."""
import copy
import os
import pickle

import pytest
import torch
from torch import nn

import liplayers
from liplayers import io as lio
from liplayers.certify import lipschitz_bound
from liplayers.io import PicklableParametrizationMixin


def _bjorck_net():
    return liplayers.Sequential(nn.Flatten(), liplayers.BjorckLinear(64, 32), liplayers.MaxMin(),
                                liplayers.BjorckLinear(32, 10))


def _ortho_net():
    return nn.Sequential(liplayers.OrthoConv2d(1, 4, 3, padding=1), liplayers.MaxMin(dim=1), nn.Flatten(),
                         liplayers.BjorckLinear(256, 10))


def _spectral_net():
    return nn.Sequential(liplayers.SpectralConv2d(1, 4, 3, padding=1, input_size=(8, 8)), nn.ReLU(), nn.Flatten(),
                         liplayers.SpectralLinear(256, 10))


NETS = {
    "bjorck": (_bjorck_net, (1, 8, 8)),
    "ortho_conv": (_ortho_net, (1, 8, 8)),
    "spectral_conv": (_spectral_net, (1, 8, 8)),
    "gnp_conv_net": (lambda: liplayers.gnp_conv_net(width=8), (1, 28, 28)),
}


def _trained(name, steps=2, forward_after=True):
    make, shape = NETS[name]
    torch.manual_seed(0)
    model = make()
    x = torch.rand(6, *shape)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if forward_after:
        model(x)  # retract / refresh caches after the last step
    model.eval()
    return model, x, shape


@pytest.mark.parametrize("name", sorted(NETS))
def test_round_trip_identical_outputs_and_bound(name, tmp_path):
    model, x, shape = _trained(name)
    with torch.no_grad():
        y = model(x)
    bound = lipschitz_bound(model, shape)
    path = tmp_path / "sub" / "model.pt"
    lio.save(model, path)
    assert os.listdir(path.parent) == ["model.pt"]  # atomic write: no temporary file left
    loaded = lio.load(path)
    assert not loaded.training and all(not m.training for m in loaded.modules())
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in model.modules()]
    with torch.no_grad():
        assert torch.equal(loaded(x), y)
    assert lipschitz_bound(loaded, shape) == bound
    # the bound is still an upper bound of the loaded network's local Lipschitz constant (float64 Jacobian)
    jac = torch.autograd.functional.jacobian(lambda z: loaded(z.float()).double(), x[:1].double())
    assert float(torch.linalg.matrix_norm(jac.reshape(10, -1), 2)) <= bound * (1 + 1e-5)


@pytest.mark.parametrize("name", ["bjorck", "ortho_conv"])
def test_stale_cache_is_recomputed_and_training_continues_identically(name, tmp_path):
    model, x, shape = _trained(name, forward_after=False)  # optimizer stepped after the last forward
    lio.save(model, tmp_path / "m.pt")
    loaded = lio.load(tmp_path / "m.pt")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert lipschitz_bound(loaded, shape) == lipschitz_bound(model, shape)
    for m in (model, loaded):  # one more training step on each: same weights
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        opt.zero_grad()  # (gradients are not saved)
        m(x).square().mean().backward()
        opt.step()
        m.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_metadata_map_location_and_errors(tmp_path):
    model, x, _ = _trained("bjorck", steps=1)
    lio.save(model, tmp_path / "m.pt", metadata={"accuracy": 0.9})
    loaded, meta = lio.load(tmp_path / "m.pt", map_location=torch.device("cpu"), with_metadata=True)
    assert meta == {"accuracy": 0.9}
    with pytest.raises(FileNotFoundError, match="no model file"):
        lio.load(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not hold a model"):
        lio.load(tmp_path / "other.pt")
    with pytest.raises(TypeError, match="nn.Module"):
        lio.save({"not": "a module"}, tmp_path / "x.pt")


def test_plain_torch_save_pickle_and_deepcopy_work(tmp_path):
    """Every liplayers layer is picklable (LipschitzModule has the mixin), unlike a parametrized torch module."""
    with pytest.raises(RuntimeError, match="state_dict"):
        pickle.dumps(nn.utils.parametrizations.orthogonal(nn.Linear(3, 3)))
    torch.manual_seed(0)
    model = nn.Sequential(liplayers.SpectralConv2d(1, 4, 3, padding=1, input_size=(8, 8)), nn.Flatten(),
                          liplayers.BjorckLinear(256, 10))
    x = torch.rand(3, 1, 8, 8)
    model(x)
    model.eval()
    with torch.no_grad():
        y = model(x)
    torch.save(model, tmp_path / "plain.pt")
    copies = [torch.load(tmp_path / "plain.pt", weights_only=False), pickle.loads(pickle.dumps(model)),
              copy.deepcopy(model)]
    for c in copies:
        assert type(c[2]).__name__ == "ParametrizedBjorckLinear"
        with torch.no_grad():
            assert torch.equal(c(x), y)
        assert lipschitz_bound(c, (1, 8, 8)) == lipschitz_bound(model, (1, 8, 8))
    # the unparametrized path of the mixin is torch's own
    plain = pickle.loads(pickle.dumps(PicklableParametrizationMixinProbe()))
    assert isinstance(plain, PicklableParametrizationMixinProbe)


class PicklableParametrizationMixinProbe(PicklableParametrizationMixin, nn.Linear):
    def __init__(self):
        super().__init__(2, 2)
