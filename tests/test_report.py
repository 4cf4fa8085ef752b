"""The HTML report, built from Parquet tables of real LFW faces and opened in headless Chromium.

Why: the report is what users look at. The fixture runs a real detector (dlib HOG + 5-point shape,
test-only) on real LFW photos: thumbnails are real aligned face chips, previews are real downscaled
photos, people are LFW identities with distance_to_centre from real dlib embeddings, and faces that are
background people or identities seen once are left unclustered; one user's people are named by
pipeline.naming from reference photos. Hostile photo names, user ids, person names and error
messages check that everything is printed as text and nothing runs. Screenshots of every page visited
go to test-artifacts/report/ (or $FACEGROUP_ARTIFACTS/report/).
Needs /usr/bin/chromium and /usr/bin/chromedriver (Debian `chromium`, `chromium-driver`) and selenium.
"""
from __future__ import annotations

import functools
import hashlib
import html.parser
import importlib.util
import io
import json
import os
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import dlib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from pipeline.corrections import IGNORED_REASON
from pipeline.images import user_images
from pipeline.naming import people_table
from pipeline.report import build_report, digest, main
from pipeline.schemas import CLUSTERS, FAILURES, IMAGES, PEOPLE, PHOTOS, face_key, faces_schema
from pipeline.tables import PART
from tests.conftest import REPO, lfw_image

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("FACEGROUP_ARTIFACTS", REPO / "test-artifacts")) / "report"
XSS_ALERT = "<img src=x onerror=alert(1)>.jpg"
XSS_FLAG = "<img src=x onerror=window.__xss=1>"
QUOTED = "holiday/\"quoted\" & 'single' <b>.jpg"
NON_LATIN = "Фото/北京 — café.jpg"
HOSTILE_USER = "Zoë \"<b>bold</b>\" & O'Neil"
WINDOW = (1280, 900)
WIDE, WIDE_COMPANION = NON_LATIN, "Hugo_Chavez"  # this photo gets a second person beside the first
PREVIEW_SIDE = 200  # long side of previews (LFW photos are 250x250): face boxes must be scaled down

# user -> [(LFW identity, photo numbers, photo_path override per number)]
LIBRARY = {
    "alice": [("George_W_Bush", range(1, 7), {}), ("Colin_Powell", range(1, 6), {}),
              ("Tony_Blair", range(1, 5), {}), ("Donald_Rumsfeld", range(1, 4), {}),
              ("Aaron_Eckhart", [1], {}), ("Abba_Eban", [1], {})],
    HOSTILE_USER: [("Gerhard_Schroeder", range(1, 5), {1: XSS_ALERT, 2: QUOTED, 3: NON_LATIN}),
                   ("Ariel_Sharon", range(1, 4), {})],
}
# Known-people names: alice's come as the optional clusters/ `name` column (one is hostile), the
# other user's as an optional people/ table made by pipeline.naming from reference photos
# (LFW identity, photo number, name) not in the library, with dlib's same-person distance 0.6.
NAMES = {"George_W_Bush": "George W. Bush", "Colin_Powell": "Colin Powell", "Donald_Rumsfeld": XSS_FLAG}
KNOWN = [("Ariel_Sharon", 4, "Ариэль Шарон"), ("Hugo_Chavez", 2, "Hugo Chávez")]
NAME_THRESHOLD, NAME_MARGIN = 0.6, 0.1
# alice's faces of this identity (one photo, unclustered) are marked below the quality gate.
LOW_QUALITY = "Abba_Eban"
# alice's tables have the columns that corrections add (the other user's people/ table is written
# without them, as before corrections): CONFIRMED is confirmed by the user, who named them, the other
# names are from known people; the face of IGNORED (seen once, not grouped) was ignored by the user.
CONFIRMED, IGNORED = "Colin_Powell", "Aaron_Eckhart"


def _write(out: Path, table: str, schema: pa.Schema, rows: list[dict]) -> None:
    """One user's rows as <out>/<table>/user_id=<uid>/part-0.parquet (Hive layout, URI-encoded id)."""
    folder = out / table / f"user_id={quote(rows[0]['user_id'], safe='')}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "part-0.parquet")


def _jpeg(image: np.ndarray | Image.Image) -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, "JPEG", quality=88)
    return buf.getvalue()


