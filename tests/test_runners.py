"""The same pipeline on DirectRunner, on DaskRunner against a real dask.distributed cluster,
and on PortableRunner against Beam's local job service with external SDK workers.

Why: a photo service outgrows one machine, and the pipeline must then give the same
people on a cluster runner. Each runner gets the same small LFW library (two users, one
with a non-ASCII id, each with three people of four photos, two people seen once and a
corrupt file, and one of its people in a per-user --known_people folder); their faces/,
clusters/, photos/, failures/ and people/ must agree (same face keys, embeddings to 1e-5,
same partition into people, same names: the known people travel inside the writer DoFn). A Dask worker killed in the middle of
a run must not leave a run that looks complete but is not. And nothing a worker needs
may be a file of the launching machine: the graph carries no such path, and the
--setup_file package that Beam stages holds the code and its resources.

Every process here computes with torch's default number of CPU threads. The Dask
workers run without a nanny: that makes a killed worker stay dead, and it also keeps
the nanny's OMP_NUM_THREADS=1 out. With one thread instead of two, PyTorch's kernels
round differently: here embeddings moved by up to 2.7e-5 and boxes by 3e-5 px, and the
people stayed the same. With equal thread counts the runners' tables were bit-identical.
"""
from __future__ import annotations

import base64
import bz2
import os
import pickletools
import random
import shutil
import signal
import sysconfig
import tarfile
import time
from collections import defaultdict
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions

from models import weights
from pipeline.inference import embedder_info, launcher_embedder
from pipeline.inputs import LISTING_SHARDS, ListingShard
from pipeline.known_people import load_naming
from pipeline.options import FaceGroupOptions, validate
from pipeline.progress import ProgressPrinter
from pipeline.run import SUCCESS, build, inference_settings, run
from pipeline.tables import PART, RUNS, open_table
from pipeline.user_tables import TABLES
from pipeline.users import user_folder
from tests.conftest import REPO
from tests.runner_services import Services, start_pipeline
from tests.test_progress import LINE

USERS = ("ann", "Bo Ødegård")
PEOPLE_PER_USER, PHOTOS_PER_PERSON, SINGLES_PER_USER = 3, 4, 2
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
#: 8 photos per batch: 4 batches of about 8 photos, so both Dask workers get work.
PIPELINE_FLAGS = ["--batch_size", "8"]
DASK_FLAGS = ["--runner", DASK_RUNNER, "--dask_npartitions", "4"]
RUN_TIMEOUT_S = 900
#: A worker is killed this long after a DoFn bundle is first seen on it: soon enough that the
#: run is still going when workers already hold the models from an earlier test (the whole
#: Dask run then takes about a second), late enough that a bundle is being processed.
KILL_AFTER_S = 0.3


