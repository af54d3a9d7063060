"""Request files: one JSON Lines record `{"key": ..., "body": {...}}` per image, with an index beside each file.

The body is exactly what the endpoint client sends for that image (`client.encode_image` resized per the endpoint
record's budget and geometry, `client.build_request` with the client's prompt and label constraint), so a day
classified through Batch Transform gets the same answers as through the endpoint. The index (a small Parquet file
per request file: key, size, version, sha256, and the rejection reason of images that were not sent) is what the
join turns into rows: every listed image is in it, whether or not a record was written for it.

Streamed: one image is held at a time; a file's records go straight to storage.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

from tasks.common import storage
from tasks.model.images import ImageRejected
from tasks.nightly import partitions
from tasks.nightly.classification import PartitionJob, read_listed
from tasks.nightly.partitions import Shard
from tasks.serving.client import EndpointClient, build_request, encode_image

INDEX_COLUMNS = (
    ("key", "string"),
    ("source_size", "int64"),
    ("source_version", "string"),
    ("content_sha256", "string"),
    ("rejected", "string"),
)


def index_schema():
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in INDEX_COLUMNS])


@dataclass(frozen=True)
class WrittenFile:
    images: int  # entries in the index
    records: int  # lines in the request file (images that were not rejected)
    max_record_bytes: int


def record_line(key: str, body: dict[str, Any]) -> bytes:
    """One JSON Lines record; the key travels with the body and comes back in the joined output."""
    return json.dumps({"key": key, "body": body}, separators=(",", ":")).encode() + b"\n"


def write_request_file(day: PartitionJob, shard: Shard, request_uri: str, index_uri: str) -> WrittenFile:
    """Write the shard's request file and its index. An image that cannot be read or decoded gets no record and an
    index entry with the reason (the same `rejected` row the endpoint path writes); a shard whose images are all
    rejected writes no request file at all (Batch Transform has nothing to send)."""
    client = day.client()
    incoming = storage.storage_path(day.incoming_uri, day.conn_id)
    index: list[tuple[str, int, str, str | None, str | None]] = []
    records = biggest = 0
    destination = storage.storage_path(request_uri, day.conn_id)
    with storage.streaming_writer(destination) as out:
        for key, size, version, problem in partitions.read_shard(shard, day.conn_id):
            line, digest, rejected = _record(client, incoming, key, problem)
            index.append((key, size, version, digest, rejected))
            if line is not None:
                out.write(line)
                records += 1
                biggest = max(biggest, len(line))
    if not records:
        destination.unlink()
    _write_index(storage.storage_path(index_uri, day.conn_id), index)
    return WrittenFile(images=len(index), records=records, max_record_bytes=biggest)


def _record(
    client: EndpointClient, incoming: Any, key: str, problem: str | None
) -> tuple[bytes | None, str | None, str | None]:
    """(record line, sha256 of the file, rejection reason) — the same outcomes as `classification.classify_shard`."""
    data, reason = read_listed(incoming, key, problem)
    if data is None:
        return None, None, reason
    digest = hashlib.sha256(data).hexdigest()
    try:
        jpeg = encode_image(data, client.policy)
    except ImageRejected as exc:
        return None, digest, str(exc)
    return record_line(key, build_request(client.prompt, jpeg, client.spec, client.choices)), digest, None


def _write_index(path: Any, index: list[tuple]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = index_schema()
    columns = list(zip(*index, strict=True)) if index else [[] for _ in schema]
    buf = io.BytesIO()
    pq.write_table(
        pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema), buf
    )
    storage.write_bytes_atomic(path, buf.getvalue())


def read_index(path: Any) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(path.read_bytes()), use_threads=False).to_pylist()
