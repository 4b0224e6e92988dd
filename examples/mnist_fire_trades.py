r"""FIRE vs TRADES vs Hellinger vs PGD adversarial training (and plain CE) on MNIST, L∞ ε = 0.3.

The set-up of Picot et al., "Adversarial Robustness via Fisher-Rao Regularization" (IEEE TPAMI 2022),
Table 1 (MNIST rows), scaled to a CPU:

* model: the small CNN of Zhang et al. (ICML 2019) used by Picot et al. on MNIST (4 convs, 2 dense);
* objectives: cross-entropy; Madry et al. (ICLR 2018) PGD adversarial training
  (:class:`liplayers.regularizers.adversarial.AdversarialTrainingLoss`); TRADES
  (:class:`liplayers.losses.TRADESLoss`, λ = 6 as Picot et al. use for it); FIRE
  (:class:`liplayers.losses.FIRELoss`, λ = 12, the paper's value); Hellinger
  (:class:`liplayers.losses.HellingerLoss`, λ = 12; Picot et al.'s appendix);
* inner maximization: L∞ PGD at ε = 0.3 with random start — the paper uses 40 steps of 0.01
  (``--train-steps 40 --train-step-size 0.01``); the CPU default is fewer, larger steps;
* ε warm-up (``--eps-warmup F``): the training radius of every adversarial objective (Madry,
  TRADES, FIRE, Hellinger alike) rises linearly from 0 to ε over the first fraction F of the
  optimizer steps (:class:`liplayers.losses.EpsilonRamp`), then stays at ε. Without it (F = 0, the
  default) PGD adversarial training at ε = 0.3 from the first step stays at chance on a short
  budget; long runs of the reference code of Madry et al. get past this plateau by training long;
* optimizer: SGD, momentum 0.9 (Nesterov), weight decay 5·10⁻⁴, learning rate divided by 10
  at 75 % and 90 % of the epochs (the paper: 0.01, 100 epochs, batch 256, all 60,000 images; the
  CPU default 0.05, since at 0.01 the network does not leave its initial plateau in ~100 steps);
* evaluation: clean accuracy; L∞ PGD-40 (step 0.01, margin loss, random start, best iterate)
  at ε = 0.3; AutoAttack (torchattacks, if installed) on the points PGD did not break;
* cost: wall time per epoch, and the time of one training step of FIRE and of TRADES measured
  **interleaved** (FIRE, TRADES, TRADES, FIRE, … on the same batch and weights), split into the
  inner attack and the whole step. Picot et al. report FIRE ~20 % faster end to end.

Why the step times should agree: both objectives run one clean forward pass, ``K`` attack
steps (a forward and an input-gradient pass each), one forward pass on ``x'`` and one backward
pass through both; they differ only in the divergence, a few element-wise operations on the
``B × 10`` probabilities, negligible next to a convolutional pass *when the passes are
compute-bound* (a CPU: the measured ratio is 1.0). On a GPU at MNIST sizes the passes are
bound by kernel launches, and the Fisher–Rao objective (log-softmax, exp, norm, arcsin, clamp
and their backward) launches more kernels than the KL: there FIRE measures ~17 % *slower* per
step (an H200, batch 128, 40 inner steps). Either way the loss cannot make FIRE 20 % faster; the
paper's runtimes compare the official code of each method end to end.

Outputs (``--out``): ``results.json``, ``fire_trades.png`` (accuracies with the spread over
seeds, and the step-time distributions).
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import Timer, make_parser, plt, print_table, save_figure, setup, write_results  # noqa: E402
from _mnist_common import (accuracy, add_data_args, autoattack_correct, fmt_ms, have_torchattacks,  # noqa: E402
                           load_data, mean_std, median, pgd_correct, small_cnn, time_interleaved, train)
from liplayers.losses import EpsilonRamp, FIRELoss, HellingerLoss, TRADESLoss  # noqa: E402
from liplayers.regularizers.adversarial import AdversarialTrainingLoss  # noqa: E402

METHODS = ("CE", "Madry AT", "TRADES", "FIRE", "Hellinger")
PAPER = {  # Picot et al. 2022, MNIST, ε = 0.3, small CNN, 100 epochs: natural / AutoAttack (%), runtime
    "Madry AT": (98.53, 88.62, "2h03"), "TRADES": (99.27, 94.27, "2h22"), "FIRE": (99.22, 94.44, "2h06"),
    "Hellinger": (99.31, 94.03, "2h06"),
}


def make_loss(method: str, args, gen: torch.Generator):
    kw = dict(eps=args.eps, norm="linf", steps=args.train_steps, step_size=args.train_step_size, domain=(0.0, 1.0),
              generator=gen)
    if method == "CE":
        return lambda m, x, y: F.cross_entropy(m(x), y)
    if method == "Madry AT":
        return AdversarialTrainingLoss(**kw)
    if method == "TRADES":
        return TRADESLoss(lam=args.trades_lambda, **kw)
    if method == "FIRE":
        return FIRELoss(lam=args.fire_lambda, **kw)
    if method == "Hellinger":
        return HellingerLoss(lam=args.hellinger_lambda, **kw)
    raise ValueError(f"unknown method {method!r}")


def set_train_eps(loss, eps: float) -> None:
    """Set the training radius of an adversarial objective (``set_eps`` when the loss has it)."""
    setter = getattr(loss, "set_eps", None)
    if callable(setter):
        setter(eps)
    elif hasattr(loss, "eps"):
        loss.eps = float(eps)


def eps_warmup_hook(loss, args, n_train: int):
    """``after_step`` callback ramping ε from 0 over the first ``args.eps_warmup`` of the steps (None: no ramp)."""
    if not args.eps_warmup or not hasattr(loss, "eps"):
        return None
    total = args.epochs * -(-n_train // args.batch_size)
    ramp = EpsilonRamp(0.0, args.eps, args.eps_warmup * total)
    step = [0]
    set_train_eps(loss, ramp(0))

    def after_step():
        step[0] += 1
        set_train_eps(loss, ramp(step[0]))
    return after_step


def sgd(model, args):
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    miles = sorted({max(1, int(round(0.75 * args.epochs))), max(1, int(round(0.9 * args.epochs)))})
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=miles, gamma=0.1)


def step_timing(args, x: torch.Tensor, y: torch.Tensor, device) -> Dict[str, object]:
    """FIRE vs TRADES: one optimizer step, and its inner attack alone, timed interleaved."""
    torch.manual_seed(args.seed)
    model = small_cnn().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: identical weights for every timed step
    xb, yb = x[:args.batch_size], y[:args.batch_size]
    losses = {m: make_loss(m, args, torch.Generator(device=device).manual_seed(args.seed)) for m in ("FIRE", "TRADES")}

    def step(name):
        def run():
            model.train()
            loss = losses[name](model, xb, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    def attack(name):
        def run():
            model.train()
            losses[name].adversarial(model, xb)
        return run

    steps = time_interleaved({"FIRE": step("FIRE"), "TRADES": step("TRADES")}, args.timing_rounds, device=device)
    attacks = time_interleaved({"FIRE": attack("FIRE"), "TRADES": attack("TRADES")}, args.timing_rounds,
                               device=device)
    ratio = median(steps["FIRE"]) / median(steps["TRADES"])
    paired = [f / t for f, t in zip(steps["FIRE"], steps["TRADES"])]
    return {"step_s": steps, "attack_s": attacks, "median_step_s": {k: median(v) for k, v in steps.items()},
            "median_attack_s": {k: median(v) for k, v in attacks.items()}, "ratio_fire_over_trades": ratio,
            "paired_ratio_q10_q50_q90": [float(np.quantile(paired, q)) for q in (0.1, 0.5, 0.9)],
            "batch_size": int(xb.shape[0]), "train_steps": args.train_steps}


def main(argv: Optional[List[str]] = None) -> dict:
    p = make_parser(__doc__.splitlines()[0], default_out="results/mnist_fire_trades")
    add_data_args(p, n_train=2000, n_test=1000)
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 2; --quick 1; paper 100)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per method (default 2; --quick 1)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (paper 256)")
    p.add_argument("--lr", type=float, default=0.05,
                   help="initial learning rate (paper 0.01 over 100 epochs; 0.01 stays on the initial plateau for the ~100 steps of a CPU run)")
    p.add_argument("--eps", type=float, default=0.3, help="L∞ radius of training and evaluation")
    p.add_argument("--eps-warmup", type=float, default=0.0,
                   help="fraction of the training steps over which the training ε of every adversarial "
                        "method rises linearly from 0 (0: full ε from the first step)")
    p.add_argument("--train-steps", type=int, default=None, help="inner PGD steps (default 3; paper 40)")
    p.add_argument("--train-step-size", type=float, default=None, help="inner PGD step (default 2.5·ε/steps; paper 0.01)")
    p.add_argument("--trades-lambda", type=float, default=6.0)
    p.add_argument("--fire-lambda", type=float, default=12.0)
    p.add_argument("--hellinger-lambda", type=float, default=12.0)
    p.add_argument("--n-eval", type=int, default=None, help="test images attacked by PGD-40 (default 200)")
    p.add_argument("--n-aa", type=int, default=None, help="test images given to AutoAttack (default 100)")
    p.add_argument("--aa-version", default="apgd", choices=("standard", "apgd", "none"))
    p.add_argument("--aa-steps", type=int, default=None, help="APGD steps of --aa-version apgd (default 10)")
    p.add_argument("--timing-rounds", type=int, default=None, help="interleaved FIRE/TRADES steps timed (default 10)")
    p.add_argument("--methods", default=",".join(METHODS))
    args = p.parse_args(argv)
    out = setup(args)
    q = args.quick
    if q:
        args.n_train, args.n_test = min(args.n_train or 128, 128), min(args.n_test or 64, 64)
    args.epochs = args.epochs or (1 if q else 2)
    args.train_steps = args.train_steps or (2 if q else 3)
    args.aa_steps = args.aa_steps or (2 if q else 10)
    n_seeds = args.seeds or (1 if q else 2)
    n_eval = args.n_eval or (32 if q else 200)
    n_aa = args.n_aa or (8 if q else 100)
    args.timing_rounds = args.timing_rounds or (1 if q else 10)
    eval_steps = 5 if q else 40
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not 0.0 <= args.eps_warmup <= 1.0:
        p.error(f"--eps-warmup must be in [0, 1], got {args.eps_warmup}")
    for m in methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r}; expected a subset of {METHODS}")
    device = torch.device(args.device)
    (x_tr, y_tr, x_te, y_te), data_desc = load_data(args, seed=args.seed)
    aa_version = args.aa_version if have_torchattacks() else "none"

    runs: Dict[str, List[dict]] = {m: [] for m in methods}
    with Timer() as t_all:
        timing = step_timing(args, x_tr, y_tr, device)
        for s in range(n_seeds):  # seeds outer: an interrupted run still has every method once
            for method in methods:
                seed = args.seed + s
                torch.manual_seed(seed)
                gen = torch.Generator(device=device).manual_seed(seed)
                model = small_cnn().to(device)
                opt, sched = sgd(model, args)
                loss = make_loss(method, args, gen)
                hist = train(model, loss, x_tr, y_tr, epochs=args.epochs,
                             batch_size=args.batch_size, optimizer=opt, scheduler=sched, seed=seed,
                             after_step=eps_warmup_hook(loss, args, x_tr.shape[0]), desc=f"{method} seed {seed}")
                xe, ye = x_te[:n_eval], y_te[:n_eval]
                ok = pgd_correct(model, xe, ye, args.eps, steps=eval_steps, step_size=0.01 if not q else None,
                                 seed=1000 + seed)
                row = {"seed": seed, "clean": accuracy(model, x_te, y_te), "PGD-40": float(ok.float().mean()),
                       "s/epoch": float(np.mean(hist["epoch_s"])), "loss": hist["loss"]}
                if aa_version != "none":
                    xa, ya, oka = xe[:n_aa], ye[:n_aa], ok[:n_aa].clone()
                    if bool(oka.any()):  # AutoAttack only where PGD failed: the worst case of both attacks
                        r = autoattack_correct(model, xa[oka], ya[oka], args.eps, aa_version, args.aa_steps, seed)
                        oka[oka.clone()] = r
                    row["AutoAttack"] = float(oka.float().mean())
                    row["PGD-40 on AA subset"] = float(ok[:n_aa].float().mean())
                runs[method].append(row)
                write_results(out, {"partial": True, "runs": runs, "timing": timing}, name="partial.json")

    summary = []
    for m in methods:
        r = {"method": m}
        for k in ("clean", "PGD-40", "AutoAttack", "s/epoch"):
            vals = [run[k] for run in runs[m] if k in run]
            r[k] = fmt_ms(vals, 1 if k == "s/epoch" else 3) if vals else "—"
            r[k + " mean"], r[k + " std"] = mean_std(vals)
        if m in PAPER:
            r["paper natural / AA"] = f"{PAPER[m][0] / 100:.4f} / {PAPER[m][1] / 100:.4f}"
        summary.append(r)
    title = (f"{data_desc}, small CNN, SGD lr {args.lr}, {args.epochs} epochs, batch {args.batch_size}, "
             f"inner PGD {args.train_steps} steps at L∞ ε = {args.eps}"
             + (f" (ε ramped from 0 over the first {args.eps_warmup:.0%} of the steps)" if args.eps_warmup else "")
             + f"; mean ± std over {n_seeds} seeds; "
             f"PGD-{eval_steps} on {min(n_eval, len(x_te))} and AutoAttack ({aa_version}) on "
             f"{min(n_aa, n_eval, len(x_te))} test images")
    print_table(summary, ["method", "clean", "PGD-40", "AutoAttack", "s/epoch", "paper natural / AA"], digits=3,
                title=title)
    ms = timing["median_step_s"]
    ma = timing["median_attack_s"]
    print_table([{"": "one training step", "FIRE (s)": ms["FIRE"], "TRADES (s)": ms["TRADES"],
                  "FIRE / TRADES": ms["FIRE"] / ms["TRADES"]},
                 {"": "inner attack only", "FIRE (s)": ma["FIRE"], "TRADES (s)": ma["TRADES"],
                  "FIRE / TRADES": ma["FIRE"] / ma["TRADES"]}], digits=4,
                title=f"Step time, interleaved, median of {args.timing_rounds} (batch {timing['batch_size']}, "
                      f"{args.train_steps} inner steps); paired ratio q10/q50/q90 = "
                      + " / ".join(f"{v:.3f}" for v in timing["paired_ratio_q10_q50_q90"]))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    xs = np.arange(len(methods))
    for k, (key, c) in enumerate((("clean", "tab:blue"), ("PGD-40", "tab:orange"), ("AutoAttack", "tab:red"))):
        vals = [[run[key] for run in runs[m] if key in run] for m in methods]
        if not any(vals):
            continue
        mean = [np.mean(v) if v else np.nan for v in vals]
        lo = [np.min(v) if v else np.nan for v in vals]
        hi = [np.max(v) if v else np.nan for v in vals]
        ax.bar(xs + (k - 1) * 0.27, mean, 0.27, color=c, label=key,
               yerr=[np.subtract(mean, lo), np.subtract(hi, mean)], capsize=3)
    ax.set_xticks(xs)
    ax.set_xticklabels(methods)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(f"accuracy (L∞ ε = {args.eps}); bars: min–max over seeds")
    ax.set_title(data_desc)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax = axes[1]
    ax.boxplot([timing["step_s"]["FIRE"], timing["step_s"]["TRADES"], timing["attack_s"]["FIRE"],
                timing["attack_s"]["TRADES"]])
    ax.set_xticks([1, 2, 3, 4])
    ax.set_xticklabels(["FIRE step", "TRADES step", "FIRE attack", "TRADES attack"])
    ax.set_ylabel("seconds (interleaved)")
    ax.set_title(f"FIRE / TRADES step time = {timing['ratio_fire_over_trades']:.3f}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out, "fire_trades.png")

    results = {"config": {k: v for k, v in vars(args).items()}, "data": data_desc, "eval_steps": eval_steps,
               "aa_version": aa_version, "n_eval": n_eval, "n_aa": n_aa, "summary": summary, "runs": runs,
               "timing": timing, "paper": PAPER, "wall_time_s": t_all.seconds, "figures": ["fire_trades.png"]}
    write_results(out, results)
    print(f"wrote {out}/fire_trades.png, {out}/results.json ({t_all.seconds:.1f} s)")
    return results


if __name__ == "__main__":
    main()
