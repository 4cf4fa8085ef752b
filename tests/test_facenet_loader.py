"""FaceNet (Inception-ResNet-v1) network and checkpoint loading, without network access.

The tests write their own facenet-pytorch-style checkpoints (a randomly initialised
network with perturbed batch-norm statistics, saved with and without the classifier
head) and check that every loading route gives bit-identical embeddings.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.inception_resnet_v1 import (EMBEDDING_DIM, INPUT_SIZE, InceptionResnetV1,
                                        fixed_image_standardization, load_facenet)
from models.weights import ChecksumError, WeightsUnavailableError, file_sha256
from conftest import lfw_image


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Other helpers share the 2 cores; keep this file's forward passes on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[InceptionResnetV1, Path, Path]:
    """A random network in eval mode and its checkpoints with and without `logits.*`."""
    torch.manual_seed(1234)
    net = InceptionResnetV1(num_classes=11).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a mis-loaded buffer shows
        for mod in net.modules():
            if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    root = tmp_path_factory.mktemp("facenet")
    with_logits, without = root / "with-logits.pt", root / "no-logits.pt"
    state = net.state_dict()
    torch.save(state, with_logits)
    torch.save({k: v for k, v in state.items() if not k.startswith("logits.")}, without)
    return net, with_logits, without


@pytest.fixture(scope="module")
def faces(lfw: Path) -> torch.Tensor:
    """Two real LFW photos, centre 160x160 crops, standardised: (2, 3, 160, 160)."""
    chips = []
    for name in ("Aaron_Peirsol", "Abdullah_Gul"):
        img = Image.open(lfw_image(lfw, name, 1)).convert("RGB")
        off = (img.width - INPUT_SIZE) // 2
        chips.append(np.asarray(img.crop((off, off, off + INPUT_SIZE, off + INPUT_SIZE))))
    batch = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2)
    return fixed_image_standardization(batch)


def embed(net: InceptionResnetV1, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


def test_standardization_maps_pixels_to_unit_range():
    x = torch.tensor([0, 127.5, 255.0]).view(1, 3, 1, 1)
    assert torch.allclose(fixed_image_standardization(x).flatten(),
                          torch.tensor([-127.5 / 128, 0.0, 127.5 / 128]))


def test_forward_gives_unnormalised_512d_embeddings(reference, faces):
    net, _, _ = reference
    out = embed(net, faces)
    assert out.shape == (2, EMBEDDING_DIM) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.allclose(out.norm(dim=1), torch.ones(2))  # L2 norm is the caller's job
    assert not torch.allclose(out[0], out[1])  # different faces, different embeddings


@pytest.mark.parametrize("which", ["with_logits", "without_logits"])
def test_local_checkpoint_loads_to_identical_outputs(reference, faces, which):
    net, with_logits, without = reference
    path = with_logits if which == "with_logits" else without
    model, version = load_facenet(weights=path)
    assert not model.training and not hasattr(model, "logits")
    assert torch.equal(embed(model, faces), embed(net, faces))
    assert version == f"{path.stem}-{file_sha256(path)[:12]}"


def test_file_url_downloads_once_into_cache(reference, faces, tmp_path):
    net, with_logits, _ = reference
    source = tmp_path / "mirror" / "release.pt"
    source.parent.mkdir()
    source.write_bytes(with_logits.read_bytes())
    cache = tmp_path / "cache"
    digest = file_sha256(source)
    model, version = load_facenet(cache_dir=cache, url=source.as_uri(), sha256=digest)
    assert version == f"release-{digest[:12]}"
    assert [p.name for p in cache.iterdir()] == ["release.pt"]  # no temp file left behind
    assert file_sha256(cache / "release.pt") == digest
    source.unlink()  # a second download would now fail: the cache must serve it
    again, _ = load_facenet(cache_dir=cache, url=source.as_uri(), sha256=digest, download=False)
    assert torch.equal(embed(again, faces), embed(net, faces))
    assert torch.equal(embed(model, faces), embed(net, faces))


def test_wrong_checksum_is_refused_and_nothing_kept(reference, tmp_path):
    _, with_logits, _ = reference
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="expected 0{64}"):
        load_facenet(cache_dir=cache, url=with_logits.as_uri(), sha256="0" * 64)
    assert list(cache.iterdir()) == []


def test_corrupt_cached_file_is_removed_then_refetched(reference, tmp_path):
    _, with_logits, _ = reference
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = cache / with_logits.name
    cached.write_bytes(b"truncated download")
    digest = file_sha256(with_logits)
    with pytest.raises(ChecksumError, match="removed"):
        load_facenet(cache_dir=cache, url=with_logits.as_uri(), sha256=digest, download=False)
    assert not cached.exists()
    cached.write_bytes(b"truncated download")
    load_facenet(cache_dir=cache, url=with_logits.as_uri(), sha256=digest)
    assert file_sha256(cached) == digest


def test_offline_without_file_is_one_clear_error(tmp_path):
    cache = tmp_path / "empty-cache"
    expected = cache / "20180402-114759-vggface2.pt"
    with pytest.raises(WeightsUnavailableError) as disabled:
        load_facenet("vggface2", cache_dir=cache, download=False)
    # an unreachable mirror stands in for being offline
    unreachable = (tmp_path / "nowhere" / "20180402-114759-vggface2.pt").as_uri()
    with pytest.raises(FileNotFoundError) as failed:
        load_facenet("vggface2", cache_dir=cache, url=unreachable)
    for err in (disabled.value, failed.value):
        assert "--facenet_weights" in str(err) and str(expected) in str(err)
        assert "\n" not in str(err)
    assert not any(cache.iterdir())


def test_cache_dir_defaults_to_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FACEGROUP_CACHE", str(tmp_path / "env-cache"))
    with pytest.raises(WeightsUnavailableError, match=str(tmp_path / "env-cache")):
        load_facenet("vggface2", download=False)


def test_checkpoint_without_known_digest_needs_one(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="sha256"):
        load_facenet("casia-webface", cache_dir=tmp_path)


def test_bad_arguments_get_one_line_errors(reference, tmp_path):
    with pytest.raises(ValueError, match="unknown facenet checkpoint 'ms-celeb'"):
        load_facenet("ms-celeb")
    with pytest.raises(FileNotFoundError, match="--facenet_weights"):
        load_facenet(weights=tmp_path / "missing.pt")
    _, _, without = reference
    with pytest.raises(ChecksumError):
        load_facenet(weights=without, sha256="f" * 64)
    other = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), other)
    with pytest.raises(ValueError, match="does not fit InceptionResnetV1"):
        load_facenet(weights=other)
    junk = tmp_path / "junk.pt"
    torch.save([1, 2, 3], junk)
    with pytest.raises(ValueError, match="not an InceptionResnetV1 state dict"):
        load_facenet(weights=junk)
