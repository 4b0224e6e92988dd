r"""Maths of the skew-symmetric / Fourier-domain orthogonal layers: SOC, Cayley and BRO.

**Skew-symmetric convolution (SOC).** For a kernel K (c, c, kh, kw) with odd kh, kw, the
adjoint of the stride-1 'same' convolution with K (zero *or* circular padding) is the
convolution with the transposed kernel Kᵀ[i, j, a, b] = K[j, i, kh−1−a, kw−1−b]
(:func:`transpose_kernel`). So S = K − Kᵀ (:func:`skew_kernel`) defines a skew-symmetric
operator A (Aᵀ = −A, exactly even in floating point: ``x − y`` is the exact negation of
``y − x``), exp(A) is orthogonal, and the layer applies the truncated series
T_k(A) x = Σ_{i≤k} Aⁱx / i! (:func:`conv_exponential`). T_k(A) is *not* orthogonal: with
a guaranteed bound a ≥ ‖A‖₂,

    ‖T_k(A)‖ ≤ ‖exp(A)‖ + ‖Σ_{i>k} Aⁱ/i!‖ ≤ 1 + Σ_{i>k} aⁱ/i! ≤ 1 + a^{k+1}/(k+1)! · 1/(1 − a/(k+2))

(the tail is dominated by a geometric series of ratio a/(k+2) < 1; :func:`exp_tail_bound`),
and the same tail bounds ‖T_k(A) − exp(A)‖ (Singla & Feizi, "Skew Orthogonal Convolutions",
ICML 2021).

**Fourier-domain layers.** A circular stride-1 'same' convolution on an H×W grid is
block-diagonalized by the 2-D DFT: with torch's convention X(ω) = Σ_n x[n] e^{−iω·n},
y = conv(x, K) has Y(ω) = K̂(ω) X(ω), K̂(ω) = Σ_a K[a] e^{+iω·(a−p)} (p the left padding;
:func:`fft_symbol`). Any family of matrices Q(ω) with Q(−ω) = conj Q(ω) defines a real
circular convolution y = irfft2(Q · rfft2(x)) (:func:`spectral_conv2d`), whose singular
values are the union of those of the Q(ω). Hence:

* Cayley (Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley
  Transform", ICLR 2021): Q(ω) = (I − A(ω))(I + A(ω))⁻¹ with the skew-Hermitian
  A(ω) = K̂(ω) − K̂(ω)ᴴ is unitary (:func:`cayley`); for a tall K̂ (out > in) zero-padded to a
  square, the first ``in`` columns are [2M − I; −2VM], M = (I + U − Uᴴ + VᴴV)⁻¹ with
  K̂ = [U; V] — one in×in inverse, and I + A has Hermitian part ⪰ I, so it is well
  conditioned;
* BRO (Lai et al., "Enhancing Certified Robustness via Block Reflector Orthogonal Layers
  and Logit Annealing Loss", ICML 2025): W = I − 2V(VᴴV)⁻¹Vᴴ = I − 2P, P the orthogonal
  projector onto range(V), is unitary and Hermitian (:func:`block_reflector`); per
  frequency with V̂(ω) for the convolution.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .conv import circular_conv2d

__all__ = [
    "transpose_kernel",
    "skew_kernel",
    "exp_tail_bound",
    "exp_terms_for_tolerance",
    "conv_exponential",
    "exp_series_matrices",
    "fft_symbol",
    "spectral_conv2d",
    "cayley",
    "block_reflector",
    "block_reflector_apply",
]

_MARGIN = 1.0 + 1e-9


# ---- SOC ----------------------------------------------------------------------------------------
def transpose_kernel(kernel: Tensor) -> Tensor:
    """Kernel of the adjoint of a stride-1 'same' convolution (odd kernel): swap channels, flip taps."""
    if kernel.dim() != 4:
        raise ValueError(f"kernel must have shape (out, in, kh, kw), got {tuple(kernel.shape)}")
    return kernel.transpose(0, 1).flip(-2, -1)


def skew_kernel(kernel: Tensor) -> Tensor:
    """S = K − Kᵀ: the kernel of a skew-symmetric 'same' convolution (square channels, odd size)."""
    if kernel.dim() != 4 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"skew_kernel needs a kernel (c, c, kh, kw), got {tuple(kernel.shape)}")
    if kernel.shape[2] % 2 == 0 or kernel.shape[3] % 2 == 0:
        raise ValueError(f"skew_kernel needs odd kernel sizes (a centred tap), got {tuple(kernel.shape[2:])}")
    return kernel - transpose_kernel(kernel)


def exp_tail_bound(a: float, terms: int) -> float:
    """Guaranteed bound of Σ_{i>k} aⁱ/i! for k = ``terms`` and a ≥ 0 (float64, +1e-9 relative).

    Returns ``inf`` when a ≥ k + 2 (the geometric majorant does not apply; use more terms).
    """
    a = float(a)
    if not a >= 0.0 or not math.isfinite(a):
        raise ValueError(f"a must be a finite number >= 0, got {a}")
    if terms < 0:
        raise ValueError(f"terms must be >= 0, got {terms}")
    if a == 0.0:
        return 0.0
    if a >= terms + 2:
        return math.inf
    log_first = (terms + 1) * math.log(a) - math.lgamma(terms + 2)
    return math.exp(log_first) / (1.0 - a / (terms + 2)) * _MARGIN


def exp_terms_for_tolerance(a: float, tol: float, max_terms: int = 60) -> int:
    """Smallest k with ``exp_tail_bound(a, k) <= tol``; ValueError if more than ``max_terms``."""
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    for k in range(max_terms + 1):
        if exp_tail_bound(a, k) <= tol:
            return k
    raise ValueError(f"the skew operator's norm bound {a:.4g} needs more than {max_terms} series terms "
                     f"for tolerance {tol:g}")


def _same_conv(x: Tensor, kernel: Tensor, mode: str) -> Tensor:
    if mode == "circular":
        return circular_conv2d(x, kernel)
    return F.conv2d(x, kernel, None, 1, (kernel.shape[-2] // 2, kernel.shape[-1] // 2))


def _circular_pad(z: Tensor, ph: int, pw: int) -> Tensor:
    """``F.pad(z, (pw, pw, ph, ph), mode="circular")`` keeping z's memory format (torch's circular
    pad of a channels-last tensor is ~10× slower and returns a contiguous one). Needs ph ≤ H, pw ≤ W."""
    if ph:
        z = torch.cat([z[..., -ph:, :], z, z[..., :ph, :]], dim=-2)
    if pw:
        z = torch.cat([z[..., -pw:], z, z[..., :pw]], dim=-1)
    return z


class _ConvExponential(torch.autograd.Function):
    """Horner evaluation of the truncated series with a hand-written backward (channels-last).

    With p_{k+1} = x and p_i = x + (A/i) p_{i+1} (A the convolution with K), y = p_1 and, for
    g_1 = ∂L/∂y and g_{i+1} = (A/i)ᵀ g_i: ∂L/∂K = Σ_i (1/i) ∂⟨g_i, K p_{i+1}⟩/∂K (one kernel
    gradient per term), ∂L/∂x = Σ_i g_i + (A/k)ᵀ g_k. Every tensor is kept channels-last, so
    each term costs one convolution forward, one kernel gradient and one input gradient of the
    convolution library's fastest layout, with no format conversion inside the loop.
    """

    @staticmethod
    def forward(ctx, x, kernel, terms, mode):  # type: ignore[override]
        fmt = torch.channels_last
        xc = x.contiguous(memory_format=fmt)
        ph, pw = kernel.shape[-2] // 2, kernel.shape[-1] // 2
        saved, z = [], xc
        for i in range(terms, 0, -1):
            k_i = kernel / float(i)
            if mode == "circular":
                zp = _circular_pad(z, ph, pw)
                saved.append(zp)
                t = F.conv2d(zp, k_i)
            else:
                saved.append(z)
                t = F.conv2d(z, k_i, None, 1, (ph, pw))
            z = xc + t
        ctx.save_for_backward(kernel, *saved)
        ctx.conf = (terms, mode, x.is_contiguous())
        return z.contiguous() if x.is_contiguous() else z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):  # type: ignore[override]
        kernel, *saved = ctx.saved_tensors
        terms, mode, contiguous = ctx.conf
        need_x, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ph, pw = kernel.shape[-2] // 2, kernel.shape[-1] // 2
        kt = transpose_kernel(kernel)
        g = gy.contiguous(memory_format=torch.channels_last)
        gx = g.clone() if need_x else None
        gk = torch.zeros_like(kernel) if need_k else None
        for i in range(1, terms + 1):  # saved[terms - i] is p_{i+1}, the input of the i-th convolution
            inp = saved[terms - i]
            last = i == terms
            if need_k:
                pad = (0, 0) if mode == "circular" else (ph, pw)
                gk_i = torch.ops.aten.convolution_backward(g, inp, kernel, None, [1, 1], list(pad), [1, 1], False,
                                                           [0, 0], 1, [False, True, False])[1]
                gk.add_(gk_i, alpha=1.0 / i)
            if last and not need_x:
                break
            if mode == "circular":
                g = F.conv2d(_circular_pad(g, ph, pw), kt / float(i))
            else:
                g = torch.ops.aten.convolution_backward(g, inp, kernel / float(i), None, [1, 1], [ph, pw], [1, 1],
                                                        False, [0, 0], 1, [True, False, False])[0]
            if need_x:
                gx.add_(g)
        if gx is not None and contiguous:
            gx = gx.contiguous()
        return gx, gk, None, None


def conv_exponential(x: Tensor, kernel: Tensor, terms: int, padding_mode: str = "zeros") -> Tensor:
    """Σ_{i≤terms} Aⁱx / i! with A the stride-1 'same' convolution with ``kernel`` (odd size).

    Evaluated by Horner's rule, x + (A/1)(x + (A/2)(x + … (x + (A/k) x))): the factors 1/i
    scale the (small) kernel instead of the activations. When a gradient is needed, one
    autograd node with a hand-written backward keeps every activation channels-last (faster
    convolutions and input gradients on CPU); the result has the memory format of ``x``.
    Equal to the term-by-term sum in exact arithmetic.

    Shapes: x (B, c, H, W), kernel (c, c, kh, kw) → (B, c, H, W). Differentiable (once).
    """
    kh, kw = kernel.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"conv_exponential needs odd kernel sizes, got {(kh, kw)}")
    if padding_mode not in ("zeros", "circular"):
        raise ValueError(f"padding_mode must be 'zeros' or 'circular', got {padding_mode!r}")
    if terms < 1:
        return x
    if (torch.is_grad_enabled() and (x.requires_grad or kernel.requires_grad) and x.dim() == 4
            and kernel.shape[0] == kernel.shape[1] == x.shape[1] and not torch.jit.is_tracing()):
        return _ConvExponential.apply(x, kernel, terms, padding_mode)
    z = x
    for i in range(terms, 0, -1):
        z = x + _same_conv(z, kernel / float(i), padding_mode)
    return z


def exp_series_matrices(a: Tensor, terms: int) -> Tensor:
    """Σ_{i≤terms} Aⁱ / i! for a batch of square matrices (…, c, c), by Horner's rule.

    Applied per frequency to the transfer matrices of a skew convolution it gives those of the
    truncated series of circular convolutions (:func:`conv_exponential`), exactly in exact
    arithmetic.
    """
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    p = eye.expand_as(a)
    for i in range(terms, 0, -1):
        p = eye + (a @ p) / float(i)
    return p


# ---- Fourier domain -----------------------------------------------------------------------------
def _phases(k: int, n: int, left: int, m: int, dtype: torch.dtype, device) -> Tensor:
    """exp(+2πi (a − left) j / n) for a < k, j < m, reduced mod n in integers (complex)."""
    a = torch.arange(k, device=device, dtype=torch.int64) - left
    j = torch.arange(m, device=device, dtype=torch.int64)
    r = torch.remainder(a[:, None] * j[None, :], n).to(torch.float64)
    return torch.polar(torch.ones_like(r), 2 * math.pi * r / n).to(dtype)


def fft_symbol(kernel: Tensor, size: Tuple[int, int]) -> Tensor:
    """Per-frequency matrices K̂(ω) of the circular stride-1 'same' convolution on an H×W grid.

    K̂(ω) = Σ_a K[a] e^{+iω·(a − p)} (p = ((kh−1)//2, (kw−1)//2), torch's 'same'), on the
    half spectrum of ``torch.fft.rfft2``: ω = 2π (j_h/H, j_w/W), j_w ≤ W//2. The kernel may be
    larger than the grid (it wraps around). Differentiable in ``kernel``.

    Shapes: kernel (out, in, kh, kw), real → (H, W//2 + 1, out, in), complex (complex128 for
    float64 kernels, complex64 otherwise).
    """
    if kernel.dim() != 4:
        raise ValueError(f"kernel must have shape (out, in, kh, kw), got {tuple(kernel.shape)}")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"grid size must be positive, got {(h, w)}")
    out, cin, kh, kw = kernel.shape
    cdtype = torch.complex128 if kernel.dtype == torch.float64 else torch.complex64
    eh = _phases(kh, h, (kh - 1) // 2, h, cdtype, kernel.device)  # (kh, H)
    ew = _phases(kw, w, (kw - 1) // 2, w // 2 + 1, cdtype, kernel.device)  # (kw, Wf)
    phase = (eh[:, None, :, None] * ew[None, :, None, :]).reshape(kh * kw, -1)  # (kh·kw, H·Wf)
    real = kernel.to(phase.real.dtype).reshape(out * cin, kh * kw)
    # two real products (cheaper than a complex one, and a real backward)
    sym = torch.complex(real @ phase.real, real @ phase.imag)  # (o·i, H·Wf)
    return sym.reshape(out, cin, h, w // 2 + 1).permute(2, 3, 0, 1).contiguous()


def spectral_conv2d(x: Tensor, symbol: Tensor) -> Tensor:
    """irfft2(Q(ω) · rfft2(x)): the real circular convolution with per-frequency matrices Q.

    ``symbol`` must satisfy Q(−ω) = conj Q(ω) (true for every map built here from a real
    kernel), so the result is the real linear map whose singular values are those of the Q(ω).
    Shapes: x (B, in, H, W) real, symbol (H, W//2+1, out, in) complex → (B, out, H, W).
    """
    b, cin, h, w = x.shape
    if symbol.shape[:2] != (h, w // 2 + 1) or symbol.shape[-1] != cin:
        raise ValueError(f"symbol of shape {tuple(symbol.shape)} does not match input {tuple(x.shape)}")
    xf = torch.fft.rfft2(x.to(symbol.real.dtype))  # (B, in, H, Wf)
    xt = xf.permute(2, 3, 1, 0).contiguous()  # (H, Wf, in, B): one copy, then a plain batched matmul
    yt = torch.matmul(symbol, xt)  # (H, Wf, out, B)
    y = torch.fft.irfft2(yt.permute(3, 2, 0, 1), s=(h, w))
    return y.to(x.dtype)


def cayley(k_hat: Tensor) -> Tensor:
    """Semi-unitary Cayley transform of a batch of matrices (…, out, in).

    Returns the first ``min`` columns/rows of Q = (I − A)(I + A)⁻¹, A = K̃ − K̃ᴴ with K̃ the
    matrix zero-padded to n = max(out, in) (module docstring): orthonormal columns if
    out ≥ in, orthonormal rows otherwise. Differentiable (one batched LU of the min side).
    """
    out, cin = k_hat.shape[-2:]
    if out < cin:
        return cayley(k_hat.mH).mH
    u, v = k_hat[..., :cin, :], k_hat[..., cin:, :]
    eye = torch.eye(cin, dtype=k_hat.dtype, device=k_hat.device)
    a = u - u.mH
    if out > cin:
        a = a + v.mH @ v
    m = torch.linalg.inv(eye + a)
    top = 2 * m - eye
    if out == cin:
        return top
    return torch.cat((top, -2 * (v @ m)), dim=-2)


def block_reflector(v: Tensor, out: Optional[int] = None, cin: Optional[int] = None, method: str = "qr",
                    jitter: float = 0.0) -> Tensor:
    """(I − 2V(VᴴV)⁻¹Vᴴ)[:out, :in] for a batch of V (…, n, k), k ≤ n.

    ``method="qr"``: I − 2QQᴴ with Q from a Householder QR of V — orthonormal to working
    precision whatever the conditioning of V (a rank-deficient V gives the reflector of some
    k-dimensional space containing range V; still unitary). ``method="solve"``: the formula
    with the Gram matrix VᴴV + δI, δ = ``jitter``·mean(diag(VᴴV)) + tiny: cheaper, accurate to
    ~eps·κ(V)², and with δ > 0 every eigenvalue lies in (−1, 1], so the map is never expansive.
    """
    n, k = v.shape[-2:]
    out = n if out is None else out
    cin = n if cin is None else cin
    if k > n or out > n or cin > n:
        raise ValueError(f"block_reflector: V of shape {tuple(v.shape[-2:])} and output {out}×{cin} need k, out, in <= n")
    eye = torch.eye(n, dtype=v.dtype, device=v.device)[:out, :cin]
    if method == "qr":
        q, _ = torch.linalg.qr(v, mode="reduced")
        return eye - 2 * (q[..., :out, :] @ q[..., :cin, :].mH)
    if method == "solve":
        g = _jittered_gram(v, jitter)
        return eye - 2 * (v[..., :out, :] @ torch.linalg.solve(g, v[..., :cin, :].mH))
    raise ValueError(f"method must be 'qr' or 'solve', got {method!r}")


def block_reflector_apply(v: Tensor, x: Tensor, out: int, jitter: float = 1e-6) -> Tensor:
    """(I − 2V(VᴴV + δI)⁻¹Vᴴ)[:out, :in] @ x without forming the n×n matrix (training path).

    Shapes: v (…, n, k), x (…, in, B) → (…, out, B). Cost O(n·k·B + k³) per matrix.
    """
    cin = x.shape[-2]
    g = _jittered_gram(v, jitter)
    z = torch.linalg.solve(g, v[..., :cin, :].mH @ x)  # (…, k, B)
    y = -2 * (v[..., :out, :] @ z)
    if out <= cin:
        return y + x[..., :out, :]
    return torch.cat((y[..., :cin, :] + x, y[..., cin:, :]), dim=-2)


def _jittered_gram(v: Tensor, jitter: float) -> Tensor:
    g = v.mH @ v
    k = g.shape[-1]
    eye = torch.eye(k, dtype=g.dtype, device=g.device)
    if jitter > 0:
        d = g.diagonal(dim1=-2, dim2=-1).real.mean(-1).detach()
        delta = jitter * d + torch.finfo(d.dtype).tiny
        g = g + delta[..., None, None] * eye
    return g
