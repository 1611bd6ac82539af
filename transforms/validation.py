"""Validation of a decoded record against its Avro schema.

JSON has no schema of its own, so every raw JSON record is checked field by field
against the same ``.avsc`` the Avro files are written with: required fields
present and non-null, primitive types exact (a boolean is not a number, a float is
not a long), integers within their Avro range, enum symbols known. The first
problem found becomes the record's dead-letter reason.

Hand-written because fastavro's ``validate`` reports a whole-record failure rather
than which field failed and why, and the reason is what support staff act on.
"""

from __future__ import annotations

import math
from typing import Any

from schemas.fields import INT32, INT64, FieldSpec
from schemas.records import RecordError

_MISSING = object()


def _check_value(spec: FieldSpec, value: Any, path: str) -> Any:
    kind = spec.kind
    if kind in ("long", "int"):
        if type(value) is not int:
            raise RecordError(f"wrong_type:{path}", f"{path} must be an integer, got {type(value).__name__}")
        low, high = INT64 if kind == "long" else INT32
        if not low <= value <= high:
            raise RecordError(f"invalid_value:{path}", f"{path} is out of the {kind} range")
        return value
    if kind == "string":
        if type(value) is not str:
            raise RecordError(f"wrong_type:{path}", f"{path} must be a string, got {type(value).__name__}")
        return value
    if kind == "boolean":
        if type(value) is not bool:
            raise RecordError(f"wrong_type:{path}", f"{path} must be a boolean, got {type(value).__name__}")
        return value
    if kind == "double":
        if type(value) is int:
            return float(value)
        if type(value) is not float:
            raise RecordError(f"wrong_type:{path}", f"{path} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise RecordError(f"invalid_value:{path}", f"{path} must be finite")
        return value
    if kind == "enum":
        if value not in spec.symbols:
            raise RecordError(f"invalid_value:{path}", f"{path} must be one of {', '.join(spec.symbols)}")
        return value
    if kind == "record":
        if not isinstance(value, dict):
            raise RecordError(f"wrong_type:{path}", f"{path} must be an object, got {type(value).__name__}")
        return validate_fields(value, spec.fields, prefix=f"{path}.")
    if kind == "bytes":
        if type(value) is not bytes:
            raise RecordError(f"wrong_type:{path}", f"{path} must be bytes")
        return value
    raise AssertionError(f"unhandled Avro kind {kind}")  # schemas.fields rejects others


def validate_fields(obj: dict[str, Any], specs: tuple[FieldSpec, ...], prefix: str = "") -> dict[str, Any]:
    """Return a new dict holding exactly the schema's fields of ``obj``, checked.

    Unknown keys are ignored (producers may add fields before we do); optional
    fields that are absent become their default.
    """
    out: dict[str, Any] = {}
    for spec in specs:
        value = obj.get(spec.name, _MISSING)
        path = prefix + spec.name
        if value is _MISSING or value is None:
            if spec.required:
                what = "is missing" if value is _MISSING else "is null"
                raise RecordError(f"missing_field:{path}", f"required field {path} {what}")
            out[spec.name] = spec.default_value
            continue
        out[spec.name] = _check_value(spec, value, path)
    return out
