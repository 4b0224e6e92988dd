"""Data loaders: digits (always), MNIST from ../shared/data (skipped when absent), IDX errors."""
import gzip
import os

import numpy as np
import pytest
import torch

from liplayers.data import ENV_VAR, IDX_FILES, load_dataset, load_digits, load_idx_dataset, read_idx


def test_digits_shapes_range_split_and_determinism():
    train, test = load_digits(seed=0)
    x, y = train.tensors
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(train) + len(test) == 1797 and len(test) == 450
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(y.tolist()) == set(range(10)) and set(test.tensors[1].tolist()) == set(range(10))
    again, _ = load_digits(seed=0)
    other, _ = load_digits(seed=1)
    assert torch.equal(again.tensors[0], x)
    assert not torch.equal(other.tensors[0], x)
    # train and test are disjoint (no image of the test set in the train set, up to duplicates in digits)
    tr = {bytes(r.numpy().tobytes()) for r in x}
    te = [bytes(r.numpy().tobytes()) for r in test.tensors[0]]
    assert sum(t in tr for t in te) < 5
    small, _ = load_dataset("digits", limit=100)
    assert len(small) == 100


def _write_idx(path, array, code):
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())


def _fake_mnist(folder, n_train=6, n_test=4):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        _write_idx(folder / IDX_FILES[f"{split}_images"], rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x08)
        _write_idx(folder / IDX_FILES[f"{split}_labels"], rng.integers(0, 10, (n,), dtype=np.uint8), 0x08)


def test_idx_roundtrip_layouts_and_env(tmp_path, monkeypatch):
    _fake_mnist(tmp_path / "fashion-mnist")
    train, test = load_idx_dataset("fashion-mnist", tmp_path)
    assert train.tensors[0].shape == (6, 1, 28, 28) and len(test) == 4
    raw = read_idx(tmp_path / "fashion-mnist" / IDX_FILES["train_images"])
    assert torch.allclose(train.tensors[0][:, 0] * 255, torch.from_numpy(raw.astype(np.float32)))
    # files directly in the directory, found through the environment variable
    _fake_mnist(tmp_path / "flat")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "flat"))
    train, _ = load_dataset("mnist", limit=3)
    assert len(train) == 3


def test_missing_files_error_names_directory_and_files(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and str(tmp_path / "mnist") in msg
    for name in IDX_FILES.values():
        assert name in msg
    assert "never downloads" in msg
    with pytest.raises(FileNotFoundError, match=ENV_VAR):
        load_dataset("fashion-mnist")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("svhn")


def test_corrupt_idx_raises(tmp_path):
    bad = tmp_path / "x.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + b"\x00" * 9)
    with pytest.raises(ValueError, match="declares shape"):
        read_idx(bad)
    with gzip.open(bad, "wb") as fh:
        fh.write(b"PK\x03\x04")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(bad)


def test_real_mnist_if_present(mnist_dir):
    root = mnist_dir
    train, test = load_dataset("mnist", root, limit=2000)
    x, y = test.tensors
    assert x.shape == (2000, 1, 28, 28) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(y.tolist()) == set(range(10)) and len(train) == 2000
    # full test split size from the header, without converting all training images
    assert read_idx(os.path.join(root, "mnist", IDX_FILES["test_labels"])).shape == (10000,)
