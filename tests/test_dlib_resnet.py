"""The PyTorch dlib ResNet against dlib itself (dlib-bin, test-only) on real LFW face chips."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import dlib
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import lfw_image
from models import weights
from models.dlib_resnet import (CHIP_SIZE, RGB_MEAN, add_zero_padded, load_dlib_resnet,
                                preprocess_chips)

N_IDENTITIES = 60
MIN_CHIPS = 50
TOLERANCE = 1e-3


def _face_models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.submodule_search_locations, "face_recognition_models missing"
    return Path(spec.submodule_search_locations[0]) / "models"


@pytest.fixture(scope="module")
def chips_and_reference(lfw: Path) -> tuple[np.ndarray, np.ndarray]:
    """dlib-aligned 150x150 chips (N,150,150,3) of the first photo of the first 60 LFW
    identities (sorted; the detection nearest the image centre), and dlib's (N,128) descriptors."""
    models_dir = _face_models_dir()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models_dir / "shape_predictor_5_face_landmarks.dat"))
    names = sorted(p.name for p in lfw.iterdir() if p.is_dir())[:N_IDENTITIES]
    chips = []
    for name in names:
        image = np.asarray(Image.open(lfw_image(lfw, name, 1)).convert("RGB"))
        faces = detector(image, 1)
        if not faces:
            continue
        cy, cx = image.shape[0] / 2, image.shape[1] / 2
        face = min(faces, key=lambda r: (r.center().x - cx) ** 2 + (r.center().y - cy) ** 2)
        chips.append(dlib.get_face_chip(image, predictor(image, face), size=CHIP_SIZE,
                                        padding=0.25))
    recognizer = dlib.face_recognition_model_v1(
        str(models_dir / "dlib_face_recognition_resnet_model_v1.dat"))
    # The batch-of-chips overload with num_jitters=0 runs the bare network once per chip.
    reference = np.array(recognizer.compute_face_descriptor(chips, num_jitters=0))
    return np.stack(chips), reference


def test_matches_dlib_descriptors_on_lfw(
        chips_and_reference: tuple[np.ndarray, np.ndarray]) -> None:
    chips, reference = chips_and_reference
    assert len(chips) >= MIN_CHIPS, f"only {len(chips)} LFW faces detected"
    model = load_dlib_resnet()
    with torch.inference_mode():
        ours = model(preprocess_chips(chips)).numpy()
    assert ours.shape == reference.shape == (len(chips), 128)
    diff = float(np.abs(ours - reference).max())
    print(f"dlib-resnet vs dlib on {len(chips)} LFW chips: max abs diff {diff:.3g}")
    assert diff <= TOLERANCE
    # Descriptors are informative, not degenerate: distinct people are far apart.
    distances = np.linalg.norm(ours[:, None] - ours[None], axis=-1)[np.triu_indices(len(ours), 1)]
    assert np.median(distances) > 0.6


def test_add_zero_padded_sums_the_overlap() -> None:
    a = torch.ones(1, 1, 2, 2)
    b = torch.full((1, 2, 3, 3), 2.0)
    out = add_zero_padded(a, b)
    assert out.shape == (1, 2, 3, 3)
    assert torch.equal(out[0, 0, :2, :2], torch.full((2, 2), 3.0))
    assert torch.equal(out[0, 1], torch.full((3, 3), 2.0))
    assert torch.equal(out[0, 0, 2], torch.full((3,), 2.0))


def test_preprocess_matches_dlib_input_layer() -> None:
    chips = np.zeros((2, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    chips[1] = 255
    x = preprocess_chips(chips)
    assert x.shape == (2, 3, CHIP_SIZE, CHIP_SIZE) and x.dtype == torch.float32
    expected = (np.float32(255) - np.float32(RGB_MEAN)) / 256
    assert np.allclose(x[1, :, 7, 9].numpy(), expected, atol=1e-7)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_chips(chips.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        preprocess_chips(chips[:, :100])


def test_damaged_weight_files_raise_clear_errors(tmp_path: Path) -> None:
    data = weights.resolve("dlib-resnet").read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"offset \d+: file ends .* truncated"):
        load_dlib_resnet(truncated)

    wrong_record = tmp_path / "wrong_record.dat"
    wrong_record.write_bytes(data.replace(b"con_4", b"con_9", 1))
    with pytest.raises(ValueError, match=r"offset \d+: expected con record 'con_4', found 'con_9'"):
        load_dlib_resnet(wrong_record)

    trailing = tmp_path / "trailing.dat"
    trailing.write_bytes(data + b"\x00")
    with pytest.raises(ValueError, match="1 unexpected bytes after the network"):
        load_dlib_resnet(trailing)

    not_dlib = tmp_path / "not_dlib.dat"
    not_dlib.write_bytes(b"PK\x03\x04 a zip file, not a dlib network")
    with pytest.raises(ValueError, match="offset 0"):
        load_dlib_resnet(not_dlib)

    with pytest.raises(FileNotFoundError, match="dlib-resnet"):
        load_dlib_resnet(tmp_path / "missing.dat")
