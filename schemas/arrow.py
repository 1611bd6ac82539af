"""Arrow schemas derived from the Avro schemas, for Parquet files.

Parquet raw files and reference tables must have the same columns and types as the
Avro contract; deriving the Arrow schema keeps the two from drifting, and writing
with an explicit schema stops pyarrow from inferring columns from the first row.
"""

from __future__ import annotations

import functools

import pyarrow as pa

from schemas.fields import FieldSpec, record_fields

_PRIMITIVES = {
    "long": pa.int64(),
    "int": pa.int32(),
    "boolean": pa.bool_(),
    "string": pa.string(),
    "double": pa.float64(),
    "bytes": pa.binary(),
    "enum": pa.string(),
}


def _arrow_field(spec: FieldSpec) -> pa.Field:
    if spec.kind == "record":
        arrow_type = pa.struct([_arrow_field(nested) for nested in spec.fields])
    else:
        arrow_type = _PRIMITIVES[spec.kind]
    return pa.field(spec.name, arrow_type, nullable=spec.nullable or spec.default is not None)


@functools.cache
def arrow_schema(schema_name: str) -> pa.Schema:
    """The Arrow schema of ``raw_event``, ``raw_usage`` or ``reference/<entity>``."""
    return pa.schema([_arrow_field(spec) for spec in record_fields(schema_name)])
