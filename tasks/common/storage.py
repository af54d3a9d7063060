"""One storage root for every pipeline, addressed through Airflow's ObjectStoragePath.

`file://` locally and `s3://` in production: no task knows which one it runs on. Credentials for `s3://` come from
the Airflow connection, never from a second copy of the configuration.

Containment: a URI that comes from a param, an event or a listing is used only through `contained` (reads) or
`owned_output` (writes), which resolve it lexically (`..` normalised, symlinks never followed) inside the storage
root or a configured input root, and refuse anything else before a byte is read or deleted. `remove_tree` deletes
only strictly below the owned prefix its caller names, never that prefix, the root or a parent.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NamedTuple
from urllib.parse import urlparse

from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

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
REVIEW = "review"  # the review queue and reviewers' decisions (tasks/review)
CURATION_REPORT = "curation_report.json"  # in datasets/<version>/, written last: a dataset is complete once it exists
ENDPOINT_RECORD = "endpoint.json"  # in serving/: the deployed endpoint (tasks.serving.deployment), removed at teardown


def partition_name(dt: str) -> str:
    """The folder of one day's partition under incoming/ and predictions/: `dt=YYYY-MM-DD`."""
    return f"dt={dt}"


def incoming_template(settings: Settings) -> str:
    """The default `incoming_uri` of the classification DAGs and the CLI: one day's folder under incoming/, `{dt}`
    standing for the day."""
    return f"{settings.storage_uri}/{INCOMING}/{partition_name('{dt}')}/"


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


class ContainmentError(AirflowFailException):
    """A URI outside what the pipeline may touch: retrying cannot help, so the task fails at once."""


class Refused(ValueError):
    """A listed entry that is not read (symlink, special file, too large); the message is the recorded reason."""


def _location(uri: str) -> tuple[str, str]:
    """(protocol, normalised path): `file` + an absolute path, or `s3` + `bucket/key`, with `..` and `.` resolved
    lexically (nothing on disk is consulted) and a `conn_id@` prefix dropped."""
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("file", "s3"):
        raise ValueError(f"expected a file:// or s3:// URI, got {uri!r}")
    if scheme == "file":
        if not rest.startswith("/"):
            raise ValueError(f"a file:// URI needs an absolute path (file:///…), got {uri!r}")
        return "file", posixpath.normpath("/" + rest.lstrip("/"))
    bucket, _, key = rest.partition("/")
    bucket = bucket.rpartition("@")[2]
    if not bucket:
        raise ValueError(f"an s3:// URI needs a bucket, got {uri!r}")
    key = posixpath.normpath("/" + key).lstrip("/")
    return "s3", f"{bucket}/{key}".rstrip("/")


def _below(path: tuple[str, str], top: tuple[str, str], *, strictly: bool = False) -> bool:
    if path[0] != top[0]:
        return False
    if path[1] == top[1]:
        return not strictly
    return path[1].startswith(top[1].rstrip("/") + "/")


def _no_symlink_below(top: str, path: str) -> str | None:
    """The first component of local `path` below `top` that is a symlink (or None): a link inside the root must not
    lead a param out of it."""
    current = top
    for part in posixpath.relpath(path, top).split("/"):
        if part in ("", "."):
            continue
        current = posixpath.join(current, part)
        if os.path.islink(current):
            return current
    return None


def contained(uri: str, settings: Settings, *, param: str, inputs: bool = True) -> ObjectStoragePath:
    """The path for `uri` when it lies inside the storage root (or, with `inputs`, a PIPELINE_INPUT_ROOTS entry);
    else ContainmentError naming `param`, raised before anything is read, listed, written or deleted."""
    try:
        where = _location(uri)
    except ValueError as exc:
        raise ContainmentError(f"param {param}: {exc}") from None
    allowed = [settings.storage_uri, *(settings.input_roots if inputs else ())]
    for top_uri in allowed:
        top = _location(top_uri)
        if _below(where, top):
            link = _no_symlink_below(top[1], where[1]) if where[0] == "file" else None
            if link:
                raise ContainmentError(f"param {param}={uri!r} goes through the symlink {link}: refused")
            return storage_path(f"{where[0]}://{where[1]}", settings.aws_conn_id)
    kinds = "the storage root or an input root (PIPELINE_INPUT_ROOTS)" if inputs else "the storage root"
    raise ContainmentError(
        f"param {param}={uri!r} resolves to {where[0]}://{where[1]}, outside {kinds}: {', '.join(allowed)}. "
        "Nothing was read or deleted."
    )


