"""Certified accuracy against training time, one curve per training run.

Reads the per-epoch history that ``mnist_long_run.py`` writes (``results.json`` of a finished
run, else ``checkpoint.pt`` of a run in progress) from each directory given, and plots the
certified accuracy at each ε of the history (evaluated after every epoch on the first
``--eval-limit`` test images of the run) against the cumulative training time, with the run's
final full-test-set figure as a marker when it exists.

    python benchmarks/plot_training_curves.py results/mnist_long5 results/certified_accuracy/mnist-1.58/seed0 \\
        --labels "100 epochs" "24 epochs (shipped)" --out docs/gallery/mnist_certified_vs_time.png

Needs matplotlib (the ``docs`` extra).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple


def load_history(run: Path) -> Tuple[List[dict], Optional[dict]]:
    """(per-epoch rows, final full-test dict or None) of one run directory."""
    res = run / "results.json"
    if res.exists():
        data = json.loads(res.read_text())
        return data["history"], data.get("final_full_test")
    ckpt = run / "checkpoint.pt"
    if ckpt.exists():
        import torch

        return torch.load(ckpt, map_location="cpu", weights_only=False)["history"], None
    raise FileNotFoundError(f"{run}: neither results.json nor checkpoint.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run directories of mnist_long_run.py")
    ap.add_argument("--labels", nargs="*", default=None, help="one label per run (default: the directory names)")
    ap.add_argument("--eps", nargs="*", default=["1.58"], help="ε values to plot (keys of the history)")
    ap.add_argument("--out", type=Path, default=Path("training_curves.png"))
    ap.add_argument("--title", default="MNIST, L2: certified accuracy against training time (1 CPU thread)")
    args = ap.parse_args()
    if args.labels and len(args.labels) != len(args.runs):
        ap.error("--labels needs one label per run")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    styles = ["-", "--", ":", "-."]
    for i, run in enumerate(args.runs):
        hist, final = load_history(run)
        label = args.labels[i] if args.labels else run.name
        minutes = [row["train_time_s"] / 60 for row in hist]
        for j, eps in enumerate(args.eps):
            acc = [100 * row["certified"][eps] for row in hist]
            line, = ax.plot(minutes, acc, styles[j % len(styles)], label=f"{label}, ε = {eps} (first test images)")
            if final is not None and eps in final["certified"]:
                ax.plot([minutes[-1]], [100 * final["certified"][eps]], "o", color=line.get_color(),
                        label=f"{label}, ε = {eps}, full test set: {100 * final['certified'][eps]:.2f}%")
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_title(args.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
