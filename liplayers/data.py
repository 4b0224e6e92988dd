"""Datasets for the examples and the main job: sklearn digits (embedded), MNIST, Fashion-MNIST, CIFAR-10.

Nothing is ever downloaded. ``digits`` ships inside scikit-learn; MNIST and Fashion-MNIST are
read from the standard IDX ``.gz`` files, CIFAR-10 from the standard python batch files
(``cifar-10-batches-py``), in a directory the user provides (``data_dir`` argument,
``--data-dir`` on the command line, or the ``LIPLAYERS_DATA`` environment variable).

Every loader returns ``(train, test)`` :class:`torch.utils.data.TensorDataset` pairs of
images ``(N, C, H, W)`` float32 in [0, 1] (pixel scale of the published L2 radii, e.g. ε = 1.58
on MNIST, 36/255 on CIFAR-10) and labels ``(N,)`` int64.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = [
    "CIFAR10_FILES",
    "DATASETS",
    "ENV_VAR",
    "IDX_FILES",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_idx_dataset",
    "read_idx",
    "resolve_data_dir",
]

ENV_VAR = "LIPLAYERS_DATA"
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
IDX_FILES: Dict[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# sub-directories of the data directory searched for each dataset, before the directory itself
_SUBDIRS = {"mnist": ("mnist", "MNIST"), "fashion-mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST")}
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR10_SUBDIRS = ("cifar-10-batches-py", "cifar10", "CIFAR10", "cifar-10")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

Split = Tuple[TensorDataset, TensorDataset]


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> Split:
    """scikit-learn's 8×8 digits (1,797 images, 10 classes), pixels 0..16 scaled to [0, 1].

    A stratified train/test split with ``test_fraction`` of the images in the test set,
    deterministic given ``seed``. Images ``(N, 1, 8, 8)`` float32, labels int64.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    try:
        from sklearn.datasets import load_digits as _sk_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - scikit-learn is an examples extra
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from exc
    d = _sk_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
            TensorDataset(torch.from_numpy(x_te), torch.from_numpy(y_te)))


