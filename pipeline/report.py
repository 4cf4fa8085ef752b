"""Static HTML report of the pipeline's Parquet outputs: browse each user's people like a photo app.

Why: users judge the grouping by looking at it, and fix it there. The report is made from photos/,
faces/, clusters/, failures/, people/ and images/ alone (no re-detection), works offline as plain files, and
pages big users so that a user with 10,000 faces opens fast. The pipeline writes each user's pages on a worker
right after the user's tables (`user_report`, through Beam's FileSystems: any file system), and the index from
small per-user summaries in its last step (`write_index`; pipeline.finish); `python -m pipeline.report`
rebuilds the same files from the tables. Every printed value is HTML-escaped by `el`; the only
scripts are the report's own files (every page carries a Content-Security-Policy allowing scripts from
the report itself and nothing inline): assets/edit.js, the corrections editor (rename, merge, move,
ignore; kept in the browser's localStorage and downloaded as a corrections file for `--corrections`),
reads the user's people and their face keys from the user's edit-data.js, written here as JSON.

Layout under <output>/report/ (file names come from hashes and integer ids, never from input names):
    index.html                         every user with counts and their largest people
    assets/report.css, assets/icon.svg, assets/edit.js
    u-<h>/index.html, index-<n>.html   a user's summary, size chart and people pages
    u-<h>/edit-data.js                 the user's people, every face key of each, for the editor
    u-<h>/person-<id>[-<n>].html       every face of one person, closest to the cluster centre first
    u-<h>/unclustered[-<n>].html       faces left unclustered (person_id -1)
    u-<h>/failures[-<n>].html          photos that failed, with stage and error
    u-<h>/photo-<h>.html               a photo's preview with every face box drawn over it
    u-<h>/faces/<h>.jpg, u-<h>/photos/<h>.jpg   thumbnails and previews copied from images/
"""
from __future__ import annotations

import argparse
import hashlib
import html
import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import quote

import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from PIL import Image, UnidentifiedImageError

from pipeline.corrections import IGNORED_REASON
from pipeline.images import read_images
from pipeline.object_store import has_folders, remove_folder
from pipeline.tables import read_user_table, table_users

PEOPLE_PER_PAGE = 120
FACES_PER_PAGE = 300
STRIP_FACES = 4          # faces shown in a person card besides the representative one
USER_PAGE_FACES = 24     # unclustered faces previewed on the user page
USER_PAGE_FAILURES = 20  # failures previewed on the user page
INDEX_AVATARS = 6        # largest people shown per user on the index
ASSETS = ("report.css", "icon.svg", "edit.js")
CSP = ("default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; base-uri 'none'; "
       "form-action 'none'")
EDIT_DATA = "edit-data.js"
# Editor actions on the faces selected on a page (the button labels; assets/edit.js does the rest).
FACE_ACTIONS = {"not": "Not this person", "move": "Move to person…", "new": "New person",
                "ignore": "Ignore (not a face / a stranger)"}
NAME_SOURCES = {"user": "named by you", "known_people": "known person"}
VOID = frozenset({"img", "meta", "link", "br", "input"})
LABEL_EM = 0.66  # average width of a bold sans-serif character, in font sizes (to fit box labels)

#: The columns the report reads of each table (embeddings are never loaded). Columns that tables
#: written before them lack read as null: clusters/ `name` (a known person's name may also come from
#: people/), people/ `confirmed`, `name_source` and clusters/ `unclustered_reason` (pipeline.corrections).
COLUMNS = {"photos": ["photo_path", "photo_sha256", "status", "width", "height", "images_part"],
           "faces": ["photo_path", "photo_sha256", "face_index", "face_key", "box", "quality_reason"],
           "clusters": ["face_key", "person_id", "distance_to_centre", "name", "unclustered_reason"],
           "people": ["person_id", "name", "confirmed", "name_source"],
           "failures": ["photo_path", "stage", "error"]}
REPORT = "report"
#: Where a user's JPEGs come from: (images/ parts, wanted (photo_sha256, face_index or None for the
#: preview)) -> (photo_sha256, face_index, jpeg) of those found (pipeline.images.read_images).
ImageSource = Callable[[set[str], set[tuple[str, int | None]]], Iterator[tuple[str, int | None, bytes]]]


class Folder:
    """A folder of the report on any file system (Beam's FileSystems: local, s3://, gs://...)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, name: str, data: str | bytes) -> None:
        """Write the file `name` (a relative path) with `data` (text as UTF-8)."""
        raw = data.encode("utf-8") if isinstance(data, str) else data
        with FileSystems.create(FileSystems.join(self.path, name), mime_type="application/octet-stream",
                                compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(raw)


def stored_images(output: str, user_id: str) -> ImageSource:
    """The ImageSource of a user's images/ folder under `output`."""
    return lambda parts, wanted: read_images(output, user_id, parts, wanted)


