"""The ``>>>`` examples in the docstrings of the main entry points run and print what they show."""
import doctest
import importlib

import pytest

MODULES = ["liplayers.certify.bounds", "liplayers.certify.margins", "liplayers.certify.evaluation",
           "liplayers.nn.export", "liplayers.zoo.pretrained", "liplayers.onnx"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name == "liplayers.onnx":
        pytest.importorskip("onnxruntime")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