def owned_output(uri: str, settings: Settings, *, param: str, prefix: str) -> ObjectStoragePath:
    """The path for `uri` when it lies strictly below `<storage root>/<prefix>/` (e.g. `datasets/<version>`), the
    only place a pipeline may replace a tree; else ContainmentError naming `param`."""
    path = contained(uri, settings, param=param, inputs=False)
    if not _below(
        _location(f"{path.protocol}://{path.path}"), _location(f"{settings.storage_uri}/{prefix}"), strictly=True
    ):
        raise ContainmentError(
            f"param {param}={uri!r} is not below {settings.storage_uri}/{prefix}/: a run replaces only its own "
            f"{prefix}/<name> folder, never the root, {prefix}/ itself or anything else. Nothing was deleted."
        )
    return path


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


class Versioned(NamedTuple):
    """A small object's bytes and the version a conditional write or delete compares against: the S3 ETag, or
    locally the sha256 of the bytes (every lease or claim document holds a fresh token, so equal bytes mean the
    same write)."""

    data: bytes
    version: str


# Compare-and-swap on the storage's own atomic primitive, for leases and claims (tasks.common.leases).
#
# S3: conditional writes — PutObject with `If-None-Match: *` creates only if the key is absent, with
# `If-Match: <ETag>` overwrites only that version; DeleteObject with `If-Match: <ETag>` deletes only that version
# (conditional deletes, general purpose buckets, September 2025). A failed condition is 412 PreconditionFailed;
# a concurrent conflicting write is 409 ConditionalRequestConflict ("fetch the object's ETag and retry"); a
# conditional delete of a missing key is 404 NoSuchKey. Sources: Amazon S3 User Guide, "How to prevent object
# overwrites with conditional writes" (docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html) and
# "How to perform conditional deletes" (.../userguide/conditional-deletes.html); PutObject `If-Match`/`If-None-Match`
# and DeleteObject `If-Match` in the API reference (API_PutObject.html, API_DeleteObject.html), which boto3 exposes
# as `put_object(IfMatch=..., IfNoneMatch="*")` and `delete_object(IfMatch=...)`. moto 5.2.5 implements all three
# (getmoto/moto#8109 If-None-Match, #8869 put If-Match, #9725 delete If-Match; tests/integration/test_leases_s3.py),
# though as check-then-act in a threaded server, so moto is weaker than S3: tests/race_harness.py found no double
# winner against it in 500 rounds of each case (threads and processes, fresh and stale), the old code 5-42.
#
# Locally: every change of the file happens under an exclusive flock of a sibling `.<name>.lock` (across threads
# and processes: each call opens its own file description), the new bytes are written to a temporary file first
# and moved in with os.link (create: fails if the name exists) or os.replace (overwrite), so a reader never sees a
# partly written document.
_CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "409", "412")


def create_exclusive(path: ObjectStoragePath, data: bytes) -> str | None:
    """Create `path` with `data` only if it does not exist yet: its version, or None when it exists."""
    if path.protocol != "file":
        return _s3_conditional(path, "put_object", Body=data, IfNoneMatch="*")
    with _local_lock(path):
        return _local_put(path, data, create=True)


