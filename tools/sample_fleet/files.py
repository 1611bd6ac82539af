"""Writers of the sample fleet's files: reference tables and raw records.

Every writer is byte-deterministic for the same input: JSON with fixed key order,
Avro with a sync marker derived from the seed (fastavro draws a random one
otherwise), Parquet from an explicit Arrow schema. Arrow types follow the Avro
schemas: ``long`` and ``int`` become int64 (one integer type, readers coerce by the
Avro schema), ``boolean`` bool, ``double`` float64, ``string`` and ``enum`` string,
nested records struct.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import load_schema
from schemas.arrow import arrow_schema
from schemas.fields import record_fields
from tools.sample_fleet.defects import Line

REFERENCE_FORMATS = ("json", "csv", "parquet")
RAW_FORMATS = ("jsonl", "avro", "parquet")
RAW_EXTENSIONS = {"jsonl": "jsonl", "avro": "avro", "parquet": "parquet"}
def _write_parquet(path: Path, schema_name: str, rows: Sequence[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(list(rows), schema=arrow_schema(schema_name))
    pq.write_table(table, path)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_reference(directory: Path, entity: str, rows: Sequence[dict[str, Any]], fmt: str) -> Path:
    """One reference table: a JSON array, a CSV with a header row, or a Parquet file."""
    fields = [f.name for f in record_fields(f"reference/{entity}")]
    path = directory / f"{entity}.{fmt}"
    if fmt == "json":
        body = b",\n".join(orjson.dumps({k: row[k] for k in fields}) for row in rows)
        path.write_bytes(b"[\n" + body + b"\n]\n")
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(fields)
        writer.writerows([_csv_cell(row[k]) for k in fields] for row in rows)
        path.write_text(buffer.getvalue(), encoding="utf-8")
    elif fmt == "parquet":
        _write_parquet(path, f"reference/{entity}", rows)
    else:
        raise ValueError(f"unknown reference format {fmt!r}")
    return path


def _sync_marker(seed: int, name: str) -> bytes:
    return hashlib.sha256(f"{seed}:{name}".encode()).digest()[:16]


def write_raw(directory: Path, name: str, schema_name: str, lines: Sequence[Line], fmt: str,
              seed: int) -> Path:
    """One raw file. JSONL gets every line; Avro and Parquet the schema-valid ones only."""
    path = directory / f"{name}.{RAW_EXTENSIONS[fmt]}"
    if fmt == "jsonl":
        with path.open("wb") as out:
            for line in lines:
                out.write(line.jsonl() + b"\n")
        return path
    rows = [line.record for line in lines if line.record is not None]
    if fmt == "avro":
        with path.open("wb") as out:
            fastavro.writer(out, load_schema(schema_name), rows, codec="deflate",
                            sync_marker=_sync_marker(seed, name))
    elif fmt == "parquet":
        _write_parquet(path, schema_name, rows)
    else:
        raise ValueError(f"unknown raw format {fmt!r}")
    return path


def remove_stale(directory: Path, stems: Iterable[str], extensions: Iterable[str]) -> None:
    """Delete files this generator writes in formats not chosen now, so a directory
    regenerated with other options never holds two versions of one table."""
    for stem in stems:
        for extension in extensions:
            (directory / f"{stem}.{extension}").unlink(missing_ok=True)
