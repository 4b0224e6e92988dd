r"""Accuracy–robustness trade-off in the Gaussian logistic model.

Picot et al., "Adversarial Robustness via Fisher-Rao Regularization", IEEE TPAMI 2022, §4,
Figs. 6 and 9; equation, figure and footnote numbers below are those of that paper.

Model (eqs. 18–21).  Binary labels ``y ∈ {−1, +1}``, equally likely,
``x | y ~ N(y μ, Σ)`` in 2-D, logistic classifier ``q_θ(y|x) = 1/(1 + exp(−y θᵀx))``,
L2 adversary of radius ``ε`` that maximizes the cross-entropy: ``x* = x − ε y θ/‖θ‖₂``.
Then, with ``Φ`` the standard normal CDF,

    P_e(θ)  = Φ( −θᵀμ / √(θᵀΣθ) )                  natural error        (eq. 20)
    P'_e(θ) = Φ( (ε‖θ‖₂ − θᵀμ) / √(θᵀΣθ) )         adversarial error    (eq. 21)

Both are invariant to the scale of θ, so ``θ = (cos α, sin α)`` sweeps every achievable pair
``(1 − P_e, 1 − P'_e)``: the blue curve of Fig. 6a.  The Pareto-optimal points (no other α is
better in both accuracies) and the maximum average accuracy
``MAA = max_θ 1 − (P_e + P'_e)/2`` (eq. 24) follow from the curve.

Learning (§4.2, footnote 4): ``10⁴`` samples per class, quasi-Newton (BFGS) from
``θ = 0``, for a sweep of λ, of the empirical risks

    TRADES     mean[ CE(x) + λ · max_{x'} KL(q_θ(·|x) ‖ q_θ(·|x')) ]
    FIRE       mean[ CE(x) + λ · max_{x'} d_FR²(q_θ(·|x), q_θ(·|x')) ]      (eq. 7)
    Hellinger  mean[ CE(x) + λ · max_{x'} H²(q_θ(·|x), q_θ(·|x')) ]         (eq. 48)

with ``CE(x) = −log q_θ(y|x)`` on the **clean** input for all three.  (Eq. 5 of the paper prints
TRADES with the adversarial cross-entropy ``−log q_θ(y|x')``; with that term the TRADES risk
is ``≥ L_ACE(θ) ≥ L_ACE(0) = TRADES(0)``, and footnote 4 itself notes that ``θ = 0``
minimizes ``L_ACE`` here — so eq. 5 as printed would only ever return ``θ = 0``.  We use
TRADES as Zhang et al. define it, with the natural cross-entropy, as
:class:`liplayers.losses.TRADESLoss` does.)

The inner maximization is solved **exactly**: ``θᵀx'`` ranges over
``[h − ε‖θ‖, h + ε‖θ‖]`` (``h = θᵀx``) and each divergence is increasing in ``|h' − h|``
on either side of ``h`` (KL is a Bregman divergence of the log-partition, convex in
``h'``; the Fisher–Rao and Hellinger distances are monotone in ``|arctan e^{h'/2} −
arctan e^{h/2}|``, eq. 9), so the maximum is at one of the two endpoints.  The
divergences are :mod:`liplayers.functional.geometry`'s, applied to the two-class logits ``(0, h)``.

What to expect (and a disagreement with the paper).  Near ``θ = 0`` all three divergences
agree to second order in ``δ = ε‖θ‖`` (``KL ≈ d²/2``, ``H² ≈ d²/4``, ``d² ≈ δ²/4`` at
``h = 0``), and the cross-entropy is ``log 2 − ½θᵀm + ⅛θᵀSθ + O(‖θ‖³)`` with
``m = E[y x] = μ``, ``S = E[x xᵀ] = Σ + μμᵀ``.  So for large λ the minimizer is
``θ ≈ ½(S/4 + cλε² I)⁻¹ m → 0`` and its **direction tends to μ** (``α = 2.046``) for every
one of the three risks, while λ → 0 gives the logistic fit (direction ≈ Σ⁻¹μ,
``α ≈ 1.82``).  The λ-paths therefore run from the max-natural-accuracy end of the Pareto
front (``α ≈ 1.815``) to ``α ≈ 2.05`` — through the MAA point (``α ≈ 2.07``, where the average
accuracy is flat to 1e-7) — but never reach the robust end (``α ≈ 2.78``).  Picot et al. report
that FIRE covers *all* Pareto points (Fig. 6c) and TRADES all but a segment (Fig. 6b); with
the risks as written (exact inner maximization, BFGS from ``θ = 0``) we do not reproduce
that, and the three paths nearly coincide.  The table and ``alpha_vs_lambda.png`` show it;
``--adversary ce`` (regularize toward the cross-entropy adversary ``x*`` of eq. 19 instead
of the divergence maximizer) gives the same picture.

Output (``--out``): ``tradeoff.png`` (Fig. 6a–c and Fig. 9b in one 2×2 figure),
``alpha_vs_lambda.png``, ``results.json`` and the tables printed on stdout.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import optimize  # noqa: E402
from scipy.stats import norm as _normal  # noqa: E402

from _common import (Timer, make_parser, plt, print_table, progress, save_figure,  # noqa: E402
                     setup, write_results)
from liplayers.functional.geometry import fisher_rao_distance, hellinger_distance, kl_divergence  # noqa: E402

MU = np.array([-0.0218, 0.0425])
SIGMA = np.array([[0.0212, 0.0036], [0.0036, 0.0042]])
EPS = 0.1

METHODS = ("TRADES", "FIRE", "Hellinger")


# --------------------------------------------------------------------------- closed forms
def error_rates(theta: np.ndarray, mu: np.ndarray = MU, sigma: np.ndarray = SIGMA,
                eps: float = EPS) -> tuple:
    """Natural and adversarial misclassification probabilities (Picot et al. 2022 eqs. 20–21).

    ``theta``: ``(2,)`` or ``(N, 2)``; returns ``(P_e, P'_e)`` as arrays of shape ``(N,)``
    (or scalars).  ``θ = 0`` (a constant predictor) gets error 1/2 for both by convention.
    """
    th = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    s = np.sqrt(np.einsum("ni,ij,nj->n", th, sigma, th))
    m = th @ mu
    nrm = np.linalg.norm(th, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        pe = np.where(s > 0, _normal.cdf(-m / s), 0.5)
        pe_adv = np.where(s > 0, _normal.cdf((eps * nrm - m) / s), 0.5)
    if np.ndim(theta) == 1:
        return float(pe[0]), float(pe_adv[0])
    return pe, pe_adv


def accuracy_curve(n_alpha: int = 20001, **kw) -> Dict[str, np.ndarray]:
    """All achievable ``(natural, adversarial)`` accuracies for ``θ = (cos α, sin α)``."""
    alpha = np.linspace(0.0, 2 * math.pi, n_alpha, endpoint=False)
    pe, pe_adv = error_rates(np.stack([np.cos(alpha), np.sin(alpha)], 1), **kw)
    return {"alpha": alpha, "natural": 1 - pe, "adversarial": 1 - pe_adv}


def pareto_mask(nat: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """Boolean mask of the Pareto-optimal (non-dominated, both maximized) points."""
    order = np.lexsort((-adv, -nat))  # natural descending, ties: adversarial descending
    mask = np.zeros(nat.shape, dtype=bool)
    best_adv = -np.inf
    for k in order:
        if adv[k] > best_adv:
            mask[k] = True
            best_adv = adv[k]
    return mask


def monte_carlo_accuracies(theta: np.ndarray, n_per_class: int, rng: np.random.Generator,
                           mu: np.ndarray = MU, sigma: np.ndarray = SIGMA, eps: float = EPS) -> tuple:
    """Empirical natural / adversarial accuracy of ``sign(θᵀx)`` under the ``x*`` attack (eq. 19)."""
    x, y = sample(n_per_class, rng, mu, sigma)
    th = np.asarray(theta, dtype=np.float64)
    h = x @ th
    h_adv = h - eps * y * np.linalg.norm(th)  # θᵀx* with x* = x − ε y θ/‖θ‖
    return float(np.mean(np.sign(h) == y)), float(np.mean(np.sign(h_adv) == y))


# --------------------------------------------------------------------------- learning
def sample(n_per_class: int, rng: np.random.Generator, mu: np.ndarray = MU,
           sigma: np.ndarray = SIGMA) -> tuple:
    """``n_per_class`` points of each class: ``x | y ~ N(yμ, Σ)``; returns ``(x (2n, 2), y (2n,))``."""
    y = np.concatenate([-np.ones(n_per_class), np.ones(n_per_class)])
    x = rng.multivariate_normal(np.zeros(2), sigma, size=2 * n_per_class) + y[:, None] * mu[None, :]
    return x, y


def _two_class_logits(h: torch.Tensor) -> torch.Tensor:
    """Logits of the classes (−1, +1) of the binary model ``q(+1|x) = σ(h)``: ``(0, h)``."""
    return torch.stack([torch.zeros_like(h), h], dim=-1)


def _divergence(method: str, h: torch.Tensor, h_adv: torch.Tensor) -> torch.Tensor:
    a, b = _two_class_logits(h), _two_class_logits(h_adv)
    if method == "TRADES":
        return kl_divergence(a, b, validate=False)
    if method == "FIRE":
        return fisher_rao_distance(a, b, validate=False) ** 2
    if method == "Hellinger":
        return hellinger_distance(a, b, validate=False) ** 2
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def empirical_risk(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, method: str, lam: float,
                   eps: float = EPS, adversary: str = "divergence") -> torch.Tensor:
    """Empirical TRADES / FIRE / Hellinger risk (scalar) of ``θ`` (2,) on ``x`` (N, 2), ``y`` (N,) ∈ ±1.

    ``adversary="divergence"``: exact inner maximization of the divergence (Picot et al. 2022 eqs. 5, 7,
    48; maximum at ``θᵀx' = h ± ε‖θ‖``, see the module docstring).  ``"ce"``: the divergence
    toward the cross-entropy adversary ``x* = x − εyθ/‖θ‖`` of eq. 19 (``θᵀx* = h − yε‖θ‖``).
    """
    h = x @ theta
    ce = torch.nn.functional.softplus(-y * h)  # −log σ(y h)
    if lam == 0:
        return ce.mean()
    delta = eps * torch.linalg.vector_norm(theta)
    if adversary == "divergence":
        reg = torch.maximum(_divergence(method, h, h - delta), _divergence(method, h, h + delta))
    elif adversary == "ce":
        reg = _divergence(method, h, h - y * delta)
    else:
        raise ValueError(f"adversary must be 'divergence' or 'ce', got {adversary!r}")
    return (ce + lam * reg).mean()


def minimize_risk(x: np.ndarray, y: np.ndarray, method: str, lam: float, eps: float = EPS,
                  maxiter: int = 500, adversary: str = "divergence") -> Dict[str, float]:
    """BFGS from ``θ = 0`` (Picot et al. 2022 footnote 4); returns θ, its angle α and the accuracies."""
    xt = torch.as_tensor(x, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)

    def fun(th: np.ndarray):
        t = torch.tensor(th, dtype=torch.float64, requires_grad=True)
        val = empirical_risk(t, xt, yt, method, lam, eps, adversary)
        (g,) = torch.autograd.grad(val, t)
        return float(val.detach()), g.numpy().astype(np.float64)

    res = optimize.minimize(fun, np.zeros(2), jac=True, method="BFGS",
                            options={"maxiter": maxiter, "gtol": 1e-9})
    th = res.x
    pe, pe_adv = error_rates(th, eps=eps)
    alpha = float(np.mod(np.arctan2(th[1], th[0]), 2 * math.pi))
    return {"method": method, "lam": float(lam), "theta0": float(th[0]), "theta1": float(th[1]),
            "norm": float(np.linalg.norm(th)), "alpha": alpha, "natural": 1 - pe,
            "adversarial": 1 - pe_adv, "average": 1 - (pe + pe_adv) / 2, "risk": float(res.fun),
            "iterations": int(res.nit), "converged": bool(res.success)}


def pareto_coverage(alphas: Sequence[float], pareto_alpha: np.ndarray, tol: float) -> float:
    """Fraction of Pareto-optimal angles within ``tol`` radians of some solution angle."""
    if len(alphas) == 0:
        return 0.0
    a = np.asarray(alphas)[None, :]
    d = np.abs(np.angle(np.exp(1j * (pareto_alpha[:, None] - a))))  # circular distance
    return float(np.mean(d.min(axis=1) <= tol))


# --------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> dict:
    p = make_parser(__doc__.splitlines()[0], default_out="results/gaussian_tradeoff")
    p.add_argument("--n-per-class", type=int, default=None, help="training samples per class (default 10⁴)")
    p.add_argument("--n-lambda", type=int, default=None, help="number of λ values in the sweep")
    p.add_argument("--mc-samples", type=int, default=None, help="Monte Carlo samples per class for the check")
    p.add_argument("--adversary", choices=("divergence", "ce"), default="divergence",
                   help="inner maximizer: of the divergence (eqs. 5/7/48) or the CE adversary of eq. 19")
    args = p.parse_args(argv)
    out = setup(args)
    quick = args.quick
    n_per_class = args.n_per_class or (2000 if quick else 10_000)
    n_lambda = args.n_lambda or (6 if quick else 51)  # log10 λ on a grid of step 5/(n−1): decades included
    mc_n = args.mc_samples or (50_000 if quick else 500_000)
    rng = np.random.default_rng(args.seed)

    with Timer() as t_all:
        # ---- closed-form curve, Pareto front, MAA
        curve = accuracy_curve(2001 if quick else 20001)
        nat, adv = curve["natural"], curve["adversarial"]
        pmask = pareto_mask(nat, adv)
        avg = (nat + adv) / 2
        k_maa = int(np.argmax(avg))
        k_nat, k_adv = int(np.argmax(nat)), int(np.argmax(adv))
        theta_bayes = np.linalg.solve(SIGMA, MU)  # θ*_nat ∝ Σ⁻¹μ (Picot et al. 2022 footnote 3)
        a_bayes = float(np.mod(np.arctan2(theta_bayes[1], theta_bayes[0]), 2 * math.pi))
        key_points = [
            {"point": "max natural (Σ⁻¹μ)", "alpha": a_bayes, "natural": 1 - error_rates(theta_bayes)[0],
             "adversarial": 1 - error_rates(theta_bayes)[1]},
            {"point": "max adversarial", "alpha": curve["alpha"][k_adv], "natural": nat[k_adv],
             "adversarial": adv[k_adv]},
            {"point": "MAA (eq. 24)", "alpha": curve["alpha"][k_maa], "natural": nat[k_maa],
             "adversarial": adv[k_maa]},
        ]
        for r in key_points:
            r["average"] = (r["natural"] + r["adversarial"]) / 2

        # ---- Monte Carlo check of eqs. 20–21 at the three key angles
        mc_rows = []
        for r in key_points:
            th = np.array([math.cos(r["alpha"]), math.sin(r["alpha"])])
            mn, ma = monte_carlo_accuracies(th, mc_n, rng)
            mc_rows.append({"point": r["point"], "natural (closed form)": r["natural"], "natural (MC)": mn,
                            "adversarial (closed form)": r["adversarial"], "adversarial (MC)": ma})

        # ---- empirical risk minimization over a λ sweep
        x, y = sample(n_per_class, rng)
        lams = [0.0] + [float(v) for v in np.logspace(-2, 3, n_lambda)]
        solutions: Dict[str, List[dict]] = {m: [] for m in METHODS}
        jobs = [(m, lam) for m in METHODS for lam in lams]
        for m, lam in progress(jobs, desc="BFGS over λ"):
            solutions[m].append(minimize_risk(x, y, m, lam, adversary=args.adversary))

    # ---- summaries
    pareto_alpha = curve["alpha"][pmask]
    tol = 0.02
    summary = []
    for m in METHODS:
        sols = solutions[m]
        best = max(sols, key=lambda r: r["average"])
        summary.append({"method": m, "best average acc": best["average"], "at λ": best["lam"],
                        "MAA gap": avg[k_maa] - best["average"],
                        f"Pareto coverage (±{tol} rad)": pareto_coverage([r["alpha"] for r in sols], pareto_alpha, tol),
                        "α range": f"[{min(r['alpha'] for r in sols):.3f}, {max(r['alpha'] for r in sols):.3f}]"})

    print_table(key_points, ["point", "alpha", "natural", "adversarial", "average"],
                title=f"Closed forms (eqs. 20–21), ε = {EPS}: Pareto front spans α ∈ "
                      f"[{pareto_alpha.min():.3f}, {pareto_alpha.max():.3f}]")
    print_table(mc_rows, title=f"Monte Carlo check ({mc_n} samples per class)")
    show = [lam for lam in lams if lam == 0 or abs(math.log10(lam) - round(math.log10(lam))) < 1e-9]
    rows = []
    for lam in show:
        row = {"λ": lam}
        for m in METHODS:
            r = next(s for s in solutions[m] if s["lam"] == lam)
            row[f"{m} nat"], row[f"{m} adv"] = r["natural"], r["adversarial"]
        rows.append(row)
    print_table(rows, digits=3, title="Risk minimizers (BFGS from θ = 0): natural / adversarial accuracy")
    print_table(summary, title=f"Sweep of {len(lams)} λ values, {n_per_class} samples per class")

    # ---- figures
    fig, axes = plt.subplots(2, 2, figsize=(10, 8.5), sharex=True, sharey=True)
    panels = [("(a) achievable accuracies", None), ("(b) TRADES", "TRADES"), ("(c) FIRE", "FIRE"),
              ("(d) Hellinger", "Hellinger")]
    for ax, (title, m) in zip(axes.ravel(), panels):
        ax.plot(nat, adv, ".", ms=1.5, color="tab:blue", label="all θ (eqs. 20–21)")
        ax.plot(nat[pmask], adv[pmask], ".", ms=3, color="tab:red", label="Pareto-optimal")
        if m is None:
            ax.plot(nat[k_maa], adv[k_maa], "*", ms=14, color="gold", mec="k", label=f"MAA = {avg[k_maa]:.3f}")
            nn_ = np.linspace(2 * avg[k_maa] - 0.36, nat.max(), 10)
            ax.plot(nn_, 2 * avg[k_maa] - nn_, ":", color="gray", lw=1, label="constant average = MAA")
        else:
            sols = solutions[m]
            ax.plot([r["natural"] for r in sols], [r["adversarial"] for r in sols], "o-", color="k", ms=3.5,
                    lw=0.8, label=f"{m} minimizers over λ")
            ax.plot(nat[k_maa], adv[k_maa], "*", ms=12, color="gold", mec="k", label="MAA")
            ins = ax.inset_axes([0.05, 0.62, 0.42, 0.35])  # zoom on the Pareto front
            ins.plot(nat, adv, ".", ms=1.5, color="tab:blue")
            ins.plot(nat[pmask], adv[pmask], ".", ms=3, color="tab:red")
            ins.plot([r["natural"] for r in sols], [r["adversarial"] for r in sols], "o-", color="k", ms=2.5, lw=0.6)
            ins.plot(nat[k_maa], adv[k_maa], "*", ms=9, color="gold", mec="k")
            ins.set_xlim(0.595, 0.79)
            ins.set_ylim(0.17, 0.315)
            ins.tick_params(labelsize=6)
            ins.set_title("zoom: Pareto front", fontsize=7)
        ax.set_ylim(-0.01, 0.36)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("natural accuracy  1 − P_e(θ)")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"adversarial accuracy  1 − P'_e(θ)  (L2, ε = {EPS})")
    fig.suptitle("Gaussian logistic model (Picot et al. 2022 Figs. 6, 9): μ = [−0.0218, 0.0425], "
                 "Σ = [[0.0212, 0.0036], [0.0036, 0.0042]]", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out, "tradeoff.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    positive = [lam for lam in lams if lam > 0]
    for m, c in zip(METHODS, ("tab:orange", "tab:green", "tab:purple")):
        ax.semilogx(positive, [r["alpha"] for r in solutions[m] if r["lam"] > 0], "o-", ms=3, color=c, label=m)
    ax.axhspan(pareto_alpha.min(), pareto_alpha.max(), color="tab:red", alpha=0.12, label="Pareto-optimal α")
    ax.axhline(curve["alpha"][k_maa], color="gold", lw=2, label="MAA angle")
    m_hat = (y[:, None] * x).mean(0)  # the λ → ∞ limit direction (module docstring)
    ax.axhline(float(np.mod(np.arctan2(m_hat[1], m_hat[0]), 2 * math.pi)), color="k", ls="--", lw=1,
               label="direction of mean(y·x) (λ → ∞ limit)")
    ax.set_xlabel("regularization weight λ")
    ax.set_ylabel("angle α of the minimizer θ (rad)")
    ax.set_title("Direction of the risk minimizer vs λ")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out, "alpha_vs_lambda.png")

    results = {
        "config": {"mu": MU, "sigma": SIGMA, "eps": EPS, "n_per_class": n_per_class, "lambdas": lams,
                   "seed": args.seed, "quick": quick, "adversary": args.adversary},
        "maa": float(avg[k_maa]), "alpha_maa": float(curve["alpha"][k_maa]),
        "pareto_alpha_range": [float(pareto_alpha.min()), float(pareto_alpha.max())],
        "key_points": key_points, "monte_carlo": mc_rows, "solutions": solutions, "summary": summary,
        "wall_time_s": t_all.seconds, "figures": ["tradeoff.png", "alpha_vs_lambda.png"],
    }
    write_results(out, results)
    print(f"wrote {out}/tradeoff.png, {out}/alpha_vs_lambda.png, {out}/results.json "
          f"({t_all.seconds:.1f} s)")
    return results


if __name__ == "__main__":
    main()
