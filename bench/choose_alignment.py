"""Choose the dlib-resnet alignment and test-time augmentation on LFW View-1 only.

The centre face of every View-1 image (pairsDevTrain + pairsDevTest) is detected once
(core.lfw's cache); each candidate is then scored by 10-fold cross-validation over
all 3,200 View-1 pairs (each fold's threshold chosen on the other 9), by DevTest accuracy
at the DevTrain threshold and by the ROC AUC of all View-1 pairs. View-2 (pairs.txt) is
never read. Candidates:

  template         least-squares similarity from MTCNN's 5 landmarks to DLIB_TEMPLATE
  template+flip    the same, averaged with the embedding of the mirrored chip
  template+zoom    averaged over the template scaled 0.95x and 1.05x about its centre
  mouth<w>+flip    template+flip with the mouth corners' least-squares weight w (0.5, 0):
                   the mouth moves with expression, the eyes and nose do not (dlib's own
                   5-point alignment uses no mouth point)
  box              FaceNet's crop: MTCNN box + 40 px margin, resized
  dlib             dlib's own chip (HOG detector + 5-point predictor + get_face_chip_details),
                   MTCNN's template where dlib finds no face: the alignment the network
                   was trained with
  dlib-regressed   the template transform corrected towards dlib's by a ridge regression
                   (fitted on DevTrain images) from where MTCNN's landmarks land in the chip
  box-dlib5/68     dlib's 5- or 68-point shape predictor run on MTCNN's box (moved and
                   scaled like dlib's HOG box, median offsets fitted on DevTrain images),
                   then dlib's chip: dlib's landmarks without dlib's detector; +flip, and
                   averaged with template+flip (two landmark estimates)

dlib (dlib-bin) is a development dependency, used here only as the reference aligner.
Embeddings per candidate are cached under $FACEGROUP_CACHE/alignment.

    python bench/choose_alignment.py
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fit_dlib_template import dlib_chip_transform, dlib_models_dir  # noqa: E402
from core.lfw import CACHE, View1, detect_centre_faces, read_rgb  # noqa: E402
from models.align import box_transform, similarity_transform, warp_faces  # noqa: E402
from models.embedders import DLIB_TEMPLATE, Embedder, get_embedder  # noqa: E402

OUT = CACHE.parent / "alignment"
CHIP = 150
RIDGE = 1.0


def homogeneous(m: np.ndarray) -> np.ndarray:
    """(N,2,3) affine matrices -> (N,3,3)."""
    return np.concatenate([m, np.broadcast_to([0.0, 0.0, 1.0], (len(m), 1, 3))], axis=1)


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """(N,2,3) transforms applying `inner` first, then `outer`."""
    return np.einsum("nij,njk->nik", homogeneous(outer), homogeneous(inner))[:, :2]


def about_centre(scale: float, count: int) -> np.ndarray:
    """(count,2,3) chip-frame scaling by `scale` about the template's centre."""
    centre = np.asarray(DLIB_TEMPLATE).mean(axis=0)
    m = np.zeros((count, 2, 3))
    m[:, 0, 0] = m[:, 1, 1] = scale
    m[:, :, 2] = centre * (1 - scale)
    return m


def dlib_transforms(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(N,2,3) photo-to-chip transform of dlib's own chip of the centre face, and dlib's
    HOG box (N,4) x1,y1,x2,y2 of it; NaN where the HOG detector finds no face."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_models_dir() / "shape_predictor_5_face_landmarks.dat"))
    out = np.full((len(images), 2, 3), np.nan)
    rects = np.full((len(images), 4), np.nan)
    for k, image in enumerate(images):
        found = detector(image, 1)
        if found:
            cx, cy = image.shape[1] / 2, image.shape[0] / 2
            rect = min(found, key=lambda r: np.hypot(r.center().x - cx, r.center().y - cy))
            details = dlib.get_face_chip_details(predictor(image, rect), size=CHIP, padding=0.25)
            out[k] = dlib_chip_transform(details)
            rects[k] = [rect.left(), rect.top(), rect.right(), rect.bottom()]
    return out, rects


def box_dlib_transforms(images: list[np.ndarray], boxes: np.ndarray, hog: np.ndarray,
                        fit_rows: np.ndarray, points: int) -> np.ndarray:
    """(N,2,3) chip transforms from dlib's `points`-point shape predictor run on MTCNN's
    boxes (N,4), each moved and scaled as dlib's HOG boxes hog (N,4) sit relative to
    MTCNN's (median over `fit_rows`, where HOG found the face)."""
    import dlib

    def centre_side(b: np.ndarray) -> np.ndarray:
        return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                         np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))], axis=1)

    ours, theirs = centre_side(boxes), centre_side(hog)
    shift = np.median((theirs[fit_rows, :2] - ours[fit_rows, :2]) / ours[fit_rows, 2:], axis=0)
    scale = np.median(theirs[fit_rows, 2] / ours[fit_rows, 2])
    centre = ours[:, :2] + shift * ours[:, 2:]
    half = ours[:, 2] * scale / 2
    predictor = dlib.shape_predictor(
        str(dlib_models_dir() / f"shape_predictor_{points}_face_landmarks.dat"))
    out = np.empty((len(images), 2, 3))
    for k, (image, (x, y), r) in enumerate(zip(images, centre, half)):
        rect = dlib.rectangle(*(int(round(v)) for v in (x - r, y - r, x + r, y + r)))
        details = dlib.get_face_chip_details(predictor(image, rect), size=CHIP, padding=0.25)
        out[k] = dlib_chip_transform(details)
    return out


