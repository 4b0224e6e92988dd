r"""Adversarial spheres with quadratic, Lipschitz-quadratic and GNP networks (after Gilmer et al. 2018).

Data (Gilmer et al., "Adversarial spheres", ICLR 2018): points uniform on two concentric
spheres of ``R^d``, radius 1 (class 0) and ``R = 1.3`` (class 1); ``d = 500`` (``--quick``:
``d = 50``).  Fresh samples every batch, a fixed fresh test set.

Models (single logit ``f``, class 1 iff ``f > 0``):

(a) **quadratic network** ``f(x) = w‖Wx‖² + b`` (``W ∈ R^{d₁×d}``, ``d₁ = 2d``), all free.
    With ``λ_i`` the eigenvalues of ``WᵀW`` — the **squared** singular values of ``W`` (not the
    singular values themselves: the decision boundary ``xᵀWᵀWx = −b/w`` involves their
    squares) — and ``α_i = −w λ_i / b``, the boundary is the ellipsoid ``Σ α_i z_i² = 1`` and
    the classifier has zero error on both spheres iff every ``α_i ∈ [1/R², 1]`` and ``w > 0``
    (the sign of ``w`` says which side of the boundary is class 1).
(b) **Lipschitz quadratic network**: the same with ``W`` orthonormal
    (:class:`liplayers.BjorckLinear`, ``‖Wx‖ = ‖x‖``): the boundary is a sphere, only
    ``(w, b)`` matter.  The last affine layer ``q ↦ wq + b`` must **not** be forced
    orthogonal — a 1×1 orthogonal matrix is ``±1``, a disconnected set, so ``w`` keeps the
    sign it is initialized with.  We run it both ways: free ``w``, and ``w`` read through
    :class:`liplayers.BjorckLinear` ``(1, 1)`` initialized at ``+1`` and at ``−1``.
    Since ``‖Wx‖ = ‖x‖`` for any orthonormal ``W``, ``W`` is frozen during training (same
    function, no retraction of a ``d₁×d`` weight per step); only ``(w, b)`` learn.
(c) **GNP MLP**: ``BjorckLinear → MaxMin → BjorckLinear → MaxMin → BjorckLinear(·, 1)``,
    trained with the binary hinge loss.

Certificates.  (c): ``r = |f(x)| / L`` with ``L`` from :func:`liplayers.certify.lipschitz_bound`
(via :func:`liplayers.certify.certify`).  (a), (b): the quadratic map is not globally Lipschitz,
but the decision only depends on ``x ↦ ‖Wx‖``: with ``c = √(−b/w)`` (when ``−b/w > 0``),
``f = w(‖Wx‖ − c)(‖Wx‖ + c)`` has the sign of ``g(x) = sign(w)(‖Wx‖ − c)``, and ``g`` is
``‖W‖₂``-Lipschitz.  So ``r = |g(x)| / ‖W‖₂`` (computed by
:func:`liplayers.certify.certified_radius` with ``L = ‖W‖₂`` from a float64 SVD) certifies the
quadratic network too.  For (b) it is the exact distance to the boundary sphere; for (a) it
is loose when ``W`` is far from an isometry.  If ``−b/w ≤ 0`` the decision is constant and
every radius is certified (reported as ``2R``).

Every certificate is attacked (:func:`liplayers.certify.attack_check`, L2 PGD with
restarts inside the certified radius); the number of violations must be 0.  We also
report PGD-robust accuracy at ``ε = 0.15`` (an *upper* bound of robust accuracy) and
certified accuracy at several radii; ``0.15 = (R − 1)/2`` is half the gap between the
spheres: the most any classifier can certify on both spheres at once (only the middle
sphere reaches it, and then exactly, so with the floating-point safety margin the
certified fraction at 0.15 is at most about one half — see radius 0.14 for the picture).

What to expect (d = 500, ~5·10⁵ training samples).  (a) reaches ~1% test error but only a
few percent of its ``α_i`` lie in ``[1/R², 1]`` (most are near 0): the boundary ellipsoid cuts
through both spheres, and PGD finds adversarial examples within 0.15 for almost every point.
(b) has zero error and certified radii equal to the exact distance to its boundary sphere ``c = √(−b/w)``, but the logistic loss does not
put the boundary in the middle (1.15): its balance point *in f-space* is
``c = √((1 + R²)/2) ≈ 1.160`` ((b') lands there: 1.1597, so the outer sphere is certified at
0.140 only), and the free readout (b) stops elsewhere (1.140 at the default budget, so the
inner sphere gets 0.140).  The certified fraction at 0.15 is 1/2 either way.  (b'') is perfectly
wrong (0% accuracy): ``w`` cannot leave ``−1`` and the bias settles at ``(1 + R²)/2``.  (c) generalizes (< 1% error) but certifies far less than (b).

Output (``--out``): ``alpha_histogram.png``, ``certified_accuracy.png``, ``results.json``.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from _common import (Timer, make_parser, plt, print_table, progress, save_figure,  # noqa: E402
                     setup, write_results)
from liplayers import BjorckLinear, MaxMin, Sequential  # noqa: E402
from liplayers.analysis.attacks import pgd  # noqa: E402
from liplayers.certify import attack_check, certified_radius, certify  # noqa: E402
from liplayers.functional import spectral_norm_exact  # noqa: E402
from liplayers.losses import BinaryHingeLoss  # noqa: E402

RADII = (0.05, 0.10, 0.14, 0.15)


# --------------------------------------------------------------------------- data
def sample_spheres(n: int, d: int, R: float = 1.3, generator: Optional[torch.Generator] = None,
                   dtype=torch.float32) -> tuple:
    """``n`` points, half on the unit sphere (label 0), half on the radius-``R`` sphere (label 1).

    Returns ``(x (n, d), y (n,) int64)``; uniform directions (normalized Gaussians).
    """
    g = torch.randn(n, d, generator=generator, dtype=torch.float64)
    g = g / g.norm(dim=1, keepdim=True)
    y = torch.arange(n) % 2
    r = torch.where(y == 1, R, 1.0).to(torch.float64)
    return (g * r[:, None]).to(dtype), y


# --------------------------------------------------------------------------- models
class QuadraticNet(nn.Module):
    """``f(x) = w‖Wx‖² + b``; input ``(B, d)``, output ``(B,)`` (one logit).

    Args:
        d, hidden: ``W`` is ``hidden × d``.
        orthogonal: ``W`` is a :class:`~liplayers.BjorckLinear` (orthonormal columns when
            ``hidden ≥ d``) instead of a plain ``nn.Linear``.
        orthogonal_readout: the affine readout ``q ↦ wq + b`` is a ``BjorckLinear(1, 1)``
            (``w ∈ {±1}``) instead of ``nn.Linear(1, 1)``.
        w0: initial readout weight (its sign for the orthogonal readout).
    """

    def __init__(self, d: int, hidden: int, orthogonal: bool = False, orthogonal_readout: bool = False,
                 w0: float = 1.0) -> None:
        super().__init__()
        self.W = BjorckLinear(d, hidden, bias=False) if orthogonal else nn.Linear(d, hidden, bias=False)
        self.readout = BjorckLinear(1, 1) if orthogonal_readout else nn.Linear(1, 1)
        with torch.no_grad():
            if orthogonal_readout:
                self.readout.weight = torch.full((1, 1), float(w0))  # parametrization right_inverse
            else:
                self.readout.weight.fill_(float(w0))
            self.readout.bias.fill_(0.0)

    def init_bias(self, x: Tensor) -> None:
        """Put the boundary between the spheres at start: ``b = −w · mean ‖Wx‖²`` on ``x``."""
        with torch.no_grad():
            q = self.W(x).pow(2).sum(-1).mean()
            self.readout.bias.fill_(float(-self._w() * q))

    def _w(self) -> float:
        return float(self.readout.weight.detach().reshape(()))

    def forward(self, x: Tensor) -> Tensor:
        q = self.W(x).pow(2).sum(-1, keepdim=True)
        return self.readout(q).squeeze(-1)

    def coefficients(self) -> tuple:
        """``(w, b)`` as used in eval mode."""
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                return float(self.readout.weight.reshape(())), float(self.readout.bias.reshape(()))
        finally:
            self.train(was)

    def eval_W(self) -> Tensor:
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self.W.weight.detach().clone()
        finally:
            self.train(was)

    def alphas(self) -> np.ndarray:
        """``α_i = −w λ_i / b`` with ``λ_i`` the eigenvalues of ``WᵀW`` (float64, ascending)."""
        w, b = self.coefficients()
        lam = torch.linalg.svdvals(self.eval_W().to(torch.float64)).pow(2)
        d = self.eval_W().shape[1]
        if lam.numel() < d:  # W has fewer rows than columns: WᵀW has d − hidden zero eigenvalues
            lam = torch.cat([lam, lam.new_zeros(d - lam.numel())])
        return np.sort((-w * lam / b).numpy()) if b != 0 else np.full(d, np.inf)

    def certified_radius(self, x: Tensor, R: float) -> Tensor:
        """Sound L2 radii ``|g(x)| / ‖W‖₂`` with ``g = sign(w)(‖Wx‖ − √(−b/w))`` (module docstring)."""
        w, b = self.coefficients()
        W = self.eval_W().to(torch.float64)
        if w == 0 or -b / w <= 0:  # constant decision: any radius is certified
            return torch.full((x.shape[0],), 2.0 * R, dtype=torch.float64)
        s = float(spectral_norm_exact(W))  # guaranteed (SVD × (1 + 1e-9)) Lipschitz bound of x ↦ ‖Wx‖
        c = math.sqrt(-b / w)
        g = math.copysign(1.0, w) * ((x.to(torch.float64) @ W.T).norm(dim=1) - c)
        return certified_radius(g, s)


def gnp_mlp_binary(d: int, width: int) -> Sequential:
    """``BjorckLinear(d, width) → MaxMin → BjorckLinear(width, width) → MaxMin → BjorckLinear(width, 1)``."""
    return Sequential(BjorckLinear(d, width), MaxMin(), BjorckLinear(width, width), MaxMin(), BjorckLinear(width, 1))


class _Squeeze(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


# --------------------------------------------------------------------------- training
def train(model: nn.Module, loss_fn, *, d: int, R: float, steps: int, batch_size: int, lr: float,
          generator: torch.Generator, desc: str) -> List[float]:
    """Adam on fresh samples each step; returns the loss history (every step)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    model.train()
    hist = []
    for _ in progress(range(steps), desc=desc):
        x, y = sample_spheres(batch_size, d, R, generator)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        hist.append(float(loss.detach()))
    model.eval()
    return hist