def read_idx(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array of the shape its header declares.

    Raises ``ValueError`` naming the file when the header or the size is inconsistent.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() if data else 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path}: IDX header declares shape {shape} ({expected} bytes) but the file holds "
                         f"{len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def resolve_data_dir(data_dir: Optional[Union[str, os.PathLike]] = None) -> Optional[Path]:
    """``data_dir`` if given, else ``$LIPLAYERS_DATA`` if set, else ``None``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else None


def _candidates(name: str, root: Path) -> List[Path]:
    return [root / sub for sub in _SUBDIRS[name]] + [root]


def _missing_message(name: str, root: Optional[Path], searched: Sequence[Path]) -> str:
    files = ", ".join(IDX_FILES.values())
    if root is None:
        where = (f"no data directory was given: pass --data-dir DIR (or data_dir=...) or set the "
                 f"{ENV_VAR} environment variable")
    else:
        where = "looked in: " + ", ".join(str(p) for p in searched)
    return (f"{name}: the IDX files were not found ({where}). liplayers never downloads data; put the "
            f"four standard files {files} in DIR/{_SUBDIRS[name][0]}/ or DIR/ itself. "
            f"The digits dataset needs no file (--dataset digits).")


def load_idx_dataset(name: str, data_dir: Optional[Union[str, os.PathLike]] = None,
                     limit: Optional[int] = None) -> Split:
    """MNIST (``name="mnist"``) or Fashion-MNIST (``"fashion-mnist"``) from IDX ``.gz`` files.

    The files (names in :data:`IDX_FILES`) are looked for in ``DIR/<name>/`` (also ``DIR/MNIST``,
    ``DIR/fashion_mnist``, ``DIR/FashionMNIST``) and then ``DIR/`` itself, where DIR is
    ``data_dir`` or ``$LIPLAYERS_DATA``. Raises ``FileNotFoundError`` naming the directories
    searched and the expected file names when they are absent. ``limit`` keeps the first
    ``limit`` images of each split (for quick runs). Images ``(N, 1, 28, 28)`` float32 in
    [0, 1] (byte / 255), labels int64.
    """
    if name not in _SUBDIRS:
        raise ValueError(f"unknown IDX dataset {name!r}; expected one of {tuple(_SUBDIRS)}")
    root = resolve_data_dir(data_dir)
    searched = _candidates(name, root) if root is not None else []
    folder = next((d for d in searched if all((d / f).is_file() for f in IDX_FILES.values())), None)
    if folder is None:
        raise FileNotFoundError(_missing_message(name, root, searched))
    arrays = {key: read_idx(folder / fname) for key, fname in IDX_FILES.items()}
    splits = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match")
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
        splits.append(TensorDataset(x, torch.from_numpy(labels.astype(np.int64))))
    return splits[0], splits[1]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR batch files: only the numpy array reconstructors are resolved.

    A pickle can run any importable callable; the batches need nothing but numpy arrays (and
    built-in dicts, lists, bytes and ints), so every other global is refused."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
        (f"numpy.{core}.{mod}", name) for core in ("core", "_core")
        for mod, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file "
                                     "(only numpy arrays are expected)")


def _read_cifar_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one CIFAR-10 python batch file."""
    with open(path, "rb") as fh:
        try:
            batch = _NumpyOnlyUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a CIFAR-10 python batch file ({exc})") from exc
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 python batch file (no dictionary inside)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: a CIFAR-10 batch needs 'data' and 'labels' entries, found {sorted(map(str, batch))}")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: expected data (N, 3072) and labels (N,), got {data.shape} and {labels.shape}")
    if data.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 pixels, got {data.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir: Optional[Union[str, os.PathLike]] = None, limit: Optional[int] = None) -> Split:
    """CIFAR-10 from the standard python batch files (Krizhevsky, 2009).

    The files ``data_batch_1`` … ``data_batch_5`` and ``test_batch`` (:data:`CIFAR10_FILES`, as
    unpacked from ``cifar-10-python.tar.gz``) are looked for in ``DIR/cifar-10-batches-py/``
    (also ``DIR/cifar10``, ``DIR/CIFAR10``, ``DIR/cifar-10``) and then ``DIR/`` itself, where
    DIR is ``data_dir`` or ``$LIPLAYERS_DATA``; nothing is downloaded. Raises
    ``FileNotFoundError`` naming the directories searched and the expected files when they are
    absent, ``ValueError`` for a malformed file. Only numpy arrays are unpickled. ``limit``
    keeps the first ``limit`` images of each split. Images ``(N, 3, 32, 32)`` float32 in
    [0, 1] (byte / 255), labels int64 in 0..9.
    """
    root = resolve_data_dir(data_dir)
    searched = ([root / sub for sub in _CIFAR10_SUBDIRS] + [root]) if root is not None else []
    folder = next((d for d in searched if all((d / f).is_file() for f in CIFAR10_FILES)), None)
    if folder is None:
        files = ", ".join(CIFAR10_FILES)
        if root is None:
            where = (f"no data directory was given: pass --data-dir DIR (or data_dir=...) or set the "
                     f"{ENV_VAR} environment variable")
        else:
            where = "looked in: " + ", ".join(str(p) for p in searched)
        raise FileNotFoundError(
            f"cifar10: the python batch files were not found ({where}). liplayers never downloads data; "
            f"unpack cifar-10-python.tar.gz so that DIR/{_CIFAR10_SUBDIRS[0]}/ holds {files}.")
    splits = []
    for names in (CIFAR10_FILES[:5], CIFAR10_FILES[5:]):
        parts = [_read_cifar_batch(folder / n) for n in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        x = torch.from_numpy(images.astype(np.float32) / 255.0)
        splits.append(TensorDataset(x, torch.from_numpy(labels)))
    return splits[0], splits[1]


def load_dataset(name: str = "digits", data_dir: Optional[Union[str, os.PathLike]] = None, *, seed: int = 0,
                 limit: Optional[int] = None) -> Split:
    """``(train, test)`` for ``name`` in :data:`DATASETS` (see :func:`load_digits`,
    :func:`load_idx_dataset`, :func:`load_cifar10`).

    ``seed`` sets the digits train/test split; ``limit`` truncates each split of the file
    datasets (and of digits) to its first ``limit`` samples.
    """
    if name == "digits":
        train, test = load_digits(seed=seed)
        if limit is not None:
            train, test = (TensorDataset(*(t[:limit] for t in d.tensors)) for d in (train, test))
        return train, test
    if name in _SUBDIRS:
        return load_idx_dataset(name, data_dir, limit=limit)
    if name == "cifar10":
        return load_cifar10(data_dir, limit=limit)
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
