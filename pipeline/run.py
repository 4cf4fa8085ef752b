"""Build and run the pipeline, then check and finalise the output folder and print the summary.

    python -m pipeline --input LIBRARY --output OUT [--runner ...] [any Beam flag]

The launcher only validates, builds, runs, checks and finalises: it lists nothing and
plans nothing, so the graph's size does not depend on the library's. Graph: ListInput
(pipeline.inputs: the input location in a few shards -> ListUsers -> Reshuffle ->
ListUserPhotos, or ReadManifest) -> PlanUsers (pipeline.plan: group the listing by user,
join it with the user's previous results, cut it into batches of --batch_size photos) ->
SpreadBatches -> LoadPhotos (read with SHA-256, decode unless reused; lists bounded by
pixel weight) -> RunInference (detect, align, embed; model once per worker process) ->
WriteImages (pipeline.images: the batch's previews and thumbnails to images/, keyed by
user without them) -> GroupByKey (keys, boxes, quality, embeddings) -> ClusterUsers
(pipeline.user_tables: clustering, person ids, naming, corrections) -> WriteUserTables
(pipeline.outputs) -> WriteUserPages -> GroupByKey of small per-user cards -> FinishRun
(pipeline.finish: report index, stale folders removed, the run's summary). In an
incremental run, the PreviousPart of each user that PlanUsers yields -> ReadPrevious
joins the first GroupByKey through a Flatten, bringing the user's previous results and
person ids. With --known_people the launcher embeds the reference photos first
(pipeline.known_people) and ClusterUsers carries them, as constructor data, to name
each user's people. Only single-output steps (a step with two kinds of output is split
by Filters), no side inputs, state or finish_bundle output, and one chain that ends in
FinishRun, so it means the same on DirectRunner, DaskRunner and portable runners. Every
photo listed becomes exactly one outcome; the launcher's check compares the photos
listed (records written by PlanUsers) with the written tables (FinishRun's summary).

Before the pipeline starts, the launcher proves it can write --output (a probe file,
pipeline.output_probe) and takes the folder's lock (pipeline.run_lock: one run per output).
A run owns its --output folder: it first removes ``_SUCCESS``; workers write per-user
files, the report and records under ``_runs/<run id>/``; after the pipeline succeeds the
launcher reads the run's summary, checks it, writes ``summary.json`` (with the run time
and Beam's counters), drops the records and finally writes ``_SUCCESS``. Output without
``_SUCCESS`` is incomplete. An unexpected failure ends in one line naming the step; its
traceback goes to ``_logs/<run id>.log`` (pipeline.run_log). While the pipeline runs, a
progress line goes to stderr every --progress_seconds (pipeline.progress; --quiet: none).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
import uuid
from dataclasses import asdict, dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState

from pipeline.corrections import UserConstraints, correction_files, load_corrections, replay
from pipeline.decode import LoadPhotos
from pipeline.finish import FinishRun, WriteUserPages, card_key
from pipeline.images import WriteImages
from pipeline.inference import (EmbedderInfo, FaceModelHandler, InferenceSettings, launcher_embedder,
                                launcher_embedder_info)
from pipeline.inputs import ListInput, NoPhotos, check_manifest, is_manifest, no_photos
from pipeline.local_runner import LOCAL_RUNNER
from pipeline.naming import Naming
from pipeline.object_store import remove_folder
from pipeline.options import FaceGroupOptions, validate
from pipeline.output_probe import probe_output
from pipeline.outputs import WriteUserTables
from pipeline.plan import Batch, PlanUsers, SpreadBatches, read_listing
from pipeline.progress import CountingModelHandler, ProgressPrinter, ProgressRecorder
from pipeline.reuse import PreviousPart, ReadPrevious, resolve_previous
from pipeline.run_lock import RunLock, acquire
from pipeline.run_log import KeptBeamErrors, RunFailed, run_failed, write_log
from pipeline.summary import SUMMARY, RunSummary
from pipeline.tables import RUNS, read_text, run_record_path, write_text
from pipeline.user_tables import ClusterUsers

SUCCESS = "_SUCCESS"


def inference_settings(opts: FaceGroupOptions, embedder: EmbedderInfo) -> InferenceSettings:
    """The settings this run's faces depend on (recorded with its tables)."""
    return InferenceSettings(embedder, opts.min_face_size, opts.min_det_score, opts.max_detect_side)


