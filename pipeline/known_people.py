"""Name person clusters from a folder of labelled reference photos (`--known_people DIR`).

Folder layout, one of (decided by where the photos are; mixing the two is an error):
  DIR/<name>/<photo>            known people shared by every user;
  DIR/<user_id>/<name>/<photo>  each user's own known people (users without a folder get none).
Hidden files and folders and files that are not photos (by extension) are ignored. The face
of a reference photo is its largest detected face (ties: the most central); photos that
cannot be read or show no face are skipped and listed in `KnownPeople.skipped`.

Naming rule (`name_people`): a person cluster's centroid is compared with each known
name's centroid (the mean embedding of that name's reference faces). The nearest name is
given when its distance is below `threshold` AND the second-nearest name is at least
`margin` further away; otherwise the cluster stays unnamed (ambiguous or unknown people
are never guessed). Several clusters may receive the same name (one person split in two).
Thresholds per embedder version: pipeline/thresholds.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from models.embedders import Embedder
from models.mtcnn import MTCNN
from pipeline.photo_faces import largest_face, photo_faces
from pipeline.users import user_id_problem

#: File name extensions read as reference photos (lower case).
PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                              ".heic", ".heif"})

#: The `people/` table: one row per person cluster (person_id >= 0) of a user.
PEOPLE = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("person_id", pa.int32(), nullable=False),
    pa.field("name", pa.string()),  # null = not named (unknown or ambiguous)
    pa.field("match_distance", pa.float32()),  # to the nearest known name; null = no known people
    pa.field("face_count", pa.int32(), nullable=False),
])


@dataclass
class KnownPeople:
    """Embedded reference faces, M of them.

    embeddings: (M,D) float32; names: (M,) str; user_ids: (M,) the user a face belongs to,
    None for shared known people; photo_paths: (M,) relative to the folder;
    skipped: (photo path, reason) of reference photos that gave no face.
    """

    embedder_version: str
    embeddings: np.ndarray
    names: np.ndarray
    user_ids: np.ndarray
    photo_paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def for_user(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (m,D), names (m,)) of the known people that apply to `user_id`."""
        keep = np.array([u is None or u == user_id for u in self.user_ids], dtype=bool)
        return self.embeddings[keep], self.names[keep]


def reference_photos(root: Path) -> list[tuple[str | None, str, Path]]:
    """(user_id or None, name, photo path) of every reference photo under `root`, sorted."""
    if not root.is_dir():
        raise FileNotFoundError(f"--known_people folder {root} not found")
    found: list[tuple[str | None, str, Path]] = []
    depths: set[int] = set()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        hidden = any(part.startswith(".") for part in rel.parts)
        if hidden or path.suffix.lower() not in PHOTO_EXTENSIONS or not path.is_file():
            continue
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


def load_known_people(root: str | Path, detector: MTCNN, embedder: Embedder) -> KnownPeople:
    """Embed the largest face of every reference photo under `root` with `embedder`."""
    root = Path(root)
    embeddings, names, user_ids, paths, skipped = [], [], [], [], []
    for user_id, name, path in reference_photos(root):
        rel = path.relative_to(root).as_posix()
        try:
            faces = photo_faces(path, detector, embedder)
        except ValueError as exc:
            skipped.append((rel, str(exc)))
            continue
        i = largest_face(faces.detections, faces.image.shape[1], faces.image.shape[0])
        if i is None:
            skipped.append((rel, "no face detected"))
            continue
        embeddings.append(faces.embeddings[i])
        names.append(name)
        user_ids.append(user_id)
        paths.append(rel)
    if not embeddings:
        raise ValueError(f"--known_people: no face found in any photo under {root}")
    return KnownPeople(embedder.version, np.stack(embeddings).astype(np.float32), np.array(names),
                       np.array(user_ids, dtype=object), paths, skipped)


def name_distances(person_centroids: np.ndarray, known_embeddings: np.ndarray,
                   known_names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(names (U,) sorted, distances (K,U)) from each cluster centroid to each name's centroid.

    person_centroids: (K,D); known_embeddings: (M,D) reference faces; known_names: (M,).
    A name's centroid is the mean of its reference faces.
    """
    names, inverse = np.unique(np.asarray(known_names), return_inverse=True)
    centres = np.zeros((len(names), np.shape(known_embeddings)[1]))
    np.add.at(centres, inverse, np.asarray(known_embeddings, dtype=np.float64))
    centres /= np.bincount(inverse)[:, None]
    centroids = np.asarray(person_centroids, dtype=np.float64)
    return names, np.linalg.norm(centroids[:, None, :] - centres[None, :, :], axis=2)


def name_people(person_centroids: np.ndarray, person_ids: np.ndarray, known_embeddings: np.ndarray,
                known_names: np.ndarray, threshold: float,
                margin: float) -> list[tuple[int, str | None, float | None]]:
    """(person_id, name or None, match distance or None) for each person cluster.

    person_centroids: (K,D) mean embedding of each cluster; person_ids: (K,);
    known_embeddings: (M,D) reference faces; known_names: (M,). The match distance is the
    Euclidean distance to the nearest name's centroid (None when there are no known
    people); the name is given only when that distance is < threshold and the second
    nearest name's centroid is >= margin further (module docstring).
    """
    if len(known_embeddings) == 0:
        return [(int(p), None, None) for p in person_ids]
    names, dist = name_distances(person_centroids, known_embeddings, known_names)
    order = np.argsort(dist, axis=1)
    rows = np.arange(len(dist))
    best = dist[rows, order[:, 0]]
    second = dist[rows, order[:, 1]] if len(names) > 1 else np.full(len(dist), np.inf)
    named = (best < threshold) & (second - best >= margin)
    return [(int(p), str(names[order[k, 0]]) if named[k] else None, float(best[k]))
            for k, p in enumerate(person_ids)]


def cluster_centroids(embeddings: np.ndarray, person_id: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(person_ids (K,), centroids (K,D), face counts (K,)) of the clusters person_id >= 0.

    embeddings: (N,D); person_id: (N,) with -1 for unclustered faces (no centroid).
    """
    person_id = np.asarray(person_id)
    valid = person_id >= 0
    ids, inverse, counts = np.unique(person_id[valid], return_inverse=True, return_counts=True)
    centroids = np.zeros((len(ids), embeddings.shape[1]))
    np.add.at(centroids, inverse, np.asarray(embeddings, dtype=np.float64)[valid])
    return ids, centroids / np.maximum(counts, 1)[:, None], counts


def people_table(user_id: str, person_id: np.ndarray, embeddings: np.ndarray,
                 known_embeddings: np.ndarray, known_names: np.ndarray,
                 threshold: float, margin: float) -> pa.Table:
    """The `people/` rows (schema PEOPLE) of one user: every cluster, named by `name_people`.

    person_id: (N,) ClusterResult.person_id (or the clusters/ column), -1 = unclustered;
    embeddings: (N,D) the same faces; known_*: from KnownPeople.for_user (may be empty:
    then every name and match distance is null, whatever threshold and margin).
    """
    ids, centroids, counts = cluster_centroids(embeddings, person_id)
    named = name_people(centroids, ids, known_embeddings, known_names, threshold, margin)
    return pa.table({
        "user_id": pa.array([user_id] * len(ids), pa.string()),
        "person_id": pa.array(ids, pa.int32()),
        "name": pa.array([n for _, n, _ in named], pa.string()),
        "match_distance": pa.array([d for _, _, d in named], pa.float32()),
        "face_count": pa.array(counts, pa.int32()),
    }, schema=PEOPLE)
