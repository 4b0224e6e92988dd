r"""Wasserstein-1 estimation with 1-Lipschitz networks and the KR loss (Anil, Lucas & Grosse 2019).

Kantorovich–Rubinstein duality: for distributions P, Q on Rⁿ with finite first moments,

    W₁(P, Q) = sup_{f 1-Lipschitz} E_P[f] − E_Q[f].

A GNP network (``BjorckLinear`` + ``GroupSort``) is 1-Lipschitz, so training it to maximize
the KR objective (minimize :class:`liplayers.losses.KRLoss`) estimates W₁ **from below**:
for any network ``f`` with guaranteed L2 bound ``L`` (``Sequential.lipschitz_bound()``),
``f/L`` is 1-Lipschitz, so ``E_P[f] − E_Q[f] ≤ L · W₁(P, Q)`` — we report
``est = (E_P f − E_Q f)/L`` (the division makes the inequality hold even if the weights are
not exactly orthonormal). Anil, Lucas & Grosse (2019) show tight estimates of the Wasserstein
distance as a use of GroupSort networks; ReLU networks with norm-constrained weights cannot
even represent |x| (the optimal potential of the 1-D scale case below).

Pairs with closed-form W₁:

* two Gaussians with the same covariance, ``N(μ₁, Σ)`` and ``N(μ₂, Σ)``: ``W₁ = ‖μ₁ − μ₂‖₂``
  (the translation coupling costs ``‖μ₁ − μ₂‖``, and the linear potential ``f(x) = uᵀx``,
  ``u = (μ₁ − μ₂)/‖μ₁ − μ₂‖``, achieves it);
* 1-D distributions through their quantile functions, ``W₁ = ∫₀¹ |F⁻¹(u) − G⁻¹(u)| du``
  (= ``∫ |F(x) − G(x)| dx``, used as a cross-check and for the mixture, whose quantile has
  no closed form). The optimal potential is ``f*(x) = ∫₀ˣ sign(G(t) − F(t)) dt``.

Population vs samples. The estimate is evaluated on ``--n-eval`` fresh samples of each
distribution (never used for training; training draws fresh batches every step, so it
optimizes the population objective). On finite samples, two effects: (1) the sample mean
``Ê_P f − Ê_Q f`` fluctuates around its population value with standard error ``se``
(reported; the population value is ≤ W₁ but the sample value may exceed it by a few ``se``);
(2) the *empirical* W₁ between the two eval samples (exact optimal assignment; 1-D: sorted
samples) is what duality bounds exactly on samples — ``Ê_P f − Ê_Q f ≤ L · W₁(P̂, Q̂)`` holds
without any noise, and the table checks it — but ``W₁(P̂, Q̂)`` is itself biased upward
(by ~ n^{-1/d}), so it is not the truth either. The table reports truth, estimate ± 2se,
empirical W₁ of the samples, and both checks.

Output (``--out``): ``wasserstein.png`` (estimates vs truth, training curves, learned vs
optimal 1-D potentials), ``results.json``, and the table on stdout.

    python examples/wasserstein.py --out results/wasserstein            # ≈ 1 min on 2 cores
    python examples/wasserstein.py --out /tmp/w --quick                 # seconds
"""
from __future__ import annotations

import functools
import math
import os
import sys
from typing import Callable, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import integrate  # noqa: E402
from scipy import stats as _stats  # noqa: E402

from _common import (Timer, make_parser, plt, print_table, progress, save_figure,  # noqa: E402
                     setup, write_results)

import liplayers as L  # noqa: E402

try:  # the library's KR loss; a local one otherwise
    from liplayers.losses import KRLoss as _KRLoss  # noqa: E402
except Exception:  # pragma: no cover
    _KRLoss = None

Sampler = Callable[[int, torch.Generator], torch.Tensor]


# --------------------------------------------------------------------------- distributions
class Case:
    """A pair (P, Q) with samplers, dimension, closed-form W₁ and (1-D) CDFs/quantiles."""

    def __init__(self, name: str, dim: int, sample_p: Sampler, sample_q: Sampler, truth: float,
                 description: str, cdf_p=None, cdf_q=None, check: Optional[float] = None):
        self.name, self.dim, self.description = name, dim, description
        self.sample_p, self.sample_q = sample_p, sample_q
        self.truth = float(truth)
        self.cdf_p, self.cdf_q = cdf_p, cdf_q
        self.check = check  # independent computation of W₁ (∫|F − G| for 1-D), or None


