"""Find every photo of one person in a user's library from a single query photo.

The query face is detected with the detection options and embedded with the embedder
recorded in the user's faces/ table (the command refuses when that embedder or its
weights differ: distances across embedder versions mean nothing). Photos are ranked by the Euclidean distance of their nearest
face to the query face; matches below the verification threshold
(pipeline/thresholds.py) are marked as the same person. The results are printed and
written as an HTML page, <output>/search/<name>.html, with face thumbnails beside it in
<output>/search/<name>_files/.

    python -m pipeline.search --output OUT --user alice --photo query.jpg [--face-index 1] [--top 20]
"""
from __future__ import annotations

import argparse
import html
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from core.faces import PhotoFaces
from models.embedders import FaceEmbedder, get_embedder
from models.mtcnn import MTCNN
from pipeline.decode import encode_jpeg
from pipeline.images import user_images
from pipeline.options import DEFAULT_MAX_DETECT_SIDE, DEFAULT_MIN_DET_SCORE, DEFAULT_MIN_FACE_SIZE
from pipeline.photo_faces import photo_faces
from pipeline.reuse import recorded_settings
from pipeline.tables import read_user_table, table_path
from pipeline.thresholds import thresholds_for
from pipeline.user_tables import face_embeddings
from pipeline.users import encode_user_id

#: Columns needed to rank (thumbnails are read only for the matches shown).
RANK_COLUMNS = ["photo_path", "face_index", "face_key", "embedder", "embedder_version", "embedding"]


@dataclass(frozen=True)
class UserFaces:
    """A user's faces from faces/: embeddings (N,D) float32 and per-face columns (N,), and
    the run's detection options (pipeline defaults where the file records none)."""

    path: str  # the faces/ file, for messages
    embedder: str
    embedder_version: str
    embeddings: np.ndarray
    photo_paths: np.ndarray
    face_indices: np.ndarray
    face_keys: np.ndarray
    min_face_size: int = DEFAULT_MIN_FACE_SIZE
    min_det_score: float = DEFAULT_MIN_DET_SCORE
    max_detect_side: int = DEFAULT_MAX_DETECT_SIDE


@dataclass(frozen=True)
class Match:
    """One ranked photo: its nearest face to the query."""

    rank: int
    distance: float
    photo_path: str
    face_index: int
    face_key: str


def load_user_faces(output: Path, user_id: str) -> UserFaces:
    """Read a user's faces/ table (the columns to rank); one embedder version required."""
    table = read_user_table(str(output), "faces", user_id, RANK_COLUMNS)
    path = table_path(str(output), "faces", user_id)
    if table is None:
        raise FileNotFoundError(f"no faces/ table for --user {user_id!r} under --output {output} ({path})")
    if table.num_rows == 0:
        raise ValueError(f"--user {user_id!r} has no faces to search")
    embedders = pc.unique(table["embedder"]).to_pylist()
    versions = pc.unique(table["embedder_version"]).to_pylist()
    if len(embedders) != 1 or len(versions) != 1:
        raise ValueError(f"{path} mixes embedders {embedders} / versions {versions}; re-run the pipeline")
    embeddings = face_embeddings(table)
    settings = json.loads(recorded_settings(table) or b"{}")  # InferenceSettings
    detection = {k: settings[k] for k in ("min_face_size", "min_det_score", "max_detect_side") if k in settings}
    return UserFaces(path, embedders[0], versions[0], embeddings,
                     np.array(table["photo_path"].to_pylist(), dtype=object),
                     table["face_index"].to_numpy(), np.array(table["face_key"].to_pylist(), dtype=object),
                     **detection)


def matching_embedder(faces: UserFaces, device: str, weights: str | None) -> FaceEmbedder:
    """The embedder that produced `faces`; refuses a different version (weights, alignment)."""
    embedder = get_embedder(faces.embedder, device, weights)
    if embedder.version != faces.embedder_version:
        raise ValueError(f"faces in {faces.path} were embedded with {faces.embedder_version}, but the available "
                         f"{faces.embedder} is {embedder.version}; pass the pipeline's weights with --weights")
    return embedder


def rank_photos(embeddings: np.ndarray, photo_paths: np.ndarray, query: np.ndarray,
                top: int) -> tuple[np.ndarray, np.ndarray]:
    """(face row indices (k,), distances (k,)) of the `top` photos nearest the query.

    embeddings: (N,D); photo_paths: (N,); query: (D,). Each photo is represented by its
    face nearest the query; photos are in ascending distance (ties: faces/ row order).
    """
    dist = np.linalg.norm(embeddings - query[None, :], axis=1)
    order = np.argsort(dist, kind="stable")
    _, first = np.unique(photo_paths[order], return_index=True)
    best = order[np.sort(first)][:top]
    return best, dist[best]


def query_face(faces: PhotoFaces, photo: Path, face_index: int | None) -> int:
    """The query face's index: `face_index`, or the only face; ambiguous queries are errors."""
    if len(faces) == 0:
        raise ValueError(f"no face found in --photo {photo}")
    if face_index is None:
        if len(faces) > 1:
            listed = "; ".join(f"{i}: box {np.round(b).astype(int).tolist()} score {s:.2f}"
                               for i, (b, s) in enumerate(zip(faces.detections.boxes, faces.detections.scores)))
            raise ValueError(f"--photo {photo} has {len(faces)} faces; choose one with --face-index ({listed})")
        return 0
    if not 0 <= face_index < len(faces):
        raise ValueError(f"--face-index {face_index} out of range: --photo {photo} has {len(faces)} face(s)")
    return face_index


