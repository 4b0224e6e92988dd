r"""Certified accuracy over a data set, and its plot.

* :func:`certified_accuracy` — clean accuracy and, for each ε, the fraction of samples that
  are correctly classified **and** have a certified radius ≥ ε (radii from
  :class:`~liplayers.certify.evaluation.Certifier`, computed once per sample and kept, so the
  accuracy at any other ε is read from :class:`CertifiedAccuracy` without a new pass).
* :func:`plot_certified_accuracy` — certified accuracy vs ε (matplotlib, imported lazily).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..utils import check_positive_int
from .evaluation import Certifier, _batches, _check_x, _labels

__all__ = ["certified_accuracy", "CertifiedAccuracy", "plot_certified_accuracy"]


@dataclass(frozen=True)
class CertifiedAccuracy:
    """Result of :func:`certified_accuracy`.

    Attributes:
        eps: the radii asked for (input units of ``norm``).
        certified_accuracy: fraction of samples correctly classified with radius ≥ ε, per ε.
        clean_accuracy: fraction of samples correctly classified.
        n: number of samples.
        norm: threat norm.
        lipschitz: the Lipschitz bound used (of the whole model).
        radii: (n,) float64 certified radius of each sample's prediction (CPU).
        correct: (n,) bool, prediction == label (CPU).
    """

    eps: Tuple[float, ...]
    certified_accuracy: Tuple[float, ...]
    clean_accuracy: float
    n: int
    norm: str
    lipschitz: float
    radii: Tensor = field(repr=False)
    correct: Tensor = field(repr=False)

    def at(self, eps: float) -> float:
        """Certified accuracy at any ε ≥ 0 (from the stored radii)."""
        e = _check_eps([eps])[0]
        if self.n == 0:
            return float("nan")
        return float((self.correct & (self.radii >= e)).double().mean())

    def curve(self, eps: Union[Sequence[float], Tensor]) -> Tensor:
        """Certified accuracy at each ε of ``eps`` (float64 tensor)."""
        es = _check_eps(list(torch.as_tensor(eps, dtype=torch.float64).reshape(-1).tolist()))
        return torch.tensor([self.at(e) for e in es], dtype=torch.float64)

    def as_dict(self) -> dict:
        """``{"clean": acc, eps₁: acc₁, ...}`` plus n, norm and lipschitz."""
        d = {"clean": self.clean_accuracy, "n": self.n, "norm": self.norm, "lipschitz": self.lipschitz}
        d.update({e: a for e, a in zip(self.eps, self.certified_accuracy)})
        return d

    def __str__(self) -> str:
        head = f"clean accuracy {self.clean_accuracy:.4f} (n={self.n}, {self.norm}, L={self.lipschitz:.6g})"
        rows = [f"  eps={e:<10.6g} certified accuracy {a:.4f}" for e, a in zip(self.eps, self.certified_accuracy)]
        return "\n".join([head] + rows)


def _check_eps(eps) -> Tuple[float, ...]:
    if isinstance(eps, Tensor):
        eps = eps.detach().reshape(-1).tolist()
    if isinstance(eps, (int, float)) and not isinstance(eps, bool):
        eps = [eps]
    try:
        vals = tuple(float(e) for e in eps)
    except TypeError as exc:
        raise TypeError(f"eps must be a float or a sequence of floats, got {type(eps).__name__}") from exc
    for e in vals:
        if not math.isfinite(e) or e < 0:
            raise ValueError(f"eps values must be finite and >= 0, got {e!r}")
    return vals


def certified_accuracy(
    model: nn.Module,
    data,
    eps: Union[float, Sequence[float]] = (0.0,),
    *,
    norm: str = "l2",
    lipschitz: Optional[float] = None,
    last_layer: Union[bool, str] = "auto",
    rtol: Optional[float] = None,
    batch_size: int = 256,
    device: Optional[Union[str, torch.device]] = None,
    allow_hooks: bool = False,
) -> CertifiedAccuracy:
    r"""Clean accuracy and certified accuracy at each ε.

    A sample counts as certified at ε only if it is correctly classified **and** its
    certified radius (see :func:`certify`) is ≥ ε. The Lipschitz bound is computed once,
    from the first batch's input shape.

    Args:
        model: classifier (logits (B, C), or a single binary logit with labels in {0, 1} or
            {−1, +1}).
        data: a ``Dataset``, a ``DataLoader`` (any iterable of ``(x, y, ...)`` batches) or an
            ``(x, y)`` pair of tensors.
        eps: radius or radii (input units of ``norm``), finite and ≥ 0.
        norm, lipschitz, last_layer, rtol, allow_hooks: see :func:`certify`.
        batch_size: chunk size when ``data`` is a pair of tensors.
        device: move each batch there (default: leave it where it is).

    Returns:
        A :class:`CertifiedAccuracy`.
    """
    eps_t = _check_eps(eps)
    batch_size = check_positive_int(batch_size, "batch_size")
    cert: Optional[Certifier] = None
    radii, correct = [], []
    for xb, yb in _batches(data, batch_size):
        if device is not None:
            xb, yb = xb.to(device), yb.to(device)
        _check_x(xb)
        if cert is None:
            cert = Certifier(model, tuple(xb.shape[1:]), norm=norm, lipschitz=lipschitz, last_layer=last_layer,
                             rtol=rtol, allow_hooks=allow_hooks)
        pred, rad = cert(xb)
        yb = _labels(yb, bool(cert.binary), cert.num_classes).to(pred.device)
        if yb.shape[0] != pred.shape[0]:
            raise ValueError(f"a batch has {pred.shape[0]} inputs but {yb.shape[0]} labels")
        correct.append((pred == yb).cpu())
        radii.append(rad.cpu())
    if cert is None:
        raise ValueError("data is empty")
    r = torch.cat(radii)
    c = torch.cat(correct)
    n = int(r.shape[0])
    clean = float(c.double().mean()) if n else float("nan")
    accs = tuple(float((c & (r >= e)).double().mean()) if n else float("nan") for e in eps_t)
    return CertifiedAccuracy(eps=eps_t, certified_accuracy=accs, clean_accuracy=clean, n=n, norm=cert.norm,
                             lipschitz=cert.lipschitz, radii=r, correct=c)


# ---------------------------------------------------------------------------------------------
def plot_certified_accuracy(
    results: Union[CertifiedAccuracy, Mapping[str, CertifiedAccuracy]],
    *,
    ax=None,
    eps_max: Optional[float] = None,
    num: int = 200,
    label: Optional[str] = None,
    **plot_kwargs,
):
    """Plot certified accuracy as a function of ε (a step curve from the stored radii).

    Args:
        results: one :class:`CertifiedAccuracy`, or a mapping label → result (one curve each).
        ax: matplotlib Axes to draw on (default: a new figure).
        eps_max: right end of the ε axis (default: 1.05 × the largest finite radius of a
            correct sample, or the largest ε asked for).
        num: number of ε values on the curve.
        label: legend label for a single result.
        plot_kwargs: passed to ``ax.plot``.

    Returns:
        The matplotlib Axes. Raises ``ImportError`` with an install hint if matplotlib is
        missing (it is an optional extra: ``pip install liplayers[examples]``).
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plot_certified_accuracy needs matplotlib, an optional dependency: "
                          "pip install matplotlib (or liplayers[examples])") from exc
    if isinstance(results, CertifiedAccuracy):
        curves = {label: results}
    elif isinstance(results, Mapping) and all(isinstance(v, CertifiedAccuracy) for v in results.values()):
        curves = dict(results)
    else:
        raise TypeError("results must be a CertifiedAccuracy or a mapping label -> CertifiedAccuracy")
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise ValueError(f"num must be an int >= 2, got {num!r}")
    if eps_max is None:
        top = 0.0
        for res in curves.values():
            ok = res.radii[res.correct & torch.isfinite(res.radii)]
            if ok.numel():
                top = max(top, float(ok.max()))
            if res.eps:
                top = max(top, max(res.eps))
        eps_max = 1.05 * top if top > 0 else 1.0
    elif not (math.isfinite(eps_max) and eps_max > 0):
        raise ValueError(f"eps_max must be finite and > 0, got {eps_max!r}")
    if ax is None:
        _, ax = plt.subplots()
    grid = torch.linspace(0.0, float(eps_max), num, dtype=torch.float64)
    for name, res in curves.items():
        ax.plot(grid.numpy(), res.curve(grid).numpy(), label=name, drawstyle="steps-post", **plot_kwargs)
        if res.eps:
            ax.scatter(list(res.eps), list(res.certified_accuracy), s=12)
    unit = "L2" if next(iter(curves.values())).norm == "l2" else "L∞"
    ax.set_xlabel(f"ε ({unit} radius)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlim(0.0, float(eps_max))
    if any(k is not None for k in curves):
        ax.legend()
    return ax
