r"""Linear residual convolution (LiResNet block): x + conv(x) as one normalized convolution."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.conv import _spatial, circular_conv2d, circular_conv_norm, conv2d_lipschitz_bound
from ..functional.skew import transpose_kernel
from ..lipschitz import InputShapeRequiredError, LipschitzModule
from ..parametrizations._common import compute_dtype, version_key
from ..utils import accepts_renamed_kwargs, renamed_attribute
from ._conv_common import _input_hw, _kaiming_reset, _plain_conv2d, _positive_int
from .soc import Size2, _check_same_conv

__all__ = ["LinearResidualConv2d"]


def _add_identity(k: Tensor) -> Tensor:
    """K + δ: the identity added to the centre tap (the kernel of x ↦ x + conv(x, K))."""
    c, _, kh, kw = k.shape
    eye = torch.zeros_like(k)
    idx = torch.arange(c, device=k.device)
    eye[idx, idx, kh // 2, kw // 2] = 1
    return k + eye


class LinearResidualConv2d(LipschitzModule):
    r"""Linear residual block y = (x + conv(x, K)) / s + b, run as one convolution.

    The residual map x + conv(x, K) (stride 1, 'same' padding, odd kernel) is the convolution
    with the kernel E = K + δ (identity added to the centre tap), so the layer costs one
    ``nn.Conv2d`` and its Lipschitz constant is the *operator* norm of E, computed tightly —
    no product of the identity's and the convolution's bounds (Hu et al., "Unlocking
    Deterministic Robustness Certification on ImageNet", NeurIPS 2023).

    ``normalize`` chooses what is divided by its operator norm σ:

    * ``'block'`` (default): E / σ(E) — the whole block is 1-Lipschitz;
    * ``'conv'``: K / σ(K), then + δ — the residual branch is 1-Lipschitz, the block ≤ 2;
    * ``None``: nothing (the bound is reported as it is, for training with the bound in the
      loss as in LiResNet).

    σ is the norm of the circular convolution on the torus the layer is bounded on (the
    H×W input for circular padding; (H + kh − 1)×(W + kw − 1) for zero padding, whose norm is
    a guaranteed upper bound of the zero-padded operator's). Training: power iteration on
    that operator from a persistent buffer ``u`` (``n_power_iterations`` per step, σ
    differentiable, as in spectral normalization) — one small convolution per step instead of
    a per-frequency SVD; eval: the exact FFT norm (float64), computed once per parameter
    version and cached, so the eval block has norm ≤ 1 ('block') at the configured size.
    ``input_size``, the spatial size (H, W) of the inputs, configures that size, else the first
    forward does. Before that, :meth:`lipschitz_bound`, :meth:`eval_weight` and :meth:`to_torch`
    given an ``input_shape`` use the kernel an eval forward on inputs of that shape would use
    (normalized at that size; the layer is not modified), and refuse with
    :class:`~liplayers.lipschitz.InputShapeRequiredError` without one (``normalize=None``
    needs no size).

    Guarantee: :meth:`lipschitz_bound` is :func:`~liplayers.functional.conv.conv2d_lipschitz_bound`
    of the combined kernel actually used (exact FFT norm for circular padding and a given
    size; guaranteed majorant otherwise), whatever the normalization.

    Args:
        in_channels, out_channels: equal (a residual block keeps the channels).
        kernel_size: odd. bias, device, dtype: as ``nn.Conv2d``.
        stride, dilation, groups: must be 1. padding: ``'same'`` (default) or (k − 1)/2.
        padding_mode: ``'zeros'`` (default) or ``'circular'``.
        normalize: ``'block'``, ``'conv'`` or ``None`` (see above).
        input_size: the spatial size (H, W) of the inputs, or None (taken from the first forward).
        n_power_iterations: power iterations per training step.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """

    @accepts_renamed_kwargs({"power_iterations": "n_power_iterations"})
    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size2 = 3, stride: Size2 = 1,
                 padding: Union[str, Size2] = "same", dilation: Size2 = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None, *, normalize: Optional[str] = "block",
                 input_size=None, n_power_iterations: int = 1) -> None:
        super().__init__()
        ks = _check_same_conv("LinearResidualConv2d", in_channels, out_channels, kernel_size, stride, padding,
                              dilation, groups, padding_mode)
        if in_channels != out_channels:
            raise ValueError(f"LinearResidualConv2d: in_channels and out_channels must be equal (x + conv(x)), "
                             f"got {in_channels} and {out_channels}")
        if ks[0] % 2 == 0 or ks[1] % 2 == 0:
            raise ValueError(f"LinearResidualConv2d: kernel sizes must be odd (the identity is the centre tap), got {ks}")
        if normalize not in ("block", "conv", None):
            raise ValueError(f"LinearResidualConv2d: normalize must be 'block', 'conv' or None, got {normalize!r}")
        _positive_int("LinearResidualConv2d", "n_power_iterations", n_power_iterations)
        self.in_channels = self.out_channels = in_channels
        self.kernel_size, self.stride, self.padding = ks, (1, 1), padding
        self.dilation, self.groups, self.padding_mode = (1, 1), 1, padding_mode
        self.normalize, self.n_power_iterations = normalize, n_power_iterations
        self.input_size: Optional[Tuple[int, int]] = None if input_size is None else _spatial(input_size)
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(in_channels, in_channels, *ks, **fk))
        self.bias = nn.Parameter(torch.empty(in_channels, **fk)) if bias else None
        self.register_buffer("u", torch.empty(0, device=device))
        self._cache_key: Optional[tuple] = None
        self._cache: Optional[Tensor] = None
        self.reset_parameters()

    power_iterations = renamed_attribute("power_iterations", "n_power_iterations")

    def reset_parameters(self) -> None:
        """nn.Conv2d's kernel initialization for the residual branch K, zero bias."""
        _kaiming_reset(self)

    # -- normalization ----------------------------------------------------------------------------
    def _size(self, input_shape=None) -> Optional[Tuple[int, int]]:
        """The spatial size the eval kernel is normalized for: ``input_size`` once configured (by the
        constructor or the first forward), else that of ``input_shape`` — the size the first
        forward on such inputs fixes; None when no normalization needs one."""
        if self.normalize is None:
            return None
        if self.input_size is not None:
            return self.input_size
        if input_shape is None:
            raise InputShapeRequiredError(
                "LinearResidualConv2d: the kernel is normalized at the input size, which is not known yet: pass "
                "input_shape=(C, H, W), input_size=(H, W) at construction, or run a forward")
        return _input_hw(self, input_shape)

    def _grid(self, size: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
        if size is None:
            size = self.input_size
        if size is None:
            raise RuntimeError("LinearResidualConv2d: the input size is not known yet (pass input_size or run a forward)")
        h, w = size
        if self.padding_mode == "circular":
            return (h, w)
        return (h + self.kernel_size[0] - 1, w + self.kernel_size[1] - 1)

    def _train_sigma(self, m: Tensor) -> Tensor:
        """Power-iteration estimate of the torus operator norm of kernel ``m`` (differentiable)."""
        grid = self._grid()
        shape = (1, m.shape[1], grid[0], grid[1])
        if tuple(self.u.shape) != shape:
            gen = torch.Generator(device="cpu").manual_seed(m.shape[1])
            self.u = torch.randn(shape, generator=gen, dtype=m.dtype).to(m.device)
        with torch.no_grad():
            md, mt, u = m.detach(), transpose_kernel(m.detach()), self.u.to(m.dtype)
            for _ in range(self.n_power_iterations):
                u = circular_conv2d(circular_conv2d(u, md), mt)  # AᵀA u (the adjoint: flipped, transposed kernel)
                u = u / u.norm().clamp_min(torch.finfo(m.dtype).tiny)
            if not bool(torch.isfinite(u).all()):
                raise ValueError("LinearResidualConv2d: the kernel contains non-finite values (NaN or Inf)")
            self.u.copy_(u)
        return circular_conv2d(u, m).norm().clamp_min(torch.finfo(m.dtype).tiny)

    def _kernel(self, k: Tensor, sigma) -> Tensor:
        if self.normalize == "block":
            e = _add_identity(k)
            return e / sigma(e)
        if self.normalize == "conv":
            return _add_identity(k / sigma(k))
        return _add_identity(k)

    @torch.compiler.disable  # the version check must run on every call
    def _eval_kernel(self, input_shape=None) -> Tensor:
        size = self._size(input_shape)
        key = (version_key(self.weight), size, self.normalize, self.padding_mode)
        if self._cache is None or self._cache_key != key:
            if not bool(torch.isfinite(self.weight).all()):
                raise ValueError("LinearResidualConv2d: the kernel contains non-finite values (NaN or Inf)")
            with torch.no_grad():
                k64 = self.weight.detach().to(torch.float64)
                grid = self._grid(size) if size is not None else None

                def exact(m: Tensor) -> float:
                    return max(circular_conv_norm(m, grid), torch.finfo(torch.float64).tiny)

                self._cache = self._kernel(k64, exact).to(compute_dtype(self.weight.dtype))
            self._cache_key = key
        return self._cache

    def eval_weight(self, input_shape=None) -> Tensor:
        """The combined kernel E used in eval mode (identity included, normalized), detached.

        ``input_shape`` ((C, H, W) of one input) is needed only while the input size is unknown."""
        return self._eval_kernel(input_shape).detach().clone()

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"LinearResidualConv2d expects input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if self.input_size is None and self.normalize is not None:
            self.input_size = (int(x.shape[-2]), int(x.shape[-1]))
        if self.training:
            k = self._kernel(self.weight.to(compute_dtype(self.weight.dtype)), self._train_sigma)
        else:
            k = self._eval_kernel()
        bias = None if self.bias is None else self.bias.to(k.dtype)
        if self.padding_mode == "circular":
            y = circular_conv2d(x.to(k.dtype), k, bias)
        else:
            y = F.conv2d(x.to(k.dtype), k, bias, 1, (self.kernel_size[0] // 2, self.kernel_size[1] // 2))
        return y.to(x.dtype)

    # -- protocol ---------------------------------------------------------------------------------
    def lipschitz_bound(self, input_shape=None) -> float:
        """Guaranteed operator-norm bound of the combined kernel used (any ``input_shape`` or None;
        None needs a known input size unless ``normalize=None``)."""
        return conv2d_lipschitz_bound(self._eval_kernel(input_shape), input_shape, 1, "same", 1, self.padding_mode)

    def to_torch(self, input_shape=None) -> nn.Conv2d:
        """``nn.Conv2d`` with the combined eval kernel (the identity folded in): the same map.

        ``input_shape`` is needed only while the input size is unknown (see the class docstring)."""
        return _plain_conv2d(self, self.eval_weight(input_shape),
                             padding=(self.kernel_size[0] // 2, self.kernel_size[1] // 2))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the power-iteration buffer is allocated at the first training forward (its shape depends
        # on the input size): adopt the saved shape so checkpoints load into a fresh module
        saved = state_dict.get(prefix + "u")
        if saved is not None and saved.shape != self.u.shape:
            self.u = torch.empty_like(saved, device=self.u.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"padding_mode={self.padding_mode!r}, normalize={self.normalize!r}, input_size={self.input_size}, "
                f"bias={self.bias is not None}")
