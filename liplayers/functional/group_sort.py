r"""MaxMin and GroupSort as fast tensor functions with permutation gradients.

Both sort the entries of ``x`` within consecutive groups along ``dim``: entries ``G·i …
G·i + G − 1`` form group ``i``, and the output holds them in ascending order in the same
positions. MaxMin is group size 2: ``(a, b) ↦ (min(a, b), max(a, b))``, the minimum first
(the convention of :class:`~liplayers.nn.MaxMin`). The map is a permutation of the entries
that depends on the input, so it is 1-Lipschitz in every Lp norm, and its Jacobian is a
permutation matrix: gradient norms are preserved exactly (Anil, Lucas & Grosse, 2019).

Gradients. The backward pass routes the incoming gradient by the same permutation as the
forward pass, *everywhere* — also at ties, where a tie is broken by the sign bit of
``b − a`` (``a = b`` keeps the pair in place). The Jacobian is therefore always a permutation
matrix, never the averaged (norm-shrinking) derivative that ``torch.minimum`` /
``torch.maximum`` give at ties; off ties the two agree exactly. The gradient is piecewise
constant in ``x``, so second derivatives are zero; double backward, forward mode
(``torch.func.jvp``), ``vmap`` / ``jacrev`` and ``torch.compile`` (no graph break) are supported.

NaN. A group that contains NaN never loses it. MaxMin makes both entries of the pair NaN
(as ``torch.minimum`` / ``torch.maximum`` do), and so does the sorting network for the
whole group; groups sorted by ``torch.sort`` keep NaN as their last entry. Which path a
group takes is a matter of speed (see below), so code must not rely on more than "NaN
stays". The gradient is routed by a permutation in every case.

How it is fast. The two entries of every pair are read through strided views (no copy);
the forward pass writes ``torch.minimum`` / ``torch.maximum`` into the two halves of one
preallocated output and saves only the swap mask — the sign byte of ``b − a``, one byte per
pair (all ones where the pair was swapped; it widens to all ones again by sign extension
when combined with the integer view of a wider gradient). The backward pass
exchanges the two gradients where the mask is set by a branch-free bitwise swap on integer
views of the gradient, ``t = (g₀ ⊕ g₁) ∧ m``, ``g₀ ⊕ t``, ``g₁ ⊕ t``: exact, and unlike
``torch.where`` / ``masked_fill`` (which on CPU take a mispredicted branch on every other
entry of a random mask, ~10× slower) it runs at memory speed. Larger power-of-two groups (up
to 64) along an axis that is not the innermost memory axis (image channels) go through
Batcher's odd–even merge sorting network (Batcher, 1968), in place on one buffer, one
batched compare-exchange of two strided views per stage (3, 6, 10, 15, 21 stages for 4 …
64); other groups, groups along a contiguous axis and tiny tensors use ``torch.sort``.
Under ``torch.func`` transforms, forward-mode AD and tensor subclasses the same maths runs
as functional operations (``torch.where`` on a boolean mask). Under ``torch.compile`` MaxMin
saves the integer sign mask and swaps gradients bitwise as in eager (functional ``view``s
of the gradient as integers, no ``out=``): inductor's CPU code stores and computes boolean
masks (``signbit``, comparisons written to memory) element by element, which made the
boolean formulation ~10× slower than eager, while the integer one vectorizes (fused
forward and backward of (64, 32, 28, 28), one thread: ~1.0 ms compiled against ~1.6 ms
eager and ~12 ms for the boolean mask).

Memory kept for backward: MaxMin one byte per pair (1/8 of a float32 input; a mask of the
input's width was ~1.5 ms faster per 256×32×28×28 forward + backward but four times larger),
instead of the whole input that autograd through ``torch.minimum`` / ``torch.maximum`` keeps; the
network one byte per comparator, 1.25 (group 4) to 8.5 (group 64) bytes per entry, against
8 (int64 indices) for ``torch.sort``.

Shape: input (*) of any real dtype, any strides; output the same shape, dtype and device.
"""
from __future__ import annotations

