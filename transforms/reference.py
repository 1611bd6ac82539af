"""Reference data: the entities that turn raw ids into the guide's documents.

Each entity is one file ``<entity>.{parquet,json,jsonl,csv}`` in a reference
directory (local, ``gs://`` or ``s3://``: files are opened through Beam's
``FileSystems``). The loader checks every row against the entity's Avro schema,
rejects duplicate ids and dangling foreign keys, and builds a
:class:`ReferenceData` snapshot with the indexes enrichment needs. The snapshot is
handed to workers as one side input (``AsSingleton``), so a later refresh can
replace the whole consistent set at once instead of table by table.

Bad reference data fails the load with a message naming the file, the row and the
field: enrichment against a half-loaded catalogue would dead-letter good records.
Whatever a file holds, the loader raises :class:`ReferenceDataError` and nothing
else (the job exits 2 with the message): files larger than
:data:`MAX_REFERENCE_FILE_BYTES` are refused unread, JSON nested deeper than
:data:`MAX_NESTING` is refused, a CSV row must have exactly the header's cells, a
cell is at most :data:`MAX_CELL_CHARS` characters, and a message quotes at most a
short prefix of a bad value (:func:`schemas.records.quote`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas import REFERENCE_ENTITIES
from schemas.fields import INT32, INT64, FieldSpec, record_fields
from schemas.records import RecordError, nesting_depth, quote
from schemas.timestamps import format_event_time, parse_iso
from transforms.validation import validate_fields

EXTENSIONS = ("parquet", "json", "jsonl", "csv")
#: The largest reference file read: the biggest table (SIMs of a large fleet) is a
#: few hundred MB; anything larger is a wrong file, and would only exhaust memory.
MAX_REFERENCE_FILE_BYTES = 1024**3
#: Reference rows are flat; JSON nested deeper than this is not a table.
MAX_NESTING = 32
#: The longest CSV cell (names and tags are short); Python's csv module refuses
#: cells over 131,072 characters on its own, with an error this loader reports.
MAX_CELL_CHARS = 64 * 1024

Row = dict[str, Any]


class ReferenceDataError(ValueError):
    """Reference data that cannot be used; the message names file, row and field."""


@dataclass(frozen=True)
class ReferenceData:
    """An immutable, consistent snapshot of all reference entities.

    ``tables[entity][id]`` is the checked row. Dates are kept already formatted
    the way documents show them (``import_date``, ``production_date``).
    """

    tables: Mapping[str, Mapping[int, Row]]
    imsi_by_value: Mapping[str, Row]
    tapcodes_by_operator: Mapping[int, tuple[Row, ...]]
    mncs_by_operator: Mapping[int, tuple[Row, ...]]

    def get(self, entity: str, entity_id: int) -> Row:
        """The row, or :class:`RecordError` ``unknown_reference:<entity>``."""
        row = self.tables[entity].get(entity_id)
        if row is None:
            raise RecordError(f"unknown_reference:{entity}", f"no {entity} with id {entity_id}")
        return row

    def imsi(self, value: str) -> Row:
        row = self.imsi_by_value.get(value)
        if row is None:
            raise RecordError("unknown_reference:imsi", f"IMSI {value} is not provisioned")
        return row

    def sizes(self) -> dict[str, int]:
        return {entity: len(rows) for entity, rows in self.tables.items()}


def _coerce_cell(spec: FieldSpec, cell: str, where: str) -> Any:
    """A CSV cell to the field's type; an empty cell is null."""
    if cell == "":
        return None
    try:
        if spec.kind in ("long", "int"):
            value = int(cell)
            low, high = INT64 if spec.kind == "long" else INT32
            if not low <= value <= high:
                raise ValueError("out of range")
            return value
        if spec.kind == "double":
            return float(cell)
        if spec.kind == "boolean":
            lowered = cell.strip().lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError("not a boolean")
            return lowered in ("true", "1")
    except ValueError as err:
        raise ReferenceDataError(f"{where}: field {spec.name}: {quote(cell)} is not a {spec.kind} "
                                 f"({quote(str(err))})") from None
    return cell


