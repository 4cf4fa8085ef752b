"""Per-user planning inside the graph: the listing grouped by user, joined with the
previous run's results, cut into photo batches.

The launcher plans nothing. What pipeline.inputs lists (a PhotoRef or Skipped per entry,
in no order) meets here, one group per user (`PlanUsers`): the user's photos are sorted
by path, joined on (user, path, SHA-256) with the light columns of the user's previous
tables (pipeline.reuse.mark_reusable), and cut into batches of --batch_size photos,
reusable photos apart from the others, so the photos that need inference fill whole
batches. Batches depend only on the user's listing and previous tables, so they are the
same on every runner and every retry. Each group also writes a small record under
``_runs/<run id>/listing/`` that the run's last step reads into the run's summary
(pipeline.finish): the number of photos listed per user (the launcher's check compares it
with the written tables) and, from the one group of entries that belong to no user, what
was skipped. Writing them here keeps the pipeline a single chain that ends in that last
step: DaskRunner computes only a pipeline's last step, so a branch of its own would never
run there.

`SpreadBatches` then deals the batches out over the workers; Beam's Reshuffle does not do
it on DaskRunner, which translates Reshuffle to nothing.
"""
from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from dataclasses import asdict
from typing import Iterable, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.inference import InferenceSettings
from pipeline.progress import ProgressRecorder
from pipeline.records import PhotoRef, Skipped
from pipeline.reuse import PreviousPart, mark_reusable
from pipeline.tables import read_text, run_record_path, write_text
from pipeline.users import user_folder, user_key

#: Grouping key of the entries that belong to no user (user keys are non-negative).
SKIPPED_KEY = -1
SKIPPED = "skipped.json"
LISTING = "listing"
#: Skipped entries named in the summary (the first in path order); all are counted.
MAX_SKIPPED_LISTED = 100

Batch = tuple[PhotoRef, ...]


def listing_record_path(output: str, run_id: str, name: str) -> str:
    """Where a listing record of run `run_id` is written."""
    return run_record_path(output, run_id, f"{LISTING}/{name}")


def listing_key(item: PhotoRef | Skipped) -> tuple[int, PhotoRef | Skipped]:
    """A listed entry keyed by its user (entries of no user under SKIPPED_KEY)."""
    return (user_key(item.user_id) if isinstance(item, PhotoRef) else SKIPPED_KEY), item


def skipped_summary(items: Iterable[Skipped]) -> dict:
    """Count, reasons and the first MAX_SKIPPED_LISTED examples (by path, reason) of the
    skipped entries, in one pass with bounded memory."""
    reasons: Counter[str] = Counter()

    def counted(item: Skipped) -> tuple[str, str]:
        reasons[item.reason] += 1
        return item.path, item.reason

    first = heapq.nsmallest(MAX_SKIPPED_LISTED, (counted(item) for item in items))
    return {"count": sum(reasons.values()), "reasons": dict(sorted(reasons.items())),
            "examples": [asdict(Skipped(path, reason)) for path, reason in first]}


def batches(refs: Sequence[PhotoRef], size: int) -> list[Batch]:
    """Consecutive groups of `size` photos, reusable photos apart from the others
    (listing order within each; the last group of each may be smaller)."""
    reusable = [ref for ref in refs if ref.reuse_sha256]
    others = [ref for ref in refs if not ref.reuse_sha256]
    return [tuple(group[i:i + size]) for group in (reusable, others) for i in range(0, len(group), size)]


def read_listing(output: str, run_id: str) -> tuple[dict[str, int], dict]:
    """({user_id: photos listed}, skipped summary) of run `run_id`: read by the last step
    (pipeline.finish), and by the launcher when a run recorded no summary."""
    listed: dict[str, int] = {}
    skipped = skipped_summary([])
    for meta in FileSystems.match([listing_record_path(output, run_id, "*.json")])[0].metadata_list:
        record = json.loads(read_text(meta.path))
        if FileSystems.split(meta.path)[1] == SKIPPED:
            skipped = record
        else:
            listed[record["user_id"]] = int(record["listed"])
    return listed, skipped