import sys
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd import Function

__all__ = ["max_min", "group_sort"]

_INT_OF_WIDTH = {2: torch.int16, 4: torch.int32, 8: torch.int64}
# Power-of-two groups up to _NETWORK_MAX go through the sorting network when the group axis is
# not the innermost memory axis (image channels) and the tensor is not tiny; otherwise
# torch.sort (fast along a contiguous axis, and it has no per-stage dispatch cost).
_NETWORK_MAX = 64
_NETWORK_MIN_NUMEL = 1 << 16


# ---------------------------------------------------------------- argument checks and views
def _check(x: Tensor, dim: int, group: int, name: str) -> int:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise ValueError(f"{name}: complex input has no order; got dtype {x.dtype}")
    if not isinstance(dim, int) or not -x.dim() <= dim < max(x.dim(), 1) or x.dim() == 0:
        raise ValueError(f"{name}: dim {dim} is out of range for an input of shape {tuple(x.shape)}")
    d = dim % x.dim()
    if x.shape[d] % group:
        raise ValueError(
            f"{name}: size {x.shape[d]} of dim {dim} is not divisible by group_size {group}"
            + (" (MaxMin pairs consecutive entries)" if group == 2 else "")
        )
    return d


def _split(t: Tensor, d: int, shape: Tuple[int, ...]) -> Tensor:
    """Split dim ``d`` of ``t`` into ``shape`` (always a view, whatever the strides)."""
    return t.unflatten(d, shape)