def read_versioned(path: ObjectStoragePath) -> Versioned | None:
    """The object's bytes with their version, read in one request (never the bytes of one version and the ETag of
    another); None when it does not exist."""
    if path.protocol != "file":
        from botocore.exceptions import ClientError

        try:
            data, etag = _s3_sync(path, _s3_get)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return Versioned(data, etag)
    try:
        with open(path.path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return Versioned(data, _digest(data))


def replace_if(path: ObjectStoragePath, data: bytes, version: str) -> str | None:
    """Overwrite `path` with `data` only if its current version is `version`: the new version, or None (it changed
    or is gone)."""
    if path.protocol != "file":
        return _s3_conditional(path, "put_object", Body=data, IfMatch=version)
    with _local_lock(path):
        current = read_versioned(path)
        if current is None or current.version != version:
            return None
        return _local_put(path, data, create=False)


def delete_if(path: ObjectStoragePath, version: str) -> bool:
    """Delete `path` only if its current version is `version`; False when it changed or is gone."""
    if path.protocol != "file":
        return _s3_conditional(path, "delete_object", IfMatch=version) is not None
    with _local_lock(path):
        current = read_versioned(path)
        if current is None or current.version != version:
            return False
        os.unlink(path.path)
        return True


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@contextmanager
def _local_lock(path: ObjectStoragePath) -> Iterator[None]:
    import fcntl

    os.makedirs(os.path.dirname(path.path), exist_ok=True)
    fd = os.open(posixpath.join(os.path.dirname(path.path), f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor of this open releases the flock


def _local_put(path: ObjectStoragePath, data: bytes, *, create: bool) -> str | None:
    tmp = posixpath.join(os.path.dirname(path.path), f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        if create:
            os.link(tmp, path.path)
        else:
            os.replace(tmp, path.path)
    except FileExistsError:
        return None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return _digest(data)


def _s3_conditional(path: ObjectStoragePath, method: str, **kwargs: Any) -> str | None:
    """The new ETag (or "" for a delete) when the condition held, None when it did not (412, 409, 404)."""
    from botocore.exceptions import ClientError

    try:
        response = _s3_sync(path, _s3_call, method, **kwargs)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if error.get("Code") in _CONFLICT_CODES or status in _CONFLICT_CODES:
            return None
        raise
    return str(response.get("ETag", "")).strip('"')


def _s3_sync(path: ObjectStoragePath, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run `fn(fs, bucket, key, ...)` on the path's s3fs event loop, with botocore's own errors (s3fs would map
    a 412 to a plain OSError without its code)."""
    from fsspec.asyn import sync

    bucket, _, key = path.path.partition("/")
    return sync(path.fs.loop, fn, path.fs, bucket, key, *args, **kwargs)


async def _s3_call(fs: Any, bucket: str, key: str, method: str, **kwargs: Any) -> dict[str, Any]:
    await fs.set_session()
    client = await fs.get_s3(bucket)
    return await getattr(client, method)(Bucket=bucket, Key=key, **kwargs)


async def _s3_get(fs: Any, bucket: str, key: str) -> tuple[bytes, str]:
    response = await _s3_call(fs, bucket, key, "get_object")
    async with response["Body"] as body:
        data = await body.read()
    return data, str(response["ETag"]).strip('"')


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


def remove_tree(path: ObjectStoragePath, *, owner: ObjectStoragePath) -> None:
    """Delete a directory (or object prefix) and everything below it; a missing path is fine. `path` must lie
    strictly below `owner`, the prefix the caller owns (e.g. `datasets/`, `predictions/dt=D/`): a path that
    normalises to the owner or above it is refused, so no bug or param can wipe the root."""
    where, top = (_location(f"{p.protocol}://{p.path}") for p in (path, owner))
    if not _below(where, top, strictly=True):
        raise ContainmentError(f"refusing to delete {path}: not strictly below {owner}")
    if path.exists():
        path.fs.rm(where[1], recursive=True)


def read_bytes_capped(path: ObjectStoragePath, max_bytes: int) -> bytes:
    """A file's bytes, refused (Refused) before reading when it is larger than `max_bytes`, a symlink or not a
    regular file. Locally the file is opened without following a symlink and without blocking on a FIFO, and the
    checks are made on the opened file, so a swap after listing cannot slip through."""
    if path.protocol == "file":
        return _read_local_capped(path.path, max_bytes)
    size = int(path.fs.info(path.path).get("size") or 0)
    if size > max_bytes:
        raise Refused(f"too large: {size:,} bytes > limit {max_bytes:,}")
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew since it was checked
        raise Refused(f"too large: more than {max_bytes:,} bytes")
    return data


def read_child_capped(root: ObjectStoragePath, key: str, max_bytes: int) -> bytes:
    """`read_bytes_capped(root / key)` for a key from `iter_files(root)`. Locally the path is joined as a string:
    building an ObjectStoragePath per image costs more than reading a small image (bench/plan_backlog.py)."""
    if root.protocol == "file":
        return _read_local_capped(posixpath.join(root.path, key), max_bytes)
    return read_bytes_capped(root / key, max_bytes)


def _read_local_capped(path: str, max_bytes: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused("symlink: not followed") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise Refused("special file (FIFO, socket or device): not read")
        if st.st_size > max_bytes:
            raise Refused(f"too large: {st.st_size:,} bytes > limit {max_bytes:,}")
        data = f.read(st.st_size + 1)  # one byte past its size notices growth; read(max_bytes + 1) allocates the cap
    if len(data) > st.st_size:
        raise Refused(f"changed while read (grew past {st.st_size:,} bytes): not read")
    return data


class Listed(NamedTuple):
    """One entry below a listed root. `problem` set: the entry is not read and becomes a rejected row."""

    key: str  # relative to the root; printable: a non-UTF-8 name is backslash-escaped (its raw bytes are in problem)
    size: int
    version: str  # changes when the file is rewritten: the S3 ETag, or the local mtime in nanoseconds
    problem: str | None = None


def iter_files(top: ObjectStoragePath) -> Iterator[Listed]:
    """Every entry below `top`, streamed; nothing when `top` is missing. Locally symlinks (to files or folders),
    FIFOs, sockets and devices are listed with a problem instead of being followed or skipped, so that every entry
    gets a row."""
    if not top.exists():
        return
    if top.protocol == "file":
        yield from _walk_local(top.path)
    elif top.protocol == "s3":
        yield from _walk_s3(top)
    else:  # any other fsspec filesystem: a materialised listing
        base = top.path.rstrip("/") + "/"
        for name, info in top.fs.find(top.path, detail=True).items():
            yield Listed(
                name.removeprefix(base), int(info.get("size") or 0), str(info.get("mtime") or info.get("ETag", ""))
            )


def printable_key(raw: bytes) -> tuple[str, str | None]:
    """(key, problem): a name that is not UTF-8, or holds control characters, gets a backslash-escaped key and a
    problem that preserves its raw bytes (hex), so it can be found and renamed."""
    try:
        key = raw.decode("utf-8")
    except UnicodeDecodeError:
        key = None
    if key is not None and key.isprintable():
        return key, None
    text = raw.decode("utf-8", "backslashreplace")  # an invalid byte becomes the four characters \\xNN
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return escaped, f"unsafe file name (not UTF-8 or not printable; raw name hex {raw.hex()}): rename it"


def _walk_local(base: str) -> Iterator[Listed]:
    top = os.fsencode(base)
    cut = len(os.path.join(top, b""))  # entry paths start with top and one separator
    pending = [top]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                key, problem = printable_key(entry.path[cut:])  # os.path.relpath costs more than the stat
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:  # vanished since scandir saw it
                    yield Listed(key, 0, "", f"unreadable: {type(exc).__name__}: {exc}")
                    continue
                if stat.S_ISDIR(st.st_mode):
                    pending.append(entry.path)
                    continue
                if stat.S_ISLNK(st.st_mode):
                    problem = problem or "symlink: not followed"
                elif not stat.S_ISREG(st.st_mode):
                    problem = problem or "special file (FIFO, socket or device): not read"
                yield Listed(key, st.st_size, str(st.st_mtime_ns), problem)


def _walk_s3(top: ObjectStoragePath) -> Iterator[Listed]:
    """ListObjectsV2 page by page (s3fs's `find` would hold the whole listing in memory)."""
    from fsspec.asyn import sync

    fs = top.fs
    bucket, _, prefix = top.path.partition("/")
    prefix = prefix.rstrip("/") + "/"
    pages = fs._iterdir(bucket, delimiter="", prefix=prefix)
    while True:
        try:
            info = sync(fs.loop, pages.__anext__)
        except StopAsyncIteration:
            return
        key = info["name"].removeprefix(f"{bucket}/{prefix}")  # s3fs names objects "bucket/key"
        if key and not key.endswith("/"):
            safe, problem = printable_key(key.encode("utf-8", "surrogateescape"))
            if any(part in ("", ".", "..") for part in key.split("/")):  # S3 keeps them literally; paths would not
                problem = problem or "unsafe key (an empty, . or .. segment): not read"
            yield Listed(safe, int(info["Size"]), str(info.get("ETag", "")).strip('"'), problem)