def is_batch(item: Batch | PreviousPart) -> bool:
    """Whether a PlanUsers output is a photo batch (else a PreviousPart)."""
    return isinstance(item, tuple)


def is_previous_part(item: Batch | PreviousPart) -> bool:
    """Whether a PlanUsers output is a user's PreviousPart."""
    return isinstance(item, PreviousPart)


def build(p: beam.Pipeline, opts: FaceGroupOptions, run_id: str, settings: InferenceSettings,
          previous: str | None = None, naming: Naming | None = None, recorder: ProgressRecorder | None = None,
          corrections: dict[str, UserConstraints] | None = None, runner: str = "DirectRunner") -> None:
    """Add the whole pipeline to `p` (options validated, known people loaded, corrections
    replayed); `previous` is the earlier output to reuse (pipeline.reuse.resolve_previous);
    listing and inference report their counts to `recorder` when given; `runner` is the
    name the summary records."""
    template = RunSummary(run_id, runner, opts.output, 0, 0.0, asdict(settings.embedder), opts.cluster, [],
                          previous=previous,
                          known_people=known_people_record(opts.known_people, naming) if naming else None)
    args = (settings.embedder, opts.embedder_weights, opts.device, opts.min_face_size, opts.min_det_score)
    handler = FaceModelHandler(*args) if recorder is None else CountingModelHandler(recorder, *args)
    planned = (p
               | "ListInput" >> ListInput(opts.input, opts.follow_links)
               | "PlanUsers" >> PlanUsers(opts.output, run_id, previous, settings, opts.batch_size, recorder))
    outcomes = (planned
                | "PhotoBatches" >> beam.Filter(is_batch).with_output_types(Batch)
                | "SpreadBatches" >> SpreadBatches()
                | "LoadPhotos" >> beam.ParDo(LoadPhotos(opts.max_file_bytes, opts.max_pixels,
                                                        opts.max_detect_side, opts.batch_size))
                | "DetectAlignEmbed" >> RunInference(handler.with_no_batching())
                | "WriteImages" >> beam.ParDo(WriteImages(opts.output, settings.to_json())))
    if previous is not None:
        previous_results = (planned
                            | "PreviousParts" >> beam.Filter(is_previous_part).with_output_types(PreviousPart)
                            | "ReadPrevious" >> beam.ParDo(ReadPrevious(previous)))
        outcomes = (outcomes, previous_results) | "WithPrevious" >> beam.Flatten()
    _ = (outcomes
         | "GroupByUser" >> beam.GroupByKey()
         | "ClusterUsers" >> beam.ParDo(ClusterUsers(settings, opts.cluster, naming, corrections))
         | "WriteUserTables" >> beam.ParDo(WriteUserTables(opts.output, previous))
         | "WriteUserPages" >> beam.ParDo(WriteUserPages(opts.output))
         | "KeyAll" >> beam.Map(card_key)
         | "GatherUsers" >> beam.GroupByKey()
         | "FinishRun" >> beam.ParDo(FinishRun(opts.output, template, (correction_files(opts.corrections),
                                                                       corrections or {})
                                               if opts.corrections else None)))


def known_people_record(folder: str, naming: Naming) -> dict:
    """What the summary says about --known_people: names, faces and skipped photos."""
    known = naming.known
    return {"folder": folder, "names": len(set(known.names.tolist())), "faces": len(known.names),
            "per_user": any(u is not None for u in known.user_ids), "threshold": naming.threshold,
            "margin": naming.margin, "skipped": [{"photo": p, "reason": r} for p, r in known.skipped]}


