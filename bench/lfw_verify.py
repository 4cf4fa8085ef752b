"""LFW face verification through our MTCNN + alignment + embedder.

View-2 (default): the 10 folds of pairs.txt; each fold's distance threshold is the one
that maximises accuracy on the other 9 folds; we report mean +- std over folds.
View-1 (--view1): threshold chosen on pairsDevTrain.txt, accuracy on pairsDevTest.txt;
every choice that affects accuracy (alignment, augmentation) is made with this mode only.

The labelled face is the detection nearest the image centre; images with no detection
are embedded from the mean landmark positions of detected LFW faces (see lfw_embed) and
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

from bench.lfw_embed import LFW, embed_images, read_pairs  # noqa: E402


def best_threshold(dist: np.ndarray, same: np.ndarray) -> float:
    """Distance threshold (same person iff dist < t) maximising accuracy on (dist, same)."""
    order = np.sort(dist)
    candidates = np.concatenate([[order[0] - 1e-6], (order[1:] + order[:-1]) / 2, [order[-1] + 1e-6]])
    acc = [np.mean((dist < t) == same) for t in candidates]
    return float(candidates[int(np.argmax(acc))])


def fold_accuracies(dist: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold accuracy and threshold, each threshold chosen on the other folds."""
    accs, thresholds = [], []
    for k in np.unique(folds):
        train = folds != k
        t = best_threshold(dist[train], same[train])
        accs.append(np.mean((dist[~train] < t) == same[~train]))
        thresholds.append(t)
    return np.array(accs), np.array(thresholds)


def pair_distances(pairs: list[tuple[Path, Path, bool]], lookup: dict[Path, np.ndarray]) -> np.ndarray:
    """Euclidean distance of each pair's two embeddings."""
    return np.array([np.linalg.norm(lookup[a] - lookup[b]) for a, b, _ in pairs])


class View1:
    """LFW View-1 as the choice benches use it: the 3,200 pairs of pairsDevTrain +
    pairsDevTest and their images; `score` rates embeddings of those images by 10-fold
    cross-validation (each fold's threshold chosen on the other 9), DevTest accuracy at the
    DevTrain threshold, and the ROC AUC of all pairs."""

    def __init__(self, root: Path = LFW) -> None:
        self.train, _ = read_pairs(root / "pairsDevTrain.txt", root)
        self.test, _ = read_pairs(root / "pairsDevTest.txt", root)
        self.pairs = self.train + self.test
        self.same = np.array([s for *_, s in self.pairs])
        self.is_test = np.array([0] * len(self.train) + [1] * len(self.test))
        self.folds = np.arange(len(self.pairs)) % 10
        self.paths = sorted({p for a, b, _ in self.pairs for p in (a, b)})

    def train_threshold(self, embeddings: np.ndarray) -> float:
        """The best-accuracy threshold on the DevTrain pairs of embeddings (len(paths), D)."""
        dist = pair_distances(self.pairs, dict(zip(self.paths, embeddings)))
        return best_threshold(dist[self.is_test == 0], self.same[self.is_test == 0])

    def score(self, name: str, embeddings: np.ndarray) -> float:
        """Print the scores of embeddings (len(paths), D) of `paths`; return the 10-fold mean."""
        from sklearn.metrics import roc_auc_score

        dist = pair_distances(self.pairs, dict(zip(self.paths, embeddings)))
        cv, _ = fold_accuracies(dist, self.same, self.folds)
        threshold = self.train_threshold(embeddings)
        dev_test = np.mean((dist[self.is_test == 1] < threshold) == self.same[self.is_test == 1])
        print(f"{name:34s} View-1 10-fold {cv.mean():.4f} +- {cv.std():.4f}; DevTest {dev_test:.4f} "
              f"(t={threshold:.3f}); AUC {roc_auc_score(self.same, -dist):.5f}", flush=True)
        return float(cv.mean())


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
