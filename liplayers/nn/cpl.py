r"""Convex potential layers (CPL, Meunier, Delattre, Araujo & Allauzen, ICML 2022).

    h(x) = x − (2 / ‖W‖²) Wᵀ ReLU(W x + b)

is the gradient step x − ∇φ(x) on the convex potential φ(x) = (2/‖W‖²) Σ ψ(Wx + b)
(ψ' = ReLU). Its Jacobian is J = I − (2/c²) WᵀSW with S = diag(ReLU') ∈ [0, 1]: symmetric,
with eigenvalues in [1 − 2‖W‖²/c², 1], hence ‖J‖ ≤ 1 whenever the normalizer c is an
*upper bound* of ‖W‖ (for any activation with slopes in [0, 1], by the same argument on
secant slopes). With an underestimate (a power iteration that has not converged, a stale
estimate) the layer is not 1-Lipschitz, so here c is always a guaranteed bound:

* dense: :func:`~liplayers.functional.spectral.gram_spectral_bound` (Gram iteration,
  float64, a certified upper bound);
* convolution ('same' zero or circular padding, stride 1, odd kernel): the exact norm of
  the circular convolution on the grid of the input (H×W for circular padding,
  (H + k − 1)×(W + k − 1) for zero padding, which bounds the zero-padded operator), by FFT
  and float64 eigenvalues per frequency. Wᵀ is applied as the exact adjoint of W
  (``conv_transpose2d`` for zeros, the flipped kernel with the same circular padding).

The normalizer's *value* is that bound, in training and eval alike; its *gradient* is that
of the top singular value (a power iteration with a persistent vector for dense layers; the
top singular pair at the maximizing frequency for convolutions). In eval mode 1/c² is cached
per parameter version (and input size for convolutions).

Export: h is a residual *nonlinear* map (x minus a ReLU branch), so no single ``torch.nn``
module computes it and ``to_torch`` raises ``NotImplementedError``;
:func:`~liplayers.nn.export` keeps these layers as they are. In eval mode they are written
with standard operators only (convolutions, ReLU, products) and the eval normalizer enters
the graph as a constant, so ``torch.onnx.export`` (the TorchScript-based exporter,
``dynamo=False``) exports them as they run.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.conv import circular_conv2d, conv2d_lipschitz_bound, conv_symbol
from ..functional.spectral import gram_spectral_bound, spectral_norm_exact
from ..lipschitz import LipschitzModule
from ..parametrizations._common import version_key
from ._conv_common import _positive_int

__all__ = ["CPLLinear", "CPLConv2d"]

_MARGIN = 1.0 + 1e-9


# ---- helpers shared with the SLL layers -------------------------------------------------------
def _residual_conv_args(layer: str, channels, inner, kernel_size, padding_mode) -> Tuple[int, int, int]:
    """(channels, inner, k) after checking the arguments of a residual convolution."""
    channels = _positive_int(layer, "channels", channels)
    inner = channels if inner is None else _positive_int(layer, "inner_channels", inner)
    if isinstance(kernel_size, (tuple, list)):
        if len(kernel_size) != 2 or kernel_size[0] != kernel_size[1]:
            raise ValueError(f"{layer}: kernel_size must be an int or a square pair, got {kernel_size!r}")
        kernel_size = kernel_size[0]
    k = _positive_int(layer, "kernel_size", kernel_size)
    if k % 2 == 0:
        raise ValueError(f"{layer}: kernel_size must be odd ('same' padding with an exact adjoint), got {k}")
    _check_mode(layer, padding_mode)
    return channels, inner, k


def _init_residual_params(module: nn.Module, shape: Sequence[int], bias: bool, device, dtype) -> None:
    """The parameters of a residual layer: ``weight`` of ``shape`` (inner first), ``bias`` (inner,)
    or none, and an empty eval cache; initialize them with :func:`_reset_residual_params`."""
    fk = {"device": device, "dtype": dtype}
    module.weight = nn.Parameter(torch.empty(*shape, **fk))
    if bias:
        module.bias = nn.Parameter(torch.empty(shape[0], **fk))
    else:
        module.register_parameter("bias", None)
    module._cache_key = None
    module._cache = None


def _reset_residual_params(module: nn.Module, fan_in: int) -> None:
    """W Xavier-normal, b uniform in ±1/sqrt(fan_in) (as the papers' code), eval cache cleared."""
    with torch.no_grad():
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.uniform_(module.bias, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
    module._cache_key = None


def _check_mode(layer: str, padding_mode: str) -> None:
    if padding_mode not in ("zeros", "circular"):
        raise ValueError(f"{layer}: padding_mode must be 'zeros' or 'circular' (the adjoint must be exact and the "
                         f"padding must not copy pixels), got {padding_mode!r}")


def _circular(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    """Circular 'same' convolution (odd square kernel). When traced (``torch.onnx.export``,
    ``torch.jit.trace``) the same two operations as :func:`circular_conv2d`'s forward are written
    out (circular pad, valid convolution) instead of its custom-backward autograd function, which
    the tracer cannot export: identical values."""
    if torch.jit.is_tracing():
        p = (w.shape[-1] - 1) // 2
        return F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), w, b)
    return circular_conv2d(x, w, b)


def _conv(x: Tensor, w: Tensor, b: Optional[Tensor], mode: str) -> Tensor:
    """W x + b: 'same' convolution, stride 1, zero or circular padding."""
    p = (w.shape[-1] - 1) // 2
    if mode == "zeros":
        return F.conv2d(x, w, b, 1, p)
    if mode == "circular":
        return _circular(x, w, b)
    raise ValueError(f"padding_mode must be 'zeros' or 'circular', got {mode!r}")


def _conv_adjoint(y: Tensor, w: Tensor, mode: str) -> Tensor:
    """Wᵀ y, the exact adjoint of :func:`_conv` (without bias)."""
    p = (w.shape[-1] - 1) // 2
    if mode == "zeros":
        return F.conv_transpose2d(y, w, None, 1, p)
    if mode == "circular":
        return _circular(y, w.transpose(0, 1).flip(-2, -1), None)
    raise ValueError(f"padding_mode must be 'zeros' or 'circular', got {mode!r}")


@contextlib.contextmanager
def _untraced() -> Iterator[None]:
    """Suspend a ``torch.jit`` trace (``torch.onnx.export``) while an eval cache is computed: the
    cached tensor then enters the traced graph as a constant, as it does once the cache is warm,
    instead of the operations that computed it (some of which ONNX cannot express)."""
    state = torch._C._get_tracing_state() if torch.jit.is_tracing() else None
    if state is None:
        yield
        return
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


def _no_plain_equivalent(module: nn.Module) -> NotImplementedError:
    return NotImplementedError(
        f"{type(module).__name__}.to_torch: the layer is a residual nonlinear map x − W·relu(...) with no single "
        "torch.nn equivalent; liplayers.nn.export keeps it as it is, and in eval mode it exports to ONNX as it is "
        "(torch.onnx.export with dynamo=False)")


def _check_input(layer: str, x: Tensor, conv: bool, channels: int) -> None:
    if conv and (x.dim() != 4 or x.shape[1] != channels):
        raise ValueError(f"{layer} expects input (B, {channels}, H, W), got {tuple(x.shape)}")
    if not conv and (x.dim() < 1 or x.shape[-1] != channels):
        raise ValueError(f"{layer} expects input (*, {channels}), got {tuple(x.shape)}")


def _scaled_relu(z: Tensor, scale: Tensor) -> Tensor:
    """ReLU(z)·scale, in place on z (a fresh layer output) when autograd does not track it.

    The scale multiplies the activations, not the adjoint's weight: the map evaluated is then
    exactly the theorem's map with the parameters used (folding τ into the weight would use
    fl(τW) ≠ τW and break the symmetry of the Jacobian by a rounding)."""
    if z.requires_grad or scale.requires_grad:
        return F.relu(z, inplace=True) * scale
    return F.relu(z, inplace=True).mul_(scale)


def _inverse_square(c: float, like: Tensor) -> Tuple[Tensor, float]:
    """(τ = 1/c² as a 0-d tensor of ``like``'s dtype, the float c actually used).

    c is first raised to a floor that keeps τ finite in that dtype (raising an upper bound
    keeps it an upper bound). c = 0 (a guaranteed bound, so W = 0): the branch Wᵀ(…) vanishes
    for every τ, and τ = 0 keeps it exactly 0 (a huge τ would give 0·∞ = NaN for a positive bias)."""
    zero = c == 0.0
    c = max(c, 2.0 / math.sqrt(torch.finfo(like.dtype).max))
    return torch.tensor(0.0 if zero else 1.0 / (c * c), dtype=like.dtype, device=like.device), c


def _with_gradient(tau: Tensor, c: float, sigma: Tensor) -> Tensor:
    """τ with the value unchanged and the gradient of 1/σ² (σ a differentiable estimate of c)."""
    return tau + (-2.0 * tau.detach() / c) * (sigma - sigma.detach()).to(tau.dtype)


def _conv_norm(kernel: Tensor, grid: Tuple[int, int], with_gradient: bool) -> Tuple[float, Optional[Tensor]]:
    """Exact norm (× (1 + 1e-9)) of the circular convolution of ``kernel`` on ``grid``, and, if
    asked, the real tensor R (shape of the kernel) with σ_max = ⟨K, R⟩ at the maximizing
    frequency (R = Re(ū_o v_i e^{−i a·ω*}) from its top singular pair): the gradient of σ_max."""
    with torch.no_grad():
        k64 = kernel.detach().to(torch.float64)
        o, i, kh, kw = k64.shape
        sym = conv_symbol(k64, grid, half=True)  # (Gh, Gw//2+1, o, i)
        gram = sym.mH @ sym if o >= i else sym @ sym.mH
        top = torch.linalg.eigvalsh(gram)[..., -1]
        flat = int(top.argmax())
        c = math.sqrt(max(float(top.reshape(-1)[flat]), 0.0)) * _MARGIN
        if not math.isfinite(c):
            raise ValueError("the convolution kernel contains non-finite values (NaN or Inf)")
        if not with_gradient:
            return c, None
        jh, jw = divmod(flat, top.shape[1])
        u, _, vh = torch.linalg.svd(sym[jh, jw])
        dev = k64.device
        ph = 2 * math.pi * torch.remainder(torch.arange(kh, device=dev) * jh, grid[0]).to(torch.float64) / grid[0]
        pw = 2 * math.pi * torch.remainder(torch.arange(kw, device=dev) * jw, grid[1]).to(torch.float64) / grid[1]
        phase = torch.polar(torch.ones(kh, kw, dtype=torch.float64, device=dev), -(ph[:, None] + pw[None, :]))
        r = (u[:, 0].conj()[:, None, None, None] * vh[0].conj()[None, :, None, None] * phase).real
        return c, r


def _gram_symbol(kernel: Tensor, grid: Tuple[int, int]) -> Tensor:
    """G(ω) = K̂(ω)ᴴK̂(ω) of the smaller side on the half grid of ``conv_symbol(…, half=True)``
    (complex128, (Gh, Gw//2+1, n, n)), from the kernel's autocorrelation: G(ω) = Σ_d C_d e^{−i d·ω}
    with C_d = Σ_{b−a=d} K_aᵀK_b (one product for all pairs of taps, then one (F, D)·(D, n²)
    product for the D offsets and F frequencies) instead of F complex n×n products."""
    k = kernel.detach().to(torch.float64)
    if k.shape[0] < k.shape[1]:
        k = k.transpose(0, 1)  # ‖K̂‖ = ‖K̂ᵀ‖, and K̂ᵀ is the symbol of the channel-swapped kernel
    o, n, kh, kw = k.shape
    kf = k.permute(0, 2, 3, 1).reshape(o, kh * kw * n)
    m = (kf.T @ kf).reshape(kh, kw, n, kh, kw, n)  # m[a, :, b, :] = K_aᵀ K_b
    c = k.new_zeros(2 * kh - 1, 2 * kw - 1, n, n)
    for ah in range(kh):
        for aw in range(kw):
            for bh in range(kh):
                c[bh - ah + kh - 1, kw - 1 - aw: 2 * kw - 1 - aw] += m[ah, aw, :, bh].permute(1, 0, 2)
    gh, gw = int(grid[0]), int(grid[1])
    dev = k.device
    dh = torch.arange(-(kh - 1), kh, device=dev)
    dw = torch.arange(-(kw - 1), kw, device=dev)
    jh = torch.arange(gh, device=dev)
    jw = torch.arange(gw // 2 + 1, device=dev)
    th = 2 * math.pi * torch.remainder(jh[:, None] * dh[None, :], gh).to(torch.float64) / gh  # (Gh, Dh)
    tw = 2 * math.pi * torch.remainder(jw[:, None] * dw[None, :], gw).to(torch.float64) / gw  # (Gw', Dw)
    theta = (th[:, None, :, None] + tw[None, :, None, :]).reshape(gh * (gw // 2 + 1), -1)  # (F, D)
    cf = c.reshape(-1, n * n)
    g = torch.complex(torch.cos(theta) @ cf, -(torch.sin(theta) @ cf))
    return g.reshape(gh, gw // 2 + 1, n, n)


def _exact_norm(kernel: Tensor, grid: Tuple[int, int]) -> Tuple[float, int]:
    """(exact norm × (1 + 1e-9) of the circular convolution on ``grid``, flat half-grid index of the
    frequency where it is reached), from the float64 eigenvalues of :func:`_gram_symbol`."""
    g = _gram_symbol(kernel, grid)
    top = torch.linalg.eigvalsh(g.reshape(-1, *g.shape[-2:]))[..., -1]
    flat = int(top.argmax())
    c = math.sqrt(max(float(top[flat]), 0.0)) * _MARGIN
    if not math.isfinite(c):
        raise ValueError("the convolution kernel contains non-finite values (NaN or Inf)")
    return c, flat


def _top_pair_gradient(kernel: Tensor, grid: Tuple[int, int], flat: int) -> Tensor:
    """R (shape of the kernel) with σ_max(K̂(ω*)) = ⟨K, R⟩ at the half-grid frequency ``flat``:
    R = Re(ū_o v_i e^{−i a·ω*}) from the top singular pair (the gradient of σ_max there)."""
    with torch.no_grad():
        k64 = kernel.detach().to(torch.float64)
        o, i, kh, kw = k64.shape
        jh, jw = divmod(flat, grid[1] // 2 + 1)
        dev = k64.device
        ph = 2 * math.pi * torch.remainder(torch.arange(kh, device=dev) * jh, grid[0]).to(torch.float64) / grid[0]
        pw = 2 * math.pi * torch.remainder(torch.arange(kw, device=dev) * jw, grid[1]).to(torch.float64) / grid[1]
        phase = torch.polar(torch.ones(kh, kw, dtype=torch.float64, device=dev), -(ph[:, None] + pw[None, :]))
        sym = torch.einsum("oiab,ab->oi", k64.to(torch.complex128), phase)
        u, _, vh = torch.linalg.svd(sym)
        return (u[:, 0].conj()[:, None, None, None] * vh[0].conj()[None, :, None, None] * phase).real


# ---- dense ----------------------------------------------------------------------------------
class CPLLinear(LipschitzModule):
    r"""Dense convex potential layer h(x) = x − (2/c²) Wᵀ ReLU(Wx + b), c ≥ ‖W‖₂ guaranteed.

    (Meunier et al., ICML 2022; module docstring.) W has shape (inner_features, features);
    c is the Gram-iteration bound of ‖W‖₂ (float64, certified), recomputed at each training
    forward and cached per version of W in eval mode, where a forward costs two matrix
    products. The layer is 1-Lipschitz for every W and b; ``lipschitz_bound`` computes
    max(1, 2τ‖W‖² − 1) from the τ = 1/c² actually used and the exact ‖W‖ (≤ 1 + one rounding
    of τ). Initialization as the paper: W Xavier-normal, b uniform in ±1/sqrt(features).

    Args:
        features: size of the input and the output.
        bias: learn b (default True).
        device, dtype: as for ``nn.Linear``.
        inner_features: rows of W (default ``features``).
        bound_iterations: Gram-iteration steps of the bound (at most rank^(1/2^(t+1)) above
            ‖W‖: 10 steps are within 0.4% for rank 1024).

    Shape:
        - Input: (*, features)
        - Output: (*, features)
    """

    def __init__(self, features: int, bias: bool = True, device=None, dtype=None, *,
                 inner_features: Optional[int] = None, bound_iterations: int = 10) -> None:
        super().__init__()
        self.features = _positive_int("CPLLinear", "features", features)
        self.inner_features = features if inner_features is None else _positive_int(
            "CPLLinear", "inner_features", inner_features)
        self.bound_iterations = _positive_int("CPLLinear", "bound_iterations", bound_iterations)
        _init_residual_params(self, (self.inner_features, features), bias, device, dtype)
        self.register_buffer("u", torch.empty(self.inner_features, device=device, dtype=dtype))  # power-iteration vector
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_residual_params(self, self.features)
        with torch.no_grad():
            self.u.normal_()
            self.u.div_(self.u.norm().clamp_min(1e-30))

    def _bound(self, w: Tensor) -> float:
        c = float(gram_spectral_bound(w.detach(), self.bound_iterations))
        if not math.isfinite(c):
            raise ValueError("CPLLinear: the weight contains non-finite values (NaN or Inf)")
        return c

    @torch.compiler.disable  # the version check must run on every call
    def _eval_tau(self) -> Tuple[Tensor, float]:
        key = version_key(self.weight)
        if self._cache_key != key:
            with _untraced():
                self._cache = _inverse_square(self._bound(self.weight), self.weight)
            self._cache_key = key
        return self._cache  # type: ignore[return-value]

    @torch.compiler.disable
    def _train_tau(self) -> Tensor:
        w = self.weight
        tau, c = _inverse_square(self._bound(w), w)
        with torch.no_grad():  # one power iteration from the persistent vector (gradient only)
            u = self.u.to(w.dtype)
            v = F.normalize(w.detach().t() @ u, dim=0)
            u = F.normalize(w.detach() @ v, dim=0)
            self.u.copy_(u)
        return _with_gradient(tau, c, u @ w @ v)

    def normalizer(self) -> float:
        """The guaranteed bound c ≥ ‖W‖₂ used in eval mode now."""
        return self._eval_tau()[1]

    def forward(self, x: Tensor) -> Tensor:
        _check_input("CPLLinear", x, False, self.features)
        tau = self._train_tau() if self.training else self._eval_tau()[0]
        z = _scaled_relu(F.linear(x, self.weight, self.bias), 2 * tau)
        return x - F.linear(z, self.weight.t())

    def lipschitz_bound(self, input_shape=None) -> float:
        """max(1, 2τ‖W‖² − 1) from the eval τ and the exact ‖W‖ (float64 SVD, +1e-9): 1 + O(1e-7) in float32."""
        tau = float(self._eval_tau()[0])
        s = float(spectral_norm_exact(self.weight))
        return max(1.0, 2.0 * tau * s * s - 1.0) * _MARGIN

    def to_torch(self) -> nn.Module:
        """Not available: a residual nonlinear map (module docstring, "Export")."""
        raise _no_plain_equivalent(self)

    def extra_repr(self) -> str:
        return f"features={self.features}, inner_features={self.inner_features}, bias={self.bias is not None}"


# ---- convolution ----------------------------------------------------------------------------------
class CPLConv2d(LipschitzModule):
    r"""Convolutional convex potential layer h(x) = x − (2/c²) Kᵀ ReLU(K x + b), c ≥ ‖K‖ guaranteed.

    (Meunier et al., ICML 2022; module docstring.) K is a 'same' convolution (odd
    ``kernel_size``, stride 1) from ``channels`` to ``inner_channels`` with zero or circular
    padding, Kᵀ its exact adjoint. c is the exact FFT norm of the circular convolution on the
    input's grid (exact for circular padding, an upper bound for zero padding), computed at
    every training forward (float64 eigenvalues at H·(W/2 + 1) frequencies — the dominant
    cost for wide layers) and cached per (version of K, input size) in eval mode. The layer
    is 1-Lipschitz for every K and b, at every input size.

    Args:
        channels: input and output channels.
        kernel_size: odd int.
        inner_channels: output channels of K (default ``channels``).
        bias: learn b (default True).
        padding_mode: ``'zeros'`` (default) or ``'circular'``.
        device, dtype: as for ``nn.Conv2d``.

    Shape:
        - Input: (B, channels, H, W)
        - Output: (B, channels, H, W)
    """

    def __init__(self, channels: int, kernel_size: int, inner_channels: Optional[int] = None, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None) -> None:
        super().__init__()
        self.channels, self.inner_channels, k = _residual_conv_args("CPLConv2d", channels, inner_channels,
                                                                    kernel_size, padding_mode)
        self.kernel_size = (k, k)
        self.padding_mode = padding_mode
        _init_residual_params(self, (self.inner_channels, self.channels, k, k), bias, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_residual_params(self, self.channels * self.kernel_size[0] * self.kernel_size[1])

    def _grid(self, hw: Sequence[int]) -> Tuple[int, int]:
        _check_mode("CPLConv2d", self.padding_mode)
        h, w = int(hw[0]), int(hw[1])
        if self.padding_mode == "circular":
            return h, w
        span = self.weight.shape[-1] - 1
        return h + span, w + span

    @torch.compiler.disable  # the version check must run on every call
    def _eval_tau(self, hw: Sequence[int]) -> Tuple[Tensor, float]:
        grid = self._grid(hw)
        key = (version_key(self.weight), grid, self.padding_mode)
        if self._cache_key != key:
            with _untraced():
                self._cache = _inverse_square(_conv_norm(self.weight, grid, False)[0], self.weight)
            self._cache_key = key
        return self._cache  # type: ignore[return-value]

    @torch.compiler.disable
    def _train_tau(self, hw: Sequence[int]) -> Tensor:
        w = self.weight
        grid = self._grid(hw)
        c, flat = _exact_norm(w, grid)
        r = _top_pair_gradient(w, grid, flat)
        tau, c = _inverse_square(c, w)
        return _with_gradient(tau, c, (w * r.to(w.dtype)).sum())

    def normalizer(self, input_shape: Sequence[int]) -> float:
        """The guaranteed bound c ≥ ‖K‖ used in eval mode for inputs of ``input_shape`` ((C,) H, W)."""
        return self._eval_tau(tuple(input_shape)[-2:])[1]

    def forward(self, x: Tensor) -> Tensor:
        _check_input("CPLConv2d", x, True, self.channels)
        hw = tuple(x.shape[-2:])
        tau = self._train_tau(hw) if self.training else self._eval_tau(hw)[0]
        z = _scaled_relu(_conv(x, self.weight, self.bias, self.padding_mode), 2 * tau)
        return x - _conv_adjoint(z, self.weight, self.padding_mode)

    def lipschitz_bound(self, input_shape: Optional[Sequence[int]] = None) -> float:
        r"""Guaranteed bound of the eval-mode layer.

        With ``input_shape``: max(1, 2τ‖K‖² − 1) from the τ used at that size and the
        guaranteed :func:`~liplayers.functional.conv.conv2d_lipschitz_bound` of K. Without:
        at every size τ = fl(1/c²) with c ≥ ‖K‖ proved (exact FFT norm with a 1e-9 margin), one
        float64 division and one rounding to the weight's dtype, so 2τ‖K‖² ≤ 2(1 + ε/2)(1 + 2⁻⁵⁰)
        (ε the dtype's machine epsilon): the bound 1 + ε + 1e-12 holds for every input size.
        """
        _check_mode("CPLConv2d", self.padding_mode)
        if input_shape is None:
            return 1.0 + torch.finfo(self.weight.dtype).eps + 1e-12
        tau = float(self._eval_tau(tuple(input_shape)[-2:])[0])
        p = (self.weight.shape[-1] - 1) // 2
        s = conv2d_lipschitz_bound(self.weight, input_shape, 1, p, 1, self.padding_mode)
        return max(1.0, 2.0 * tau * s * s - 1.0) * _MARGIN

    def to_torch(self) -> nn.Module:
        """Not available: a residual nonlinear map (module docstring, "Export")."""
        raise _no_plain_equivalent(self)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, inner_channels={self.inner_channels}, kernel_size={self.kernel_size}, "
                f"padding_mode={self.padding_mode!r}, bias={self.bias is not None}")
