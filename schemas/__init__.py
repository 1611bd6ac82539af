"""Avro schemas of the raw records, the reference entities and the dead letters.

The ``.avsc`` files under ``schemas/avro`` are the single source of truth for the
raw formats: the parser validates JSON against them (see :mod:`schemas.fields`),
the sample fleet generator writes Avro and Parquet files with them, and the
reference-data loader coerces CSV cells by them. They are loaded with fastavro so
that a malformed schema fails at import time, not on a worker.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import fastavro

AVRO_DIR = Path(__file__).resolve().parent / "avro"

#: Reference entities, in the order they are loaded; each has
#: ``schemas/avro/reference/<name>.avsc`` and a file ``<name>.{parquet,json,jsonl,csv}``
#: in the reference-data directory.
REFERENCE_ENTITIES: tuple[str, ...] = (
    "organisation",
    "sim",
    "imsi",
    "endpoint",
    "country",
    "operator",
    "operator_tapcode",
    "operator_mnc",
    "tariff",
    "ratezone",
    "traffic_type",
    "currency",
    "user",
    "event_type",
    "event_source",
    "event_severity",
)


def schema_path(name: str) -> Path:
    """Path of a schema: ``raw_event``, ``raw_usage``, ``dead_letter`` or
    ``reference/<entity>``."""
    path = AVRO_DIR / f"{name}.avsc"
    if not path.is_file():
        raise KeyError(f"no Avro schema named {name!r} under {AVRO_DIR}")
    return path


@functools.cache
def raw_schema(name: str) -> dict[str, Any]:
    """The schema as written (plain JSON), for field introspection."""
    return json.loads(schema_path(name).read_text(encoding="utf-8"))


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema parsed by fastavro, ready for ``fastavro.writer``/``reader``."""
    return fastavro.parse_schema(raw_schema(name))


def reference_schema(entity: str) -> dict[str, Any]:
    return load_schema(f"reference/{entity}")
