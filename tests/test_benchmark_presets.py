"""The MNIST certified-accuracy preset runs end to end in its quick mode (skips without MNIST files)."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
def test_mnist_preset_quick(tmp_path, mnist_dir):
    data = mnist_dir
    cmd = [sys.executable, os.path.join(HERE, "..", "benchmarks", "certified_accuracy.py"), "--preset", "mnist-1.58",
           "--quick", "--seeds", "0", "--data-dir", data, "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    res = json.loads((tmp_path / "mnist-1.58" / "seed0" / "results.json").read_text())
    assert res["final_full_test"]["n"] == 200
    assert res["attack_check"]["violations"] == 0
    assert 1.0 <= res["bound"] < 1.001
    assert "| 0 | 1 |" in (tmp_path / "mnist-1.58" / "table.md").read_text()
