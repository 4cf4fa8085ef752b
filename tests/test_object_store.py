"""The pipeline with --input s3://... and --output s3://... against an S3-compatible server.

Why: --input and --output are documented as "local path or Beam file system URI", and a
cluster run reads and writes an object store. An object store is not a folder: it has no
directories (a "folder" exists only as a key prefix, and deleting one deletes nothing unless
asked for the prefix), renames are copies, and the connection comes from Beam's own
--s3_endpoint_url / --s3_access_key_id / ... flags, which the launcher's and the workers'
file system calls must both see. So a moto S3 server on 127.0.0.1 (started and stopped
here; fake credentials, nothing from the environment) holds a small LFW library, and the
same library is run locally: the tables, the report and every other file must come out the
same, with _SUCCESS, and an incremental re-run must reuse exactly what it reuses locally.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.output_probe import OutputNotWritable, probe_output
from pipeline.outputs import TABLES
from pipeline.run import SUCCESS, SUMMARY, main, run
from tests.conftest import lfw_image
from tests.test_pipeline_e2e import landscape

moto_server = pytest.importorskip("moto.server", reason="moto[server] is a test dependency (pip install -e .[tests])")
boto3 = pytest.importorskip("boto3")

BUCKET = "facegroup-test"
REGION = "us-east-1"
KEY_ID, SECRET = "testing-key-id", "testing-secret"
# Zoë's folder name is percent-encoded in the tables (user_id=Zo%C3%AB%20O%27Neil): object keys with "%".
LIBRARY = {
    "ann/2019/a1.jpg": ("Tony_Blair", 1), "ann/2019/a2.jpg": ("Tony_Blair", 2),
    "ann/a3.jpg": ("Donald_Rumsfeld", 1), "ann/a4.jpg": ("Donald_Rumsfeld", 2),
    "ben/b1.jpg": ("Hugo_Chavez", 1), "ben/b2.jpg": ("Hugo_Chavez", 2), "ben/x/b3.jpg": ("Jean_Chretien", 1),
    "Zoë O'Neil/z1.jpg": ("Colin_Powell", 1), "Zoë O'Neil/z2.jpg": ("Colin_Powell", 2),
    "dan/d1.jpg": ("John_Ashcroft", 1),
}
ADDED = ("ben/b4.jpg", ("Hugo_Chavez", 3))
DELETED = "dan/d1.jpg"  # the user's only photo: its folders must go from every table
BROKEN, NO_FACE = "ben/broken.jpg", "Zoë O'Neil/landscape.jpg"
# Progress records are written (and must be removed), but no progress line is printed.
ARGS = ["--runner", "DirectRunner", "--direct_num_workers", "1", "--batch_size", "8",
        "--embedder", "dlib-resnet", "--progress_seconds", "600"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """A moto S3 server on 127.0.0.1 with an empty bucket: (boto3 client, endpoint URL).
    AWS settings of the environment are hidden, so nothing can reach a real account."""
    patch = pytest.MonkeyPatch()
    patch.setattr(logging.getLogger("werkzeug"), "level", logging.WARNING)  # not a line per request
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        patch.delenv(name)
    nowhere = str(tmp_path_factory.mktemp("no-aws") / "none")
    patch.setenv("AWS_CONFIG_FILE", nowhere)
    patch.setenv("AWS_SHARED_CREDENTIALS_FILE", nowhere)
    patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server._port}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY_ID,
                              aws_secret_access_key=SECRET, region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        yield client, endpoint
    finally:
        server.stop()
        patch.undo()


def s3_flags(endpoint: str, credentials: bool = True) -> list[str]:
    """Beam's own flags for the S3 connection (no credentials: none from the environment either)."""
    flags = ["--s3_endpoint_url", endpoint, "--s3_region_name", REGION]
    return flags + (["--s3_access_key_id", KEY_ID, "--s3_secret_access_key", SECRET] if credentials else [])


def upload(client, library: Path, prefix: str) -> None:
    for path in sorted(p for p in library.rglob("*") if p.is_file()):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(library).as_posix()}")


