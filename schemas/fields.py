"""Field specifications compiled from the Avro schemas.

Validation of JSON input and coercion of CSV cells both need, per field, its
primitive type, whether it may be null, its default and its nested fields. This
module compiles that once from the ``.avsc`` files so the checks never drift from
the schemas the generator and the file readers use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from schemas import raw_schema

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

_NO_DEFAULT = object()


@dataclass(frozen=True)
class FieldSpec:
    """One field of a record schema.

    ``kind`` is the Avro primitive (``long``, ``int``, ``boolean``, ``string``,
    ``double``, ``bytes``), ``enum`` or ``record``.
    """

    name: str
    kind: str
    nullable: bool
    default: Any = _NO_DEFAULT
    symbols: tuple[str, ...] = ()
    fields: tuple[FieldSpec, ...] = ()

    @property
    def required(self) -> bool:
        return not self.nullable and self.default is _NO_DEFAULT

    @property
    def default_value(self) -> Any:
        return None if self.default is _NO_DEFAULT else self.default


def _compile_type(name: str, avro_type: Any, default: Any) -> FieldSpec:
    nullable = False
    if isinstance(avro_type, list):
        branches = [t for t in avro_type if t != "null"]
        if len(branches) != 1:
            raise ValueError(f"field {name}: only [null, T] unions are supported")
        nullable = len(branches) != len(avro_type)
        avro_type = branches[0]
    if isinstance(avro_type, dict):
        if avro_type["type"] == "record":
            nested = tuple(_compile_field(f) for f in avro_type["fields"])
            return FieldSpec(name, "record", nullable, default, fields=nested)
        if avro_type["type"] == "enum":
            return FieldSpec(name, "enum", nullable, default, symbols=tuple(avro_type["symbols"]))
        avro_type = avro_type["type"]
    if avro_type not in {"long", "int", "boolean", "string", "double", "bytes"}:
        raise ValueError(f"field {name}: unsupported Avro type {avro_type!r}")
    return FieldSpec(name, avro_type, nullable, default)


def _compile_field(field: dict[str, Any]) -> FieldSpec:
    return _compile_type(field["name"], field["type"], field.get("default", _NO_DEFAULT))


@functools.cache
def record_fields(schema_name: str) -> tuple[FieldSpec, ...]:
    """The compiled fields of a record schema, in schema order."""
    return tuple(_compile_field(f) for f in raw_schema(schema_name)["fields"])