class Html(str):
    """Markup that is already escaped; any other value placed in a page is escaped by `el`."""


def _flatten(children: Iterable[object]) -> Iterable[str]:
    for child in children:
        if child is None:
            continue
        if isinstance(child, Html):
            yield child
        elif isinstance(child, (list, tuple)) or hasattr(child, "__next__"):
            yield from _flatten(child)
        else:
            yield html.escape(str(child), quote=True)


def el(tag: str, attrs: dict[str, object] | None = None, *children: object) -> Html:
    """One element: attribute values and non-`Html` children are HTML-escaped (None/False drop an attribute)."""
    out = [f"<{tag}"]
    for name, value in (attrs or {}).items():
        if value is None or value is False:
            continue
        out.append(f" {name}" if value is True else f' {name}="{html.escape(str(value), quote=True)}"')
    out.append(">")
    if tag in VOID:
        return Html("".join(out))
    out.extend(_flatten(children))
    out.append(f"</{tag}>")
    return Html("".join(out))


def digest(text: str, n: int = 20) -> str:
    """Hex name for a report file derived from an id, so input names never reach the file system."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def href(name: str, fragment: str | None = None) -> str:
    """Relative link inside the report, URL-encoded."""
    return quote(name, safe="/-._~") + (f"#{quote(fragment, safe='')}" if fragment else "")


def page_name(stem: str, page: int) -> str:
    """File of the page-th (1-based) page of a paginated listing."""
    return f"{stem}.html" if page == 1 else f"{stem}-{page}.html"


def plural(n: int, word: str, words: str | None = None) -> str:
    """'1 face', '2 faces' (or the given plural)."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {words or word + 's'}"


@dataclass
class Face:
    """One detected face; `box` is x1,y1,x2,y2 in original photo pixels."""
    key: str
    photo: str
    path: str
    index: int
    box: tuple[float, float, float, float]
    person: int = -1
    distance: float = 0.0
    thumb: str | None = None  # file under faces/, None when the thumbnail is missing
    low_quality: str | None = None  # why the face is below the quality gate (never in a person)
    ignored: bool = False  # the user's corrections keep it out of people (clusters/ unclustered_reason)


@dataclass
class Person:
    pid: int
    name: str | None
    faces: list[Face]  # closest to the cluster centre first: faces[0] is the representative
    confirmed: bool = False  # people/ `confirmed`: the user's corrections decided this person
    name_source: str | None = None  # people/ `name_source`: "user", "known_people" or unknown

    @property
    def title(self) -> str:
        return self.name or f"Person {self.pid}"


@dataclass
class Photo:
    """A photo with faces (keyed by content hash); width, height are its original displayed size."""
    sha: str
    paths: list[str]
    width: int | None
    height: int | None
    faces: list[Face] = field(default_factory=list)
    preview: str | None = None             # file under photos/
    preview_size: tuple[int, int] | None = None


@dataclass
class UserReport:
    user_id: str
    folder: str
    statuses: dict[str, int]
    people: list[Person]
    unclustered: list[Face]
    failures: list[tuple[str, str, str]]   # (photo_path, stage, error)
    photos: dict[str, Photo]

    @property
    def n_faces(self) -> int:
        return sum(len(p.faces) for p in self.people) + len(self.unclustered)


@dataclass
class UserSummary:
    """What the index shows of a user (kept instead of the full UserReport)."""
    user_id: str
    folder: str
    n_photos: int
    n_faces: int
    n_people: int
    n_unclustered: int
    n_failures: int
    top: list[tuple[str, Face]]  # (title, representative face) of the largest people


def rows(table: pa.Table | None, columns: list[str]) -> list[dict]:
    """The rows of one user's table as dicts of `columns`; a column the table lacks (written
    before it existed) reads as None, a missing table as no rows."""
    if table is None:
        return []
    present = [c for c in columns if c in table.column_names]
    found = table.select(present).to_pylist()
    return [{c: row.get(c) for c in columns} for row in found]


def image_size(data: bytes | None) -> tuple[int, int] | None:
    """(width, height) of a JPEG, None when it is missing or not an image (shown as a placeholder)."""
    if data is None:
        return None
    try:
        return Image.open(io.BytesIO(data)).size
    except UnidentifiedImageError:
        return None


