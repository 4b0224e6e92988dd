r"""Operator norms of transposed convolutions (zero padding): guaranteed L2 and ∞→∞ bounds.

Notation: ``conv_transpose(y, K, s, p, o, g, d)`` as torch computes it, K of shape
(in, out/g, k_1, …, k_n), input size H per axis, output size
H' = (H − 1)s − 2p + d(k − 1) + o + 1 (:func:`transposed_output_size`). Output position n
(per axis) receives K[c_in, c_out, a]·y[c_in, i] for every pair (input position i, tap a)
with i·s + a·d − p = n, c_in in the group of c_out.

**Crop of the full map.** With p = 0 and o = 0 the *full* transposed convolution has
L = (H − 1)s + d(k − 1) + 1 outputs per axis; the layer's output is its window
[p, p + H') (positions ≥ L, reachable when o > p, receive nothing). A crop of a linear map
has norm at most the map's (in every norm used here), and a larger output padding only
widens the window, so one bound taken at the largest output padding a forward can use,
o* = max(``output_padding``, s − 1) (``forward(x, output_size)`` selects any value in
[0, s − 1]), covers every forward (:func:`largest_output_padding`).

**L2 (adjoint).** The transposed convolution is the adjoint of x ↦ R·``conv(x, K, s, p, d, g)``
on (out, H') images, the same kernel read as a convolution kernel (out_conv = in,
in_conv/g = out/g), R keeping the first H outputs (R = I when o < s). An operator and its
adjoint have the same norm, so every bound of that convolution
(:func:`~liplayers.functional.conv.conv2d_lipschitz_bound`: the exact FFT norm of the
circular convolution on a grid containing the zero-padded one, or without an input size the
supremum of the polyphase symbol over all frequencies) bounds the transposed one
(:func:`conv_transpose2d_lipschitz_bound`). A 1-D transposed convolution is the 2-D one
with a 1×k kernel on 1×H images (:func:`conv_transpose1d_lipschitz_bound`). For any
dimension, :func:`conv_transpose_coverage_bound`: the adjoint maps z to
(M_g · patch_i(z))_i with M_g the (in/g) × (out/g·Πk) reshaped kernel of group g, so
‖adjoint z‖² ≤ max_g ‖M_g‖₂² Σ_i ‖patch_i(z)‖² ≤ max_g ‖M_g‖₂² · cov · ‖z‖², where cov
bounds the number of pairs (i, a) reaching one output position: per axis each tap gives at most one
i, and the i with i·s ∈ [n + p − d(k − 1), n + p] number at most ⌊d(k − 1)/s⌋ + 1, so
cov = Π min(k, ⌊d(k − 1)/s⌋ + 1).

**∞→∞.** Each entry of the operator's matrix is one kernel entry or 0 (for given output n
and input i the tap a = (n + p − i·s)/d is unique), so its largest row L1 norm — the ∞→∞
norm — is the largest, over output channels and positions, of the sum of |K| over the
(c_in, tap) pairs that reach it. Position n is reached only by taps with
a·d ≡ n + p (mod s) per axis, each at most once, which gives the size-free bound
max over c_out and residues r of Σ_{c_in in the group, a·d ≡ r} |K[c_in, c_out, a]|
(attained at large sizes); with an input size the exact value is the largest entry of the
full transposed convolution of |K| with an all-ones input, over the output window of o*
(:func:`conv_transpose_linf_bound`).

All sums are in float64, multiplied by 1 + 1e-9 + (m + 1)·2⁻⁵² for m summed terms.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .conv import _spatial, conv2d_lipschitz_bound
from .spectral import spectral_norm_exact

__all__ = ["transposed_output_size", "largest_output_padding", "conv_transpose2d_lipschitz_bound",
           "conv_transpose1d_lipschitz_bound", "conv_transpose_coverage_bound", "conv_transpose_linf_bound"]

_MARGIN = 1.0 + 1e-9


def _sum_margin(terms: int) -> float:
    return _MARGIN + (terms + 1) * 2.0 ** -52


def _tuple(v, n: int, name: str, lo: int) -> Tuple[int, ...]:
    if isinstance(v, str):
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {v!r}")
    t = (v,) * n if isinstance(v, int) else tuple(v)
    if len(t) != n or any(isinstance(x, bool) or int(x) != x or int(x) < lo for x in t):
        raise ValueError(f"{name} must be an int or a tuple of {n} ints >= {lo}, got {v!r}")
    return tuple(int(x) for x in t)


def _check_kernel(kernel: Tensor, groups: int) -> int:
    """Number of spatial dimensions of a transposed-convolution kernel (in, out/groups, k...)."""
    if not isinstance(kernel, Tensor) or kernel.dim() < 3:
        raise ValueError(f"kernel must be a tensor (in, out/groups, k_1, ...), got "
                         f"{tuple(kernel.shape) if isinstance(kernel, Tensor) else type(kernel).__name__}")
    if kernel.is_complex() or not kernel.is_floating_point():
        raise TypeError(f"kernel must be a real floating-point tensor, got {kernel.dtype}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or kernel.shape[0] % groups:
        raise ValueError(f"groups must be a positive int dividing the {kernel.shape[0]} input channels, got {groups!r}")
    if not bool(torch.isfinite(kernel.detach()).all()):
        raise ValueError("kernel contains non-finite values (NaN or Inf)")
    return kernel.dim() - 2


def _input_size(input_shape: Optional[Sequence[int]], kernel: Tensor, n: int) -> Optional[Tuple[int, ...]]:
    """Spatial size from (C, *spatial) or (*spatial); C must be the kernel's input channels."""
    if input_shape is None:
        return None
    shape = tuple(int(v) for v in input_shape)
    if len(shape) not in (n, n + 1) or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, {n} spatial sizes) or the spatial size alone, positive, "
                         f"got {tuple(input_shape)}")
    if len(shape) == n + 1 and shape[0] != kernel.shape[0]:
        raise ValueError(f"input_shape {shape} has {shape[0]} channels, the kernel expects {kernel.shape[0]}")
    return shape[-n:]


