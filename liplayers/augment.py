r"""Image augmentation with torch operations only: random crops (translations) and flips.

The transforms of the certified-robustness training recipes on CIFAR-10 (random crop of a
zero-padded image, i.e. a random translation by at most ``padding`` pixels, and a random
horizontal flip), applied to a whole batch at once on its device. Randomness comes from a
``torch.Generator`` so that a run is reproducible; labels are never touched and shapes are
preserved.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_crop", "random_horizontal_flip", "ImageAugmentation"]

_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def _check_images(x) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"expected a batch of images (B, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    return x


def _randint(high: int, n: int, generator: Optional[torch.Generator], device) -> Tensor:
    dev = generator.device if generator is not None else "cpu"
    return torch.randint(0, high, (n,), generator=generator, device=dev).to(device)


def random_crop(x: Tensor, padding: int = 4, generator: Optional[torch.Generator] = None,
                padding_mode: str = "zeros") -> Tensor:
    r"""Pad each image by ``padding`` pixels and crop it back at a random offset, per image.

    Equivalently (for zero padding) a random translation by (dy, dx) ∈ [−padding, padding]²
    with zeros shifted in. Shape preserved.

    Args:
        x: images (B, C, H, W).
        padding: largest shift in pixels (0: identity).
        generator: source of the offsets (default: torch's global generator).
        padding_mode: ``'zeros'`` (default), ``'reflect'``, ``'replicate'`` or ``'circular'``.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """
    _check_images(x)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
    if padding_mode not in _MODES:
        raise ValueError(f"padding_mode must be one of {tuple(_MODES)}, got {padding_mode!r}")
    if padding == 0 or x.shape[0] == 0:
        return x
    b, c, h, w = x.shape
    xp = F.pad(x, (padding,) * 4, mode=_MODES[padding_mode])
    dy = _randint(2 * padding + 1, b, generator, x.device)
    dx = _randint(2 * padding + 1, b, generator, x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[batch, rows, cols]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_horizontal_flip(x: Tensor, p: float = 0.5, generator: Optional[torch.Generator] = None) -> Tensor:
    """Flip each image left–right with probability ``p`` (independently per image). Shape preserved."""
    _check_images(x)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    dev = generator.device if generator is not None else "cpu"
    flip = (torch.rand(x.shape[0], generator=generator, device=dev) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class ImageAugmentation:
    """Random crop with padding (a random translation) and an optional horizontal flip.

    ``aug(x)`` returns augmented images; ``aug(x, y)`` returns ``(augmented x, y)`` with the
    labels unchanged. Seeded through ``generator`` (or ``seed``, which makes a CPU generator).

    Args:
        padding: largest translation in pixels (4 for CIFAR-10; 0 disables the crop).
        flip: also flip left–right with probability ``flip_p`` (do not use on digits).
        flip_p: probability of a flip.
        padding_mode: see :func:`random_crop`.
        generator: a ``torch.Generator``; ``seed``: an int to make one.

    Shape:
        - Input: (B, C, H, W) (and labels (B,), returned as given)
        - Output: (B, C, H, W)
    """

    def __init__(self, padding: int = 4, flip: bool = True, flip_p: float = 0.5, padding_mode: str = "zeros",
                 generator: Optional[torch.Generator] = None, seed: Optional[int] = None) -> None:
        if generator is not None and seed is not None:
            raise ValueError("pass either generator or seed, not both")
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
        if padding_mode not in _MODES:
            raise ValueError(f"padding_mode must be one of {tuple(_MODES)}, got {padding_mode!r}")
        if isinstance(flip_p, bool) or not isinstance(flip_p, (int, float)) or not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be a probability in [0, 1], got {flip_p!r}")
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        self.padding, self.flip, self.flip_p = padding, bool(flip), float(flip_p)
        self.padding_mode, self.generator = padding_mode, generator

    def __call__(self, x: Tensor, y: Optional[Tensor] = None) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        out = random_crop(x, self.padding, self.generator, self.padding_mode)
        if self.flip:
            out = random_horizontal_flip(out, self.flip_p, self.generator)
        return out if y is None else (out, y)

    def __repr__(self) -> str:
        return (f"ImageAugmentation(padding={self.padding}, flip={self.flip}, flip_p={self.flip_p}, "
                f"padding_mode={self.padding_mode!r})")