def _halves(t: Tensor, d: int) -> Tuple[Tensor, Tensor]:
    """Strided views of the first and second entries of the pairs along dim ``d``."""
    p = _split(t, d, (t.shape[d] // 2, 2))
    return p.select(d + 1, 0), p.select(d + 1, 1)


def _swap_mask(a: Tensor, b: Tensor, compact: bool = False) -> Tensor:
    """Integer mask: all ones where the pair (a, b) is swapped by sorting, else 0.

    The swap condition is the sign bit of ``b − a``: for non-NaN inputs it is set iff a > b
    (the difference of two floats rounds to zero only when they are equal, and rounding keeps
    the sign), and for equal entries only in the harmless case a = +0, b = −0. The mask has
    a's width, or with ``compact`` one byte (the sign byte of the difference; it widens to
    all ones again by sign extension when combined with a wider integer).
    """
    width = a.element_size()
    diff = torch.sub(b, a, out=torch.empty(a.shape, dtype=a.dtype, device=a.device))
    if not compact:
        return diff.view(_INT_OF_WIDTH[width]).bitwise_right_shift_(8 * width - 1)
    sign_byte = width - 1 if sys.byteorder == "little" else 0
    byte = diff.view(torch.int8).unflatten(-1, (a.shape[-1], width)).select(-1, sign_byte)
    return torch.bitwise_right_shift(byte, 7)


def _mode(x: Tensor) -> str:
    """Which implementation runs: 'compile', 'functional', 'nograd' or 'eager'.

    'compile' and 'functional' use functional operations only (no out=, no in-place, no
    dtype views): under ``torch.compile``, ``torch.func`` transforms, forward-mode AD and for
    tensor subclasses. 'eager' needs a float dtype of 2, 4 or 8 bytes.
    """
    if torch.compiler.is_compiling():
        return "compile"
    if (torch._C._are_functorch_transforms_active()
            or getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0
            or (type(x) is not Tensor and not isinstance(x, torch.nn.Parameter))):
        return "functional"
    if not (torch.is_grad_enabled() and x.requires_grad):
        return "nograd"
    return "eager" if x.element_size() in _INT_OF_WIDTH else "functional"


# ---------------------------------------------------------------- MaxMin
def _max_min_into(x: Tensor, d: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(out, a, b): minimum and maximum of the pairs of x written into one new tensor."""
    a, b = _halves(x, d)
    out = torch.empty_like(x)
    lo, hi = _halves(out, d)
    torch.minimum(a, b, out=lo)
    torch.maximum(a, b, out=hi)
    return out, a, b


def _route(g: Tensor, swapped: Tensor, d: int) -> Tensor:
    """Functional (differentiable, traceable) gradient routing through one pair stage."""
    g0, g1 = _halves(g, d)
    return torch.stack((torch.where(swapped, g1, g0), torch.where(swapped, g0, g1)), d + 1).flatten(d, d + 1)


class _MaxMinEager(Function):
    """Eager MaxMin: preallocated output, integer swap mask, bitwise gradient swap."""

    @staticmethod
    def forward(ctx, x: Tensor, d: int) -> Tensor:
        out, a, b = _max_min_into(x, d)
        ctx.save_for_backward(_swap_mask(a, b, compact=True))  # one byte per pair
        ctx.d = d
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        (mask,) = ctx.saved_tensors
        d = ctx.d
        if torch.is_grad_enabled():  # double backward: differentiable in g
            return _route(g, mask.bool(), d), None
        # gx₀ ← (g₀ ⊕ g₁) ∧ m = t,  gx₁ ← g₁ ⊕ t,  gx₀ ← t ⊕ g₀: no temporary
        gx = torch.empty_like(g)
        it = _INT_OF_WIDTH[g.element_size()]
        g0, g1 = _halves(g.view(it), d)
        o0, o1 = _halves(gx.view(it), d)
        torch.bitwise_xor(g0, g1, out=o0).bitwise_and_(mask)
        torch.bitwise_xor(g1, o0, out=o1)
        o0.bitwise_xor_(g0)
        return gx, None


class _MaxMinTraceable(Function):
    """MaxMin from functional operations only, for compilers (no graph break)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, d: int) -> Tuple[Tensor, Tensor]:
        a, b = _halves(x, d)
        out = torch.stack((torch.minimum(a, b), torch.maximum(a, b)), d + 1).flatten(d, d + 1)
        return out, (torch.signbit(b - a) if x.is_floating_point() else a > b)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.d = inputs[1]
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])
        ctx.save_for_forward(output[1])

    @staticmethod
    def backward(ctx, g: Tensor, _g_mask):
        (swapped,) = ctx.saved_tensors
        return _route(g, swapped, ctx.d), None


class _MaxMinCompiled(Function):
    """MaxMin for ``torch.compile``: functional operations only, integer sign mask, bitwise swap.

    Same values and gradients (bit for bit) as :class:`_MaxMinEager` (its mask of the input's
    width, where eager keeps one byte), written without
    ``out=`` or in-place operations so that Dynamo traces it without a graph break. Requires
    a float dtype of 2, 4 or 8 bytes (other dtypes take :class:`_MaxMinTraceable`). Not
    differentiable twice (compiled graphs do not support double backward anyway).
    """

    @staticmethod
    def forward(x: Tensor, d: int) -> Tuple[Tensor, Tensor]:
        a, b = _halves(x, d)
        out = torch.stack((torch.minimum(a, b), torch.maximum(a, b)), d + 1).flatten(d, d + 1)
        width = x.element_size()
        return out, (b - a).view(_INT_OF_WIDTH[width]) >> (8 * width - 1)  # all ones where swapped

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.d = inputs[1]
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx, g: Tensor, _g_mask):
        (mask,) = ctx.saved_tensors
        d = ctx.d
        g0, g1 = _halves(g.view(mask.dtype), d)
        t = (g0 ^ g1) & mask
        return torch.stack((g0 ^ t, g1 ^ t), d + 1).flatten(d, d + 1).view(g.dtype), None


