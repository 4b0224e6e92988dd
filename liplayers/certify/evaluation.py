r"""Per-sample certificates: :class:`Certifier` and :func:`certify`.

* :func:`certify` — (prediction, certified radius) of each input, from the model's eval-mode
  logits and a guaranteed Lipschitz bound (generic margin certificate, and by default also
  the tighter last-linear-layer certificate when the model ends with a linear layer; both
  are sound, so the larger radius is returned).
* :func:`split_last_linear` — the (body, last linear layer) split that certificate uses.

Certified accuracy over a data set and its plot are in :mod:`liplayers.certify.accuracy`
(:func:`certified_accuracy`, :class:`CertifiedAccuracy`, :func:`plot_certified_accuracy`; still
importable from here).
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..lipschitz import UnboundedModuleError, eval_mode
from ..nn.container import Sequential
from ..nn.linear import _ParametrizedLinear
from ..utils import check_finite_tensor, check_positive_int, iter_batches
from .bounds import lipschitz_bound
from .margins import (
    _positive,
    certified_radius,
    certified_radius_last_layer,
    normalize_norm,
    predict_from_logits,
)

__all__ = [
    "certify",
    "certified_accuracy",
    "CertifiedAccuracy",
    "plot_certified_accuracy",
    "split_last_linear",
    "Certifier",
]


# forwards that compute F.linear(x, self.weight, self.bias) with the weight the layer reads
_LINEAR_FORWARDS = (nn.Linear.forward, _ParametrizedLinear.forward)


# ---------------------------------------------------------------------------------------------
def split_last_linear(model: nn.Module) -> Optional[Tuple[nn.Module, nn.Linear]]:
    """``(body, last)`` if ``model`` is a (nested) ``nn.Sequential`` ending with an ``nn.Linear``.

    ``body`` is a plain ``nn.Sequential`` of the preceding modules (shared, not copied), so
    that ``model(x) == last(body(x))``. The last layer must compute ``x Wᵀ + b`` with the weight
    it reads: ``nn.Linear``'s own ``forward``, or that of the library's parametrized linear
    layers (``F.linear`` of the parametrized weight); Linear subclasses with another
    ``forward``, a ``forward`` replaced on the instance, and Sequential subclasses that
    override ``forward`` are not split. Returns ``None`` otherwise.
    """
    if isinstance(model, nn.Linear):
        plain = type(model).forward in _LINEAR_FORWARDS and "forward" not in vars(model)
        return (nn.Sequential(), model) if plain else None
    if isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward and len(model) > 0:
        inner = split_last_linear(model[-1])
        if inner is None:
            return None
        tail, last = inner
        mods = list(model)[:-1] + (list(tail) if len(tail) else [])
        return nn.Sequential(*mods), last
    return None


def _plain_chain(model: nn.Module) -> bool:
    """True if ``model`` and the nested containers holding its last layer are plain
    ``nn.Sequential`` / ``liplayers.Sequential``, whose bound is the product of their children's."""
    if isinstance(model, nn.Linear):
        return True
    if type(model) not in (nn.Sequential, Sequential):
        return False
    return _plain_chain(model[-1])


def _used_weight(layer: nn.Linear) -> Tensor:
    """The weight a linear layer uses in eval mode (the caller has put it in eval)."""
    if hasattr(layer, "eval_weight"):
        return layer.eval_weight().detach()
    with torch.no_grad():
        return layer.weight.detach().clone()


def _check_x(x: Tensor) -> Tensor:
    return check_finite_tensor(x, "x (inputs of shape (B, ...))", min_dim=2)


def _leaves(model: nn.Module):
    return [m for m in model.modules() if next(iter(m.children()), None) is None]


