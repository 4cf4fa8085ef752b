"""Command-line options of the pipeline (a Beam PipelineOptions view).

Every Beam flag (--runner, --direct_num_workers, --setup_file, ...) passes through
unchanged. Options are not argparse-required because Beam re-parses them on workers;
`validate` gives the clear one-line errors instead.
"""
from __future__ import annotations

import argparse
import importlib.util
import os

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.cluster import DEFAULT_METHOD, METHODS
from pipeline.inputs import is_manifest, normalise_location
from pipeline.links import FOLLOW_LINKS, FOLLOW_USER
from pipeline.object_store import s3_bucket_problem
from pipeline.reuse import NO_PREVIOUS

DEVICES = ("auto", "cpu", "cuda")
#: MTCNN's own O-Net threshold is 0.7. On 400 random LFW photos every centre face scored
#: >= 0.986, and of the 12 other detections between 0.7 and 0.9, 9 were not faces (hands,
#: fabric, blur) and 3 were faces cut by the photo edge: 0.9 drops mostly junk.
DEFAULT_MIN_DET_SCORE = 0.9
DEFAULT_MIN_FACE_SIZE = 20
DEFAULT_MAX_DETECT_SIDE = 1600
DEFAULT_MAX_PIXELS = 200_000_000
DEFAULT_PROGRESS_SECONDS = 10.0
#: A run's lock is stale (its run presumed dead) after this long without a heartbeat.
DEFAULT_LOCK_STALE_MINUTES = 10.0


