"""Weight maps (``torch.nn.utils.parametrize``) that make a weight orthogonal or 1-Lipschitz.

One map per file: a weight is stored free and read through an orthonormalizing or normalizing
map, so ``state_dict``, optimizers, DDP and ``torch.compile`` keep working. Each map keeps an
eval-mode cache keyed on the stored parameter's version counter.

* :class:`BjorckOrthonormal` reads a weight through its polar factor (Björck iterations).
* :class:`SpectralNormalized` divides a weight by its spectral norm (power iteration).
"""
from ._common import compute_dtype, eval_mode_weight, orthogonal_init_, version_key
from .bjorck import BjorckOrthonormal
from .spectral import SpectralNormalized

_compute_dtype = compute_dtype  # older private name, still used inside the package

__all__ = ["BjorckOrthonormal", "SpectralNormalized", "eval_mode_weight", "orthogonal_init_"]
