"""The graph's last steps: each user's report pages, then the run's index, summary and clean-up.

`WriteUserPages` runs per user right after the user's tables are written: it writes the
user's report pages and JPEGs (pipeline.report.user_report, through Beam's FileSystems) and
yields a small `UserCard` (what the index shows of the user, and the user's counts). Every
card meets at one key (GroupByKey) in `FinishRun`, the only step that sees the whole run:
  - it removes what belongs to no user of this run: the folders of users no longer in the
    input in every table, images/ and the report, and temporary files of failed attempts;
  - it writes the report's index page and assets (pipeline.report.write_index);
  - it writes the run's summary (pipeline.summary) from the cards and the listing records
    (pipeline.plan) to ``_runs/<run id>/summary.json``, which the launcher checks, completes
    with the run time and publishes as ``summary.json``.
So the launcher only validates, builds, runs, checks and finalises. Like the rest of the
graph it is one chain (DaskRunner computes only a pipeline's last step), and a run with no
photo at all ends before FinishRun (no card): the launcher then reports that nothing was listed.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.corrections import UserConstraints, run_record
from pipeline.images import IMAGES
from pipeline.object_store import remove_folder
from pipeline.plan import read_listing
from pipeline.report import REPORT, UserSummary, remove_stale_files, stored_images, user_report, write_index
from pipeline.summary import SUMMARY, RunSummary
from pipeline.tables import run_record_path, write_text
from pipeline.user_tables import TABLES, UserStats, UserTables
from pipeline.users import user_folder


@dataclass
class UserCard:
    """What the last step needs of one user: the index's summary and the user's counts."""

    summary: UserSummary
    stats: UserStats


def card_key(card: UserCard) -> tuple[int, UserCard]:
    """Every card under one key: FinishRun sees them all."""
    return 0, card


class WriteUserPages(beam.DoFn):
    """UserTables -> the user's report pages and JPEGs written; yields its UserCard."""

    def __init__(self, output: str) -> None:
        self.output = output

    def process(self, user: UserTables) -> Iterator[UserCard]:
        summary = user_report(FileSystems.join(self.output, REPORT), user.user_id, user.tables,
                              stored_images(self.output, user.user_id))
        yield UserCard(summary, user.stats)


def remove_stale(output: str, users: Iterable[str]) -> None:
    """Delete the table, images/ and report folders of users not in `users`, and the
    temporary files that failed attempts left in the folders kept."""
    keep = {user_folder(u) for u in users}
    for table in TABLES + (IMAGES,):
        stale, temp = set(), []
        for meta in FileSystems.match([FileSystems.join(output, table, "**")])[0].metadata_list:
            folder, name = FileSystems.split(meta.path)
            if FileSystems.split(folder)[1] not in keep:
                stale.add(folder)
            elif name.startswith(".") and name.endswith(".tmp"):
                temp.append(meta.path)
        for folder in sorted(stale):
            remove_folder(folder)
        if temp:
            FileSystems.delete(temp)
    remove_stale_files(FileSystems.join(output, REPORT), users)


class FinishRun(beam.DoFn):
    """(0, every UserCard) -> stale folders removed, the report's index written and the run's
    summary recorded for the launcher (see module docstring); yields the summary.

    `template` is the summary as the launcher knows it before the run (run id, runner,
    embedder, options); `corrections` (files and replayed entries) become its corrections
    record with each user's counts."""

    def __init__(self, output: str, template: RunSummary, corrections: tuple[list[str], dict[str, UserConstraints]]
                 | None = None) -> None:
        self.output = output
        self.template = template
        self.corrections = corrections

    def process(self, element: tuple[int, Iterable[UserCard]]) -> Iterator[RunSummary]:
        cards = {card.stats.user_id: card for card in element[1]}  # one per user, whatever a retry did
        users = [cards[u].stats for u in sorted(cards)]
        remove_stale(self.output, cards)
        index = write_index(FileSystems.join(self.output, REPORT), [cards[u].summary for u in sorted(cards)])
        listed, skipped = read_listing(self.output, self.template.run_id)
        record = None
        if self.corrections is not None:
            files, replayed = self.corrections
            record = run_record(files, replayed, {u.user_id: u.corrections for u in users})
        summary = replace(self.template, listed=sum(listed.values()), users=users, skipped=skipped,
                          report=index, corrections=record)
        write_text(run_record_path(self.output, self.template.run_id, SUMMARY), summary.to_json())
        yield summary