def download(client, prefix: str) -> dict[str, bytes]:
    """Every object under `prefix`/ as {key relative to it: bytes}."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            found[obj["Key"][len(prefix) + 1:]] = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
    return found


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def tables(files: dict[str, bytes]) -> dict[str, pa.Table]:
    """{table file: its table} of every Parquet file of the tables among `files`."""
    return {rel: pq.read_table(pa.BufferReader(data), partitioning=None)
            for rel, data in sorted(files.items()) if rel.split("/")[0] in TABLES and rel.endswith(".parquet")}


def rows(files: dict[str, bytes]) -> dict[str, list[dict]]:
    return {rel: table.to_pylist() for rel, table in tables(files).items()}


def differences(found: dict[str, list[dict]], expected: dict[str, list[dict]]) -> list[str]:
    """Where two {table file: rows} differ: files, row counts, and (file, row, column) of values."""
    if sorted(found) != sorted(expected):
        return [f"files {sorted(found)} != {sorted(expected)}"]
    diffs = []
    for rel, wanted in expected.items():
        if len(found[rel]) != len(wanted):
            diffs.append(f"{rel}: {len(found[rel])} rows != {len(wanted)}")
            continue
        diffs += [f"{rel} row {i} {col}: {str(a[col])[:80]} != {str(b.get(col))[:80]}"
                  for i, (a, b) in enumerate(zip(found[rel], wanted)) for col in a if a[col] != b.get(col)]
    return diffs


@pytest.fixture(scope="module")
def runs(s3, lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The library run locally and on S3, then one photo added and one user deleted, and both
    run again into the same outputs (incremental)."""
    client, endpoint = s3
    flags = s3_flags(endpoint)
    base = tmp_path_factory.mktemp("object-store")
    library, local_out = base / "library", base / "out"
    for rel, photo in LIBRARY.items():
        (library / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lfw_image(lfw, *photo), library / rel)
    (library / BROKEN).write_bytes(lfw_image(lfw, "Tony_Blair", 9).read_bytes()[:2000])
    (library / NO_FACE).write_bytes(landscape())
    upload(client, library, "lib")
    s3_args = ["--input", f"s3://{BUCKET}/lib", "--output", f"s3://{BUCKET}/out"] + flags + ARGS
    result = {"local1": run(["--input", str(library), "--output", str(local_out)] + ARGS),
              "local_files1": local_files(local_out),
              "s3_1": run(s3_args)}
    result["s3_files1"] = download(client, "out")
    result["s3_workers"] = run(["--input", f"s3://{BUCKET}/lib", "--output", f"s3://{BUCKET}/out-workers"] + flags
                               + ARGS + ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"])
    result["s3_workers_files"] = download(client, "out-workers")

    added = library / ADDED[0]
    shutil.copyfile(lfw_image(lfw, *ADDED[1]), added)
    client.upload_file(str(added), BUCKET, f"lib/{ADDED[0]}")
    (library / DELETED).unlink()
    client.delete_object(Bucket=BUCKET, Key=f"lib/{DELETED}")
    result["local2"] = run(["--input", str(library), "--output", str(local_out)] + ARGS)
    result["local_files2"] = local_files(local_out)
    result["s3_2"] = run(s3_args)
    result["s3_files2"] = download(client, "out")
    return result


def test_s3_run_writes_the_same_tables_as_a_local_run(runs):
    local, remote = runs["local_files1"], runs["s3_files1"]
    assert len(tables(local)) == len(TABLES) * 4  # every table, every user
    assert not differences(rows(remote), rows(local))
    for rel, table in tables(local).items():  # schema metadata too (inference settings, next person id)
        assert tables(remote)[rel].schema.metadata == table.schema.metadata, rel
    first = runs["s3_1"]
    assert first.listed == first.photos == len(LIBRARY) + 2
    assert first.failed()["decode"] == 1 and first.total("without_faces") == 1
    assert first.output == f"s3://{BUCKET}/out"


def test_s3_output_has_the_same_files_as_a_local_one(runs):
    """_SUCCESS, summary.json, the report (byte for byte) and nothing else: no lock, no
    run records, progress files or temporary files left behind on the object store."""
    local, remote = runs["local_files1"], runs["s3_files1"]
    assert SUCCESS in remote and remote[SUCCESS].decode().strip() == runs["s3_1"].run_id
    assert SUMMARY in remote
    report = sorted(rel for rel in local if rel.startswith("report/"))
    assert "report/index.html" in report
    assert sorted(rel for rel in remote if rel.startswith("report/")) == report
    assert all(remote[rel] == local[rel] for rel in report), [rel for rel in report if remote[rel] != local[rel]]
    assert sorted(remote) == sorted(local)


def test_s3_run_with_worker_processes(runs):
    """--direct_running_mode multi_processing: the workers are other processes, which know
    the endpoint and credentials only from the options the runner hands them."""
    files = runs["s3_workers_files"]
    assert not differences(rows(files), rows(runs["local_files1"]))
    assert files[SUCCESS].decode().strip() == runs["s3_workers"].run_id
    assert runs["s3_workers"].counters["photos_inferred"] == len(LIBRARY) + 1


def test_incremental_s3_run_reuses_what_a_local_one_does(runs):
    local2, s3_2 = runs["local2"], runs["s3_2"]
    assert s3_2.previous == f"s3://{BUCKET}/out"
    # every earlier photo still listed (all but the deleted one, and the landscape) but the broken file
    assert s3_2.total("reused") == local2.total("reused") == len(LIBRARY) - 1 + 1
    assert s3_2.counters["photos_inferred"] == local2.counters["photos_inferred"] == 1  # the added photo
    assert s3_2.counters["failed_decode"] == local2.counters["failed_decode"] == 1  # tried again
    assert not differences(rows(runs["s3_files2"]), rows(runs["local_files2"]))
    assert not [rel for rel in runs["s3_files2"] if "user_id=dan" in rel]
    assert sorted(runs["s3_files2"]) == sorted(runs["local_files2"])
    assert runs["s3_files2"][SUCCESS].decode().strip() == s3_2.run_id


def test_s3_errors_are_one_line(s3, capsys):
    """Exit 2 and one line, at once (Beam itself retries a request that gets no answer for
    about ten minutes): an --input prefix without photos, a bucket that does not exist, an
    endpoint where nothing listens, no credentials, an --output inside the --input prefix."""
    client, endpoint = s3
    flags = s3_flags(endpoint)
    assert main(["--input", f"s3://{BUCKET}/no-such-library", "--output", f"s3://{BUCKET}/empty-out"]
                + flags + ARGS) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --input s3://{BUCKET}/no-such-library: no photos found"), err
    left = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="empty-out/").get("Contents", [])]
    assert not [k for k in left if not k.startswith("empty-out/_logs/")], left

    nothing_there, no_keys = s3_flags(f"http://127.0.0.1:{free_port()}"), s3_flags(endpoint, credentials=False)
    cases = [
        (["--input", f"s3://{BUCKET}/lib", "--output", "s3://no-such-bucket/out"] + flags,
         "error: --output s3://no-such-bucket/out: bucket no-such-bucket does not exist"),
        (["--input", "s3://no-such-bucket/lib", "--output", f"s3://{BUCKET}/out-x"] + flags,
         "error: --input s3://no-such-bucket/lib: bucket no-such-bucket does not exist"),
        (["--input", f"s3://{BUCKET}/lib", "--output", f"s3://{BUCKET}/out-x"] + nothing_there,
         f"error: --input s3://{BUCKET}/lib: Could not connect to the endpoint URL"),
        (["--input", f"s3://{BUCKET}/lib", "--output", f"s3://{BUCKET}/out-x"] + no_keys,
         f"error: --input s3://{BUCKET}/lib: Unable to locate credentials"),
        (["--input", f"s3://{BUCKET}/lib", "--output", f"s3://{BUCKET}/lib/out"] + flags,
         f"error: --output s3://{BUCKET}/lib/out is inside the input library s3://{BUCKET}/lib"),
    ]
    for argv, expected in cases:
        started = time.monotonic()
        assert main(argv + ARGS) == 2, expected
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(expected), (expected, err)
        assert time.monotonic() - started < 20, expected
    assert not client.list_objects_v2(Bucket=BUCKET, Prefix="out-x/").get("Contents")


def test_s3_output_probe_fails_in_one_line(s3, caplog):
    """Beam's S3 upload logs its own traceback on the root logger before it raises; the
    probe's error already says it."""
    FileSystems.set_options(PipelineOptions(s3_flags(s3[1])))  # as run() does
    with caplog.at_level(logging.ERROR), pytest.raises(OutputNotWritable, match="NoSuchBucket|does not exist"):
        probe_output("s3://no-such-bucket/out", "run-id")
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