def _gaussian(mean: np.ndarray, chol: np.ndarray) -> Sampler:
    m = torch.as_tensor(mean, dtype=torch.float32)
    A = torch.as_tensor(chol, dtype=torch.float32)

    def sample(n: int, g: torch.Generator) -> torch.Tensor:
        return m + torch.randn(n, len(mean), generator=g) @ A.T

    return sample


def w1_quantile(ppf_p, ppf_q) -> float:
    """∫₀¹ |F⁻¹(u) − G⁻¹(u)| du by adaptive quadrature (open interval: the ends are integrable)."""
    val, _ = integrate.quad(lambda u: abs(float(ppf_p(u)) - float(ppf_q(u))), 0.0, 1.0, limit=400)
    return float(val)


def w1_quantile_grid(ppf_p, ppf_q, n: int = 1_000_000) -> float:
    """∫₀¹ |F⁻¹(u) − G⁻¹(u)| du by the midpoint rule on n cells (vectorized quantiles)."""
    u = (np.arange(n) + 0.5) / n
    return float(np.mean(np.abs(ppf_p(u) - ppf_q(u))))


def w1_cdf(cdf_p, cdf_q, lo: float, hi: float) -> float:
    """∫ |F(x) − G(x)| dx over [lo, hi] (both CDFs ≈ 0 below lo and ≈ 1 above hi)."""
    val, _ = integrate.quad(lambda x: abs(float(cdf_p(x)) - float(cdf_q(x))), lo, hi, limit=400)
    return float(val)


@functools.lru_cache(maxsize=1)
def make_cases() -> Tuple[Case, ...]:
    """The five pairs (cached: the closed forms take a second of quadrature)."""
    cases = []
    # 1) shifted isotropic Gaussians in 2-D
    mu = np.array([2.0, 1.0])
    cases.append(Case("gauss-shift-2d", 2, _gaussian(np.zeros(2), np.eye(2)), _gaussian(mu, np.eye(2)),
                      np.linalg.norm(mu), "N(0, I) vs N((2, 1), I)"))
    # 2) shifted anisotropic Gaussians in 8-D (same covariance)
    rng = np.random.default_rng(123)
    Q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    chol = Q @ np.diag(np.linspace(0.3, 2.0, 8))
    shift = rng.standard_normal(8)
    shift = 1.5 * shift / np.linalg.norm(shift)
    cases.append(Case("gauss-shift-8d", 8, _gaussian(np.zeros(8), chol), _gaussian(shift, chol),
                      np.linalg.norm(shift), "N(0, Σ) vs N(m, Σ), ‖m‖ = 1.5, anisotropic Σ"))
    # 3) 1-D scale: N(0, 1) vs N(0, 2²): W₁ = E|Z| = √(2/π); optimal potential ∝ −|x|
    n01, n02 = _stats.norm(0, 1), _stats.norm(0, 2)
    cases.append(Case("1d-scale", 1, _gaussian(np.zeros(1), np.eye(1)), _gaussian(np.zeros(1), 2 * np.eye(1)),
                      w1_quantile(n01.ppf, n02.ppf), "N(0, 1) vs N(0, 4)", n01.cdf, n02.cdf,
                      w1_cdf(n01.cdf, n02.cdf, -40, 40)))
    # 4) 1-D Gaussian vs centred exponential (same mean, so W₁ is not a mean difference)
    ex = _stats.expon(loc=-1.0)

    def sample_exp(n: int, g: torch.Generator) -> torch.Tensor:
        return -torch.log1p(-torch.rand(n, 1, generator=g)) - 1.0

    cases.append(Case("1d-gauss-exp", 1, _gaussian(np.zeros(1), np.eye(1)), sample_exp,
                      w1_quantile(n01.ppf, ex.ppf), "N(0, 1) vs Exp(1) − 1", n01.cdf, ex.cdf,
                      w1_cdf(n01.cdf, ex.cdf, -40, 60)))
    # 5) 1-D bimodal mixture vs Gaussian (quantile by numerical inversion of the mixture CDF)
    comp = _stats.norm(0, 0.5)

    def mix_cdf(x):
        return 0.5 * (comp.cdf(x + 2.0) + comp.cdf(x - 2.0))

    # the mixture's quantile by monotone interpolation of its CDF on a fine grid
    grid = np.linspace(-12.0, 12.0, 400_001)
    cdf_grid = mix_cdf(grid)
    keep = np.concatenate(([True], np.diff(cdf_grid) > 0))

    def mix_ppf(u):
        return np.interp(u, cdf_grid[keep], grid[keep])

    def sample_mix(n: int, g: torch.Generator) -> torch.Tensor:
        sign = torch.where(torch.rand(n, 1, generator=g) < 0.5, -2.0, 2.0)
        return sign + 0.5 * torch.randn(n, 1, generator=g)

    cases.append(Case("1d-bimodal", 1, sample_mix, _gaussian(np.zeros(1), np.eye(1)),
                      w1_quantile_grid(mix_ppf, n01.ppf), "½N(±2, 0.25) vs N(0, 1)", mix_cdf, n01.cdf,
                      w1_cdf(mix_cdf, n01.cdf, -40, 40)))
    return tuple(cases)


