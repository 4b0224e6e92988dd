r"""Accuracy vs certified robustness of GNP networks: the loss sets the trade-off
(Béthune et al., "Pay attention to your loss", NeurIPS 2022).

GNP MLPs (:func:`liplayers.zoo.architectures.gnp_mlp`: Björck-orthonormal dense layers + MaxMin) are
trained on scikit-learn's 8×8 digits (default; no download) or MNIST (``--dataset mnist
--data-dir DIR`` with the IDX ``.gz`` files) with

* the multiclass **hinge** loss (margin κ) and **HKR** (hinge + Kantorovich–Rubinstein,
  Serrurier et al.) — :class:`liplayers.losses.HingeMarginLoss`, :class:`~liplayers.losses.HKRLoss`;
* **cross-entropy with temperature** ``CE(τ·f, y)`` at several τ —
  :class:`~liplayers.losses.TauCrossEntropyLoss` (Béthune et al.: for a 1-Lipschitz
  network the temperature, not the architecture, sets the accuracy–robustness trade-off;
  small τ ⇒ large margins, robust but less accurate; large τ ⇒ accurate, small margins).

Every model is evaluated with :func:`liplayers.certify.certified_accuracy` (sound L2
certificates from the weights the network uses in eval mode, last-layer refinement) at
several radii; a sample of the certificates is attacked with
:func:`liplayers.certify.attack_check` (must find 0 violations).

Output (``--out``): ``tradeoff.png`` (clean vs certified accuracy, and certified accuracy
vs radius per loss), ``results.json``.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import Timer, make_parser, plt, print_table, save_figure, setup, write_results  # noqa: E402
from liplayers.certify import attack_check, certified_accuracy  # noqa: E402
from liplayers.data import load_dataset  # noqa: E402
from liplayers.losses import HingeMarginLoss, HKRLoss, TauCrossEntropyLoss  # noqa: E402
from liplayers.zoo.architectures import gnp_mlp  # noqa: E402
from liplayers.train import fit  # noqa: E402


def configurations(quick: bool):
    """``(label, family, loss)``: hinge / HKR and τ-CE at several τ."""
    taus = (1.0, 8.0, 64.0) if quick else (1.0, 4.0, 16.0, 64.0, 256.0)
    cfgs = [("hinge κ=0.5", "hinge", HingeMarginLoss(margin=0.5)),
            ("HKR α=50, κ=0.5", "HKR", HKRLoss(alpha=50.0, margin=0.5))]
    cfgs += [(f"τ-CE τ={t:g}", "tau", TauCrossEntropyLoss(tau=t)) for t in taus]
    return cfgs


def main(argv: Optional[List[str]] = None) -> dict:
    p = make_parser(__doc__.splitlines()[0], default_out="results/digits_certified")
    p.add_argument("--dataset", default="digits", choices=("digits", "mnist", "fashion-mnist"))
    p.add_argument("--data-dir", default=None, help="directory with the IDX .gz files (MNIST / Fashion-MNIST)")
    p.add_argument("--limit", type=int, default=None, help="truncate each split to this many samples")
    p.add_argument("--epochs", type=int, default=None, help="epochs per model (default 60 digits / 5 MNIST)")
    p.add_argument("--width", type=int, default=None, help="hidden width (two hidden layers)")
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)
    out = setup(args)
    quick = args.quick
    mnist = args.dataset != "digits"
    limit = args.limit or ((600 if mnist else None) if quick else None)
    train, test = load_dataset(args.dataset, args.data_dir, seed=args.seed, limit=limit)
    x_test, y_test = test.tensors
    d = x_test[0].numel()
    epochs = args.epochs or (3 if quick else (5 if mnist else 60))
    width = args.width or (64 if quick else (512 if mnist else 256))
    eps = (0.0, 0.1, 0.25, 0.5, 1.0) if not mnist else (0.0, 0.5, 1.0, 1.58)
    eps_focus = eps[3] if not mnist else 1.58
    n_check = 100 if quick else 300

    rows, curves = [], {}
    with Timer() as t_all:
        for label, family, loss in configurations(quick):
            torch.manual_seed(args.seed)
            model = gnp_mlp(d, 10, widths=(width, width))
            with Timer() as t:
                fit(model, loss, train, epochs=epochs, lr=args.lr, batch_size=128 if mnist else 64, seed=args.seed,
                    progress=not args.no_progress,
                    scheduler=lambda opt: torch.optim.lr_scheduler.OneCycleLR(
                        opt, max_lr=args.lr, total_steps=epochs * ((len(train) + (127 if mnist else 63))
                                                                   // (128 if mnist else 64))))
            model.eval()
            res = certified_accuracy(model, (x_test, y_test), eps=eps)
            idx = torch.arange(min(n_check, x_test.shape[0]))
            rep = attack_check(model, x_test[idx], radius=res.radii[idx].to(torch.float64).clone(), steps=30,
                               torchattacks=None)
            row = {"loss": label, "clean acc": res.clean_accuracy}
            for e, a in zip(res.eps, res.certified_accuracy):
                if e > 0:
                    row[f"cert@{e:g}"] = a
            row.update({"median radius": float(res.radii[res.correct].median()) if bool(res.correct.any()) else 0.0,
                        "L bound": res.lipschitz, "violations": rep.violations, "checked": rep.n_certified,
                        "train s": t.seconds, "family": family})
            rows.append(row)
            grid = np.linspace(0, max(eps) * 1.2, 200)
            curves[label] = (grid, [float((res.correct & (res.radii >= e)).float().mean()) for e in grid])

    cols = ["loss", "clean acc"] + [f"cert@{e:g}" for e in eps if e > 0] + ["median radius", "L bound", "checked",
                                                                           "violations", "train s"]
    print_table(rows, cols, digits=3, title=f"GNP MLP on {args.dataset} ({len(train)} train / {len(test)} test), "
                                            f"{epochs} epochs, L2 certified accuracy")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ax = axes[0]
    marker = {"hinge": "s", "HKR": "D", "tau": "o"}
    tau_rows = [r for r in rows if r["family"] == "tau"]
    ax.plot([r["clean acc"] for r in tau_rows], [r[f"cert@{eps_focus:g}"] for r in tau_rows], "-", color="tab:blue",
            lw=1, alpha=0.6)
    for k, r in enumerate(rows):
        ax.plot(r["clean acc"], r[f"cert@{eps_focus:g}"], marker[r["family"]], ms=8,
                color="tab:blue" if r["family"] == "tau" else ("tab:red" if r["family"] == "hinge" else "tab:green"))
        ax.annotate(r["loss"], (r["clean acc"], r[f"cert@{eps_focus:g}"]), textcoords="offset points",
                    xytext=(5, 4 if k % 2 == 0 else -11), fontsize=8)  # alternate: close points stay readable
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel(f"certified accuracy at L2 ε = {eps_focus:g}")
    ax.set_title("Accuracy–robustness trade-off set by the loss")
    ax.grid(alpha=0.3)
    ax = axes[1]
    cmap = plt.get_cmap("viridis")
    k_tau = 0
    for r in rows:
        grid, acc = curves[r["loss"]]
        if r["family"] == "tau":
            color = cmap(k_tau / max(len(tau_rows) - 1, 1))
            k_tau += 1
            ls = "-"
        else:
            color, ls = ("tab:red", "--") if r["family"] == "hinge" else ("tab:green", "--")
        ax.plot(grid, acc, ls, color=color, label=r["loss"])
    ax.set_xlabel("L2 radius ε (input units, pixels in [0, 1])")
    ax.set_ylabel("certified accuracy")
    ax.set_title("Certified accuracy vs radius")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"GNP MLP (Björck + MaxMin, widths {width}×2) on {args.dataset}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out, "tradeoff.png")

    results = {"config": {"dataset": args.dataset, "epochs": epochs, "width": width, "lr": args.lr, "eps": eps,
                          "limit": limit, "seed": args.seed, "quick": quick},
               "rows": rows, "wall_time_s": t_all.seconds, "figures": ["tradeoff.png"]}
    write_results(out, results)
    print(f"wrote {out}/tradeoff.png, {out}/results.json ({t_all.seconds:.1f} s)")
    return results


if __name__ == "__main__":
    main()
