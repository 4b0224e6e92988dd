r"""Decision-boundary curvature near inputs and a detector of perturbed inputs.

After Fawzi et al., "Empirical study of the topology and geometry of deep networks" (CVPR 2018),
and Moosavi-Dezfooli et al., "Robustness via curvature regularization, and vice versa" (CVPR 2019).

On scikit-learn's 8×8 digits (``liplayers.data.load_digits``, pixels in [0, 1], ``d = 64``)
we train a vanilla ReLU MLP (cross-entropy) and a GNP MLP (:func:`liplayers.zoo.architectures.gnp_mlp`,
Björck + MaxMin, τ-cross-entropy) and, with :mod:`liplayers.analysis.curvature`:

1. **Curvature profile** (as in Fawzi et al. 2018): the principal curvatures of the boundary
   between the predicted class and each other class, sorted and averaged over test inputs.
2. **Average curvature** ``κ̄_j`` (mean of the principal curvatures) and the **detector**
   (Fawzi et al. 2018): test inputs are split in two halves; the first half stays clean, the second is
   attacked by L2 PGD (:func:`liplayers.analysis.attacks.pgd_attack`) and only successful attacks are
   kept; an input is flagged as perturbed when its score exceeds a threshold.  A common
   form of the score sums Goldman's mean-curvature formula, which equals ``−(d−1)/2 · κ̄_j``
   (opposite orientation, see :mod:`liplayers.analysis.curvature`), so the two conventions
   flag opposite tails: we report the AUC (scikit-learn) of both, ``Σ_{j≠i} κ̄_j`` and the
   Goldman-formula score (column ``AUC eq.7 score``, ``= 1 − the former``), plot the ROC of
   the Goldman-formula score, and the accuracy of its best threshold (balanced).
3. **Relabelling** (Fawzi et al. 2018): how often ``argmax_{j≠i} κ̄_j`` at the perturbed
   input recovers the class predicted before the attack.

Both networks are piecewise linear (ReLU, MaxMin), so their exact Hessian is zero almost
everywhere: curvatures are measured **at scale h** (central differences of exact gradients,
``--h``, default 0.1 in pixel units; one-sided differences with h ≈ 0.1–1 are a common alternative).
With ``--h 0`` the exact Hessian is used (and all curvatures vanish for these models —
a useful sanity check).

Output (``--out``): ``curvature_profile.png``, ``detector_roc.png``, ``results.json``.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from _common import (Timer, make_parser, plt, print_table, progress, save_figure,  # noqa: E402
                     setup, write_results)
from liplayers.analysis.attacks import pgd_attack  # noqa: E402
from liplayers.analysis.curvature import average_curvature, principal_curvatures  # noqa: E402
from liplayers.data import load_digits  # noqa: E402
from liplayers.losses import TauCrossEntropyLoss  # noqa: E402
from liplayers.zoo.architectures import gnp_mlp  # noqa: E402
from liplayers.train import fit  # noqa: E402


def vanilla_mlp(d: int, num_classes: int, width: int) -> nn.Sequential:
    """``Flatten → Linear → ReLU → Linear → ReLU → Linear``."""
    return nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, num_classes))


def _roc(scores_clean: np.ndarray, scores_pert: np.ndarray) -> Dict[str, object]:
    from sklearn.metrics import auc, roc_curve

    y = np.r_[np.zeros(len(scores_clean)), np.ones(len(scores_pert))]
    s = np.r_[scores_clean, scores_pert]
    fpr, tpr, thr = roc_curve(y, s)
    # best balanced accuracy over thresholds (the accuracy at the optimal threshold)
    acc = 0.5 * (tpr + 1 - fpr)
    k = int(np.argmax(acc))
    return {"fpr": fpr, "tpr": tpr, "auc": float(auc(fpr, tpr)), "best_threshold": float(thr[k]),
            "best_accuracy": float(acc[k])}


def analyse(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, h: Optional[float],
            attack_steps: int, generator: torch.Generator) -> Dict[str, object]:
    """Curvature profile, detector ROC and relabelling for one trained model."""
    model.eval()
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator)
    clean_idx, pert_idx = perm[: n // 2], perm[n // 2:]
    with torch.no_grad():
        pred = model(x).argmax(1)
    xc = x[clean_idx]
    # attack the second half (against the model's prediction, as the detector sees it)
    xp0, yp0 = x[pert_idx], pred[pert_idx]
    x_adv = pgd_attack(model, xp0, yp0, eps, norm="l2", steps=attack_steps, domain=(0.0, 1.0), generator=generator)
    with torch.no_grad():
        ok = model(x_adv).argmax(1) != yp0
    xp, orig = x_adv[ok], yp0[ok]
    # curvature profile at clean inputs: boundary predicted class / every other class
    prof = []
    C = 10
    for j in range(C):
        with torch.no_grad():
            pc = model(xc).argmax(1)
        m = pc != j
        if bool(m.any()):
            prof.append(principal_curvatures(model, xc[m], other=j, h=h))
    profile = torch.cat(prof, 0)
    kb_clean = average_curvature(model, xc, h=h)
    kb_pert = average_curvature(model, xp, h=h) if xp.shape[0] else torch.empty(0, C, dtype=torch.float64)
    d = x[0].numel()
    score_c = torch.nan_to_num(kb_clean, nan=0.0).sum(1).numpy()
    score_p = torch.nan_to_num(kb_pert, nan=0.0).sum(1).numpy()
    # the Goldman-formula score is −(d−1)/2 · Σ_j κ̄_j (liplayers.analysis.curvature docstring): same detector,
    # opposite direction
    eq7_c, eq7_p = -(d - 1) / 2 * score_c, -(d - 1) / 2 * score_p
    empty = {"auc": float("nan"), "best_accuracy": float("nan"), "fpr": [], "tpr": []}
    ok_both = len(score_p) and len(score_c)
    roc = _roc(score_c, score_p) if ok_both else empty
    roc7 = _roc(eq7_c, eq7_p) if ok_both else empty
    if xp.shape[0]:
        ranks = []
        kbp = torch.nan_to_num(kb_pert, nan=float("-inf"))
        order = kbp.argsort(1, descending=True)
        for b in range(xp.shape[0]):
            ranks.append(int((order[b] == orig[b]).nonzero()[0]) + 1)
        ranks = np.array(ranks)
    else:
        ranks = np.array([], dtype=int)
    return {
        "model": name,
        "clean acc": float((pred == y).float().mean()),
        "attack success": float(ok.float().mean()),
        "n clean": int(xc.shape[0]), "n perturbed": int(xp.shape[0]),
        "mean κ̄ clean": float(score_c.mean() / (C - 1)),
        "mean κ̄ perturbed": float(score_p.mean() / (C - 1)) if len(score_p) else float("nan"),
        "AUC Σκ̄": roc["auc"], "AUC eq.7 score": roc7["auc"], "best-threshold acc": roc7["best_accuracy"],
        "relabel top-1": float(np.mean(ranks == 1)) if len(ranks) else float("nan"),
        "_profile": profile.sort(1).values.mean(0).numpy(),
        "_profile_abs_median": float(profile.abs().median()),
        "_roc": roc7, "_ranks": ranks, "_scores": (eq7_c, eq7_p),
    }


def main(argv: Optional[List[str]] = None) -> dict:
    p = make_parser(__doc__.splitlines()[0], default_out="results/curvature")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 40; --quick 3)")
    p.add_argument("--eps", type=float, default=1.0, help="L2 radius of the PGD perturbation (pixels in [0,1])")
    p.add_argument("--h", type=float, default=0.1, help="finite-difference scale of the Hessian (0: exact)")
    p.add_argument("--n-test", type=int, default=None, help="test inputs analysed (default 300; --quick 24)")
    p.add_argument("--tau", type=float, default=10.0, help="temperature of the GNP network's cross-entropy")
    args = p.parse_args(argv)
    out = setup(args)
    quick = args.quick
    epochs = args.epochs or (3 if quick else 40)
    n_test = args.n_test or (24 if quick else 300)
    width = 64 if quick else 128
    h = None if args.h == 0 else args.h
    attack_steps = 10 if quick else 50
    train, test = load_digits(seed=args.seed)
    x_test, y_test = test.tensors
    d = x_test[0].numel()

    models = {
        "vanilla ReLU MLP": (vanilla_mlp(d, 10, width), nn.CrossEntropyLoss(), 1e-3),
        "GNP MLP (Björck+MaxMin)": (gnp_mlp(d, 10, widths=(width, width)), TauCrossEntropyLoss(tau=args.tau), 3e-3),
    }
    rows, analyses = [], {}
    with Timer() as t_all:
        for name, (model, loss, lr) in models.items():
            torch.manual_seed(args.seed)
            with Timer() as t:
                fit(model, loss, train, epochs=epochs, lr=lr, batch_size=64, seed=args.seed,
                    progress=not args.no_progress)
            model.eval()
            gen = torch.Generator().manual_seed(args.seed)
            idx = torch.arange(min(n_test, x_test.shape[0]))
            a = analyse(name, model, x_test[idx], y_test[idx], args.eps, h, attack_steps, gen)
            a["train s"] = t.seconds
            analyses[name] = a
            rows.append({k: v for k, v in a.items() if not k.startswith("_")})

    cols = ["model", "clean acc", "attack success", "n clean", "n perturbed", "mean κ̄ clean", "mean κ̄ perturbed",
            "AUC Σκ̄", "AUC eq.7 score", "best-threshold acc", "relabel top-1", "train s"]
    print_table(rows, cols, digits=3, title=f"Curvature detector on digits (L2 PGD ε = {args.eps}, h = {args.h})")

    # ---- figures
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (name, a), c in zip(analyses.items(), ("tab:blue", "tab:orange")):
        prof = a["_profile"]
        ax.plot(np.arange(1, len(prof) + 1), prof, color=c, label=f"{name} (median |κ| = {a['_profile_abs_median']:.2g})")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("index of the sorted principal curvature")
    ax.set_ylabel(f"mean principal curvature (1/pixel units, h = {args.h})")
    ax.set_title("Curvature profile of the decision boundaries near test digits")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out, "curvature_profile.png")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for (name, a), c in zip(analyses.items(), ("tab:blue", "tab:orange")):
        r = a["_roc"]
        if len(r["fpr"]):
            ax.plot(r["fpr"], r["tpr"], color=c, label=f"{name}: AUC = {r['auc']:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="gray", label="chance")
    ax.set_xlabel("false positive rate (clean flagged as perturbed)")
    ax.set_ylabel("true positive rate (perturbed detected)")
    ax.set_title("ROC of the detector: Goldman-formula score > threshold")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    for ax, (name, a), c in zip(axes[1:], analyses.items(), ("tab:blue", "tab:orange")):
        sc, sp = a["_scores"]
        both = np.r_[sc, sp]
        bins = np.linspace(both.min(), both.max(), 30) if len(both) else 10
        ax.hist(sc, bins=bins, color=c, alpha=0.35, label=f"clean (n = {len(sc)})")
        ax.hist(sp, bins=bins, histtype="step", color="k", lw=1.5, label=f"PGD-perturbed (n = {len(sp)})")
        ax.set_xlabel(r"Goldman-formula score $-\frac{d-1}{2}\sum_{j\neq i}\bar\kappa_j$ (1/pixel units)")
        ax.set_ylabel("count")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out, "detector_roc.png")

    results = {"config": {"epochs": epochs, "eps": args.eps, "h": args.h, "n_test": n_test, "width": width,
                          "tau": args.tau, "seed": args.seed, "quick": quick},
               "rows": rows,
               "profiles": {k: a["_profile"] for k, a in analyses.items()},
               "roc": {k: {"fpr": a["_roc"]["fpr"], "tpr": a["_roc"]["tpr"]} for k, a in analyses.items()},
               "relabel_ranks": {k: a["_ranks"] for k, a in analyses.items()},
               "wall_time_s": t_all.seconds, "figures": ["curvature_profile.png", "detector_roc.png"]}
    write_results(out, results)
    print(f"wrote {out}/curvature_profile.png, {out}/detector_roc.png, {out}/results.json ({t_all.seconds:.1f} s)")
    return results


if __name__ == "__main__":
    main()
