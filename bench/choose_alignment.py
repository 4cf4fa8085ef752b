"""Choose the dlib-resnet alignment and test-time augmentation on LFW View-1 only.

Detects the centre face of every View-1 image once (cached), then embeds the faces with
each candidate alignment and scores verification accuracy by 10-fold cross-validation over
all 3,200 View-1 pairs (DevTrain + DevTest, each fold's threshold chosen on the other 9),
and DevTest accuracy at the DevTrain threshold. View-2 (pairs.txt) is never looked at.

    python bench/choose_alignment.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lfw_embed import LFW, detect_centre_faces, read_pairs  # noqa: E402
from bench.lfw_verify import best_threshold, fold_accuracies, pair_distances  # noqa: E402
from models.align import AlignSpec, align_faces  # noqa: E402
from models.embedders import DLIB_ALIGN, DLIB_TEMPLATE, get_embedder  # noqa: E402
from models.mtcnn import Detections  # noqa: E402

#: from bench/fit_dlib_template.py: per-point spread of MTCNN landmarks in dlib's chip frame
INVERSE_VARIANCE = (1.0, 0.95, 0.10, 0.13, 0.11)


def embed_variant(model, images: list[np.ndarray], boxes: np.ndarray, landmarks: np.ndarray,
                  spec: AlignSpec, tta: str) -> np.ndarray:
    """Unit embeddings (N,D) with alignment `spec` and augmentation `tta` (none|flip|scale)."""
    chips = np.concatenate([
        align_faces(img, Detections(boxes=b[None].astype(np.float32), scores=np.ones(1, np.float32),
                                    landmarks=lm[None].astype(np.float32)), spec)
        for img, b, lm in zip(images, boxes, landmarks)])
    emb = model.embed(chips)
    if tta == "flip":
        emb = emb + model.embed(np.ascontiguousarray(chips[:, :, ::-1]))
    elif tta == "scale":
        for factor in (0.95, 1.05):
            centre = np.asarray(spec.template).mean(0)
            scaled = AlignSpec(spec.mode, spec.size, tuple(map(tuple, centre + (np.asarray(spec.template) - centre) * factor)),
                               spec.weights)
            emb = emb + embed_variant(model, images, boxes, landmarks, scaled, "none")
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def main() -> None:
    train, _ = read_pairs(LFW / "pairsDevTrain.txt")
    test, _ = read_pairs(LFW / "pairsDevTest.txt")
    pairs = train + test
    same = np.array([s for *_, s in pairs])
    is_test = np.array([0] * len(train) + [1] * len(test))
    folds = np.arange(len(pairs)) % 10
    paths = sorted({p for a, b, _ in pairs for p in (a, b)})
    faces = detect_centre_faces(paths, progress=True)
    boxes = np.stack([f["box"] for f in faces])
    landmarks = np.stack([f["landmarks"] for f in faces])
    detected = np.array([bool(f["detected"]) for f in faces])
    print(f"View-1 images {len(paths)}, undetected {int((~detected).sum())}")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    model = get_embedder("dlib-resnet")
    variants = {
        "landmarks, equal weights": (DLIB_ALIGN, "none"),
        "landmarks, inverse-variance weights": (AlignSpec("landmarks", 150, DLIB_TEMPLATE, INVERSE_VARIANCE), "none"),
        "landmarks, equal weights + flip": (DLIB_ALIGN, "flip"),
        "landmarks, inverse-variance + flip": (AlignSpec("landmarks", 150, DLIB_TEMPLATE, INVERSE_VARIANCE), "flip"),
        "landmarks, equal weights + scale jitter": (DLIB_ALIGN, "scale"),
        "box, margin 40": (AlignSpec("box", 150, margin=40.0), "none"),
    }
    for name, (spec, tta) in variants.items():
        emb = embed_variant(model, images, boxes, landmarks, spec, tta)
        dist = pair_distances(pairs, dict(zip(paths, emb)))
        cv, _ = fold_accuracies(dist, same, folds)
        t = best_threshold(dist[is_test == 0], same[is_test == 0])
        dev_test = np.mean((dist[is_test == 1] < t) == same[is_test == 1])
        print(f"{name:40s} View-1 10-fold {cv.mean():.4f} +- {cv.std():.4f}; DevTest {dev_test:.4f} (t={t:.3f})",
              flush=True)


if __name__ == "__main__":
    main()