def _json(text: str | bytes, where: str) -> Any:
    """Decoded JSON, or :class:`ReferenceDataError` naming ``where``; nesting
    beyond :data:`MAX_NESTING` is refused."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ReferenceDataError(f"{where}: JSON nested more than {MAX_NESTING} levels deep") from None
    except ValueError as err:
        raise ReferenceDataError(f"{where}: not valid JSON: {quote(str(err), 120)}") from None
    if nesting_depth(value, MAX_NESTING) > MAX_NESTING:
        raise ReferenceDataError(f"{where}: JSON nested more than {MAX_NESTING} levels deep")
    return value


def _read_file(path: str) -> bytes:
    """The file's bytes, refusing more than :data:`MAX_REFERENCE_FILE_BYTES`."""
    with FileSystems.open(path) as handle:
        data = handle.read(MAX_REFERENCE_FILE_BYTES + 1)
    if len(data) > MAX_REFERENCE_FILE_BYTES:
        raise ReferenceDataError(f"{path}: larger than the {MAX_REFERENCE_FILE_BYTES:,} bytes a reference file "
                                 "may have")
    return data


def _csv_rows(path: str, text: str, specs: tuple[FieldSpec, ...]) -> Iterable[tuple[str, Row]]:
    """(location, row) pairs of a CSV table; every row has exactly the header's cells."""
    by_name = {spec.name: spec for spec in specs}
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise ReferenceDataError(f"{path}: empty file (a CSV table needs a header row)")
        if len(set(header)) != len(header):
            raise ReferenceDataError(f"{path} line 1: the header names a column twice")
        for cells in reader:
            where = f"{path} line {reader.line_num}"
            if cells == []:
                continue  # a blank line
            if len(cells) != len(header):
                raise ReferenceDataError(f"{where}: has {len(cells)} cells, the header has {len(header)}")
            row: Row = {}
            for key, cell in zip(header, cells, strict=True):
                if len(cell) > MAX_CELL_CHARS:
                    raise ReferenceDataError(f"{where}: field {quote(key)}: a cell of {len(cell):,} characters, "
                                             f"the limit is {MAX_CELL_CHARS:,}")
                row[key] = _coerce_cell(by_name[key], cell, where) if key in by_name else cell
            yield where, row
    except csv.Error as err:
        raise ReferenceDataError(f"{path} line {reader.line_num}: not valid CSV: {quote(str(err), 120)}") from None


def _read_rows(path: str, extension: str, specs: tuple[FieldSpec, ...]) -> Iterable[tuple[str, Row]]:
    """Yield (location, raw row) pairs of one reference file."""
    data = _read_file(path)
    if extension == "parquet":
        try:
            rows = pq.read_table(io.BytesIO(data)).to_pylist()
        except (pa.ArrowException, ValueError, TypeError, OverflowError, NotImplementedError) as err:
            raise ReferenceDataError(f"{path}: not a readable Parquet file: {quote(str(err), 120)}") from None
        for number, row in enumerate(rows, start=1):
            yield f"{path} row {number}", row
    elif extension == "json":
        rows = _json(data, path)
        if not isinstance(rows, list):
            raise ReferenceDataError(f"{path}: expected a JSON array of objects")
        for number, row in enumerate(rows, start=1):
            yield f"{path} item {number}", row
    elif extension == "jsonl":
        for number, line in enumerate(_text(path, data, "utf-8").split("\n"), start=1):
            if line.strip():
                yield f"{path} line {number}", _json(line, f"{path} line {number}")
    else:
        yield from _csv_rows(path, _text(path, data, "utf-8-sig"), specs)


