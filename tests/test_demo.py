"""The main job (`liplayers demo`) end to end with --quick: table, results.json, plot, soundness."""
import json
import subprocess
import sys

import pytest
import torch

from liplayers.cli import main


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _check_results(res, eps):
    assert res["eps"] == eps
    gnp, base = res["gnp"], res["baseline"]
    assert gnp["lipschitz"] >= 1.0 - 1e-6  # orthonormal layers: the bound is ~1 and never below
    for e in map(str, eps):
        # a certificate is a proof: certified <= attacked accuracy <= clean, and PGD breaks no certified point
        assert gnp["certified_accuracy"][e] <= gnp["pgd_accuracy"][e] <= gnp["clean_accuracy"]
        assert gnp["certificate_violations"][e] == 0
        assert base["certified_accuracy"][e] <= base["pgd_accuracy"][e] <= base["clean_accuracy"]
    assert gnp["clean_accuracy"] > 0.5 and base["clean_accuracy"] > 0.5
    # the wall time covers both trainings (a time that is merely > 0 could not fail)
    assert res["wall_time_s"] >= gnp["train_seconds"] + base["train_seconds"] > 0


def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["demo", "--quick", "--no-progress", "--out", str(out), "--eps", "0.1", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert "GNP certified" in printed and "ReLU PGD" in printed and "0 (clean)" in printed
    res = json.loads((out / "results.json").read_text())
    _check_results(res, [0.1, 0.3])
    assert res["table"] in printed
    png = (out / "certified_accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # per-epoch training logs (the last epoch is evaluated) and the checkpoint of both networks
    for tag in ("gnp", "relu"):
        rows = (out / f"training_{tag}.csv").read_text().splitlines()
        assert rows[0].startswith("epoch,loss,clean_accuracy,certified_accuracy@0.1,certified_accuracy@0.3")
        assert len(rows) == 1 + res["config"]["epochs"]
    assert float(rows[-1].split(",")[2]) == res["baseline"]["clean_accuracy"]
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["demo.json", "gnp.pt", "relu.pt"]


def test_demo_conv_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--arch", "conv", "--no-progress", "--out", str(tmp_path),
                 "--eps", "0.2", "--pgd-steps", "3"]) == 0
    _check_results(json.loads((tmp_path / "results.json").read_text()), [0.2])


def test_demo_missing_mnist_names_directory_and_files(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LIPLAYERS_DATA", raising=False)
    assert main(["demo", "--quick", "--dataset", "mnist", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "train-images-idx3-ubyte.gz" in err


def test_demo_rejects_bad_options(capsys):
    for argv in (["demo", "--width", "0"], ["demo", "--eps", "-1"], ["demo", "--loss", "mse"], ["demo", "--tau", "0"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "liplayers", "demo", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--dataset" in done.stdout and "--quick" in done.stdout
    flat = " ".join(done.stdout.split())  # help lines are wrapped to the terminal width
    assert "--resume" in flat and "(default: digits)" in flat
