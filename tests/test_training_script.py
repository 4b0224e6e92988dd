"""The certified-training script runs on CIFAR-10-format files (synthetic, written here) with a zoo preset."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _cifar(folder, n=32):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)


@pytest.mark.slow
def test_cifar10_preset_one_epoch(tmp_path):
    _cifar(tmp_path / "data" / "cifar-10-batches-py")
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(HERE, "..", "benchmarks", "mnist_long_run.py"), "--dataset", "cifar10",
           "--preset", "lipconvnet-5-cifar10", "--conv", "aol", "--augment", "--epochs", "1", "--batch-size", "8",
           "--eps", "0.1412", "--eval-limit", "8", "--attack-points", "4", "--data-dir", str(tmp_path / "data"),
           "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    res = json.loads((out / "results.json").read_text())
    assert res["final_full_test"]["n"] == 32
    assert res["attack_check"]["violations"] == 0
    assert res["bound"] <= 1.0 + 1e-3
