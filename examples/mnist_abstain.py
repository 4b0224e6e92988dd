r"""Training with the ⊥ class (GloRo) vs post-hoc abstention on MNIST: accuracy / abstention / certified error.

Two ways to let a Lipschitz classifier answer "⊥" (don't know) where it cannot certify:

* **post hoc**: train with a cross-entropy (here τ-cross-entropy, Béthune et al. 2022), then wrap the
  network in :class:`liplayers.certify.AbstainingClassifier` — predict ⊥ where the certified L2
  radius is below a margin ``m``;
* **trained for it**: GloRo (Leino, Wang & Fredrikson, ICML 2021) adds the logit
  ``f_⊥ = max_{j≠a}(f_j + ε K_aj)`` and trains a cross-entropy over the ``C + 1`` classes
  (:class:`liplayers.losses.GloRoLoss`; also its TRADES-style variant). At inference the
  argmax is ⊥ exactly where the certified radius is below ``ε``: the same rule as the
  abstaining wrapper at ``m = ε``.

Every network is the same GNP convolutional body (orthogonal convolutions, MaxMin, Björck dense
layer) with a plain ``nn.Linear`` head, so that GloRo's pairwise constants
``K_aj = L_body ‖w_a − w_j‖`` (and their gradient) reach the head, as in the paper. During GloRo
training ``L_body = 1`` (its construction); every reported number comes from the sound
certificate (:class:`~liplayers.certify.AbstainingClassifier`: bounds computed from the weights
as they run, pairwise last-layer rule), and the accepted predictions are attacked by L2 PGD at
their margin as a check (a broken certificate would be a bug: the count must be 0).

For every margin ``m`` on a grid: **accuracy** (correct and certified at ``m`` — the verified
robust accuracy), **abstention** (radius < m), **certified error** (accepted but wrong: a
confident mistake that no perturbation of size < m can undo). Training uses ``ε`` ramped
linearly from 0 over the first half of the steps (GloRo's practice).

Outputs (``--out``): ``results.json``, ``abstain_tradeoff.png``.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from _common import Timer, make_parser, plt, print_table, save_figure, setup, write_results  # noqa: E402
from _mnist_common import accuracy, add_data_args, gnp_cnn, load_data, predict, train  # noqa: E402
from liplayers.analysis.attacks import pgd_attack  # noqa: E402
from liplayers.certify import AbstainingClassifier, lipschitz_bound  # noqa: E402
from liplayers.losses import GloRoLoss, TauCrossEntropyLoss  # noqa: E402
from liplayers.nn.container import Sequential  # noqa: E402

METHODS = ("τ-CE + post-hoc ⊥", "GloRo", "GloRo-TRADES")


def build(width: int, hidden: int) -> Sequential:
    """GNP body (:func:`gnp_cnn` without its last layer) + a plain ``nn.Linear`` head."""
    body = list(gnp_cnn(width=width, hidden=hidden))[:-1]
    return Sequential(*body, nn.Linear(hidden, 10))


class GloRoObjective:
    """``GloRoLoss`` on the model's logits with ``K_aj = 1·‖w_a − w_j‖`` and a linear ε ramp."""

    def __init__(self, eps: float, ramp_steps: int, lam: Optional[float]):
        self.loss = GloRoLoss(0.0, lam=lam)
        self.eps, self.ramp, self.t = eps, max(ramp_steps, 1), 0

    def __call__(self, model, x, y):
        self.loss.set_eps(self.eps * min(1.0, self.t / self.ramp))
        self.t += 1
        return self.loss(model(x), y, 1.0, model[-1].weight)


def curves(radius: torch.Tensor, correct: torch.Tensor, margins: np.ndarray) -> Dict[str, np.ndarray]:
    r, c = radius.cpu().double(), correct.cpu()
    acc = np.array([float(((r >= m) & c).double().mean()) for m in margins])
    abst = np.array([float((r < m).double().mean()) for m in margins])
    err = np.array([float(((r >= m) & ~c).double().mean()) for m in margins])
    return {"accuracy": acc, "abstention": abst, "certified error": err}


