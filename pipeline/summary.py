"""What a run produced (`RunSummary`): written by the run's last step (pipeline.finish) from
small per-user records, checked and completed with the run time by the launcher, printed at
the end (`format`) and kept as ``summary.json``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from pipeline import schemas
from pipeline.corrections import describe
from pipeline.user_tables import UserStats

SUMMARY = "summary.json"
MAX_USERS_PRINTED = 20


@dataclass
class RunSummary:
    """What a run produced; `format()` is the text printed at the end."""

    run_id: str
    runner: str
    output: str
    listed: int
    wall_s: float
    embedder: dict
    cluster: str
    users: list[UserStats]
    skipped: dict = field(default_factory=lambda: {"count": 0, "reasons": {}, "examples": []})
    counters: dict[str, int] | None = None
    report: str | None = None
    previous: str | None = None  # the earlier output whose results were reused
    known_people: dict | None = None  # known_people_record of --known_people
    corrections: dict | None = None  # pipeline.corrections.run_record of --corrections

    @property
    def photos(self) -> int:
        return sum(u.photos for u in self.users)

    def total(self, name: str) -> int:
        return sum(getattr(u, name) for u in self.users)

    def failed(self) -> dict[str, int]:
        return {s: sum(u.failed[s] for u in self.users) for s in schemas.FAILURE_STAGES}

    def check(self) -> None:
        """Raise RuntimeError unless every listed photo is accounted for exactly once."""
        for u in self.users:
            if u.photos != u.with_faces + u.without_faces + sum(u.failed.values()):
                raise RuntimeError(f"user {u.user_id}: {u.photos} photos != with faces + without + failed")
        if self.listed != self.photos + self.total("duplicate_listings"):
            raise RuntimeError(f"{self.listed} photos listed but {self.photos} written (and "
                               f"{self.total('duplicate_listings')} duplicate listings): photos were lost")

    def format(self) -> str:
        failed = self.failed()
        n_failed = sum(failed.values())
        rate = self.photos / self.wall_s if self.wall_s > 0 else 0.0
        lines = [
            f"facegroup run {self.run_id} on {self.runner}: {self.photos} photos of {len(self.users)} users "
            f"in {self.wall_s:.1f} s = {rate:.1f} photos/s",
            f"photos listed {self.listed}, written {self.photos} = with faces {self.total('with_faces')} + "
            f"without faces {self.total('without_faces')} + failed {n_failed}"
            + (f" (+ {self.total('duplicate_listings')} duplicate manifest rows)"
               if self.total("duplicate_listings") else ""),
            "failed by stage: " + ", ".join(f"{s} {n}" for s, n in failed.items()),
        ]
        if self.previous:
            lines.append(f"reused the results of {self.total('reused')} photos from {self.previous} (not "
                         f"detected or embedded again); {self.photos - self.total('reused')} processed")
        lines += [
            f"faces {self.total('faces')} ({self.embedder['name']} {self.embedder['version']}, "
            f"{self.embedder['dim']}-d), people {self.total('people')} ({self.cluster} clustering), "
            f"unclustered faces {self.total('unclustered')}",
        ]
        known = self.known_people
        if known:
            lines.append(f"known people: {known['names']} names from {known['faces']} reference faces in "
                         f"{known['folder']} (threshold {known['threshold']:.2f}, margin {known['margin']:.2f}); "
                         f"named {self.total('named')} of {self.total('people')} people")
            lines += [f"  skipped reference photo {s['photo']}: {s['reason']}" for s in known["skipped"]]
        if self.corrections:
            lines += describe(self.corrections)
        lines.append("people per user:")
        for u in self.users[:MAX_USERS_PRINTED]:
            named = f" ({u.named} named)" if known else ""
            lines.append(f"  {u.user_id}: {u.people} people{named}, {u.unclustered} unclustered faces; "
                         f"{u.photos} photos, {u.faces} faces, {sum(u.failed.values())} failed")
        if len(self.users) > MAX_USERS_PRINTED:
            lines.append(f"  ... {len(self.users) - MAX_USERS_PRINTED} more users in {SUMMARY}")
        if self.skipped["count"]:
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped["reasons"].items()))
            lines.append(f"skipped {self.skipped['count']} entries that are no user's photos ({reasons})")
        if self.counters is None:
            lines.append("Beam counters: not reported by this runner (figures above are from the written tables)")
        else:
            lines.append("Beam counters: " + " ".join(f"{k}={v}" for k, v in sorted(self.counters.items())))
        lines.append(f"output: {self.output}" + (f" (report: {self.report})" if self.report else ""))
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"photos": self.photos}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunSummary":
        record = json.loads(text)
        record.pop("photos")
        record["users"] = [UserStats(**u) for u in record["users"]]
        return cls(**record)
