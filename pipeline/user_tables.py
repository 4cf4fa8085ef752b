"""One user's five tables, built from the user's grouped outcomes: clustering, person ids,
naming, corrections and counts (`user_tables`); `ClusterUsers` is that step in the graph.

Every user's light outcomes (no JPEGs: pipeline.images) arrive together (GroupByKey on an
integer user key). Rows are sorted (photos and failures by path, faces and clusters by
face_key) and faces are clustered in face_key order, so the same inputs give
byte-for-byte comparable tables on every runner. In an incremental run the user's
PreviousResults arrive in the same group: REUSED outcomes are replaced by the previous
results, and person ids are carried over by pipeline.person_ids. photos/ and faces/
record the run's InferenceSettings and clusters/ the user's next unused person id in
their Parquet metadata (pipeline.schemas). A photo that appears under several paths of
one user (same SHA-256) gets a photos/ row per path, but its faces are stored and
clustered once (with the first path in sort order); face_key = "<sha256>:<face_index>"
is unique per user. People are named afresh on every run (pipeline.naming) from the known
people the step was constructed with (--known_people; without it every name is null):
people/ has a row per person, and clusters/ repeats the person's name on each of its
faces. The user's corrections (--corrections, replayed by the launcher:
pipeline.corrections) travel the same way: they constrain each user's clustering, and
their names win over known ones.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa

from core.quality import GATE
from pipeline import schemas
from pipeline.corrections import (IGNORED_REASON, CorrectionsStats, UserConstraints, corrections_stats,
                                  face_constraints, pinned_people)
from pipeline.inference import EmbedderInfo, InferenceSettings
from pipeline.naming import Naming, people_table
from pipeline.person_ids import PreviousPeople, stable_person_ids
from pipeline.records import REUSED, PhotoOutcome, PreviousResults

TABLES = ("photos", "faces", "clusters", "failures", "people")


@dataclass
class UserStats:
    """Counts of one user's written tables (photos = with_faces + without_faces + failed)."""

    user_id: str
    photos: int = 0
    with_faces: int = 0
    without_faces: int = 0
    failed: dict[str, int] = field(default_factory=lambda: {s: 0 for s in schemas.FAILURE_STAGES})
    faces: int = 0
    people: int = 0
    named: int = 0  # people given a known person's name
    unclustered: int = 0
    same_photo_paths: int = 0  # photos rows whose faces were stored under another path
    duplicate_listings: int = 0  # outcomes dropped because a manifest listed a path twice
    reused: int = 0  # photos whose results came from the previous run (not inferred again)
    corrections: dict | None = None  # CorrectionsStats of the user's corrections, None without any

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "UserStats":
        return cls(**json.loads(text))


