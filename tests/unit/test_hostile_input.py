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

import contextlib
import copy
import io
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
import yaml
from apache_beam.transforms.window import IntervalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PANE_INFO_UNKNOWN
from hypothesis import given
from hypothesis import strategies as st

from pipelines.data_streamer import main
from schemas import load_schema
from schemas.records import QUOTE_LIMIT, RecordError, Unreadable, payload_bytes, quote
from schemas.streams import StreamConfigError, parse_stream_config, stream_from_dict
from schemas.timestamps import (
    EARLIEST,
    LATEST,
    format_event_time,
    format_tunnel_time,
    format_usage_time,
    parse_iso,
)
from sinks.csv_format import cell, to_row
from sinks.s3 import _S3WriteFn
from tests.conftest import reference_from_tables, write_reference
from tests.documents import event_doc
from tests.guide_samples import RAW_EVENTS, RAW_USAGE, reference_tables
from tests.streams import config, datadog_stream, kinesis_stream, rest_stream, s3_stream
from transforms import routing
from transforms.files import MAX_UNREADABLE_BYTES, read_avro, read_parquet
from transforms.parse import parse_record
from transforms.reference import (
    MAX_CELL_CHARS,
    ReferenceDataError,
    build_reference_data,
    load_reference_data,
    load_table,
)
from transforms.routing import load_stream_config

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


# --------------------------------------------------------------------------- 3. loaders

def _config_error(text: str) -> str:
    with pytest.raises(StreamConfigError) as caught:
        parse_stream_config(text, source="streams.yaml")
    return str(caught.value)


def _stream_error(stream: dict[str, Any]) -> str:
    with pytest.raises(StreamConfigError) as caught:
        stream_from_dict(stream)
    return str(caught.value)


def test_a_yaml_alias_bomb_is_refused_without_expanding_it():
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
        f"*a{i - 1}, *a{i - 1}]\n" for i in range(1, 6)
    )
    text = bomb + "streams:\n  - id: *a5\n"
    message = _config_error(text)
    assert len(message) < MESSAGE_LIMIT
    assert "streams.yaml" in message and "anchors" in message


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "{\"a\": " * 100_000 + "1" + "}" * 100_000,
                                  "a:\n" + "".join(" " * i + "- \n" for i in range(1, 200)),
                                  "streams: " + "[" * 100_000])
def test_deeply_nested_stream_configs_are_refused(text):
    message = _config_error(text)
    assert len(message) < MESSAGE_LIMIT and "streams.yaml" in message


def test_an_oversized_stream_config_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(routing, "MAX_CONFIG_BYTES", 1000)
    path = tmp_path / "streams.json"
    path.write_text(json.dumps({"streams": [rest_stream(f"r{i}", URL) for i in range(10)]}))
    with pytest.raises(StreamConfigError, match="larger than the 1,000 bytes"):
        load_stream_config(str(path))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(created_at="0001-01-01T00:30:00+01:00"), "stream 'r': created_at must be ISO 8601"),
        (lambda s: s.update(created_at="9999-12-31T23:30:00-01:00"), "stream 'r': created_at must be ISO 8601"),
        (lambda s: s.update(organisation_id=2**70), "stream 'r': organisation_id is out of the long range"),
        (lambda s: s.update(batching={"bulk_size": 10**400}), "stream 'r': batching.bulk_size must be between"),
        (lambda s: s["rest"].update(url="https://hooks.example.com:99999/iot"), "stream 'r': rest.url is not a "
                                                                                  "valid URL"),
        (lambda s: s["rest"].update(url="https://[::1/iot"), "stream 'r': rest.url is not a valid URL"),
        (lambda s: s["rest"].update(url="https://hooks.example.com/\niot"), "stream 'r': rest.url must not contain"),
        (lambda s: s.update(state="x" * 100_000), "stream 'r': state must be one of"),
        (lambda s: s["rest"]["headers"].update({"X-Customer": "a\r\nX-Injected: 1"}),
         "stream 'r': rest.headers has an invalid value for header 'X-Customer'"),
    ],
)
def test_out_of_range_stream_values_are_clean_errors(change, message):
    stream = copy.deepcopy(rest_stream("r", URL))
    change(stream)
    error = _stream_error(stream)
    assert message in error and len(error) < MESSAGE_LIMIT


