r"""ISO on MNIST, Table 1 of Shi-Garrier et al. scaled: LeNet, SGD, PGD-L∞ 40 × 0.01 at ε = 0.1 / 0.2 / 0.3.

Shi-Garrier, Bouaynaya & Delahaye, "Adversarial Robustness with Partial Isometry" (Entropy 2024), §4.2:
LeNet (conv 32, conv 64, dense 128), vanilla SGD, batch 32, learning rate 0.01, 30 epochs on the
60,000 training images; ISO loss ``(1 − η)·CE + η·α`` (eq. 15) with ``η`` growing geometrically from
0.002 to 0.006 over the epochs and the constant ``δ_m/ε = 10⁻³``; evaluation by L∞ PGD, 40 steps of
0.01, on the correctly classified test images. Their Table 1: vanilla 9740 correct, then 42 % / 4 % /
1 % of those still correct at ε = 0.1 / 0.2 / 0.3; ISO 8829 correct, then 91 % / 42 % / 2 %.

Here, on one budget (``--n-train`` images, ``--epochs``, batch 32, the same optimizer for all
but the GNP network, which needs Adam):

=================  ===========================================================================
vanilla            cross-entropy
ISO (paper)        :func:`liplayers.regularizers.iso_penalty`, exact Jacobian, ``K = δ_m/ε = 10⁻³``
ISO K=…            the same with other constants (``--iso-constants``; the sweep), best one
                   also with the randomized estimator (``ISO-rand``: forward-mode probes)
ISO-Euclid         :func:`liplayers.regularizers.iso_variants.euclidean_iso_penalty` (Euclidean
                   metric on the probabilities, same ``K``)
ISO-layer          :func:`liplayers.regularizers.iso_variants.layerwise_iso_penalty` (partial
                   isometry of every block but the logits layer, ``CE + λ·β``)
Parseval           :class:`liplayers.regularizers.ParsevalRetraction` after each step (Cissé et al. 2017)
JAC                :class:`liplayers.regularizers.JacobianLoss` (Hoffman et al. 2019)
FIRE               :class:`liplayers.losses.FIRELoss` (Picot et al. 2022), L∞ inner PGD
GNP                :func:`liplayers.zoo.gnp_conv_net` (orthogonal convs, MaxMin), τ-cross-entropy, Adam
=================  ===========================================================================

Metrics: clean accuracy; robust accuracy under PGD-40 (step 0.01) at each budget (budgets in
increasing order, each attacking the points that survived the smaller one), as the
fraction of all evaluated images and as the paper's ratio (correct after the attack / correct
clean); accuracy under Gaussian noise ``N(0, σ²I)`` (``--noise-sigmas``) beside PGD; training
time per epoch. Each ISO-type penalty can be estimated on the first ``--reg-batch`` samples of
each (shuffled) batch — an unbiased estimate of the batch mean that cuts the cost of the
Jacobian (default 8 of the 32; ``--reg-batch 0``: the whole batch, as in the paper).

Outputs (``--out``): ``results.json``, ``iso_table1.png`` (accuracy vs budget with the spread
over seeds; Gaussian noise; cost per epoch).
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import Timer, make_parser, plt, print_table, save_figure, setup, write_results  # noqa: E402
from _mnist_common import (accuracy, add_data_args, fmt_ms, gnp_cnn, lenet, load_data, mean_std,  # noqa: E402
                           noise_accuracy, pgd_correct, train)
from liplayers.functional.geometry import delta_m  # noqa: E402
from liplayers.losses import FIRELoss, TauCrossEntropyLoss  # noqa: E402
from liplayers.regularizers import JacobianLoss, ParsevalRetraction, iso_penalty, iso_schedule  # noqa: E402
from liplayers.regularizers.iso_variants import euclidean_iso_penalty, layerwise_iso_penalty  # noqa: E402

BUDGETS = (0.1, 0.2, 0.3)
PAPER = {"vanilla": (0.9740, (0.42, 0.04, 0.01)), "ISO (paper)": (0.8829, (0.91, 0.42, 0.02))}


class Scheduled:
    """``loss = (1 − lam_t)·CE(f(x), y) + lam_t·mean(penalty(model, x[:r]))`` with ISO's schedule
    ``lam_t`` (:func:`iso_schedule`), or ``loss = CE + lam·mean(penalty)`` with a fixed ``lam``."""

    def __init__(self, penalty: Callable, num_epochs: int, reg_batch: int, lam: Optional[float] = None,
                 lam_min: float = 0.002, lam_max: float = 0.006):
        self.penalty, self.num_epochs, self.reg_batch, self.lam = penalty, num_epochs, reg_batch, lam
        self.lam_min, self.lam_max, self.epoch = lam_min, lam_max, 0
        self.alpha_hist: List[float] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, model, x, y):
        ce = F.cross_entropy(model(x), y)
        xr = x[:self.reg_batch] if self.reg_batch else x
        pen = self.penalty(model, xr).mean()
        self.alpha_hist.append(float(pen.detach()))
        if self.lam is not None:
            return ce + self.lam * pen
        lam = iso_schedule(self.epoch, self.num_epochs, self.lam_min, self.lam_max)
        return (1 - lam) * ce + lam * pen


def iso_eps(K: float) -> float:
    """ISO's ε for a length factor K = δ_m/ε (10 classes)."""
    return delta_m(10) / K


