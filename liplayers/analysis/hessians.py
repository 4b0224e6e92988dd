r"""First and second derivatives of a pairwise decision function ``F = f_i − f_j`` of a classifier.

The building blocks of :mod:`liplayers.analysis.curvature`: ``F`` and its input gradient
(:func:`decision_gradient`), Hessian-vector products (:func:`hessian_vector_product`) and the
gradients and Hessians of every logit (:func:`logit_hessians`). The model maps a batch
``(B, *shape)`` to logits ``(B, C)`` and is used as given (eval mode is the caller's choice; no
parameter ``.grad`` is touched); inputs are flattened to ``d = prod(shape)`` coordinates.

Second derivatives
------------------
``h=None`` (default): exact Hessians by automatic differentiation (reverse-over-reverse
Hessian-vector products, batched over probe vectors).  For piecewise-linear networks (ReLU,
GroupSort/MaxMin, max-pooling) the exact Hessian is **zero almost everywhere**, so the
curvature is only meaningful at a finite scale: ``h > 0`` replaces ``H v`` by the central
difference of exact gradients ``(∇F(x + h v) − ∇F(x − h v)) / (2h)`` for unit ``v`` (a
one-sided difference with ``h = 0.1``–``1`` is a common alternative), symmetrized — the Hessian
of the function "seen at scale h".  For a quadratic ``F`` both agree exactly.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["decision_gradient", "hessian_vector_product", "logit_hessians"]

Labels = Union[None, int, Tensor]


# --------------------------------------------------------------------------- validation
def _check_inputs(model: nn.Module, x: Tensor) -> None:
    if not isinstance(model, nn.Module) and not callable(model):
        raise TypeError(f"model must be an nn.Module or a callable, got {type(model).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must have shape (B, ...) with a batch dimension, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains non-finite values (nan or inf)")


def _check_h(h: Optional[float]) -> Optional[float]:
    if h is None:
        return None
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not (h > 0) or not math.isfinite(h):
        raise ValueError(f"h must be None (exact Hessian) or a finite number > 0, got {h!r}")
    return float(h)


def _logits(model: nn.Module, z: Tensor, B: int) -> Tensor:
    out = model(z)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != B:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"model must return logits of shape (B, C) with B={B}, got {got}")
    if out.shape[1] < 2:
        raise ValueError(f"curvature of a decision boundary needs at least 2 logits, got C={out.shape[1]}")
    return out


def _labels(v: Labels, B: int, C: int, device, name: str) -> Optional[Tensor]:
    if v is None:
        return None
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an int, a (B,) integer tensor or None, got a bool")
    if isinstance(v, int):
        t = torch.full((B,), v, dtype=torch.int64, device=device)
    elif isinstance(v, Tensor):
        if v.is_floating_point() or v.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got dtype {v.dtype}")
        t = (v.expand(B) if v.dim() == 0 else v).to(device=device, dtype=torch.int64)
        if t.shape != (B,):
            raise ValueError(f"{name} must have shape ({B},), got {tuple(v.shape)}")
    else:
        raise TypeError(f"{name} must be an int, a (B,) integer tensor or None, got {type(v).__name__}")
    if bool(((t < 0) | (t >= C)).any()):
        raise ValueError(f"{name} must be class indices in [0, {C}), got values outside that range")
    return t


def _pair(model: nn.Module, x: Tensor, label: Labels, other: Labels) -> Tuple[Tensor, Tensor, int]:
    """Resolve ``(i, j)``: ``label`` defaults to the prediction, ``other`` to the runner-up."""
    with torch.no_grad():
        out = _logits(model, x, x.shape[0])
    B, C = out.shape
    i = _labels(label, B, C, x.device, "label")
    j = _labels(other, B, C, x.device, "other")
    if i is None:
        i = out.argmax(dim=1)
    if j is None:
        masked = out.scatter(1, i[:, None], float("-inf"))
        j = masked.argmax(dim=1)
    if bool((i == j).any()):
        raise ValueError("label and other must differ for every sample (F = f_i − f_j would be 0)")
    return i, j, C


def _F(out: Tensor, i: Tensor, j: Tensor) -> Tensor:
    return out.gather(1, i[:, None]).squeeze(1) - out.gather(1, j[:, None]).squeeze(1)


# --------------------------------------------------------------------------- first and second derivatives
def decision_gradient(model: nn.Module, x: Tensor, label: Labels = None, other: Labels = None
                      ) -> Tuple[Tensor, Tensor]:
    """``F(x) = f_label(x) − f_other(x)`` (B,) and its input gradient ``∇F`` (B, d), both detached.

    ``label`` defaults to the predicted class and ``other`` to the runner-up (int, (B,)
    tensor or None).
    """
    _check_inputs(model, x)
    i, j, _ = _pair(model, x, label, other)
    return _grad_F(model, x, i, j)


def _grad_F(model: nn.Module, x: Tensor, i: Tensor, j: Tensor, create_graph: bool = False):
    B = x.shape[0]
    z = x.detach().requires_grad_(True)
    with torch.enable_grad():
        F = _F(_logits(model, z, B), i, j)
        (g,) = torch.autograd.grad(F.sum(), z, create_graph=create_graph)
    if create_graph:
        return F, g.reshape(B, -1), z
    return F.detach(), g.detach().reshape(B, -1)


def hessian_vector_product(model: nn.Module, x: Tensor, v: Tensor, label: Labels = None, other: Labels = None,
                           h: Optional[float] = None) -> Tensor:
    """``H_F(x) v`` for each sample: ``x`` (B, ...), ``v`` (B, d) or (k, B, d) → same shape as ``v``.

    ``h=None``: exact (double backward; a leading probe dimension ``k`` is batched with
    ``is_grads_batched``).  ``h > 0``: ``‖v‖ · (∇F(x + h v̂) − ∇F(x − h v̂)) / (2h)`` with
    ``v̂ = v/‖v‖`` (the central-difference Hessian at scale ``h``, see the module docstring).
    """
    _check_inputs(model, x)
    h = _check_h(h)
    i, j, _ = _pair(model, x, label, other)
    B, d = x.shape[0], x[0].numel()
    if not isinstance(v, Tensor) or v.shape[-2:] != (B, d) or v.dim() not in (2, 3):
        raise ValueError(f"v must have shape ({B}, {d}) or (k, {B}, {d}), got "
                         f"{tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}")
    batched = v.dim() == 3
    vv = v if batched else v[None]
    out = _hvp(model, x, vv.to(x.dtype), i, j, h)
    return out if batched else out[0]


def _hvp(model: nn.Module, x: Tensor, V: Tensor, i: Tensor, j: Tensor, h: Optional[float]) -> Tensor:
    """``H_F V`` for probes ``V`` (k, B, d) → (k, B, d) (model dtype)."""
    k, B, d = V.shape
    if h is None:
        _, g, z = _grad_F(model, x, i, j, create_graph=True)
        if not g.requires_grad:  # F is affine in x (e.g. a linear model): H = 0
            return torch.zeros_like(V)
        try:
            (hv,) = torch.autograd.grad(g, z, grad_outputs=V, is_grads_batched=True, allow_unused=True)
        except RuntimeError:  # some ops have no batching rule: one probe at a time
            cols = []
            for m in range(k):
                (c,) = torch.autograd.grad(g, z, grad_outputs=V[m], retain_graph=True, allow_unused=True)
                cols.append(torch.zeros_like(x) if c is None else c)
            hv = torch.stack(cols)
        if hv is None:
            return torch.zeros_like(V)
        return hv.reshape(k, B, d).detach()
    nrm = torch.linalg.vector_norm(V, dim=-1, keepdim=True)
    unit = V / nrm.clamp_min(torch.finfo(V.dtype).tiny)
    base = x.detach().reshape(1, B, d)
    pts = torch.cat([base + h * unit, base - h * unit], 0).reshape((2 * k * B,) + tuple(x.shape[1:]))
    rep = lambda t: t.repeat(2 * k)  # noqa: E731
    _, g = _grad_F(model, pts, rep(i), rep(j))
    g = g.reshape(2, k, B, d)
    return (g[0] - g[1]) / (2 * h) * nrm


def logit_hessians(model: nn.Module, x: Tensor, h: Optional[float] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients and (scale-``h``) Hessians of **every** logit at each input.

    Returns ``(logits (B, C), J (B, C, d), H (B, C, d, d))`` in float64, ``H`` symmetrized.
    Exact (``h=None``: ``C·d`` double-backward products, batched over the ``d`` basis
    vectors) or central differences of exact gradients along the ``d`` coordinate axes
    (``h > 0``: gradients of all ``C`` logits at ``2d`` shifted copies of each input).
    Memory ``O(B·C·d²)``: chunk large batches.
    """
    _check_inputs(model, x)
    h = _check_h(h)
    B, d = x.shape[0], x[0].numel()
    z = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = _logits(model, z, B)
        C = out.shape[1]
        grads = [torch.autograd.grad(out[:, c].sum(), z, create_graph=h is None, retain_graph=True)[0]
                 for c in range(C)]
    J = torch.stack([g.detach().reshape(B, d) for g in grads], 1).to(torch.float64)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    if h is None:
        rows = []
        basis = eye[:, None, :].expand(d, B, d).reshape((d,) + tuple(x.shape))
        for c, g in enumerate(grads):
            if not g.requires_grad:
                rows.append(torch.zeros(B, d, d, dtype=torch.float64, device=x.device))
                continue
            try:
                (hc,) = torch.autograd.grad(g, z, grad_outputs=basis, is_grads_batched=True, retain_graph=True,
                                            allow_unused=True)
            except RuntimeError:
                cols = [torch.autograd.grad(g, z, grad_outputs=basis[k], retain_graph=True, allow_unused=True)[0]
                        for k in range(d)]
                hc = None if cols[0] is None else torch.stack(cols)
            if hc is None:
                rows.append(torch.zeros(B, d, d, dtype=torch.float64, device=x.device))
            else:  # hc[k, b] = H_c(x_b) e_k  →  (B, d(k), d)
                rows.append(hc.reshape(d, B, d).transpose(0, 1).to(torch.float64))
        H = torch.stack(rows, 1)
    else:
        base = x.detach().reshape(B, 1, d)
        pts = torch.cat([base + h * eye, base - h * eye], 1).reshape((B * 2 * d,) + tuple(x.shape[1:]))
        zp = pts.requires_grad_(True)
        with torch.enable_grad():
            o = _logits(model, zp, B * 2 * d)
            gp = torch.stack([torch.autograd.grad(o[:, c].sum(), zp, retain_graph=c < C - 1)[0].reshape(B, 2, d, d)
                              for c in range(C)], 1).to(torch.float64)  # (B, C, ±, k, d)
        H = (gp[:, :, 0] - gp[:, :, 1]) / (2 * h)
    H = 0.5 * (H + H.transpose(-1, -2))
    return out.detach().to(torch.float64), J, H