def load_user(user_id: str, tables: dict[str, pa.Table | None], images: ImageSource, folder: Folder) -> UserReport:
    """Join one user's tables (pipeline.user_tables.TABLES by name) and write its thumbnails and
    previews, read from `images`, into `folder`/faces/ and `folder`/photos/."""
    statuses = {"faces": 0, "no_face": 0, "failed": 0}
    photo_rows = rows(tables.get("photos"), COLUMNS["photos"])
    for row in photo_rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1

    faces: dict[str, Face] = {}
    for row in rows(tables.get("faces"), COLUMNS["faces"]):
        faces.setdefault(row["face_key"], Face(row["face_key"], row["photo_sha256"], row["photo_path"],
                                               row["face_index"], tuple(row["box"]),
                                               low_quality=row["quality_reason"]))
    names: dict[int, set[str]] = {}
    for row in rows(tables.get("clusters"), COLUMNS["clusters"]):
        face = faces.get(row["face_key"])
        if face is None:
            continue
        face.person, face.distance = row["person_id"], row["distance_to_centre"]
        face.ignored = row["unclustered_reason"] == IGNORED_REASON
        if row["name"]:
            names.setdefault(face.person, set()).add(row["name"])
    marks: dict[int, tuple[bool, str | None]] = {}  # person id -> (confirmed, name_source)
    for row in rows(tables.get("people"), COLUMNS["people"]):
        if row["name"]:
            names.setdefault(row["person_id"], set()).add(row["name"])
        marks[row["person_id"]] = bool(row["confirmed"]), row["name_source"]

    photos: dict[str, Photo] = {}
    for face in sorted(faces.values(), key=lambda f: (f.photo, f.index, f.key)):
        photos.setdefault(face.photo, Photo(face.photo, [], None, None)).faces.append(face)
    parts: set[str] = set()
    for row in sorted(photo_rows, key=lambda r: r["photo_path"]):
        photo = photos.get(row["photo_sha256"])
        if photo is not None:
            photo.paths.append(row["photo_path"])
            photo.width, photo.height = row["width"], row["height"]
            if row["images_part"]:
                parts.add(row["images_part"])
    for photo in photos.values():
        photo.paths = photo.paths or sorted({f.path for f in photo.faces})

    by_image = {(f.photo, f.index): f for f in faces.values()}
    wanted = set(by_image) | {(sha, None) for sha in photos}
    for sha, index, data in images(parts, wanted):
        size = image_size(data)
        if size is None:
            continue
        if index is None:
            photo = photos[sha]
            photo.preview, photo.preview_size = f"{digest(sha)}.jpg", size
            folder.write(f"photos/{photo.preview}", data)
        else:
            face = by_image[(sha, index)]
            face.thumb = f"{digest(face.key)}.jpg"
            folder.write(f"faces/{face.thumb}", data)

    members: dict[int, list[Face]] = {}
    for face in faces.values():
        members.setdefault(face.person, []).append(face)
    # faces alone first, then those the user ignored, low-quality faces (never grouped) last, apart
    unclustered = sorted(members.pop(-1, []),
                         key=lambda f: (f.low_quality is not None, f.ignored, f.path, f.index, f.key))
    people = [Person(pid, min(names[pid]) if pid in names else None, sorted(fs, key=lambda f: (f.distance, f.key)),
                     *marks.get(pid, (False, None))) for pid, fs in members.items() if pid >= 0]
    people.sort(key=lambda p: (-len(p.faces), p.pid))
    failures = sorted((r["photo_path"], r["stage"], r["error"])
                      for r in rows(tables.get("failures"), COLUMNS["failures"]))
    return UserReport(user_id, user_dir(user_id), statuses, people, unclustered, failures, photos)


# ---------------------------------------------------------------- page pieces