def transposed_output_size(n: int, k: int, s: int, p: int, o: int, d: int) -> int:
    """Output length of a transposed convolution along one axis: (n − 1)s − 2p + d(k − 1) + o + 1."""
    return (n - 1) * s - 2 * p + d * (k - 1) + o + 1


def largest_output_padding(stride: Sequence[int], output_padding: Sequence[int]) -> Tuple[int, ...]:
    """The largest output padding a forward can use: ``output_padding``, or up to s − 1 via ``output_size``."""
    return tuple(max(o, s - 1) for s, o in zip(stride, output_padding))


def conv_transpose2d_lipschitz_bound(kernel: Tensor, input_shape: Optional[Sequence[int]], stride=1, padding=0,
                                     output_padding=0, dilation=1, groups: int = 1) -> float:
    """Guaranteed bound of the L2 operator norm of ``conv_transpose2d`` (zero padding) with ``kernel``.

    The bound of the adjoint convolution (module docstring) on the output grid of the largest
    output padding o* = max(``output_padding``, stride − 1) a forward can use; it bounds every
    forward, with or without ``output_size``. Without ``input_shape``: the size-independent
    symbol bound.

    Args:
        kernel: (in, out/groups, kh, kw), as ``nn.ConvTranspose2d.weight``.
        input_shape: (C, H, W) or (H, W) of one input (no batch), or None for every size.
        stride, padding, output_padding, dilation, groups: as ``nn.ConvTranspose2d`` (integers).
    """
    if _check_kernel(kernel, groups) != 2:
        raise ValueError(f"kernel must have shape (in, out/groups, kh, kw), got {tuple(kernel.shape)}")
    s, d = _tuple(stride, 2, "stride", 1), _tuple(dilation, 2, "dilation", 1)
    p, o = _tuple(padding, 2, "padding", 0), _tuple(output_padding, 2, "output_padding", 0)
    k = kernel.detach()
    if input_shape is None:
        return conv2d_lipschitz_bound(k, None, s, p, d, "zeros", groups)
    if len(input_shape) == 3 and int(input_shape[0]) != k.shape[0]:
        raise ValueError(f"input_shape {tuple(input_shape)} has {input_shape[0]} channels, the kernel expects "
                         f"{k.shape[0]}")
    hw = _spatial(input_shape)
    o = largest_output_padding(s, o)
    out = tuple(transposed_output_size(hw[i], k.shape[2 + i], s[i], p[i], o[i], d[i]) for i in range(2))
    if min(out) < 1:
        raise ValueError(f"input size {hw} gives an empty output for kernel {tuple(k.shape[-2:])}, stride {s}, "
                         f"padding {p}")
    return conv2d_lipschitz_bound(k, out, s, p, d, "zeros", groups)


