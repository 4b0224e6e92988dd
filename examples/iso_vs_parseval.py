r"""Vanilla, ISO, Parseval, Jacobian, FIRE and GNP networks on one budget (the comparison of Shi-Garrier
et al., "Adversarial Robustness with Partial Isometry", Entropy 2024, Table 1).

Same data (scikit-learn digits, pixels in [0, 1], or MNIST with ``--dataset mnist
--data-dir DIR``), same MLP architecture (``d → W → W → 10``), same optimizer (Adam), epochs and
batch size for every method:

============  ===========================================================================
vanilla       cross-entropy, ReLU
ISO           :class:`liplayers.regularizers.ISOLoss` (Shi-Garrier et al. 2024 eq. 15, exact
              Jacobian, η from their geometric schedule 0.002 → 0.006, ``K = δ_m/ε_iso``)
Parseval      cross-entropy + :class:`liplayers.regularizers.ParsevalRetraction` after every
              optimizer step (Cissé et al. 2017; separate learning and regularization
              steps), ReLU
JAC           :class:`liplayers.regularizers.JacobianLoss` (CE + λ/2 ‖J‖²_F, random projection)
FIRE          :class:`liplayers.losses.FIRELoss` (Picot et al. 2022 eq. 7, L∞ PGD inner max.)
GNP           :func:`liplayers.zoo.architectures.gnp_mlp` (Björck + MaxMin), τ-cross-entropy
============  ===========================================================================

Evaluation, on the test set: clean accuracy; robust accuracy under L∞ PGD (40 steps, step
0.01, as in Shi-Garrier et al. 2024) at budgets 0.1 / 0.2 / 0.3 — the layout of their Table 1, given as
the fraction of all test images classified correctly both clean and attacked (an image
broken at a smaller budget counts as broken at the larger ones); **certified**
accuracy from :func:`liplayers.certify.certified_accuracy` (sound for every model here: the
bound is computed from the actual weights of plain and Lipschitz layers alike; L∞ radius
``r₂/√d``) at L∞ 0.1 and L2 0.5; mean training time per epoch; and the run-to-run
variability (mean ± std over ``--seeds`` initializations — ISO is reported to depend
strongly on the initialization while Parseval does not).

Output (``--out``): ``robustness.png`` (accuracy vs L∞ budget with the spread over seeds,
training time per epoch), ``results.json``.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from _common import Timer, make_parser, plt, print_table, progress, save_figure, setup, write_results  # noqa: E402
from liplayers.analysis.attacks import pgd_attack  # noqa: E402
from liplayers.certify import certified_accuracy  # noqa: E402
from liplayers.data import load_dataset  # noqa: E402
from liplayers.losses import FIRELoss, TauCrossEntropyLoss  # noqa: E402
from liplayers.zoo.architectures import gnp_mlp  # noqa: E402
from liplayers.regularizers import ISOLoss, JacobianLoss, ParsevalRetraction  # noqa: E402

BUDGETS = (0.1, 0.2, 0.3)
METHODS = ("vanilla", "ISO", "Parseval", "JAC", "FIRE", "GNP")


def relu_mlp(d: int, width: int, num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, num_classes))


def build(method: str, d: int, width: int, epochs: int, args, generator: torch.Generator):
    """``(model, loss(model, x, y) -> scalar, after_step or None, set_epoch or None)`` for a method."""
    if method == "GNP":
        model = gnp_mlp(d, 10, widths=(width, width))
        tau = TauCrossEntropyLoss(tau=args.tau)
        return model, lambda m, x, y: tau(m(x), y), None, None
    model = relu_mlp(d, width)
    ce = lambda m, x, y: F.cross_entropy(m(x), y)  # noqa: E731
    if method == "vanilla":
        return model, ce, None, None
    if method == "Parseval":
        return model, ce, ParsevalRetraction(model, beta=args.parseval_beta), None
    if method == "ISO":
        iso = ISOLoss(eps=args.iso_eps, num_epochs=epochs)
        return model, iso, None, iso.set_epoch
    if method == "JAC":
        jac = JacobianLoss(lam=args.jac_lambda, generator=generator)
        return model, jac, None, None
    if method == "FIRE":
        fire = FIRELoss(lam=args.fire_lambda, eps=args.fire_eps, norm="linf", steps=args.fire_steps,
                        domain=(0.0, 1.0), generator=generator)
        return model, fire, None, None
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def train(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
          batch_size: int, seed: int, after_step=None, set_epoch=None, desc: str = "") -> List[float]:
    """Adam; returns the wall time of each epoch (seconds)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    times = []
    for epoch in progress(range(epochs), desc=desc):
        if set_epoch is not None:
            set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(x.shape[0], generator=g)
        for s in range(0, x.shape[0], batch_size):
            idx = perm[s:s + batch_size]
            loss = loss_fn(model, x[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step()
        times.append(time.perf_counter() - t0)
    model.eval()
    return times


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack_steps: int,
             generator: torch.Generator) -> Dict[str, float]:
    model.eval()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    row = {"clean": float(correct.float().mean())}
    ok = correct
    for eps in BUDGETS:
        # Shi-Garrier et al. 2024: 40 steps of 0.01; fewer steps (--quick) use the default 2.5·ε/steps
        step = 0.01 if attack_steps >= 40 else None
        x_adv = pgd_attack(model, x, y, eps, norm="linf", steps=attack_steps, step_size=step, domain=(0.0, 1.0),
                           generator=generator)
        with torch.no_grad():
            # an adversarial example of a smaller budget is one of this budget too
            ok = ok & (model(x_adv).argmax(1) == y)
        row[f"PGD {eps:g}"] = float(ok.float().mean())
    cl = certified_accuracy(model, (x, y), eps=(BUDGETS[0],), norm="linf")
    c2 = certified_accuracy(model, (x, y), eps=(0.5,), norm="l2")
    row[f"cert L∞ {BUDGETS[0]:g}"] = float(cl.certified_accuracy[0])
    row["cert L2 0.5"] = float(c2.certified_accuracy[0])
    row["L bound"] = float(cl.lipschitz)
    return row


def main(argv: Optional[List[str]] = None) -> dict:
    p = make_parser(__doc__.splitlines()[0], default_out="results/iso_vs_parseval")
    p.add_argument("--dataset", default="digits", choices=("digits", "mnist", "fashion-mnist"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None, help="truncate each split to this many samples")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 30; --quick 2)")
    p.add_argument("--seeds", type=int, default=None, help="initializations per method (default 3; --quick 2)")
    p.add_argument("--width", type=int, default=None, help="hidden width (default 128)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--iso-eps", "--iso-epsilon", dest="iso_eps", type=float, default=1.0,
                   help="ISO ε (L2 input units); K = δ_m/ε (--iso-epsilon: the old name)")
    p.add_argument("--parseval-beta", type=float, default=0.5, help="Parseval retraction β (0.5 = one Björck step)")
    p.add_argument("--jac-lambda", type=float, default=0.05)
    p.add_argument("--fire-lambda", type=float, default=6.0)
    p.add_argument("--fire-eps", type=float, default=0.1, help="FIRE inner-maximization L∞ radius")
    p.add_argument("--fire-steps", type=int, default=None, help="FIRE PGD steps (default 5; --quick 2)")
    p.add_argument("--tau", type=float, default=8.0, help="GNP τ-cross-entropy temperature")
    args = p.parse_args(argv)
    out = setup(args)
    quick = args.quick
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r}; expected a subset of {METHODS}")
    mnist = args.dataset != "digits"
    limit = args.limit or ((500 if mnist else 400) if quick else None)
    train_set, test_set = load_dataset(args.dataset, args.data_dir, seed=0, limit=limit)
    x_tr, y_tr = train_set.tensors
    x_te, y_te = test_set.tensors
    if quick:
        x_te, y_te = x_te[:150], y_te[:150]
    d = x_tr[0].numel()
    epochs = args.epochs or (2 if quick else 30)
    n_seeds = args.seeds or (2 if quick else 3)
    width = args.width or (32 if quick else 128)
    args.fire_steps = args.fire_steps or (2 if quick else 5)
    attack_steps = 10 if quick else 40

    runs: Dict[str, List[dict]] = {m: [] for m in methods}
    with Timer() as t_all:
        for method in methods:
            for s in range(n_seeds):
                seed = args.seed + s
                torch.manual_seed(seed)
                gen = torch.Generator().manual_seed(seed)
                model, loss_fn, after, set_epoch = build(method, d, width, epochs, args, gen)
                times = train(model, loss_fn, x_tr, y_tr, epochs=epochs, lr=args.lr, batch_size=64, seed=seed,
                              after_step=after, set_epoch=set_epoch, desc=f"{method} seed {seed}")
                row = evaluate(model, x_te, y_te, attack_steps, torch.Generator().manual_seed(1000 + seed))
                row["s/epoch"] = float(np.mean(times))
                row["seed"] = seed
                runs[method].append(row)

    metrics = ["clean"] + [f"PGD {e:g}" for e in BUDGETS] + [f"cert L∞ {BUDGETS[0]:g}", "cert L2 0.5", "s/epoch"]
    summary = []
    for m in methods:
        r = {"method": m}
        for k in metrics:
            v = np.array([run[k] for run in runs[m]])
            r[k] = f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}" if k != "s/epoch" else \
                f"{v.mean():.3f}"
            r[k + " mean"], r[k + " std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
        r["L bound"] = float(np.mean([run["L bound"] for run in runs[m]]))
        summary.append(r)
    print_table(summary, ["method"] + metrics + ["L bound"], digits=3,
                title=f"{args.dataset}: {len(x_tr)} train / {len(x_te)} test, MLP width {width}, {epochs} epochs, "
                      f"mean ± std over {n_seeds} seeds (robust acc: correct clean and under L∞ PGD)")

    # ---- figure: accuracy vs budget with the spread over seeds; time per epoch
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [2, 1]})
    ax = axes[0]
    budgets = (0.0,) + BUDGETS
    colors = dict(zip(METHODS, ("tab:gray", "tab:purple", "tab:blue", "tab:brown", "tab:green", "tab:orange")))
    for m in methods:
        vals = np.array([[run["clean"]] + [run[f"PGD {e:g}"] for e in BUDGETS] for run in runs[m]])
        mean, lo, hi = vals.mean(0), vals.min(0), vals.max(0)
        ax.plot(budgets, mean, "o-", color=colors[m], label=m)
        ax.fill_between(budgets, lo, hi, color=colors[m], alpha=0.15)
        cert = np.mean([run[f"cert L∞ {BUDGETS[0]:g}"] for run in runs[m]])
        if cert > 0:
            ax.plot([BUDGETS[0]], [cert], "*", ms=12, color=colors[m], mec="k")
    ax.plot([], [], "*", color="w", mec="k", ms=12, label=f"certified at L∞ {BUDGETS[0]:g}")
    ax.set_xlabel("L∞ attack budget ε (pixels in [0, 1])")
    ax.set_ylabel(f"accuracy (clean at ε = 0, else robust under PGD-{attack_steps})")
    ax.set_title(f"Robust accuracy on {args.dataset} (band: min–max over {n_seeds} seeds)")
    ax.set_xticks(budgets)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    t = [np.mean([run["s/epoch"] for run in runs[m]]) for m in methods]
    ax.barh(methods, t, color=[colors[m] for m in methods])
    ax.set_xlabel("training time per epoch (s, 1 CPU thread)")
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    ax.set_title("Cost")
    fig.tight_layout()
    save_figure(fig, out, "robustness.png")

    results = {"config": {"dataset": args.dataset, "epochs": epochs, "seeds": n_seeds, "width": width, "lr": args.lr,
                          "iso_eps": args.iso_eps, "parseval_beta": args.parseval_beta,
                          "jac_lambda": args.jac_lambda, "fire_lambda": args.fire_lambda, "fire_eps": args.fire_eps,
                          "fire_steps": args.fire_steps, "tau": args.tau, "attack_steps": attack_steps,
                          "limit": limit, "quick": quick},
               "summary": summary, "runs": runs, "wall_time_s": t_all.seconds, "figures": ["robustness.png"]}
    write_results(out, results)
    print(f"wrote {out}/robustness.png, {out}/results.json ({t_all.seconds:.1f} s)")
    return results


if __name__ == "__main__":
    main()
