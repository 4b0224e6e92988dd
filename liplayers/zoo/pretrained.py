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
        "card": "see MNIST_CARD",
        # figures re-measured by tests/zoo/test_pretrained.py when the MNIST files are present
        "first_500": {"clean": 0.966, "certified_1.58": 0.658},
        "test": {"clean": 0.9726, "certified": {0.5: 0.9337, 1.0: 0.8555, 1.58: 0.6918}, "n": 10000},
    },
}

MNIST_CARD = """\
mnist-l2-1.58 — MNIST digits, certified against L2 perturbations.

Data: trained on reconstructed MNIST training images (60,000; rebuilt from a public PNG export of
the training set, every pixel within 1/255 of the original), evaluated on the original MNIST test
set (10,000 images), pixels in [0, 1], no normalization, no augmentation.

Architecture: :func:`mnist_4c3f` — the 4C3F shape of GloRo nets (Leino, Wang & Fredrikson, ICML
2021) with exactly orthogonal BCOP convolutions, MaxMin activations over channels and Björck
dense layers; 1.99 M parameters; guaranteed Lipschitz bound 1.000059 (computed from the weights).

Recipe: cross-entropy with an offset m = 1.9·ε = 3.0 on the true logit and temperature τ = 1/4
(Prach & Lampert, ECCV 2022), ε = 1.58; Adam on the Riemannian gradient of the orthogonal factors
(the Euclidean gradient projected onto the tangent space of the Stiefel manifold: the default of
``OrthoConv2d``, ``riemannian_grad="embedded"`` and ``retract_every=8`` for ``BjorckLinear``, whose
defaults are now the canonical-metric gradient and 16 — that recipe gave 97.10% clean and 68.40%
certified at ε = 1.58 for the same seed), batch 256, one-cycle learning rate to 3e-3 over 24
epochs; one CPU thread, 2,525 s of training (42 minutes) on a shared 2-core machine.

Measured (full test set; `liplayers.certify.certified_accuracy`, last-layer certificate):
clean 97.26%; certified 93.37% at ε = 0.5, 85.55% at ε = 1.0, 69.18% at ε = 1.58 (a second seed:
97.21 / 93.47 / 85.48 / 68.78%). 500 certified test points attacked inside their radii (PGD, 50
steps, 2 restarts): 0 violations. The published records at ε = 1.58 are 62.8% (GloRo, Leino et
al., ICML 2021, 4C3F) and 63.4% (CRM, Fazlyab et al., NeurIPS 2023).

Reproduce:
    python benchmarks/certified_accuracy.py --preset mnist-1.58 --seeds 0 --data-dir DIR_WITH_mnist/
"""


def available():
    """Names :func:`load` accepts whose weights are installed."""
    return sorted(k for k, v in MODEL_CARDS.items() if os.path.exists(os.path.join(_WEIGHTS, v["file"])))


def load(name: str, map_location="cpu") -> nn.Module:
    """The pretrained network ``name`` in eval mode (see :data:`MODEL_CARDS` and :func:`available`).

    ``liplayers.zoo.load("mnist-l2-1.58")``: :data:`MNIST_CARD` (4C3F with orthogonal layers, 97.26%
    clean and 69.18% certified accuracy at L2 ε = 1.58 on the MNIST test set).

    Raises:
        ValueError: unknown name.
        FileNotFoundError: the weights file is not installed.

    Example:
        >>> import liplayers
        >>> model = liplayers.zoo.load("mnist-l2-1.58")
        >>> model.training, round(liplayers.certify.lipschitz_bound(model, (1, 28, 28)), 3)
        (False, 1.0)
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
