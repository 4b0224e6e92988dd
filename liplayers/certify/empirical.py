r"""Empirical check of certificates: attack each certified point inside its certified radius.

A certificate claims that no x′ with ‖x′ − x‖₂ ≤ r(x) changes the predicted class. This
module tries to refute it: every point with r(x) > 0 is attacked, *against its own
prediction* (labels are irrelevant to a certificate), by

* our L2 PGD (:func:`liplayers.analysis.attacks.pgd_attack`, margin objective, per-sample radius,
  no box constraint by default — the certificate covers the whole ball), and
* when the third-party ``torchattacks`` package is installed, its L2 attacks. Those assume
  inputs in [0, 1] and one scalar ε, so they run on a reparametrized model
  z ↦ model(x + (r / ρ)(z − ½)) in which the box [0, 1]ⁿ contains the ball of radius ρ = ½
  around z₀ = ½ (PGDL2 with ε = ρ, CW; batch-wise), or on a common affine map of all points
  into the box (DeepFool, FAB: minimal-norm attacks that may process subsets of the batch).
  Their outputs are mapped back to input space and projected (radially) into the radius
  ball, so unbounded attacks (CW, DeepFool, FAB) are used as direction finders.

A violation is a point where some attack found x′ with ‖x′ − x‖₂ ≤ r(x) (checked in float64)
whose predicted class differs from the prediction at x. Violations mean a bug (or a
floating-point margin too small for the model): the report lists them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..lipschitz import eval_mode
from .evaluation import _check_x, certify
from .margins import normalize_norm, predict_from_logits

__all__ = ["attack_check", "AttackCheckReport", "DEFAULT_TORCHATTACKS"]

#: torchattacks L2 attacks run by default when the package is installed
DEFAULT_TORCHATTACKS: Tuple[str, ...] = ("PGDL2", "CW", "DeepFool", "FAB")


@dataclass
class AttackCheckReport:
    """Result of :func:`attack_check`.

    Attributes:
        n: number of points given.
        n_certified: points with a positive radius (the ones attacked).
        violations: number of points where an attack changed the prediction inside the radius.
        violation_indices: (k,) indices (into the given ``x``) of those points.
        per_attack: attack name → number of points it broke inside the radius.
        max_margin_ratio: per attack, the largest (runner-up logit − predicted logit) found
            inside the radius, relative to the clean margin (≥ 0 would mean a violation; values
            close to 0 mean the attack came close to the certified boundary).
        skipped: attack name → reason it was not run (package missing, error).
        radius: (n,) float64 radii used.
    """

    n: int
    n_certified: int
    violations: int
    violation_indices: Tensor
    per_attack: Dict[str, int] = field(default_factory=dict)
    max_margin_ratio: Dict[str, float] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)
    radius: Optional[Tensor] = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when no attack found a violation."""
        return self.violations == 0

    def __str__(self) -> str:
        parts = [f"{self.violations} violation(s) over {self.n_certified} certified point(s) (of {self.n})"]
        for name, v in self.per_attack.items():
            parts.append(f"  {name}: {v} violation(s), max margin ratio {self.max_margin_ratio.get(name, float('nan')):.4f}")
        for name, why in self.skipped.items():
            parts.append(f"  {name}: skipped ({why})")
        return "\n".join(parts)


def _flat_norm(v: Tensor) -> Tensor:
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1).to(torch.float64), dim=1)


def _project(x: Tensor, x_adv: Tensor, radius: Tensor) -> Tensor:
    """Radially project x_adv − x into the ball of radius r (float64 decision, x's dtype)."""
    d = x_adv.detach() - x
    n = _flat_norm(d)
    factor = torch.where(n > radius, radius / n.clamp_min(1e-300), torch.ones_like(n))
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    out = x + d * factor.to(x.dtype).reshape(shape)
    # rounding may leave ‖out − x‖ a hair above r: shrink by a relative 1e-6 until inside
    for _ in range(3):
        over = _flat_norm(out - x) > radius
        if not bool(over.any()):
            break
        out = torch.where(over.reshape(shape), x + (out - x) * (1 - 1e-6), out)
    return out


