"""Spectral normalization of a convolution *operator* (not of the reshaped kernel) as a weight map."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.conv import (_spatial, circular_conv_norm, conv_operator_power_iteration, grouped_to_dense_kernel,
                               resolve_padding)
from ..utils import accepts_renamed_kwargs, renamed_attribute
from ._common import compute_dtype as _compute_dtype, version_key as _version_key

__all__ = ["OperatorNormalized"]


class OperatorNormalized(nn.Module):
    r"""Parametrization K ↦ K / ‖A_K‖ for the convolution operator A_K at a configured size.

    The normalizing operator is the circular convolution on the grid N (N = H for circular
    'same' padding; N = H + p_top + p_bottom rounded up to the stride for zero padding), whose
    norm is exactly computable by FFT and is a guaranteed upper bound of the layer's operator
    norm (:mod:`liplayers.functional.conv`). Training: power iteration on that operator and its
    adjoint from a persistent buffer ``u`` (``n_power_iterations`` per forward), σ = ‖A_K û‖
    differentiable in K (a lower bound converging to ‖A_K‖). Eval: exact FFT norm (float64 SVD
    per frequency), computed once per parameter version; the eval operator norm is ≤ 1.
    """

    @accepts_renamed_kwargs({"iterations": "n_power_iterations"})
    def __init__(self, kernel_size, stride, padding, dilation, padding_mode, groups, input_size,
                 n_power_iterations: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.padding_mode = padding_mode
        self.groups = groups
        self.n_power_iterations = n_power_iterations
        self.input_size: Optional[Tuple[int, int]] = None
        self.register_buffer("u", torch.empty(0))
        self._cache_key: Optional[tuple] = None
        self._cache: Optional[Tensor] = None
        if input_size is not None:
            self.set_input_size(_spatial(input_size))

    iterations = renamed_attribute("iterations", "n_power_iterations")

    def set_input_size(self, hw: Tuple[int, int]) -> None:
        """Set the spatial size (H, W) of the inputs the kernel is normalized for."""
        self.input_size = (int(hw[0]), int(hw[1]))
        self._cache_key = None

    def majorant(self) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """(grid N, stride) of the circular convolution whose norm normalizes the kernel."""
        if self.input_size is None:
            raise RuntimeError("SpectralConv2d: the input size is not known yet (pass input_size or run a forward)")
        pads = resolve_padding(self.padding, self.kernel_size, self.dilation)
        span = [self.dilation[i] * (self.kernel_size[i] - 1) for i in range(2)]
        same = all(pads[i][0] + pads[i][1] == span[i] for i in range(2))
        n = self.input_size
        s = self.stride
        if self.padding_mode == "circular" and same:
            if n[0] % s[0] == 0 and n[1] % s[1] == 0:
                return n, s
            return n, (1, 1)
        grid = tuple(-(-(n[i] + pads[i][0] + pads[i][1]) // s[i]) * s[i] for i in range(2))
        return grid, s  # type: ignore[return-value]

    def _op(self, k: Tensor):
        (nh, nw), s = self.majorant()
        span = [self.dilation[i] * (self.kernel_size[i] - 1) for i in range(2)]

        def op(x: Tensor) -> Tensor:
            xp = F.pad(x, (0, span[1], 0, span[0]), mode="circular")
            return F.conv2d(xp, k, None, s, 0, self.dilation, self.groups)

        return op

    def exact_norm(self, k: Tensor) -> float:
        grid, s = self.majorant()
        dense = grouped_to_dense_kernel(k.detach().to(torch.float64), self.groups)
        return circular_conv_norm(dense, grid, s, self.dilation)

    # The helpers below run eagerly under torch.compile (one graph break per call): the power
    # iteration differentiates through the operator (autograd.grad) and updates a buffer; the
    # eval cache reads the parameter's version, on which a compiled graph does not guard.
    @torch.compiler.disable
    def _train_vector(self, v: Tensor) -> Tensor:
        """Power-iteration step(s) from the persistent ``u`` (no grad); returns the new unit ``u``."""
        grid, _ = self.majorant()
        shape = (1, v.shape[1] * self.groups, grid[0], grid[1])
        cd = _compute_dtype(v.dtype)  # power iteration and V/σ in float32 at least
        if self.u.shape != shape:
            g = torch.Generator(device="cpu").manual_seed(0)
            self.u = torch.randn(shape, generator=g, dtype=cd).to(v.device)
        _, u = conv_operator_power_iteration(self._op(v.detach().to(cd)), self.u.to(cd), self.n_power_iterations)
        if not bool(torch.isfinite(u).all()):
            raise ValueError("SpectralConv2d: the kernel contains non-finite values (NaN or Inf)")
        with torch.no_grad():
            self.u.copy_(u)
        return u

    @torch.compiler.disable
    def _eval_weight(self, v: Tensor) -> Tensor:
        key = _version_key(v) + (self.input_size,)
        if self._cache_key != key:
            if self.input_size is None:
                raise RuntimeError("SpectralConv2d: the input size is not known (pass input_size or run a forward)")
            with torch.no_grad():
                self._cache = (v.detach().to(torch.float64) / self.exact_norm(v)).to(v.dtype)
            self._cache_key = key
        return self._cache

    def forward(self, v: Tensor) -> Tensor:
        if not self.training:
            return self._eval_weight(v)
        if self.input_size is None:
            return v  # shape inference before the first real forward (should not happen)
        u = self._train_vector(v)
        cd = _compute_dtype(v.dtype)
        sigma = self._op(v.to(cd))(u).norm()  # differentiable in the kernel
        return (v.to(cd) / sigma).to(v.dtype)

    def right_inverse(self, w: Tensor) -> Tensor:
        return w

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the power-iteration buffer is allocated at the first forward (its shape depends on the
        # input size): adopt the saved shape so checkpoints load into a fresh module
        saved = state_dict.get(prefix + "u")
        if saved is not None and saved.shape != self.u.shape:
            self.u = torch.empty_like(saved, device=self.u.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


