r"""Training-recipe components of the certified-robustness records: Lookahead, weight EMA, schedules.

* :class:`Lookahead` (Zhang, Lucas, Hinton & Ba, "Lookahead Optimizer: k steps forward, 1 step
  back", NeurIPS 2019) around any optimizer — NAdam + Lookahead is the recipe of the
  LiResNet and BRONet records;
* :class:`WeightEMA`: an exponential moving average of the parameters, whose
  :meth:`~WeightEMA.eval_model` is a copy with the averaged weights *retracted* (an average of
  orthogonal matrices is not orthogonal) and is certified by its own bound;
* :func:`warmup_cosine`, :func:`one_cycle`: learning-rate schedules (``torch.optim.lr_scheduler``).

Interpolated or averaged weights of layers kept on a manifold by retraction (``BjorckLinear``,
``OrthoConv2d``, ``RKOConv2d``) are off that manifold; :func:`retract_` brings them back,
and the layers would otherwise retract them at the next training-mode forward (and orthonormalize
a copy in eval mode). Certificates never rely on this: bounds are computed from the weights used.
"""
from __future__ import annotations

import copy
import math
from typing import Dict

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["Lookahead", "WeightEMA", "retract_", "warmup_cosine", "one_cycle"]


class Lookahead(torch.optim.Optimizer):
    r"""Lookahead wrapper: k steps of the inner optimizer, then one step back towards the slow weights.

    With slow weights φ (the parameters when the wrapper is made) and fast weights θ (the
    parameters, updated by ``optimizer``): after every k-th step,
    φ ← φ + α(θ − φ), then θ ← φ. Between synchronizations the inner optimizer runs as
    usual (its state, e.g. NAdam's moments, is kept across synchronizations, as in the paper).

    The wrapper shares the inner optimizer's ``param_groups`` (and ``defaults``), so learning-rate
    schedulers built on it drive the inner optimizer. ``state_dict`` holds both states.

    Args:
        optimizer: the inner optimizer (e.g. ``torch.optim.NAdam``).
        k: synchronization period (≥ 1; 5 in the paper).
        alpha: slow step size in (0, 1] (0.5 in the paper; 1 makes the wrapper a no-op).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self._ready = False
        super().__init__(optimizer.param_groups, dict(optimizer.defaults))
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups  # the same list: schedulers and add_param_group act on both
        self.k, self.alpha = k, float(alpha)
        self.fast_steps = 0
        self._slow: Dict[int, Tensor] = {}  # id(parameter) -> slow weight
        self._ready = True
        self._init_slow()

    def _params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def _init_slow(self) -> None:
        with torch.no_grad():
            for p in self._params():
                if id(p) not in self._slow:
                    self._slow[id(p)] = p.detach().clone()

    def slow_weight(self, p: Tensor) -> Tensor:
        """The slow weight φ of parameter ``p`` (a view of the stored tensor)."""
        return self._slow[id(p)]

    def add_param_group(self, param_group: dict) -> None:
        if not getattr(self, "_ready", False):  # called by Optimizer.__init__: the groups stay the inner ones
            return
        self.optimizer.add_param_group(param_group)
        self._init_slow()

    @torch.no_grad()
    def synchronize(self) -> None:
        """φ ← φ + α(θ − φ); θ ← φ for every parameter (done automatically every k steps)."""
        self._init_slow()
        for p in self._params():
            slow = self._slow[id(p)]
            slow.add_(p.detach() - slow, alpha=self.alpha)
            p.copy_(slow)

    def step(self, closure=None):
        loss = self.optimizer.step(closure)
        self.fast_steps += 1
        if self.fast_steps % self.k == 0:
            self.synchronize()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        self._init_slow()
        return {"optimizer": self.optimizer.state_dict(), "k": self.k, "alpha": self.alpha,
                "fast_steps": self.fast_steps, "slow": [self._slow[id(p)].clone() for p in self._params()]}

    def load_state_dict(self, state_dict: dict) -> None:
        params = self._params()
        if len(params) != len(state_dict["slow"]):
            raise ValueError(f"Lookahead state has {len(state_dict['slow'])} slow weights, the optimizer "
                             f"{len(params)} parameters")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.k, self.alpha, self.fast_steps = int(state_dict["k"]), float(state_dict["alpha"]), int(state_dict["fast_steps"])
        self._slow = {id(p): s.detach().to(device=p.device, dtype=p.dtype).clone()
                      for p, s in zip(params, state_dict["slow"])}

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, optimizer={self.optimizer!r})"


@torch.no_grad()
def retract_(model: nn.Module) -> nn.Module:
    """Bring the stored parameters of retraction-based layers back onto their manifold, in place.

    The stored parameter of a Björck map in retraction mode (``BjorckLinear``, ``RKOConv2d``)
    is replaced by its polar factor (those layers retract only every few optimizer steps by
    themselves); then every parametrized tensor (``torch.nn.utils.parametrize``) and every
    ``OrthoConv2d`` kernel is read once in training mode, which is when BCOP retracts its
    factors; other parametrizations are pure maps and are unaffected. The modes of all modules
    are restored. Returns ``model``.
    """
    from .lipschitz import eval_mode
    from .nn.conv_bcop import OrthoConv2d
    from .parametrizations.bjorck import BjorckOrthonormal

    with eval_mode(model):  # restores every module's mode afterwards
        for m in model.modules():
            if parametrize.is_parametrized(m):
                m.train()
                for name in list(m.parametrizations.keys()):
                    stored = m.parametrizations[name].original
                    first = m.parametrizations[name][0]
                    bj = first if isinstance(first, BjorckOrthonormal) else getattr(first, "bjorck", None)
                    if isinstance(bj, BjorckOrthonormal) and bj.mode == "retract":
                        matrix = stored.reshape(stored.shape[0], -1)
                        stored.copy_(bj.orthonormalize(matrix).reshape(stored.shape))
                    getattr(m, name)
            elif isinstance(m, OrthoConv2d):
                m.train()
                m.weight
    return model


class WeightEMA:
    r"""Exponential moving average of a model's parameters, evaluated as a retracted copy.

    After each optimizer step, :meth:`update` sets a ← d·a + (1 − d)·θ for every floating
    parameter θ (d = ``decay``; with ``warmup``, d = min(decay, (1 + n)/(10 + n)) at update n,
    so early averages are not dominated by the initialization). :meth:`eval_model` returns a
    deep copy of the model with the averages loaded, its buffers as in the model, retracted by
    :func:`retract_` and in eval mode. Its bound must be measured on it
    (:meth:`lipschitz_bound`, or :func:`liplayers.certify.lipschitz_bound` of the copy): after
    retraction an averaged Björck or BCOP layer is orthogonal again up to the retraction's
    tolerance, and layers whose maps are 1-Lipschitz for any parameter (AOL, SLL, CPL) need
    no retraction.

    Args:
        model: the trained model (its parameters are read, never written).
        decay: d in [0, 1).
        warmup: use the warm-up decay above.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.model, self.decay, self.warmup = model, float(decay), bool(warmup)
        self.num_updates = 0
        self.shadow: Dict[str, Tensor] = {n: p.detach().clone() for n, p in model.named_parameters()
                                          if p.is_floating_point()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current parameters into the averages."""
        d = self.current_decay()
        params = dict(self.model.named_parameters())
        for name, avg in self.shadow.items():
            if name not in params:
                raise ValueError(f"WeightEMA: the model has no parameter {name!r} any more")
            avg.lerp_(params[name].detach().to(avg.dtype), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def eval_model(self) -> nn.Module:
        """A copy of the model with the averaged parameters, retracted, in eval mode."""
        m = copy.deepcopy(self.model)
        params = dict(m.named_parameters())
        for name, avg in self.shadow.items():
            params[name].copy_(avg)
        retract_(m)
        return m.eval()

    def lipschitz_bound(self, input_shape=None) -> float:
        """Guaranteed bound of :meth:`eval_model` (:func:`liplayers.certify.lipschitz_bound`)."""
        from .certify import lipschitz_bound

        return lipschitz_bound(self.eval_model(), input_shape)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"WeightEMA state does not match the model's parameters: {sorted(missing)}")
        self.decay, self.warmup, self.num_updates = float(state["decay"]), bool(state["warmup"]), int(state["num_updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    r"""Linear warm-up from ~0 to the base learning rate, then cosine decay to ``min_lr_ratio`` of it.

    Factor at scheduler step t (call ``scheduler.step()`` once per optimizer step):
    (t + 1)/warmup_steps for t < warmup_steps, then
    r + (1 − r)(1 + cos(π·min(1, (t − w)/(total_steps − w))))/2. A ``LambdaLR``.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be an integer in [0, total_steps], got {warmup_steps!r}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")

    def factor(t: int) -> float:
        if t < warmup_steps:
            return (t + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (t - warmup_steps) / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def one_cycle(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int, pct_start: float = 0.3,
              **kwargs) -> torch.optim.lr_scheduler.OneCycleLR:
    """``torch.optim.lr_scheduler.OneCycleLR`` (Smith & Topin, 2019): warm up to ``max_lr`` over
    ``pct_start`` of ``total_steps``, then anneal. Extra keyword arguments go to ``OneCycleLR``
    (e.g. ``cycle_momentum=False`` for optimizers without momentum)."""
    if not (isinstance(max_lr, (int, float)) and max_lr > 0):
        raise ValueError(f"max_lr must be positive, got {max_lr!r}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps,
                                               pct_start=pct_start, **kwargs)
