"""The hot path (core.faces) on real LFW photos: which face is a photo's main face, and a
photo that breaks a batch step fails alone, without changing the other photos' faces.

Why: every user of faces (pipeline, known people, search, verification, training, benches)
goes through this one module, so its choice rules and its failure isolation are theirs.
"""
from __future__ import annotations

import numpy as np
import pytest

from core.faces import ALL, CENTRE, LARGEST, Failure, Pixels, PhotoFaces, choose, detect, faces_of, main_face
from core.lfw import read_rgb
from models.embedders import get_embedder
from models.mtcnn import MTCNN
from tests.conftest import lfw_image


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


@pytest.fixture(scope="module")
def embedder():
    return get_embedder("dlib-resnet")


def test_main_face_rules_differ_where_a_bystander_shows_larger(lfw, detector):
    """Laura_Bush_0030 is centred on her; the man beside her shows larger. CENTRE (datasets
    centred on their labelled face) picks her, LARGEST (a photo given as showing one person)
    picks him; ALL keeps both, most confident first."""
    photo = Pixels.full(read_rgb(lfw_image(lfw, "Laura_Bush", 30)))
    det = detect(detector, [photo], 0.9)[0]
    assert len(det) == 2
    area = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
    centre_x = (det.boxes[:, 0] + det.boxes[:, 2]) / 2
    centre, largest = main_face(det, 250, 250, CENTRE), main_face(det, 250, 250, LARGEST)
    assert centre != largest and area[largest] > area[centre] and abs(centre_x[centre] - 125) < 25
    assert len(choose(det, photo.image, ALL)) == 2
    np.testing.assert_array_equal(choose(det, photo.image, CENTRE).boxes, det.boxes[[centre]])
    with pytest.raises(ValueError, match="main face rule"):
        main_face(det, 250, 250, ALL)


class Flaky:
    """dlib-resnet, except that the photo `bad_align` cannot be aligned and faces of
    `bad_embed` (marked as all-zero chips) make any embedding call raise."""

    def __init__(self, embedder, bad_align: np.ndarray, bad_embed: np.ndarray) -> None:
        self.embedder, self.bad_align, self.bad_embed = embedder, bad_align, bad_embed
        self.dim = embedder.dim

    def face_inputs(self, image, faces):
        if image is self.bad_align:
            raise RuntimeError("cannot align")
        chips = self.embedder.face_inputs(image, faces)
        return chips * 0 if image is self.bad_embed else chips

    def thumbnails(self, inputs):
        return self.embedder.thumbnails(inputs)

    def embed(self, inputs):
        if not inputs.reshape(len(inputs), -1).any(axis=1).all():
            raise RuntimeError("cannot embed")
        return self.embedder.embed(inputs)


def test_a_failing_photo_fails_alone(lfw, detector, embedder):
    good, bad_align, bad_embed, broken = (Pixels.full(read_rgb(lfw_image(lfw, name, 1)))
                                          for name in ("Colin_Powell", "Tony_Blair", "Laura_Bush", "Tim_Henman"))
    broken = Pixels(broken.image, broken.image.astype(np.float32))  # the detector refuses it
    flaky = Flaky(embedder, bad_align.image, bad_embed.image)
    out = faces_of([good, bad_align, bad_embed, broken], detector, flaky, 0.9)
    assert [r.step if isinstance(r, Failure) else "ok" for r in out] == ["ok", "align", "embed", "detect"]
    alone = faces_of([good], detector, embedder, 0.9)[0]
    assert isinstance(out[0], PhotoFaces) and len(out[0]) == len(alone) >= 1 and out[0].found == alone.found
    np.testing.assert_array_equal(out[0].embeddings, alone.embeddings)
    assert all(0.0 <= q <= 1.0 for q, _ in out[0].quality)
