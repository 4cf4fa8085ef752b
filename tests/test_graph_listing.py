"""The graph lists the input: its size does not grow with the library, and its shards list
every entry exactly once.

Why: a launcher that lists 10 million photos and ships them into the job graph builds
gigabytes of graph (runners refuse job requests of a few tens of MB) after hours of
listing on one machine. Here: the graph for a manifest of 100 and of 1,000,000 photos
has the same size, and building it costs the launcher no memory that grows with the
library (under 500 MB peak RSS less file-backed code pages, default embedder); the listing shards of a
folder and of a manifest together list every entry once; a user's batches depend only
on the user's listing.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.inputs import ListingShard, UserFolder, list_user_folders, list_user_photos, manifest_rows
from pipeline.plan import batches, skipped_summary
from pipeline.records import PhotoRef, Skipped
from pipeline.run import main, run
from tests.conftest import REPO, lfw_image

#: Builds the pipeline as the launcher does (options validated, embedder loaded, progress
#: recorder) without running it; prints the serialized graph's size and the peak RSS (VmHWM:
#: getrusage's maxrss would include the forking pytest process's, which Linux carries across exec).
BUILD = """
import sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from pipeline.inference import launcher_embedder_info
from pipeline.options import FaceGroupOptions, validate
from pipeline.progress import ProgressPrinter
from pipeline.run import build, inference_settings

options = PipelineOptions(sys.argv[1:])
opts = options.view_as(FaceGroupOptions)
validate(opts)
settings = inference_settings(opts, launcher_embedder_info(opts.embedder, opts.embedder_weights))
p = beam.Pipeline(options=options)
build(p, opts, "graphsize", settings, None, None, ProgressPrinter(opts.output, "graphsize", 10.0).recorder())
size = len(p.to_runner_api().SerializeToString())
with open("/proc/self/status") as status:
    kb = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status if line.startswith(("VmHWM", "RssFile"))}
print(size, kb["VmHWM"] - kb["RssFile"])
"""
#: The launcher checks and versions the embedder without loading its networks (with the
#: default embedder; the ensemble's networks alone would add about 170 MB). Measured: the
#: peak RSS less the pages mapped from files (shared library code: Beam's RunInference
#: imports torch, whose code pages count 150-250 MB depending on the page cache alone).
MAX_LAUNCHER_RSS = 500 << 20
#: What building the graph of a million photos may cost beyond that of a hundred (noise).
MAX_BUILD_GROWTH = 20 << 20


def manifest(path: Path, n: int, row_group_size: int | None = None) -> Path:
    """A Parquet manifest of n photos of 1,000 users."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"user_id": [f"user{i % 1000:04d}" for i in range(n)],
                             "path": [f"photos/{i:07d}.jpg" for i in range(n)]}), path, row_group_size=row_group_size)
    return path


