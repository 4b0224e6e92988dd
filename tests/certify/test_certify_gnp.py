"""A small GNP network trained on sklearn digits: certificates survive attacks; evaluation helpers."""
import pytest
import torch
import torch.nn.functional as F

import liplayers as L
from liplayers.certify import (
    CertifiedAccuracy,
    attack_check,
    certified_accuracy,
    certify,
    lipschitz_bound,
    lipschitz_lower_bound,
    plot_certified_accuracy,
)

sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits_gnp():
    torch.manual_seed(0)
    X, y = sklearn_datasets.load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    X, y = X[perm], y[perm]
    net = L.Sequential(L.BjorckLinear(64, 64), L.MaxMin(), L.BjorckLinear(64, 64), L.MaxMin(),
                       L.BjorckLinear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):  # brief training: ~96% test accuracy
        idx = torch.randint(0, 1400, (128,), generator=g)
        loss = F.cross_entropy(16.0 * net(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net, X[1400:], y[1400:]


def test_no_violation_with_our_pgd_and_the_check_can_fail(digits_gnp):
    net, x, y = digits_gnp
    pred, r = certify(net, x)
    assert (pred == y).double().mean() > 0.9
    g = torch.Generator().manual_seed(0)
    rep = attack_check(net, x, y, r, steps=50, restarts=2, torchattacks=None, generator=g)
    assert rep.n_certified >= 200
    assert rep.violations == 0, str(rep)
    # the certificate is tight on a GNP network: the attack reaches the certified boundary
    assert rep.max_margin_ratio["liplayers.pgd"] > -0.02
    # ... so the same check refutes radii that are too large
    bad = attack_check(net, x, y, 1.2 * r, steps=50, torchattacks=None, generator=g)
    assert bad.violations > 0.5 * bad.n_certified


def test_no_violation_with_torchattacks(digits_gnp):
    pytest.importorskip("torchattacks")
    net, x, y = digits_gnp
    pred, r = certify(net, x[:200])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()  # attack_check must evaluate in eval mode and restore the mode, whatever torchattacks does
    try:
        rep = attack_check(net, x[:200], y[:200], r, steps=20, torchattacks_steps=10,
                           generator=torch.Generator().manual_seed(0))
        assert net.training
    finally:
        net.eval()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "the check changed the model"
    assert rep.n_certified >= 200
    assert not rep.skipped, rep.skipped
    assert set(rep.per_attack) == {"liplayers.pgd", "PGDL2", "CW", "DeepFool", "FAB"}
    assert rep.violations == 0, str(rep)


def test_upper_bound_above_lower_bound(digits_gnp):
    net, x, _ = digits_gnp
    up = lipschitz_bound(net, (64,))
    lo = lipschitz_lower_bound(net, x[:64], steps=2, generator=torch.Generator().manual_seed(0))
    assert lo <= up
    assert lo > 0.99 * up  # GNP: the product bound is tight


def test_certified_accuracy_matches_certify_and_accepts_loaders(digits_gnp):
    net, x, y = digits_gnp
    eps = [0.0, 0.1, 0.3]
    res = certified_accuracy(net, (x, y), eps=eps, batch_size=100)
    assert isinstance(res, CertifiedAccuracy) and res.n == len(x)
    pred, r = certify(net, x)
    correct = pred == y
    assert res.clean_accuracy == pytest.approx(float(correct.double().mean()))
    for e, a in zip(eps, res.certified_accuracy):
        assert a == pytest.approx(float((correct & (r >= e)).double().mean()))
        assert res.at(e) == pytest.approx(a)
    assert list(res.certified_accuracy) == sorted(res.certified_accuracy, reverse=True)
    assert res.certified_accuracy[0] == pytest.approx(res.clean_accuracy)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    res2 = certified_accuracy(net, loader, eps=eps)
    assert res2.certified_accuracy == pytest.approx(res.certified_accuracy)
    assert "certified accuracy" in str(res) and res.as_dict()[0.1] == res.certified_accuracy[1]
    # linf: radii divided by sqrt(64)
    res_inf = certified_accuracy(net, (x, y), eps=[0.0125], norm="linf")
    assert res_inf.certified_accuracy[0] == pytest.approx(res.at(0.1), abs=1e-12)


def test_plot_certified_accuracy(digits_gnp):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    net, x, y = digits_gnp
    res = certified_accuracy(net, (x, y), eps=[0.0, 0.2])
    ax = plot_certified_accuracy({"GNP": res, "GNP again": res}, num=50)
    assert len(ax.get_lines()) == 2 and ax.get_xlabel().startswith("ε")
    ydata = ax.get_lines()[0].get_ydata()
    assert ydata[0] == pytest.approx(res.clean_accuracy)
    import matplotlib.pyplot as plt

    plt.close("all")
    with pytest.raises(TypeError):
        plot_certified_accuracy([res])
