"""Pretrained certifiably robust networks shipped with liplayers: ``liplayers.zoo.load(name)``.

Each entry is a model card: data, architecture, recipe, measured figures and the command that
reproduces it. :func:`load` returns the network in eval mode; its certificate is computed, as
always, from the weights it loads (``liplayers.certify.lipschitz_bound``), never from this card.
"""
from __future__ import annotations

import os
from typing import Dict

import torch
from torch import nn

from ..nn import BjorckLinear, MaxMin, OrthoConv2d, Sequential

__all__ = ["load", "available", "mnist_4c3f", "MODEL_CARDS"]

_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


def mnist_4c3f(width: int = 32, dense: int = 512) -> Sequential:
    """GloRo's 4C3F shape (Leino, Wang & Fredrikson, ICML 2021) with orthogonal layers, for 28×28 inputs.

    conv w (3×3) → conv w (4×4, stride 2) → conv 2w (3×3) → conv 2w (4×4, stride 2) → dense 512 →
    dense 512 → dense 10, each conv an exactly orthogonal BCOP convolution (:class:`OrthoConv2d`,
    'same' zero padding) followed by MaxMin over channels, the dense layers Björck-orthonormal.

    Shape:
        - Input: ``(B, 1, 28, 28)``
        - Output: ``(B, 10)``
    """
    w = width
    return Sequential(
        OrthoConv2d(1, w, 3, padding="same"), MaxMin(dim=1),
        OrthoConv2d(w, w, 4, stride=2, padding="same"), MaxMin(dim=1),
        OrthoConv2d(w, 2 * w, 3, padding="same"), MaxMin(dim=1),
        OrthoConv2d(2 * w, 2 * w, 4, stride=2, padding="same"), MaxMin(dim=1),
        nn.Flatten(),
        BjorckLinear(2 * w * 49, dense), MaxMin(dim=1),
        BjorckLinear(dense, dense), MaxMin(dim=1),
        BjorckLinear(dense, 10))


MODEL_CARDS: Dict[str, Dict[str, object]] = {
    "mnist-l2-1.58": {
        "builder": mnist_4c3f,
        "file": "mnist-l2-1.58.pt",
        "input_shape": (1, 28, 28),
        "card": "see MNIST_CARD below",
    },
}

MNIST_CARD = """(filled in when the model is shipped)"""


def available():
    """Names :func:`load` accepts whose weights are installed."""
    return sorted(k for k, v in MODEL_CARDS.items() if os.path.exists(os.path.join(_WEIGHTS, v["file"])))


def load(name: str, map_location="cpu") -> nn.Module:
    """The pretrained network ``name`` in eval mode (see :data:`MODEL_CARDS` and :func:`available`).

    Raises:
        ValueError: unknown name.
        FileNotFoundError: the weights file is not installed.
    """
    if name not in MODEL_CARDS:
        raise ValueError(f"unknown pretrained model {name!r}; available: {sorted(MODEL_CARDS)}")
    card = MODEL_CARDS[name]
    path = os.path.join(_WEIGHTS, card["file"])
    if not os.path.exists(path):
        raise FileNotFoundError(f"the weights of {name!r} are not installed ({path})")
    model = card["builder"]()
    state = torch.load(path, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model.eval()
