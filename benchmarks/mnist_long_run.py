"""Long MNIST certified-training run (L2, ε = 1.58): GloRo's 4C3F shape with orthogonal layers.

4C3F (Leino et al. 2021): conv 32 (3×3) → conv 32 (4×4, stride 2) → conv 64 (3×3) →
conv 64 (4×4, stride 2) → dense 512 → dense 512 → dense 10, here with exactly orthogonal
convolutions (BCOP), MaxMin activations over channels and Björck dense layers. Loss: cross-
entropy with an offset on the true logit and a temperature (Prach & Lampert 2022):
CE((f − m·e_y)/τ, y) · τ with m = 2√2·ε and τ = 1/4 (Prach et al. 2023). Adam with a
one-cycle schedule. A checkpoint is written after every epoch; rerunning the same command
resumes from it. Trained on reconstructed MNIST training images (rebuilt from a public PNG export of the training set).

    python benchmarks/mnist_long_run.py --out results/mnist_long --epochs 50 --threads 1

Other data and architectures (e.g. CIFAR-10 on a GPU; the files are read from --data-dir, never
downloaded): ``--dataset cifar10 --preset lipconvnet-10-cifar10 --conv soc --eps 0.1412 --augment
--device cuda --batch-size 256 --epochs 200`` (any ``liplayers.zoo.PRESETS`` name and conv family).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from liplayers.certify import attack_check, certified_accuracy, certify, lipschitz_bound
from liplayers.data import load_dataset
from liplayers.zoo.pretrained import mnist_4c3f as build


def offset_ce(logits, y, offset, tau):
    onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return F.cross_entropy((logits - offset * onehot) / tau, y) * tau


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/mnist_long")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eps", type=float, default=1.58)
    ap.add_argument("--offset-scale", type=float, default=2 * math.sqrt(2))
    ap.add_argument("--tau", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset", choices=("mnist", "cifar10"), default="mnist")
    ap.add_argument("--preset", default=None, help="a liplayers.zoo.PRESETS architecture (default: zoo.mnist_4c3f)")
    ap.add_argument("--width", type=int, default=32, help="channels of the first convolutions of the default 4C3F")
    ap.add_argument("--dense", type=int, default=512, help="width of the dense layers of the default 4C3F")
    ap.add_argument("--conv", default=None, help="conv family of the preset (bcop, aol, sll, cpl, soc, cayley, bro, ...)")
    ap.add_argument("--augment", action="store_true", help="random crops (padding 4) and flips, for CIFAR-10")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--eval-limit", type=int, default=2000, help="test images evaluated after each epoch")
    ap.add_argument("--train-limit", type=int, default=None, help="use the first N training images (quick runs)")
    ap.add_argument("--test-limit", type=int, default=None, help="final evaluation on the first N test images")
    ap.add_argument("--attack-points", type=int, default=500,
                    help="certified test points attacked inside their radii at the end (PGD, restarts)")
    ap.add_argument("--finish-at", type=int, default=None,
                    help="on resume: stop at this epoch instead, annealing the learning rate from its current "
                         "value to 0 on a cosine over the remaining epochs (shortens a run that will not fit its time)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_dataset(args.dataset, args.data_dir)
    xtr, ytr = train.tensors
    xte, yte = test.tensors
    if args.train_limit:
        xtr, ytr = xtr[:args.train_limit], ytr[:args.train_limit]
    if args.test_limit:
        xte, yte = xte[:args.test_limit], yte[:args.test_limit]
    torch.manual_seed(args.seed)
    if args.preset:
        from liplayers.zoo import build_preset

        model = build_preset(args.preset, **({"conv": args.conv} if args.conv else {}))
    else:
        model = build(width=args.width, dense=args.dense)
    device = torch.device(args.device)
    model = model.to(device)
    augment = None
    if args.augment:
        from liplayers.augment import ImageAugmentation

        augment = ImageAugmentation(padding=4, flip=True, seed=args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(xtr) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=0.1)
    ckpt = out / "checkpoint.pt"
    start, history, elapsed = 0, [], 0.0
    if ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        model.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); sched.load_state_dict(st["sched"])
        start, history, elapsed = st["epoch"], st["history"], st["elapsed"]
        torch.set_rng_state(st["rng"])
        print(f"resumed at epoch {start}", flush=True)
        if st.get("finish_at") and args.finish_at is None:
            args.finish_at = st["finish_at"]
    if args.finish_at is not None and args.finish_at <= start:
        args.epochs = start  # already finished: evaluate only
    elif args.finish_at is not None:
        lr_now = opt.param_groups[0]["lr"]
        remaining = (args.finish_at - start) * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t, r=remaining: 0.5 * (1 + math.cos(math.pi * min(t, r) / r)))
        for g in opt.param_groups:
            g["initial_lr"] = lr_now
            g["lr"] = lr_now
        sched.base_lrs = [lr_now for _ in opt.param_groups]
        args.epochs = args.finish_at
        print(f"finishing at epoch {args.finish_at}: cosine from lr {lr_now:.3g} to 0", flush=True)
    offset = args.offset_scale * args.eps
    eval_eps = (0.5, 1.0, 1.58) if args.dataset == "mnist" else (36 / 255, 72 / 255, 108 / 255)
    for epoch in range(start, args.epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(xtr))
        tot = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            xb, yb = xtr[idx], ytr[idx]
            if augment is not None:
                xb = augment(xb)
            loss = offset_ce(model(xb.to(device)), yb.to(device), offset, args.tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
        elapsed += time.time() - t0
        model.eval()
        n = args.eval_limit
        res = certified_accuracy(model, (xte[:n], yte[:n]), eps=eval_eps, device=device)
        row = {"epoch": epoch + 1, "train_time_s": round(elapsed, 1), "loss": tot / steps_per_epoch,
               "clean": res.clean_accuracy, "lipschitz": res.lipschitz,
               "certified": {str(e): a for e, a in zip(res.eps, res.certified_accuracy)}}
        history.append(row)
        print(json.dumps(row), flush=True)
        tmp = out / "checkpoint.tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "epoch": epoch + 1, "history": history, "elapsed": elapsed, "rng": torch.get_rng_state(),
                    "finish_at": args.finish_at,
                    "args": vars(args)}, tmp)
        os.replace(tmp, ckpt)
        torch.save(model.state_dict(), out / "model.pt")
    model.eval()
    t0 = time.time()
    res = certified_accuracy(model, (xte, yte), eps=eval_eps, device=device)
    eval_s = time.time() - t0
    n_att = min(args.attack_points, len(xte))
    model = model.cpu()
    pred, radius = certify(model, xte[:n_att])
    keep = radius > 0
    report = attack_check(model, xte[:n_att][keep], radius=radius[keep], steps=50, restarts=2, torchattacks=None)
    final = {"final_full_test": {"clean": res.clean_accuracy, "n": res.n,
                                 "certified": {str(e): a for e, a in zip(res.eps, res.certified_accuracy)}},
             "bound": lipschitz_bound(model, tuple(xte.shape[1:])), "history": history, "train_time_s": elapsed,
             "eval_time_s": eval_s, "threads": args.threads, "args": vars(args),
             "attack_check": {"points": int(keep.sum()), "violations": int(report.violations)},
             "data": ("trained on reconstructed MNIST training images; original MNIST test set" if args.dataset == "mnist"
                      else args.dataset)}
    (out / "results.json").write_text(json.dumps(final, indent=2, default=str))
    print(json.dumps(final, default=str), flush=True)


if __name__ == "__main__":
    main()