class _MagnitudeTracker:
    """Records, per sample, Σ over leaf modules of the L2 norm of their outputs during a forward.

    Used for the rounding allowance: rounding errors are relative to the values computed inside
    the network, so large internal values that cancel must widen it (see :meth:`Certifier.radius`).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.total: Optional[Tensor] = None
        self.handles = []

    def _hook(self, module, inputs, output) -> None:
        if not isinstance(output, Tensor) or output.dim() < 1 or self.total is None:
            return
        if output.shape[0] != self.total.shape[0]:
            return
        with torch.no_grad():
            v = output.detach().to(torch.float64).reshape(output.shape[0], -1)
            self.total += torch.linalg.vector_norm(v, dim=1).nan_to_num(nan=math.inf).to(self.total.device)

    def __enter__(self):
        self.handles = [m.register_forward_hook(self._hook) for m in _leaves(self.model)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class Certifier:
    """Computes the Lipschitz bounds of ``model`` once and certifies batches of inputs.

    Args:
        model: the classifier (logits (B, C) or one binary logit (B,) / (B, 1)).
        input_shape: shape of one input without batch (for the bound and for ``"linf"``).
        norm: ``"l2"`` or ``"linf"`` (see :func:`~liplayers.certify.certified_radius`).
        lipschitz: a known guaranteed L2 bound of the whole model; computed if ``None``.
        last_layer: ``"auto"`` (use the last-linear-layer certificate too when the model is a
            Sequential ending with ``nn.Linear`` and passes every check of
            :func:`~liplayers.certify.lipschitz_bound`), ``True`` (required; ``ValueError`` if
            impossible) or ``False``.
        rtol: floating-point allowance of the logits (see ``certified_radius``).
        allow_hooks: see :func:`~liplayers.certify.lipschitz_bound`.

    Every path to a radius applies the same checks: the last-layer certificate is used only
    when the registry bounds the *whole* model (so a hook, an instance ``forward`` or an
    overridden ``__call__`` anywhere is refused exactly as :func:`lipschitz_bound` refuses it).
    A user-supplied ``lipschitz`` is trusted as a guaranteed bound of the whole model.

    The bounds reflect the weights at construction time: build a new Certifier after
    changing the weights (the module-level functions always do).
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], *, norm: str = "l2",
                 lipschitz: Optional[float] = None, last_layer: Union[bool, str] = "auto",
                 rtol: Optional[float] = None, allow_hooks: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if last_layer not in (True, False, "auto"):
            raise ValueError(f"last_layer must be True, False or 'auto', got {last_layer!r}")
        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape)
        self.input_dim = int(math.prod(self.input_shape))
        self.norm = normalize_norm(norm)
        self.rtol = rtol
        self.binary: Optional[bool] = None  # known after the first call (single-logit model?)
        self.num_classes: Optional[int] = None
        self.last_weight: Optional[Tensor] = None
        self.lipschitz_body: Optional[float] = None
        with eval_mode(model):
            full: Optional[float] = None
            try:  # the whole model through the registry: every check applies
                full = lipschitz_bound(model, self.input_shape, allow_hooks=allow_hooks)
            except UnboundedModuleError:
                if lipschitz is None or last_layer is True:
                    raise
            split = split_last_linear(model) if (last_layer and full is not None) else None
            if last_layer is True and split is None:
                raise ValueError("last_layer=True needs a model that is an nn.Sequential ending with an "
                                 f"nn.Linear whose bound is known; got {type(model).__name__}")
            if split is not None:
                body, lin = split
                lb = lipschitz_bound(body, self.input_shape, allow_hooks=allow_hooks)
                if lb > 0:
                    self.lipschitz_body = lb
                    self.last_weight = _used_weight(lin)
                    if not bool(torch.isfinite(self.last_weight).all()):
                        raise ValueError("the last layer's weight contains non-finite values")
            if lipschitz is not None:
                self.lipschitz = float(_positive(lipschitz, "lipschitz", allow_tensor=False))
            else:
                self.lipschitz = full
        if self.lipschitz <= 0 or not math.isfinite(self.lipschitz):
            raise ValueError(f"the Lipschitz bound must be finite and > 0, got {self.lipschitz}")
        # multiplier of internal magnitudes in the rounding allowance: errors made inside the network
        # are amplified by at most the bound of what follows; max(1, L) covers chains of layers ≤ 1
        self._amplification = max(1.0, self.lipschitz, full if full is not None else 1.0)

    def radius(self, logits: Tensor, x: Optional[Tensor] = None, internal: Optional[Tensor] = None) -> Tensor:
        """(B,) float64 certified radii of the predictions encoded by ``logits`` (of inputs ``x``).

        Rounding allowance: the logits' float error is assumed ≤ rtol·(|f| + s) with the magnitude
        scale s = 1 + L‖x‖₂ + A·Σ_m ‖h_m‖₂, where h_m are the outputs of the leaf modules during
        the certifying forward (``internal``, tracked by :meth:`__call__`) and A = max(1, L): large
        internal values that cancel (a float32 staircase) widen the allowance instead of hiding.
        """
        scale = None
        if x is not None:
            xn = torch.linalg.vector_norm(x.detach().reshape(x.shape[0], -1).to(torch.float64), dim=1)
            scale = 1.0 + self.lipschitz * xn.to(logits.device)
            if internal is not None:
                scale = scale + self._amplification * internal.to(scale.device)
            if not bool(torch.isfinite(scale).all()):
                raise ValueError("values inside the network are not finite (or overflow float64): no certificate")
        r = certified_radius(logits, self.lipschitz, self.norm, input_dim=self.input_dim, rtol=self.rtol,
                             scale=scale)
        if self.last_weight is not None:
            r_last = certified_radius_last_layer(logits, self.last_weight.to(logits.device), self.lipschitz_body,
                                                 self.norm, input_dim=self.input_dim, rtol=self.rtol, scale=scale)
            r = torch.maximum(r, r_last)
        return r

    @torch.no_grad()
    def __call__(self, x: Tensor, batch_size: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """``(prediction (B,) int64, radius (B,) float64)`` for inputs ``x`` (B, *input_shape)."""
        _check_x(x)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"x has per-sample shape {tuple(x.shape[1:])}, expected {self.input_shape}")
        bs = x.shape[0] if not batch_size else check_positive_int(batch_size, "batch_size")
        preds, radii = [], []
        with eval_mode(self.model):
            for start in range(0, x.shape[0], max(bs, 1)):
                xb = x[start:start + bs]
                tracker = _MagnitudeTracker(self.model)
                tracker.total = torch.zeros(xb.shape[0], dtype=torch.float64, device=xb.device)
                with tracker:
                    logits = self.model(xb)
                if not isinstance(logits, Tensor) or logits.shape[:1] != xb.shape[:1]:
                    raise ValueError(f"the model must return logits of shape (B, C) or (B,) for B = {xb.shape[0]} "
                                     f"inputs, got {tuple(logits.shape) if isinstance(logits, Tensor) else type(logits)}")
                self.binary = logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1)
                self.num_classes = 2 if self.binary else int(logits.shape[1])
                preds.append(predict_from_logits(logits))
                radii.append(self.radius(logits, xb, tracker.total))
        if not preds:
            return (torch.empty(0, dtype=torch.int64, device=x.device),
                    torch.empty(0, dtype=torch.float64, device=x.device))
        return torch.cat(preds), torch.cat(radii)