def build(method: str, args, epochs: int, gen: torch.Generator, device):
    """``(model, loss(model, x, y), optimizer, after_step, set_epoch)``."""
    if method == "GNP":
        model = gnp_cnn(width=args.gnp_width).to(device)
        tau = TauCrossEntropyLoss(tau=args.tau)
        return model, (lambda m, x, y: tau(m(x), y)), torch.optim.Adam(model.parameters(), lr=1e-3), None, None
    model = lenet().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    ce = lambda m, x, y: F.cross_entropy(m(x), y)  # noqa: E731
    if method == "vanilla":
        return model, ce, opt, None, None
    if method == "Parseval":
        return model, ce, opt, ParsevalRetraction(model, beta=args.parseval_beta), None
    if method == "JAC":
        return model, JacobianLoss(lam=args.jac_lambda, generator=gen), opt, None, None
    if method == "FIRE":
        fire = FIRELoss(lam=args.fire_lambda, eps=args.fire_eps, norm="linf", steps=args.fire_steps, generator=gen)
        return model, fire, opt, None, None
    if method.startswith("ISO-layer"):
        obj = Scheduled(lambda m, x: layerwise_iso_penalty(m, x, skip_last=True, generator=gen), epochs,
                        args.reg_batch, lam=args.layer_lambda)
        return model, obj, opt, None, None
    if method.startswith("ISO"):
        K = 1e-3 if method == "ISO (paper)" else args.best_K
        if method.startswith("ISO K="):
            K = float(method.split("=")[1])
        eps = iso_eps(K)
        if method.startswith("ISO-Euclid"):
            pen = lambda m, x: euclidean_iso_penalty(m, x, eps, scale=K)  # noqa: E731
        elif method.startswith("ISO-rand"):
            pen = lambda m, x: iso_penalty(m, x, eps, estimator="randomized", num_probes=2, generator=gen)  # noqa
        else:
            pen = lambda m, x: iso_penalty(m, x, eps)  # noqa: E731
        obj = Scheduled(pen, epochs, args.reg_batch)
        return model, obj, opt, None, obj.set_epoch
    raise ValueError(f"unknown method {method!r}")


def evaluate(model, x, y, args, seed: int, steps: int) -> dict:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[s:s + 500]).argmax(1) for s in range(0, len(x), 500)])
    correct = pred == y
    row = {"clean": float(correct.float().mean()), "n_correct": int(correct.sum())}
    xc, yc = x[correct], y[correct]
    # budgets in increasing order, each attacking only the survivors of the smaller one: a point
    # broken at ε is broken at every ε' > ε (the same adversarial point lies in the larger ball), so
    # this is the worst case over the attacks run, at ~half the cost of attacking every budget
    alive = torch.ones(len(xc), dtype=torch.bool, device=x.device)
    for eps in sorted(BUDGETS):
        if bool(alive.any()):
            idx = alive.nonzero().flatten()
            alive[idx] = pgd_correct(model, xc[idx], yc[idx], eps, steps=steps,
                                     step_size=0.01 if steps >= 40 else None, seed=seed)
        row[f"PGD {eps:g}"] = float(alive.sum()) / len(x)
        row[f"ratio {eps:g}"] = float(alive.float().mean()) if len(xc) else 0.0
    for s in args.noise_sigmas:
        row[f"noise {s:g}"] = noise_accuracy(model, x, y, s, seed=seed)
    return row


