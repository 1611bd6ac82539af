"""Direct unit tests of the pure parse and validate functions: every reason."""

from __future__ import annotations

import copy

import orjson
import pytest

from schemas.records import RecordError
from tests.guide_samples import RAW_EVENTS, RAW_USAGE
from transforms.parse import decode_json, parse_record, validate_event, validate_usage

EVENT = RAW_EVENTS["5.1.2"]
USAGE = RAW_USAGE["5.2"]


def _event(**changes):
    record = copy.deepcopy(EVENT)
    for key, value in changes.items():
        if value is _DROP:
            record.pop(key)
        else:
            record[key] = value
    return record


def _usage(**changes):
    record = copy.deepcopy(USAGE)
    for key, value in changes.items():
        if value is _DROP:
            record.pop(key)
        else:
            record[key] = value
    return record


_DROP = object()


def _reason(kind, element):
    with pytest.raises(RecordError) as caught:
        parse_record(kind, element)
    return caught.value.reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (b'{"id": 1, "description": "caf\xe9"}', "not_utf8"),
        (b'{"id": 1, "timestamp": ', "not_json"),
        (b"NaN", "not_json"),
        (b"[1, 2]", "not_an_object"),
        (b"42", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b'{"id": 1}' + b" " * 70_000, "oversized"),
    ],
)
def test_undecodable_payloads(payload, reason):
    with pytest.raises(RecordError) as caught:
        decode_json(payload)
    assert caught.value.reason == reason


def test_oversized_limit_is_configurable():
    payload = orjson.dumps(EVENT)
    assert decode_json(payload, max_bytes=len(payload))["id"] == EVENT["id"]
    with pytest.raises(RecordError, match="oversized"):
        decode_json(payload, max_bytes=len(payload) - 1)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"id": _DROP}, "missing_field:id"),
        ({"id": None}, "missing_field:id"),
        ({"timestamp": _DROP}, "missing_field:timestamp"),
        ({"id": "201370712"}, "wrong_type:id"),
        ({"id": 2.5}, "wrong_type:id"),
        ({"id": True}, "wrong_type:id"),
        ({"id": 0}, "invalid_value:id"),
        ({"id": 2**63}, "invalid_value:id"),
        ({"alert": "yes"}, "wrong_type:alert"),
        ({"alert": 0}, "wrong_type:alert"),
        ({"event_type_id": 42}, "unknown_event_type"),
        ({"event_type_id": -1}, "unknown_event_type"),
        ({"timestamp": "2019-07-12 17:04:59"}, "invalid_timestamp:timestamp"),
        ({"timestamp": "2019-07-12T17:04:59"}, "invalid_timestamp:timestamp"),
        ({"timestamp": "2019-13-45T99:00:00Z"}, "invalid_timestamp:timestamp"),
        ({"timestamp": "yesterday"}, "invalid_timestamp:timestamp"),
        ({"timestamp": 1563380880000}, "wrong_type:timestamp"),
        ({"imsi": "90140530000017X"}, "invalid_value:imsi"),
        ({"imsi": "9014053000001701234"}, "invalid_value:imsi"),
        ({"imsi": _DROP}, "missing_field:imsi"),
        ({"pdp_context": _DROP}, "missing_field:pdp_context"),
        ({"volume_rx_bytes": _DROP}, "missing_field:volume_rx_bytes"),
        ({"volume_rx_bytes": -1}, "invalid_value:volume_rx_bytes"),
        ({"pdp_context": "162094787"}, "wrong_type:pdp_context"),
    ],
)
def test_invalid_events(changes, reason):
    assert _reason("event", orjson.dumps(_event(**changes))) == reason


def test_nested_pdp_context_fields_are_checked():
    record = _event()
    record["pdp_context"]["tunnel_created"] = "2019-12-11T05:49:29"
    assert _reason("event", record) == "invalid_timestamp:pdp_context.tunnel_created"
    record = _event()
    del record["pdp_context"]["pdp_context_id"]
    assert _reason("event", record) == "missing_field:pdp_context.pdp_context_id"
    record = _event()
    record["pdp_context"]["lac"] = "40484"
    assert _reason("event", record) == "wrong_type:pdp_context.lac"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"imsi": _DROP}, "missing_field:imsi"),
        ({"cost": "0.1"}, "wrong_type:cost"),
        ({"cost": -0.5}, "invalid_value:cost"),
        ({"volume_rx": 1.5}, "wrong_type:volume_rx"),
        ({"volume_tx": -3}, "invalid_value:volume_tx"),
        ({"end_timestamp": "2019-07-17T08:21:10Z"}, "invalid_value:end_timestamp"),
        ({"start_timestamp": "17/07/2019 08:21"}, "invalid_timestamp:start_timestamp"),
        ({"traffic_type_id": 2**31}, "invalid_value:traffic_type_id"),
    ],
)
def test_invalid_usage(changes, reason):
    assert _reason("usage", orjson.dumps(_usage(**changes))) == reason


def test_valid_record_keeps_raw_values_and_defaults():
    record, event_ms = validate_event(orjson.loads(orjson.dumps(_event(extra_field="ignored"))))
    assert "extra_field" not in record
    assert record["timestamp"] == EVENT["timestamp"]
    assert record["user_id"] is None
    assert event_ms == 1562951099000
    usage, _ = validate_usage(_usage(final=_DROP, session_id=_DROP))
    assert usage["final"] is False and usage["session_id"] is None
    assert usage["cost"] == 0.00558275


def test_rows_from_files_are_checked_like_json():
    assert _reason("usage", _usage(volume_rx=-1)) == "invalid_value:volume_rx"
    assert _reason("event", _event(event_type_id=99)) == "unknown_event_type"
    assert parse_record("usage", _usage())[0]["id"] == USAGE["id"]


def test_cost_accepts_integer_json_numbers():
    record, _ = validate_usage(_usage(cost=0))
    assert record["cost"] == 0.0 and isinstance(record["cost"], float)
