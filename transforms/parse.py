"""Parse and validate raw network events and usage records.

Input elements are either the raw bytes of one record (a JSONL line, a Pub/Sub
message) or a row dict read from an Avro or Parquet file. Both go through the same
schema check and the same semantic rules, so a record is valid or not whatever
file format carried it. Every invalid record becomes a dead letter with a reason
and its original payload; nothing raises out of the DoFn and nothing is dropped.

The valid output keeps the raw field names and values (timestamps stay the
original strings), so an enrichment failure can dead-letter a faithful copy and a
backfill can re-read it, and is stamped with its event time: the event's
``timestamp``, or a usage record's ``end_timestamp`` (when the network emitted it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from schemas import metrics
from schemas.catalogues import EVENT_REQUIRED_FIELDS
from schemas.fields import record_fields
from schemas.records import Kind, RecordError, Unreadable, dead_letter, payload_bytes
from schemas.timestamps import parse_iso, to_epoch_ms
from transforms.chunks import event_time
from transforms.validation import validate_fields

_LOG = logging.getLogger(__name__)

DEAD_LETTERS = "dead_letters"
#: A raw event is a few hundred bytes; anything near this is a producer bug and
#: would not fit the destinations' record limits either.
DEFAULT_MAX_RECORD_BYTES = 64 * 1024

_SCHEMAS = {"event": "raw_event", "usage": "raw_usage"}
#: What the parser takes: a JSONL line or Pub/Sub message, an Avro or Parquet row,
#: or the part of a file its reader could not decode.
RawElement = bytes | dict[str, Any] | Unreadable


def decode_json(payload: bytes, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> dict[str, Any]:
    """Decode one raw JSON record, classifying every way it can be unreadable."""
    if len(payload) > max_bytes:
        raise RecordError("oversized", f"record is {len(payload)} bytes, the limit is {max_bytes}")
    if not payload.strip():
        raise RecordError("empty", "empty record")
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as uerr:
            raise RecordError("not_utf8", f"not valid UTF-8 at byte {uerr.start}") from None
        raise RecordError("not_json", f"not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise RecordError("not_an_object", f"a record must be a JSON object, got {type(obj).__name__}")
    return obj


def _timestamp_ms(record: dict[str, Any], field: str, path: str | None = None) -> int:
    """The field's instant in epoch ms; any malformed or out-of-range value is
    ``invalid_timestamp:<field>`` (:func:`schemas.timestamps.parse_iso`)."""
    try:
        return to_epoch_ms(parse_iso(record[field]))
    except ValueError as err:
        name = path or field
        detail = err.detail if isinstance(err, RecordError) else str(err)
        raise RecordError(f"invalid_timestamp:{name}", f"{name}: {detail}") from None


def _check_positive_id(record: dict[str, Any]) -> None:
    if record["id"] <= 0:
        raise RecordError("invalid_value:id", "id must be a positive integer")


def _check_imsi(value: str | None, path: str = "imsi") -> None:
    # E.212: MCC (3) + MNC (2-3) + MSIN, at most 15 digits in all.
    if value is not None and not (6 <= len(value) <= 15 and value.isdigit() and value.isascii()):
        raise RecordError(f"invalid_value:{path}", f"{path} must be 6 to 15 digits")


def _check_non_negative(record: dict[str, Any], *fields: str) -> None:
    for field in fields:
        value = record[field]
        if value is not None and value < 0:
            raise RecordError(f"invalid_value:{field}", f"{field} must not be negative")


def validate_event(obj: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Check a decoded raw event; return it (schema fields only) and its event time
    in epoch milliseconds."""
    record = validate_fields(obj, record_fields("raw_event"))
    _check_positive_id(record)
    event_ms = _timestamp_ms(record, "timestamp")
    event_type = record["event_type_id"]
    required = EVENT_REQUIRED_FIELDS.get(event_type)
    if required is None:
        raise RecordError("unknown_event_type", f"event_type_id {event_type} is not in the guide's table (0 to 15)")
    for field in required:
        if record[field] is None:
            raise RecordError(f"missing_field:{field}", f"{field} is required for event type {event_type}")
    _check_imsi(record["imsi"])
    _check_non_negative(record, "volume_rx_bytes", "volume_tx_bytes")
    pdp = record["pdp_context"]
    if pdp is not None:
        _timestamp_ms(pdp, "tunnel_created", "pdp_context.tunnel_created")
        _check_imsi(pdp["imsi"], "pdp_context.imsi")
    return record, event_ms