def page(title: str, crumbs: list[tuple[str, str | None]], body: object, depth: int, edit: bool = False) -> str:
    """A whole document; `depth` is how many folders below report/ it lives (for asset links). `edit`: a
    page of a user's folder that loads the corrections editor (the user's edit-data.js, then edit.js)."""
    up = "../" * depth
    trail = []
    for i, (label, link) in enumerate(crumbs):
        if i:
            trail.append(el("span", {"class": "sep"}, "›"))
        trail.append(el("a", {"href": link}, label) if link else el("span", {"class": "here"}, label))
    head = el("head", {},
              el("meta", {"charset": "utf-8"}),
              el("meta", {"http-equiv": "Content-Security-Policy", "content": CSP}),
              el("meta", {"name": "referrer", "content": "no-referrer"}),
              el("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}),
              el("title", {}, title),
              el("link", {"rel": "icon", "href": href(up + "assets/icon.svg")}),
              el("link", {"rel": "stylesheet", "href": href(up + "assets/report.css")}),
              [el("script", {"src": href(src), "defer": True}) for src in (EDIT_DATA, up + "assets/edit.js")]
              if edit else None)
    body_el = el("body", {},
                 el("header", {"class": "bar"}, el("nav", {"class": "crumbs"}, trail)),
                 el("main", {}, body),
                 el("footer", {}, "facegroup report · static files, no network"))
    return "<!doctype html>\n" + el("html", {"lang": "en"}, head, body_el) + "\n"


def thumb(face: Face, cls: str | None, alt: str, size: int, timing: str | None = None) -> Html:
    """A face thumbnail (lazy), or a grey placeholder when the pipeline stored none."""
    if face.thumb is None:
        return el("span", {"class": f"noimg {cls or ''}".strip(), "role": "img", "aria-label": alt})
    return el("img", {"class": cls, "src": href(f"faces/{face.thumb}"), "alt": alt, "width": size, "height": size,
                      "loading": "lazy", "decoding": "async", "elementtiming": timing})


def stats(figures: list[tuple[str, str]]) -> Html:
    return el("dl", {"class": "stats"}, [el("div", {"class": "stat"}, el("dt", {}, k), el("dd", {}, v))
                                         for k, v in figures])


def pager(stem: str, current: int, pages: int) -> Html | None:
    """Links to every page of a listing (none when it fits on one page)."""
    if pages <= 1:
        return None
    return el("nav", {"class": "pager", "aria-label": "pages"},
              [el("span", {}, n) if n == current else el("a", {"href": href(page_name(stem, n))}, n)
               for n in range(1, pages + 1)])


def size_chart(people: list[Person]) -> Html | None:
    """Inline-SVG histogram of people by face count, in power-of-two bins (1, 2, 3-4, 5-8, ...)."""
    if not people:
        return None
    counts: dict[int, int] = {}
    for person in people:
        b = (len(person.faces) - 1).bit_length()
        counts[b] = counts.get(b, 0) + 1
    bins = range(max(counts) + 1)
    top = max(counts.values())
    bar_w, gap, plot_h, base = 50, 8, 90, 112
    width = 16 + len(bins) * (bar_w + gap)
    parts: list[Html] = [el("line", {"class": "axis", "x1": 8, "y1": base, "x2": width - 8, "y2": base})]
    for i, b in enumerate(bins):
        lo, hi = (1, 1) if b == 0 else (2 ** (b - 1) + 1, 2 ** b)
        label = str(lo) if lo == hi else f"{lo}–{hi}"
        n = counts.get(b, 0)
        h = round(max(plot_h * n / top, 2 if n else 0), 1)
        x = 12 + i * (bar_w + gap)
        parts.append(el("g", {},
                        el("title", {}, f"{plural(n, 'person', 'people')} with {label} faces"),
                        el("rect", {"class": "bar", "x": x, "y": base - h, "width": bar_w, "height": h, "rx": 3}),
                        el("text", {"class": "n", "x": x + bar_w / 2, "y": base - h - 4, "text-anchor": "middle"}, n or ""),
                        el("text", {"x": x + bar_w / 2, "y": base + 14, "text-anchor": "middle"}, label)))
    parts.append(el("text", {"x": width / 2, "y": base + 32, "text-anchor": "middle"}, "faces per person"))
    return el("figure", {"class": "chart"},
              el("svg", {"width": width, "height": base + 38, "viewBox": f"0 0 {width} {base + 38}",
                         "role": "img", "aria-label": "people by number of faces"}, parts))


def badges(person: Person) -> list[Html]:
    """What the user's corrections decided about a person (people/ `confirmed`, `name_source`)."""
    marks = []
    if person.confirmed:
        marks.append(el("span", {"class": "badge confirmed", "title": "decided by your corrections"}, "confirmed"))
    if person.name and person.name_source in NAME_SOURCES:
        marks.append(el("span", {"class": f"badge by-{person.name_source}"}, NAME_SOURCES[person.name_source]))
    return marks


def person_card(person: Person, first: bool) -> Html:
    rep = person.faces[0]
    return el("li", {"class": "card", "data-person": person.pid}, el(
        "a", {"href": href(page_name(f"person-{person.pid}", 1))},
        thumb(rep, "avatar", person.title, 128, "first-card" if first else None),
        el("span", {"class": "name"}, person.title), el("span", {"class": "badges"}, badges(person)),
        el("span", {"class": "count"}, plural(len(person.faces), "face")),
        el("span", {"class": "strip"}, [thumb(f, None, "", 30) for f in person.faces[1:1 + STRIP_FACES]])))


def face_tile(face: Face, pick: bool) -> Html:
    """A face linking to its photo page, where its box is highlighted (`#f<index>` target); `pick` adds
    the checkbox that selects it for the corrections editor."""
    name = face.path.replace("\\", "/").rsplit("/", 1)[-1]
    return el("li", {"class": "face low-quality" if face.low_quality else "face", "data-key": face.key},
              el("input", {"type": "checkbox", "class": "pick", "aria-label": f"select {name}"}) if pick else None,
              el("a", {"href": href(f"photo-{digest(face.photo)}.html", f"f{face.index}"), "title": face.path},
                 thumb(face, None, face.path, 124), el("span", {"class": "cap"}, name),
                 el("span", {"class": "cap reason"}, f"low quality: {face.low_quality}")
                 if face.low_quality else None,
                 el("span", {"class": "cap reason"}, "ignored by you") if face.ignored else None))


def edit_tools(pid: int | None, face_actions: tuple[str, ...]) -> Html:
    """The corrections editor's controls, hidden until assets/edit.js shows them (a page without
    scripts shows none): pending edits, undo and download on every page of a user; on a person
    page (`pid`) rename and merge, and the chooser of a person to merge or move into; `face_actions`
    act on the faces selected on the page."""
    def button(action: str, label: str, disabled: bool = False) -> Html:
        return el("button", {"type": "button", "data-do": action, "disabled": disabled}, label)
    person = [button("rename", "Rename"), button("merge", "Merge into…"),
              el("span", {"class": "rename", "hidden": True},
                 el("input", {"type": "text", "aria-label": "new name", "maxlength": 200}),
                 button("save-name", "Save"), button("close", "Cancel"))] if pid is not None else []
    faces = [el("span", {"class": "picked"}, "No face selected"),
             el("span", {"class": "face-actions"}, [button(a, FACE_ACTIONS[a], disabled=True) for a in face_actions])
             ] if face_actions else []
    return el("section", {"class": "edit", "hidden": True, "data-person": pid, "aria-label": "corrections"},
              el("div", {"class": "tools"}, person, faces) if person or faces else None,
              el("div", {"class": "chooser", "hidden": True},
                 el("p", {"class": "prompt"}), el("ul", {"class": "choices"}), button("close", "Cancel"))
              if pid is not None else None,
              el("div", {"class": "pending"},
                 el("span", {"class": "count"}, "No pending edits"), button("undo", "Undo", True),
                 button("download", "Download corrections", True),
                 el("span", {"class": "hint"}, "Edits stay in this browser until you download them; "
                                               "re-run the pipeline with --corrections FILE to apply them.")))


def edit_data(user: UserReport) -> str:
    """The user's edit-data.js: every person with all face keys, for the editor on paginated pages.

    JSON with <, > and & as \\u escapes (inert wherever it is read); `key`, a digest of the data and
    of the faces not grouped (ignored or not), keeps the edits of two reports apart in localStorage,
    among them the reports before and after a run applied the edits.
    """
    people = [{"id": p.pid, "title": p.title,
               "thumb": href(f"faces/{p.faces[0].thumb}") if p.faces[0].thumb else None,
               "faces": [f.key for f in p.faces]} for p in user.people]
    body = {"user": user.user_id, "people": people}
    alone = [[f.key, f.ignored] for f in user.unclustered]
    data = json.dumps({"key": digest(json.dumps([body, alone], ensure_ascii=True)), **body}, ensure_ascii=True,
                      separators=(",", ":"))
    for char in "<>&":
        data = data.replace(char, f"\\u{ord(char):04x}")
    return f"window.facegroupEdit = {data};\n"


def failure_table(failures: list[tuple[str, str, str]]) -> Html:
    rows = [el("tr", {}, el("td", {"class": "path"}, p), el("td", {}, s), el("td", {"class": "error"}, e))
            for p, s, e in failures]
    return el("table", {"class": "failures"},
              el("thead", {}, el("tr", {}, el("th", {}, "Photo"), el("th", {}, "Stage"), el("th", {}, "Error"))),
              el("tbody", {}, rows))


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


# ---------------------------------------------------------------- pages

def write_pages(base: Folder, stem: str, title: str, crumbs: list[tuple[str, str | None]], items: list,
                per_page: int, render: Callable[[list], Html], head: object = None, heading: object = None,
                intro: object = None, outro: object = None, edit: Html | None = None) -> list[list]:
    """Write `items` as <stem>.html, <stem>-2.html, ... (head, editor controls, heading, pager, listing,
    pager on each page; intro before the heading and outro at the end of page 1 only); returns the items
    of each page. Pages given `edit` (edit_tools) load the corrections editor."""
    pages = chunks(items, per_page)
    for n, chunk in enumerate(pages, 1):
        nav = pager(stem, n, len(pages))
        first = n == 1
        base.write(page_name(stem, n), page(
            title if first else f"{title} · page {n}",
            crumbs if first else crumbs[:-1] + [(crumbs[-1][0], page_name(stem, 1)), (f"page {n}", None)],
            [head, edit, intro if first else None, heading, nav, render(chunk), nav, outro if first else None], 1,
            edit is not None))
    return pages


def write_user(base: Folder, user: UserReport, people_per_page: int, faces_per_page: int) -> None:
    """Every page of one user into its folder: overview + people pages, person pages, unclustered,
    failures, photos."""
    home = [("All users", "../index.html"), (user.user_id, "index.html")]
    n_faces, n_people, n_unclustered = user.n_faces, len(user.people), len(user.unclustered)
    face_home: dict[str, tuple[str, str]] = {}  # face key -> (page holding it, label of its group)

    def faces_grid(chunk: list[Face], pick: bool = True) -> Html:
        return el("ul", {"class": "faces"}, [face_tile(f, pick) for f in chunk])

    figures = [("Photos", f"{sum(user.statuses.values()):,}"), ("With faces", f"{user.statuses['faces']:,}"),
               ("No face", f"{user.statuses['no_face']:,}"), ("Failed", f"{len(user.failures):,}"),
               ("Faces", f"{n_faces:,}"), ("People", f"{n_people:,}"),
               ("Grouped", f"{100 * (n_faces - n_unclustered) / n_faces:.0f}%" if n_faces else "–"),
               ("Largest", f"{len(user.people[0].faces):,}" if user.people else "–")]
    n_low = sum(f.low_quality is not None for f in user.unclustered)
    unclustered = [el("h2", {"id": "unclustered"}, f"Faces not grouped ({n_unclustered:,}"
                      + (f", {n_low:,} of them too poor to recognise, shown last)" if n_low else ")")),
                   faces_grid(user.unclustered[:USER_PAGE_FACES], pick=False) if user.unclustered
                   else el("p", {"class": "muted"}, "Every face belongs to a person."),
                   el("a", {"class": "more", "href": "unclustered.html"},
                      f"All {n_unclustered:,} faces not grouped →")
                   if n_unclustered > USER_PAGE_FACES else None]
    failures = [el("h2", {"id": "failures"}, f"Failed photos ({len(user.failures):,})"),
                failure_table(user.failures[:USER_PAGE_FAILURES]) if user.failures
                else el("p", {"class": "muted"}, "No photo failed."),
                el("a", {"class": "more", "href": "failures.html"}, f"All {len(user.failures):,} failures →")
                if len(user.failures) > USER_PAGE_FAILURES else None]
    write_pages(base, "index", f"{user.user_id} · people", [home[0], (user.user_id, None)], user.people,
                people_per_page, lambda chunk: el("ul", {"class": "people"}, [
                    person_card(p, p is user.people[0]) for p in chunk]) if chunk
                else el("p", {"class": "muted"}, "No people found."),
                head=el("h1", {}, user.user_id), heading=el("h2", {}, f"People ({n_people:,})"),
                intro=el("section", {"class": "overview"}, stats(figures), size_chart(user.people)),
                outro=[unclustered, failures], edit=edit_tools(None, ()))
    base.write(EDIT_DATA, edit_data(user))

    for person in user.people:
        head = el("div", {"class": "person-head"}, thumb(person.faces[0], "avatar", person.title, 112),
                  el("div", {}, el("h1", {}, person.title), el("span", {"class": "badges"}, badges(person)),
                     el("p", {"class": "muted"}, f"{plural(len(person.faces), 'face')} · most typical first")))
        stem = f"person-{person.pid}"
        pages = write_pages(base, stem, f"{person.title} · {user.user_id}", home + [(person.title, None)],
                            person.faces, faces_per_page, faces_grid, head=head,
                            edit=edit_tools(person.pid, tuple(FACE_ACTIONS)))
        face_home.update((f.key, (page_name(stem, n), person.title))
                         for n, chunk in enumerate(pages, 1) for f in chunk)

    title = "Faces not grouped"
    pages = write_pages(base, "unclustered", f"{title} · {user.user_id}", home + [(title, None)], user.unclustered,
                        faces_per_page, faces_grid, head=el("h1", {}, f"{title} ({n_unclustered:,})"),
                        edit=edit_tools(None, ("ignore",)))
    face_home.update((f.key, (page_name("unclustered", n), "not grouped"))
                     for n, chunk in enumerate(pages, 1) for f in chunk)
    title = "Failed photos"
    write_pages(base, "failures", f"{title} · {user.user_id}", home + [(title, None)], user.failures,
                faces_per_page, failure_table, head=el("h1", {}, f"{title} ({len(user.failures):,})"))

    for photo in user.photos.values():
        base.write(f"photo-{digest(photo.sha)}.html", photo_page(user, photo, home, face_home))


def photo_page(user: UserReport, photo: Photo, home: list[tuple[str, str | None]],
               face_home: dict[str, tuple[str, str]]) -> str:
    """The preview with each face box drawn in an SVG overlay; boxes are scaled by preview / original size."""
    width = photo.width or max(int(f.box[2]) for f in photo.faces) or 1
    height = photo.height or max(int(f.box[3]) for f in photo.faces) or 1
    pw, ph = photo.preview_size or (width, height)
    sx, sy = pw / width, ph / height
    font = round(max(pw, ph) / 40, 1)  # about 15 px at the displayed photo size
    boxes = []
    for face in photo.faces:
        link, label = face_home[face.key]
        x1, y1, x2, y2 = face.box[0] * sx, face.box[1] * sy, face.box[2] * sx, face.box[3] * sy
        ty = y1 - 5 if y1 - 5 > font else y2 + font
        tx = max(0.0, min(x1, pw - LABEL_EM * font * len(label)))  # keep the label inside the photo
        boxes.append(el("a", {"href": href(link)},
                        el("title", {}, label),
                        el("rect", {"id": f"f{face.index}", "class": "box", "x": f"{x1:.1f}", "y": f"{y1:.1f}",
                                    "width": f"{x2 - x1:.1f}", "height": f"{y2 - y1:.1f}"}),
                        el("text", {"class": "label", "x": f"{tx:.1f}", "y": f"{ty:.1f}", "font-size": font},
                           label)))
    name = photo.paths[0].replace("\\", "/").rsplit("/", 1)[-1]
    image = (el("img", {"src": href(f"photos/{photo.preview}"), "width": pw, "height": ph, "alt": photo.paths[0]})
             if photo.preview else el("svg", {"class": "noimg", "width": pw, "height": ph}))
    listing = el("ul", {"class": "faces"}, [
        el("li", {"class": "face"}, el("a", {"href": href(face_home[f.key][0])},
                                        thumb(f, None, face_home[f.key][1], 124),
                                        el("span", {"class": "cap"}, face_home[f.key][1])))
        for f in photo.faces])
    # The overlay letterboxes its viewBox like the image's object-fit: contain, so boxes stay on the faces
    # whatever size the page gives the photo.
    body = [el("h1", {}, name),
            el("div", {"class": "viewer"},
               el("figure", {"class": "photo"}, image,
                  el("svg", {"viewBox": f"0 0 {pw} {ph}", "aria-label": "face boxes"}, boxes)),
               el("aside", {"class": "details"},
                  stats([("Faces", str(len(photo.faces))), ("Size", f"{width} × {height}")]),
                  el("h2", {}, "Path" if len(photo.paths) == 1 else "Paths"),
                  [el("p", {"class": "path"}, p) for p in photo.paths],
                  el("h2", {}, "Faces in this photo"), listing))]
    return page(f"{name} · {user.user_id}", home + [(name, None)], body, 1)


def index_page(users: list[UserSummary]) -> str:
    rows = []
    for u in users:
        avatars = el("span", {"class": "avatars"}, [
            el("img", {"src": href(f"{u.folder}/faces/{f.thumb}"), "alt": title, "title": title, "width": 36,
                       "height": 36, "loading": "lazy"}) for title, f in u.top if f.thumb])
        rows.append(el("tr", {"class": "user"},
                       el("td", {"class": "user-id"}, el("a", {"href": href(f"{u.folder}/index.html")}, u.user_id)),
                       el("td", {}, avatars),
                       el("td", {"class": "num n-photos"}, f"{u.n_photos:,}"),
                       el("td", {"class": "num n-faces"}, f"{u.n_faces:,}"),
                       el("td", {"class": "num n-people"}, f"{u.n_people:,}"),
                       el("td", {"class": "num n-unclustered"}, f"{u.n_unclustered:,}"),
                       el("td", {"class": "num n-failures"}, f"{u.n_failures:,}")))
    head = el("tr", {}, el("th", {}, "User"), el("th", {}, "Largest people"),
              [el("th", {"class": "num"}, h) for h in ("Photos", "Faces", "People", "Not grouped", "Failures")])
    figures = [("Users", f"{len(users):,}"), ("Photos", f"{sum(u.n_photos for u in users):,}"),
               ("Faces", f"{sum(u.n_faces for u in users):,}"), ("People", f"{sum(u.n_people for u in users):,}"),
               ("Failures", f"{sum(u.n_failures for u in users):,}")]
    body = [el("h1", {}, "People in every library"), stats(figures), el("h2", {}, "Users"),
            el("table", {"class": "users"}, el("thead", {}, head), el("tbody", {}, rows))
            if users else el("p", {"class": "muted"}, "No users.")]
    return page("facegroup report", [("All users", None)], body, 0)


def user_dir(user_id: str) -> str:
    """The report folder of a user: a digest, so that input names never reach the file system."""
    return f"u-{digest(user_id, 16)}"


def user_report(report: str, user_id: str, tables: dict[str, pa.Table | None], images: ImageSource,
                people_per_page: int = PEOPLE_PER_PAGE, faces_per_page: int = FACES_PER_PAGE) -> UserSummary:
    """Write every page and image of one user under `report` (replacing what an earlier run
    left there) and return what the index shows of the user."""
    folder = Folder(FileSystems.join(report, user_dir(user_id)))
    remove_folder(folder.path)
    user = load_user(user_id, tables, images, folder)
    write_user(folder, user, people_per_page, faces_per_page)
    return UserSummary(user.user_id, user.folder, sum(user.statuses.values()), user.n_faces, len(user.people),
                       len(user.unclustered), len(user.failures),
                       [(p.title, p.faces[0]) for p in user.people[:INDEX_AVATARS]])


def write_index(report: str, users: list[UserSummary]) -> str:
    """The report's assets and index page (users sorted by id); returns the index's path."""
    folder = Folder(report)
    for name in ASSETS:
        folder.write(f"assets/{name}", resources.files("pipeline").joinpath("report_assets", name).read_bytes())
    folder.write("index.html", index_page(sorted(users, key=lambda u: u.user_id)))
    return FileSystems.join(report, "index.html")


def remove_stale_files(report: str, users: Iterable[str]) -> None:
    """Delete what `report` holds besides the index, the assets and the folders of `users`
    (left by earlier runs: users no longer in the input, files of an older layout)."""
    keep = {user_dir(u) for u in users} | {"index.html", "assets"}
    if has_folders(report):  # a local folder: its top-level entries, whole
        stale = [os.path.join(report, n) for n in sorted(os.listdir(report)) if n not in keep] \
            if os.path.isdir(report) else []
    else:  # an object store has files only
        stale = [m.path for m in FileSystems.match([FileSystems.join(report, "**")])[0].metadata_list
                 if m.path[len(report):].lstrip("/").split("/")[0] not in keep]
    if stale:
        FileSystems.delete(stale)


def build_report(output: str, people_per_page: int = PEOPLE_PER_PAGE, faces_per_page: int = FACES_PER_PAGE) -> str:
    """Rebuild <output>/report/ from the tables under <output> (any file system); returns the
    index.html path. The pipeline writes the same pages as it goes (pipeline.finish): the same
    tables always give byte-identical files."""
    if people_per_page < 1 or faces_per_page < 1:
        raise ValueError("--people-per-page and --faces-per-page must be >= 1")
    users = table_users(output, "photos") | table_users(output, "failures")
    if not users and not FileSystems.exists(FileSystems.join(output, "photos")):
        raise FileNotFoundError(f"--output {output}: no photos/ or failures/ table; run the pipeline first")
    report = FileSystems.join(output, REPORT)
    summaries = []
    for user_id in sorted(users):
        tables = {name: read_user_table(output, name, user_id, columns) for name, columns in COLUMNS.items()}
        summaries.append(user_report(report, user_id, tables, stored_images(output, user_id),
                                     people_per_page, faces_per_page))
    remove_stale_files(report, users)
    return write_index(report, summaries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report",
                                     description="Build the static HTML report from the pipeline's Parquet outputs.")
    parser.add_argument("--output", required=True, help="pipeline output folder holding photos/, faces/, clusters/, "
                                                        "failures/; the report goes to <output>/report/")
    parser.add_argument("--people-per-page", type=int, default=PEOPLE_PER_PAGE)
    parser.add_argument("--faces-per-page", type=int, default=FACES_PER_PAGE)
    args = parser.parse_args(argv)
    try:
        print(build_report(args.output, args.people_per_page, args.faces_per_page))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