def test_patterns_match_whole_values_not_up_to_a_trailing_newline():
    assert "id must be" in _stream_error(rest_stream("fleet-events\n", URL))
    header = rest_stream("r", URL)
    header["rest"]["headers"] = {"X-Customer\n": "tests"}
    assert "rest.headers has an invalid header" in _stream_error(header)
    auth = rest_stream("r", URL)
    auth["rest"]["auth_header"] = "Authorization\n"
    assert "rest.auth_header is not a valid header name" in _stream_error(auth)
    datadog = datadog_stream("d", "http://127.0.0.1:9")
    datadog["datadog"]["site"] = "datadoghq.eu\n"
    assert "datadog.site is not a DataDog site" in _stream_error(datadog)
    kinesis = kinesis_stream("k", "http://127.0.0.1:9", "st")
    kinesis["kinesis"]["region"] = "eu-central-1\n"
    assert "kinesis.region is not an AWS region" in _stream_error(kinesis)


@pytest.mark.parametrize("prefix", ["../other/", "a/../../b/", "a/./b/", "..", "iot\x00/", "iot/\n", "iot\x85/"])
def test_s3_prefixes_with_dot_segments_or_control_characters_are_refused(prefix):
    error = _stream_error(s3_stream("s", "http://127.0.0.1:9", "bucket", prefix=prefix))
    assert "stream 's': s3.prefix must not" in error


def test_unknown_keys_are_errors_naming_the_stream_the_key_and_the_closest_field():
    stream = rest_stream("r", URL, histroic_data=True)
    assert ("stream 'r': histroic_data is not a known field (did you mean 'historic_data'?)"
            in _stream_error(stream))
    nested = rest_stream("r", URL)
    nested["rest"]["metod"] = "PUT"
    assert "stream 'r': rest.metod is not a known field (did you mean 'method'?)" in _stream_error(nested)
    batching = s3_stream("s", "http://127.0.0.1:9", "bucket", batching={"rotation": 60})
    assert "stream 's': batching.rotation is not a known field (did you mean" in _stream_error(batching)
    kinesis = kinesis_stream("k", "http://127.0.0.1:9", "st")
    kinesis["kinesis"]["prefix"] = "p/"  # an S3 field: Kinesis has no prefix
    assert "stream 'k': kinesis.prefix is not a known field" in _stream_error(kinesis)
    odd = rest_stream("r", URL)
    odd["x" * 5000] = 1
    assert len(_stream_error(odd)) < MESSAGE_LIMIT
    assert "'stream' is not a known key" in _config_error(json.dumps({"stream": []}))


def _reference_error(directory: Path) -> str:
    with pytest.raises(ReferenceDataError) as caught:
        load_reference_data(str(directory))
    return str(caught.value)


def test_a_csv_short_row_names_file_and_line(tmp_path):
    directory = write_reference(tmp_path / "ref", reference_tables(), "csv")
    path = directory / "operator.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0]
    path.write_text("\n".join(lines) + "\n")
    assert "operator.csv line 3: has 2 cells, the header has 3" in _reference_error(directory)


def test_a_csv_long_row_names_file_and_line(tmp_path):
    directory = write_reference(tmp_path / "ref", reference_tables(), "csv")
    path = directory / "operator.csv"
    lines = path.read_text().splitlines()
    lines[2] += ",surplus"
    path.write_text("\n".join(lines) + "\n")
    assert "operator.csv line 3: has 4 cells, the header has 3" in _reference_error(directory)


@pytest.mark.parametrize("size", [MAX_CELL_CHARS + 1, 200_000])
def test_an_oversized_csv_cell_is_refused_with_a_bounded_message(tmp_path, size):
    tables = reference_tables()
    tables["organisation"][0]["name"] = "N" * size
    message = _reference_error(write_reference(tmp_path / "ref", tables, "csv"))
    assert "organisation.csv line 2" in message and len(message) < MESSAGE_LIMIT


