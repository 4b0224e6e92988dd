r"""1-Lipschitz normalization layers that center without scaling: BatchCentering2d, LayerCentering2d.

Batch normalization divides by a standard deviation, which can multiply the Lipschitz constant
by an arbitrary factor; subtracting a mean alone cannot (Serrurier et al., "Achieving robustness
in classification using optimal transport with hinge regularization", CVPR 2021, and the
deel-torchlip library).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..lipschitz import LipschitzModule, UnboundedModuleError
from ._conv_common import _positive_int

__all__ = ["BatchCentering2d", "LayerCentering2d"]


def _check_input(layer: str, x: Tensor, c: int, dims=(4,)) -> None:
    if x.dim() not in dims or x.shape[-3] != c:
        shapes = " or ".join(["(B, C, H, W)", "(C, H, W)"][: len(dims)])
        raise ValueError(f"{layer} expects input {shapes} with C = {c}, got {tuple(x.shape)}")


class BatchCentering2d(LipschitzModule):
    r"""Per-channel mean subtraction with batch statistics: y = x − μ_c (+ b_c).

    Training (or ``track_running_stats=False``): μ_c is the mean of channel c over the batch and
    the spatial positions, and the running mean is updated as in ``nn.BatchNorm2d``
    (μ̂ ← (1 − m)μ̂ + mμ, or the cumulative average when ``momentum`` is None). Eval (with
    running statistics): μ_c = μ̂_c, so the layer is the translation x ↦ x + (b − μ̂), an isometry.

    Guarantee: :meth:`lipschitz_bound` = 1 covers the eval map (the translation), which is what a
    certificate is about. In training the batch mean makes one sample's output depend on the
    others (the map on the whole batch is x ↦ x − P x with P an averaging projection, norm 1, but
    it is not a per-sample function), and with ``track_running_stats=False`` eval does the same:
    then no per-sample bound exists and :meth:`lipschitz_bound` raises
    :class:`~liplayers.lipschitz.UnboundedModuleError`. No division, so nothing to guard with an
    epsilon.

    Args:
        num_features: number of channels C.
        eps: accepted for drop-in compatibility with ``nn.BatchNorm2d``; unused.
        momentum: running-mean update factor (default 0.1), or None for the cumulative average.
        affine: learn a per-channel bias b (zero-initialized). No scale: it would change the
            Lipschitz constant.
        track_running_stats: keep the running mean (default True).
        device, dtype: factory arguments.
        bias: with ``affine``, learn the bias (default True; as ``nn.BatchNorm2d``'s keyword).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)

    ``to_torch()`` is an ``nn.BatchNorm2d`` in eval mode with running variance 1, ε = 0, γ = 1 and
    β = b: the same translation.

    Serrurier et al., "Achieving robustness in classification using optimal transport with hinge
    regularization", CVPR 2021 (batch centering as used in deel-torchlip).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True) -> None:
        super().__init__()
        _positive_int("BatchCentering2d", "num_features", num_features)
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, (int, float))
                                     or not 0 <= momentum <= 1):
            raise ValueError(f"BatchCentering2d: momentum must be in [0, 1] or None, got {momentum!r}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        fk = {"device": device, "dtype": dtype}
        self.bias = nn.Parameter(torch.zeros(num_features, **fk)) if affine and bias else None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **fk))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.bias is not None:
            with torch.no_grad():
                self.bias.zero_()

    def forward(self, input: Tensor) -> Tensor:
        _check_input("BatchCentering2d", input, self.num_features)
        if self.training or self.running_mean is None:
            mean = input.mean(dim=(0, 2, 3))
            if self.training and self.running_mean is not None:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                    self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
            y = input - mean.view(1, -1, 1, 1)
            return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)
        shift = -self.running_mean if self.bias is None else self.bias - self.running_mean
        return input + shift.view(1, -1, 1, 1)

    def lipschitz_bound(self, input_shape=None) -> float:
        """1: the eval map is a translation (refused without running statistics, see the class docstring)."""
        if not self.track_running_stats or self.running_mean is None:
            raise UnboundedModuleError(
                "BatchCentering2d without running statistics subtracts the batch mean even in eval mode: one "
                "sample's output depends on the others, no per-sample Lipschitz bound")
        if not bool(torch.isfinite(self.running_mean).all()):
            raise ValueError("BatchCentering2d: the running mean contains non-finite values (NaN or Inf)")
        return 1.0

    def linf_lipschitz_bound(self, input_shape=None) -> float:
        """1: a translation (same conditions as :meth:`lipschitz_bound`)."""
        return self.lipschitz_bound(input_shape)

    def to_torch(self) -> nn.BatchNorm2d:
        """``nn.BatchNorm2d`` (eval mode) computing x + (b − μ̂): unit variance, ε = 0, γ = 1, β = b."""
        if self.running_mean is None:
            raise UnboundedModuleError("BatchCentering2d without running statistics has no fixed eval map to export")
        mu = self.running_mean.detach()
        bn = nn.BatchNorm2d(self.num_features, eps=0.0, affine=True, device=mu.device, dtype=mu.dtype)
        with torch.no_grad():
            bn.running_mean.copy_(mu)
            bn.running_var.fill_(1.0)
            bn.weight.fill_(1.0)
            bn.bias.copy_(self.bias if self.bias is not None else torch.zeros_like(mu))
            bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn.eval()

    def extra_repr(self) -> str:
        return (f"{self.num_features}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class LayerCentering2d(LipschitzModule):
    r"""Per-sample, per-channel spatial mean subtraction: y = x − mean_{H,W}(x) (+ b_c).

    For each sample and channel the map is P = I − 𝟙𝟙ᵀ/(HW), the orthogonal projection onto the
    images of zero mean: ‖P‖₂ = 1 (0 when H·W = 1), the same in training and eval (no statistics
    across samples, no running state), so the layer is 1-Lipschitz in both modes and
    :meth:`lipschitz_bound` is 1. It keeps the gradient norm on zero-mean directions and removes
    the constant one. ∞→∞: each row of P has absolute sum 2(1 − 1/(HW)) ≤ 2.

    Args:
        num_features: number of channels C.
        affine: learn a per-channel bias b (zero-initialized).
        device, dtype: factory arguments.

    Shape:
        - Input: (B, C, H, W) or (C, H, W)
        - Output: same shape

    No :meth:`to_torch`: torch has no plain module subtracting a spatial mean without dividing
    by a standard deviation.

    Serrurier et al., "Achieving robustness in classification using optimal transport with hinge
    regularization", CVPR 2021 (layer centering as used in deel-torchlip).
    """

    def __init__(self, num_features: int, affine: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        _positive_int("LayerCentering2d", "num_features", num_features)
        self.num_features, self.affine = num_features, bool(affine)
        self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype)) if affine else None

    def reset_parameters(self) -> None:
        if self.bias is not None:
            with torch.no_grad():
                self.bias.zero_()

    def forward(self, input: Tensor) -> Tensor:
        _check_input("LayerCentering2d", input, self.num_features, dims=(4, 3))
        y = input - input.mean(dim=(-2, -1), keepdim=True)
        return y if self.bias is None else y + self.bias.view(-1, 1, 1)

    def lipschitz_bound(self, input_shape=None) -> float:
        """1: an orthogonal projection per sample and channel (both modes)."""
        return 1.0

    def linf_lipschitz_bound(self, input_shape=None) -> float:
        """2(1 − 1/(HW)) with ``input_shape`` (C, H, W) or (H, W), else 2."""
        if input_shape is None:
            return 2.0
        shape = tuple(int(v) for v in input_shape)
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W) or (H, W), got {tuple(input_shape)}")
        return 2.0 * (1.0 - 1.0 / (shape[-2] * shape[-1])) * (1.0 + 1e-12)

    def extra_repr(self) -> str:
        return f"{self.num_features}, affine={self.affine}"