def regressed_transforms(template: np.ndarray, landmarks: np.ndarray, dlib: np.ndarray,
                         fit_rows: np.ndarray) -> np.ndarray:
    """Template transforms (N,2,3) corrected towards dlib's: a ridge regression from the
    residuals of the landmarks (N,5,2) in the template chip to the similarity correction
    (scale-1, rotation, shift) that takes the template chip onto dlib's, fitted on
    `fit_rows` (N,) bool where dlib found the face."""
    correction = compose(dlib, np.linalg.inv(homogeneous(template))[:, :2])
    target = np.stack([correction[:, 0, 0] - 1, correction[:, 1, 0], correction[:, 0, 2],
                       correction[:, 1, 2]], axis=1)
    in_chip = np.einsum("nij,npj->npi", template[:, :, :2], landmarks) + template[:, None, :, 2]
    x = np.hstack([(in_chip - np.asarray(DLIB_TEMPLATE)).reshape(len(landmarks), -1),
                   np.ones((len(landmarks), 1))])
    a = x[fit_rows]
    w = np.linalg.solve(a.T @ a + RIDGE * np.eye(a.shape[1]), a.T @ target[fit_rows])
    p = x @ w
    fix = np.zeros((len(p), 2, 3))
    fix[:, 0, 0] = fix[:, 1, 1] = 1 + p[:, 0]
    fix[:, 1, 0], fix[:, 0, 1] = p[:, 1], -p[:, 1]
    fix[:, :, 2] = p[:, 2:]
    return compose(fix, template)


def embed_chips(model: Embedder, images: list[np.ndarray], transforms: np.ndarray, name: str,
                mirror: bool = False) -> np.ndarray:
    """Unit embeddings (N,D) of the chips cut by `transforms` (N,2,3), optionally mirrored,
    cached per candidate name."""
    path = OUT / f"{model.version.replace('/', '_')}-{name}{'-mirror' if mirror else ''}.npy"
    if path.is_file():
        return np.load(path)
    chips = np.concatenate([warp_faces(image, t[None], CHIP) for image, t in zip(images, transforms)])
    if mirror:
        chips = np.ascontiguousarray(chips[:, :, ::-1])
    emb = model.embed(chips)
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(path, emb)
    print(f"embedded {name}{' (mirrored)' if mirror else ''}", file=sys.stderr, flush=True)
    return emb


def main() -> None:
    view1 = View1()
    train_images = {p for a, b, _ in view1.train for p in (a, b)}
    paths = view1.paths
    faces = detect_centre_faces(paths, progress=True)
    landmarks = np.stack([f["landmarks"] for f in faces]).astype(np.float64)
    boxes = np.stack([f["box"] for f in faces]).astype(np.float64)
    print(f"View-1 images {len(paths)}, MTCNN undetected {sum(not f['detected'] for f in faces)}")
    images = [read_rgb(p) for p in paths]
    base = get_embedder("dlib-resnet")
    model = Embedder(dataclasses.replace(base.config, flip=False), base.network, base.version.split("/")[0])

    template = similarity_transform(landmarks, np.asarray(DLIB_TEMPLATE))
    dlib, hog = dlib_transforms(images)
    found = ~np.isnan(dlib[:, 0, 0])
    print(f"dlib HOG found the centre face in {found.sum()} of {len(paths)} images")
    dlib = np.where(found[:, None, None], np.nan_to_num(dlib), template)
    is_train_image = np.array([p in train_images for p in paths])
    regressed = regressed_transforms(template, landmarks, dlib, found & is_train_image)

    t = embed_chips(model, images, template, "template")
    candidates = {
        "template": [t],
        "template+flip": [t, embed_chips(model, images, template, "template", mirror=True)],
        "template+zoom": [t] + [embed_chips(model, images, compose(about_centre(s, len(paths)), template),
                                            f"zoom{s}") for s in (0.95, 1.05)],
        "box": [embed_chips(model, images, box_transform(boxes, CHIP, 40.0), "box40")],
        "dlib": [embed_chips(model, images, dlib, "dlib")],
        "dlib-regressed": [embed_chips(model, images, regressed, "dlib-regressed")],
    }
    for w in (0.5, 0.0):
        weighted = similarity_transform(landmarks, np.asarray(DLIB_TEMPLATE), np.array([1, 1, 1, w, w]))
        candidates[f"mouth{w:g}+flip"] = [embed_chips(model, images, weighted, f"mouth{w:g}", mirror=m)
                                          for m in (False, True)]
    for points in (5, 68):
        chips = box_dlib_transforms(images, boxes, hog, found & is_train_image, points)
        views = [embed_chips(model, images, chips, f"mtcnnbox-dlib{points}", mirror=m)
                 for m in (False, True)]
        candidates[f"box-dlib{points}"] = views[:1]
        candidates[f"box-dlib{points}+flip"] = views
        candidates[f"template+box-dlib{points}"] = candidates["template+flip"] + views
    for name, views in candidates.items():
        emb = np.sum(views, axis=0)
        view1.score(name, emb / np.linalg.norm(emb, axis=1, keepdims=True))


if __name__ == "__main__":
    main()
