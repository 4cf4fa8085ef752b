"""Fine-tune the default embedder (dlib-resnet) on LFW View-1 DevTrain identities and report
DevTest verification accuracy before and after.

Training data: every image of every identity named in pairsDevTrain.txt (View-1's DevTest
identities are disjoint from them; checked), centre face detected by our MTCNN and aligned
with the embedder's AlignSpec; images without a detection are left out of training. The
detections come from core.lfw's cache (shared with bench/lfw_verify; MTCNN runs
only for images missing there), so both benches see the same faces.
Evaluation: View-1 protocol of bench/lfw_verify --view1 (threshold chosen on DevTrain
pairs, accuracy on DevTest pairs), plus DevTest ROC AUC, which needs no threshold. Note the
DevTrain pairs' images are training images, so after fine-tuning the DevTrain threshold is
chosen on faces the network has seen.

Only the last residual level (dlib's alevel0, one 256-channel block) and the final linear
layer are trained by default; the 13 blocks below it run once per face (and its mirror
image with --flip) and their output is cached, which is what makes this feasible on a CPU.

    python bench/finetune_lfw.py                      # ~8 min on 1 torch thread, detections cached
    python bench/finetune_lfw.py --identities 100     # quick smoke run

The last lines printed are the figures to record: DevTest accuracy and AUC before and
after, steps, wall time and training throughput (faces/s).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from scipy.stats import binomtest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.embedders import get_embedder  # noqa: E402
from models.train import (LFW, LfwCentreFaces, SplitNetwork, TrainConfig, Trainer,  # noqa: E402
                          View1Evaluator, load_folder_tree, view1_pairs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=Path, default=LFW)
    parser.add_argument("--out", type=Path, default=Path("/tmp/facegroup-finetune-lfw"),
                        help="checkpoint folder (last.pt, summary.json)")
    parser.add_argument("--trainable", default="last", help="fc | last | all | K (see models.train)")
    parser.add_argument("--mining", default="semi-hard", choices=("semi-hard", "batch-hard"))
    parser.add_argument("--alpha", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam step relative to each tensor's RMS")
    parser.add_argument("--epochs", type=int, default=10, help="the last epoch is the result reported")
    parser.add_argument("-P", type=int, default=32)
    parser.add_argument("-K", type=int, default=4)
    parser.add_argument("--flip", action="store_true",
                        help="also train on mirrored faces (doubles the frozen-trunk pass over training faces)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: other jobs share this machine's 2 cores)")
    parser.add_argument("--identities", type=int, default=0, help="use only the first N DevTrain identities")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    train_pairs, test_pairs = view1_pairs(args.lfw)
    train_ids = sorted({p.parent.name for a, b, _ in train_pairs for p in (a, b)})
    test_ids = {p.parent.name for a, b, _ in test_pairs for p in (a, b)}
    if set(train_ids) & test_ids:
        raise SystemExit(f"DevTrain and DevTest share identities: {sorted(set(train_ids) & test_ids)[:5]}")
    if args.identities:
        train_ids = train_ids[:args.identities]

    device = torch.device(args.device)
    embedder = get_embedder("dlib-resnet", device)
    aligner = LfwCentreFaces(embedder)
    faces = load_folder_tree(args.lfw, embedder.align, aligner, identities=train_ids)
    t_chips = time.perf_counter() - start
    split = SplitNetwork(embedder.network, args.trainable)
    t0 = time.perf_counter()
    evaluator = View1Evaluator(args.lfw, split, embedder, device, aligner)
    before = evaluator.evaluate(split)
    correct_before = evaluator.devtest_correct
    t_eval = time.perf_counter() - t0
    config = TrainConfig(trainable=args.trainable, mining=args.mining, alpha=args.alpha, lr=args.lr,
                         p=args.P, k=args.K, flip=args.flip)
    t0 = time.perf_counter()
    trainer = Trainer(embedder, faces, config, args.out, device, evaluator, split)
    t_features = time.perf_counter() - t0
    trainer.run(args.epochs)
    after = trainer.history[-1]
    wall = time.perf_counter() - start

    usable = trainer.sampler.faces
    print(f"\ntraining data: {len(faces.labels)} faces of {len(faces.identities)} DevTrain identities "
          f"({len(faces.skipped)} images without a detection left out; {usable} faces of identities "
          f"with >= 2 faces form the batches); View-1 pair images undetected: {evaluator.undetected}")
    print(f"trained: {config.describe_objective()}, --trainable {args.trainable}, adam lr {args.lr} x RMS, "
          f"flip {args.flip}, {args.epochs} epochs, {trainer.step} steps")
    print("(the View-1 threshold is chosen on DevTrain pairs, whose images are training images; "
          "DevTest AUC needs no threshold)")
    print(f"{'':>8} {'DevTest acc':>12} {'threshold':>10} {'DevTrain acc':>13} {'DevTest AUC':>12}")
    for name, r in (("before", before), *((f"epoch {h['epoch']}", h) for h in trainer.history)):
        print(f"{name:>8} {r['devtest_accuracy']:12.4f} {r['threshold']:10.4f} "
              f"{r['devtrain_accuracy']:13.4f} {r['devtest_auc']:12.5f}")
    change = after["devtest_accuracy"] - before["devtest_accuracy"]
    fixed = int((evaluator.devtest_correct & ~correct_before).sum())
    broken = int((~evaluator.devtest_correct & correct_before).sum())
    # exact McNemar test: under "no change", a discordant pair is fixed or broken with p = 1/2
    p_value = binomtest(fixed, fixed + broken).pvalue if fixed + broken else 1.0
    step_speed = trainer.train_faces / max(trainer.train_seconds, 1e-9)
    trunk_faces = len(faces.labels) * (2 if args.flip else 1)
    trunk_speed = trunk_faces / max(t_features, 1e-9)
    print(f"time: training chips {t_chips:.0f} s, View-1 chips + trunk features + evaluation {t_eval:.0f} s, "
          f"training trunk features {t_features:.0f} s ({trunk_speed:.1f} faces/s), "
          f"{trainer.step} steps {trainer.train_seconds:.1f} s; torch threads {args.threads}, device {device}")
    summary = {"before": before, "history": trainer.history, "wall_s": wall, "chips_s": t_chips,
               "view1_s": t_eval, "features_s": t_features, "train_s": trainer.train_seconds,
               "train_faces_per_s": step_speed, "trunk_faces_per_s": trunk_speed,
               "faces": len(faces.labels), "identities": len(faces.identities),
               "skipped": len(faces.skipped), "config": vars(config), "epochs": args.epochs,
               "steps": trainer.step, "devtest_fixed": fixed, "devtest_broken": broken,
               "mcnemar_p": p_value, "threads": args.threads, "checkpoint": str(args.out / "last.pt")}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"DevTest accuracy {before['devtest_accuracy']:.4f} -> {after['devtest_accuracy']:.4f} "
          f"({'+' if change >= 0 else ''}{change * 100:.1f} points: {fixed} pairs fixed, {broken} broken, "
          f"of {len(correct_before)}; McNemar p = {p_value:.2f}); "
          f"DevTest AUC {before['devtest_auc']:.5f} -> {after['devtest_auc']:.5f}")
    print(f"--trainable {args.trainable}: {trainer.step} steps ({args.epochs} epochs of P={args.P} x K={args.K}), "
          f"wall time {wall:.0f} s; training {step_speed:.0f} faces/s (steps on cached trunk features; "
          f"the trunk pass ran at {trunk_speed:.1f} faces/s), checkpoint {args.out / 'last.pt'}")


if __name__ == "__main__":
    main()
