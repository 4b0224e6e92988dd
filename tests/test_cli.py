"""The command line: --version, help texts, argument errors (one line, exit status 2, no traceback),
missing optional dependencies, progress output, Ctrl-C → checkpoint → --resume equals an
uninterrupted run, and the plot's labels."""
import json
import signal
import subprocess
import sys

import pytest
import torch

import liplayers
from liplayers.cli import build_parser, main

RUN = ["demo", "--quick", "--epochs", "4", "--no-plot", "--eps", "0.1", "0.3", "--pgd-steps", "3"]
METRICS = ("clean_accuracy", "lipschitz", "certified_accuracy", "pgd_accuracy")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    assert main(RUN + ["--progress", "none", "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


def _same_results(a, b):
    for net in ("gnp", "baseline"):
        for key in METRICS:
            assert a[net][key] == b[net][key], (net, key)


class _InterruptAfter:
    """Raises KeyboardInterrupt (what Ctrl-C does) after ``n`` optimizer steps of the demo."""

    def __init__(self, n):
        self.n, self.seen = n, 0

    def on_step_end(self, state):
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt


def _one_error_line(text, *needles):
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("liplayers") and "error:" in lines[0] and "Traceback" not in text
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"liplayers {liplayers.__version__}"


def test_every_option_documents_its_default():
    demo = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices and "demo" in a.choices)
    options = [a for a in demo.choices["demo"]._actions if a.option_strings and a.dest != "help"]
    assert len(options) > 20
    for action in options:
        assert action.help and "default" in action.help, action.option_strings


@pytest.mark.parametrize("argv, needle", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--epochs", "two"], "invalid int value"),
    (["--width", "31"], "--width must be even"),
    (["--width", "0"], "--width must be >= 2"),
    (["--lr", "-0.1"], "--lr must be finite and > 0"),
    (["--lr", "nan"], "--lr must be finite and > 0"),
    (["--tau", "0"], "--tau"),
    (["--margin", "-1"], "--margin"),
    (["--eps", "-1"], "--eps values"),
    (["--batch-size", "0"], "--batch-size"),
    (["--dataset", "cifar"], "invalid choice: 'cifar'"),
    (["--loss", "mse"], "invalid choice: 'mse'"),
    (["--arch", "conv", "--depth", "4"], "divisible by 16"),
    (["--dataset", "mnist", "--data-dir", "/no/such/dir"], "no such directory"),
    (["--unknown-option"], "unrecognized arguments"),
])
def test_bad_option_is_one_line_and_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", *argv])
    assert info.value.code == 2
    captured = capsys.readouterr()
    _one_error_line(captured.err, needle)
    assert captured.out == ""


def test_bad_output_locations(tmp_path, capsys):
    afile = tmp_path / "results.txt"
    afile.write_text("x")
    for flag, value, needle in (("--out", afile, "exists and is not a directory"),
                                ("--out", afile / "sub", "is a file, not a directory"),
                                ("--checkpoint", afile, "exists and is not a directory"),
                                ("--resume", tmp_path, "not a liplayers demo checkpoint")):
        with pytest.raises(SystemExit) as info:
            main(["demo", "--quick", flag, str(value)])
        assert info.value.code == 2
        _one_error_line(capsys.readouterr().err, needle)


