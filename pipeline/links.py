"""Where a symbolic link in a local library may lead (`--follow_links`).

Each user uploads a folder; a link in it must not turn another user's photo, or any file
the pipeline's account can read, into that user's photo. So by default (`user`) a local
photo is read only when its real path (every link along the path resolved) lies inside
the real path of the folder it was listed under: its user's folder, or the
`--known_people` folder. `anywhere` follows every link (a single-user set-up that links
photos in from elsewhere). Manifests and URIs are not confined: the operator wrote the
manifest, and object stores have no links.

The check resolves the path and the photo is then read at the resolved path, so a link
swapped after listing is still checked; a folder along the resolved path swapped for a
link between the check and the open is not (that needs openat2's RESOLVE_BENEATH).
"""
from __future__ import annotations

import os

#: --follow_links choices: confined to the user's folder (default), or followed anywhere.
FOLLOW_USER, FOLLOW_ANYWHERE = "user", "anywhere"
FOLLOW_LINKS = (FOLLOW_USER, FOLLOW_ANYWHERE)


class LinkLeavesFolder(OSError):
    """A link (to the file or along its path) that resolves outside its allowed folder."""


def confined(path: str, folder: str | None, what: str = "the user's folder") -> str:
    """The real path of local `path`, to read instead of `path`; LinkLeavesFolder when it
    lies outside the real path of `folder` (None: links may lead anywhere, `path` as is)."""
    if folder is None:
        return path
    real, real_folder = os.path.realpath(path), os.path.realpath(folder)
    if real == real_folder or os.path.commonpath([real, real_folder]) != real_folder:
        raise LinkLeavesFolder(f"link leaves {what}; not followed")
    return real