def _text(path: str, data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise ReferenceDataError(f"{path}: not valid UTF-8 at byte {err.start:,}") from None


def _find_file(directory: str, entity: str) -> tuple[str, str]:
    base = directory.rstrip("/")
    found = []
    for extension in EXTENSIONS:
        pattern = f"{base}/{entity}.{extension}"
        for match in FileSystems.match([pattern])[0].metadata_list:
            found.append((match.path, extension))
    if not found:
        names = ", ".join(f"{entity}.{ext}" for ext in EXTENSIONS)
        raise ReferenceDataError(f"reference table {entity!r} is missing in {directory}: expected one of {names}")
    if len(found) > 1:
        raise ReferenceDataError(
            f"reference table {entity!r} has several files in {directory}: {', '.join(p for p, _ in found)}"
        )
    return found[0]


def load_table(directory: str, entity: str) -> dict[int, Row]:
    """Load and check one entity's rows, keyed by id."""
    path, extension = _find_file(directory, entity)
    specs = record_fields(f"reference/{entity}")
    table: dict[int, Row] = {}
    try:
        for where, raw in _read_rows(path, extension, specs):
            if not isinstance(raw, dict):
                raise ReferenceDataError(f"{where}: expected an object")
            try:
                row = validate_fields(raw, specs)
            except RecordError as err:
                raise ReferenceDataError(f"{where}: {err.detail}") from None
            if row["id"] in table:
                raise ReferenceDataError(f"{where}: duplicate {entity} id {row['id']}")
            table[row["id"]] = row
    except (ValueError, OSError) as err:
        if isinstance(err, ReferenceDataError):
            raise
        raise ReferenceDataError(f"{path}: cannot read {entity} table: {quote(str(err), 120)}") from err
    return table


#: (entity, field, referenced entity): every foreign key between the tables.
FOREIGN_KEYS = (
    ("sim", "organisation_id", "organisation"),
    ("imsi", "sim_id", "sim"),
    ("endpoint", "organisation_id", "organisation"),
    ("endpoint", "sim_id", "sim"),
    ("operator", "country_id", "country"),
    ("operator_tapcode", "operator_id", "operator"),
    ("operator_mnc", "operator_id", "operator"),
    ("tariff", "currency_id", "currency"),
    ("ratezone", "tariff_id", "tariff"),
    ("user", "organisation_id", "organisation"),
)

#: Dates shown in documents, formatted once at load instead of once per record.
_DATE_FIELDS = (("sim", "production_date"), ("imsi", "import_date"))


def build_reference_data(tables: Mapping[str, dict[int, Row]]) -> ReferenceData:
    """Check cross-table consistency and build the indexes."""
    for entity, field, target in FOREIGN_KEYS:
        for row in tables[entity].values():
            ref = row[field]
            if ref is not None and ref not in tables[target]:
                raise ReferenceDataError(f"{entity} {row['id']}: {field} {ref} is not a known {target}")
    for entity, field in _DATE_FIELDS:
        for row in tables[entity].values():
            try:
                row[field] = format_event_time(parse_iso(row[field]))
            except ValueError as err:
                detail = err.detail if isinstance(err, RecordError) else quote(str(err))
                raise ReferenceDataError(f"{entity} {row['id']}: {field}: {detail}") from None
    imsi_by_value: dict[str, Row] = {}
    for row in tables["imsi"].values():
        if row["imsi"] in imsi_by_value:
            raise ReferenceDataError(f"imsi {row['id']}: IMSI {row['imsi']} is provisioned twice")
        imsi_by_value[row["imsi"]] = row
    return ReferenceData(
        tables=tables,
        imsi_by_value=imsi_by_value,
        tapcodes_by_operator=_group(tables["operator_tapcode"], "tapcode"),
        mncs_by_operator=_group(tables["operator_mnc"], "mnc"),
    )


def _group(rows: Mapping[int, Row], value_field: str) -> dict[int, tuple[Row, ...]]:
    """Per operator, ``[{"id": .., value_field: ..}]`` ordered by id, as the guide shows."""
    grouped: dict[int, list[Row]] = {}
    for row_id in sorted(rows):
        row = rows[row_id]
        grouped.setdefault(row["operator_id"], []).append({"id": row_id, value_field: row[value_field]})
    return {operator: tuple(items) for operator, items in grouped.items()}


def load_reference_data(directory: str) -> ReferenceData:
    """Load every entity of :data:`schemas.REFERENCE_ENTITIES` from ``directory``."""
    return build_reference_data({entity: load_table(directory, entity) for entity in REFERENCE_ENTITIES})


class LoadReferenceData(beam.PTransform):
    """A one-element PCollection holding the :class:`ReferenceData` snapshot;
    use it as ``beam.pvalue.AsSingleton(...)``."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self._directory = directory

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Directory" >> beam.Create([self._directory])
            | "Load" >> beam.Map(load_reference_data)
        )