class _MaxMinFunctional(_MaxMinTraceable):
    """The same with a forward-mode rule, for ``torch.func`` transforms and forward AD."""

    @staticmethod
    def jvp(ctx, x_t: Tensor, _d_t):
        (swapped,) = ctx.saved_tensors
        return _route(x_t, swapped, ctx.d), None


def max_min(x: Tensor, dim: int = 1) -> Tensor:
    r"""MaxMin: ``(x₂ᵢ, x₂ᵢ₊₁) ↦ (min, max)`` for every consecutive pair along ``dim``.

    A permutation of the entries of each pair: 1-Lipschitz, gradient-norm preserving, its
    Jacobian a permutation matrix everywhere (ties included). NaN in a pair makes both outputs
    NaN. Differentiable to any order (second derivatives are zero), traceable by
    ``torch.compile`` without graph breaks.

    Args:
        x: input of any real dtype and any strides.
        dim: the dimension holding the pairs (1 for image channels, -1 for features);
            negative values count from the end. Its size must be even.

    Returns:
        A new tensor of the shape, dtype and layout of ``x``.

    Raises:
        ValueError: ``dim`` out of range, an odd size along ``dim``, complex input.

    Shape: (*) → (*).
    """
    d = _check(x, dim, 2, "MaxMin")
    mode = _mode(x)
    if mode == "eager":
        return _MaxMinEager.apply(x, d)
    if mode == "nograd":
        return _max_min_into(x, d)[0]
    if mode == "compile":
        fast = x.is_floating_point() and x.element_size() in _INT_OF_WIDTH
        return (_MaxMinCompiled if fast else _MaxMinTraceable).apply(x, d)[0]
    return _MaxMinFunctional.apply(x, d)[0]


# ---------------------------------------------------------------- sorting network (groups 4..64)
def _stages(size: int) -> List[Tuple[int, int]]:
    """Batcher's odd–even merge sort of ``size`` (a power of two) as stages (p, k).

    Stage (p, k) compares entries i and i + k of every block of 2p entries, for the i in
    [0, 2p) with ⌊i / k⌋ even when k = p, and i ∈ [k, 2p − k) with ⌊(i − k) / k⌋ even when
    k < p — Batcher's comparators, all at distance k and identical in every block, so that a
    stage is one compare-exchange of two strided views.
    """
    stages, p = [], 1
    while p < size:
        k = p
        while k >= 1:
            stages.append((p, k))
            k //= 2
        p *= 2
    return stages


