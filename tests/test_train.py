"""Training loop: checkpoint/resume round trip, atomic checkpoint writes, evaluation, hooks."""
import os

import pytest
import torch
from torch import nn

from liplayers.cli import dense_gnp
from liplayers.data import load_digits
from liplayers.losses import HKRLoss, TauCrossEntropyLoss
from liplayers.regularizers import ParsevalRetraction
from liplayers.train import evaluate, fit, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def digits():
    train, test = load_digits(seed=0)
    x, y = train.tensors
    return (x[:256], y[:256]), (test.tensors[0][:100], test.tensors[1][:100])


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_round_trip_equals_uninterrupted_run(digits, tmp_path):
    train, _ = digits
    kw = dict(lr=5e-3, batch_size=64, seed=3, progress=False)
    torch.manual_seed(0)
    straight = dense_gnp(64, 10, width=16, depth=2)
    init = _params(straight)
    hist = fit(straight, HKRLoss(alpha=5.0), train, epochs=2, **kw)
    ckpt = tmp_path / "run" / "ckpt.pt"
    first = dense_gnp(64, 10, width=16, depth=2)
    first.load_state_dict(init)
    fit(first, HKRLoss(alpha=5.0), train, epochs=1, checkpoint=ckpt, **kw)
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 1 and len(state["history"]) == 1
    resumed = dense_gnp(64, 10, width=16, depth=2)  # fresh weights: all come from the checkpoint
    hist2 = fit(resumed, HKRLoss(alpha=5.0), train, epochs=2, checkpoint=ckpt, **kw)
    assert [r["epoch"] for r in hist2] == [1, 2]
    assert hist2[1]["train_loss"] == pytest.approx(hist[1]["train_loss"], rel=1e-5)
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert sorted(os.listdir(ckpt.parent)) == ["ckpt.pt"]  # no temporary file left behind
    # resume=False starts over; a finished run resumed does nothing more
    assert len(fit(resumed, HKRLoss(), train, epochs=2, checkpoint=ckpt, **kw)) == 2
    assert load_checkpoint(ckpt)["epoch"] == 2


def test_atomic_checkpoint_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"epoch": 2, "bad": lambda: None})  # lambdas cannot be pickled
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]


def test_evaluation_rows_and_bound_against_jacobian(digits):
    train, test = digits
    torch.manual_seed(1)
    model = dense_gnp(64, 10, width=16, depth=2)
    hist = fit(model, TauCrossEntropyLoss(tau=3.0), train, epochs=2, lr=1e-2, batch_size=16, eval_data=test,
               eval_every=2, eps=(0.1, 0.3), progress=False)
    row = hist[-1]
    assert "clean_accuracy" not in hist[0]  # evaluated every 2 epochs only
    cert = row["certified_accuracy"]
    assert 0 <= cert[0.3] <= cert[0.1] <= row["clean_accuracy"] <= 1
    assert row["clean_accuracy"] > 0.5  # it learns something in 32 steps
    # the reported bound is >= the exact local Lipschitz constant (float64 SVD of the Jacobian)
    model.eval()
    model64 = dense_gnp(64, 10, width=16, depth=2).double()
    model64.load_state_dict(model.state_dict())
    model64.eval()
    for x in test[0][:5].double():
        jac = torch.autograd.functional.jacobian(model64, x[None]).reshape(10, 64)
        assert float(torch.linalg.matrix_norm(jac, 2)) <= row["lipschitz"] * (1 + 1e-6)


def test_after_step_hook_runs_parseval(digits):
    train, _ = digits
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    calls = []
    retract = ParsevalRetraction(model, beta=0.5)

    def hook():
        calls.append(1)
        retract()

    fit(model, nn.CrossEntropyLoss(), train, epochs=1, batch_size=64, lr=1e-3, after_step=hook, progress=False)
    assert len(calls) == 4
    w = model[1].weight.detach().double()
    assert float(torch.linalg.matrix_norm(w @ w.T - torch.eye(32, dtype=w.dtype))) < 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="epochs"):
        fit(nn.Linear(2, 2), nn.CrossEntropyLoss(), (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)), epochs=-1)
    with pytest.raises(TypeError, match="Dataset"):
        fit(nn.Linear(2, 2), nn.CrossEntropyLoss(), [1, 2, 3], epochs=1)
    with pytest.raises(ValueError, match="length"):
        evaluate(nn.Linear(2, 2), (torch.zeros(4, 2), torch.zeros(3, dtype=torch.long)))