@pytest.fixture(scope="module")
def library(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pipeline-shaped Parquet tables for three users, from real detections on real LFW photos."""
    models = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]) / "models"
    detector = dlib.get_frontal_face_detector()
    shaper = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    encoder = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    out = tmp_path_factory.mktemp("pipeline-out")

    def embed(rgb: np.ndarray, det: dlib.rectangle) -> tuple[dlib.full_object_detection, np.ndarray, np.ndarray]:
        """(5 landmarks, 150x150 aligned chip, 128-d embedding) of one detected face."""
        shape = shaper(rgb, det)
        chip = dlib.get_face_chip(rgb, shape, size=150, padding=0.25)
        return shape, chip, np.array(encoder.compute_face_descriptor(chip), np.float32)

    def central(dets: list[dlib.rectangle]) -> int | None:
        """The face nearest the centre of a 250x250 LFW photo (LFW's subject)."""
        return min(range(len(dets)), key=lambda i: abs(dets[i].center().x - 125) + abs(dets[i].center().y - 125),
                   default=None)

    known = []
    for name, number, _ in KNOWN:
        rgb = np.asarray(Image.open(lfw_image(lfw, name, number)).convert("RGB"))
        dets = list(detector(rgb, 1))
        known.append(embed(rgb, dets[central(dets)])[2])
    for user, identities in LIBRARY.items():
        photos, faces, images, embeddings, identity_of = [], [], [], [], []
        for name, numbers, paths in identities:
            for number in numbers:
                path = lfw_image(lfw, name, number)
                data = path.read_bytes()
                rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                rel = paths.get(number, f"{name}/{path.name}")
                if rel == WIDE:  # two real photos side by side: a 500x250 photo with two faces
                    rgb = np.hstack([rgb, np.asarray(Image.open(lfw_image(lfw, WIDE_COMPANION, 1)).convert("RGB"))])
                    data = _jpeg(rgb)
                sha = hashlib.sha256(data).hexdigest()
                dets = list(detector(rgb, 1))
                centre = central(dets)
                scale = PREVIEW_SIDE / max(rgb.shape[:2])
                preview = Image.fromarray(rgb).resize((round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)),
                                                      Image.LANCZOS)
                photos.append(dict(user_id=user, photo_path=rel, photo_sha256=sha,
                                   status="faces" if dets else "no_face", n_faces=len(dets),
                                   width=rgb.shape[1], height=rgb.shape[0], images_part=PART))
                images.append(dict(user_id=user, photo_sha256=sha, face_index=None, jpeg=_jpeg(preview)))
                for i, det in enumerate(dets):
                    shape, chip, embedding = embed(rgb, det)
                    embeddings.append(embedding)
                    identity_of.append(name if i == centre and len(numbers) > 1 else None)
                    faces.append(dict(
                        user_id=user, photo_path=rel, photo_sha256=sha, face_index=i, face_key=face_key(sha, i),
                        box=[det.left(), det.top(), det.right(), det.bottom()],
                        landmarks=[c for p in shape.parts() for c in (p.x, p.y)], det_score=1.0,
                        embedder="dlib-resnet", embedder_version="v1", embedding=embeddings[-1].tolist(),
                        quality=0.1 if name == LOW_QUALITY else 1.0,
                        quality_reason="blurred" if name == LOW_QUALITY else None))
                    images.append(dict(user_id=user, photo_sha256=sha, face_index=i, jpeg=_jpeg(chip)))
        # The lower part of a real photo (shoulders, no face): the detector decides its status.
        torso = np.ascontiguousarray(np.asarray(Image.open(lfw_image(lfw, "Tony_Blair", 5)).convert("RGB"))[170:])
        found = len(detector(torso, 1))
        torso_sha = hashlib.sha256(torso).hexdigest()
        photos.append(dict(user_id=user, photo_path="torso.jpg", photo_sha256=torso_sha,
                           status="faces" if found else "no_face", n_faces=found, width=torso.shape[1],
                           height=torso.shape[0], images_part=PART))
        images.append(dict(user_id=user, photo_sha256=torso_sha, face_index=None, jpeg=_jpeg(torso)))
        broken = f"<img src=x onerror=window.__xss=2>-{user[:5]}.png"
        photos.append(dict(user_id=user, photo_path=broken, photo_sha256=None, status="failed", n_faces=0,
                           width=None, height=None, images_part=None))
        failure = dict(user_id=user, photo_path=broken, stage="decode",
                       error="<script>window.__xss=3</script> cannot identify image file")
        people = sorted({n for n in identity_of if n})
        centres = {n: np.mean([e for e, m in zip(embeddings, identity_of) if m == n], axis=0) for n in people}
        clusters = []
        for face, emb, member in zip(faces, embeddings, identity_of):
            pid = people.index(member) if member else -1
            row = dict(user_id=user, face_key=face["face_key"], photo_sha256=face["photo_sha256"],
                       face_index=face["face_index"], person_id=pid,
                       cluster_size=identity_of.count(member) if member else 0,
                       distance_to_centre=float(np.linalg.norm(emb - centres[member])) if member else 0.0)
            if user == "alice":
                row["name"] = NAMES.get(member)
                row["unclustered_reason"] = IGNORED_REASON if face["photo_path"].startswith(IGNORED) else None
            clusters.append(row)
        _write(out, "photos", PHOTOS, photos)
        _write(out, "faces", faces_schema(128), faces)
        _write(out, "images", IMAGES, images)
        _write(out, "clusters", CLUSTERS, clusters)
        _write(out, "failures", FAILURES, [failure])
        if user == "alice":
            _write(out, "people", PEOPLE, [
                dict(user_id=user, person_id=pid, name=NAMES.get(n), match_distance=None,
                     face_count=identity_of.count(n), confirmed=n == CONFIRMED,
                     name_source="user" if n == CONFIRMED else "known_people" if n in NAMES else None)
                for pid, n in enumerate(people)])
        if user == HOSTILE_USER:
            named_people = people_table(user, np.array([c["person_id"] for c in clusters]), np.stack(embeddings),
                                        np.stack(known), np.array([n for _, _, n in KNOWN]), NAME_THRESHOLD,
                                        NAME_MARGIN)
            old = [f for f in PEOPLE if f.name not in ("confirmed", "name_source")]  # as before corrections
            _write(out, "people", pa.schema(old), named_people.select([f.name for f in old]).to_pylist())
    # A user whose only photo failed still gets a row on the index.
    _write(out, "photos", PHOTOS, [dict(user_id="carol", photo_path="scan.heic", photo_sha256=None,
                                        status="failed", n_faces=0, width=None, height=None, images_part=None)])
    _write(out, "failures", FAILURES, [dict(user_id="carol", photo_path="scan.heic", stage="read",
                                            error="unsupported format")])
    return out


@pytest.fixture(scope="module")
def report(library: Path) -> Path:
    """Small page sizes so that both people pages and person pages paginate."""
    return Path(build_report(str(library), people_per_page=3, faces_per_page=4)).parent


def _expected(out: Path) -> dict[str, dict[str, int]]:
    """Counts read straight from the Parquet files, independent of the report code."""
    def table(name: str) -> pa.Table:
        return pa.concat_tables([pq.read_table(f) for f in sorted((out / name).glob("user_id=*/*.parquet"))],
                                promote_options="default")
    photos, faces, clusters, failures = (table(n) for n in ("photos", "faces", "clusters", "failures"))
    users = sorted(set(photos.column("user_id").to_pylist()))
    result = {}
    for u in users:
        pids = [p for uid, p in zip(clusters.column("user_id").to_pylist(), clusters.column("person_id").to_pylist())
                if uid == u]
        result[u] = {"photos": photos.column("user_id").to_pylist().count(u),
                     "faces": faces.column("user_id").to_pylist().count(u),
                     "people": len({p for p in pids if p >= 0}), "unclustered": pids.count(-1),
                     "failures": failures.column("user_id").to_pylist().count(u)}
    return result


def _rows(out: Path, table: str, user: str) -> list[dict]:
    """One user's rows of a table, read straight from its Parquet file."""
    return pq.read_table(next((out / table).glob(f"user_id={quote(user, safe='')}/*.parquet"))).to_pylist()


def _person_sizes(out: Path, user: str) -> list[int]:
    """Face counts of the user's people, largest first, from clusters/."""
    pids = [r["person_id"] for r in _rows(out, "clusters", user) if r["person_id"] >= 0]
    return sorted((pids.count(p) for p in set(pids)), reverse=True)


class _Links(html.parser.HTMLParser):
    """Every href/src of a page, and the src of each of its scripts (and any script text)."""
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.scripts: list[str | None] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [v for k, v in attrs if k in ("href", "src") and v is not None]
        if tag == "script":
            self.scripts.append(dict(attrs).get("src"))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data


def test_fixture_is_real(library: Path) -> None:
    """The detector found faces on real photos, several people per user and some unclustered faces."""
    counts = _expected(library)
    assert counts["alice"]["people"] >= 4 and counts["alice"]["faces"] >= 20
    assert counts[HOSTILE_USER]["people"] == 2
    statuses = [r["status"] for r in _rows(library, "photos", "alice")]
    assert statuses.count("no_face") == 1 and statuses.count("failed") == 1
    assert counts["alice"]["unclustered"] >= 2 and counts["carol"] == dict(photos=1, faces=0, people=0,
                                                                             unclustered=0, failures=1)


def test_files_are_static_self_contained_and_escaped(report: Path) -> None:
    pages = sorted(report.rglob("*.html"))
    assert len(pages) > 20
    thumbs, previews = list(report.glob("u-*/faces/*.jpg")), list(report.glob("u-*/photos/*.jpg"))
    assert thumbs and previews and all(Image.open(p).size == (150, 150) for p in thumbs)
    assert all(max(Image.open(p).size) <= PREVIEW_SIDE for p in previews)  # previews, not full photos
    for page in pages:
        text = page.read_text(encoding="utf-8")
        parser = _Links()
        parser.feed(text)
        # the only scripts: the editor and its user's data (on a user's people, person and unclustered pages)
        editor = page.parent != report and page.name.startswith(("index", "person-", "unclustered"))
        assert parser.scripts == (["edit-data.js", "../assets/edit.js"] if editor else []), page
        assert not parser.script_text, f"inline script in {page.name}"
        text = text.replace('<script src="edit-data.js" defer></script>', "").replace(
            '<script src="../assets/edit.js" defer></script>', "")
        for raw in ("<img src=x", "<script", "<b>", "'single'"):
            assert raw not in text, f"{raw!r} printed unescaped in {page.name}"
        for link in parser.links:
            parts = urlsplit(link)
            assert not parts.scheme and not parts.netloc and not link.startswith("/"), f"{link} in {page.name}"
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            assert target.is_relative_to(report.resolve()) and target.is_file(), f"broken {link} in {page.name}"
    # Report file names come from hashes and ids only.
    assert all(all(c.isalnum() or c in "-._" for c in p.name) for p in report.rglob("*"))


def edit_data(report: Path, user: str) -> dict:
    """The user's edit-data.js (people and their face keys for the corrections editor), checked to be
    one JSON assignment in which no <, > or & appears, whatever the names and user ids."""
    prefix = "window.facegroupEdit = "
    text = (report / f"u-{digest(user, 16)}" / "edit-data.js").read_text(encoding="utf-8")
    assert text.startswith(prefix) and text.endswith(";\n") and not set("<>&") & set(text)
    return json.loads(text[len(prefix):-2])


def test_edit_data_lists_every_face(library: Path, report: Path) -> None:
    """Each person's every face key is there: person pages are paginated, merges and moves need all."""
    for user in ("alice", HOSTILE_USER):
        data = edit_data(report, user)
        expected: dict[int, set[str]] = {}
        for row in _rows(library, "clusters", user):
            if row["person_id"] >= 0:
                expected.setdefault(row["person_id"], set()).add(row["face_key"])
        assert data["user"] == user and {p["id"]: set(p["faces"]) for p in data["people"]} == expected
        assert all(len(p["faces"]) == len(expected[p["id"]]) for p in data["people"])
    assert XSS_FLAG in [p["title"] for p in edit_data(report, "alice")["people"]]


def test_rebuild_is_identical_and_replaces(library: Path, report: Path) -> None:
    def tree() -> dict[str, str]:
        return {str(p.relative_to(report)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in report.rglob("*") if p.is_file()}
    before = tree()
    (report / "stale.html").write_text("old")
    assert main(["--output", str(library), "--people-per-page", "3", "--faces-per-page", "4"]) == 0
    assert tree() == before


def test_bad_output_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(FileNotFoundError, match="--output"):
        build_report(str(tmp_path / "missing"))
    assert main(["--output", str(tmp_path)]) == 2
    assert "no photos/" in capsys.readouterr().err


@pytest.fixture(scope="module")
def browser(report: Path):
    """Headless Chromium (fresh profile, no network features) on a local http.server serving the report."""
    assert CHROMIUM.is_file() and CHROMEDRIVER.is_file(), "install Debian chromium and chromium-driver"
    handler = functools.partial(type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                                directory=str(report))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = report.parent / "chromium-profile"
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.implicitly_wait(0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver, f"http://127.0.0.1:{server.server_port}/"
    finally:
        driver.quit()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)


def _wait_images(driver: webdriver.Chrome) -> None:
    """Wait until the images inside the viewport have loaded (or failed)."""
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all([...document.images].filter(i => i.getBoundingClientRect().top < innerHeight)"
        ".map(i => i.decode().catch(() => 0))).then(() => done())")


def _settle(driver: webdriver.Chrome, shot: str) -> None:
    """Check the page ran nothing, logged no error and decoded every image; save a full-page screenshot.

    The window is stretched to the page's height first, so lazy images below the fold load and are
    checked too, and the screenshot shows the whole page.
    """
    try:
        for _ in range(3):  # the page may grow with the window (photos sized by viewport height)
            width, height = driver.execute_script("return [outerWidth, outerHeight - innerHeight"
                                                  " + document.documentElement.scrollHeight]")
            if height <= driver.get_window_size()["height"]:
                break
            driver.set_window_size(width, min(height, 4000))
            _wait_images(driver)
        assert driver.execute_script("return window.__xss === undefined")
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text
        broken = driver.execute_script(
            "return [...document.images].filter(i => i.loading !== 'lazy' || i.getBoundingClientRect().top"
            " < innerHeight).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
        assert not broken, broken
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert not errors, errors
        driver.save_screenshot(str(ARTIFACTS / f"{shot}.png"))
    finally:
        driver.set_window_size(*WINDOW)


def _assert_boxes_on_faces(driver: webdriver.Chrome, boxes: list[list[float]], width: int) -> None:
    """Each face box drawn on the photo page sits where its face is shown on screen.

    boxes: x1,y1,x2,y2 in original photo pixels (photo `width` px wide), in face_index order. The photo
    may be shown scaled and letterboxed (object-fit: contain): its content box is computed from the
    image's natural size and its element's size.
    """
    shown = driver.execute_script("""
        const img = document.querySelector('.photo img'), r = img.getBoundingClientRect();
        const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
        return {left: r.left + (r.width - img.naturalWidth * s) / 2, top: r.top + (r.height - img.naturalHeight * s) / 2,
                scale: s * img.naturalWidth, rects: [...document.querySelectorAll('.photo rect.box')].map(e => {
                  const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; })};""")
    k = shown["scale"] / width
    assert len(shown["rects"]) == len(boxes)
    for rect, box in zip(shown["rects"], boxes):
        assert rect == pytest.approx([shown["left"] + box[0] * k, shown["top"] + box[1] * k,
                                      shown["left"] + box[2] * k, shown["top"] + box[3] * k], abs=1.0)


def _over_pages(driver: webdriver.Chrome, selector: str, attr: str | None = None) -> list[tuple[str, str | None]]:
    """(text or `attr`, href) of every `selector` element on a listing and the pages its pager links to,
    in page order (start on the listing's first page)."""
    start, found = driver.current_url, []
    for url in [start] + list(dict.fromkeys(a.get_attribute("href")
                                            for a in driver.find_elements(By.CSS_SELECTOR, ".pager a"))):
        driver.get(url)
        found += [(e.get_attribute(attr) if attr else e.text, e.get_attribute("href"))
                  for e in driver.find_elements(By.CSS_SELECTOR, selector)]
    driver.get(start)
    return found


def _served(report: Path, url: str) -> bytes:
    """The bytes of the report file behind a URL of the local server."""
    return (report / unquote(urlsplit(url).path).lstrip("/")).read_bytes()


def test_browse_people_in_chromium(browser, library: Path, report: Path) -> None:
    driver, base = browser
    expected = _expected(library)
    driver.get(base + "index.html")
    _wait_images(driver)
    rows = {r.find_element(By.CSS_SELECTOR, ".user-id").text: r
            for r in driver.find_elements(By.CSS_SELECTOR, "tr.user")}
    assert sorted(rows) == sorted(expected)  # the hostile user id shows as its literal text
    for user, counts in expected.items():
        shown = {k: int(rows[user].find_element(By.CSS_SELECTOR, f".n-{k}").text.replace(",", "")) for k in counts}
        assert shown == counts, user
    _settle(driver, "01-index")

    rows["alice"].find_element(By.CSS_SELECTOR, ".user-id a").click()
    _wait_images(driver)
    assert len(_over_pages(driver, "li.card")) == expected["alice"]["people"]
    stat = {d.find_element(By.TAG_NAME, "dt").text.lower(): d.find_element(By.TAG_NAME, "dd").text
            for d in driver.find_elements(By.CSS_SELECTOR, ".stat")}
    assert int(stat["people"]) == expected["alice"]["people"] and int(stat["faces"]) == expected["alice"]["faces"]
    assert int(stat["photos"]) == expected["alice"]["photos"] and int(stat["no face"]) == 1
    sizes = [int(c.text.split()[0]) for c in driver.find_elements(By.CSS_SELECTOR, "li.card .count")]
    assert sizes == _person_sizes(library, "alice")[:len(sizes)]  # largest first
    bars = [int(t.text or 0) for t in driver.find_elements(By.CSS_SELECTOR, ".chart svg text.n")]
    assert len(bars) >= 3 and sum(bars) == expected["alice"]["people"]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#unclustered + ul li.face")) == expected["alice"]["unclustered"]
    # faces too poor to recognise come last among the faces not grouped, with their reason
    tiles = driver.find_elements(By.CSS_SELECTOR, "#unclustered + ul li.face")
    low = [t for t in tiles if "low-quality" in t.get_attribute("class")]
    assert low and tiles[-len(low):] == low and all("low quality: blurred" in t.text for t in low)
    assert "too poor to recognise" in driver.find_element(By.ID, "unclustered").text
    ignored = [t for t in tiles if "ignored by you" in t.text]  # by the user's corrections
    assert len(ignored) == 1 and tiles.index(ignored[0]) == len(tiles) - len(low) - 1
    assert "cannot identify image file" in driver.find_element(By.CSS_SELECTOR, "table.failures").text
    _settle(driver, "02-user-alice")
    # people/ `confirmed` and `name_source` as badges under the name (a person with neither has none)
    cards = {t.split("\n")[0]: t.split("\n")[1:-1] for t, _ in _over_pages(driver, "li.card a")}
    assert cards["Colin Powell"] == ["confirmed", "named by you"] and cards["George W. Bush"] == ["known person"]
    assert cards["Person 3"] == []  # Tony_Blair: no name, not confirmed

    # George W. Bush's faces, closest to the cluster centre first, straight from Parquet.
    thumbs = {f"{sha}:{index}": jpeg for (sha, index), jpeg in user_images(str(library), "alice").items()}
    faces = {f["face_key"]: f | {"thumbnail": thumbs[f["face_key"]]} for f in _rows(library, "faces", "alice")}
    bush = [faces[c["face_key"]] for c in sorted(_rows(library, "clusters", "alice"),
                                                  key=lambda c: c["distance_to_centre"])
            if c["name"] == "George W. Bush"]
    card = driver.find_elements(By.CSS_SELECTOR, "li.card")[0]
    assert card.find_element(By.CSS_SELECTOR, ".name").text == "George W. Bush"
    assert _served(report, card.find_element(By.CSS_SELECTOR, "img.avatar").get_attribute("src")) \
        == bush[0]["thumbnail"]  # the representative face is the one closest to the centre
    assert [_served(report, i.get_attribute("src")) for i in card.find_elements(By.CSS_SELECTOR, ".strip img")] \
        == [f["thumbnail"] for f in bush[1:5]]
    card.find_element(By.TAG_NAME, "a").click()
    _wait_images(driver)
    assert driver.find_element(By.TAG_NAME, "h1").text == "George W. Bush"
    assert [t for t, _ in _over_pages(driver, "li.face a", "title")] == [f["photo_path"] for f in bush]
    assert len(bush) == sizes[0] == 6  # 6 photos of George W. Bush, on 2 pages of 4
    _settle(driver, "03-person")

    tile = driver.find_elements(By.CSS_SELECTOR, "li.face a")[0]
    photo_path = tile.get_attribute("title")
    tile.click()
    _wait_images(driver)
    target = urlsplit(driver.current_url).fragment
    rect = driver.find_element(By.CSS_SELECTOR, f"svg rect#{target}")
    box = next(f["box"] for f in faces.values() if f["photo_path"] == photo_path and f"f{f['face_index']}" == target)
    drawn = [float(rect.get_attribute(k)) for k in ("x", "y", "width", "height")]
    scale = PREVIEW_SIDE / 250
    assert drawn == pytest.approx([box[0] * scale, box[1] * scale, (box[2] - box[0]) * scale,
                                   (box[3] - box[1]) * scale], abs=0.06)
    assert driver.execute_script("return getComputedStyle(arguments[0]).stroke", rect) == "rgb(239, 68, 68)"
    _assert_boxes_on_faces(driver, [f["box"] for f in sorted(faces.values(), key=lambda f: f["face_index"])
                                    if f["photo_path"] == photo_path], 250)
    _settle(driver, "04-photo")


def test_hostile_names_show_as_text(browser, library: Path) -> None:
    driver, base = browser
    driver.get(base + "index.html")
    driver.find_element(By.LINK_TEXT, HOSTILE_USER).click()
    _wait_images(driver)
    assert driver.find_element(By.TAG_NAME, "h1").text == HOSTILE_USER
    assert sorted(c.text for c in driver.find_elements(By.CSS_SELECTOR, "li.card .name")) == [
        "Person 1", "Ариэль Шарон"]  # a name from the people/ table; Gerhard_Schroeder (person 1) has none
    assert not driver.find_elements(By.CSS_SELECTOR, ".badge")  # a people/ table without the corrections' columns
    page = driver.find_element(By.TAG_NAME, "body").text
    assert "<script>window.__xss=3</script> cannot identify image file" in page
    assert "<img src=x onerror=window.__xss=2>" in page
    _settle(driver, "05-user-hostile")

    photos = {}
    for person in dict(_over_pages(driver, "li.card a", "href")):
        driver.get(person)
        photos.update(_over_pages(driver, "li.face a", "title"))
    for i, name in enumerate((XSS_ALERT, QUOTED, NON_LATIN)):
        driver.get(photos[name])
        _wait_images(driver)
        assert driver.find_element(By.TAG_NAME, "h1").text == name.rsplit("/", 1)[-1]
        assert driver.find_element(By.CSS_SELECTOR, "p.path").text == name
        assert driver.execute_script("return document.querySelectorAll('img[src=\"x\"], script').length") == 0
        _settle(driver, f"06-photo-hostile-{i}")

    # The wide photo's two boxes stay on their faces, also in a narrow window where it is letterboxed.
    wide = sorted((f for f in _rows(library, "faces", HOSTILE_USER) if f["photo_path"] == WIDE),
                  key=lambda f: f["face_index"])
    assert len(wide) == 2
    driver.get(photos[WIDE])
    for size in (WINDOW, (560, 900)):
        driver.set_window_size(*size)
        _wait_images(driver)
        _assert_boxes_on_faces(driver, [f["box"] for f in wide], 500)
    assert driver.execute_script("const i = document.querySelector('.photo img');"
                                 "return i.height / i.width - i.naturalHeight / i.naturalWidth") > 0.1
    _settle(driver, "06-photo-wide-narrow")

    driver.get(base + "index.html")
    driver.find_element(By.LINK_TEXT, "alice").click()
    assert XSS_FLAG in dict(_over_pages(driver, "li.card .name"))  # a hostile known-person name
    _settle(driver, "07-user-alice-names")


def test_opens_from_disk(browser, report: Path) -> None:
    """Users open report/index.html straight from disk: images and styles load under file:// too."""
    driver, _ = browser
    driver.get((report / "index.html").as_uri())
    driver.find_element(By.LINK_TEXT, "alice").click()
    _wait_images(driver)
    assert driver.execute_script("return getComputedStyle(document.querySelector('.avatar')).borderRadius") == "50%"
    driver.find_elements(By.CSS_SELECTOR, "li.card a")[0].click()
    # the corrections editor runs there too, and keeps an edit across a reload
    driver.find_element(By.CSS_SELECTOR, 'section.edit button[data-do="rename"]').click()
    driver.find_element(By.CSS_SELECTOR, ".rename input").send_keys(" Jr.\n")
    driver.refresh()
    assert driver.find_element(By.TAG_NAME, "h1").text == "George W. Bush Jr."
    driver.find_element(By.CSS_SELECTOR, 'section.edit button[data-do="undo"]').click()
    assert driver.find_element(By.TAG_NAME, "h1").text == "George W. Bush"
    driver.find_elements(By.CSS_SELECTOR, "li.face a")[0].click()
    _wait_images(driver)
    assert driver.execute_script("return document.querySelector('.photo img').naturalWidth") == PREVIEW_SIDE
    _settle(driver, "08-photo-file-url")
