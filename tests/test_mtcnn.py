"""MTCNN on real LFW photos: mixed sizes in one batch, face-less photos, batch == alone, NMS."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.faces import CENTRE, main_face
from models.box_ops import batched_nms, nms
from models.mtcnn import MTCNN, Detections, PNet
from tests.conftest import lfw_image

PEOPLE = ["Aaron_Eckhart", "Colin_Powell", "Serena_Williams", "Tony_Blair", "Yoko_Ono"]


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN()


@pytest.fixture(scope="module")
def photos(lfw) -> dict[str, np.ndarray]:
    """An LFW photo, it upscaled to 400x333, a 2x2 mosaic of 4 LFW photos, two face-less ones."""
    faces = [np.asarray(Image.open(lfw_image(lfw, name, 1)).convert("RGB")) for name in PEOPLE]
    mosaic = np.concatenate([np.concatenate(faces[1:3], axis=1),
                             np.concatenate(faces[3:5], axis=1)], axis=0)
    rng = np.random.default_rng(0)
    return {
        "lfw": faces[0],
        "upscaled": np.asarray(Image.fromarray(faces[0]).resize((400, 333), Image.BILINEAR)),
        "mosaic": mosaic,
        "flat": np.full((180, 320, 3), 128, np.uint8),
        "noise": rng.integers(0, 256, (240, 300, 3), dtype=np.uint8),
    }


@pytest.fixture(scope="module")
def mixed(detector, photos) -> dict[str, Detections]:
    """All photos detected in one call."""
    return dict(zip(photos, detector.detect(list(photos.values()))))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _assert_plausible(det: Detections) -> None:
    """Landmarks inside their boxes, eyes above the mouth corners, left eye left of right."""
    for box, marks in zip(det.boxes, det.landmarks):
        assert (marks[:, 0] >= box[0]).all() and (marks[:, 0] <= box[2]).all()
        assert (marks[:, 1] >= box[1]).all() and (marks[:, 1] <= box[3]).all()
        assert marks[:2, 1].max() < marks[3:, 1].min()
        assert marks[0, 0] < marks[1, 0] and marks[3, 0] < marks[4, 0]


def test_lfw_face_found_at_centre(mixed):
    det = mixed["lfw"]
    i = main_face(det, 250, 250, CENTRE)
    assert i is not None and det.scores[i] > 0.99
    box = det.boxes[i]
    centre = (box[:2] + box[2:]) / 2
    assert np.abs(centre - 125).max() < 25
    assert 70 < box[2] - box[0] < 160 and 80 < box[3] - box[1] < 180
    _assert_plausible(det)


def test_upscaled_photo_gives_the_scaled_box(mixed):
    small, big = mixed["lfw"], mixed["upscaled"]
    i = main_face(big, 400, 333, CENTRE)
    scaled = small.boxes[main_face(small, 250, 250, CENTRE)] * np.float32([400 / 250, 333 / 250] * 2)
    assert _iou(big.boxes[i], scaled) > 0.75
    _assert_plausible(big)


def test_mosaic_finds_one_face_per_quadrant(mixed):
    det = mixed["mosaic"]
    centres = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2
    for qx in (0, 1):
        for qy in (0, 1):
            near = np.abs(centres - [250 * qx + 125, 250 * qy + 125]).max(axis=1) < 40
            assert near.any(), f"no face near the centre of quadrant {(qx, qy)}"
            assert det.scores[near].max() > 0.99
    _assert_plausible(det)


def test_face_less_photos_give_empty_detections(mixed):
    for name in ("flat", "noise"):
        det = mixed[name]
        assert len(det) == 0
        assert det.boxes.shape == (0, 4) and det.scores.shape == (0,)
        assert det.landmarks.shape == (0, 5, 2)
        assert main_face(det, 320, 180, CENTRE) is None


def test_batch_equals_alone(detector, photos, mixed):
    for name, image in photos.items():
        alone = detector.detect([image])[0]
        assert len(alone) == len(mixed[name]), name
        np.testing.assert_allclose(alone.boxes, mixed[name].boxes, atol=1e-2)
        np.testing.assert_allclose(alone.scores, mixed[name].scores, atol=1e-5)
        np.testing.assert_allclose(alone.landmarks, mixed[name].landmarks, atol=1e-2)


def test_degenerate_batches(detector, photos):
    assert detector.detect([]) == []
    tiny, none = detector.detect([np.zeros((8, 30, 3), np.uint8), photos["flat"]])
    assert len(tiny) == 0 and len(none) == 0


def test_bad_input_is_rejected(detector, photos):
    with pytest.raises(ValueError, match=r"images\[1\]"):
        detector.detect([photos["lfw"], photos["lfw"][:, :, 0]])
    with pytest.raises(ValueError, match="images"):
        detector.detect(photos["lfw"])
    with pytest.raises(ValueError, match="min_face_size"):
        MTCNN(min_face_size=0)


def test_padded_pnet_batch_is_exact():
    """P-Net over a zero-padded batch gives each photo's own outputs (odd sizes included)."""
    torch.manual_seed(0)
    net = PNet().eval()
    photos = [torch.randn(3, 31, 40), torch.randn(3, 24, 25), torch.randn(3, 40, 33)]
    batch = torch.zeros(3, 3, 40, 40)
    for k, p in enumerate(photos):
        batch[k, :, :p.shape[1], :p.shape[2]] = p
    sizes = torch.tensor([p.shape[1:] for p in photos])
    with torch.inference_mode():
        reg, prob = net(batch, sizes)
        for k, p in enumerate(photos):
            r1, p1 = net(p[None])
            h, w = p1.shape[1:]
            torch.testing.assert_close(prob[k, :h, :w], p1[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(reg[k, :, :h, :w], r1[0], rtol=0, atol=1e-5)


def test_merged_heads_equal_the_two_heads():
    """P-Net's merged head equals its two 1x1 convs + softmax, also after a state dict
    is loaded (the merged weights are derived buffers)."""
    torch.manual_seed(2)
    net, other = PNet().eval(), PNet().eval()
    net.load_state_dict(other.state_dict())
    x = torch.randn(2, 3, 30, 41)
    with torch.inference_mode():
        reg, prob = net(x)
        features = net.prelu3(net.conv3(net.prelu2(net.conv2(
            torch.nn.functional.max_pool2d(net.prelu1(net.conv1(x)), 2, ceil_mode=True)))))
        expected = torch.softmax(net.conv4_1(features), dim=1)[:, 1]
        torch.testing.assert_close(prob, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(reg, net.conv4_2(features), rtol=0, atol=1e-5)


@pytest.mark.parametrize("height", [577, 578, 601])
def test_banded_pnet_equals_whole_level(detector, height):
    """A level bigger than the batch budget runs in bands of rows: same outputs as one call
    over the whole level, whatever the parity of its last band."""
    torch.manual_seed(1)
    x = torch.randn(1, 3, height, 769).contiguous(memory_format=torch.channels_last)
    assert height * 769 > detector._batch_pixels
    with torch.inference_mode():
        reg, prob = detector._pnet(x, None)
        whole_reg, whole_prob = detector.pnet(x)
    torch.testing.assert_close(prob, whole_prob, rtol=0, atol=1e-5)
    torch.testing.assert_close(reg, whole_reg, rtol=0, atol=1e-5)


def test_nms_hand_computed():
    boxes = torch.tensor([[0, 0, 10, 10],  # a
                          [3, 0, 13, 10],  # b: IoU(a,b) = 70/130
                          [6, 0, 16, 10],  # c: IoU(b,c) = 70/130, IoU(a,c) = 40/160
                          [2, 2, 6, 6],  # d: inside a, IoU 16/100, min-overlap 1
                          [40, 40, 50, 50]], dtype=torch.float32)  # e: alone
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    # Greedy: a drops b; b is gone so c survives (a "fast NMS" would drop c too).
    assert nms(boxes, scores, 0.5).tolist() == [0, 2, 3, 4]
    assert nms(boxes, scores, 0.55).tolist() == [0, 1, 2, 3, 4]
    assert nms(boxes, scores, 0.5, mode="min").tolist() == [0, 2, 4]
    # Inclusive pixels: IoU(a,b) = 88/154 = 0.571 > 0.55.
    assert nms(boxes, scores, 0.55, pixel_offset=1.0).tolist() == [0, 2, 3, 4]
    # Per group: a drops c (IoU 0.25) in group 0, b and d (IoU 12/104) both stay in group 1.
    assert nms(boxes, scores, 0.2).tolist() == [0, 3, 4]
    groups = torch.tensor([0, 1, 0, 1, 0])
    assert batched_nms(boxes, scores, groups, 0.2).tolist() == [0, 1, 3, 4]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []
