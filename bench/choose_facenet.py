"""Choose each FaceNet checkpoint's crop, standardisation and mirror averaging, and the
ensemble's members, on LFW View-1 only (pairsDevTrain + pairsDevTest; View-2 is never read).

The centre face of every View-1 image is detected once (core.lfw's cache). Each
candidate is scored as in bench/choose_alignment.py: 10-fold cross-validation over the
3,200 View-1 pairs (each fold's threshold chosen on the other 9), DevTest accuracy at the
DevTrain threshold, and the ROC AUC of all View-1 pairs. Candidates per checkpoint:

  pm32        davidsandberg's crop: MTCNN box + 16 photo px each side, resized to 160
              (align_dataset_mtcnn.py --margin 32, what his models were trained on)
  cm32        facenet-pytorch's crop: a margin of 32 chip px (the box grows by 32/128)
  fixed       (x - 127.5) / 128 (the 2018 models' "fixed image standardization")
  prewhiten   per chip (x - mean) / std (the 2017 models' standardisation)

(crops and both standardisations on the 2017 model; the 2018 one with its own
standardisation on davidsandberg's crop, then +flip)
  +flip       averaged with the embedding of the mirrored chip (tried on the best of the above)

then ensembles of the chosen single models (dlib-resnet with its own chosen preprocessing):
"equal" concatenates the unit embeddings (each member's squared distance counts alike),
"units" divides each by its member's verification threshold on DevTrain first (each
member's distance counts in units of its own decision boundary). Each candidate's embeddings
are cached by core.lfw under its own embedder version, so the chosen one is reused
by bench/lfw_verify.py and bench/identify_lfw.py. Last, the ensemble as it runs (each member
in bfloat16 arithmetic where the CPU has it) against the same members in float32.

    python bench/choose_facenet.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.lfw import View1, embed_images  # noqa: E402
from models.align import AlignSpec  # noqa: E402
from models.embedders import Embedder, get_embedder  # noqa: E402

CROPS = {"pm32": AlignSpec("box", 160, margin=32.0, margin_space="photo", tag="box160pm32"),
         "cm32": AlignSpec("box", 160, margin=32.0, tag="box160m32")}


def candidate(model: Embedder, crop: str, prewhiten: bool, flip: bool) -> Embedder:
    """`model`'s network with another preprocessing (its version names it, so each
    candidate's embeddings are cached apart by core.lfw)."""
    return model.with_preprocessing(align=CROPS[crop], prewhiten=prewhiten, flip=flip,
                                    mean=(127.5, 127.5, 127.5), scale=128.0)


def unit(x: np.ndarray) -> np.ndarray:
    """Rows of x (N,D) scaled to unit length."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    view1 = View1()
    paths = view1.paths
    report = view1.score

    chosen = {"dlib-resnet": embed_images(paths, "dlib-resnet", progress=True)[0]}
    single_pass: dict[str, np.ndarray] = {}  # each FaceNet's best candidate without the mirror
    report("dlib-resnet (chosen earlier)", chosen["dlib-resnet"])
    # The 2017 model was trained on prewhitened chips, the 2018 one on fixed standardisation.
    # Crop and standardisation are tried on the 2017 model (the ensemble's candidate); the
    # 2018 model, of the same lineage and alignment script, gets the crop chosen there and
    # its own standardisation (CPU time: ~5,000 images per candidate on 2 cores).
    for name, tried in (("facenet-msceleb", (("pm32", True), ("pm32", False), ("cm32", True))),
                        ("facenet-casia", (("pm32", False),))):
        model = get_embedder(name)
        scores = {}
        for crop, prewhiten in tried:
            emb, _ = embed_images(paths, candidate(model, crop, prewhiten, False), progress=True)
            scores[(crop, prewhiten)] = report(f"{name} {crop} {'prewhiten' if prewhiten else 'fixed'}", emb), emb
        (crop, prewhiten), (best, emb) = max(scores.items(), key=lambda kv: kv[1][0])
        flipped, _ = embed_images(paths, candidate(model, crop, prewhiten, True), progress=True)
        flip = report(f"{name} {crop} {'prewhiten' if prewhiten else 'fixed'}+flip", flipped)
        chosen[name] = flipped if flip > best else emb
        single_pass[name] = emb
    units = {m: view1.train_threshold(emb) for m, emb in chosen.items()}
    print("distance units (DevTrain verification thresholds): "
          + ", ".join(f"{m} {u:.4f}" for m, u in units.items()))
    for members in (("dlib-resnet", "facenet-msceleb"), ("dlib-resnet", "facenet-casia"),
                    ("facenet-msceleb", "facenet-casia"), ("dlib-resnet", "facenet-msceleb", "facenet-casia")):
        name = "+".join(m.replace("facenet-", "") for m in members)
        report(f"{name} equal", unit(np.concatenate([chosen[m] for m in members], axis=1)))
        report(f"{name} units", unit(np.concatenate([chosen[m] / units[m] for m in members], axis=1)))
    # The cheaper ensemble (FaceNet without its mirror pass), for the cost discussion.
    plain = single_pass["facenet-msceleb"]
    report("dlib-resnet+msceleb(no mirror) units", unit(np.concatenate(
        [chosen["dlib-resnet"] / units["dlib-resnet"], plain / view1.train_threshold(plain)], axis=1)))
    # The ensemble as it runs: its members in bfloat16 where the CPU has it (models.embedders).
    ensemble = get_embedder("ensemble")
    for member in ensemble.members:
        report(f"{member.name} in {str(member.dtype).removeprefix('torch.')}", embed_images(paths, member)[0])
    report("ensemble as run", embed_images(paths, ensemble, progress=True)[0])


if __name__ == "__main__":
    main()