class _BallModel(nn.Module):
    """z ∈ [0, 1]ⁿ ↦ model(x + (r/ρ)(z − ½)) per sample (the batch must be the full batch)."""

    def __init__(self, model: nn.Module, x: Tensor, radius: Tensor, rho: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("x0", x.detach())
        self.scale = (radius / rho).to(x.dtype).reshape((x.shape[0],) + (1,) * (x.dim() - 1))

    def to_x(self, z: Tensor) -> Tensor:
        return self.x0 + self.scale * (z.reshape(self.x0.shape) - 0.5)

    def forward(self, z: Tensor) -> Tensor:
        if z.shape[0] != self.x0.shape[0]:
            raise RuntimeError("this attack evaluates sub-batches; it cannot run on the per-sample ball model")
        return self.model(self.to_x(z))


class _BoxModel(nn.Module):
    """z ∈ [0, 1]ⁿ ↦ model(c + S(z − ½)), one affine map for every point (subset-safe)."""

    def __init__(self, model: nn.Module, center: Tensor, scale: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("center", center.detach())
        self.scale = float(scale)

    def to_x(self, z: Tensor) -> Tensor:
        return self.center + self.scale * (z.reshape((z.shape[0],) + tuple(self.center.shape)) - 0.5)

    def to_z(self, x: Tensor) -> Tensor:
        return (x - self.center) / self.scale + 0.5

    def forward(self, z: Tensor) -> Tensor:
        return self.model(self.to_x(z))


def _as_image(z: Tensor) -> Tensor:
    """torchattacks assumes image batches (B, C, H, W): view other inputs as (B, 1, 1, n)."""
    return z if z.dim() == 4 else z.reshape(z.shape[0], 1, 1, -1)


def _torchattack(name: str, wrapped: nn.Module, num_classes: int, steps: int, seed: int):
    import torchattacks  # noqa: F401  (caller checked availability)

    ta = torchattacks
    if name == "PGDL2":
        return ta.PGDL2(wrapped, eps=0.5, alpha=2.5 * 0.5 / max(steps, 1), steps=steps, random_start=True)
    if name == "CW":
        return ta.CW(wrapped, c=10.0, kappa=0.0, steps=steps, lr=0.05)
    if name == "DeepFool":
        return ta.DeepFool(wrapped, steps=steps, overshoot=0.02)
    if name == "FAB":
        return ta.FAB(wrapped, norm="L2", steps=steps, n_restarts=1, n_classes=num_classes, seed=seed)
    raise ValueError(f"unknown torchattacks attack {name!r}; supported: {DEFAULT_TORCHATTACKS}")


def attack_check(
    model: nn.Module,
    x: Tensor,
    y: Optional[Tensor] = None,
    radius: Optional[Tensor] = None,
    *,
    steps: int = 50,
    restarts: int = 1,
    torchattacks: Optional[Sequence[str]] = DEFAULT_TORCHATTACKS,
    torchattacks_steps: Optional[int] = None,
    domain: Optional[Sequence[float]] = None,
    norm: str = "l2",
    generator: Optional[torch.Generator] = None,
    seed: int = 0,
) -> AttackCheckReport:
    r"""Attack every certified point inside its certified radius and report violations.

    Args:
        model: the classifier (logits (B, C)); evaluated in eval mode (restored afterwards).
        x: points (B, ...).
        y: optional labels; certificates are about the *prediction*, so the attacks always
            target the model's own prediction at x (``y`` is accepted for convenience and
            ignored by the check).
        radius: (B,) L2 radii to check (default: :func:`~liplayers.certify.certify` with the
            model's guaranteed bound).
        steps: PGD steps per restart (our PGD; step size 2.5 r / steps).
        restarts: PGD restarts (the first starts at x, the others uniformly in the ball).
        torchattacks: names of torchattacks L2 attacks to run if the package is installed
            (``None`` or ``()`` for none). Missing package or a failing attack is recorded in
            ``report.skipped``, never silently ignored.
        torchattacks_steps: steps for those attacks (default ``steps``).
        domain: optional box ``(low, high)`` for our PGD (default ``None``: the whole ball,
            which is what the certificate covers).
        norm: only ``"l2"``: check the L2 radii (an L∞ radius r₂/√n is implied by the L2 one).
        generator: torch.Generator for the random starts.
        seed: seed of the torchattacks attacks that take one.

    Returns:
        An :class:`AttackCheckReport`.
    """
    if normalize_norm(norm) != "l2":
        raise ValueError("attack_check checks L2 certificates; certify with norm='l2' and check those radii")
    _check_x(x)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be a positive int, got {restarts!r}")
    B = x.shape[0]
    with eval_mode(model):  # the modes of model and its children are restored after
        with torch.no_grad():
            logits0 = model(x)
        pred = predict_from_logits(logits0)
        if radius is None:
            _, radius = certify(model, x)
        if not isinstance(radius, Tensor) or radius.shape != (B,):
            raise ValueError(f"radius must be a tensor of shape ({B},)")
        radius = radius.detach().to(device=x.device, dtype=torch.float64)
        if not bool(torch.isfinite(radius).all()) or bool((radius < 0).any()):
            raise ValueError("radius must be finite and >= 0")
        idx = torch.nonzero(radius > 0).reshape(-1)
        report = AttackCheckReport(n=B, n_certified=int(idx.numel()), violations=0,
                                   violation_indices=torch.empty(0, dtype=torch.int64), radius=radius.cpu())
        if idx.numel() == 0:
            return report
        xc, pc, rc = x[idx].detach(), pred[idx], radius[idx]
        margin0 = _margin(logits0[idx].detach(), pc)
        broken = torch.zeros(idx.numel(), dtype=torch.bool, device=x.device)

        def record(name: str, x_adv: Tensor) -> None:
            nonlocal broken
            x_adv = _project(xc, x_adv.to(xc.dtype), rc)
            dist = _flat_norm(x_adv - xc)
            inside = dist <= rc * (1 + 1e-12)
            with torch.no_grad():
                logits = model(x_adv)
            changed = (predict_from_logits(logits) != pc) & inside
            m = _margin(logits.detach(), pc)
            ratio = float(((-m) / margin0.clamp_min(1e-30)).max())  # runner-up − predicted, relative
            report.per_attack[name] = report.per_attack.get(name, 0) + int(changed.sum())
            report.max_margin_ratio[name] = max(report.max_margin_ratio.get(name, -math.inf), ratio)
            broken = broken | changed

        # --- our PGD -------------------------------------------------------------------------
        from ..analysis.attacks import pgd, pgd_attack

        binary = logits0.dim() == 1 or logits0.shape[1] == 1
        for k in range(restarts):
            if binary:  # single logit: maximize the logit's move toward the other side
                x_adv = pgd(model, xc, lambda out: -_margin(out, pc).to(out.dtype), rc.to(xc.dtype), norm="l2",
                            steps=steps, random_start=k > 0, domain=domain, generator=generator)
            else:
                x_adv = pgd_attack(model, xc, pc, rc.to(xc.dtype), norm="l2", steps=steps, random_start=k > 0,
                                   domain=domain, generator=generator)
            record("liplayers.pgd", x_adv)

        # --- torchattacks --------------------------------------------------------------------
        names = tuple(torchattacks or ())
        if names:
            try:
                import torchattacks as _ta  # noqa: F401
            except ImportError:
                for name in names:
                    report.skipped[name] = "torchattacks is not installed"
                names = ()
        t_steps = torchattacks_steps or steps
        num_classes = 2 if binary else int(logits0.shape[1])
        if names and binary:
            for name in names:
                report.skipped[name] = "torchattacks needs multiclass logits (B, C)"
            names = ()
        for name in names:
            try:
                # wrappers are put in eval mode: torchattacks restores the mode it found, and a
                # training-mode forward could change the model (e.g. a Björck retraction)
                if name in ("PGDL2", "CW"):
                    wrapped = _BallModel(model, xc, rc, 0.5).eval()
                    z0 = _as_image(torch.full_like(xc, 0.5))
                    z_adv = _torchattack(name, wrapped, num_classes, t_steps, seed)(z0, pc)
                    model.eval()
                    x_adv = wrapped.to_x(z_adv.to(xc.dtype))
                else:
                    flat = xc.reshape(xc.shape[0], -1)
                    lo = flat.min(dim=0).values
                    hi = flat.max(dim=0).values
                    center = ((lo + hi) / 2).reshape(xc.shape[1:])
                    spread = float(((hi - lo) / 2).max()) + float(rc.max())
                    wrapped = _BoxModel(model, center, 2.2 * max(spread, 1e-12)).eval()
                    z_adv = _torchattack(name, wrapped, num_classes, t_steps, seed)(_as_image(wrapped.to_z(xc)), pc)
                    model.eval()
                    x_adv = wrapped.to_x(z_adv.to(xc.dtype))
                record(name, x_adv)
            except Exception as exc:  # a third-party attack failing must be visible, not fatal
                report.skipped[name] = f"{type(exc).__name__}: {exc}"
            finally:
                model.eval()
    report.violations = int(broken.sum())
    report.violation_indices = idx[broken].cpu()
    return report


def _margin(logits: Tensor, pred: Tensor) -> Tensor:
    """f_pred − max_{j≠pred} f_j (B,) in float64 (binary: signed logit toward the prediction)."""
    f = logits.to(torch.float64)
    if f.dim() == 1 or f.shape[1] == 1:
        f = f.reshape(-1)
        return torch.where(pred == 1, f, -f)
    fy = f.gather(1, pred[:, None]).squeeze(1)
    other = f.scatter(1, pred[:, None], -math.inf).max(dim=1).values
    return fy - other