def _fixed_list(values: np.ndarray, width: int) -> pa.FixedSizeListArray:
    """(N,width) float32 -> fixed_size_list<float32, width> array of N rows."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), width)


def unique_outcomes(outcomes: Iterable[PhotoOutcome]) -> list[PhotoOutcome]:
    """Outcomes sorted by photo_path, one per path (a manifest may list a path twice)."""
    seen: dict[str, PhotoOutcome] = {}
    for outcome in sorted(outcomes, key=lambda o: (o.photo_path, o.status)):
        seen.setdefault(outcome.photo_path, outcome)
    return list(seen.values())


def photos_table(user_id: str, outcomes: Sequence[PhotoOutcome]) -> pa.Table:
    """One photos/ row per outcome (outcomes sorted by path)."""
    return pa.Table.from_pydict({
        "user_id": [user_id] * len(outcomes),
        "photo_path": [o.photo_path for o in outcomes],
        "photo_sha256": [o.sha256 for o in outcomes],
        "status": [o.status for o in outcomes],
        "n_faces": [len(o.faces) for o in outcomes],
        "width": [o.width for o in outcomes],
        "height": [o.height for o in outcomes],
        "images_part": [o.images_part for o in outcomes],
    }, schema=schemas.PHOTOS)


def failures_table(user_id: str, outcomes: Sequence[PhotoOutcome]) -> pa.Table:
    """One failures/ row per failed outcome."""
    failed = [o for o in outcomes if o.status == "failed"]
    return pa.Table.from_pydict({
        "user_id": [user_id] * len(failed),
        "photo_path": [o.photo_path for o in failed],
        "stage": [o.stage for o in failed],
        "error": [o.error for o in failed],
    }, schema=schemas.FAILURES)


def faces_table(user_id: str, outcomes: Sequence[PhotoOutcome], embedder: EmbedderInfo) -> pa.Table:
    """faces/ rows sorted by face_key, each face once (first path of a repeated photo)."""
    rows = []
    stored: set[str] = set()
    for o in outcomes:
        if not o.faces or o.sha256 in stored:
            continue
        stored.add(o.sha256)
        rows.extend((schemas.face_key(o.sha256, k), o, k) for k in range(len(o.faces)))
    rows.sort(key=lambda row: row[0])
    faces = [o.faces[k] for _, o, k in rows]
    n, dim = len(rows), embedder.dim
    return pa.Table.from_arrays([
        pa.array([user_id] * n, pa.string()),
        pa.array([o.photo_path for _, o, _ in rows], pa.string()),
        pa.array([o.sha256 for _, o, _ in rows], pa.string()),
        pa.array([k for _, _, k in rows], pa.int32()),
        pa.array([key for key, _, _ in rows], pa.string()),
        _fixed_list(np.array([f.box for f in faces]).reshape(n, 4), 4),
        _fixed_list(np.array([f.landmarks for f in faces]).reshape(n, 10), 10),
        pa.array([f.det_score for f in faces], pa.float32()),
        pa.array([f.quality for f in faces], pa.float32()),
        pa.array([f.quality_reason for f in faces], pa.string()),
        pa.array([embedder.name] * n, pa.string()),
        pa.array([embedder.version] * n, pa.string()),
        _fixed_list(np.array([f.embedding for f in faces]).reshape(n, dim), dim),
    ], schema=schemas.faces_schema(dim, embedder.lineage))


def face_embeddings(faces: pa.Table) -> np.ndarray:
    """(N,D) float32 embeddings of a faces/ table, in its row order."""
    dim = faces.schema.field("embedding").type.list_size
    return faces.column("embedding").combine_chunks().flatten().to_numpy().reshape(faces.num_rows, dim)


@dataclass(frozen=True)
class Corrected:
    """What the user's corrections made of one user's clusters: the user's names by person
    id ("" = name cleared) and the counts for the summary (None without corrections)."""

    names: dict[int, str] = field(default_factory=dict)
    stats: CorrectionsStats | None = None


def clusters_table(faces: pa.Table, embeddings: np.ndarray, method: str, previous: PreviousPeople | None = None,
                   constraints: UserConstraints | None = None) -> tuple[pa.Table, Corrected]:
    """clusters/ rows for a user's faces table (sorted by face_key) and its embeddings
    (N,D) (`face_embeddings`), person ids carried
    over from `previous` (pipeline.person_ids); the next unused id goes into the metadata.
    Faces below the quality gate stay unclustered (core.quality; a null quality, from a
    table written before it existed, passes).
    Faces of one photo are never one person (cannot-link on photo_sha256); since each new
    cluster takes at most one earlier id, carried-over ids keep that. The user's
    `constraints` add cannot-link pairs and must-link groups (whose faces pass the gate:
    the user saw them), keep ignored faces out, and pin people (confirmed, the id the user
    knew, the user's name: returned for `with_corrections`). Names are left null
    (`with_names` fills them).

    Raises ValueError when the faces come from more than one embedder or version:
    distances between their embeddings mean nothing.
    """
    from pipeline.cluster import cluster_faces  # workers only: keeps scipy/sklearn out of the launcher

    embedders = sorted(set(zip(faces.column("embedder").to_pylist(),
                               faces.column("embedder_version").to_pylist())))
    if len(embedders) > 1:
        names = ", ".join(f"{name} {version}" for name, version in embedders)
        raise ValueError(f"refusing to cluster faces of user {faces.column('user_id')[0]} embedded by "
                         f"different embedders together ({names}); re-embed them with one --embedder")
    n, keys = faces.num_rows, faces.column("face_key").to_pylist()
    constraints = constraints or UserConstraints("")
    linked = face_constraints(constraints, keys)
    passed = np.nan_to_num(faces.column("quality").to_numpy(), nan=1.0) >= GATE
    if n:
        result = cluster_faces(embeddings, method, groups=faces.column("photo_sha256").to_numpy(zero_copy_only=False),
                               eligible=linked.eligible(passed), embedder_version=embedders[0][1],
                               must_link=linked.must_link, cannot_link=linked.cannot_link, parts=linked.parts)
        labels, size, distance = result.person_id, result.cluster_size, result.distance_to_centre
    else:
        labels = size = np.zeros(0, np.int32)
        distance = np.zeros(0, np.float32)
    pinned = pinned_people(constraints, keys, labels)
    person, next_id = stable_person_ids(keys, labels, previous, pinned.person_ids)
    id_of = dict(zip(labels.tolist(), person.tolist()))
    reasons = [IGNORED_REASON if ignored else (reason if not ok else None)
               for ignored, ok, reason in zip(linked.ignored.tolist(), passed.tolist(),
                                              faces.column("quality_reason").to_pylist())]
    table = pa.Table.from_arrays([
        faces.column("user_id"), faces.column("face_key"), faces.column("photo_sha256"),
        faces.column("face_index"), pa.array(person, pa.int32()), pa.array(size, pa.int32()),
        pa.array(distance, pa.float32()), pa.nulls(n, pa.string()),
        pa.array(np.isin(labels, list(pinned.confirmed)) & (labels >= 0), pa.bool_()),
        pa.array([r if p < 0 else None for r, p in zip(reasons, person.tolist())], pa.string())],
        schema=schemas.CLUSTERS)
    corrected = Corrected({id_of[c]: name for c, name in pinned.names.items()},
                          corrections_stats(constraints, keys, pinned, linked) if constraints.entries else None)
    return table.replace_schema_metadata({schemas.NEXT_PERSON_ID_KEY: str(next_id).encode()}), corrected


def with_corrections(people: pa.Table, clusters: pa.Table, corrected: Corrected) -> pa.Table:
    """people/ with the user's corrections: `confirmed` from clusters/, and the user's
    names in place of known ones (name_source "user"; a cleared name leaves the known one)."""
    confirmed = {p for p, c in zip(clusters.column("person_id").to_pylist(), clusters.column("confirmed").to_pylist())
                 if c}
    ids = people.column("person_id").to_pylist()
    user = [corrected.names.get(p) or None for p in ids]
    names = [u or known for u, known in zip(user, people.column("name").to_pylist())]
    sources = [("user" if u else source) for u, source in zip(user, people.column("name_source").to_pylist())]
    for name, column in (("confirmed", pa.array([p in confirmed for p in ids], pa.bool_())),
                         ("name", pa.array(names, pa.string())), ("name_source", pa.array(sources, pa.string()))):
        people = people.set_column(people.schema.get_field_index(name), people.schema.field(name), column)
    return people


def with_names(clusters: pa.Table, people: pa.Table) -> pa.Table:
    """clusters/ with each face's `name` set to its person's name in people/ (null when
    the person is unnamed or the face unclustered); metadata kept."""
    name_of = dict(zip(people.column("person_id").to_pylist(), people.column("name").to_pylist()))
    names = pa.array([name_of.get(p) for p in clusters.column("person_id").to_pylist()], pa.string())
    return clusters.set_column(clusters.schema.get_field_index("name"), clusters.schema.field("name"), names)


def user_tables(user_id: str, outcomes: Iterable[PhotoOutcome], settings: InferenceSettings, method: str,
                previous: PreviousResults | None = None, naming: Naming | None = None,
                constraints: UserConstraints | None = None) -> tuple[dict[str, pa.Table], UserStats]:
    """All five tables of one user and their counts; REUSED outcomes are resolved from
    `previous`, whose person ids the clusters keep; people are named by `naming`, and
    the user's corrections (`constraints`) constrain the clusters and win over it."""
    outcomes = list(outcomes)
    unique = unique_outcomes(outcomes)
    previous = previous or PreviousResults(user_id, {}, PreviousPeople())
    ordered = [previous.resolve(o) for o in unique]
    faces = faces_table(user_id, ordered, settings.embedder)
    recorded = {schemas.SETTINGS_KEY: settings.to_json().encode()}
    x = face_embeddings(faces)
    clusters, corrected = clusters_table(faces, x, method, previous.people, constraints)
    person = clusters.column("person_id").to_numpy()
    people = naming.people(user_id, person, x) if naming else people_table(user_id, person, x, x[:0], np.array([]))
    people = with_corrections(people, clusters, corrected)
    tables = {"photos": photos_table(user_id, ordered).replace_schema_metadata(recorded),
              "faces": faces.replace_schema_metadata({**(faces.schema.metadata or {}), **recorded}),
              "clusters": with_names(clusters, people),
              "failures": failures_table(user_id, ordered),
              "people": people}
    statuses = Counter(o.status for o in ordered)
    stats = UserStats(
        user_id, photos=len(ordered), with_faces=statuses["faces"], without_faces=statuses["no_face"],
        failed={s: sum(1 for o in ordered if o.stage == s) for s in schemas.FAILURE_STAGES},
        faces=faces.num_rows, people=people.num_rows, named=people.num_rows - people.column("name").null_count,
        unclustered=int((person < 0).sum()),
        same_photo_paths=statuses["faces"] - len(set(faces.column("photo_path").to_pylist())),
        duplicate_listings=len(outcomes) - len(ordered), reused=sum(o.status == REUSED for o in unique),
        corrections=asdict(corrected.stats) if corrected.stats else None)
    return tables, stats


@dataclass
class UserTables:
    """What ClusterUsers makes of one user: the five tables (by name), their counts, and
    the images/ parts that its photos/ rows name (pipeline.images)."""

    user_id: str
    tables: dict[str, pa.Table]
    stats: UserStats

    def image_parts(self) -> set[str]:
        return {p for p in self.tables["photos"].column("images_part").to_pylist() if p is not None}


class ClusterUsers(beam.DoFn):
    """(user key, light outcomes and PreviousResults) -> a UserTables per user in the group
    (`user_tables`: clustering, person ids, naming, corrections, counts).

    `naming` (the run's known people, pipeline.known_people.load_naming) and `corrections`
    (user id -> replayed corrections, pipeline.corrections.replay) travel inside this DoFn,
    so every runner's workers get them with the code."""

    def __init__(self, settings: InferenceSettings, method: str, naming: Naming | None = None,
                 corrections: dict[str, UserConstraints] | None = None) -> None:
        if naming is not None and naming.known.embedder_version != settings.embedder.version:
            raise ValueError(f"known people embedded with {naming.known.embedder_version} cannot name faces "
                             f"embedded with {settings.embedder.version}")
        self.settings = settings
        self.method = method
        self.naming = naming
        self.corrections = corrections or {}
        self.counters = {name: beam.metrics.Metrics.counter("facegroup", name) for name in (
            "users_clustered", "faces_clustered", "people", "people_named")}

    def process(self, element: tuple[int, Iterable[PhotoOutcome | PreviousResults]]) -> Iterator[UserTables]:
        by_user: dict[str, list[PhotoOutcome]] = defaultdict(list)
        previous: dict[str, PreviousResults] = {}
        for item in element[1]:  # a key collision must not mix users: split by user id
            if isinstance(item, PreviousResults):
                previous.setdefault(item.user_id, item)
            else:
                by_user[item.user_id].append(item)
        for user_id in sorted(by_user):
            tables, stats = user_tables(user_id, by_user[user_id], self.settings, self.method,
                                        previous.get(user_id), self.naming, self.corrections.get(user_id))
            self.counters["users_clustered"].inc()
            self.counters["faces_clustered"].inc(stats.faces)
            self.counters["people"].inc(stats.people)
            self.counters["people_named"].inc(stats.named)
            yield UserTables(user_id, tables, stats)