class FaceGroupOptions(PipelineOptions):
    """Options of `python -m pipeline`."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        from models.embedders import DEFAULT_EMBEDDER, EMBEDDERS

        parser.add_argument(
            "--input", default=None,
            help="photo library: a directory <root>/<user_id>/**/<photo> (the first folder under the "
                 "root is the user), or a manifest .csv/.parquet with columns user_id,path (relative "
                 "paths are resolved against the manifest's folder). Local path or Beam file system URI.")
        parser.add_argument(
            "--output", default=None,
            help="output folder (local path or URI): photos/, faces/, clusters/, failures/, people/ "
                 "Parquet tables per user, report/, summary.json and _SUCCESS. Must not be inside --input.")
        parser.add_argument(
            "--previous", default=None,
            help="output folder of an earlier run whose results to reuse (incremental run): photos "
                 "listed at the same path with the same SHA-256, detected and embedded with the same "
                 "settings and embedder version, are not detected or embedded again, and person ids "
                 "carry over. Default: --output itself when it already holds a run's tables; 'none' "
                 "processes every photo again.")
        parser.add_argument(
            "--device", default="auto", choices=DEVICES,
            help="where detection and embedding run: auto (CUDA when available), cpu or cuda.")
        parser.add_argument(
            "--embedder", default=DEFAULT_EMBEDDER, choices=sorted(EMBEDDERS),
            help=f"face embedding network (default {DEFAULT_EMBEDDER}).")
        parser.add_argument(
            "--embedder_weights", default=None,
            help="weights file of the embedder, or a checkpoint fine-tuned from it (python -m models.train; "
                 "its lineage is recorded in the faces/ Parquet metadata); default: its package resource "
                 "(python -m models.weights).")
        parser.add_argument(
            "--min_face_size", type=int, default=DEFAULT_MIN_FACE_SIZE,
            help=f"smallest face MTCNN looks for, in detection-image pixels (default {DEFAULT_MIN_FACE_SIZE}).")
        parser.add_argument(
            "--min_det_score", type=float, default=DEFAULT_MIN_DET_SCORE,
            help=f"keep detections whose MTCNN score is at least this (0-1; default "
                 f"{DEFAULT_MIN_DET_SCORE}; MTCNN itself already drops scores below 0.7).")
        parser.add_argument(
            "--max_detect_side", type=int, default=DEFAULT_MAX_DETECT_SIDE,
            help="photos are downscaled to this longest side for detection; faces are still aligned "
                 f"from full-resolution pixels and boxes reported in them (default {DEFAULT_MAX_DETECT_SIDE}).")
        parser.add_argument(
            "--max_pixels", type=int, default=DEFAULT_MAX_PIXELS,
            help="photos with more pixels than this fail at decode before any pixel is decoded "
                 f"(decompression-bomb guard; default {DEFAULT_MAX_PIXELS}, a 200 MP camera).")
        parser.add_argument(
            "--max_file_bytes", type=int, default=512 << 20,
            help="files larger than this fail at read without being loaded (default 536870912).")
        parser.add_argument(
            "--cluster", default=DEFAULT_METHOD, choices=METHODS,
            help=f"how each user's faces are grouped into people (default {DEFAULT_METHOD}).")
        parser.add_argument(
            "--known_people", default=None,
            help="local folder of labelled reference photos, <name>/<photo> (shared by every user) or "
                 "<user_id>/<name>/<photo> (per user): each person whose faces match one name closely "
                 "enough, and clearly better than any other name, gets that name in clusters/, people/ "
                 "and the report; others stay unnamed (rule and thresholds: README, Naming people). The "
                 "photos are embedded once on the launching machine, with this run's --embedder.")
        parser.add_argument(
            "--corrections", action="append", default=None,
            help="the user's corrections (rename, merge, move, ignore; the file the report exports, format "
                 "in the README): a .json file or a folder of them, repeatable. Every run applies all of "
                 "them as constraints on clustering; later entries win. Checked before any work.")
        parser.add_argument(
            "--follow_links", default=FOLLOW_USER, choices=FOLLOW_LINKS,
            help="symbolic links in a library folder or --known_people: 'user' (default) reads a photo only "
                 "where its links lead inside the same user's folder (else it fails at read: a user's "
                 "folder cannot pull in another user's photo or any other file); 'anywhere' follows every "
                 "link (single-user set-ups that link photos in from elsewhere). Manifest paths are "
                 "always read as given.")
        parser.add_argument(
            "--force", action="store_true",
            help="take over the --output folder's lock even when its run still looks alive (only when "
                 "you know that run is dead).")
        parser.add_argument(
            "--lock_stale_minutes", type=float, default=DEFAULT_LOCK_STALE_MINUTES,
            help="a lock whose run sent no heartbeat for this many minutes is taken over "
                 f"(default {DEFAULT_LOCK_STALE_MINUTES:g}; a running launcher beats 4 times per period).")
        parser.add_argument(
            "--quiet", action="store_true",
            help="print no progress lines while the pipeline runs (the summary at the end still comes).")
        parser.add_argument(
            "--progress_seconds", type=float, default=DEFAULT_PROGRESS_SECONDS,
            help="while the pipeline runs, print a progress line (photos done of listed, photos/s, ETA, "
                 f"failures) to stderr this often (default {DEFAULT_PROGRESS_SECONDS:g}).")
        parser.add_argument(
            "--verbose", action="store_true",
            help="print the full traceback of an unexpected error (always written to --output/_logs/).")
        parser.add_argument(
            "--batch_size", type=int, default=16,
            help="photos per detection batch (fewer when photos are large: a photo counts once per "
                 "started 4 megapixels); all faces of a batch are embedded together (default 16).")


def check_file_system(flag: str, location: str, options: PipelineOptions) -> None:
    """ValueError, in one line, unless Beam has a usable file system for the URI `location`
    (an unknown scheme, or s3:// without boto3, would otherwise fail at its first use) and,
    for s3://, its bucket exists and answers with these options (endpoint, credentials)."""
    try:
        FileSystems.get_filesystem(location)
    except ValueError:
        raise ValueError(f"{flag} {location}: Beam has no file system for this scheme "
                         "(install the Beam extra that provides it)") from None
    if location.startswith("s3://") and importlib.util.find_spec("boto3") is None:
        raise ValueError(f"{flag} {location}: s3:// needs boto3 (pip install 'facegroup[s3]'); the endpoint "
                         "and credentials are Beam's --s3_endpoint_url, --s3_access_key_id, ... flags")
    if location.startswith("s3://"):
        problem = s3_bucket_problem(location, options)
        if problem:
            raise ValueError(f"{flag} {location}: {problem}")


def validate(options: FaceGroupOptions) -> None:
    """Raise ValueError/FileNotFoundError naming the offending option; normalises paths."""
    if not options.input:
        raise ValueError("--input is required (a photo library folder or a manifest .csv/.parquet)")
    if not options.output:
        raise ValueError("--output is required (the folder to write the results to)")
    options.input = normalise_location(options.input)
    options.output = normalise_location(options.output)
    if options.previous and options.previous != NO_PREVIOUS:
        options.previous = normalise_location(options.previous)
    if any(c in options.input for c in "*?["):
        raise ValueError(f"--input {options.input!r} contains glob characters (*, ?, [); "
                         "give the library's root folder or a manifest")
    local = "://" not in options.input
    if local and is_manifest(options.input) and not os.path.isfile(options.input):
        raise FileNotFoundError(f"--input manifest {options.input} does not exist")
    if local and not is_manifest(options.input) and not os.path.isdir(options.input):
        raise FileNotFoundError(f"--input folder {options.input} does not exist")
    for flag, location in (("--input", options.input), ("--output", options.output),
                           ("--previous", options.previous)):
        if location and "://" in location:
            check_file_system(flag, location, options)
    if "://" in options.output and not is_manifest(options.input):
        if options.output == options.input or options.output.startswith(options.input.rstrip("/") + "/"):
            raise ValueError(f"--output {options.output} is inside the input library {options.input}; "
                             "a later run would read its own outputs as photos")
    if "://" not in options.output:
        if os.path.isfile(options.output):
            raise ValueError(f"--output {options.output} is a file; give a folder")
        root, output = os.path.realpath(options.input), os.path.realpath(options.output)  # links too
        if local and not is_manifest(options.input) and os.path.commonpath([root, output]) == root:
            raise ValueError(f"--output {options.output} is inside the input library {options.input}; "
                             "a later run would read its own outputs as photos")
    if options.known_people is not None and not os.path.isdir(options.known_people):
        raise FileNotFoundError(f"--known_people folder {options.known_people} does not exist "
                                "(a local folder of <name>/<photo> reference photos)")
    for name in ("min_face_size", "max_detect_side", "max_pixels", "max_file_bytes", "batch_size"):
        if getattr(options, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(options, name)}")
    if not options.progress_seconds > 0:
        raise ValueError(f"--progress_seconds must be positive, got {options.progress_seconds}")
    if not options.lock_stale_minutes > 0:
        raise ValueError(f"--lock_stale_minutes must be positive, got {options.lock_stale_minutes}")
    if not 0.0 <= options.min_det_score <= 1.0:
        raise ValueError(f"--min_det_score must be between 0 and 1, got {options.min_det_score}")
