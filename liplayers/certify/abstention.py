r"""Abstaining classifier: predict the class ⊥ when the certificate is too small (Béthune et al. 2022).

Béthune et al. ("Pay attention to your loss", NeurIPS 2022; their margin classifier c_f^m): with a
margin m > 0, predict a class only if the prediction is certified robust at radius m, and
⊥ ("reject", :data:`~liplayers.certify.ABSTAIN` = −1) otherwise. For a single binary
logit of a 1-Lipschitz network this is exactly c_f^m: +1 if f(x) ≥ m, −1 if f(x) ≤ −m, ⊥
otherwise. Every non-abstained prediction is certified: no input within distance m of x
receives another class (it may receive ⊥, if its own radius is below m).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .evaluation import Certifier, _batches, _check_x, _labels
from .margins import ABSTAIN, normalize_norm

__all__ = ["AbstainingClassifier", "AbstentionReport"]


@dataclass(frozen=True)
class AbstentionReport:
    """Accuracy / abstention report of an :class:`AbstainingClassifier` on labelled data.

    Attributes:
        n: number of samples.
        abstained: samples answered ⊥.
        accepted: samples given a class (n − abstained).
        correct: accepted samples with the right class.
        abstention_rate: abstained / n.
        accuracy: correct / n (⊥ counts as wrong): the certified accuracy at radius m.
        selective_accuracy: correct / accepted (accuracy on the accepted samples; NaN if none).
        error_rate: (accepted − correct) / n (confident and wrong).
        clean_accuracy: accuracy of the underlying classifier without abstention.
        margin: the margin m.
    """

    n: int
    abstained: int
    accepted: int
    correct: int
    abstention_rate: float
    accuracy: float
    selective_accuracy: float
    error_rate: float
    clean_accuracy: float
    margin: float

    def __str__(self) -> str:
        return (f"margin {self.margin:.6g}: n={self.n}, abstained {self.abstained} ({self.abstention_rate:.2%}), "
                f"accuracy {self.accuracy:.4f}, selective accuracy {self.selective_accuracy:.4f}, "
                f"error rate {self.error_rate:.4f} (clean accuracy {self.clean_accuracy:.4f})")


class AbstainingClassifier(nn.Module):
    r"""Wraps a classifier: predicts ⊥ (−1) where the certified radius is below ``margin``.

    Args:
        model: the classifier (logits (B, C) or one binary logit).
        margin: m ≥ 0, in input units of ``norm`` (m = 0: never abstain, except at exact ties
            — radius 0 is not < 0, so ties are answered too; use a tiny m to refuse them).
        norm, lipschitz, last_layer, rtol, allow_hooks: as in
            :func:`~liplayers.certify.certify`. The Lipschitz bound is recomputed from the
            current weights at every call (sound if the model is trained in between).

    Shapes: ``forward(x)`` / ``predict(x)``: (B, ...) → (B,) int64 classes or −1.
    """

    def __init__(self, model: nn.Module, margin: float, *, norm: str = "l2", lipschitz: Optional[float] = None,
                 last_layer: Union[bool, str] = "auto", rtol: Optional[float] = None,
                 allow_hooks: bool = False) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
            raise ValueError(f"margin must be a finite float >= 0, got {margin!r}")
        self.model = model
        self.margin = float(margin)
        normalize_norm(norm)  # validate early; the bounds need the input shape, known at the first call
        if last_layer not in (True, False, "auto"):
            raise ValueError(f"last_layer must be True, False or 'auto', got {last_layer!r}")
        self._opts = dict(norm=norm, lipschitz=lipschitz, last_layer=last_layer, rtol=rtol, allow_hooks=allow_hooks)

    def _certifier(self, x: Tensor) -> Certifier:
        return Certifier(self.model, tuple(x.shape[1:]), **self._opts)

    @torch.no_grad()
    def certify(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(prediction with −1 for ⊥, radius)``, both (B,); the radius is that of the underlying prediction."""
        _check_x(x)
        pred, radius = self._certifier(x)(x)
        return torch.where(radius < self.margin, torch.full_like(pred, ABSTAIN), pred), radius

    def predict(self, x: Tensor) -> Tensor:
        """(B,) int64: the class, or −1 (⊥) where the certified radius is < margin."""
        return self.certify(x)[0]

    def forward(self, x: Tensor) -> Tensor:  # same as predict
        return self.predict(x)

    @torch.no_grad()
    def report(self, data, batch_size: int = 256) -> AbstentionReport:
        """Accuracy / abstention report on ``data`` ((x, y) tensors or an iterable of (x, y) batches)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        cert = None
        n = abstained = correct = clean = 0
        for xb, yb in _batches(data, batch_size):
            _check_x(xb)
            if cert is None:
                cert = self._certifier(xb)
            pred, radius = cert(xb)
            y = _labels(yb, bool(cert.binary)).to(pred.device)
            if y.shape[0] != pred.shape[0]:
                raise ValueError(f"a batch has {pred.shape[0]} inputs but {y.shape[0]} labels")
            abst = radius < self.margin
            n += int(pred.shape[0])
            abstained += int(abst.sum())
            correct += int(((pred == y) & ~abst).sum())
            clean += int((pred == y).sum())
        if cert is None:
            raise ValueError("data is empty")
        accepted = n - abstained
        return AbstentionReport(
            n=n, abstained=abstained, accepted=accepted, correct=correct,
            abstention_rate=abstained / n, accuracy=correct / n,
            selective_accuracy=correct / accepted if accepted else float("nan"),
            error_rate=(accepted - correct) / n, clean_accuracy=clean / n, margin=self.margin,
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, norm={self._opts['norm']!r}"
