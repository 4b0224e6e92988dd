"""CIFAR-10 python-batch loader on small synthetic files written in the same format."""
import pickle

import numpy as np
import pytest
import torch

from liplayers.data import CIFAR10_FILES, DATASETS, ENV_VAR, load_cifar10, load_dataset


def _write_batches(folder, n_per_file=3, seed=0, protocol=2):
    """Files like the originals: a dict with bytes keys, data (N, 3072) uint8 in CHW order, labels a list."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, name in enumerate(CIFAR10_FILES):
        data = rng.integers(0, 256, size=(n_per_file, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n_per_file)]
        with open(folder / name, "wb") as fh:
            pickle.dump({b"batch_label": f"batch {i}".encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"img.png"] * n_per_file}, fh, protocol=protocol)
        arrays[name] = (data, labels)
    return arrays


def test_loads_synthetic_batches(tmp_path):
    arrays = _write_batches(tmp_path / "cifar-10-batches-py")
    train, test = load_cifar10(tmp_path)
    x, y = train.tensors
    assert x.shape == (15, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    data, labels = arrays["data_batch_2"]
    # row-major CHW: entry 1024·c + 32·h + w is channel c, pixel (h, w)
    assert torch.equal(x[3], torch.from_numpy(data[0].reshape(3, 32, 32).astype(np.float32) / 255.0))
    assert x[3, 1, 2, 5] == pytest.approx(data[0][1024 + 2 * 32 + 5] / 255.0)
    assert y[3:6].tolist() == labels
    xt, yt = test.tensors
    assert xt.shape == (3, 3, 32, 32) and yt.tolist() == arrays["test_batch"][1]
    # the directory itself, the environment variable, load_dataset and limit
    train2, _ = load_cifar10(tmp_path / "cifar-10-batches-py", limit=4)
    assert len(train2) == 4 and torch.equal(train2.tensors[0], x[:4])
    assert "cifar10" in DATASETS
    train3, test3 = load_dataset("cifar10", tmp_path, limit=2)
    assert len(train3) == 2 and len(test3) == 2


def test_other_pickle_protocols_and_env(tmp_path, monkeypatch):
    _write_batches(tmp_path / "cifar10", protocol=pickle.HIGHEST_PROTOCOL)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    train, test = load_cifar10()
    assert len(train) == 15 and len(test) == 3


def test_missing_files_error(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "never downloads" in msg
    for name in CIFAR10_FILES:
        assert name in msg
    with pytest.raises(FileNotFoundError, match=ENV_VAR):
        load_cifar10()
    # one file missing is also "absent"
    _write_batches(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        load_cifar10(tmp_path)


class _Evil:
    def __reduce__(self):
        return (print, ("pickle payload ran",))


def test_malformed_and_unsafe_files(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(ValueError, match="3072"):
        load_cifar10(tmp_path)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, fh)
    with pytest.raises(ValueError, match="not a CIFAR-10"):
        load_cifar10(tmp_path)
    assert "payload" not in capsys.readouterr().out
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar10(tmp_path)