def test_a_bad_cell_is_quoted_by_a_bounded_prefix(tmp_path):
    tables = reference_tables()
    tables["operator"][0]["country_id"] = "9" * 5000 + "x"
    message = _reference_error(write_reference(tmp_path / "ref", tables, "csv"))
    assert "operator.csv line 2: field country_id:" in message and len(message) < MESSAGE_LIMIT


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_deeply_nested_reference_json_is_refused(tmp_path, fmt):
    directory = write_reference(tmp_path / "ref", reference_tables(), fmt)
    (directory / f"country.{fmt}").write_text("[" * 100_000 + "]" * 100_000)
    message = _reference_error(directory)
    assert f"country.{fmt}" in message and "nested more than 32 levels" in message


@pytest.mark.parametrize("date", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00", "1969-07-20T20:17:40Z"])
def test_out_of_range_reference_dates_are_clean_errors(tmp_path, date):
    tables = reference_tables()
    tables["sim"][0]["production_date"] = date
    assert "sim 274887: production_date: timestamp is outside" in _reference_error(
        write_reference(tmp_path / "ref", tables, "json"))


def test_an_oversized_reference_file_is_refused_unread(tmp_path, monkeypatch):
    from transforms import reference

    monkeypatch.setattr(reference, "MAX_REFERENCE_FILE_BYTES", 100)
    message = _reference_error(write_reference(tmp_path / "ref", reference_tables(), "json"))
    assert "larger than the 100 bytes" in message


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
def test_garbage_reference_files_are_clean_errors(tmp_path, fmt):
    directory = write_reference(tmp_path / "ref", reference_tables(), fmt)
    (directory / f"currency.{fmt}").write_bytes(b"\xff\xfe\x00garbage\x00" * 100)
    message = _reference_error(directory)
    assert f"currency.{fmt}" in message and len(message) < MESSAGE_LIMIT


def test_bad_reference_data_and_stream_configs_exit_2_with_one_line(tmp_path, capsys, sample_reference_dir):
    events = tmp_path / "events.jsonl"
    events.write_bytes(orjson.dumps(RAW_EVENTS["5.1.3"]) + b"\n")
    args = ["--events_input", str(events), "--output_dir", str(tmp_path / "out")]
    bad_reference = write_reference(tmp_path / "ref", reference_tables(), "csv")
    (bad_reference / "country.csv").write_text("id,name,country_code,mcc,iso_code\n1,Germany\n")
    assert main([*args, "--reference_dir", str(bad_reference)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "country.csv line 2: has 2 cells" in err
    bomb = tmp_path / "streams.yaml"
    bomb.write_text("a: &a [x, x]\nb: &b [*a, *a]\nstreams:\n  - id: *b\n")
    assert main([*args, "--reference_dir", str(sample_reference_dir), "--streams_config", str(bomb)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "streams.yaml" in err and "anchors" in err


def test_quote_is_bounded_for_any_value():
    assert quote("abc") == "'abc'"
    assert len(quote("x" * 10_000)) < QUOTE_LIMIT + 40
    assert quote(10**5000) == "an integer of 16,610 bits"
    assert quote([[1]] * 10**6) == "a list of 1,000,000 items"


# --------------------------------------------------------------------------- 5. CSV injection

class _RecordingS3:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self.bodies.append(kwargs["Body"])
        return {"ETag": '"0"', "ResponseMetadata": {"HTTPStatusCode": 200}}

    def close(self) -> None:
        pass


def test_escape_formulas_is_a_boolean_and_defaults_to_true():
    assert stream_from_dict(s3_stream("s", "http://127.0.0.1:9", "b")).destination.escape_formulas is True
    raw = s3_stream("s", "http://127.0.0.1:9", "b")
    raw["s3"]["escape_formulas"] = False
    assert stream_from_dict(raw).destination.escape_formulas is False
    raw["s3"]["escape_formulas"] = "no"
    assert "stream 's': s3.escape_formulas must be a boolean" in _stream_error(raw)


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_text_cells_that_start_a_formula_are_escaped(text):
    assert cell(text) == "'" + text
    assert cell(text, escape_formulas=False) == text


def test_numbers_and_other_text_are_not_escaped():
    assert cell(-1.5) == "-1.5" and cell(-3) == "-3" and cell(0.00558275) == "0.00558275"
    assert cell("PDP Context deleted.") == "PDP Context deleted." and cell("") == "" and cell(None) == ""
    assert cell([1, 2]) == "[1,2]" and cell(True) == "true"


@pytest.mark.parametrize(("escape", "expected"), [(None, "'=cmd|' /C calc'!A0"), (False, "=cmd|' /C calc'!A0")])
def test_the_s3_sink_escapes_formulas_unless_the_stream_opts_out(stream_secrets, escape, expected):
    import csv

    stream = s3_stream("s1", "http://127.0.0.1:9", "bucket")
    if escape is not None:
        stream["s3"]["escape_formulas"] = escape
    base = datetime(2026, 11, 1, 8, 5, tzinfo=UTC)
    doc = event_doc("5.1.3", 7, base)
    doc["description"] = "=cmd|' /C calc'!A0"
    client = _RecordingS3()
    fn = _S3WriteFn(lambda *args: client, allow_insecure=True)  # the recorded endpoint is a loopback stand-in
    fn.setup()
    window = IntervalWindow(Timestamp.of(base.timestamp()), Timestamp.of(base.timestamp() + 300))
    list(fn.process((("s1", "event", 300), [doc]), config(stream), window=window, pane=PANE_INFO_UNKNOWN))
    fn.teardown()
    [row] = list(csv.DictReader(io.StringIO(client.bodies[0].decode("utf-8"))))
    assert row["description"] == expected
    assert to_row("event", doc)[2] == "'=cmd|' /C calc'!A0"


# --------------------------------------------------------------------------- 6. properties

#: Test-body calls per property, printed at the end of a long run.
EXAMPLES: Counter[str] = Counter()
_OFFSETS = st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=14)),
                            timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(minutes=1))])
