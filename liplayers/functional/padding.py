"""Padding of convolutions and pooling windows: amounts, multiplicities, and the padded operators.

``nn.Conv2d`` and the pooling layers read an input through a padding and a grid of windows.
How often one input entry is read bounds their operator norms (:mod:`liplayers.functional.conv`
for the convolution norms themselves):

* :func:`resolve_padding` — the (left, right) amounts per axis, ``'same'`` as torch resolves it;
* :func:`padding_multiplicity` — the most copies of one entry a padding makes (the padding
  operator has norm √ of it: 1 for zeros, up to 3 for reflect, more for replicate / circular);
* :func:`window_multiplicity` — the most windows (patches) one entry belongs to, per axis;
* :func:`conv2d_operator` — the linear map ``x ↦ conv2d(x)`` exactly as ``nn.Conv2d`` applies it;
* :func:`circular_conv2d` — the circular ``'same'`` convolution with a direct adjoint in backward.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["resolve_padding", "padding_multiplicity", "window_multiplicity", "conv2d_operator", "circular_conv2d"]

IntPair = Union[int, Tuple[int, int]]
Padding = Union[str, int, Tuple[int, int]]


def _pair(x: IntPair, name: str = "value") -> Tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    t = tuple(int(v) for v in x)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {x!r}")
    return t  # type: ignore[return-value]


def resolve_padding(padding: Padding, kernel_size: Tuple[int, int],
                    dilation: Tuple[int, int]) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Per-axis (left, right) padding amounts: ((top, bottom), (left, right)).

    'same' follows torch: total d(k−1), left = total // 2, right = total − left.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            out = []
            for k, d in zip(kernel_size, dilation):
                total = d * (k - 1)
                out.append((total // 2, total - total // 2))
            return out[0], out[1]
        raise ValueError(f"padding must be 'same', 'valid', an int or a pair, got {padding!r}")
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    return (ph, ph), (pw, pw)


def padding_multiplicity(n: Optional[int], left: int, right: int, mode: str) -> int:
    """Largest number of copies of one input index in a 1-D signal of length n padded by mode.

    The padding operator (a copy of entries) has spectral norm sqrt of this. ``n=None``
    returns a bound valid for every n the padding accepts.
    """
    if mode in ("zeros", "constant"):
        return 1
    if left == 0 and right == 0:
        return 1
    if n is None:
        if mode == "reflect":
            return 3  # original + one left reflection + one right reflection (p < n)
        return 1 + left + right  # replicate: an edge copied p times; circular: ≤ ⌈p/n⌉ wraps
    idx = torch.arange(-left, n + right)
    if mode == "circular":
        src = torch.remainder(idx, n)
    elif mode == "replicate":
        src = idx.clamp(0, n - 1)
    elif mode == "reflect":
        if left >= n or right >= n:
            raise ValueError(f"reflect padding {(left, right)} needs size > padding, got {n}")
        src = idx.abs()
        src = torch.where(src > n - 1, 2 * (n - 1) - src, src)
    else:
        raise ValueError(f"unknown padding_mode {mode!r}")
    return int(torch.bincount(src, minlength=n).max())


def window_multiplicity(n: Optional[int], kernel: int, stride: int, padding: int = 0,
                        dilation: int = 1, ceil_mode: bool = False) -> int:
    """Largest number of pooling / patch windows (1-D) containing one input index.

    Windows start at j·stride − padding and read offsets a·dilation, a < kernel. Without n
    the worst case over all positions is max over residues r of #{a : a·d ≡ r (mod s)}.
    """
    if n is None:
        counts = [0] * stride
        for a in range(kernel):
            counts[(a * dilation) % stride] += 1
        return max(counts)
    span = dilation * (kernel - 1) + 1
    L = n + 2 * padding
    if ceil_mode:
        n_out = -(-(L - span) // stride) + 1
        if (n_out - 1) * stride >= n + padding:
            n_out -= 1
    else:
        n_out = (L - span) // stride + 1
    cnt = torch.zeros(n, dtype=torch.long)
    for j in range(max(n_out, 0)):
        for a in range(kernel):
            i = j * stride - padding + a * dilation
            if 0 <= i < n:
                cnt[i] += 1
    return int(cnt.max()) if n > 0 else 0


def conv2d_operator(
    kernel: Tensor,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    padding_mode: str = "zeros",
    groups: int = 1,
) -> Callable[[Tensor], Tensor]:
    """The linear map x ↦ conv2d(x) (no bias) exactly as ``nn.Conv2d`` applies it."""
    ks = tuple(kernel.shape[-2:])
    d = _pair(dilation, "dilation")
    (pt, pb), (pl, pr) = resolve_padding(padding, ks, d)  # type: ignore[arg-type]
    s = _pair(stride, "stride")

    def op(x: Tensor) -> Tensor:
        if padding_mode == "zeros" and pt == pb and pl == pr:
            return F.conv2d(x, kernel, None, s, (pt, pl), d, groups)
        mode = "constant" if padding_mode == "zeros" else padding_mode
        return F.conv2d(F.pad(x, (pl, pr, pt, pb), mode=mode), kernel, None, s, 0, d, groups)

    return op


class _CircularConv2d(torch.autograd.Function):
    """Circular 'same' convolution, stride 1, with a direct adjoint in backward.

    The adjoint of a circular cross-correlation with kernel K (span 2p) is the circular
    cross-correlation with the flipped, channel-transposed kernel and the same padding, so
    the input gradient is one more circular convolution of the output gradient (instead of a
    convolution onto the padded grid followed by folding the borders back, as autograd
    through ``F.pad`` does); the kernel gradient is that of a valid convolution of the
    padded input.
    """

    @staticmethod
    def forward(ctx, x, kernel, bias, ph, pw, dilation, groups):  # type: ignore[override]
        xp = F.pad(x, (pw, pw, ph, ph), mode="circular")
        ctx.save_for_backward(xp, kernel)
        ctx.conf = (ph, pw, dilation, groups, bias is not None)
        return F.conv2d(xp, kernel, bias, 1, 0, dilation, groups)

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        xp, kernel = ctx.saved_tensors
        ph, pw, dilation, groups, has_bias = ctx.conf
        gx = gk = gb = None
        if ctx.needs_input_grad[0]:
            out, in_g = kernel.shape[:2]
            kt = kernel.reshape(groups, out // groups, in_g, *kernel.shape[2:]).transpose(1, 2)
            kt = kt.reshape(groups * in_g, out // groups, *kernel.shape[2:]).flip(-2, -1)
            gx = F.conv2d(F.pad(gy, (pw, pw, ph, ph), mode="circular"), kt, None, 1, 0, dilation, groups)
        want_k, want_b = ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]
        if want_k or want_b:  # kernel and bias gradients in one pass over gy
            _, gk, gb = torch.ops.aten.convolution_backward(
                gy, xp, kernel, [kernel.shape[0]] if want_b else None, [1, 1], [0, 0], list(dilation), False,
                [0, 0], groups, [False, want_k, want_b])
        return gx, gk, gb, None, None, None, None


def circular_conv2d(x: Tensor, kernel: Tensor, bias: Optional[Tensor] = None, dilation: IntPair = 1,
                    groups: int = 1) -> Tensor:
    """``conv2d`` with circular 'same' padding, stride 1 (odd dilated kernel spans).

    Equals ``F.conv2d(F.pad(x, p, mode='circular'), kernel, bias, dilation=d)`` with
    p = d(k − 1)/2 per axis; the backward pass applies the adjoint directly (faster).
    Shapes: x (B, in, H, W), kernel (out, in/groups, kh, kw) → (B, out, H, W).
    """
    d = _pair(dilation, "dilation")
    kh, kw = kernel.shape[-2:]
    if (d[0] * (kh - 1)) % 2 or (d[1] * (kw - 1)) % 2:
        raise ValueError(f"circular_conv2d needs odd dilated kernel spans, got kernel {(kh, kw)}, dilation {d}")
    return _CircularConv2d.apply(x, kernel, bias, d[0] * (kh - 1) // 2, d[1] * (kw - 1) // 2, d, groups)
