"""Training loop: checkpoint/resume round trip, atomic checkpoint writes, evaluation, hooks, callbacks,
metrics files, interruption and exact resume."""
import os

import pytest
import torch
from torch import nn

from liplayers.cli import dense_gnp
from liplayers.data import load_digits
from liplayers.losses import HKRLoss, TauCrossEntropyLoss
from liplayers.regularizers import ParsevalRetraction
from liplayers.train import TrainingInterrupted, evaluate, fit, load_checkpoint, save_checkpoint


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


# --------------------------------------------------------------------------- data types, callbacks, files
class _Recorder:
    def __init__(self, stop_at=None, interrupt_at=None):
        self.steps, self.epochs, self.stop_at, self.interrupt_at = [], [], stop_at, interrupt_at

    def on_step_end(self, state):
        self.steps.append((state.epoch, state.step, state.loss, state.metrics["lr"]))
        assert isinstance(state.model, nn.Module) and isinstance(state.optimizer, torch.optim.Optimizer)
        if state.step == self.interrupt_at:
            raise KeyboardInterrupt
        if state.step == self.stop_at:
            state.stop = True

    def on_epoch_end(self, state):
        self.epochs.append(dict(state.metrics))


def _equal_params(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_data_types_dataset_pair_and_loader(digits):
    from torch.utils.data import DataLoader, TensorDataset

    (x, y), test = digits
    kw = dict(epochs=1, lr=1e-2, batch_size=64, seed=1, progress=False)
    models = []
    for data in ((x, y), TensorDataset(x, y)):  # same seeded batch order
        torch.manual_seed(0)
        models.append(dense_gnp(64, 10, width=16, depth=1))
        fit(models[-1], TauCrossEntropyLoss(), data, **kw)
    assert _equal_params(*models)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)
    hist = fit(models[0], TauCrossEntropyLoss(), loader, eval_data=DataLoader(TensorDataset(*test), batch_size=40),
               eps=(0.1,), **kw)
    rows = [evaluate(models[0], d, eps=(0.1,)) for d in (test, TensorDataset(*test), DataLoader(TensorDataset(*test)))]
    assert rows[0] == rows[1] == rows[2]
    assert hist[-1]["clean_accuracy"] == rows[0]["clean_accuracy"]


def test_callbacks_see_every_step_and_epoch_and_can_stop(digits):
    train, _ = digits
    rec = _Recorder()
    torch.manual_seed(0)
    hist = fit(dense_gnp(64, 10, width=16, depth=1), HKRLoss(), train, epochs=2, batch_size=64, progress=False,
               callbacks=[rec])
    assert [s[:2] for s in rec.steps] == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 5), (2, 6), (2, 7), (2, 8)]
    assert rec.epochs == hist and [r["epoch"] for r in hist] == [1, 2]
    stopper = _Recorder(stop_at=6)
    assert len(fit(dense_gnp(64, 10, width=16, depth=1), HKRLoss(), train, epochs=5, batch_size=64, progress=False,
                   callbacks=[stopper])) == 2
    assert len(stopper.steps) == 6
    with pytest.raises(TypeError, match="on_step_end"):
        fit(nn.Linear(64, 10), nn.CrossEntropyLoss(), train, epochs=1, callbacks=[lambda s: None])