TIMESTAMPS = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59), timezones=_OFFSETS)
    .map(lambda moment: moment.isoformat()),
    st.datetimes(timezones=_OFFSETS).map(lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%S%z")),
    st.text(alphabet="0123456789-+:TtZz. ", max_size=40),
    st.sampled_from(EDGE_TIMESTAMPS),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 0, -1]),
    # Beyond Python's 4,300-digit limit for int <-> str (built lazily: even repr fails).
    st.sampled_from([5000, -5000]).map(lambda digits: 10**digits if digits > 0 else -(10**-digits)),
    st.floats(), st.text(), st.text(alphabet=st.characters(codec="utf-8", exclude_categories=())),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3),
    TIMESTAMPS,
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into nested dicts, for mutations."""
    found = []
    if isinstance(value, dict):
        for key, child in value.items():
            found.append((*prefix, key))
            found.extend(_paths(child, (*prefix, key)))
    return found


@st.composite
def mutated(draw: st.DrawFn, bases: list[dict[str, Any]], values: st.SearchStrategy = VALUES) -> dict[str, Any]:
    """A base document with a few values replaced, removed or added."""
    document = copy.deepcopy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        paths = _paths(document)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        else:
            parent[draw(st.text(max_size=12))] = draw(values)
    return document


def _explore(name: str, prop: Callable[[], None]) -> None:
    """Run a property once at the profile's ``max_examples``; with
    ``HYPOTHESIS_SECONDS`` set, keep running it (fresh random examples each time)
    for that many seconds, then print how many examples ran."""
    seconds = float(os.environ.get("HYPOTHESIS_SECONDS", "0"))
    deadline = time.monotonic() + seconds
    prop()
    while time.monotonic() < deadline:
        prop()
    if seconds:
        print(f"\nhypothesis: {name}: {EXAMPLES[name]:,} examples in {seconds:.0f} s")


@given(kind=st.sampled_from(["event", "usage"]),
       element=st.one_of(mutated(list(RAW_EVENTS.values()) + list(RAW_USAGE.values())), VALUES, st.binary()),
       as_bytes=st.booleans())
def _parse_record_property(kind: str, element: Any, as_bytes: bool) -> None:
    EXAMPLES["parse_record"] += 1
    if as_bytes and not isinstance(element, bytes):
        element = payload_bytes(element)  # its JSON, or its repr when JSON cannot hold it
    with contextlib.suppress(RecordError):
        parse_record(kind, element)


def test_parse_record_raises_nothing_but_record_error():
    _explore("parse_record", _parse_record_property)


def _stream_bases() -> list[dict[str, Any]]:
    return [
        rest_stream("r", URL, filters={"event_type_ids": [1, 2], "alert": True}, batching={"bulk_size": 5}),
        rest_stream("rb", URL, bulk=True),
        kinesis_stream("k", "http://127.0.0.1:1", "st"),
        s3_stream("s", "http://127.0.0.1:1", "bucket-a", prefix="p/", batching={"rotation_seconds": 60}),
        datadog_stream("d", "http://127.0.0.1:1", batching={"metrics_interval_seconds": 120}),
    ]


@given(stream=mutated(_stream_bases()), form=st.sampled_from(["dict", "json", "yaml"]))
def _stream_config_property(stream: dict[str, Any], form: str) -> None:
    EXAMPLES["stream config"] += 1
    try:
        if form == "dict":
            stream_from_dict(stream)
            return
        try:
            text = (json.dumps({"streams": [stream]}) if form == "json"
                    else yaml.safe_dump({"streams": [stream]}, allow_unicode=True))
        except (TypeError, ValueError, yaml.YAMLError):
            return  # not representable in that form
        parse_stream_config(text)
    except StreamConfigError:
        pass


@given(text=st.one_of(st.text(), st.text(alphabet="[]{}:,-&*!|>'\"\n #ab1"), st.binary().map(
    lambda data: data.decode("utf-8", "replace"))))
def _stream_text_property(text: str) -> None:
    EXAMPLES["stream config text"] += 1
    with contextlib.suppress(StreamConfigError):
        parse_stream_config(text)


def test_the_stream_config_loader_raises_nothing_but_stream_config_error():
    _explore("stream config", _stream_config_property)
    _explore("stream config text", _stream_text_property)


_TABLES = reference_tables()
_ENTITIES = ["sim", "operator", "imsi", "organisation", "traffic_type"]
_CELLS = st.one_of(SCALARS.filter(lambda v: not isinstance(v, str) or "\x00" not in v), TIMESTAMPS)


def _write_table(directory: Path, entity: str, fmt: str, rows: list[Any]) -> None:
    for old in directory.glob(f"{entity}.*"):
        old.unlink()
    path = directory / f"{entity}.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8", errors="surrogatepass")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8",
                        errors="surrogatepass")
    else:
        import csv

        names = sorted({str(key) for row in rows if isinstance(row, dict) for key in row})
        with path.open("w", newline="", encoding="utf-8", errors="surrogatepass") as handle:
            writer = csv.writer(handle)
            writer.writerow(names)
            for row in rows:
                values = row if isinstance(row, dict) else {}
                writer.writerow(["" if values.get(n) is None else values.get(n) for n in names])


@given(entity=st.sampled_from(_ENTITIES), fmt=st.sampled_from(["json", "jsonl", "csv", "parquet"]), data=st.data())
def _reference_property(entity: str, fmt: str, data: st.DataObject) -> None:
    EXAMPLES["reference tables"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        if fmt == "parquet" or data.draw(st.booleans()):
            (directory / f"{entity}.{fmt}").write_bytes(data.draw(st.binary(max_size=2000)))
        else:
            rows = [data.draw(mutated(_TABLES[entity], _CELLS)) for _ in range(data.draw(st.integers(1, 3)))]
            try:
                _write_table(directory, entity, fmt, rows)
            except (TypeError, ValueError):
                return  # not representable in that format
        try:
            table = load_table(str(directory), entity)
            tables = {name: {row["id"]: dict(row) for row in rows} for name, rows in _TABLES.items()}
            tables[entity] = table
            build_reference_data(tables)
        except ReferenceDataError:
            pass


def test_the_reference_loader_raises_nothing_but_reference_data_error():
    _explore("reference tables", _reference_property)


def test_the_sample_tables_still_load():
    """The property's base tables are valid, so mutations start from good data."""
    assert reference_from_tables(_TABLES).sizes()["sim"] == len(_TABLES["sim"])
