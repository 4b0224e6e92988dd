r"""Block reflector orthogonal (BRO) layers: dense and convolutional (Fourier domain)."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..functional.skew import block_reflector, block_reflector_apply, fft_symbol
from ..parametrizations._common import compute_dtype
from ..parametrizations.block_reflector import BlockReflector
from ._conv_common import _kaiming_reset, _orthogonal_reset
from .cayley import _FourierConv2d
from .linear import _ParametrizedLinear, _check_features
from .soc import Size2, _check_same_conv

__all__ = ["BROLinear", "BROConv2d"]

_TRAIN_JITTER = 1e-6


class BROLinear(_ParametrizedLinear):
    r"""Linear layer with a block reflector weight: y = x Wᵀ + b, W = (I − 2V(VᵀV)⁻¹Vᵀ)[:out, :in].

    V (n × rank, n = max(in, out)) is the stored parameter
    (``parametrizations.weight.original``); I − 2V(VᵀV)⁻¹Vᵀ is orthogonal and symmetric, so W
    has orthonormal columns (out ≥ in) or rows (out < in), and for in = out the layer is an
    orthogonal involution (W = Wᵀ = W⁻¹). No iteration: one k×k solve per training step;
    in eval a float64 QR, cached (:class:`~liplayers.parametrizations.BlockReflector`).
    :meth:`lipschitz_bound` is the exact norm of the weight used (float64 SVD).

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        rank: rank of V, 1 ≤ rank ≤ n (default n // 2; ranks k and n − k give the same
            weights up to sign).

    Shape:
        - Input: (*, in_features)
        - Output: (*, out_features)

    Lai et al., "Enhancing Certified Robustness via Block Reflector Orthogonal Layers and
    Logit Annealing Loss", ICML 2025.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 rank: Optional[int] = None) -> None:
        _check_features("BROLinear", in_features, out_features)
        param = BlockReflector(out_features, in_features, rank)  # validates rank before allocating
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        parametrize.register_parametrization(self, "weight", param, unsafe=True)
        self.reset_parameters()

    @property
    def rank(self) -> int:
        """Rank of V (the weight map's)."""
        return self.parametrizations.weight[0].rank

    def reset_parameters(self) -> None:
        """Random V with orthonormal columns (a Haar-random block reflector), zero bias."""
        if not parametrize.is_parametrized(self, "weight"):
            nn.Linear.reset_parameters(self)  # called by nn.Linear.__init__, before the parametrization
            return
        _orthogonal_reset(self)


class BROConv2d(_FourierConv2d):
    r"""Exactly orthogonal convolution by block reflectors in the Fourier domain.

    Per frequency W(ω) = (I − 2V̂(V̂ᴴV̂)⁻¹V̂ᴴ)[:out, :in], V̂(ω) (n × rank) the transfer
    matrices (:func:`~liplayers.functional.skew.fft_symbol`) of the stored kernel
    ``weight`` (n, rank, kh, kw), n = max(in, out). I − 2V̂(V̂ᴴV̂)⁻¹V̂ᴴ is unitary and Hermitian,
    so with circular padding the layer y = irfft2(W · rfft2(x)) + b is an orthogonal
    convolution (isometry for out ≥ in, co-isometry for out < in).

    Training applies W(ω) without forming it (x − 2V̂ (V̂ᴴV̂ + δI)⁻¹ V̂ᴴx, δ = 1e-6·mean diag: a
    guard against numerically singular V̂(ω), which keeps every eigenvalue in (−1, 1]); eval
    uses W(ω) from a complex128 Householder QR of V̂(ω) (unitary to ~1e-16 whatever its
    conditioning), rounded to the working precision and cached per input size and parameter
    version. :meth:`lipschitz_bound` is the exact norm of the matrices used (needs
    ``input_shape``). ``padding_mode='zeros'`` runs the circular layer on the zero-padded
    (H + kh − 1)×(W + kw − 1) torus and crops (norm ≤ 1), as the authors' code does.

    Args:
        in_channels, out_channels, kernel_size, bias, device, dtype: as ``nn.Conv2d``.
        stride, dilation, groups: must be 1.
        padding: ``'same'`` (default) or the equivalent int (k − 1)/2 (odd k).
        padding_mode: ``'circular'`` (default, exactly orthogonal) or ``'zeros'``.
        rank: rank of V̂, 1 ≤ rank ≤ n (default n // 2).

    Shape:
        - Input: (B, in_channels, H, W)
        - Output: (B, out_channels, H, W)

    :meth:`to_torch` (``input_shape`` required) returns the equivalent ``nn.Conv2d`` for one input
    size: an H×W kernel with circular padding (a (2H − 1)×(2W − 1) kernel with zero padding).

    Lai et al., "Enhancing Certified Robustness via Block Reflector Orthogonal Layers and
    Logit Annealing Loss", ICML 2025.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size2, stride: Size2 = 1,
                 padding: Union[str, Size2] = "same", dilation: Size2 = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "circular", device=None, dtype=None, *, rank: Optional[int] = None) -> None:
        super().__init__()
        ks = _check_same_conv("BROConv2d", in_channels, out_channels, kernel_size, stride, padding, dilation,
                              groups, padding_mode)
        n = max(in_channels, out_channels)
        if rank is None:
            rank = max(1, n // 2)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= n:
            raise ValueError(f"BROConv2d: rank must be an integer in [1, {n}], got {rank!r}")
        self._init_common(in_channels, out_channels, ks, padding, padding_mode)
        self.rank = rank
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(n, rank, *ks, **fk))
        self.bias = nn.Parameter(torch.empty(out_channels, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv2d's kernel initialization for V, zero bias."""
        _kaiming_reset(self)

    def _params(self) -> Tuple[Tensor, ...]:
        return (self.weight,)

    def _symbol(self, grid, dtype, train: bool) -> Tensor:
        v_hat = fft_symbol(self.weight.to(dtype), grid)
        if train:
            return block_reflector(v_hat, self.out_channels, self.in_channels, "solve", jitter=_TRAIN_JITTER)
        return block_reflector(v_hat, self.out_channels, self.in_channels, "qr")

    def _train_apply(self, x: Tensor, grid: Tuple[int, int]) -> Tensor:
        cd = compute_dtype(x.dtype)
        v_hat = fft_symbol(self.weight.to(cd), grid)  # (H, Wf, n, rank)
        b, _, h, w = x.shape
        xf = torch.fft.rfft2(x.to(cd)).permute(2, 3, 1, 0).contiguous()  # (H, Wf, in, B)
        yf = block_reflector_apply(v_hat, xf, self.out_channels, jitter=_TRAIN_JITTER)
        return torch.fft.irfft2(yf.permute(3, 2, 0, 1), s=(h, w)).to(x.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}"
