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
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from schemas.records import RecordError
from schemas.timestamps import (
    EARLIEST,
    LATEST,
    format_event_time,
    format_tunnel_time,
    format_usage_time,
    parse_iso,
)
from tests.guide_samples import RAW_EVENTS, RAW_USAGE
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
