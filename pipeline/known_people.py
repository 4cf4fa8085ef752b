"""Known people from a folder of labelled reference photos (`--known_people DIR`).

Folder layout, one of (decided by where the photos are; mixing the two is an error):
  DIR/<name>/<photo>            known people shared by every user;
  DIR/<user_id>/<name>/<photo>  each user's own known people (users without a folder get none).
Hidden files and folders and files that are not photos (by extension) are ignored. The face
of a reference photo is the detected face covering most of the photo (ties: the most
central; core.faces.LARGEST); photos that cannot be read (broken links included) or
show no face are skipped and listed in `KnownPeople.skipped`. Links obey --follow_links as
in the library (pipeline.links): by default a photo under DIR/<user_id>/ is read only where
its links lead inside that folder, and a shared one only inside DIR.
A run loads the folder once, on the launching machine (`load_naming`), with the run's
detector options and embedder, and names its clusters by pipeline.naming.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.faces import LARGEST, faces_of, succeeded
from models.embedders import FaceEmbedder
from models.mtcnn import MTCNN
from pipeline.inference import InferenceSettings
from pipeline.links import FOLLOW_USER, confined
from pipeline.naming import KnownPeople, Naming
from pipeline.options import DEFAULT_MAX_DETECT_SIDE, DEFAULT_MIN_DET_SCORE
from pipeline.photo_faces import read_photo
from pipeline.thresholds import thresholds_for
from pipeline.users import user_id_problem

#: Reference photos detected together (their full-resolution pixels are kept for alignment).
READ_BATCH = 8
#: File name extensions read as reference photos (lower case).
PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                              ".heic", ".heif"})


def reference_photos(root: Path) -> list[tuple[str | None, str, Path]]:
    """(user_id or None, name, photo path) of every reference photo under `root`, sorted."""
    if not root.is_dir():
        raise FileNotFoundError(f"--known_people folder {root} not found")
    found: list[tuple[str | None, str, Path]] = []
    depths: set[int] = set()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        hidden = any(part.startswith(".") for part in rel.parts)
        if hidden or path.suffix.lower() not in PHOTO_EXTENSIONS or path.is_dir():
            continue  # broken links stay: they are skipped, with a reason, when read
        depths.add(len(rel.parts))
        if len(rel.parts) == 2:
            found.append((None, rel.parts[0], path))
        elif len(rel.parts) == 3:
            found.append((rel.parts[0], rel.parts[1], path))
        else:
            raise ValueError(f"--known_people: photo {rel} is not at <name>/<photo> or <user_id>/<name>/<photo>")
    if not found:
        raise ValueError(f"--known_people folder {root} holds no photos (expected <name>/<photo>)")
    if len(depths) > 1:
        raise ValueError(f"--known_people folder {root} mixes <name>/<photo> and <user_id>/<name>/<photo> layouts")
    for user_id in {u for u, _, _ in found if u is not None}:
        problem = user_id_problem(user_id)
        if problem:
            raise ValueError(f"--known_people: folder {user_id!r} is not a valid user id ({problem})")
    return found


def link_folder(root: Path, user_id: str | None) -> tuple[str, str]:
    """(folder, its description) that a reference photo's links must stay in: its user's
    folder, or the whole known-people folder for photos shared by every user."""
    if user_id is None:
        return str(root), "the --known_people folder"
    return str(root / user_id), "the user's folder"


def load_known_people(root: str | Path, detector: MTCNN, embedder: FaceEmbedder, max_detect_side: int = DEFAULT_MAX_DETECT_SIDE,
                      min_det_score: float = DEFAULT_MIN_DET_SCORE, follow_links: str = FOLLOW_USER) -> KnownPeople:
    """Embed the largest face of every reference photo under `root` with `embedder`
    (detection options as in photo_faces: a run passes its own), READ_BATCH photos at a time.
    Links are followed as `follow_links` allows (pipeline.links)."""
    root = Path(root)
    embeddings, names, user_ids, skipped = [], [], [], []
    refs = reference_photos(root)
    for start in range(0, len(refs), READ_BATCH):
        photos, readable = [], []
        for user_id, name, path in refs[start:start + READ_BATCH]:
            rel = path.relative_to(root).as_posix()
            try:
                folder, what = link_folder(root, user_id) if follow_links == FOLLOW_USER else (None, "")
                photos.append(read_photo(confined(str(path), folder, what), max_detect_side))
            except (OSError, ValueError) as exc:
                skipped.append((rel, str(exc)))
                continue
            readable.append((user_id, name, rel))
        found = succeeded(faces_of(photos, detector, embedder, min_det_score, LARGEST))
        for (user_id, name, rel), faces in zip(readable, found):
            if len(faces) == 0:
                skipped.append((rel, "no face detected"))
                continue
            embeddings.append(faces.embeddings[0])
            names.append(name)
            user_ids.append(user_id)
    if not embeddings:
        raise ValueError(f"--known_people: no face found in any photo under {root}")
    return KnownPeople(embedder.version, np.stack(embeddings).astype(np.float32), np.array(names),
                       np.array(user_ids, dtype=object), skipped)


def load_naming(folder: str, settings: InferenceSettings, embedder: FaceEmbedder,
                follow_links: str = FOLLOW_USER) -> Naming:
    """The Naming of a run: its thresholds and the folder's reference faces, detected and
    embedded on this (launching) machine with the run's detector options and `embedder`
    (the one the launcher loaded, pipeline.inference.launcher_embedder); links followed as
    `follow_links` allows.

    Raises ValueError when no thresholds were derived for the embedder version, or when
    `embedder` is not the version the run's workers are checked against.
    """
    if embedder.version != settings.embedder.version:
        raise ValueError(f"--known_people: embedder {embedder.name} loaded as version {embedder.version}, but the run "
                         f"embeds with {settings.embedder.version}; names would compare unrelated distances")
    rule = thresholds_for(embedder.version)
    detector = MTCNN(min_face_size=settings.min_face_size, device=embedder.device)
    known = load_known_people(folder, detector, embedder, settings.max_detect_side, settings.min_det_score,
                              follow_links)
    return Naming(known, rule.name, rule.margin)
