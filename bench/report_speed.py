"""How fast a big user's page opens in Chromium: one user with 10,000 faces.

The library is real LFW: every photo of the identities with two or more photos (1,680 people,
9,164 faces, George W. Bush alone 530) plus single-photo identities as unclustered faces up to
--faces. Each LFW photo is one photo with one face: the preview is the LFW file itself (250x250
JPEG), the thumbnail is a 150x150 crop of LFW's fixed face area (70..180 px, where LFW centres
the face) rather than a detector's aligned chip, and distance_to_centre is the pixel distance
of a 16x16 grey copy of the crop to its person's mean (it only orders faces). No detector or
embedder runs, so the tables are made in seconds.

Then the report is built and its pages are loaded --runs times in headless Chromium from a
local http.server with the browser cache disabled (cold loads), and the user page also straight
from disk (file://), as users open it. Printed per page: navigation
start -> load event end, and -> first people card painted (Element Timing on the first card's
face; first-contentful-paint for pages without cards); medians over the runs.

    python bench/report_speed.py                    # 10,000 faces, 5 loads
    python bench/report_speed.py --faces 20000 --runs 9 --keep /tmp/bigreport
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import shutil
import statistics
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.report import build_report  # noqa: E402
from pipeline.schemas import CLUSTERS, FAILURES, IMAGES, PHOTOS, face_key, faces_schema  # noqa: E402
from pipeline.tables import PART, table_path, write_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LFW = REPO.parent / "shared" / "data" / "lfw"
FACE_BOX = (70, 70, 180, 180)  # where LFW's 250x250 photos hold the face
USER = "big-user"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900")
# Navigation start -> load event, and -> the first card's face painted (or first contentful paint).
TIMING_JS = """
const done = arguments[arguments.length - 1];
const nav = performance.getEntriesByType('navigation')[0];
const cards = document.querySelectorAll('li.card').length;
const seen = [];
new PerformanceObserver(list => seen.push(...list.getEntries())).observe({type: 'element', buffered: true});
const started = performance.now();
(function poll() {
  const card = seen.find(e => e.identifier === 'first-card');
  const fcp = performance.getEntriesByName('first-contentful-paint')[0];
  const first = cards ? (card && (card.renderTime || card.loadTime)) : (fcp && fcp.startTime);
  if (first || performance.now() - started > 5000)
    done({load: nav.loadEventEnd - nav.startTime, first: first || NaN, cards, images: document.images.length});
  else setTimeout(poll, 20);
})();
"""


def library(faces: int) -> list[tuple[str, list[Path]]]:
    """LFW identities (name, photos): every multi-photo identity, then singletons up to `faces` photos."""
    people = sorted((d.name, sorted(d.glob("*.jpg"))) for d in LFW.iterdir() if d.is_dir())
    multi = [p for p in people if len(p[1]) > 1]
    single = [p for p in people if len(p[1]) == 1]
    chosen, total = [], 0
    for name, photos in multi + single:
        if total + len(photos) > faces:
            continue
        chosen.append((name, photos))
        total += len(photos)
    if total < faces:
        raise ValueError(f"--faces {faces}: LFW has only {total} photos to use")
    return chosen


def write_tables(out: Path, faces: int) -> tuple[int, int]:
    """Pipeline-shaped Parquet tables of one user; returns (faces, people)."""
    photos, face_rows, clusters, images, grey = [], [], [], [], []
    owners: list[tuple[int, int]] = []  # (person id or -1, row) per face
    people = 0
    for name, paths in library(faces):
        pid = people if len(paths) > 1 else -1
        people += pid >= 0
        for path in paths:
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            crop = Image.open(io.BytesIO(data)).convert("RGB").crop(FACE_BOX).resize((150, 150), Image.BILINEAR)
            buf = io.BytesIO()
            crop.save(buf, "JPEG", quality=85)
            rel = f"{name}/{path.name}"
            photos.append(dict(user_id=USER, photo_path=rel, photo_sha256=sha, status="faces", n_faces=1,
                               width=250, height=250, images_part=PART))
            face_rows.append(dict(user_id=USER, photo_path=rel, photo_sha256=sha, face_index=0,
                                  face_key=face_key(sha, 0), box=list(map(float, FACE_BOX)), landmarks=[0.0] * 10,
                                  det_score=1.0, embedder="none", embedder_version="0", embedding=[0.0]))
            images += [dict(user_id=USER, photo_sha256=sha, face_index=None, jpeg=data),
                       dict(user_id=USER, photo_sha256=sha, face_index=0, jpeg=buf.getvalue())]
            grey.append(np.asarray(crop.convert("L").resize((16, 16)), np.float32).ravel() / 255)
            owners.append((pid, len(face_rows) - 1))
    members: dict[int, list[int]] = {}
    for pid, row in owners:
        members.setdefault(pid, []).append(row)
    for pid, rows in members.items():
        centre = np.mean([grey[r] for r in rows], axis=0)
        for r in rows:
            clusters.append(dict(user_id=USER, face_key=face_rows[r]["face_key"],
                                 photo_sha256=face_rows[r]["photo_sha256"], face_index=0, person_id=pid,
                                 cluster_size=len(rows) if pid >= 0 else 0,
                                 distance_to_centre=float(np.linalg.norm(grey[r] - centre))))
    for table, schema, rows in (("photos", PHOTOS, photos), ("faces", faces_schema(1), face_rows),
                                ("clusters", CLUSTERS, clusters), ("failures", FAILURES, []), ("images", IMAGES, images)):
        write_table(table_path(str(out), table, USER), pa.Table.from_pylist(rows, schema=schema))
    return len(face_rows), people


def measure(report: Path, pages: list[str], runs: int) -> dict[str, list[dict]]:
    """Cold loads of each page in headless Chromium: {page: [timings per run]}.

    A page is a path under the report, served by a local http.server, or "file:" + path for the
    file itself (how a user opens the report from disk)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    handler = functools.partial(type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                                directory=str(report))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in FLAGS + (f"--user-data-dir={profile}",):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.set_script_timeout(15)
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
        results: dict[str, list[dict]] = {p: [] for p in pages}
        for _ in range(runs):
            for page in pages:
                driver.get("about:blank")
                driver.get((report / page[5:]).as_uri() if page.startswith("file:")
                           else f"http://127.0.0.1:{server.server_port}/{page}")
                results[page].append(driver.execute_async_script(TIMING_JS))
        return results
    finally:
        driver.quit()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    if args.runs < 1:
        raise ValueError("--runs must be >= 1")
    if not (LFW / "pairs.txt").is_file():
        raise FileNotFoundError(f"LFW not found at {LFW}")
    out = args.keep or Path(tempfile.mkdtemp(prefix="report-speed-"))
    if args.keep and out.exists():
        shutil.rmtree(out)
    try:
        t0 = time.perf_counter()
        n_faces, n_people = write_tables(out, args.faces)
        t1 = time.perf_counter()
        report = Path(build_report(str(out))).parent
        t2 = time.perf_counter()
        files = [p for p in report.rglob("*") if p.is_file()]
        print(f"library: 1 user, {n_faces:,} faces (real LFW photos), {n_people:,} people; "
              f"tables {t1 - t0:.1f} s, report build {t2 - t1:.1f} s, "
              f"{len(files):,} files, {sum(p.stat().st_size for p in files) / 2**20:.0f} MiB")
        user = next(report.glob("u-*")).name
        biggest = sorted(report.glob(f"{user}/person-*.html"), key=lambda p: -p.stat().st_size)[0].name
        pages = [f"{user}/index.html", f"file:{user}/index.html", f"{user}/{biggest}", f"{user}/unclustered.html",
                 "index.html"]
        results = measure(report, pages, args.runs)
        for page, runs in results.items():
            load = statistics.median(r["load"] for r in runs) / 1000
            first = statistics.median(r["first"] for r in runs) / 1000
            print(f"{page}: load {load:.3f} s, first card/paint {first:.3f} s, "
                  f"{runs[0]['cards']} cards, {runs[0]['images']} images (median of {len(runs)})")
        worst = max(statistics.median(r[k] for r in results[p]) for p in pages[:2] for k in ("load", "first"))
        print(f"report user page {n_faces} faces: {worst / 1000:.2f} s "
              f"(slower of load and first card, over http and file://; medians of {args.runs})")
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
