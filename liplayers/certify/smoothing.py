r"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019).

The smoothed classifier of a base classifier h and a noise level σ is

    g(x) = argmax_c P_{ε ~ N(0, σ²I)} [h(x + ε) = c].

By the Neyman–Pearson lemma, if the top class A has probability p_A ≥ p̲_A > ½
then g predicts A on the whole L2 ball of radius σ Φ⁻¹(p̲_A) around x (Cohen et al., Thm. 1
with p̄_B = 1 − p̲_A). The probabilities are estimated by Monte Carlo:

* :meth:`SmoothedClassifier.certify` (CERTIFY): guess A from ``n0`` noisy samples, then
  count A in ``n`` fresh samples and take the one-sided (1 − α) Clopper–Pearson lower bound
  p̲_A = Beta⁻¹(α; k, n − k + 1) (``scipy.stats.beta.ppf``: the exact quantile, no
  approximation). If p̲_A < ½ abstain, else return (A, σ Φ⁻¹(p̲_A)). With probability
  ≥ 1 − α over the sampling, a returned class is g(x) and the radius is certified.
* :meth:`SmoothedClassifier.predict` (PREDICT): counts from ``n`` samples; answer the top
  class only if a two-sided binomial test (``scipy.stats.binomtest``) of n_A vs n_B at
  p = ½ rejects at level α, else abstain. The probability of returning a class other than
  g(x) is ≤ α.

Abstention is encoded as :data:`~liplayers.certify.ABSTAIN` (−1) with radius 0. Noise is
drawn in batches of ``batch_size`` (samples of several inputs share a batch), from the
given ``torch.Generator`` only: results are reproducible for a given seed *and* batch size
(torch draws a different stream for different chunk sizes). scipy is imported lazily.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from ..functional import random as _rng
from ..lipschitz import eval_mode

from .margins import ABSTAIN

__all__ = ["SmoothedClassifier", "clopper_pearson_lower"]


def _scipy_stats():
    try:
        from scipy import stats
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("randomized smoothing needs scipy (scipy.stats.beta / binomtest): pip install scipy") from exc
    return stats


def clopper_pearson_lower(k: Tensor, n: int, alpha: float) -> Tensor:
    r"""One-sided (1 − α) Clopper–Pearson lower confidence bound of a binomial proportion.

    ``p̲ = Beta⁻¹(α; k, n − k + 1)`` for k ≥ 1 and 0 for k = 0, so that
    P(p̲ ≤ p) ≥ 1 − α for every true p. ``k``: counts (any shape, int); returns float64.
    """
    stats = _scipy_stats()
    kk = k.detach().cpu().to(torch.float64).numpy()
    lo = stats.beta.ppf(alpha, kk, n - kk + 1)
    lo = torch.as_tensor(lo, dtype=torch.float64)
    return torch.where(torch.as_tensor(kk) > 0, lo, torch.zeros_like(lo)).to(k.device)


