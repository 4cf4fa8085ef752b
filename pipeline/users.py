"""User ids: which names are accepted, and how they become output folder names.

A user id is the first path component under ``--input`` (or a manifest's ``user_id``).
It is kept verbatim in the Parquet ``user_id`` columns, and percent-encoded (RFC 3986,
UTF-8, only ``A-Z a-z 0-9 - . _ ~`` left as is) in the Hive folder name
``user_id=<encoded>``, so every id maps to exactly one safe folder name and back
(pyarrow's Hive partitioning decodes it: ``segment_encoding="uri"``). Rejected:
empty ids, ``.``/``..``, ids starting with ``.`` (hidden folders such as ``.Trash``),
ids containing ``/`` or ``\\``, control/format/unassigned/surrogate characters (which
includes undecodable bytes in directory names), and ids whose encoded form exceeds
200 characters (file systems cap a name at 255 bytes).
"""
from __future__ import annotations

import hashlib
import unicodedata
from urllib.parse import quote

MAX_ENCODED_LENGTH = 200
USER_FOLDER_PREFIX = "user_id="


def user_id_problem(user_id: str) -> str | None:
    """Why `user_id` is not an acceptable user id, or None when it is."""
    if not user_id:
        return "empty user id"
    if user_id in (".", ".."):
        return f"user id {user_id!r} is a relative path component"
    if "/" in user_id or "\\" in user_id:
        return "user id contains a path separator"
    if user_id.startswith("."):
        return "hidden folder (user id starts with '.')"
    if any(unicodedata.category(c).startswith("C") for c in user_id):
        return "user id contains control, format or undecodable characters"
    if len(encode_user_id(user_id)) > MAX_ENCODED_LENGTH:
        return f"user id longer than {MAX_ENCODED_LENGTH} characters once percent-encoded"
    return None


def encode_user_id(user_id: str) -> str:
    """Percent-encoded form of `user_id`, safe as one path component on every file system."""
    return quote(user_id, safe="", errors="strict")


def user_folder(user_id: str) -> str:
    """Hive partition folder name of `user_id` (``user_id=<encoded>``)."""
    return USER_FOLDER_PREFIX + encode_user_id(user_id)


def user_key(user_id: str) -> int:
    """Non-negative 63-bit integer grouping key of `user_id`.

    Integer keys hash the same in every worker process; string keys are hashed with
    per-process salt by Python, which breaks GroupByKey across Dask workers
    (apache/beam#29365). Values still carry the user id, so a collision cannot mix users.
    """
    return int.from_bytes(hashlib.sha256(user_id.encode("utf-8")).digest()[:8], "big") >> 1
