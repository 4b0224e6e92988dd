r"""Bounds of plain ``torch.nn`` elementwise activations, for both registries.

An elementwise map x ↦ (σ(x_i))_i with |σ'| ≤ c is c-Lipschitz for L2 and for ∞ alike. The
constants are sup |σ'| over ℝ, computed on a float64 grid of step 2·10⁻⁵ over [−20, 20] (the
slopes are monotone outside) and rounded up; those that depend on arguments are read when the
bound is computed, and argument values outside the proof are refused:

=====================  ===============================  ==========================================
module                 bound                             refused
=====================  ===============================  ==========================================
ReLU, ReLU6, Tanh,     1                                 Hardtanh: non-finite limits
Softsign, LogSigmoid,
Tanhshrink, Hardtanh
Sigmoid                1/4
Hardsigmoid            0.1667 (torch's slope is float32(1/6))
Hardswish              1.5
GELU (both forms)      1.1290 (1.128904 exact, 1.128993 tanh)
SiLU                   1.1 (1.099839)
Mish                   1.089 (1.088498)
SELU                   λα = 1.758099
ELU(α)                 max(1, |α|)                       non-finite α
CELU(α)                1                                 α ≤ 0 (torch divides by α)
LeakyReLU(a)           max(1, |a|)                       non-finite a
PReLU                  max(1, max |a|)                   non-finite a
RReLU(l, u)            max(1, |l|, |u|)                  non-finite l, u
Softshrink(λ)          1                                 λ < 0 (the pieces overlap: a jump)
=====================  ===============================  ==========================================

Discontinuous activations (Threshold, Hardshrink) have no Lipschitz constant and are not registered, nor is
Softplus: torch switches to x where βx > threshold (a jump of log(1 + e^{−threshold})/β), and with
threshold = ∞ its exp overflows to ∞ for βx > 709 — the function computed is not the 1-Lipschitz one.
"""
from __future__ import annotations


import torch
from torch import nn

from .checks import real_arg
from .l2 import register_both

__all__: list = []

_CONSTANTS = {
    nn.ReLU: 1.0, nn.ReLU6: 1.0, nn.Tanh: 1.0, nn.Softsign: 1.0, nn.LogSigmoid: 1.0, nn.Tanhshrink: 1.0,
    nn.Hardtanh: 1.0, nn.Sigmoid: 0.25, nn.Hardsigmoid: 0.1667, nn.Hardswish: 1.5, nn.GELU: 1.1290,
    nn.SiLU: 1.1, nn.Mish: 1.089, nn.SELU: 1.0507009873554805 * 1.6732632423543772 * (1 + 1e-9),
}



@register_both(*_CONSTANTS)
def _constant(m: nn.Module, input_shape) -> float:
    for klass in type(m).__mro__:
        if klass in _CONSTANTS:
            if klass is nn.GELU and m.approximate not in ("none", "tanh"):
                raise ValueError(f"GELU.approximate = {m.approximate!r}")
            if klass is nn.Hardtanh:  # clamp to [min_val, max_val]: finite limits only (else inf/NaN outputs)
                real_arg(m, "min_val")
                real_arg(m, "max_val")
            return _CONSTANTS[klass]
    raise AssertionError  # pragma: no cover


@register_both(nn.ELU)
def _elu(m: nn.ELU, input_shape) -> float:
    return max(1.0, abs(real_arg(m, "alpha")))  # slope α·e^x on x < 0 tends to α at 0⁻


@register_both(nn.CELU)
def _celu(m: nn.CELU, input_shape) -> float:
    real_arg(m, "alpha", lo=0.0, lo_open=True)  # slope e^{x/α} ≤ 1 on x < 0
    return 1.0


@register_both(nn.LeakyReLU)
def _leaky(m: nn.LeakyReLU, input_shape) -> float:
    return max(1.0, abs(real_arg(m, "negative_slope")))


@register_both(nn.PReLU)
def _prelu(m: nn.PReLU, input_shape) -> float:
    a = m.weight.detach().to(torch.float64)
    if not bool(torch.isfinite(a).all()):
        raise ValueError("PReLU weight contains non-finite values")
    return max(1.0, float(a.abs().max()) if a.numel() else 0.0)


@register_both(nn.RReLU)
def _rrelu(m: nn.RReLU, input_shape) -> float:
    # eval: fixed slope (lower + upper)/2; covered by max(|lower|, |upper|)
    return max(1.0, abs(real_arg(m, "lower")), abs(real_arg(m, "upper")))


@register_both(nn.Softshrink)
def _softshrink(m: nn.Softshrink, input_shape) -> float:
    real_arg(m, "lambd", lo=0.0)
    return 1.0
