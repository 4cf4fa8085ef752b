"""User corrections (issue 17): files the report exports, replayed into constraints on
clustering that every later run keeps.

Why: no clustering is perfect, and a fix the user made must survive re-runs, new photos,
changed clustering defaults and a changed embedder. So corrections never name clusters,
only faces, by face_key ("<photo sha256>:<face index>", from the photo's content), and
each run turns them into constraints on that run's clustering.

File format "facegroup-corrections", version 1 (README, "Corrections"): a JSON object
{"format": "facegroup-corrections", "version": 1, "entries": [...]}, one entry per action:
  rename  user_id, person_id, faces, name: the person holding these faces is called
          `name` ("" clears the user's name) and is confirmed;
  merge   user_id, person_id, faces, into, into_faces: all these faces are one confirmed
          person, known by the id `into`;
  move    user_id, person_id, faces, rest, to (int, "new" or null), to_faces (when `to` is
          an int): the selected `faces` are not the person of `rest`; with to="new" they
          are one new person, with an int they join the person of `to_faces`;
  ignore  user_id, faces: not faces the user wants grouped (strangers, not a face).
Every entry has `at`, an ISO 8601 time with a time zone. Other fields are ignored.

Replay, per user, in `at` order (ties: the order of the files on the command line, then
of the entries in a file), so a later action wins over an earlier one on the same faces:
a must-link between two faces removes an earlier cannot-link between them and the other
way round (each such reversal is counted), a face moved or ignored leaves its earlier
must-link group and its earlier pins, and a face that a later entry must-links is no
longer ignored. What remains is consistent by construction: no cannot-link pair inside a
must-link group. Each group keeps its parts: the faces that every entry joining them showed
as one person (a merge's two people, a move's faces and its target, as they were then), so
that clustering can let new faces join the part they resemble (pipeline.cluster). Pins
(names, confirmations and the person id the user knew) are resolved per run against that
run's clusters: a pin goes to the person holding most of its faces.
Beam-free: the launcher validates and replays; the writer applies (pipeline.outputs).
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Sequence

import numpy as np

FORMAT = "facegroup-corrections"
VERSION = 1
ACTIONS = ("rename", "merge", "move", "ignore")
#: What an ignored face's clusters/ `unclustered_reason` says.
IGNORED_REASON = "ignored by user"
#: Examples listed in the summary for each kind of entry that could not be applied.
MAX_EXAMPLES = 5
_FACE_KEY = re.compile(r"[0-9a-f]{64}:\d+")


class CorrectionsError(ValueError):
    """A corrections file that cannot be read as version 1: one line naming the file and entry."""


@dataclass(frozen=True)
class Entry:
    """One validated action; `order` is its place in the files as given (the tie-break of `at`)."""

    action: str
    user_id: str
    faces: tuple[str, ...]
    at: datetime
    order: int
    source: str  # "<file> entry <index>", for the summary
    person_id: int | None = None
    name: str | None = None
    into: int | None = None
    into_faces: tuple[str, ...] = ()
    rest: tuple[str, ...] = ()
    to: int | str | None = None
    to_faces: tuple[str, ...] = ()

    def keys(self) -> tuple[str, ...]:
        """Every face key the entry names."""
        return self.faces + self.into_faces + self.rest + self.to_faces


def correction_files(locations: Sequence[str]) -> list[str]:
    """The files of --corrections, in order: each location is a file, or a folder whose
    *.json files are taken in name order (an empty folder is allowed: no corrections yet)."""
    files = []
    for location in locations:
        if os.path.isdir(location):
            files += sorted(os.path.join(location, n) for n in os.listdir(location)
                            if n.endswith(".json") and os.path.isfile(os.path.join(location, n)))
        elif os.path.isfile(location):
            files.append(location)
        else:
            raise CorrectionsError(f"--corrections {location} does not exist (a corrections file or a folder of them)")
    return files


def load_corrections(locations: Sequence[str]) -> list[Entry]:
    """Every entry of the --corrections files, validated; raises CorrectionsError (one line)
    on the first problem, so a malformed file stops the run before any work."""
    entries: list[Entry] = []
    for path in correction_files(locations):
        try:
            with open(path, encoding="utf-8") as f:
                document = json.load(f)
        except json.JSONDecodeError as exc:
            raise CorrectionsError(f"--corrections {path}: not JSON ({exc.msg} at line {exc.lineno})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CorrectionsError(f"--corrections {path} cannot be read: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise CorrectionsError(f"--corrections {path}: not a corrections file (needs \"format\": \"{FORMAT}\")")
        if document.get("version") != VERSION:
            raise CorrectionsError(f"--corrections {path}: version {document.get('version')!r} is not supported "
                                   f"(this facegroup reads version {VERSION})")
        if not isinstance(document.get("entries"), list):
            raise CorrectionsError(f"--corrections {path}: \"entries\" must be a list")
        for index, raw in enumerate(document["entries"]):
            try:
                entries.append(_entry(raw, len(entries), f"{path} entry {index}"))
            except ValueError as exc:
                raise CorrectionsError(f"--corrections {path}: entry {index}: {exc}") from None
    return entries


def _entry(raw: object, order: int, source: str) -> Entry:
    """An Entry from one JSON entry; raises ValueError saying what is wrong with it."""
    if not isinstance(raw, dict):
        raise ValueError("must be an object")
    action = raw.get("action")
    if action not in ACTIONS:
        raise ValueError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    user_id = raw.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("user_id must be a non-empty string")
    at = raw.get("at")
    try:
        when = datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ValueError(f"at {at!r} must be an ISO 8601 time with a time zone, e.g. 2026-12-06T20:00:00.000Z")
    fields: dict = {"faces": _keys(raw, "faces", allow_empty=False)}
    if action != "ignore":
        fields["person_id"] = _person(raw, "person_id")
    if action == "rename":
        if not isinstance(raw.get("name"), str):
            raise ValueError("name must be a string (\"\" clears the name)")
        fields["name"] = raw["name"].strip()
    elif action == "merge":
        fields["into"] = _person(raw, "into")
        fields["into_faces"] = _keys(raw, "into_faces", allow_empty=False)
        if fields["into"] == fields["person_id"]:
            raise ValueError("into is the person itself")
    elif action == "move":
        fields["rest"] = _keys(raw, "rest", allow_empty=True)
        if set(fields["rest"]) & set(fields["faces"]):
            raise ValueError("faces and rest share face keys")
        if "to" not in raw:
            raise ValueError("to is required: a person id, \"new\" or null (not this person)")
        to = raw["to"]
        if to == "new" or to is None:
            if raw.get("to_faces"):
                raise ValueError("to_faces is only for a move to a person id")
        elif isinstance(to, int) and not isinstance(to, bool) and to >= 0:
            if to == fields["person_id"]:
                raise ValueError("to is the person itself")
            fields["to_faces"] = _keys(raw, "to_faces", allow_empty=False)
            if set(fields["to_faces"]) & (set(fields["rest"]) | set(fields["faces"])):
                raise ValueError("to_faces shares face keys with faces or rest")
        else:
            raise ValueError(f"to {to!r} must be a person id, \"new\" or null")
        fields["to"] = to
    return Entry(action, user_id, at=when, order=order, source=source, **fields)


def _keys(raw: dict, name: str, allow_empty: bool) -> tuple[str, ...]:
    """The face keys of list field `name`, duplicates dropped (first kept)."""
    value = raw.get(name, [] if allow_empty else None)
    if not isinstance(value, list) or not (value or allow_empty):
        raise ValueError(f"{name} must be a {'' if allow_empty else 'non-empty '}list of face keys")
    for key in value:
        if not isinstance(key, str) or not _FACE_KEY.fullmatch(key):
            raise ValueError(f"{name} holds {key!r}, not a face key (\"<photo sha256>:<face index>\")")
    return tuple(dict.fromkeys(value))


def _person(raw: dict, name: str) -> int:
    value = raw.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a person id (an integer >= 0), got {value!r}")
    return value


@dataclass(frozen=True)
class Pin:
    """Faces the user said something about as one person: that person is confirmed, keeps
    `person_id` when given (None: a new person) and is called `name` (None: no name given;
    "": the user's name cleared)."""

    faces: tuple[str, ...]
    person_id: int | None
    name: str | None
    source: str


@dataclass(frozen=True)
class UserConstraints:
    """One user's corrections after replay (face keys; plain data the writer carries).

    must_link: groups of >= 2 faces, each one person; parts: the parts of those groups of
    >= 2 faces (a face of a group in none is a part alone), each shown as one person by
    every entry that joined it to others; cannot_link: pairs never one person, none inside
    a must-link group; ignored: faces kept out of people; pins in replay order;
    entries: (source, face keys) of each entry, to count what no longer exists;
    overridden: face pairs whose earlier must-link or cannot-link a later entry reversed."""

    user_id: str
    must_link: tuple[tuple[str, ...], ...] = ()
    parts: tuple[tuple[str, ...], ...] = ()
    cannot_link: tuple[tuple[str, str], ...] = ()
    ignored: frozenset[str] = frozenset()
    pins: tuple[Pin, ...] = ()
    entries: tuple[tuple[str, tuple[str, ...]], ...] = ()
    overridden: int = 0


class _Replay:
    """Mutable state of one user's replay: must-link groups, cannot-link pairs, ignored
    faces and pins, kept consistent after every entry (the later entry wins)."""

    def __init__(self) -> None:
        self.group: dict[str, set[str]] = {}  # face -> its must-link group (shared set)
        # face -> (must-link number, part) of each must-link that joined it: faces of one
        # group with the same are one part
        self.joined: dict[str, tuple[tuple[int, int], ...]] = {}
        self.links = 0
        self.partners: dict[str, set[str]] = {}  # face -> faces it cannot be one person with
        self.ignored: set[str] = set()
        self.pins: list[Pin] = []
        self.overridden = 0

    def members(self, key: str) -> set[str]:
        return self.group.setdefault(key, {key})

    def must_link(self, *parts: Sequence[str]) -> None:
        """One person: merge the groups of the faces of `parts` (each shown to the user as
        one person); cannot-links inside it are dropped (reversed)."""
        keys = [k for part in parts for k in part]
        for number, part in enumerate(parts):
            for k in part:
                self.joined[k] = self.joined.get(k, ()) + ((self.links, number),)
        self.links += 1
        self.ignored.difference_update(keys)
        merged = set().union(*(self.members(k) for k in keys))
        for k in merged:
            self.group[k] = merged
        for k in merged:
            inside = self.partners.get(k, set()) & merged
            self.overridden += sum(1 for p in inside if k < p)
            self.partners[k] = self.partners.get(k, set()) - inside

    def detach(self, keys: Sequence[str]) -> None:
        """Each face leaves its must-link group and every earlier pin."""
        for k in keys:
            members = self.members(k)
            if len(members) > 1:
                members.discard(k)
                self.group[k] = {k}
            self.joined.pop(k, None)
        gone = set(keys)
        self.pins = [Pin(tuple(f for f in p.faces if f not in gone), p.person_id, p.name, p.source)
                     for p in self.pins]

    def cannot_link(self, faces: Sequence[str], rest: Sequence[str]) -> None:
        """Never one person: each of `faces` with each of `rest` (must-links between them reversed)."""
        rest_set = set(rest)
        self.overridden += sum(len(self.members(k) & rest_set) for k in faces)
        self.detach(faces)
        for k in faces:
            self.partners.setdefault(k, set()).update(rest_set)
        for r in rest_set:
            self.partners.setdefault(r, set()).update(faces)

    def apply(self, e: Entry) -> None:
        if e.action == "rename":
            self.pins.append(Pin(e.faces, e.person_id, e.name, e.source))
        elif e.action == "merge":
            self.must_link(e.faces, e.into_faces)
            self.pins.append(Pin(e.faces + e.into_faces, e.into, None, e.source))
        elif e.action == "move":
            self.cannot_link(e.faces, e.rest)
            if e.rest:
                self.pins.append(Pin(e.rest, e.person_id, None, e.source))
            if e.to == "new":
                self.must_link(e.faces)
                self.pins.append(Pin(e.faces, None, None, e.source))
            elif e.to is not None:
                self.must_link(e.faces, e.to_faces)
                self.pins.append(Pin(e.faces + e.to_faces, e.to, None, e.source))
        else:
            self.detach(e.faces)
            self.ignored.update(e.faces)

    def result(self, user_id: str, entries: Sequence[Entry]) -> UserConstraints:
        groups = {id(g): g for g in self.group.values() if len(g) > 1}
        parts: dict[tuple, list[str]] = {}
        for g in groups.values():
            for k in sorted(g):
                parts.setdefault((id(g), self.joined[k]), []).append(k)
        pairs = sorted({(a, b) for a, partners in self.partners.items() for b in partners if a < b})
        return UserConstraints(
            user_id, tuple(sorted(tuple(sorted(g)) for g in groups.values())),
            tuple(sorted(tuple(p) for p in parts.values() if len(p) > 1)), tuple(pairs),
            frozenset(self.ignored), tuple(p for p in self.pins if p.faces),
            tuple((e.source, e.keys()) for e in entries), self.overridden)


def replay(entries: Sequence[Entry]) -> dict[str, UserConstraints]:
    """Each user's constraints from their entries, replayed in `at` order (ties: file order)."""
    by_user: dict[str, list[Entry]] = {}
    for e in sorted(entries, key=lambda e: (e.at, e.order)):
        by_user.setdefault(e.user_id, []).append(e)
    out = {}
    for user_id, mine in by_user.items():
        state = _Replay()
        for e in mine:
            state.apply(e)
        out[user_id] = state.result(user_id, mine)
    return out


@dataclass(frozen=True)
class FaceConstraints:
    """UserConstraints on one run's faces (N,), by row: must_link (N,) int64 group number
    or -1, parts (N,) int64 part number or -1, cannot_link (P,2) int64 row pairs, ignored
    (N,) bool (as pipeline.cluster.cluster_faces takes them)."""

    must_link: np.ndarray
    parts: np.ndarray
    cannot_link: np.ndarray
    ignored: np.ndarray

    def eligible(self, passed: np.ndarray) -> np.ndarray:
        """(N,) bool: faces that may be in a person: those that pass the quality gate
        (passed (N,) bool) and are not ignored, and every must-linked face (the user saw it)."""
        return (np.asarray(passed, bool) & ~self.ignored) | (self.must_link >= 0)


@dataclass(frozen=True)
class PinnedPeople:
    """What the pins say about one run's clusters (labels 0..K-1): which are confirmed,
    the user's name (may be "") and the person id the user knew, per cluster label; and
    the sources of pins whose faces are in no person this run."""

    confirmed: frozenset[int]
    names: dict[int, str]
    person_ids: dict[int, int]
    lost: tuple[str, ...] = ()


@dataclass
class CorrectionsStats:
    """What a run did with one user's corrections (counts and first examples, for the summary)."""

    entries: int = 0
    not_applied: int = 0  # entries none of whose faces is in the library any more
    not_applied_examples: list[str] = field(default_factory=list)
    unknown_faces: int = 0  # distinct face keys named that the library no longer has
    unknown_face_examples: list[str] = field(default_factory=list)
    lost_people: int = 0  # pins whose faces are all alone or ignored this run: the person is gone
    lost_people_examples: list[str] = field(default_factory=list)
    overridden: int = 0  # face pairs whose earlier relation a later entry reversed
    ignored: int = 0  # faces in the library kept out of people by the user
    confirmed: int = 0  # people confirmed by a correction
    user_named: int = 0  # people named by the user


def face_constraints(constraints: UserConstraints, face_keys: Sequence[str]) -> FaceConstraints:
    """The constraints on the faces present (face_keys (N,)); faces not present drop out,
    and so does a must-link group or part left with one face."""
    row = {k: i for i, k in enumerate(face_keys)}

    def numbered(groups: tuple[tuple[str, ...], ...]) -> np.ndarray:
        """(N,) int64: the number of each face's group of >= 2 faces present, else -1."""
        out = np.full(len(face_keys), -1, np.int64)
        for g, group in enumerate(groups):
            rows = [row[k] for k in group if k in row]
            if len(rows) > 1:
                out[rows] = g
        return out

    pairs = [(row[a], row[b]) for a, b in constraints.cannot_link if a in row and b in row]
    ignored = np.array([k in constraints.ignored for k in face_keys], bool)
    return FaceConstraints(numbered(constraints.must_link), numbered(constraints.parts),
                           np.array(pairs, np.int64).reshape(-1, 2), ignored)


def pinned_people(constraints: UserConstraints, face_keys: Sequence[str], labels: np.ndarray) -> PinnedPeople:
    """Each pin goes to the cluster (labels (N,), -1 alone) holding most of its faces
    (ties: the smaller label); a later pin overrides an earlier one's name and person id
    on the same cluster, and a person id goes to one cluster only (the latest pin's)."""
    label_of = dict(zip(face_keys, np.asarray(labels).tolist()))
    confirmed: set[int] = set()
    names: dict[int, str] = {}
    wanted: dict[int, int] = {}
    lost = []
    for pin in constraints.pins:
        present = [label_of[k] for k in pin.faces if k in label_of]
        votes = Counter(c for c in present if c >= 0)
        if not votes:
            if present:  # its faces are here but in no person (a pin with none is not applied)
                lost.append(pin.source)
            continue
        label = min(votes, key=lambda c: (-votes[c], c))
        confirmed.add(label)
        if pin.name is not None:
            names[label] = pin.name
        if pin.person_id is not None:
            for other in [c for c, p in wanted.items() if p == pin.person_id]:
                del wanted[other]
            wanted[label] = pin.person_id
    return PinnedPeople(frozenset(confirmed), names, wanted, tuple(lost))


def corrections_stats(constraints: UserConstraints, face_keys: Sequence[str], pinned: PinnedPeople,
                      faces: FaceConstraints) -> CorrectionsStats:
    """Counts and first examples of what one run did with a user's corrections."""
    present = set(face_keys)
    stale = [source for source, keys in constraints.entries if present.isdisjoint(keys)]
    unknown = sorted({k for _, keys in constraints.entries for k in keys} - present)
    return CorrectionsStats(
        entries=len(constraints.entries), not_applied=len(stale), not_applied_examples=stale[:MAX_EXAMPLES],
        unknown_faces=len(unknown), unknown_face_examples=unknown[:MAX_EXAMPLES],
        lost_people=len(pinned.lost), lost_people_examples=list(pinned.lost[:MAX_EXAMPLES]),
        overridden=constraints.overridden, ignored=int(faces.ignored.sum()), confirmed=len(pinned.confirmed),
        user_named=sum(1 for name in pinned.names.values() if name))


def run_record(files: Sequence[str], constraints: dict[str, UserConstraints],
               per_user: dict[str, dict | None]) -> dict:
    """What summary.json says about a run's corrections: the files, and totals with first
    examples over the users written (per_user: user id -> asdict(CorrectionsStats) or None);
    entries about users the run did not write (not in the library) are counted apart."""
    absent = sorted(set(constraints) - set(per_user))
    stats = [CorrectionsStats(**s) for s in per_user.values() if s]
    record: dict = {}
    for name in CorrectionsStats.__dataclass_fields__:
        values = [getattr(s, name) for s in stats]
        record[name] = [x for v in values for x in v][:MAX_EXAMPLES] if name.endswith("examples") else sum(values)
    return record | {"files": list(files), "entries": sum(len(c.entries) for c in constraints.values()),
                     "users": len(constraints), "unknown_users": len(absent),
                     "unknown_user_entries": sum(len(constraints[u].entries) for u in absent),
                     "unknown_user_examples": absent[:MAX_EXAMPLES]}


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def describe(record: dict) -> list[str]:
    """The printed summary's lines about a run's corrections (`run_record`)."""
    lines = [f"corrections: {_count(record['entries'], 'entry', 'entries')} in "
             f"{_count(len(record['files']), 'file', 'files')} about {_count(record['users'], 'user', 'users')}; "
             f"{_count(record['confirmed'], 'person', 'people')} confirmed ({record['user_named']} named by the "
             f"user), {_count(record['ignored'], 'face', 'faces')} ignored, "
             f"{_count(record['overridden'], 'face pair', 'face pairs')} reversed by a later entry"]
    unknown_users = _count(record["unknown_users"], "user", "users")
    for count, what, examples in (
            ("unknown_user_entries", f"about {unknown_users} not in the library", "unknown_user_examples"),
            ("not_applied", "whose faces are all gone", "not_applied_examples")):
        if record[count]:
            lines.append(f"  not applied: {_count(record[count], 'entry', 'entries')} {what}, e.g. "
                         + ", ".join(record[examples]))
    for count, examples, one, many, what in (
            ("unknown_faces", "unknown_face_examples", "face key", "face keys", "no longer in the library"),
            ("lost_people", "lost_people_examples", "corrected person", "corrected people",
             "whose faces are all alone or ignored now")):
        if record[count]:
            lines.append(f"  {_count(record[count], one, many)} {what}, e.g. " + ", ".join(record[examples]))
    return lines