def test_metrics_csv_one_row_per_epoch(digits, tmp_path):
    import csv

    train, test = digits
    path = tmp_path / "logs" / "metrics.csv"
    torch.manual_seed(0)
    hist = fit(dense_gnp(64, 10, width=16, depth=1), TauCrossEntropyLoss(), train, epochs=3, batch_size=64,
               progress=False, eval_data=test, eval_every=2, eps=(0.1, 0.5), metrics_csv=path)
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["epoch", "loss", "clean_accuracy", "certified_accuracy@0.1", "certified_accuracy@0.5",
                             "lipschitz", "lr", "seconds"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert rows[0]["clean_accuracy"] == "" and float(rows[1]["clean_accuracy"]) == hist[1]["clean_accuracy"]
    assert float(rows[2]["certified_accuracy@0.5"]) == hist[2]["certified_accuracy"][0.5]
    assert float(rows[2]["lipschitz"]) == hist[2]["lipschitz"] >= 1.0 - 1e-6
    assert float(rows[2]["loss"]) == hist[2]["train_loss"] and float(rows[0]["lr"]) == 1e-3


def test_tensorboard_missing_names_install_command(digits, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        fit(nn.Linear(64, 10), nn.CrossEntropyLoss(), digits[0], epochs=1, tensorboard_dir=tmp_path)


def test_tensorboard_scalars(digits, tmp_path):
    pytest.importorskip("tensorboard")
    fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), nn.CrossEntropyLoss(), digits[0], epochs=1, progress=False,
        eval_data=digits[1], eps=(0.1,), tensorboard_dir=tmp_path / "tb")
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


# --------------------------------------------------------------------------- interruption and exact resume
def _interrupt_and_resume(make_model, train, tmp_path, at, **kw):
    torch.manual_seed(0)
    straight = make_model()
    hist = fit(straight, TauCrossEntropyLoss(), train, **kw)
    ckpt = tmp_path / "ckpt.pt"
    torch.manual_seed(0)
    first = make_model()  # built like `straight` (a Björck layer's construction already runs one retraction)
    with pytest.raises(TrainingInterrupted) as info:
        fit(first, TauCrossEntropyLoss(), train, checkpoint=ckpt, callbacks=[_Recorder(interrupt_at=at)], **kw)
    assert info.value.checkpoint == ckpt
    state = load_checkpoint(ckpt)
    torch.manual_seed(123)  # the resumed run restores the random state itself
    resumed = make_model()
    hist2 = fit(resumed, TauCrossEntropyLoss(), train, checkpoint=ckpt, **kw)
    assert _equal_params(straight, resumed)
    assert [r["train_loss"] for r in hist2] == [r["train_loss"] for r in hist]
    return state


@pytest.mark.parametrize("at", [1, 4, 6])
def test_interrupt_mid_epoch_then_resume_is_exact(digits, tmp_path, at):
    kw = dict(epochs=2, lr=5e-3, batch_size=64, seed=3, progress=False)
    state = _interrupt_and_resume(lambda: dense_gnp(64, 10, width=16, depth=2), digits[0], tmp_path, at, **kw)
    # 4 steps per epoch: (epochs completed, steps into the next one)
    assert (state["epoch"], state["partial"]["step"]) == {1: (0, 1), 4: (0, 4), 6: (1, 2)}[at]


def test_interrupt_with_dataloader_and_dropout_is_exact(digits, tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(*digits[0]), batch_size=48, shuffle=True)  # order from the global RNG

    def make():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))

    _interrupt_and_resume(make, loader, tmp_path, 9, epochs=2, lr=1e-2, progress=False)


def test_sigint_finishes_the_step_then_checkpoints(digits, tmp_path):
    import signal

    class CtrlC:
        def on_step_end(self, state):
            if state.step == 3:
                assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # deferred while fitting
                os.kill(os.getpid(), signal.SIGINT)

    ckpt = tmp_path / "c.pt"
    with pytest.raises(TrainingInterrupted):
        fit(dense_gnp(64, 10, width=16, depth=1), HKRLoss(), digits[0], epochs=2, batch_size=64, progress=False,
            checkpoint=ckpt, callbacks=[CtrlC()])
    assert load_checkpoint(ckpt)["partial"]["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    with pytest.raises(KeyboardInterrupt) as info:  # without a checkpoint: a plain KeyboardInterrupt
        fit(nn.Linear(64, 10), nn.CrossEntropyLoss(), (digits[0][0].flatten(1), digits[0][1]), epochs=1,
            progress=False, callbacks=[_Recorder(interrupt_at=1)])
    assert not isinstance(info.value, TrainingInterrupted)
