"""One storage root for every pipeline, addressed through Airflow's ObjectStoragePath.

`file://` locally and `s3://` in production: no task knows which one it runs on. Credentials for `s3://` come from
the Airflow connection, never from a second copy of the configuration.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from airflow.sdk import ObjectStoragePath

from tasks.common.settings import Settings

# The storage layout, relative to the root (documented in the README).
RAW = "raw"
DATASETS = "datasets"
MODELS = "models"
INCOMING = "incoming"
PREDICTIONS = "predictions"
COSTS = "costs"
SERVING = "serving"
BACKLOG = "backlog"  # classify_backlog's request files and transform outputs, per run


def storage_path(uri: str, conn_id: str | None = None) -> ObjectStoragePath:
    """An ObjectStoragePath for a URI; `s3://` paths use the given Airflow connection."""
    if "://" not in uri:
        raise ValueError(f"expected a URI with a scheme (file:// or s3://), got {uri!r}")
    if uri.startswith("s3://") and conn_id:
        return ObjectStoragePath(uri, conn_id=conn_id)
    return ObjectStoragePath(uri)


def local_path(uri: str, what: str = "the local backend") -> Path:
    """The file or directory behind a `file://` URI (or a plain path), for local processes that take plain paths
    (the trainer, the server); anything else is an error naming `what` needed it."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"{what} works on local files; {uri!r} is not a file:// URI")
    return Path(parsed.path)


def root(settings: Settings) -> ObjectStoragePath:
    return storage_path(settings.storage_uri, settings.aws_conn_id)


def fsspec_options(path: ObjectStoragePath) -> dict[str, Any]:
    """fsspec `storage_options` for libraries that take a URI (HF datasets), from the path's own filesystem."""
    if path.protocol == "file":
        return {}
    options = dict(path.fs.storage_options)
    creds = getattr(path.fs, "key", None), getattr(path.fs, "secret", None), getattr(path.fs, "token", None)
    for name, value in zip(("key", "secret", "token"), creds, strict=True):
        if value and name not in options:
            options[name] = value
    return options


def plain_uri(path: ObjectStoragePath) -> str:
    """The URI without the `conn_id@` part, for libraries outside Airflow."""
    return f"{path.protocol}://{path.path}" if path.protocol != "file" else f"file://{path.path}"


def write_bytes_atomic(path: ObjectStoragePath, data: bytes) -> None:
    """Readers never see a half-written file: S3 PUTs are atomic; local files go through a rename."""
    if path.protocol != "file":
        path.write_bytes(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(data)
    tmp.rename(path)


@contextmanager
def streaming_writer(path: ObjectStoragePath) -> Iterator[IO[bytes]]:
    """Write a large file in pieces; like `write_bytes_atomic`, readers never see it half-written (an S3 upload
    becomes visible when it completes; a local file is renamed into place). Nothing is published on an error."""
    if path.protocol != "file":
        f = path.open("wb")
        try:
            yield f
        except BaseException:
            f.discard()  # s3fs aborts the multipart upload; a plain close would upload the partial file
            raise
        f.close()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with tmp.open("wb") as f:
            yield f
        tmp.rename(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: ObjectStoragePath, doc: Any) -> None:
    write_bytes_atomic(path, (json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_json(path: ObjectStoragePath, default: Any = None) -> Any:
    if not path.exists():
        return default
    return json.loads(path.read_text())


def remove_tree(path: ObjectStoragePath) -> None:
    """Delete a directory (or object prefix) and everything below it; a missing path is fine."""
    if path.exists():
        path.fs.rm(path.path, recursive=True)
