"""Fixtures shared by the whole test tree (every subdirectory sees them; no test imports this module).

The tree mirrors the package: ``tests/<package>/test_*.py`` tests ``liplayers/<package>/``; the tests
of the front (command line, training, data, export, documentation, packaging) and the
cross-cutting ones stay here. Basenames are unique across the tree (pytest's default import mode).
"""
import os

import pytest
import torch

# One thread: the tests use small tensors, where threading costs more than it saves, and a
# single thread keeps float reductions in a fixed order (deterministic across machines).
torch.set_num_threads(1)

_SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                             "data"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data_dir():
    """``../shared/data`` beside the checkout; the test is skipped when it is absent."""
    if not os.path.isdir(_SHARED_DATA):
        pytest.skip(f"no shared data directory {_SHARED_DATA}")
    return _SHARED_DATA


@pytest.fixture
def mnist_dir(shared_data_dir):
    """The data directory that holds ``mnist/`` (the MNIST IDX files); the test is skipped without it."""
    if not os.path.isdir(os.path.join(shared_data_dir, "mnist")):
        pytest.skip(f"no MNIST files in {shared_data_dir}")
    return shared_data_dir
