"""Person ids that stay the same from one run to the next.

Each run clusters all of a user's faces afresh; this module then names the new clusters
with the previous run's person ids, matched through the faces the two runs share (a
face is identified across runs by its face_key, "<photo sha256>:<face index>").

Rule, for one user (deterministic: it depends only on the face keys and labels):
  0. First, a cluster the user's corrections name (pipeline.corrections: `preferred`,
     cluster -> the person id the user knew, e.g. a merge's `into`) takes that id; fresh
     ids (4.) then count from above it too. The steps below skip the ids and clusters taken.
  1. overlap(c, p) = number of faces in new cluster c that had person id p before.
  2. Pairs (c, p) with overlap > 0 are taken greedily by decreasing overlap; ties go to
     the smaller previous id p, then to the cluster whose smallest face key sorts first.
     A pair is accepted while neither c nor p is taken.
  3. So a person whose faces did not change keeps its id, and new faces that join it
     take that id; when people merge, the merged cluster keeps the id of the part that
     brings the most faces (ties: the smaller id) and the other ids retire; when a
     person splits, the part with the most of its faces keeps the id.
  4. Clusters left without an id get fresh ones, counting up from the user's
     `next_id`: one more than the largest id ever given to that user, so a retired id
     never comes back for someone else. They are numbered in cluster order (largest
     first, ties by smallest face key), which is also how a first run numbers people.
  5. Unclustered faces stay -1.
`next_id` is stored with each user's clusters/ table (pipeline.outputs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class PreviousPeople:
    """One user's person ids from the previous run: face_key -> person id (>= 0), and
    the smallest id never given to this user."""

    person_of: Mapping[str, int] = field(default_factory=dict)
    next_id: int = 0


def stable_person_ids(face_keys: Sequence[str], labels: np.ndarray, previous: PreviousPeople | None,
                      preferred: Mapping[int, int] | None = None) -> tuple[np.ndarray, int]:
    """Person ids (N,) int32 for faces whose new clusters are labels (N,) (-1 alone,
    clusters numbered 0.. in cluster order as cluster.canonical_labels gives them),
    and the user's next_id after this run; `preferred` (cluster -> id, ids distinct)
    assigns those first."""
    labels = np.asarray(labels)
    previous = previous or PreviousPeople()
    n_clusters = int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0
    first_key = [""] * n_clusters
    overlap: dict[tuple[int, int], int] = {}
    for key, c in zip(face_keys, labels.tolist()):
        if c < 0:
            continue
        if not first_key[c] or key < first_key[c]:
            first_key[c] = key
        p = previous.person_of.get(key)
        if p is not None and p >= 0:
            overlap[c, p] = overlap.get((c, p), 0) + 1
    assigned: dict[int, int] = dict(preferred or {})
    taken: set[int] = set(assigned.values())
    for (c, p), _ in sorted(overlap.items(), key=lambda item: (-item[1], item[0][1], first_key[item[0][0]])):
        if c not in assigned and p not in taken:
            assigned[c] = p
            taken.add(p)
    next_id = max([previous.next_id, *(p + 1 for p in previous.person_of.values()), *(p + 1 for p in taken)])
    for c in range(n_clusters):  # cluster order: largest first, ties by smallest face key
        if c not in assigned:
            assigned[c] = next_id
            next_id += 1
    ids = np.array([assigned[c] if c >= 0 else -1 for c in labels.tolist()], dtype=np.int32)
    return ids, next_id
