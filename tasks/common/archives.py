"""Byte-for-byte reproducible `.tar.gz` archives: unchanged inputs upload the same object, so a retry or rerun that
re-uploads changes nothing (and names derived from the archive's digest stay stable)."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterable


def reproducible_tar_gz(files: Iterable[tuple[str, bytes]], directories: Iterable[str] = ()) -> bytes:
    """A gzipped tar of `(archive name, content)` pairs, after the given directory entries: fixed mtimes, modes and
    owners, names in the order given."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in directories:
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(entry)
        for name, data in files:
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(data), 0o644
            tar.addfile(member, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)
