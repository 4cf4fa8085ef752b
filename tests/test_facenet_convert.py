"""davidsandberg's FaceNet checkpoints converted into our Inception-ResNet-v1, and the
embedders built on them: parity against OpenCV, every HDF5 weight placed, LFW pairs
separated, checksums enforced, the ensemble's arithmetic."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from core.lfw import embed_images, read_pairs
from models.facenet_convert import keras_h5_state_dict, load_converted, torch_names
from models.graphdef import read_graphdef
from models.inception_resnet_v1 import InceptionResnetV1
from models.weights import ChecksumError, file_sha256, resolve
from models.embedders import EnsembleEmbedder, get_embedder
from pipeline.thresholds import thresholds_for

FIXTURE = Path(__file__).with_name("fixtures") / "facenet_casia_opencv.npz"


def test_graphdef_reader_sees_the_published_graph():
    nodes = read_graphdef(resolve("facenet-casia"))
    assert len(nodes) == 793
    assert nodes["input"].op == "Placeholder" and nodes["input"].attrs["shape"] == (1, 160, 160, 3)
    assert nodes["embeddings"].op == "Mul"
    assert sum(n.op == "Conv2D" for n in nodes.values()) == 132
    weights = nodes["InceptionResnetV1/Conv2d_1a_3x3/weights"].attrs["value"]
    assert weights.shape == (3, 3, 3, 32) and weights.dtype == np.float32 and weights.std() > 0.01


def test_casia_matches_opencv_on_lfw_crops(lfw):
    """OpenCV's DNN module ran the same .pb on the same 24 LFW centre crops
    (tests/fixtures/make_facenet_reference.py); ours must agree to 1e-4 per component."""
    ref = np.load(FIXTURE)
    assert len(ref["names"]) >= 20
    crops = np.stack([np.asarray(Image.open(lfw / str(n)).convert("RGB"))[45:205, 45:205]
                      for n in ref["names"]])
    network, version = load_converted("facenet-casia")
    assert version.startswith("20180408-102900-")
    x = (torch.from_numpy(crops).permute(0, 3, 1, 2).float() - 127.5) / 128.0
    with torch.inference_mode():
        ours = torch.nn.functional.normalize(network(x), dim=1).numpy()
    assert ours.shape == ref["embeddings"].shape == (len(crops), 512)
    assert np.abs(ours - ref["embeddings"]).max() <= 1e-4
    # and not trivially: different people give clearly different embeddings
    assert np.linalg.norm(ours[0] - ours[1]) > 0.5


def test_every_hdf5_weight_is_used_exactly_once():
    path = resolve("facenet-msceleb")
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f["model_weights"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    state, sources = keras_h5_state_dict(path)
    stored = {f"{n.split('/')[0]}/{n.split('/')[-1]}" for n in names}
    assert len(names) == len(stored) == len(sources) == len(set(sources.values()))
    assert set(sources.values()) == stored
    network = InceptionResnetV1(embedding_dim=128)
    network.load_state_dict(state, strict=True)
    # the only parameters not read from the file are the batch norms' absent gammas (ones)
    not_read = set(state) - set(sources)
    assert not_read and all(k.endswith("bn.weight") for k in not_read)
    assert all(torch.equal(state[k], torch.ones_like(state[k])) for k in not_read)


def test_layer_names_map_onto_the_network():
    names = torch_names(["Conv2d_1a_3x3", "block35_2/Branch_2/Conv2d_0c_3x3", "block35_2/Branch_2/Conv2d_0a_1x1",
                         "block35_2/Branch_2/Conv2d_0b_3x3", "Mixed_6a/Branch_0/Conv2d_1a_3x3",
                         "block17_10/Conv2d_1x1", "Block8/Branch_1/Conv2d_0a_1x1"])
    assert names["Conv2d_1a_3x3"] == "conv2d_1a"
    assert [names[f"block35_2/Branch_2/Conv2d_0{c}"] for c in ("a_1x1", "b_3x3", "c_3x3")] == \
        ["repeat_1.1.branch2.0", "repeat_1.1.branch2.1", "repeat_1.1.branch2.2"]
    assert names["Mixed_6a/Branch_0/Conv2d_1a_3x3"] == "mixed_6a.branch0"
    assert names["block17_10/Conv2d_1x1"] == "repeat_2.9.conv2d"
    assert names["Block8/Branch_1/Conv2d_0a_1x1"] == "block8.branch1"
    with pytest.raises(ValueError, match="unexpected"):
        torch_names(["Logits/weights"])


def test_msceleb_separates_view1_pairs(lfw):
    """200 DevTest pairs (100 same, 100 different people), through MTCNN, the chosen crop
    and the embedder, at the verify threshold derived on DevTrain."""
    pairs, _ = read_pairs(lfw / "pairsDevTest.txt", lfw)
    pairs = [p for p in pairs if p[2]][:100] + [p for p in pairs if not p[2]][:100]
    paths = sorted({p for a, b, _ in pairs for p in (a, b)})
    embedder = get_embedder("facenet-msceleb")
    emb, _ = embed_images(paths, embedder)
    lookup = dict(zip(paths, emb))
    dist = np.array([np.linalg.norm(lookup[a] - lookup[b]) for a, b, _ in pairs])
    same = np.array([s for *_, s in pairs])
    accuracy = np.mean((dist < thresholds_for(embedder.version).verify) == same)
    assert accuracy >= 0.97


@pytest.mark.parametrize("name", ["facenet-casia", "facenet-msceleb"])
def test_wrong_file_is_refused_in_one_line(name, tmp_path):
    bad = tmp_path / Path(resolve(name)).name
    shutil.copyfile(resolve(name), bad)
    with open(bad, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(ChecksumError) as err:
        get_embedder(name, weights=str(bad))
    message = str(err.value)
    assert "\n" not in message and "obtain it with" in message and name in message


def test_converted_weights_are_cached_by_source_digest(tmp_path):
    source = resolve("facenet-msceleb")
    _, version = load_converted("facenet-msceleb", source, cache_dir=tmp_path)
    cached = list((tmp_path / "converted").glob("facenet-msceleb-*.pt"))
    assert len(cached) == 1 and file_sha256(source)[:16] in cached[0].name
    network, again = load_converted("facenet-msceleb", source, cache_dir=tmp_path)
    assert again == version and network.embedding_dim == 128


def test_ensemble_is_unit_and_sums_squared_distances_in_member_units(lfw):
    ensemble = get_embedder("ensemble")
    assert isinstance(ensemble, EnsembleEmbedder)
    assert [m.name for m in ensemble.members] == ["dlib-resnet", "facenet-msceleb"]
    assert ensemble.dim == 128 + 128 and ensemble.version.startswith("ensemble(dlib-resnet:")
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(5, 128)) for _ in range(2)]
    parts = [p / np.linalg.norm(p, axis=1, keepdims=True) for p in parts]
    e = ensemble.combine(parts)
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-6)
    d2 = np.sum((e[0] - e[1]) ** 2)
    units = np.asarray(ensemble.units)
    member_d2 = np.array([np.sum((p[0] - p[1]) ** 2) for p in parts])
    assert d2 == pytest.approx(np.sum(member_d2 / units ** 2) / np.sum(1 / units ** 2), rel=1e-5)
    # on a real photo: one row of inputs per face, thumbnails from the first member
    from models.mtcnn import MTCNN

    image = np.asarray(Image.open(lfw / "Tim_Henman" / "Tim_Henman_0010.jpg").convert("RGB"))
    faces = MTCNN().detect([image])[0]
    inputs = ensemble.face_inputs(image, faces)
    assert inputs.shape == (len(faces.scores), 150 * 150 * 3 + 160 * 160 * 3)
    assert ensemble.thumbnails(inputs).shape == (len(faces.scores), 150, 150, 3)
    assert np.allclose(ensemble.embed(inputs), ensemble.combine(
        [m.embed(m.face_inputs(image, faces)) for m in ensemble.members]), atol=1e-6)
    with pytest.raises(ValueError, match="does not apply to the ensemble"):
        get_embedder("ensemble", weights="x.pt")


def test_ensemble_members_in_bfloat16_stay_close_to_float32(lfw):
    """The ensemble runs its members in bfloat16 where the CPU has it in hardware (the
    cost that makes it the default); on real faces each member's embedding stays within
    2.5% of its distance unit (its verification threshold) of the float32 one."""
    from models.embedders import bf16_native
    from models.mtcnn import MTCNN

    paths = sorted(lfw.glob("Tony_Blair/*.jpg"))[:12] + sorted(lfw.glob("Serena_Williams/*.jpg"))[:12]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    detections = MTCNN().detect(images)
    ensemble = get_embedder("ensemble")
    native = bf16_native(torch.device("cpu"))
    for member, unit in zip(ensemble.members, ensemble.units):
        assert member.version.endswith("+bf16")
        assert member.dtype == (torch.bfloat16 if native else torch.float32)
        reference = get_embedder(member.name).with_preprocessing(flip=member.config.flip)
        assert reference.dtype == torch.float32 and reference.version + "+bf16" == member.version
        chips = np.concatenate([member.face_inputs(im, d) for im, d in zip(images, detections)])
        fast, exact = member.embed(chips), reference.embed(chips)
        gap = np.linalg.norm(fast - exact, axis=1)
        assert gap.max() <= 0.025 * unit, f"{member.name}: bfloat16 off by {gap.max():.4f}"
        if native:  # really computed in bfloat16, not silently in float32
            assert gap.max() > 1e-4