def certify(
    model: nn.Module,
    x: Tensor,
    *,
    norm: str = "l2",
    lipschitz: Optional[float] = None,
    last_layer: Union[bool, str] = "auto",
    rtol: Optional[float] = None,
    batch_size: Optional[int] = None,
    allow_hooks: bool = False,
) -> Tuple[Tensor, Tensor]:
    r"""Prediction and certified radius of each input.

    The model is evaluated in eval mode (restored afterwards) with its current weights; the
    Lipschitz bound is :func:`~liplayers.certify.lipschitz_bound` of that same eval-mode
    function unless ``lipschitz`` is given (then it must be a guaranteed L2 bound).

    Args:
        model: classifier mapping (B, ...) to logits (B, C) or one binary logit (B,) / (B, 1).
        x: inputs (B, ...).
        norm: ``"l2"`` or ``"linf"`` (r∞ = r₂ / √n with n = x[0].numel()).
        lipschitz, last_layer, rtol, allow_hooks: see :class:`Certifier`.
        batch_size: forward the inputs in chunks of this size (default: all at once).

    Returns:
        ``(prediction, radius)``: (B,) int64 classes and (B,) float64 radii ≥ 0 such that every
        x′ with ‖x′ − x‖ ≤ radius (in ``norm``) gets the same prediction.

    Example:
        >>> import torch, liplayers as L
        >>> from liplayers.certify import certify
        >>> _ = torch.manual_seed(0)
        >>> net = L.Sequential(L.BjorckLinear(4, 4), L.MaxMin(), L.BjorckLinear(4, 3))
        >>> pred, radius = certify(net, torch.randn(5, 4))
        >>> pred.shape, radius.dtype, bool((radius >= 0).all())
        (torch.Size([5]), torch.float64, True)
    """
    _check_x(x)
    cert = Certifier(model, tuple(x.shape[1:]), norm=norm, lipschitz=lipschitz, last_layer=last_layer,
                     rtol=rtol, allow_hooks=allow_hooks)
    return cert(x, batch_size=batch_size)


def _batches(data, batch_size: int) -> Iterator[Tuple[Tensor, Tensor]]:
    return iter_batches(data, batch_size)


def _labels(y: Tensor, binary: bool, num_classes: Optional[int] = None) -> Tensor:
    if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.dim() != 1:
        raise ValueError("labels must be an integer tensor of shape (B,), got "
                         + (f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__))
    y = y.to(torch.int64)
    if binary:
        if y.numel() and not bool(((y == 0) | (y == 1) | (y == -1)).all()):
            raise ValueError("binary labels must lie in {0, 1} or {-1, +1}")
        return (y > 0).to(torch.int64)  # {0, 1} or {-1, +1}
    if num_classes is not None and y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"class labels must lie in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]")
    return y


# certified accuracy moved to .accuracy (it builds on the Certifier above); importable from here as before
from .accuracy import CertifiedAccuracy, certified_accuracy, plot_certified_accuracy  # noqa: E402
