"""The naming rule: which person clusters get a known person's name.

A person cluster's centroid (mean embedding of its faces) is compared with each known
name's centroid (the mean embedding of that name's reference faces). The nearest name is
given when its distance is below `threshold` AND the second-nearest name is at least
`margin` further away; otherwise the cluster stays unnamed (ambiguous or unknown people
are never guessed). Several clusters may receive the same name (one person split in two).
Names are recomputed on every run from that run's clusters. Thresholds per embedder
version: pipeline/thresholds.py; the reference faces come from pipeline.known_people.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.cluster import cluster_means
from pipeline.schemas import NAMING_KEY, PEOPLE


@dataclass
class KnownPeople:
    """Embedded reference faces, M of them.

    embeddings: (M,D) float32; names: (M,) str; user_ids: (M,) the user a face belongs to,
    None for shared known people; skipped: (photo path, reason) of reference photos that gave no face.
    """

    embedder_version: str
    embeddings: np.ndarray
    names: np.ndarray
    user_ids: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def for_user(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (m,D), names (m,)) of the known people that apply to `user_id`."""
        keep = np.array([u is None or u == user_id for u in self.user_ids], dtype=bool)
        return self.embeddings[keep], self.names[keep]


def name_distances(person_centroids: np.ndarray, known_embeddings: np.ndarray,
                   known_names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(names (U,) sorted, distances (K,U)) from each cluster centroid to each name's centroid.

    person_centroids: (K,D); known_embeddings: (M,D) reference faces; known_names: (M,).
    A name's centroid is the mean of its reference faces.
    """
    names, inverse = np.unique(np.asarray(known_names), return_inverse=True)
    _, centres, _ = cluster_means(known_embeddings, inverse)
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


def people_table(user_id: str, person_id: np.ndarray, embeddings: np.ndarray,
                 known_embeddings: np.ndarray, known_names: np.ndarray,
                 threshold: float = 0.0, margin: float = 0.0) -> pa.Table:
    """The `people/` rows (schema PEOPLE) of one user: every cluster, named by `name_people`.

    person_id: (N,) ClusterResult.person_id (or the clusters/ column), -1 = unclustered;
    embeddings: (N,D) the same faces; known_*: from KnownPeople.for_user (may be empty:
    then every name and match distance is null, whatever threshold and margin). No person is
    confirmed yet (pipeline.outputs applies the user's corrections).
    """
    ids, centroids, counts = cluster_means(embeddings, person_id)
    named = name_people(centroids, ids, known_embeddings, known_names, threshold, margin)
    return pa.table({
        "user_id": pa.array([user_id] * len(ids), pa.string()),
        "person_id": pa.array(ids, pa.int32()),
        "name": pa.array([n for _, n, _ in named], pa.string()),
        "match_distance": pa.array([d for _, _, d in named], pa.float32()),
        "face_count": pa.array(counts, pa.int32()),
        "confirmed": pa.array([False] * len(ids), pa.bool_()),
        "name_source": pa.array(["known_people" if n is not None else None for _, n, _ in named], pa.string()),
    }, schema=PEOPLE)


@dataclass(frozen=True)
class Naming:
    """A run's known people and naming rule, as plain data: the writer DoFn carries it to
    the workers as a constructor argument (no side input or side file, so every runner
    gets it). `threshold` and `margin`: see the module docstring."""

    known: KnownPeople
    threshold: float
    margin: float

    def people(self, user_id: str, person_id: np.ndarray, embeddings: np.ndarray) -> pa.Table:
        """The people/ table of one user (see people_table), with the rule in its metadata."""
        emb, names = self.known.for_user(user_id)
        table = people_table(user_id, person_id, embeddings, emb, names, self.threshold, self.margin)
        rule = {"embedder_version": self.known.embedder_version, "threshold": self.threshold,
                "margin": self.margin, "known_names": len(set(names.tolist()))}
        return table.replace_schema_metadata({NAMING_KEY: json.dumps(rule, sort_keys=True).encode()})