def thumbnails(output: Path, user_id: str, keys: list[str]) -> dict[str, bytes]:
    """face_key -> thumbnail JPEG of the faces `keys` (images/: pipeline.images)."""
    wanted = {(sha, int(index)): f"{sha}:{index}" for sha, index in (key.rsplit(":", 1) for key in keys)}
    return {wanted[image]: jpeg for image, jpeg in user_images(str(output), user_id, set(wanted)).items()}


def page_name(user_id: str, photo: Path, face_index: int) -> str:
    """File-system-safe, deterministic base name of a search page."""
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in photo.stem)[:80]
    return f"{encode_user_id(user_id)[:80]}-{stem}-face{face_index}"


def write_page(out_dir: Path, name: str, user_id: str, photo: Path, query_chip: np.ndarray,
               matches: list[Match], thumbs: dict[str, bytes | None], threshold: float | None,
               embedder_version: str) -> Path:
    """Write <out_dir>/<name>.html and its thumbnails in <out_dir>/<name>_files/; returns the page."""
    files = out_dir / f"{name}_files"
    files.mkdir(parents=True, exist_ok=True)
    for old in files.glob("*.jpg"):
        old.unlink()
    (files / "query.jpg").write_bytes(encode_jpeg(query_chip, 90))
    cells = []
    for m in matches:
        thumb = thumbs.get(m.face_key)
        if thumb:
            (files / f"{m.rank:04d}.jpg").write_bytes(thumb)
            img = f'<img src="{name}_files/{m.rank:04d}.jpg" alt="face {m.face_index}">'
        else:
            img = '<div class="none">no thumbnail</div>'
        same = "" if threshold is None else (" same" if m.distance < threshold else " other")
        cells.append(f'<figure class="match{same}">{img}<figcaption>#{m.rank} · {m.distance:.3f}<br>'
                     f'{html.escape(m.photo_path)} (face {m.face_index})</figcaption></figure>')
    rule = ("" if threshold is None else
            f"<p>Green: distance below the verification threshold {threshold:.3f} (same person).</p>")
    page = out_dir / f"{name}.html"
    page.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Search: {html.escape(photo.name)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}figure{{display:inline-block;margin:.4em;width:160px;
vertical-align:top;font-size:.8em;word-break:break-all}}img{{width:150px;height:150px;border:4px solid #ccc}}
.same img{{border-color:#2a2}}.other img{{border-color:#c33}}.none{{width:150px;height:150px;background:#eee}}</style>
</head><body><h1>Photos of user {html.escape(user_id)} nearest to {html.escape(photo.name)}</h1>
<figure><img src="{name}_files/query.jpg" alt="query face"><figcaption>query face</figcaption></figure>
<p>Embedder {html.escape(embedder_version)}; distance = Euclidean distance between face embeddings.</p>{rule}
{''.join(cells)}
</body></html>
""", encoding="utf-8")
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="the pipeline's --output folder")
    parser.add_argument("--user", required=True, help="user id whose photos are searched")
    parser.add_argument("--photo", type=Path, required=True, help="query photo")
    parser.add_argument("--face-index", type=int, default=None, help="query face when the photo has several")
    parser.add_argument("--top", type=int, default=20, help="number of photos to show")
    parser.add_argument("--weights", default=None, help="embedder weights, when not the default source")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args(argv)
    try:
        if args.top < 1:
            raise ValueError(f"--top must be >= 1, got {args.top}")
        faces = load_user_faces(args.output, args.user)
        embedder = matching_embedder(faces, args.device, args.weights)
        detector = MTCNN(min_face_size=faces.min_face_size, device=embedder.device)
        query = photo_faces([args.photo], detector, embedder, max_detect_side=faces.max_detect_side,
                            min_det_score=faces.min_det_score)[0]
        qi = query_face(query, args.photo, args.face_index)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        threshold: float | None = thresholds_for(embedder.version).verify
    except ValueError:
        threshold = None
    rows, dists = rank_photos(faces.embeddings, faces.photo_paths, query.embeddings[qi], args.top)
    matches = [Match(r + 1, float(d), str(faces.photo_paths[i]), int(faces.face_indices[i]), str(faces.face_keys[i]))
               for r, (i, d) in enumerate(zip(rows, dists))]
    n_photos = len(set(faces.photo_paths))
    print(f"query: {args.photo}, face {qi} of {len(query)}")
    print(f"embedder {embedder.name} ({embedder.version}); {len(faces.embeddings)} faces in {n_photos} photos "
          f"of user {args.user!r}" + ("" if threshold is None else f"; same person below {threshold:.4f}"))
    print(f"{'rank':>4}  {'distance':>8}  {'same':4}  face  photo")
    for m in matches:
        same = "?" if threshold is None else ("yes" if m.distance < threshold else "no")
        print(f"{m.rank:>4}  {m.distance:8.4f}  {same:4}  {m.face_index:>4}  {m.photo_path}")
    page = write_page(args.output / "search", page_name(args.user, args.photo, qi), args.user, args.photo,
                      query.chips[qi], matches, thumbnails(args.output, args.user, [m.face_key for m in matches]),
                      threshold, embedder.version)
    print(f"page: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
