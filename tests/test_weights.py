"""Weights registry: package resources, verified atomic downloads, and the listing CLI."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import weights
from models.weights import (REGISTRY, ChecksumError, PackageResource, UrlResource,
                            WeightsUnavailableError, cache_root, download_verified, file_sha256,
                            main, resolve)

REPO = Path(__file__).resolve().parents[1]
PACKAGED = [name for name, spec in REGISTRY.items() if isinstance(spec.resource, PackageResource)]
URL_MODELS = [name for name, spec in REGISTRY.items() if isinstance(spec.resource, UrlResource)]


def test_registry_has_detector_and_both_embedders():
    assert {"mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet", "dlib-resnet"} <= set(PACKAGED)
    assert set(URL_MODELS) == {"facenet-vggface2", "facenet-casia-webface"}
    for name in URL_MODELS:
        res = REGISTRY[name].resource
        assert res.url.startswith("https://github.com/timesler/facenet-pytorch/releases/")
        assert REGISTRY[name].option == "--facenet_weights"
    pinned = REGISTRY["facenet-vggface2"].resource.sha256
    assert len(pinned) == 64 and int(pinned, 16) >= 0


@pytest.mark.parametrize("name", PACKAGED)
def test_package_resources_are_available_here(name):
    path = resolve(name)
    assert path.is_file() and path.stat().st_size > 10_000


def test_package_resource_checked_against_given_digest():
    pnet = resolve("mtcnn-pnet")
    assert resolve("mtcnn-pnet", sha256=file_sha256(pnet)) == pnet
    with pytest.raises(ChecksumError, match="mtcnn|pnet"):
        resolve("mtcnn-pnet", sha256="0" * 64)


def test_user_path_and_unknown_model(tmp_path):
    mine = tmp_path / "mine.dat"
    mine.write_bytes(b"weights")
    assert resolve("dlib-resnet", mine) == mine
    with pytest.raises(FileNotFoundError, match="missing.dat"):
        resolve("dlib-resnet", tmp_path / "missing.dat")
    with pytest.raises(ValueError, match="unknown model 'arcface'"):
        resolve("arcface")


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("FACEGROUP_CACHE", raising=False)
    assert cache_root() == Path.home() / ".cache" / "facegroup" / "weights"
    monkeypatch.setenv("FACEGROUP_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "given") == tmp_path / "given"


def test_download_verifies_then_renames(tmp_path):
    src = tmp_path / "blob.bin"
    payload = os.urandom(3 << 20)  # several read chunks
    src.write_bytes(payload)
    dest = tmp_path / "cache" / "blob.bin"
    assert download_verified(src.as_uri(), dest, hashlib.sha256(payload).hexdigest()) == dest
    assert dest.read_bytes() == payload
    with pytest.raises(ChecksumError, match="discarded"):
        download_verified(src.as_uri(), tmp_path / "cache" / "other.bin", "1" * 64)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["blob.bin"]


def test_unreachable_url_is_weights_unavailable(tmp_path):
    gone = (tmp_path / "gone" / "x.pt").as_uri()
    with pytest.raises(WeightsUnavailableError, match="--facenet_weights"):
        resolve("facenet-vggface2", cache_dir=tmp_path / "c", url=gone)


def test_cli_lists_every_model_with_source_and_status(tmp_path):
    out = subprocess.run([sys.executable, "-m", "models.weights", "--cache_dir", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    blocks = {block.splitlines()[0].split(":")[0]: block for block in _blocks(out)}
    assert list(blocks) == list(REGISTRY)
    for name in PACKAGED:
        assert f"available at {resolve(name)}" in blocks[name]
        assert "package resource" in blocks[name]
    vgg = blocks["facenet-vggface2"]
    assert REGISTRY["facenet-vggface2"].resource.url in vgg
    assert REGISTRY["facenet-vggface2"].resource.sha256 in vgg
    assert str(tmp_path / "20180402-114759-vggface2.pt") in vgg
    assert "MISSING" in vgg and "--facenet_weights" in vgg
    assert "sha256: unknown" in blocks["facenet-casia-webface"]


def test_cli_reports_cached_files_and_their_digests(tmp_path, capsys):
    (tmp_path / "20180402-114759-vggface2.pt").write_bytes(b"not the release")
    casia = tmp_path / "20180408-102900-casia-webface.pt"
    casia.write_bytes(b"user-provided")
    assert main(["--cache_dir", str(tmp_path)]) == 0
    blocks = {b.splitlines()[0].split(":")[0]: b for b in _blocks(capsys.readouterr().out)}
    assert "CORRUPT" in blocks["facenet-vggface2"]
    assert f"available at {casia} (sha256 {file_sha256(casia)}, unverified)" \
        in blocks["facenet-casia-webface"]


def test_cli_download_errors(tmp_path, capsys):
    assert main(["--cache_dir", str(tmp_path), "--download", "facenet-casia-webface"]) == 1
    assert "no published SHA-256" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--download", "mtcnn-pnet"])
    with pytest.raises(SystemExit):
        main(["--sha256", "0" * 64])


def test_cli_download_with_given_digest(tmp_path, monkeypatch, capsys):
    release = tmp_path / "20180408-102900-casia-webface.pt"
    release.write_bytes(b"stand-in release")
    spec = REGISTRY["facenet-casia-webface"]
    mirror = UrlResource(release.as_uri(), None)
    monkeypatch.setitem(REGISTRY, spec.name, weights.WeightsSpec(
        spec.name, spec.description, mirror, spec.option))
    cache = tmp_path / "cache"
    assert main(["--cache_dir", str(cache), "--download", spec.name,
                 "--sha256", file_sha256(release)]) == 0
    assert (cache / release.name).read_bytes() == b"stand-in release"
    assert f"{spec.name}: {cache / release.name}" in capsys.readouterr().out


def _blocks(listing: str) -> list[str]:
    """Split the CLI listing into one block per model (header line + indented lines)."""
    blocks: list[str] = []
    for line in listing.splitlines():
        if line and not line.startswith(" "):
            blocks.append(line)
        elif blocks:
            blocks[-1] += "\n" + line
    return blocks