@pytest.mark.parametrize("module, argv, needle", [
    ("sklearn", [], "pip install scikit-learn"),
    ("matplotlib", ["--out", "OUT"], "pip install matplotlib"),
    ("tqdm", ["--progress", "bar"], "pip install tqdm"),
    ("tensorboard", ["--tensorboard", "OUT"], "pip install tensorboard"),
])
def test_missing_optional_dependency_is_named_exit_2(module, argv, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    out = tmp_path / "out"
    argv = [str(out) if a == "OUT" else a for a in argv]
    assert main(["demo", "--quick", *argv]) == 2
    _one_error_line(capsys.readouterr().err, needle)
    assert not out.exists()  # nothing ran


def test_missing_mnist_files_exit_2_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LIPLAYERS_DATA", raising=False)
    assert main(["demo", "--quick", "--dataset", "mnist"]) == 2  # no data directory at all
    _one_error_line(capsys.readouterr().err, "LIPLAYERS_DATA", "train-images-idx3-ubyte.gz")


def test_command_line_error_via_python_dash_m():
    done = subprocess.run([sys.executable, "-m", "liplayers", "demo", "--epochs", "0"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    _one_error_line(done.stderr, "--epochs must be >= 1")


def test_progress_is_lines_or_bar_never_both(capsys):
    small = ["demo", "--quick", "--epochs", "2", "--no-plot", "--eps", "0.1", "--pgd-steps", "1", "--test-limit", "50"]
    assert main(small + ["--progress", "lines"]) == 0
    err = capsys.readouterr().err
    assert "  GNP  epoch 1: loss" in err and "  ReLU epoch 2: loss" in err and "it/s" not in err
    assert main(small + ["--progress", "none"]) == 0
    assert capsys.readouterr().err == ""
    pytest.importorskip("tqdm")
    assert main(small + ["--progress", "bar"]) == 0
    err = capsys.readouterr().err
    assert "it/s" in err and "GNP" in err and "  GNP  epoch" not in err


def test_interrupt_writes_checkpoint_and_resume_equals_uninterrupted(uninterrupted, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no --out: the checkpoint is kept in the working directory
    assert main(RUN + ["--progress", "none"], _callbacks=[_InterruptAfter(17)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    ckpt = tmp_path / "liplayers-demo-checkpoint"
    assert err == [f"interrupted: checkpoint written to {ckpt}, continue with liplayers demo --resume {ckpt}"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["demo.json", "gnp.pt"]  # 11 steps per epoch: in GNP epoch 2
    with pytest.raises(SystemExit) as info:  # the run's options come from the checkpoint
        main(["demo", "--resume", str(ckpt), "--epochs", "9"])
    assert info.value.code == 2
    _one_error_line(capsys.readouterr().err, "differs from the interrupted run")
    out = tmp_path / "out"
    assert main(["demo", "--resume", str(ckpt), "--progress", "none", "--out", str(out)]) == 0
    _same_results(uninterrupted, json.loads((out / "results.json").read_text()))


def test_ctrl_c_signal_then_resume(uninterrupted, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "liplayers", *RUN, "--progress", "lines", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "GNP  epoch 1:" in line:
                proc.send_signal(signal.SIGINT)
                break
        _, rest = proc.communicate(timeout=120)
    finally:
        proc.kill()
    ckpt = out / "checkpoint"
    assert proc.returncode == 130, rest
    assert rest.strip().splitlines()[-1] == (f"interrupted: checkpoint written to {ckpt}, continue with "
                                             f"liplayers demo --resume {ckpt}")
    assert "Traceback" not in rest
    assert main(["demo", "--resume", str(ckpt), "--progress", "none"]) == 0
    _same_results(uninterrupted, json.loads((out / "results.json").read_text()))


def test_plot_labels_curves_in_words_and_marks_measured_points(tmp_path):
    pytest.importorskip("matplotlib")
    from liplayers.certify import certified_accuracy
    from liplayers.cli import dense_gnp, dense_relu, plot_demo

    torch.manual_seed(0)
    x, y = torch.rand(40, 1, 8, 8), torch.randint(0, 10, (40,))
    gnp, relu = dense_gnp(64, 10, 8, 1).eval(), dense_relu(64, 10, 8, 1).eval()
    cert, base = certified_accuracy(gnp, (x, y), eps=[0.1, 0.2]), certified_accuracy(relu, (x, y), eps=[0.1, 0.2])
    fig = plot_demo(tmp_path / "p.png", [0.1, 0.2], cert, base, {0.1: 0.5, 0.2: 0.4}, {0.1: 0.3, 0.2: 0.2}, "t")
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"1-Lipschitz network, certified", "1-Lipschitz network, PGD attack",
                          "standard network, PGD attack", "standard network, certified"}
    for label in ("1-Lipschitz network, PGD attack", "standard network, PGD attack"):
        assert lines[label].get_linestyle() == "None" and lines[label].get_marker() not in ("", "None", None)
        assert list(lines[label].get_xdata()) == [0.0, 0.1, 0.2]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