def bce(f: Tensor, y: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(f, y.to(f.dtype))


def evaluate(name: str, model: nn.Module, x: Tensor, y: Tensor, radius: Optional[Tensor], R: float,
             n_check: int, attack_steps: int, generator: torch.Generator) -> Dict[str, object]:
    """Test error, certified accuracy at :data:`RADII`, attack check of the certificates, PGD at 0.15."""
    model.eval()
    with torch.no_grad():
        f = model(x)
    pred = (f > 0).long()
    correct = pred == y
    row: Dict[str, object] = {"model": name, "test error": 1.0 - float(correct.float().mean())}
    if isinstance(model, QuadraticNet):
        row["w"] = model.coefficients()[0]  # w > 0 is needed for class 1 = outer sphere
    if radius is not None:
        for r in RADII:
            row[f"cert@{r}"] = float((correct & (radius >= r)).float().mean())
        row["median radius"] = float(radius.median())
        idx = torch.arange(min(n_check, x.shape[0]))
        rep = attack_check(model, x[idx], radius=radius[idx].clone(), steps=attack_steps, restarts=2,
                           torchattacks=None, generator=generator)
        row["attacked"] = rep.n_certified
        row["violations"] = rep.violations
    else:
        for r in RADII:
            row[f"cert@{r}"] = float("nan")
        row["median radius"] = float("nan")
        row["attacked"], row["violations"] = 0, 0
    # empirical robustness at ε = (R − 1)/2 by PGD on the margin (upper bound of robust accuracy)
    idx = torch.arange(min(n_check, x.shape[0]))
    xs, ys = x[idx], y[idx]
    sign = (2 * ys - 1).to(x.dtype)
    x_adv = pgd(model, xs, lambda out: -sign * out, (R - 1) / 2, norm="l2", steps=attack_steps,
                random_start=False, domain=None, generator=generator)
    with torch.no_grad():
        robust = ((model(x_adv) > 0).long() == ys) & ((model(xs) > 0).long() == ys)
    row["PGD acc@0.15"] = float(robust.float().mean())
    return row


# --------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> dict:
    p = make_parser(__doc__.splitlines()[0], default_out="results/quadratic_spheres")
    p.add_argument("--dim", type=int, default=None, help="input dimension d (default 500; --quick 50)")
    p.add_argument("--outer-radius", type=float, default=1.3, help="radius R of the outer sphere")
    p.add_argument("--steps", type=int, default=None, help="training steps of the quadratic network")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--gnp-width", type=int, default=None, help="hidden width of the GNP MLP")
    args = p.parse_args(argv)
    out = setup(args)
    quick = args.quick
    d = args.dim or (50 if quick else 500)
    R = args.outer_radius
    hidden = 2 * d
    steps = args.steps or (300 if quick else 4000)
    lip_steps = max(50, steps // 10)  # (b) has two effective parameters
    gnp_steps = steps // 2 if quick else 1500
    width = args.gnp_width or (64 if quick else 256)
    n_test = 2000 if quick else 10_000
    n_check = 200 if quick else 500
    attack_steps = 20 if quick else 50
    gen = torch.Generator().manual_seed(args.seed)
    x_test, y_test = sample_spheres(n_test, d, R, gen)

    rows, extra, alphas, radii, models = [], {}, {}, {}, {}
    with Timer() as t_all:
        # (a) quadratic network
        torch.manual_seed(args.seed)
        quad = QuadraticNet(d, hidden)
        quad.init_bias(sample_spheres(1024, d, R, gen)[0])
        with Timer() as t:
            hist_a = train(quad, bce, d=d, R=R, steps=steps, batch_size=args.batch_size, lr=1e-3, generator=gen,
                           desc="(a) quadratic")
        models["a"] = quad
        alphas["a"] = quad.alphas()
        radii["a"] = quad.certified_radius(x_test, R)
        row = evaluate("(a) quadratic", quad, x_test, y_test, radii["a"], R, n_check, attack_steps, gen)
        a_in = float(np.mean((alphas["a"] >= 1 / R ** 2) & (alphas["a"] <= 1)))
        row["α in [1/R²,1]"] = a_in
        row["train s"] = t.seconds
        rows.append(row)
        extra["a"] = {"w_b": quad.coefficients(), "W_norm": float(spectral_norm_exact(quad.eval_W())),
                      "alpha_min": float(alphas["a"].min()), "alpha_max": float(alphas["a"].max()),
                      "samples_seen": steps * args.batch_size, "final_loss": hist_a[-1]}

        # (b) Lipschitz quadratic network: free readout, then orthogonal readout w0 = ±1
        variants = [("(b) Lipschitz quadratic", False, 1.0), ("(b') ... readout orthogonal, w0=+1", True, 1.0),
                    ("(b'') ... readout orthogonal, w0=−1", True, -1.0)]
        for name, orth_readout, w0 in variants:
            torch.manual_seed(args.seed)
            net = QuadraticNet(d, hidden, orthogonal=True, orthogonal_readout=orth_readout, w0=w0)
            net.init_bias(sample_spheres(1024, d, R, gen)[0])
            # ‖Wx‖ = ‖x‖ whatever the orthonormal W: only (w, b) matter, so W is frozen (no
            # retraction of a d₁×d weight at every step; the function is the same)
            net.W.parametrizations.weight.original.requires_grad_(False)
            with Timer() as t:
                train(net, bce, d=d, R=R, steps=lip_steps, batch_size=args.batch_size, lr=1e-2, generator=gen,
                      desc=name)
            al = net.alphas()
            rad = net.certified_radius(x_test, R)
            row = evaluate(name, net, x_test, y_test, rad, R, n_check, attack_steps, gen)
            row["α in [1/R²,1]"] = float(np.mean((al >= 1 / R ** 2) & (al <= 1)))
            row["train s"] = t.seconds
            rows.append(row)
            w, b = net.coefficients()
            key = {False: "b", True: "b_orth_plus" if w0 > 0 else "b_orth_minus"}[orth_readout]
            extra[key] = {"w_b": (w, b), "boundary_radius": math.sqrt(-b / w) if w != 0 and -b / w > 0 else None,
                          "alpha_range": (float(al.min()), float(al.max()))}
            if not orth_readout:
                alphas["b"], radii["b"], models["b"] = al, rad, net

        # (c) GNP MLP with the binary hinge loss
        torch.manual_seed(args.seed)
        gnp = _Squeeze(gnp_mlp_binary(d, width))
        hinge = BinaryHingeLoss(margin=(R - 1) / 2)
        with Timer() as t:
            train(gnp, hinge, d=d, R=R, steps=gnp_steps, batch_size=args.batch_size, lr=1e-3, generator=gen,
                  desc="(c) GNP MLP")
        models["c"] = gnp
        _, radii["c"] = certify(gnp.net, x_test)
        row = evaluate("(c) GNP MLP", gnp, x_test, y_test, radii["c"], R, n_check, attack_steps, gen)
        row["α in [1/R²,1]"] = row["w"] = float("nan")
        row["train s"] = t.seconds
        rows.append(row)

    cols = ["model", "test error", "w", "α in [1/R²,1]"] + [f"cert@{r}" for r in RADII] + \
           ["median radius", "PGD acc@0.15", "attacked", "violations", "train s"]
    print_table(rows, cols, digits=3, title=f"Adversarial spheres, d = {d}, R = {R}, {n_test} test points "
                                             f"(certificates attacked on {n_check})")

    # ---- figures
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "a", "(a) quadratic network"), (axes[1], "b", "(b) Lipschitz quadratic")):
        al = alphas[key]
        lo, hi = min(al.min(), 1 / R ** 2) - 0.05, max(al.max(), 1.0) + 0.05
        ax.hist(al, bins=np.linspace(lo, hi, 60), color="tab:blue", alpha=0.8, label=f"α_i (d = {d})")
        ax.axvspan(1 / R ** 2, 1.0, color="tab:green", alpha=0.15, label="zero-error range [1/R², 1]")
        ax.set_xlabel("α_i = −w·λ_i(WᵀW) / b")
        ax.set_ylabel("count")
        inside = np.mean((al >= 1 / R ** 2) & (al <= 1))
        ax.set_title(f"{title}: {100 * inside:.1f}% of α_i in range")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out, "alpha_histogram.png")

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    grid = np.linspace(0, 0.3, 301)
    for key, label, color in (("a", "(a) quadratic", "tab:blue"), ("b", "(b) Lipschitz quadratic", "tab:green"),
                              ("c", "(c) GNP MLP", "tab:orange")):
        with torch.no_grad():
            ok = (models[key](x_test) > 0).long() == y_test
        ax.plot(grid, [float((ok & (radii[key] >= e)).float().mean()) for e in grid], color=color, label=label)
    ax.axvline((R - 1) / 2, color="k", ls=":", lw=1, label="(R − 1)/2 = half the gap")
    ax.set_xlabel("L2 radius ε")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Certified accuracy on the spheres (d = {d})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out, "certified_accuracy.png")

    results = {"config": {"d": d, "hidden": hidden, "R": R, "steps": steps, "lip_steps": lip_steps,
                          "gnp_steps": gnp_steps, "gnp_width": width, "batch_size": args.batch_size,
                          "n_test": n_test, "n_check": n_check, "seed": args.seed, "quick": quick},
               "rows": rows, "details": extra, "alphas_a": alphas["a"], "wall_time_s": t_all.seconds,
               "figures": ["alpha_histogram.png", "certified_accuracy.png"]}
    write_results(out, results)
    print(f"wrote {out}/alpha_histogram.png, {out}/certified_accuracy.png, {out}/results.json "
          f"({t_all.seconds:.1f} s)")
    return results


if __name__ == "__main__":
    main()