def main(argv: Optional[List[str]] = None) -> dict:
    p = make_parser(__doc__.splitlines()[0], default_out="results/mnist_iso")
    add_data_args(p, n_train=400, n_test=1000)
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 3; --quick 1; paper 30)")
    p.add_argument("--seeds", type=int, default=None, help="seeds of the main methods (default 3; --quick 1)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (paper: 0, plain SGD)")
    p.add_argument("--iso-constants", default="0.1,1.0", help="length factors K = δ_m/ε swept besides 1e-3")
    p.add_argument("--best-K", type=float, default=None, help="K of ISO-rand / ISO-Euclid / 3-seed ISO "
                                                              "(default: the best of the sweep)")
    p.add_argument("--reg-batch", type=int, default=8, help="samples per batch for the ISO-type penalties (0: all)")
    p.add_argument("--layer-lambda", type=float, default=0.1)
    p.add_argument("--parseval-beta", type=float, default=0.1)
    p.add_argument("--jac-lambda", type=float, default=0.05)
    p.add_argument("--fire-lambda", type=float, default=6.0)
    p.add_argument("--fire-eps", type=float, default=0.1)
    p.add_argument("--fire-steps", type=int, default=3)
    p.add_argument("--gnp-width", type=int, default=16)
    p.add_argument("--tau", type=float, default=8.0)
    p.add_argument("--n-eval", type=int, default=None, help="test images attacked (default 100)")
    p.add_argument("--noise-sigmas", type=lambda s: [float(v) for v in s.split(",")], default=[0.3, 0.5])
    p.add_argument("--multi-seed", default="vanilla,ISO best,Parseval,JAC,FIRE,GNP",
                   help="methods trained with every seed (the others: one seed)")
    args = p.parse_args(argv)
    out = setup(args)
    q = args.quick
    if q:
        args.n_train, args.n_test = min(args.n_train or 64, 64), min(args.n_test or 32, 32)
        args.fire_steps, args.iso_constants, args.reg_batch = 1, "1.0", 4
    epochs = args.epochs or (1 if q else 3)
    n_seeds = args.seeds or (1 if q else 3)
    n_eval = args.n_eval or (32 if q else 100)
    steps = 3 if q else 40
    device = torch.device(args.device)
    (x_tr, y_tr, x_te, y_te), data_desc = load_data(args, seed=args.seed)
    xe, ye = x_te[:n_eval], y_te[:n_eval]
    multi = {m.strip() for m in args.multi_seed.split(",")}
    sweep = [1e-3] + [float(v) for v in args.iso_constants.split(",") if v.strip()]

    runs: Dict[str, List[dict]] = {}
    alpha_traces: Dict[str, List[float]] = {}

    def run(method: str, seed: int, label: Optional[str] = None) -> dict:
        torch.manual_seed(seed)
        gen = torch.Generator(device=device).manual_seed(seed)
        model, loss, opt, after, set_epoch = build(method, args, epochs, gen, device)
        hist = train(model, loss, x_tr, y_tr, epochs=epochs, batch_size=args.batch_size, optimizer=opt, seed=seed,
                     after_step=after, set_epoch=set_epoch, desc=f"{label or method} seed {seed}")
        row = evaluate(model, xe, ye, args, 1000 + seed, steps)
        row.update(seed=seed, **{"s/epoch": float(np.mean(hist["epoch_s"]))}, loss=hist["loss"])
        row["clean (all test)"] = accuracy(model, x_te, y_te)  # every test image, not only the attacked ones
        if isinstance(loss, Scheduled):
            alpha_traces[f"{label or method} seed {seed}"] = loss.alpha_hist
            row["final penalty"] = float(np.mean(loss.alpha_hist[-5:]))
        runs.setdefault(label or method, []).append(row)
        return row

    with Timer() as t_all:
        # 1. sweep of the ISO constant (first seed); the paper's K = 1e-3 is the first entry
        for K in sweep:
            run("ISO (paper)" if K == 1e-3 else f"ISO K={K:g}", args.seed)
        scores = {K: np.mean([runs["ISO (paper)" if K == 1e-3 else f"ISO K={K:g}"][0][k]
                              for k in ("clean", "PGD 0.1")]) for K in sweep}
        args.best_K = args.best_K or max(scores, key=scores.get)
        best_label = "ISO (paper)" if args.best_K == 1e-3 else f"ISO K={args.best_K:g}"
        # 2. every method, the main ones with every seed
        plan = ["vanilla", "ISO (paper)", "ISO best", "ISO-rand", "ISO-Euclid", "ISO-layer", "Parseval", "JAC",
                "FIRE", "GNP"]
        for s in range(n_seeds):  # seeds outer: an interrupted run still has every method once
            for method in plan:
                if s > 0 and method not in multi:
                    continue
                seed = args.seed + s
                if method == "ISO best":
                    if args.best_K == 1e-3 or (best_label in runs and len(runs[best_label]) > s):
                        continue  # already trained (in the sweep, or as the paper's constant)
                    run(f"ISO K={args.best_K:g}", seed, best_label)
                elif method == "ISO (paper)" and s == 0:
                    continue  # trained in the sweep
                else:
                    run(method, seed)
                write_results(out, {"partial": True, "runs": runs, "best_K": args.best_K}, name="partial.json")

    metrics = ["clean", "clean (all test)"] + [f"PGD {e:g}" for e in BUDGETS] + [f"ratio {e:g}" for e in BUDGETS] + \
        [f"noise {s:g}" for s in args.noise_sigmas] + ["s/epoch"]
    summary = []
    for name, rs in runs.items():
        r = {"method": name, "seeds": len(rs)}
        for k in metrics:
            vals = [x[k] for x in rs]
            r[k] = fmt_ms(vals, 1 if k == "s/epoch" else 3)
            r[k + " mean"], r[k + " std"] = mean_std(vals)
            r[k + " min"], r[k + " max"] = float(np.min(vals)), float(np.max(vals))
        if name in PAPER:
            r["paper"] = f"{PAPER[name][0]:.3f}; " + " / ".join(f"{v:.2f}" for v in PAPER[name][1])
        summary.append(r)
    title = (f"{data_desc} (PGD on {len(xe)}), LeNet, SGD lr {args.lr} momentum {args.momentum}, batch "
             f"{args.batch_size}, {epochs} epochs, η 0.002→0.006; ISO constant sweep K ∈ {sweep}, best K = "
             f"{args.best_K:g}; mean ± std over seeds; 'ratio' = correct after PGD / correct clean (the paper's %)")
    print_table(summary, ["method", "seeds", "clean", "clean (all test)"] + [f"PGD {e:g}" for e in BUDGETS] +
                [f"ratio {e:g}" for e in BUDGETS] + [f"noise {s:g}" for s in args.noise_sigmas] +
                ["s/epoch", "paper"], digits=3, title=title)

    # ---- figure
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), gridspec_kw={"width_ratios": [2, 1.2, 1]})
    cmap = plt.get_cmap("tab20")
    for k, (name, rs) in enumerate(runs.items()):
        vals = np.array([[x["clean"]] + [x[f"PGD {e:g}"] for e in BUDGETS] for x in rs])
        axes[0].plot((0,) + BUDGETS, vals.mean(0), "o-", color=cmap(k), label=f"{name} ({len(rs)})")
        if len(rs) > 1:
            axes[0].fill_between((0,) + BUDGETS, vals.min(0), vals.max(0), color=cmap(k), alpha=0.15)
        nz = np.array([[x["clean"]] + [x[f"noise {s:g}"] for s in args.noise_sigmas] for x in rs])
        axes[1].plot([0] + list(args.noise_sigmas), nz.mean(0), "s--", color=cmap(k), label=name)
    axes[0].set_xlabel("L∞ PGD-40 budget ε")
    axes[0].set_ylabel("accuracy (fraction of all evaluated test images)")
    axes[0].set_title("Robust accuracy (band: min–max over seeds)")
    axes[0].legend(fontsize=7, ncol=2)
    axes[1].set_xlabel("Gaussian noise σ")
    axes[1].set_ylabel("accuracy")
    axes[1].set_title("Random noise")
    names = list(runs)
    axes[2].barh(names, [np.mean([x["s/epoch"] for x in runs[n]]) for n in names], color=[cmap(k) for k in
                                                                                        range(len(names))])
    axes[2].invert_yaxis()
    axes[2].set_xlabel("training time per epoch (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out, "iso_table1.png")

    results = {"config": {k: v for k, v in vars(args).items()}, "data": data_desc, "epochs": epochs,
               "n_seeds": n_seeds, "pgd_steps": steps, "sweep": sweep, "sweep_scores": scores,
               "best_K": args.best_K, "summary": summary, "runs": runs, "penalty_traces": alpha_traces,
               "paper": PAPER, "wall_time_s": t_all.seconds, "figures": ["iso_table1.png"]}
    write_results(out, results)
    print(f"wrote {out}/iso_table1.png, {out}/results.json ({t_all.seconds:.1f} s)")
    return results


if __name__ == "__main__":
    main()
