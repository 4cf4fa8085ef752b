"""LFW face verification through our MTCNN + alignment + embedder.

View-2 (default): the 10 folds of pairs.txt; each fold's distance threshold is the one
that maximises accuracy on the other 9 folds; we report mean +- std over folds.
View-1 (--view1): threshold chosen on pairsDevTrain.txt, accuracy on pairsDevTest.txt;
every choice that affects accuracy (alignment, augmentation) is made with this mode only.

The labelled face is the detection nearest the image centre; images with no detection
are embedded from the mean landmark positions of detected LFW faces (see core.lfw) and
counted as undetected. By default every LFW image is embedded (so the detection rate
covers all 13,233 images); --pairs-only embeds just the images the pairs use.

    python bench/lfw_verify.py                      # View-2, all images
    python bench/lfw_verify.py --view1              # development split
    python bench/lfw_verify.py --limit 50           # quick: 50 pairs of each kind per fold
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.lfw import LFW, best_threshold, embed_images, fold_accuracies, pair_distances, read_pairs  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedder", default="dlib-resnet", help="embedder name (models.embedders)")
    parser.add_argument("--lfw", type=Path, default=LFW, help="LFW root with pairs files")
    parser.add_argument("--limit", type=int, default=0, help="pairs of each kind per fold (0 = all)")
    parser.add_argument("--view1", action="store_true", help="DevTrain threshold, DevTest accuracy")
    parser.add_argument("--pairs-only", action="store_true", help="embed only the images in the pairs")
    args = parser.parse_args(argv)

    if args.view1:
        train, _ = read_pairs(args.lfw / "pairsDevTrain.txt", args.lfw)
        test, _ = read_pairs(args.lfw / "pairsDevTest.txt", args.lfw)
        pairs, folds = train + test, np.array([0] * len(train) + [1] * len(test))
    else:
        pairs, n_folds = read_pairs(args.lfw / "pairs.txt", args.lfw)
        folds = np.repeat(np.arange(n_folds), len(pairs) // n_folds)
    if args.limit:
        keep = _limit(pairs, folds, args.limit)
        pairs, folds = [pairs[i] for i in keep], folds[keep]
    paths = sorted({p for a, b, _ in pairs for p in (a, b)})
    if not (args.pairs_only or args.limit):
        paths = sorted(set(paths) | set(args.lfw.glob("*/*.jpg")))
    embeddings, detected = embed_images(paths, args.embedder, progress=True)
    lookup = dict(zip(paths, embeddings))
    dist = pair_distances(pairs, lookup)
    same = np.array([s for *_, s in pairs])
    undetected = int((~detected).sum())
    print(f"images {len(paths)}, centre face detected {detected.mean():.4%} ({undetected} undetected)")
    if args.view1:
        t = best_threshold(dist[folds == 0], same[folds == 0])
        acc = np.mean((dist[folds == 1] < t) == same[folds == 1])
        print(f"LFW View-1 DevTest accuracy {acc:.4f} at DevTrain threshold {t:.4f} "
              f"({args.embedder}, {len(paths)} images, {undetected} undetected)")
        return
    accs, thresholds = fold_accuracies(dist, same, folds)
    print("fold accuracies:", " ".join(f"{a:.4f}" for a in accs))
    print(f"thresholds: mean {thresholds.mean():.4f}, range {thresholds.min():.4f}-{thresholds.max():.4f}")
    print(f"LFW accuracy {accs.mean():.4f} +- {accs.std():.4f} "
          f"({args.embedder}, {len(paths)} images, {undetected} undetected)")


def _limit(pairs: list[tuple[Path, Path, bool]], folds: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the first `limit` same and different pairs of each fold."""
    keep = []
    for k in np.unique(folds):
        for kind in (True, False):
            idx = [i for i in np.flatnonzero(folds == k) if pairs[i][2] == kind]
            keep.extend(idx[:limit])
    return np.array(sorted(keep))


if __name__ == "__main__":
    main()