def main(argv: Optional[List[str]] = None) -> dict:
    p = make_parser(__doc__.splitlines()[0], default_out="results/mnist_abstain")
    add_data_args(p, n_train=3000, n_test=1000)
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 3; --quick 1)")
    p.add_argument("--eps", type=float, default=1.0, help="GloRo training radius (L2)")
    p.add_argument("--trades", type=float, default=2.0, help="λ of the GloRo-TRADES variant")
    p.add_argument("--tau", type=float, default=8.0, help="temperature of the τ-cross-entropy")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--max-margin", type=float, default=2.5)
    p.add_argument("--n-check", type=int, default=None, help="accepted test images attacked (default 200)")
    args = p.parse_args(argv)
    out = setup(args)
    q = args.quick
    if q:
        args.n_train, args.n_test = min(args.n_train or 256, 256), min(args.n_test or 128, 128)
    epochs = args.epochs or (1 if q else 3)
    n_check = args.n_check or (16 if q else 200)
    device = torch.device(args.device)
    (x_tr, y_tr, x_te, y_te), data_desc = load_data(args, seed=args.seed)
    batch = 64
    ramp = (epochs * ((len(x_tr) + batch - 1) // batch)) // 2
    margins = np.linspace(0.0, args.max_margin, 26)

    rows, curve_data = [], {}
    with Timer() as t_all:
        for method in METHODS:
            torch.manual_seed(args.seed)
            model = build(args.width, args.hidden).to(device)
            if method.startswith("GloRo"):
                loss = GloRoObjective(args.eps, ramp, args.trades if method == "GloRo-TRADES" else None)
            else:
                tau = TauCrossEntropyLoss(tau=args.tau)
                loss = lambda m, x, y: tau(m(x), y)  # noqa: E731
            with Timer() as t:
                train(model, loss, x_tr, y_tr, epochs=epochs, batch_size=batch, seed=args.seed,
                      optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), desc=method)
            model.eval()
            wrapper = AbstainingClassifier(model, margin=args.eps)
            pred, radius = wrapper.certify(x_te)  # pred: −1 where radius < ε
            clean = predict(model, x_te)
            correct = clean == y_te
            cv = curves(radius, correct, margins)
            rep = wrapper.report((x_te, y_te))
            # the wrapper's own report at m = ε agrees with the curve built from the radii
            k = int(np.argmin(np.abs(margins - args.eps)))
            assert abs(margins[k] - args.eps) > 1e-9 or abs(rep.accuracy - cv["accuracy"][k]) < 1e-12
            # attack the accepted predictions at their margin: a success would be a broken certificate
            acc_idx = ((pred >= 0) & correct).nonzero().flatten()[:n_check]
            broken = 0
            if len(acc_idx):
                adv = pgd_attack(model, x_te[acc_idx], y_te[acc_idx], args.eps * 0.999, norm="l2", steps=20,
                                 domain=(0.0, 1.0), generator=torch.Generator(device=device).manual_seed(args.seed))
                broken = int((predict(model, adv) != y_te[acc_idx]).sum())
            L = lipschitz_bound(model, input_shape=tuple(x_te.shape[1:]))
            rows.append({"method": method, "clean acc": accuracy(model, x_te, y_te),
                         f"accuracy@{args.eps:g}": rep.accuracy, f"abstention@{args.eps:g}": rep.abstention_rate,
                         f"cert. error@{args.eps:g}": rep.error_rate, "selective acc": rep.selective_accuracy,
                         "median radius": float(radius.median()), "L bound": float(L),
                         "PGD-broken certificates": f"{broken}/{len(acc_idx)}", "train s": t.seconds})
            curve_data[method] = cv
    print_table(rows, list(rows[0]), digits=3,
                title=f"{data_desc}, GNP CNN + linear head, {epochs} epochs; ⊥ where the certified L2 radius < {args.eps:g}")

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    colors = dict(zip(METHODS, ("tab:blue", "tab:red", "tab:green")))
    for method, cv in curve_data.items():
        c = colors[method]
        axes[0].plot(margins, cv["accuracy"], "-", color=c, label=f"{method}: accuracy")
        axes[0].plot(margins, cv["abstention"], "--", color=c, label=f"{method}: abstention")
        axes[0].plot(margins, cv["certified error"], ":", color=c, label=f"{method}: certified error")
        axes[1].plot(cv["abstention"], cv["certified error"], "-o", ms=3, color=c, label=method)
        k = int(np.argmin(np.abs(margins - args.eps)))
        axes[1].plot(cv["abstention"][k], cv["certified error"][k], "*", ms=14, color=c, mec="k")
    axes[0].axvline(args.eps, color="gray", lw=0.8)
    axes[0].set_xlabel("margin m (L2): ⊥ where the certified radius < m")
    axes[0].set_ylabel("fraction of test images")
    axes[0].set_title("Accuracy / abstention / certified error vs margin")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("abstention rate")
    axes[1].set_ylabel("certified error (accepted and wrong)")
    axes[1].set_title(f"Trade-off over m ∈ [0, {args.max_margin:g}] (★: m = ε = {args.eps:g})")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out, "abstain_tradeoff.png")
    results = {"config": {k: v for k, v in vars(args).items()}, "data": data_desc, "epochs": epochs,
               "margins": margins, "rows": rows, "curves": curve_data, "wall_time_s": t_all.seconds,
               "figures": ["abstain_tradeoff.png"]}
    write_results(out, results)
    print(f"wrote {out}/abstain_tradeoff.png, {out}/results.json ({t_all.seconds:.1f} s)")
    return results


if __name__ == "__main__":
    main()