def validate_usage(obj: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Check a decoded raw usage record; return it and its event time (the end of
    the charged interval) in epoch milliseconds."""
    record = validate_fields(obj, record_fields("raw_usage"))
    _check_positive_id(record)
    _check_imsi(record["imsi"])
    start_ms = _timestamp_ms(record, "start_timestamp")
    end_ms = _timestamp_ms(record, "end_timestamp")
    if end_ms < start_ms:
        raise RecordError("invalid_value:end_timestamp", "end_timestamp is before start_timestamp")
    _check_non_negative(record, "volume_rx", "volume_tx", "cost")
    return record, end_ms


_VALIDATORS = {"event": validate_event, "usage": validate_usage}


def parse_record(
    kind: Kind, element: RawElement, max_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> tuple[dict[str, Any], int]:
    """Parse one raw element of ``kind``; raise :class:`RecordError` if invalid.

    An :class:`~schemas.records.Unreadable` (the part of a file its reader could
    not decode) is invalid with the reader's reason, so it is counted and
    dead-lettered like a bad record."""
    if isinstance(element, Unreadable):
        raise RecordError(element.reason, element.detail)
    if isinstance(element, bytes):
        obj = decode_json(element, max_bytes)
    elif not isinstance(element, dict):
        raise RecordError("not_an_object", f"a record must be an object, got {type(element).__name__}")
    else:
        obj = element
        size = len(payload_bytes(element))
        if size > max_bytes:
            raise RecordError("oversized", f"record is {size} bytes, the limit is {max_bytes}")
    return _VALIDATORS[kind](obj)


def _record_id(element: RawElement) -> int | None:
    """Best-effort id of an invalid record, for the dead letter."""
    obj = element
    if isinstance(element, bytes):
        try:
            obj = orjson.loads(element)
        except orjson.JSONDecodeError:
            return None
    value = obj.get("id") if isinstance(obj, dict) else None
    return value if type(value) is int and -(2**63) <= value < 2**63 else None


class _ParseFn(beam.DoFn):
    """Valid records to the main output (with their event time), invalid ones to
    ``dead_letters``. Unexpected exceptions are dead-lettered too, as
    ``internal_error``, and logged: a parser bug must not stall the stream."""

    def __init__(self, kind: Kind, max_bytes: int) -> None:
        self._kind = kind
        self._max_bytes = max_bytes

    def setup(self) -> None:
        self._read = Metrics.counter(metrics.NAMESPACE, metrics.read(self._kind))
        self._valid = Metrics.counter(metrics.NAMESPACE, metrics.valid(self._kind))

    def process(self, element: RawElement) -> Iterator[Any]:
        self._read.inc()
        parsed = self._parse(element)
        if isinstance(parsed, pvalue.TaggedOutput):
            yield parsed
            return
        self._valid.inc()
        yield TimestampedValue(parsed[0], event_time(parsed[1]))

    def _parse(self, element: RawElement) -> tuple[dict[str, Any], int] | pvalue.TaggedOutput:
        """``(record, event time in ms)``, or the dead letter of an invalid element."""
        try:
            return parse_record(self._kind, element, self._max_bytes)
        except RecordError as err:
            return self._dead(element, err.reason, err.detail)
        except Exception as err:  # noqa: BLE001 - any bug becomes a counted dead letter
            _LOG.exception("unexpected error parsing a %s record", self._kind)
            return self._dead(element, "internal_error", f"{type(err).__name__} while parsing")

    def _dead(self, element: RawElement, reason: str, detail: str) -> pvalue.TaggedOutput:
        metrics.count_dead_letter(self._kind, reason)
        letter = dead_letter(self._kind, "parse", reason, detail, payload_bytes(element), _record_id(element))
        return pvalue.TaggedOutput(DEAD_LETTERS, letter)


class _ParseChunkFn(_ParseFn):
    """A chunk of raw elements -> one chunk of ``(record, event time in ms)`` pairs
    (main output) and a dead letter per invalid element, exactly as
    :class:`_ParseFn` would have for each element."""

    def process(self, chunk: list[RawElement]) -> Iterator[Any]:
        self._read.inc(len(chunk))
        valid: list[tuple[dict[str, Any], int]] = []
        for element in chunk:
            parsed = self._parse(element)
            if isinstance(parsed, pvalue.TaggedOutput):
                yield parsed
            else:
                valid.append(parsed)
        if valid:
            self._valid.inc(len(valid))
            yield valid


class ParseRecords(beam.PTransform):
    """Raw elements of one kind -> valid records (main) and dead letters.

    Returns a ``DoOutputsTuple``: ``result[None]`` (valid records) and
    ``result.dead_letters``. With ``chunked``, elements and valid outputs are
    chunks (lists): raw elements in, ``(record, event time in ms)`` pairs out
    (``transforms/chunks.py``).
    """

    def __init__(self, kind: Kind, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, chunked: bool = False) -> None:
        super().__init__()
        self._kind = kind
        self._max_bytes = max_record_bytes
        self._chunked = chunked

    def expand(self, raw: beam.PCollection) -> pvalue.DoOutputsTuple:
        fn = (_ParseChunkFn if self._chunked else _ParseFn)(self._kind, self._max_bytes)
        return raw | "Parse" >> beam.ParDo(fn).with_outputs(DEAD_LETTERS, main="records")