def small_library(lfw: Path, root: Path, known: Path, seed: int = 3) -> int:
    """Write the two users' photos under root, and under known/<user>/<identity>/ the
    first photo of each user's first person; returns the number of files written under root."""
    rng = random.Random(seed)
    people = sorted(p.name for p in lfw.iterdir() if p.is_dir())
    counts = {name: len(list((lfw / name).glob("*.jpg"))) for name in people}
    multi = [n for n in people if PHOTOS_PER_PERSON <= counts[n] <= 8]
    single = [n for n in people if counts[n] == 1]
    rng.shuffle(multi)
    rng.shuffle(single)
    n = 0
    for user in USERS:
        chosen = [sorted((lfw / multi.pop()).glob("*.jpg"))[:PHOTOS_PER_PERSON] for _ in range(PEOPLE_PER_USER)]
        (known / user / chosen[0][0].parent.name).mkdir(parents=True)
        shutil.copyfile(chosen[0][0], known / user / chosen[0][0].parent.name / chosen[0][0].name)
        chosen += [sorted((lfw / single.pop()).glob("*.jpg")) for _ in range(SINGLES_PER_USER)]
        photos = [p for person in chosen for p in person]
        rng.shuffle(photos)
        for i, src in enumerate(photos):
            dst = root / user / ("2020" if i % 2 else "") / f"IMG_{i:03d}.jpg"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        (root / user / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
        n += len(photos) + 1
    return n


@pytest.fixture(scope="module")
def library(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runners") / "library"
    small_library(lfw, root, known_folder(root))
    return root


def known_folder(library: Path) -> Path:
    return library.parent / "known"


def flags(library: Path) -> list[str]:
    """The pipeline flags every run of the library gets."""
    return [*PIPELINE_FLAGS, "--known_people", str(known_folder(library))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Every service, started at once (they get ready while DirectRunner runs) and
    stopped at the end of the module, also when a test fails."""
    with Services(tmp_path_factory.mktemp("services")) as services:
        yield {"dask": services.dask_cluster(2), "job_service": services.job_service(),
               "worker_pool": services.worker_pool(), "services": services}


@pytest.fixture(scope="module")
def reference(library: Path, cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output of the library on DirectRunner (the one-machine reference)."""
    out = tmp_path_factory.mktemp("direct") / "out"
    run(["--input", str(library), "--output", str(out), "--runner", "DirectRunner",
         "--direct_num_workers", "1", *flags(library)])
    return out


def run_pipeline(args: list[str], log: Path, services: Services) -> None:
    """Run `python -m pipeline args` to completion; fails the test with its output and
    the services' logs unless it succeeds."""
    process = start_pipeline(args, log)
    try:
        rc = process.wait(RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert rc == 0, f"pipeline {' '.join(args)} exited {rc}:\n{log.read_text()[-4000:]}\n{services.logs()}"


def read_table(out: Path, table: str) -> list[dict]:
    return open_table(out / table).to_table().to_pylist()


def people(clusters: list[dict]) -> dict[str, set[frozenset[str]]]:
    """Per user, the partition of its face keys into people (unclustered faces alone)."""
    groups: dict[tuple[str, int | str], set[str]] = defaultdict(set)
    for row in clusters:
        pid = row["person_id"] if row["person_id"] >= 0 else f"alone:{row['face_key']}"
        groups[(row["user_id"], pid)].add(row["face_key"])
    partition: dict[str, set[frozenset[str]]] = defaultdict(set)
    for (user, _), keys in groups.items():
        partition[user].add(frozenset(keys))
    return dict(partition)


def assert_complete(out: Path, n_photos: int) -> None:
    """_SUCCESS written, every photo once, exactly one part per user and table, no temp
    files or run records left."""
    assert (out / SUCCESS).is_file(), f"{out}: no {SUCCESS}"
    assert not (out / RUNS).exists() and not list(out.rglob("*.tmp"))
    for table in TABLES:
        files = sorted(p.relative_to(out / table).as_posix() for p in (out / table).rglob("*") if p.is_file())
        assert files == sorted(f"{user_folder(u)}/{PART}" for u in USERS), f"{table}: {files}"
    photos = [(r["user_id"], r["photo_path"]) for r in read_table(out, "photos")]
    assert len(photos) == len(set(photos)) == n_photos
    for table in ("faces", "clusters"):
        keys = [(r["user_id"], r["face_key"]) for r in read_table(out, table)]
        assert len(keys) == len(set(keys)), f"duplicate face keys in {table}/"


def names(out: Path) -> dict[tuple[str, frozenset[str]], str | None]:
    """(user, face keys of a person) -> the person's name in people/."""
    keys: dict[tuple[str, int], set[str]] = defaultdict(set)
    for row in read_table(out, "clusters"):
        keys[row["user_id"], row["person_id"]].add(row["face_key"])
    return {(r["user_id"], frozenset(keys[r["user_id"], r["person_id"]])): r["name"] for r in read_table(out, "people")}


def assert_same_outputs(reference: Path, out: Path, label: str) -> None:
    """faces/, clusters/, photos/, failures/ and people/ of `out` equal the reference's."""
    ref_faces = {(r["user_id"], r["face_key"]): r for r in read_table(reference, "faces")}
    faces = {(r["user_id"], r["face_key"]): r for r in read_table(out, "faces")}
    assert sorted(faces) == sorted(ref_faces), f"{label}: face keys differ"
    keys = sorted(ref_faces)
    for column, tolerance in (("embedding", 1e-5), ("box", 1e-3), ("landmarks", 1e-3)):
        a = np.array([ref_faces[k][column] for k in keys])
        b = np.array([faces[k][column] for k in keys])
        worst = float(np.abs(a - b).max())
        assert worst <= tolerance, f"{label}: {column} differs by up to {worst}"
    assert people(read_table(out, "clusters")) == people(read_table(reference, "clusters")), \
        f"{label}: the partition into people differs"
    assert names(out) == names(reference), f"{label}: people/ names differ"
    for table, columns in (("photos", ("status", "photo_sha256", "n_faces")), ("failures", ("stage", "error"))):
        def rows(root: Path) -> dict:
            return {(r["user_id"], r["photo_path"]): tuple(r[c] for c in columns) for r in read_table(root, table)}
        assert rows(out) == rows(reference), f"{label}: {table}/ differs"


def test_same_outputs_on_direct_dask_and_portable_runners(library, reference, cluster, tmp_path):
    n_photos = sum(1 for p in library.rglob("*") if p.is_file())
    assert_complete(reference, n_photos)
    partition = people(read_table(reference, "clusters"))
    assert sorted(partition) == sorted(USERS)
    for user, groups in partition.items():  # the comparison below is not between trivial partitions
        assert sum(len(g) >= 2 for g in groups) >= PEOPLE_PER_USER - 1, f"{user}: {groups}"
    given = sorted((user, name) for (user, _), name in names(reference).items() if name)
    assert given == sorted((u, n.name) for u in USERS for n in (known_folder(library) / u).iterdir()), given
    services = cluster["services"]

    dask_out = tmp_path / "dask"
    address = cluster["dask"].ready(2)
    run_pipeline(["--input", str(library), "--output", str(dask_out), *DASK_FLAGS, "--progress_seconds", "1",
                  "--dask_client_address", address, *flags(library)], tmp_path / "dask.log", services)
    lines = [LINE.fullmatch(line) for line in (tmp_path / "dask.log").read_text().splitlines()
             if line.startswith("progress:")]
    assert lines and all(m and int(m[1]) <= int(m[2]) <= n_photos for m in lines), "no progress lines on Dask"
    assert int(lines[-1][2]) == n_photos and [int(m[2]) for m in lines] == sorted(int(m[2]) for m in lines)
    with cluster["dask"].client() as client:  # both worker processes ran the models
        loaded = client.run(eval, "'models.mtcnn' in __import__('sys').modules")
    assert sorted(loaded.values()) == [True, True], loaded

    portable_out = tmp_path / "portable"
    run_pipeline(["--input", str(library), "--output", str(portable_out), "--runner", "PortableRunner",
                  "--job_endpoint", cluster["job_service"].ready(), "--environment_type", "EXTERNAL",
                  "--environment_config", cluster["worker_pool"].ready(), "--setup_file", "./setup.py",
                  *flags(library)], tmp_path / "portable.log", services)
    assert "Starting worker with command" in cluster["worker_pool"].service.log.read_text(), \
        "the worker pool started no SDK worker process"

    for label, out in (("DaskRunner", dask_out), ("PortableRunner", portable_out)):
        assert_complete(out, n_photos)
        assert_same_outputs(reference, out, label)
    staged = staged_sdist_members(cluster["job_service"].staging)
    for member in ("setup.py", "pipeline/run.py", "pipeline/report_assets/report.css", "models/weights.py"):
        assert member in staged, f"--setup_file package staged to the job service lacks {member}"


def staged_sdist_members(staging: Path) -> set[str]:
    """Paths (below the top folder) in the source package Beam staged for --setup_file."""
    members: set[str] = set()
    for path in staging.rglob("*"):
        if path.is_file() and tarfile.is_tarfile(path):
            with tarfile.open(path) as tar:
                members |= {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    return members


def test_killing_a_dask_worker_mid_run_still_completes_the_outputs(library, reference, cluster, tmp_path):
    """DaskRunner re-runs the lost tasks on the surviving worker; the deterministic,
    atomically renamed per-user files and the launcher's final check make the run
    complete and duplicate-free, with _SUCCESS only at the end."""
    dask = cluster["dask"]
    address = dask.ready(2)
    out, log = tmp_path / "out", tmp_path / "pipeline.log"
    with dask.client() as client:
        names = {addr: w["name"] for addr, w in client.scheduler_info()["workers"].items()}
        launcher = start_pipeline(["--input", str(library), "--output", str(out), *DASK_FLAGS,
                                   "--dask_client_address", address, *flags(library)], log)
        try:
            victim, seen_at = None, None
            while launcher.poll() is None and victim is None:
                for addr, keys in client.processing().items():
                    if any("apply_dofn_to_bundle" in str(k) for k in keys):
                        seen_at = seen_at or time.monotonic()
                        if time.monotonic() - seen_at >= KILL_AFTER_S:
                            victim = names[addr]
                            break
                time.sleep(0.05)
            assert victim is not None, f"no DoFn bundle seen on a worker:\n{log.read_text()[-3000:]}"
            worker = dask.workers[victim].process
            os.kill(worker.pid, signal.SIGKILL)
            running_at_kill = launcher.poll() is None
            success_at_kill = (out / SUCCESS).exists()
            rc = launcher.wait(RUN_TIMEOUT_S)
        finally:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()
        survivors = [w["name"] for w in client.scheduler_info()["workers"].values()]
    dask.add_worker("worker-replacement")  # later tests get two workers again
    assert worker.wait(30) == -signal.SIGKILL and victim not in survivors and len(survivors) == 1
    assert running_at_kill and not success_at_kill, "the worker was not killed in the middle of the run"
    assert rc == 0, f"the run failed after a worker was killed:\n{log.read_text()[-4000:]}"
    assert_complete(out, sum(1 for p in library.rglob("*") if p.is_file()))
    assert_same_outputs(reference, out, "DaskRunner after a worker was killed")


def pickled_strings(obj) -> list[str]:
    """Every string in what Beam sends to workers for `obj` (its pickler's payload)."""
    payload = bz2.decompress(base64.b64decode(pickler.dumps(obj)))
    return [arg.decode("utf-8", "replace") if isinstance(arg, bytes) else arg
            for _, arg, _ in pickletools.genops(payload) if isinstance(arg, (str, bytes))]


def test_pipeline_graph_names_no_file_of_the_launching_machine(library, tmp_path):
    """Workers find code and weights themselves (installed package, package resources):
    no DoFn carries a path of the checkout, site-packages, the weights or the home
    folder (source file names of pickled functions aside: they are only shown in
    tracebacks), and the graph starts from the --input folder alone: the workers list it."""
    options = PipelineOptions(["--input", str(library), "--output", str(tmp_path / "out"),
                               "--known_people", str(known_folder(library))])
    opts = options.view_as(FaceGroupOptions)
    validate(opts)
    p = beam.Pipeline(options=options)
    model = launcher_embedder(opts.embedder, opts.embedder_weights)
    settings = inference_settings(opts, embedder_info(model))
    build(p, opts, "graphcheck", settings, None, load_naming(opts.known_people, settings, model),
          ProgressPrinter(opts.output, "graphcheck", 10.0).recorder())
    local = (str(REPO), sysconfig.get_paths()["purelib"], str(Path.home()),
             *(str(weights.resolve(name)) for name in ("mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet", "dlib-resnet")))

    class Check(beam.pipeline.PipelineVisitor):
        def __init__(self) -> None:
            self.dofns: list[str] = []
            self.created: list = []

        def visit_transform(self, node) -> None:
            transform = node.transform
            if isinstance(transform, beam.ParDo):
                found = [text for text in pickled_strings(transform.fn)
                         if text.startswith(local) and not text.endswith(".py")]
                assert not found, f"{node.full_label} carries launcher paths {found}"
                self.dofns.append(node.full_label)

        def enter_composite_transform(self, node) -> None:
            if isinstance(node.transform, beam.Create):
                self.created.extend(node.transform.values)

    check = Check()
    p.visit(check)
    assert any("DetectAlignEmbed" in label for label in check.dofns)
    assert any("WriteUserTables" in label for label in check.dofns)
    assert check.created == [ListingShard(opts.input, i, LISTING_SHARDS) for i in range(LISTING_SHARDS)]
