import os

import pytest
import torch

# One thread: the tests use small tensors, where threading costs more than it saves, and a
# single thread keeps float reductions in a fixed order (deterministic across machines).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def shared_data_dir():
    """``../shared/data`` beside the checkout, or None when absent (tests must skip)."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.normpath(os.path.join(here, "..", "..", "shared", "data"))
    return path if os.path.isdir(path) else None
