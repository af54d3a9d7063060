"""What every hand-off record shares: a schema version, a checked `from_dict`, and storage references.

A stored record that is missing a field, has one of the wrong type, or comes from a newer schema fails with a
`RecordError` naming the file and the field, instead of a `KeyError` three modules later.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

SCHEMA_VERSION = 1  # of every record here; records written before it was stamped read as version 1

R = TypeVar("R")


class RecordError(ValueError):
    """A stored record cannot be read as its declared type: says which file and which field."""


def parse(cls: type[R], doc: Any, where: str, upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> R:
    """`cls` from a JSON object, every field checked against its annotation. `upgrade` maps the field names of
    records written by earlier code onto today's, so those still read."""
    if not isinstance(doc, Mapping):
        raise RecordError(f"{where}: expected a JSON object, found {type(doc).__name__}")
    version = doc.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise RecordError(f"{where}: schema_version {version!r} is not {SCHEMA_VERSION}, the one this code reads")
    doc = upgrade(dict(doc)) if upgrade else dict(doc)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        if spec.name not in doc:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise RecordError(f"{where}: field {spec.name!r} is missing")
            continue
        values[spec.name] = _checked(doc[spec.name], hints[spec.name], f"{where}: field {spec.name!r}")
    return cls(**values)


def to_doc(record: Any) -> dict[str, Any]:
    """The JSON object of a record, stamped with the schema version (nested values through their `to_dict`)."""
    fields = {spec.name: getattr(record, spec.name) for spec in dataclasses.fields(record)}
    return {"schema_version": SCHEMA_VERSION} | {
        name: value.to_dict() if hasattr(value, "to_dict") else value for name, value in fields.items()
    }


def _checked(value: Any, hint: Any, where: str) -> Any:
    """`value` as `hint`: str, int, float, bool, dict, list, a Literal, a type with `from_dict`, or a union."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _checked(value, option, where)
            except RecordError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise RecordError(f"{where} must be one of {typing.get_args(hint)}, found {value!r}")
        return value
    kind = origin or hint
    if hasattr(kind, "from_dict"):
        if not isinstance(value, Mapping):
            raise RecordError(f"{where} must be an object, found {value!r}")
        try:
            return kind.from_dict(value)
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"{where} is malformed: {exc}") from None
    wanted = {float: (int, float), int: (int,), dict: (Mapping,), list: (list,)}.get(kind, (kind,))
    if not isinstance(value, wanted) or (kind in (int, float) and isinstance(value, bool)):
        raise RecordError(f"{where} must be {getattr(kind, '__name__', kind)}, found {value!r}")
    return float(value) if kind is float else value


def storage_ref(uri: str, storage_uri: str) -> str:
    """`uri` relative to the storage root when it lies inside it, else unchanged (an external or older URI)."""
    root = storage_uri.rstrip("/") + "/"
    return uri[len(root) :] if uri.startswith(root) else uri  # a trailing slash (an S3 prefix) is kept


def resolve(ref: str, storage_uri: str) -> str:
    """The URI a storage reference names under this storage root (an absolute URI is returned as is)."""
    if "://" in ref or ref.startswith("/"):
        return ref
    if ".." in ref.split("/"):
        raise RecordError(f"storage reference {ref!r} climbs out of the storage root")
    return f"{storage_uri.rstrip('/')}/{ref}"
