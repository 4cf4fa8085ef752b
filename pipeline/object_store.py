"""Beam file systems that are object stores (s3://, gs://): folders, S3 buckets and clients.

Folders. An object store has no folders, only keys with a common prefix: Beam's
``FileSystems.exists`` is false for a "folder" there (no object has that exact key), and
``FileSystems.delete`` of a folder path without a trailing ``/`` deletes nothing, silently.
`folder_exists`, `folder_for_delete` and `remove_folder` say what the pipeline means by a
folder on every file system, and leave local folders to Beam's own calls, as before.

S3 buckets. `s3_bucket_problem` checks, before any work, that a bucket can be reached
(the launcher's one-line errors for a wrong endpoint, missing credentials or bucket).

S3 clients. Beam's S3 file system (``apache_beam.io.aws``) builds a new boto3 session and
client for every FileSystems call (exists, open, create, rename, match, delete): 0.1-0.3 s
of CPU each, loading botocore's service model again, which made a run on S3 spend most of
its time there (a client per photo read and per table written). Importing this module makes
Beam's S3 client module share one boto3 client per process and connection settings
(`share_s3_clients`; boto3's low-level clients are thread-safe). The connection still comes
from Beam's own --s3_* / --aws_* options, as Beam resolves them for each call; only the
client built from them is reused. It takes effect in every process that imports this module
(the launcher, and workers through the pipeline's modules that read or list files).
"""
from __future__ import annotations

import threading
from typing import Any

from apache_beam.io.filesystems import FileSystems


def has_folders(path: str) -> bool:
    """Whether the file system of `path` has real folders (local: yes; s3://, gs://: no)."""
    return FileSystems.get_filesystem(path).has_dirs()


def folder_exists(path: str) -> bool:
    """Whether the folder `path` exists; on an object store, whether any object lies under it."""
    if has_folders(path):
        return FileSystems.exists(path)
    return bool(FileSystems.match([FileSystems.join(path, "**")], limits=[1])[0].metadata_list)


def folder_for_delete(path: str) -> str:
    """`path` as FileSystems.delete must be given a folder to remove it whole: with a
    trailing ``/`` on object stores (every object under the prefix), as it is elsewhere."""
    return path if has_folders(path) else path.rstrip("/") + "/"


def remove_folder(path: str) -> None:
    """Delete the folder `path` and everything in it; nothing when it does not exist."""
    if folder_exists(path):
        FileSystems.delete([folder_for_delete(path)])


def s3_bucket_problem(location: str, options: Any) -> str | None:
    """Why the bucket of the s3:// `location` cannot be used with these pipeline options, in
    one line, or None. One request (HEAD bucket) outside Beam's retries: Beam retries a
    request that got no HTTP answer (no credentials, nothing listening at the endpoint) for
    about ten minutes before it fails. A refusal (403: e.g. no s3:ListBucket on a bucket whose
    objects may be written) is left to the calls that follow."""
    from apache_beam.io.aws.clients.s3 import boto3_client
    from botocore import exceptions

    bucket = location[len("s3://"):].split("/", 1)[0]
    try:
        boto3_client.Client(options=options).client.head_bucket(Bucket=bucket)
    except (exceptions.NoCredentialsError, exceptions.PartialCredentialsError) as exc:
        return f"{exc} (give --s3_access_key_id and --s3_secret_access_key, or configure AWS credentials)"
    except exceptions.ConnectionError as exc:
        return f"{exc} (check --s3_endpoint_url)"
    except exceptions.ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return f"bucket {bucket} does not exist"
    return None


_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()
_PLAIN = (str, bytes, int, float, bool, type(None))


class _SharedSession:
    """What Beam's S3 client module gets for ``boto3.session.Session()``: its ``client``
    returns this process's client for the same arguments (made once, from a session of its own)."""

    def __init__(self, boto3: Any) -> None:
        self._boto3 = boto3

    def client(self, *args: Any, **kwargs: Any) -> Any:
        if not all(isinstance(v, _PLAIN) for v in (*args, *kwargs.values())):
            return self._boto3.session.Session().client(*args, **kwargs)  # e.g. a Config: not shared
        key = repr((args, sorted(kwargs.items())))
        with _CLIENTS_LOCK:
            client = _CLIENTS.get(key)
            if client is None:
                client = _CLIENTS[key] = self._boto3.session.Session().client(*args, **kwargs)
        return client


class _Boto3:
    """boto3 as Beam's S3 client module sees it: the same module, but its sessions share clients."""

    def __init__(self, boto3: Any) -> None:
        self._boto3 = boto3
        self.session = _Sessions(boto3)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._boto3, name)


class _Sessions:
    def __init__(self, boto3: Any) -> None:
        self._boto3 = boto3

    def Session(self) -> _SharedSession:  # noqa: N802 (boto3's name)
        return _SharedSession(self._boto3)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._boto3.session, name)


def share_s3_clients() -> bool:
    """Make Beam's S3 file system reuse one boto3 client per connection settings in this
    process (idempotent); False where Beam's S3 support or boto3 is not installed."""
    try:
        from apache_beam.io.aws.clients.s3 import boto3_client
    except ImportError:
        return False
    found = getattr(boto3_client, "boto3", None)
    if found is None:
        return False
    if not isinstance(found, _Boto3):
        boto3_client.boto3 = _Boto3(found)
    return True


share_s3_clients()