# --------------------------------------------------------------------------- model and training
def make_net(dim: int, width: int, depth: int) -> L.Sequential:
    layers: List[torch.nn.Module] = [L.BjorckLinear(dim, width), L.GroupSort(2)]
    for _ in range(depth - 1):
        layers += [L.BjorckLinear(width, width), L.GroupSort(2)]
    layers.append(L.BjorckLinear(width, 1))
    return L.Sequential(*layers)


def kr_loss(f_p: torch.Tensor, f_q: torch.Tensor) -> torch.Tensor:
    """−(mean f(P) − mean f(Q)) — :class:`liplayers.losses.KRLoss` with labels P = 1, Q = 0."""
    if _KRLoss is not None:
        f = torch.cat((f_p, f_q)).reshape(-1)
        y = torch.cat((torch.ones(len(f_p)), torch.zeros(len(f_q)))).to(f.device)
        return _KRLoss()(f, y)
    return -(f_p.mean() - f_q.mean())


def train(case: Case, steps: int, batch: int, width: int, depth: int, lr: float, g: torch.Generator,
          desc: str) -> Dict:
    net = make_net(case.dim, width, depth)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    curve = []
    net.train()
    for step in progress(range(steps), desc=desc):
        xp, xq = case.sample_p(batch, g), case.sample_q(batch, g)
        loss = kr_loss(net(xp), net(xq))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        curve.append(-float(loss.detach()))
    net.eval()
    return {"net": net, "curve": curve}


@torch.no_grad()
def evaluate(case: Case, net: L.Sequential, n_eval: int, n_assign: int, g: torch.Generator) -> Dict:
    Lip = net.lipschitz_bound()
    xp, xq = case.sample_p(n_eval, g), case.sample_q(n_eval, g)
    fp, fq = net(xp).double().reshape(-1) / Lip, net(xq).double().reshape(-1) / Lip
    est = float(fp.mean() - fq.mean())
    se = math.sqrt(float(fp.var()) / n_eval + float(fq.var()) / n_eval)
    # empirical W₁ of (sub)samples: exact optimal assignment (1-D: sorted samples)
    m = n_eval if case.dim == 1 else min(n_assign, n_eval)
    sp, sq = xp[:m].double(), xq[:m].double()
    if case.dim == 1:
        emp = float((sp.reshape(-1).sort().values - sq.reshape(-1).sort().values).abs().mean())
    else:
        from scipy.optimize import linear_sum_assignment

        cost = torch.cdist(sp, sq).numpy()
        rows, cols = linear_sum_assignment(cost)
        emp = float(cost[rows, cols].mean())
    on_sub = float(fp[:m].mean() - fq[:m].mean())
    return {"lipschitz_bound": Lip, "estimate": est, "se": se, "empirical_w1": emp, "n_empirical": m,
            "estimate_on_those_samples": on_sub}


def potential_curves(case: Case, net: L.Sequential, Lip: float) -> Dict:
    """Learned f/L and the optimal f*(x) = ∫₀ˣ sign(G − F) on a grid (both centred at the P-mean)."""
    xs = np.linspace(-5, 6, 400)
    with torch.no_grad():
        learned = net(torch.as_tensor(xs, dtype=torch.float32)[:, None]).double().reshape(-1).numpy() / Lip
    s = np.sign(case.cdf_q(xs) - case.cdf_p(xs))
    opt = np.concatenate(([0.0], np.cumsum(0.5 * (s[1:] + s[:-1]) * np.diff(xs))))
    # align the constants (potentials are defined up to one) at the grid mean
    learned = learned - learned.mean()
    opt = opt - opt.mean()
    return {"x": xs, "learned": learned, "optimal": opt}