def _stage_view(t: Tensor, d: int, p: int, k: int) -> Tensor:
    """View (…, blocks, chunks, 2, k, …) of the entries that stage (p, k) compares.

    Dim ``d`` is split into blocks of 2p entries (blocks never straddle two groups, as 2p
    divides the group size); the comparators of the stage pair axis ``d + 2``.
    """
    blocks = _split(t, d, (t.shape[d] // (2 * p), 2 * p))
    if k < p:
        blocks = blocks.narrow(d + 1, k, 2 * p - 2 * k)
    return _split(blocks, d + 1, (blocks.shape[d + 1] // (2 * k), 2, k))


def _network_inplace(x: Tensor, d: int, size: int, masks: Optional[List[Tensor]]) -> Tensor:
    """Sort a copy of x by the network in place; append each stage's swap mask to ``masks``."""
    out = x.clone(memory_format=torch.preserve_format)
    scratch = torch.empty(x.numel() // 2, dtype=x.dtype, device=x.device)  # largest stage: all pairs
    for p, k in _stages(size):
        v = _stage_view(out, d, p, k)
        a, b = v.select(d + 2, 0), v.select(d + 2, 1)
        if masks is not None:
            masks.append(_swap_mask(a, b, compact=True))
        lo = torch.minimum(a, b, out=scratch[: a.numel()].view(a.shape))
        torch.maximum(a, b, out=b)
        a.copy_(lo)
    return out


class _NetworkEager(Function):
    """Sorting network run in place on one buffer; one swap mask per stage."""

    @staticmethod
    def forward(ctx, x: Tensor, d: int, size: int) -> Tensor:
        masks: List[Tensor] = []
        out = _network_inplace(x, d, size, masks)
        ctx.save_for_backward(*masks)
        ctx.d, ctx.size = d, size
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        masks = ctx.saved_tensors
        d, size = ctx.d, ctx.size
        stages = list(zip(_stages(size), masks))[::-1]
        if torch.is_grad_enabled():  # double backward: differentiable in g
            for (p, k), mask in stages:
                g = _network_stage(g, d, p, k, lambda v, e, m=mask: _route(v, m.bool().unsqueeze(e), e))
            return g, None, None
        gx = g.clone(memory_format=torch.preserve_format)
        gi = gx.view(_INT_OF_WIDTH[g.element_size()])
        scratch = torch.empty(g.numel() // 2, dtype=gi.dtype, device=g.device)
        for (p, k), mask in stages:
            v = _stage_view(gi, d, p, k)
            a, b = v.select(d + 2, 0), v.select(d + 2, 1)
            t = torch.bitwise_xor(a, b, out=scratch[: a.numel()].view(a.shape)).bitwise_and_(mask)
            a.bitwise_xor_(t)
            b.bitwise_xor_(t)
        return gx, None, None


def _network_stage(x: Tensor, d: int, p: int, k: int, pair_op) -> Tensor:
    """Functional stage (p, k): ``pair_op(view, axis)`` on the compared entries, others kept."""
    done = pair_op(_stage_view(x, d, p, k), d + 2).flatten(d + 1, d + 3)
    if k < p:
        blocks = _split(x, d, (x.shape[d] // (2 * p), 2 * p))
        done = torch.cat((blocks.narrow(d + 1, 0, k), done, blocks.narrow(d + 1, 2 * p - k, k)), d + 1)
    return done.flatten(d, d + 1)


def _network_functional(x: Tensor, d: int, size: int) -> Tensor:
    for p, k in _stages(size):
        x = _network_stage(x, d, p, k, max_min)
    return x


def group_sort(x: Tensor, group_size: Optional[int], dim: int = 1) -> Tensor:
    r"""Sort ``x`` ascending within consecutive groups of ``group_size`` entries along ``dim``.

    ``group_size=None`` (or the size of ``dim``) sorts the whole dimension (FullSort);
    ``group_size=2`` is :func:`max_min`. A permutation of each group: 1-Lipschitz and
    gradient-norm preserving (the Jacobian is a permutation matrix everywhere). Power-of-two
    groups along a non-innermost memory axis use a sorting network of MaxMin stages (NaN
    spreads to the whole group), other groups ``torch.sort`` (NaN last): see the module notes.

    Args:
        x: input of any real dtype and any strides.
        group_size: positive integer dividing the size of ``dim``, or None.
        dim: the sorted dimension (negative values count from the end).

    Raises:
        ValueError: bad ``group_size``, ``dim`` out of range, size not divisible, complex input.

    Shape: (*) → (*).
    """
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size < 1):
        raise ValueError(f"group_size must be a positive integer or None, got {group_size!r}")
    d = _check(x, dim, group_size or 1, "GroupSort")
    size = x.shape[d] if group_size is None else group_size
    if size == 2:
        return max_min(x, d)
    if size <= 1:
        return x.clone()
    if (size & (size - 1) == 0 and size <= _NETWORK_MAX and x.stride(d) != 1
            and x.numel() >= _NETWORK_MIN_NUMEL):
        mode = _mode(x)
        if mode == "eager":
            return _NetworkEager.apply(x, d, size)
        if mode == "nograd":
            return _network_inplace(x, d, size, None)
        return _network_functional(x, d, size)
    grouped = _split(x, d, (x.shape[d] // size, size))
    return torch.sort(grouped, dim=d + 1).values.flatten(d, d + 1)