def beam_counters(result: beam.runners.runner.PipelineResult) -> dict[str, int] | None:
    """The run's "facegroup" counters (committed where the runner tracks them), or None
    when the runner reports no metrics (DaskRunner)."""
    try:
        found = result.metrics().query(MetricsFilter().with_namespace("facegroup"))["counters"]
    except (NotImplementedError, AttributeError):
        return None
    counters: dict[str, int] = {}
    for r in found:
        value = r.committed if r.committed is not None else r.attempted
        counters[r.key.metric.name] = counters.get(r.key.metric.name, 0) + int(value or 0)
    return counters


def drop_run_records(output: str) -> None:
    """Remove the per-run records the workers left for the launcher."""
    remove_folder(FileSystems.join(output, RUNS))


def in_process_runner(options: PipelineOptions) -> str:
    """The runner name to report; a DirectRunner run is sent straight to Beam's FnApiRunner.

    Beam's DirectRunner first tries to start a Prism job server (it downloads a binary
    and leaves temporary folders and ~/.apache_beam behind, even when that fails) and
    then falls back to FnApiRunner, the engine every local run here ends up on. Going
    there directly keeps every file a run writes under --output; FnApiRunner reads the
    same --direct_num_workers and --direct_running_mode. Like DirectRunner, it hands the
    run's options to its worker processes (pipeline.local_runner: --s3_* flags included).
    """
    standard = options.view_as(StandardOptions)
    requested = str(standard.runner or "DirectRunner").rsplit(".", 1)[-1]
    if requested == "DirectRunner":
        standard.runner = LOCAL_RUNNER
    return requested


def run(argv: list[str] | None = None) -> RunSummary:
    """Run the pipeline with command-line `argv`; returns the checked summary.

    Before any work: options validated, --corrections read and replayed
    (pipeline.corrections), --output proven writable (pipeline.output_probe)
    and locked for this run (pipeline.run_lock). Raises ValueError/FileNotFoundError for bad
    options, corrections, output or input (nothing written but the probe), RunFailed (pipeline.run_log:
    one line, the traceback in OUTPUT/_logs/) for anything else, such as a failed step of the
    pipeline or a listed photo missing from the outputs (no _SUCCESS then).
    """
    options = PipelineOptions(argv)
    # The launcher's own file system calls (probe, lock, previous output, finalising) use this
    # run's options (--s3_endpoint_url, credentials, ...), not whatever an earlier run in this
    # process left; beam.Pipeline sets the same for in-process workers, sdk_worker_main for others.
    FileSystems.set_options(options)
    runner = in_process_runner(options)
    opts = options.view_as(FaceGroupOptions)
    validate(opts)
    corrections = replay(load_corrections(opts.corrections or []))
    run_id = uuid.uuid4().hex[:12]
    probe_output(opts.output, run_id)
    lock = acquire(opts.output, run_id, opts.lock_stale_minutes * 60, opts.force)
    if lock.took_over:
        print(f"note: {lock.took_over}", file=sys.stderr)
    with lock, KeptBeamErrors(keep=not opts.verbose) as beam_errors:
        progress = Progress()
        try:
            summary = execute(options, opts, runner, run_id, lock, progress, corrections)
        except Exception as exc:
            if isinstance(exc, NoPhotos) or (not progress.pipeline_started
                                             and isinstance(exc, (ValueError, FileNotFoundError))):
                raise  # bad input or known people: a one-line error of its own
            raise run_failed(exc, progress.step, opts.output, run_id, beam_errors.records) from exc
        if beam_errors.records:  # errors the run recovered from (retried bundles): kept, not lost
            log, problem = write_log(opts.output, run_id, beam_errors.records)
            print(f"note: Beam logged {len(beam_errors.records)} error records that the run recovered from "
                  f"({log or problem})", file=sys.stderr)
        return summary


@dataclass
class Progress:
    """Which launcher step a run is in: the step a failure is reported in."""

    step: str = "checking the input"
    pipeline_started: bool = False