# --------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> dict:
    p = make_parser(__doc__.splitlines()[0], default_out="results/wasserstein")
    p.add_argument("--steps", type=int, default=None, help="training steps per case (default 1500, quick 40)")
    p.add_argument("--batch", type=int, default=None, help="samples of each distribution per step")
    p.add_argument("--width", type=int, default=None, help="hidden width (even, for GroupSort(2))")
    p.add_argument("--depth", type=int, default=3, help="number of hidden layers")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--n-eval", type=int, default=None, help="held-out samples per distribution")
    p.add_argument("--cases", default="all", help="comma-separated case names, or 'all'")
    args = p.parse_args(argv)
    out = setup(args)
    quick = args.quick
    steps = args.steps or (40 if quick else 1500)
    batch = args.batch or (256 if quick else 1024)
    width = args.width or (16 if quick else 64)
    n_eval = args.n_eval or (1000 if quick else 20000)
    n_assign = 300 if quick else 1500
    g = torch.Generator().manual_seed(args.seed)

    cases = list(make_cases())
    if args.cases != "all":
        wanted = [c.strip() for c in args.cases.split(",")]
        unknown = set(wanted) - {c.name for c in cases}
        if unknown:
            raise SystemExit(f"unknown case(s) {sorted(unknown)}; known: {[c.name for c in cases]}")
        cases = [c for c in cases if c.name in wanted]

    rows, curves, potentials = [], {}, {}
    with Timer() as t_all:
        for case in cases:
            with Timer() as t:
                tr = train(case, steps, batch, width, args.depth, args.lr, g, desc=case.name)
                ev = evaluate(case, tr["net"], n_eval, n_assign, g)
            curves[case.name] = tr["curve"]
            if case.dim == 1:
                potentials[case.name] = potential_curves(case, tr["net"], ev["lipschitz_bound"])
            rows.append({
                "case": case.name, "d": case.dim, "W1 (truth)": case.truth,
                "W1 check": case.check if case.check is not None else float("nan"),
                "estimate": ev["estimate"], "2se": 2 * ev["se"], "est/truth": ev["estimate"] / case.truth,
                "est<=truth+2se": ev["estimate"] <= case.truth + 2 * ev["se"],
                "emp W1 (samples)": ev["empirical_w1"], "n emp": ev["n_empirical"],
                "net on them<=emp": ev["estimate_on_those_samples"] <= ev["empirical_w1"] * (1 + 1e-9),
                "L bound": ev["lipschitz_bound"], "seconds": t.seconds,
            })

    table = print_table(rows, title=f"W₁ estimates ({'quick' if quick else 'full'}: {steps} steps, batch {batch}, "
                                    f"width {width}, depth {args.depth}, {n_eval} eval samples)")

    # ---- figure
    n1d = len(potentials)
    fig, axes = plt.subplots(1, 2 + n1d, figsize=(4.2 * (2 + n1d), 3.6))
    ax = axes[0]
    idx = np.arange(len(rows))
    ax.bar(idx - 0.2, [r["W1 (truth)"] for r in rows], 0.4, label="truth (closed form)")
    ax.bar(idx + 0.2, [r["estimate"] for r in rows], 0.4, yerr=[r["2se"] for r in rows], label="KR estimate ± 2se")
    ax.set_xticks(idx)
    ax.set_xticklabels([r["case"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("W₁")
    ax.set_title("W₁: estimate vs truth")
    ax.legend(fontsize=8)
    ax = axes[1]
    for case in cases:
        c = np.asarray(curves[case.name])
        k = max(1, len(c) // 50)
        smooth = np.convolve(c, np.ones(k) / k, mode="valid")
        ax.plot(smooth / case.truth, label=case.name)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("step")
    ax.set_ylabel("batch KR objective / W₁")
    ax.set_title("training (fresh batches)")
    ax.legend(fontsize=7)
    for ax, (name, pc) in zip(axes[2:], potentials.items()):
        ax.plot(pc["x"], pc["optimal"], "k--", label="optimal f*")
        ax.plot(pc["x"], pc["learned"], label="learned f/L")
        ax.set_title(name)
        ax.set_xlabel("x")
        ax.legend(fontsize=8)
    fig.suptitle("Wasserstein-1 with 1-Lipschitz GroupSort networks (KR duality, Anil et al. 2019)")
    fig.tight_layout()
    png = save_figure(fig, out, "wasserstein.png")

    results = {"rows": rows, "table": table, "figure": png, "seconds": t_all.seconds,
               "config": {"steps": steps, "batch": batch, "width": width, "depth": args.depth, "lr": args.lr,
                          "n_eval": n_eval, "quick": quick, "seed": args.seed}}
    write_results(out, results)
    print(f"figure: {png}  ({t_all.seconds:.1f} s)")
    return results


if __name__ == "__main__":
    main()