def _check_int(v, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return v


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be a float in (0, 1), got {alpha!r}")
    return float(alpha)


class SmoothedClassifier:
    r"""Gaussian randomized smoothing of a base classifier (Cohen et al., 2019).

    Args:
        base: classifier mapping (B, ...) to logits (B, C) (class = argmax) or one binary
            logit (B,) / (B, 1) (class = f > 0). Evaluated in eval mode, without gradient.
        sigma: noise standard deviation σ > 0 (input units); radii are in L2 input units.
        num_classes: number of classes (default: inferred from the first forward).
    """

    def __init__(self, base: nn.Module, sigma: float, num_classes: Optional[int] = None) -> None:
        if not isinstance(base, nn.Module) and not callable(base):
            raise TypeError(f"base must be a torch.nn.Module or a callable, got {type(base).__name__}")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a finite float > 0, got {sigma!r}")
        if num_classes is not None:
            _check_int(num_classes, "num_classes", 2)
        self.base = base
        self.sigma = float(sigma)
        self.num_classes = num_classes

    # -- sampling ---------------------------------------------------------------------------
    def _classes(self, out: Tensor) -> Tensor:
        if out.dim() == 1 or (out.dim() == 2 and out.shape[1] == 1):
            c = (out.reshape(-1) > 0).to(torch.int64)
            if self.num_classes is None:
                self.num_classes = 2
            return c
        if out.dim() != 2:
            raise ValueError(f"base must return logits (B, C) or (B,), got shape {tuple(out.shape)}")
        if self.num_classes is None:
            self.num_classes = int(out.shape[1])
        elif out.shape[1] != self.num_classes:
            raise ValueError(f"base returned {out.shape[1]} logits, expected num_classes={self.num_classes}")
        return out.argmax(dim=1)

    @torch.no_grad()
    def sample_counts(self, x: Tensor, num: int, batch_size: int = 1000,
                      generator: Optional[torch.Generator] = None) -> Tensor:
        """Class counts (B, C) int64 of the base classifier over ``num`` noisy copies of each input.

        The B·num noisy inputs are processed in batches of ``batch_size`` (a batch may mix
        copies of consecutive inputs).
        """
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise ValueError("x must be a floating-point tensor of shape (B, ...)")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x contains non-finite values")
        _check_int(num, "num")
        _check_int(batch_size, "batch_size")
        B = x.shape[0]
        total = B * num
        modes = eval_mode(self.base) if isinstance(self.base, nn.Module) else contextlib.nullcontext()
        counts = None
        with modes:  # the base model runs in eval mode; its modes are restored after
            for start in range(0, total, batch_size):
                end = min(start + batch_size, total)
                idx = torch.arange(start, end, device=x.device) // num
                noise = _rng.randn((end - start,) + tuple(x.shape[1:]), generator=generator, dtype=x.dtype,
                                    device=x.device)
                cls = self._classes(self.base(x[idx] + self.sigma * noise))
                if counts is None:
                    counts = torch.zeros(B * self.num_classes, dtype=torch.int64, device=x.device)
                counts.index_add_(0, idx * self.num_classes + cls, torch.ones_like(cls))
        return counts.reshape(B, self.num_classes)

    # -- Cohen et al.'s PREDICT and CERTIFY --------------------------------------------------
    def predict(self, x: Tensor, n: int = 100, alpha: float = 0.001, batch_size: int = 1000,
                generator: Optional[torch.Generator] = None) -> Tensor:
        """Smoothed prediction (B,) int64, −1 (abstain) unless the top class wins a binomial test at level α."""
        alpha = _check_alpha(alpha)
        _check_int(n, "n")
        stats = _scipy_stats()
        counts = self.sample_counts(x, n, batch_size, generator)
        top2 = counts.topk(2, dim=1)
        out = torch.full((x.shape[0],), ABSTAIN, dtype=torch.int64, device=x.device)
        for i in range(x.shape[0]):
            na, nb = int(top2.values[i, 0]), int(top2.values[i, 1])
            if stats.binomtest(na, na + nb, 0.5).pvalue <= alpha:
                out[i] = top2.indices[i, 0]
        return out

    def certify(self, x: Tensor, n0: int = 100, n: int = 100_000, alpha: float = 0.001, batch_size: int = 1000,
                generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        r"""CERTIFY: ``(class or −1, L2 radius σ Φ⁻¹(p̲_A))`` per input, both (B,).

        Args:
            x: inputs (B, ...).
            n0: samples to select the top class; n: samples to bound its probability.
            alpha: failure probability of the certificate (per input).
            batch_size: noisy inputs per forward pass.
            generator: ``torch.Generator`` on ``x``'s device (reproducibility).

        Returns:
            ``(prediction, radius)``: int64 classes (−1 = abstain) and float64 radii (0 where
            abstaining).
        """
        alpha = _check_alpha(alpha)
        _check_int(n0, "n0")
        _check_int(n, "n")
        stats = _scipy_stats()
        c0 = self.sample_counts(x, n0, batch_size, generator)
        cand = c0.argmax(dim=1)
        counts = self.sample_counts(x, n, batch_size, generator)
        k = counts.gather(1, cand[:, None]).squeeze(1)
        p_lower = clopper_pearson_lower(k, n, alpha)
        ok = p_lower >= 0.5
        radius = torch.as_tensor(stats.norm.ppf(p_lower.clamp(0.5, 1.0).cpu().numpy()), dtype=torch.float64)
        radius = (self.sigma * radius).to(x.device)
        radius = torch.where(ok, radius.clamp_min(0.0), torch.zeros_like(radius))
        pred = torch.where(ok, cand, torch.full_like(cand, ABSTAIN))
        return pred, radius

    def lipschitz_bound(self, scale: str = "probit") -> float:
        r"""L2 Lipschitz constant of the smoothed class probability.

        ``scale="probit"``: ``x ↦ σ·Φ⁻¹(p_c(x))`` is 1-Lipschitz for every class ``c``
        (Salman et al. 2019; tight for a half-space base classifier) — the fact behind the
        radius ``σΦ⁻¹(p̲_A)``. ``scale="probability"``: ``x ↦ p_c(x)`` is
        ``1/(σ√(2π))``-Lipschitz. See :func:`liplayers.certify.robustness.smoothed_lipschitz_bound`.
        """
        from .robustness import smoothed_lipschitz_bound

        return smoothed_lipschitz_bound(self.sigma, scale)

    def __repr__(self) -> str:
        return f"SmoothedClassifier(sigma={self.sigma}, num_classes={self.num_classes}, base={type(self.base).__name__})"
