"""Hostile input (issue 15, input half): whatever the bytes, the job answers with
its own error types and a bounded message, never a traceback.

- raw records: every malformed or out-of-range timestamp is ``invalid_timestamp``
  (a :class:`RecordError`), and output formats always have four-digit years;
- raw files: a damaged Avro or Parquet file is read up to the damage and the rest
  becomes a dead letter naming the file and the row or byte offset (the pipeline
  side, counts and summary, is ``tests/composite/test_bad_input.py``); an input
  pattern that matches nothing is a one-line error, exit 2;
- stream configurations and reference files: every malformed file is a
  :class:`StreamConfigError` / :class:`ReferenceDataError` (exit 2) naming the
  file, row or stream and field, quoting at most a short prefix of the value;
- patterns match whole values, S3 prefixes and ports are checked, unknown keys
  are refused with a suggestion;
- S3 CSV text cells that a spreadsheet would run as formulas are escaped;
- property tests (hypothesis) over ``parse_record`` and both loaders: only the
  project's error types come out. The normal suite runs few examples;
  ``HYPOTHESIS_PROFILE=long HYPOTHESIS_SECONDS=<s>`` runs each property for ``s``
  seconds (``tests/conftest.py``).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import orjson
import pytest

from pipelines.data_streamer import main
from schemas import load_schema
from schemas.records import RecordError, Unreadable
from schemas.timestamps import (
    EARLIEST,
    LATEST,
    format_event_time,
    format_tunnel_time,
    format_usage_time,
    parse_iso,
)
from tests.guide_samples import RAW_EVENTS, RAW_USAGE
from transforms.files import MAX_UNREADABLE_BYTES, read_avro, read_parquet
from transforms.parse import parse_record

URL = "https://hooks.example.com/iot"
#: Room for a message's own words around a quoted value.
MESSAGE_LIMIT = 400


def _event(**changes: Any) -> dict[str, Any]:
    record = copy.deepcopy(RAW_EVENTS["5.1.2"])
    record.update(changes)
    return record


def _usage(**changes: Any) -> dict[str, Any]:
    record = copy.deepcopy(RAW_USAGE["5.2"])
    record.update(changes)
    return record


# --------------------------------------------------------------------------- 1. timestamps

EDGE_TIMESTAMPS = [
    "0001-01-01T00:30:00+01:00",  # before year 1 in UTC: datetime overflows
    "9999-12-31T23:30:00-01:00",  # after year 9999 in UTC: datetime overflows
    "0001-01-01T00:00:00Z",  # representable, but not a time the platform can have recorded
    "0999-07-17T16:28:00Z",
    "1969-12-31T23:59:59.999Z",  # the last millisecond before the range
    "9999-01-01T00:00:00Z",  # the end of the range (exclusive)
    "9999-12-31T23:59:59Z",
]


@pytest.mark.parametrize("value", EDGE_TIMESTAMPS)
def test_timestamps_out_of_range_are_invalid_timestamp_in_every_field(value):
    cases = [
        ("event", _event(timestamp=value), "invalid_timestamp:timestamp"),
        ("event", _event(pdp_context={**RAW_EVENTS["5.1.2"]["pdp_context"], "tunnel_created": value}),
         "invalid_timestamp:pdp_context.tunnel_created"),
        ("usage", _usage(start_timestamp=value), "invalid_timestamp:start_timestamp"),
        ("usage", _usage(end_timestamp=value), "invalid_timestamp:end_timestamp"),
    ]
    for kind, record, reason in cases:
        for element in (record, orjson.dumps(record)):
            with pytest.raises(RecordError) as caught:
                parse_record(kind, element)
            assert caught.value.reason == reason
            assert "outside 1970-01-01T00:00:00Z to 9998-12-31T23:59:59Z" in caught.value.detail


def test_the_accepted_range_is_inclusive_at_1970_and_exclusive_at_9999():
    assert parse_iso("1970-01-01T00:00:00Z") == EARLIEST
    assert parse_iso("1970-01-01T01:00:00+01:00") == EARLIEST
    last = parse_iso("9998-12-31T23:59:59.999+00:00")
    assert last < LATEST and LATEST - last == timedelta(milliseconds=1)
    record, event_ms = parse_record("event", _event(timestamp="9998-12-31T23:59:59.999Z"))
    assert event_ms == 253370764799999 and record["timestamp"] == "9998-12-31T23:59:59.999Z"


@pytest.mark.parametrize("value", [None, 17, 1.5, ["2019-07-17T16:28:00Z"], "", "2019-07-17T16:28:00",
                                   "2019-07-17", "２０１９-07-17T16:28:00Z", "2019-07-17T16:28:00Z" + " " * 60,
                                   "2019-02-30T16:28:00Z", "2019-07-17T16:28:00+25:00"])
def test_parse_iso_raises_record_error_for_anything_else(value):
    with pytest.raises(RecordError) as caught:
        parse_iso(value)
    assert caught.value.reason == "invalid_timestamp"
    assert len(caught.value.detail) < MESSAGE_LIMIT


@pytest.mark.parametrize("year", [1, 5, 99, 999, 1970, 9998])
def test_output_formats_always_have_four_digit_years(year):
    moment = datetime(year, 7, 17, 8, 21, 11, 123000, tzinfo=UTC)
    padded = f"{year:04d}"
    assert format_event_time(moment) == f"{padded}-07-17T08:21:11.123+0000"
    assert format_tunnel_time(moment) == f"{padded}-07-17T08:21:11"
    assert format_usage_time(moment) == f"{padded}-07-17 08:21:11"


# --------------------------------------------------------------------------- 2. raw files

def _avro_bytes(records: list[dict[str, Any]], schema: str = "raw_event") -> bytes:
    """An Avro file with one record per block (``sync_interval=1``), so damage to
    one block leaves the others readable."""
    buffer = io.BytesIO()
    fastavro.writer(buffer, load_schema(schema), records, sync_interval=1)
    return buffer.getvalue()


def _events(count: int) -> list[dict[str, Any]]:
    return [_event(id=1000 + i, description=f"event number {i:04d}") for i in range(count)]


def _read(reader: Callable[..., Any], data: bytes, path: str = "/in/raw.avro") -> list[Any]:
    return list(reader(path, io.BytesIO(data)))


def test_a_truncated_avro_file_keeps_the_records_before_the_damage():
    data = _avro_bytes(_events(5))
    out = _read(read_avro, data[:-30])
    rows = [item for item in out if isinstance(item, dict)]
    assert [row["id"] for row in rows] == [1000, 1001, 1002, 1003]
    [damage] = [item for item in out if isinstance(item, Unreadable)]
    assert damage.reason == "damaged_file"
    assert "/in/raw.avro" in damage.detail and "records 5 onwards" in damage.detail
    assert "byte offset" in damage.detail
    assert damage.payload and len(damage.payload) <= MAX_UNREADABLE_BYTES
    assert data.find(damage.payload) > 0  # the damaged block's own bytes


def test_invalid_utf8_in_an_avro_string_dead_letters_its_record_and_reads_on():
    data = _avro_bytes(_events(3)).replace(b"event number 0001", b"event number \xff\xfe01")
    out = _read(read_avro, data)
    assert [item["id"] if isinstance(item, dict) else item.reason for item in out] == [1000, "not_utf8", 1002]
    assert "damaged Avro record 2" in out[1].detail and "/in/raw.avro" in out[1].detail


@pytest.mark.parametrize("data", [b"", b"Obj\x01", b"not avro at all" * 10, b"Obj\x01\x04\x14avro.codec"])
def test_a_file_that_is_not_avro_is_one_dead_letter(data):
    [damage] = _read(read_avro, data)
    assert damage.reason == "damaged_file" and "not a readable Avro file" in damage.detail
    assert damage.payload == data[:MAX_UNREADABLE_BYTES]


@pytest.mark.parametrize("data", [b"", b"PAR1", b"PAR1" + b"\x00" * 64 + b"PAR1", b"garbage" * 100])
def test_a_garbage_parquet_file_is_one_dead_letter(data):
    [damage] = _read(read_parquet, data, "/in/raw.parquet")
    assert damage.reason == "damaged_file"
    assert "/in/raw.parquet" in damage.detail and "not a readable Parquet file" in damage.detail


def test_a_damaged_parquet_row_group_is_a_dead_letter_and_the_others_are_read():
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    table = pa.table({"id": list(range(1, 7)), "text": [f"row-{i}-" + "x" * 200 for i in range(1, 7)]})
    pq.write_table(table, buffer, row_group_size=2, compression="none", use_dictionary=False)
    data = bytearray(buffer.getvalue())
    metadata = pq.ParquetFile(io.BytesIO(bytes(data))).metadata
    start = metadata.row_group(1).column(0).data_page_offset
    data[start:start + 24] = b"\xff" * 24  # the second row group's first page header
    out = _read(read_parquet, bytes(data), "/in/raw.parquet")
    assert [row["id"] for row in out if isinstance(row, dict)] == [1, 2, 5, 6]
    [damage] = [item for item in out if isinstance(item, Unreadable)]
    assert damage.reason == "damaged_file"
    assert "row group 2 of 3 (rows 3 onwards" in damage.detail and f"byte offset {start:,}" in damage.detail


def test_an_unreadable_element_is_dead_lettered_with_its_reason():
    with pytest.raises(RecordError) as caught:
        parse_record("event", Unreadable("damaged_file", "/in/x.avro: damaged", b"\x00"))
    assert (caught.value.reason, caught.value.detail) == ("damaged_file", "/in/x.avro: damaged")


def test_an_input_pattern_that_matches_nothing_is_one_line_and_exit_2(tmp_path, capsys, sample_reference_dir):
    pattern = str(tmp_path / "nothing-here" / "*.avro")
    status = main(["--events_input", pattern, "--reference_dir", str(sample_reference_dir),
                   "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: --events_input: ") and "matches no file" in err
