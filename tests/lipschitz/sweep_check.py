"""Independent measurement of a module's Lipschitz constant (float64), for the registry sweeps."""
from __future__ import annotations

import math

import torch
from torch import nn

from liplayers.lipschitz import UnboundedModuleError, eval_mode, linf_lipschitz_bound_of, lipschitz_bound_of

REFUSALS = (UnboundedModuleError, ValueError, TypeError, RuntimeError, NotImplementedError)


def _f(m: nn.Module, shape):
    return lambda v: m(v.reshape(1, *shape)).reshape(-1)


def measure(m: nn.Module, shape, gen: torch.Generator, points: int = 3):
    """(L2 lower bound, ∞ lower bound) from Jacobians at random points, finite differences at
    close and far pairs and, for elementwise maps, a dense 1-D grid; None if torch refuses the input."""
    f = _f(m, shape)
    n = math.prod(shape)
    l2 = linf = 0.0
    with torch.no_grad(), eval_mode(m):
        try:
            y0 = f(torch.randn(n, dtype=torch.float64, generator=gen))
        except REFUSALS:
            return None
        if not bool(torch.isfinite(y0).all()):
            return math.inf, math.inf
        for scale in (1.0, 30.0):
            for _ in range(points):
                a = torch.randn(n, dtype=torch.float64, generator=gen) * scale
                for step in (1e-4, 1e-1, 3.0):
                    d = torch.randn(n, dtype=torch.float64, generator=gen) * step
                    fa, fb = f(a), f(a + d)
                    diff = fb - fa
                    if not bool(torch.isfinite(diff).all()):
                        return math.inf, math.inf
                    l2 = max(l2, float(diff.norm() / d.norm()))
                    linf = max(linf, float(diff.abs().max() / d.abs().max()))
    with eval_mode(m):
        for scale in (1.0, 30.0):
            for _ in range(points):
                a = torch.randn(n, dtype=torch.float64, generator=gen) * scale
                jac = torch.autograd.functional.jacobian(f, a)
                if not bool(torch.isfinite(jac).all()):
                    continue  # autograd overflowed (e.g. exp(x/α) for tiny α): the finite differences measure it

                if jac.numel():
                    l2 = max(l2, float(torch.linalg.matrix_norm(jac, ord=2)))
                    linf = max(linf, float(jac.abs().sum(1).max()))
    return l2, linf


def grid_slope(m: nn.Module) -> float:
    """Largest |Δσ|/|Δx| of an elementwise map on a 1-D grid of step 1e-3 over [-40, 40] (catches jumps)."""
    x = torch.arange(-40.0, 40.0, 1e-3, dtype=torch.float64)
    with torch.no_grad(), eval_mode(m):
        y = m(x.reshape(1, -1)).reshape(-1)
    if not bool(torch.isfinite(y).all()):
        return math.inf
    return float(((y[1:] - y[:-1]).abs() / 1e-3).max())


def check(m: nn.Module, shape, gen: torch.Generator, elementwise: bool = False):
    """Returns 'refused' or 'checked'; raises AssertionError on a bound below the measured constant."""
    results = {}
    for name, fn in (("l2", lipschitz_bound_of), ("linf", linf_lipschitz_bound_of)):
        try:
            results[name] = fn(m, tuple(shape))
        except REFUSALS:
            results[name] = None
    if results["l2"] is None and results["linf"] is None:
        return "refused"
    meas = measure(m, tuple(shape), gen)
    if meas is None:
        return "refused"  # torch itself refuses this input
    l2, linf = meas
    if elementwise:
        g = grid_slope(m)
        l2, linf = max(l2, g), max(linf, g)
    for name, lower in (("l2", l2), ("linf", linf)):
        b = results[name]
        if b is not None:
            assert math.isfinite(b) and b >= 0, f"{m!r} at {shape}: {name} bound {b}"
            assert lower <= b * (1 + 1e-7) + 1e-12, f"{m!r} at {shape}: {name} bound {b} < measured {lower}"
    return "checked"