def execute(options: PipelineOptions, opts: FaceGroupOptions, runner: str, run_id: str, lock: RunLock,
            progress: Progress, corrections: dict[str, UserConstraints] | None = None) -> RunSummary:
    """Run the pipeline and finalise the output (options validated, corrections replayed,
    output locked)."""
    if is_manifest(opts.input):
        check_manifest(opts.input)
    progress.step = "checking the embedder"
    settings = inference_settings(opts, launcher_embedder_info(opts.embedder, opts.embedder_weights))
    previous = resolve_previous(opts.previous, opts.output)
    naming = None
    if opts.known_people:
        progress.step = "loading --known_people"
        from pipeline.known_people import load_naming  # loads torch models: only when asked

        model = launcher_embedder(opts.embedder, opts.embedder_weights)
        naming = load_naming(opts.known_people, settings, model, opts.follow_links)
    progress.step, progress.pipeline_started = "running the pipeline", True
    success = FileSystems.join(opts.output, SUCCESS)
    if FileSystems.exists(success):
        FileSystems.delete([success])
    printer = None if opts.quiet else ProgressPrinter(opts.output, run_id, opts.progress_seconds)
    p = beam.Pipeline(options=options)
    build(p, opts, run_id, settings, previous, naming, printer.recorder() if printer else None, corrections, runner)
    start = time.perf_counter()
    with printer or contextlib.nullcontext():  # DirectRunner runs the whole pipeline inside p.run()
        result = p.run()
        state = result.wait_until_finish()
    wall = time.perf_counter() - start
    if state != PipelineState.DONE:
        raise RuntimeError(f"pipeline ended in state {state}; {opts.output} is incomplete (no {SUCCESS})")
    progress.step = "checking the output"
    summary = read_summary(opts.output, run_id, opts.input)
    summary.wall_s, summary.counters = wall, beam_counters(result)
    summary.check()
    write_text(FileSystems.join(opts.output, SUMMARY), summary.to_json())
    drop_run_records(opts.output)
    if not lock.held():
        raise RuntimeError(f"the lock of {opts.output} was taken over by another run; not marked complete")
    write_text(success, run_id + "\n")
    return summary


def read_summary(output: str, run_id: str, location: str) -> RunSummary:
    """The summary the run's last step recorded (pipeline.finish). Without one, no photo
    was listed in `location` (NoPhotos, with what was skipped) or the run lost every
    user's results."""
    path = run_record_path(output, run_id, SUMMARY)
    if FileSystems.exists(path):
        return RunSummary.from_json(read_text(path))
    listed, skipped = read_listing(output, run_id)
    drop_run_records(output)
    if not listed:
        raise no_photos(location, skipped["count"])
    raise RuntimeError(f"{sum(listed.values())} photos listed but the run recorded no user's results")


def help_parser() -> argparse.ArgumentParser:
    """The parser that documents `python -m pipeline --help`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Group each user's photos into people: find faces (MTCNN), embed them (--embedder), "
                    "cluster them per user (--cluster) and write Parquet tables and an HTML report "
                    "under --output. Runs on Apache Beam.",
        epilog="Any Apache Beam pipeline flag passes through, e.g. --runner DirectRunner "
               "--direct_num_workers 2 --direct_running_mode multi_processing, or --runner "
               "apache_beam.runners.dask.dask_runner.DaskRunner --dask_client_address HOST:PORT.")
    FaceGroupOptions._add_argparse_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m pipeline`: prints the summary. Errors in one line: bad
    options, output or input exit 2 before any work; a failed run exits 1 (its traceback in
    OUTPUT/_logs/, and on the terminal too with --verbose)."""
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        help_parser().print_help()
        return 0
    try:
        summary = run(argv)
    except (ValueError, FileNotFoundError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    except RunFailed as exc:
        if "--verbose" in argv:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        print(exc, file=sys.stderr)
        return 1
    print(summary.format())
    return 0