class CountListed(beam.DoFn):
    """Passes the listing through, counting its photos for the progress line."""

    def __init__(self, recorder: ProgressRecorder) -> None:
        self.recorder = recorder

    def process(self, item: PhotoRef | Skipped) -> Iterable[PhotoRef | Skipped]:
        if isinstance(item, PhotoRef):
            self.recorder.add_listed(1)
        yield item

    def finish_bundle(self) -> None:
        self.recorder.flush()


class PlanUserBatches(beam.DoFn):
    """(user key, the user's listed entries) -> the user's PreviousPart (when it has
    previous tables) and photo batches; writes the user's listing record. The group of
    SKIPPED_KEY writes the skipped summary instead and yields nothing."""

    def __init__(self, output: str, run_id: str, previous: str | None, settings: InferenceSettings,
                 batch_size: int) -> None:
        self.output = output
        self.run_id = run_id
        self.previous = previous
        self.settings = settings
        self.batch_size = batch_size
        self.listed = beam.metrics.Metrics.counter("facegroup", "photos_listed")

    def process(self, element: tuple[int, Iterable[PhotoRef | Skipped]]) -> Iterable[PreviousPart | Batch]:
        key, items = element
        if key == SKIPPED_KEY:
            write_text(listing_record_path(self.output, self.run_id, SKIPPED), json.dumps(skipped_summary(items)))
            return
        by_user: dict[str, list[PhotoRef]] = defaultdict(list)
        for ref in items:  # a key collision must not mix users: split by user id
            by_user[ref.user_id].append(ref)
        for user_id in sorted(by_user):
            refs = sorted(by_user[user_id], key=lambda r: r.photo_path)
            marked, part = mark_reusable(self.previous, user_id, refs, self.settings)
            write_text(listing_record_path(self.output, self.run_id, f"{user_folder(user_id)}.json"),
                       json.dumps({"user_id": user_id, "listed": len(refs)}))
            self.listed.inc(len(refs))
            if part is not None:
                yield part
            yield from batches(marked, self.batch_size)


class PlanUsers(beam.PTransform):
    """Listed entries -> each user's PreviousPart and photo batches (see module docstring);
    photos listed are counted into `recorder` when given."""

    def __init__(self, output: str, run_id: str, previous: str | None, settings: InferenceSettings,
                 batch_size: int, recorder: ProgressRecorder | None = None) -> None:
        super().__init__()
        self.plan = PlanUserBatches(output, run_id, previous, settings, batch_size)
        self.recorder = recorder

    def expand(self, listed: beam.PCollection) -> beam.PCollection:
        if self.recorder is not None:
            listed = listed | "CountListed" >> beam.ParDo(CountListed(self.recorder))
        return (listed
                | "KeyListingByUser" >> beam.Map(listing_key)
                | "GroupListingByUser" >> beam.GroupByKey()
                | "PlanUserBatches" >> beam.ParDo(self.plan))


def batch_key(batch: Batch) -> tuple[int, Batch]:
    """A batch keyed by its first photo."""
    first = batch[0]
    return user_key(f"{first.user_id}/{first.photo_path}"), batch


class SpreadBatches(beam.PTransform):
    """Photo batches, regrouped one per key so that the runner deals them out over its
    workers (a user's batches all come from one PlanUserBatches call)."""

    def expand(self, planned: beam.PCollection) -> beam.PCollection:
        return (planned
                | "KeyByFirstPhoto" >> beam.Map(batch_key)
                | "GroupByBatch" >> beam.GroupByKey()
                | "Ungroup" >> beam.FlatMap(lambda keyed: keyed[1]).with_output_types(Sequence[PhotoRef]))