def graph(manifest_path: Path, out: Path) -> tuple[int, int]:
    """(serialized graph bytes, launcher peak RSS bytes less file-backed pages) of building the pipeline."""
    done = subprocess.run([sys.executable, "-c", BUILD, "--input", str(manifest_path), "--output", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    size, rss = done.stdout.split()[-2:]
    return int(size), int(rss)


def test_the_graph_has_the_same_size_for_100_and_a_million_photos(tmp_path):
    small = graph(manifest(tmp_path / "small" / "manifest.parquet", 100), tmp_path / "out")
    large = graph(manifest(tmp_path / "large" / "manifest.parquet", 1_000_000), tmp_path / "out")
    assert abs(small[0] - large[0]) <= 1024, (small, large)
    assert large[1] - small[1] < MAX_BUILD_GROWTH, (small, large)
    assert large[1] < MAX_LAUNCHER_RSS, f"launcher peak RSS {large[1] / 2**20:.0f} MiB"


def listed(root: Path, shards: int) -> list[PhotoRef | Skipped]:
    """What the listing steps yield for a local library, over all shards."""
    items: list[PhotoRef | Skipped] = []
    for shard in range(shards):
        for item in list_user_folders(ListingShard(str(root), shard, shards)):
            items.extend(list_user_photos(item) if isinstance(item, UserFolder) else [item])
    return items


def test_folder_shards_list_every_entry_once(tmp_path):
    root = tmp_path / "library"
    files = [f"user{u}/{sub}{i}.jpg" for u in range(20) for sub in ("", "2020/") for i in range(3)]
    for rel in files + [".hidden/a.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "notes.txt").write_text("no user's photo\n")
    os.symlink("user1", root / "alias")
    os.symlink("../user2", root / "user3" / "to-user2")
    os.symlink("/nonexistent.jpg", root / "user4" / "dangling.jpg")
    for shards in (1, 7):
        items = listed(root, shards)
        refs = Counter((i.user_id, i.photo_path) for i in items if isinstance(i, PhotoRef))
        assert refs == Counter((rel.split("/")[0], rel) for rel in files + ["user4/dangling.jpg"]), shards
        assert all(i.link_folder == str(root / i.user_id) for i in items if isinstance(i, PhotoRef))
        assert sorted((s.path, s.reason) for s in items if isinstance(s, Skipped)) == [
            (".hidden/a.jpg", "hidden folder (user id starts with '.')"),
            ("alias", "symbolic link to a folder (not followed)"),
            ("notes.txt", "not inside a user folder"),
            ("user3/to-user2", "symbolic link to a folder (not followed)")]


def test_manifest_shards_read_every_row_once(tmp_path):
    parquet = manifest(tmp_path / "manifest.parquet", 10_000, row_group_size=700)
    assert pq.ParquetFile(parquet).num_row_groups == 15
    rows = [row for shard in range(4) for row in manifest_rows(ListingShard(str(parquet), shard, 4))]
    assert sorted(rows) == sorted((f"user{i % 1000:04d}", f"photos/{i:07d}.jpg") for i in range(10_000))
    csv = tmp_path / "manifest.csv"
    csv.write_text('user_id,path\nann,"a\nb.jpg"\nbob,c.jpg\n', encoding="utf-8")
    assert [list(manifest_rows(ListingShard(str(csv), shard, 2))) for shard in (0, 1)] == [
        [("ann", "a\nb.jpg"), ("bob", "c.jpg")], []]


def test_batches_keep_reusable_photos_apart_and_skipped_entries_are_summarised():
    refs = [PhotoRef("u", f"u/{i}.jpg", f"/x/u/{i}.jpg", reuse_sha256="s" if i % 3 == 0 else None) for i in range(7)]
    assert [[r.photo_path for r in b] for b in batches(refs, 2)] == [
        ["u/0.jpg", "u/3.jpg"], ["u/6.jpg"], ["u/1.jpg", "u/2.jpg"], ["u/4.jpg", "u/5.jpg"]]
    skipped = [Skipped(f"{i:03d}", "not inside a user folder" if i % 2 else "empty user id") for i in range(150, 0, -1)]
    summary = skipped_summary(skipped)
    assert summary["count"] == 150 and summary["reasons"] == {"empty user id": 75, "not inside a user folder": 75}
    assert [e["path"] for e in summary["examples"]] == [f"{i:03d}" for i in range(1, 101)]


def test_a_library_without_photos_fails_in_one_line_once_listed(tmp_path, capsys):
    """The launcher learns that nothing was listed only from the graph's records."""
    (tmp_path / "library" / "ann").mkdir(parents=True)
    (tmp_path / "library" / "notes.txt").write_text("no user's photo\n")
    assert main(["--input", str(tmp_path / "library"), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --input {tmp_path / 'library'}: no photos found (expected files in <root>/<user_id>/; 1 skipped)")
    assert os.listdir(tmp_path / "out") == []


def test_a_parquet_manifest_read_by_several_shards_runs_end_to_end(lfw, tmp_path):
    """One row per row group, so the rows are read by different shards; a path listed
    twice is written once and counted as a duplicate listing."""
    for name, index in (("Colin_Powell", 1), ("Tony_Blair", 1), ("Tony_Blair", 2)):
        (tmp_path / f"{name}_{index}.jpg").write_bytes(lfw_image(lfw, name, index).read_bytes())
    rows = [("ann", "Colin_Powell_1.jpg"), ("bob", "Tony_Blair_1.jpg"), ("bob", "Tony_Blair_2.jpg"),
            ("bob", "Tony_Blair_2.jpg"), ("../eve", "Colin_Powell_1.jpg")]
    pq.write_table(pa.table({"user_id": [u for u, _ in rows], "path": [p for _, p in rows]}),
                   tmp_path / "manifest.parquet", row_group_size=1)
    summary = run(["--input", str(tmp_path / "manifest.parquet"), "--output", str(tmp_path / "out")])
    assert (summary.listed, summary.photos, summary.total("with_faces")) == (4, 3, 3)
    assert summary.total("duplicate_listings") == 1 and summary.skipped["count"] == 1
    assert sorted(u.user_id for u in summary.users) == ["ann", "bob"]