def conv_transpose1d_lipschitz_bound(kernel: Tensor, input_shape: Optional[Sequence[int]], stride=1, padding=0,
                                     output_padding=0, dilation=1, groups: int = 1) -> float:
    """L2 bound of ``conv_transpose1d``: the 2-D bound of the 1×k kernel on 1×L images (the same map).

    ``kernel``: (in, out/groups, k); ``input_shape``: (C, L), (L,) or None.
    """
    if _check_kernel(kernel, groups) != 1:
        raise ValueError(f"kernel must have shape (in, out/groups, k), got {tuple(kernel.shape)}")
    (s,), (d,) = _tuple(stride, 1, "stride", 1), _tuple(dilation, 1, "dilation", 1)
    (p,), (o,) = _tuple(padding, 1, "padding", 0), _tuple(output_padding, 1, "output_padding", 0)
    size = _input_size(input_shape, kernel, 1)
    return conv_transpose2d_lipschitz_bound(kernel.unsqueeze(2), None if size is None else (1, size[0]), (1, s),
                                            (0, p), (0, o), (1, d), groups)


def conv_transpose_coverage_bound(kernel: Tensor, stride=1, dilation=1, groups: int = 1) -> float:
    """Size-free L2 bound of a transposed convolution of any dimension (zero padding, any padding amounts).

    sqrt(Π min(k, ⌊d(k − 1)/s⌋ + 1)) · max_g ‖M_g‖₂, M_g the (in/g) × (out/g·Πk) reshaped
    kernel of group g (module docstring); exact for 1×…×1 kernels of stride 1.
    """
    n = _check_kernel(kernel, groups)
    s, d = _tuple(stride, n, "stride", 1), _tuple(dilation, n, "dilation", 1)
    if not kernel.numel():
        return 0.0
    blocks = kernel.detach().to(torch.float64).reshape(groups, kernel.shape[0] // groups, -1)
    cov = 1
    for k, si, di in zip(kernel.shape[2:], s, d):
        cov *= min(k, (k - 1) * di // si + 1)
    return math.sqrt(cov) * float(spectral_norm_exact(blocks).max()) * _MARGIN


def _phase_sums(k: Tensor, stride: Sequence[int], dilation: Sequence[int]) -> Tensor:
    """(out, s_1, …, s_n): Σ of k (out, k_1, …, k_n) over the taps a with a·d ≡ r (mod s) per axis."""
    t = k
    for i, (s, d) in enumerate(zip(stride, dilation)):
        taps = k.shape[1 + i]
        onehot = torch.zeros(taps, s, dtype=k.dtype, device=k.device)
        onehot[torch.arange(taps), (torch.arange(taps) * d) % s] = 1.0
        t = torch.movedim(torch.tensordot(t, onehot, dims=([1 + i], [0])), -1, 1 + i)
    return t


_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def conv_transpose_linf_bound(kernel: Tensor, stride=1, dilation=1, groups: int = 1,
                              input_shape: Optional[Sequence[int]] = None, padding=0, output_padding=0) -> float:
    """Guaranteed bound of the ∞→∞ operator norm of a transposed convolution (zero padding), any dimension.

    Without ``input_shape``: the largest Σ |K| over an output channel, the input channels of its
    group and the taps of one phase (a·d ≡ r mod s per axis) — valid for every size and every
    padding (also on a torus: a wrap padding only copies inputs). With ``input_shape`` (1-, 2-
    or 3-D): the exact norm of the zero-padded map (module docstring), for every output padding
    up to max(``output_padding``, s − 1); ``padding``, ``output_padding`` are then read.
    """
    n = _check_kernel(kernel, groups)
    s, d = _tuple(stride, n, "stride", 1), _tuple(dilation, n, "dilation", 1)
    if not kernel.numel():
        return 0.0
    cin, og = kernel.shape[:2]
    ks = tuple(kernel.shape[2:])
    a = kernel.detach().to(torch.float64).abs()
    terms = (cin // groups) * math.prod(ks)
    per_out = a.reshape(groups, cin // groups, og, *ks).sum(1).reshape(groups * og, *ks)
    bound = float(_phase_sums(per_out, s, d).max()) * _sum_margin(terms)
    size = _input_size(input_shape, kernel, n)
    if size is None or n not in _CONV_T:
        return bound
    p, o = _tuple(padding, n, "padding", 0), _tuple(output_padding, n, "output_padding", 0)
    o = largest_output_padding(s, o)
    full = _CONV_T[n](torch.ones(1, cin, *size, dtype=torch.float64, device=a.device), a, None, s, 0, 0, groups, d)
    out = tuple(transposed_output_size(size[i], ks[i], s[i], p[i], o[i], d[i]) for i in range(n))
    if min(out) < 1:
        raise ValueError(f"input size {size} gives an empty output for kernel {ks}, stride {s}, padding {p}")
    part = full[(0, slice(None)) + tuple(slice(p[i], p[i] + out[i]) for i in range(n))]
    exact = float(part.max()) * _sum_margin(terms) if part.numel() else 0.0  # empty: outputs past the full map
    return min(bound, exact)
