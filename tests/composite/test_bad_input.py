"""Bad input end to end: every kind of malformed or unresolvable record lands in
dead letters with its own reason and original payload, nothing raises, and the
counts reconcile: read = documents + duplicates + dead letters."""

from __future__ import annotations

import base64
import copy
from collections import Counter

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.data_streamer import build_pipeline
from pipelines.summary import summarize
from schemas.records import dead_letter_json
from tests.guide_samples import EXPECTED_EVENTS, EXPECTED_USAGE, RAW_EVENTS, RAW_USAGE


def _line(record, **changes):
    out = copy.deepcopy(record)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return orjson.dumps(out)


UL, PDP, AUTH = RAW_EVENTS["5.1.1"], RAW_EVENTS["5.1.2"], RAW_EVENTS["5.1.3"]
USAGE = RAW_USAGE["5.2"]

#: (reason, raw line) of each bad event; ids are distinct so letters are traceable.
BAD_EVENTS = [
    ("empty", b""),
    ("not_utf8", _line(AUTH, id=9001, description="x")[:-2] + b'\xff"}'),
    ("not_json", b'{"id": 9002, "timestamp": "2026-11-01T'),
    ("not_an_object", b"[9003]"),
    ("oversized", _line(AUTH, id=9004, description="A" * 70_000)),
    ("missing_field:id", _line(AUTH, id=None)),
    ("missing_field:imsi", _line(UL, id=9006, imsi=None)),
    ("wrong_type:alert", _line(AUTH, id=9007, alert="yes")),
    ("unknown_event_type", _line(AUTH, id=9008, event_type_id=42)),
    ("invalid_timestamp:timestamp", _line(AUTH, id=9009, timestamp="2026-11-02T10:00:00")),
    ("unknown_reference:organisation", _line(AUTH, id=9010, organisation_id=1)),
    ("unknown_reference:sim", _line(UL, id=9011, sim_id=5)),
    ("unknown_reference:user", _line(AUTH, id=9012, user_id=5)),
    ("reference_mismatch:imsi_sim", _line(UL, id=9013, imsi="901405300000172")),
]
BAD_USAGE = [
    ("wrong_type:volume_rx", _line(USAGE, id=9101, volume_rx=1.5)),
    ("invalid_value:volume_tx", _line(USAGE, id=9102, volume_tx=-1)),
    ("invalid_value:end_timestamp", _line(USAGE, id=9103, end_timestamp="2019-07-17T08:00:00Z")),
    ("invalid_value:imsi", _line(USAGE, id=9104, imsi="90140530000017A")),
    ("unknown_reference:tariff", _line(USAGE, id=9105, tariff_id=5)),
    ("unknown_reference:endpoint", _line(USAGE, id=9106, endpoint_id=5)),
]


def _jsonl(lines):
    return b"\n".join(lines) + b"\n"


def test_bad_input_is_dead_lettered_with_reasons_and_counts_reconcile(tmp_path, sample_reference_dir):
    good_events = [orjson.dumps(r) for r in RAW_EVENTS.values()]
    events = good_events + [good_events[0], good_events[0]] + [line for _, line in BAD_EVENTS]
    usage = [orjson.dumps(USAGE)] * 3 + [line for _, line in BAD_USAGE]
    (tmp_path / "events.jsonl").write_bytes(_jsonl(events))
    (tmp_path / "usage.jsonl").write_bytes(_jsonl(usage))
    options = PipelineOptions(
        events_input=str(tmp_path / "events.jsonl"),
        usage_input=str(tmp_path / "usage.jsonl"),
        reference_dir=str(sample_reference_dir),
    )

    p = TestPipeline(options=options)
    outputs = build_pipeline(p, options)
    assert_that(outputs["event"], equal_to(list(EXPECTED_EVENTS.values())), label="CheckEvents")
    assert_that(outputs["usage"], equal_to(list(EXPECTED_USAGE.values())), label="CheckUsage")
    reasons = outputs["dead_letters"] | beam.Map(lambda d: (d["kind"], d["reason"]))
    expected_reasons = [("event", r) for r, _ in BAD_EVENTS] + [("usage", r) for r, _ in BAD_USAGE]
    assert_that(reasons, equal_to(expected_reasons), label="CheckReasons")
    parse_stage = (
        outputs["dead_letters"]
        | "ParseStage" >> beam.Filter(lambda d: d["stage"] == "parse")
        | "ReasonAndPayload" >> beam.Map(lambda d: (d["reason"], d["payload"]))
    )
    enrich_reasons = ("unknown_reference", "reference_mismatch")
    assert_that(
        parse_stage,
        equal_to([(r, line) for r, line in BAD_EVENTS + BAD_USAGE if not r.startswith(enrich_reasons)]),
        label="ParseStagePayloadsAreTheOriginalBytes",
    )
    result = p.run()
    result.wait_until_finish()

    summary = summarize(result)
    assert len(set(expected_reasons)) >= 12
    event, usage_summary = summary.kinds["event"], summary.kinds["usage"]
    assert (event.read, event.documents, event.duplicates) == (len(events), 3, 2)
    assert event.dead_letters == Counter(r for r, _ in BAD_EVENTS)
    assert (usage_summary.read, usage_summary.documents, usage_summary.duplicates) == (len(usage), 1, 2)
    assert usage_summary.dead_letters == Counter(r for r, _ in BAD_USAGE)
    for kind in (event, usage_summary):
        assert kind.read == kind.documents + kind.duplicates + kind.dead_letter_total
    assert summary.reconciled


def test_enrich_stage_dead_letter_carries_the_validated_raw_record(tmp_path, sample_reference_dir):
    (tmp_path / "events.jsonl").write_bytes(_jsonl([_line(UL, id=9011, sim_id=5)]))
    options = PipelineOptions(events_input=str(tmp_path / "events.jsonl"), reference_dir=str(sample_reference_dir))
    with TestPipeline(options=options) as p:
        letters = build_pipeline(p, options)["dead_letters"]
        summary = letters | beam.Map(
            lambda d: (d["stage"], d["reason"], d["record_id"], orjson.loads(d["payload"])["sim_id"])
        )
        assert_that(
            summary,
            equal_to([("enrich", "unknown_reference:sim", 9011, 5)]),
        )


def test_dead_letter_json_keeps_any_payload_bytes():
    letter = {"kind": "event", "stage": "parse", "reason": "not_utf8", "detail": "d", "record_id": None,
              "payload": b"\xff\x00{"}
    decoded = orjson.loads(dead_letter_json(letter))
    assert base64.b64decode(decoded["payload"]) == b"\xff\x00{"
    assert decoded["reason"] == "not_utf8"


def test_damaged_avro_and_parquet_files_become_dead_letters_and_counts_reconcile(tmp_path, sample_reference_dir):
    """A truncated Avro file, an Avro string with invalid UTF-8 and a garbage
    Parquet file: the records before the damage are delivered, each damaged part
    is one dead letter naming its file, and the run's counts add up (Beam's own
    readers failed the whole run with a traceback)."""
    import io

    import fastavro

    from schemas import load_schema

    def avro(records):
        buffer = io.BytesIO()
        fastavro.writer(buffer, load_schema("raw_event"), records, sync_interval=1)
        return buffer.getvalue()

    events = list(RAW_EVENTS.values())
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a-truncated.avro").write_bytes(avro(events)[:-25])
    bad_text = dict(AUTH, id=9201, description="marker-text")
    after = dict(UL, id=9202)  # read on after the damaged record
    utf8 = avro([bad_text, after]).replace(b"marker-text", b"marker\xff\xfetxt")
    (tmp_path / "in" / "b-utf8.avro").write_bytes(utf8)
    (tmp_path / "usage.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 50 + b"PAR1")
    options = PipelineOptions(
        events_input=str(tmp_path / "in" / "*.avro"),
        usage_input=str(tmp_path / "usage.parquet"),
        reference_dir=str(sample_reference_dir),
    )
    p = TestPipeline(options=options)
    outputs = build_pipeline(p, options)
    documents = outputs["event"] | beam.Map(lambda d: d["id"])
    assert_that(documents, equal_to([events[0]["id"], events[1]["id"], 9202]), label="CheckEvents")
    letters = outputs["dead_letters"] | beam.Map(
        lambda d: (d["kind"], d["stage"], d["reason"], d["detail"].split(": ")[0].rsplit("/", 1)[-1]))
    assert_that(letters, equal_to([
        ("event", "parse", "damaged_file", "a-truncated.avro"),
        ("event", "parse", "not_utf8", "b-utf8.avro"),
        ("usage", "parse", "damaged_file", "usage.parquet"),
    ]), label="CheckDeadLetters")
    result = p.run()
    result.wait_until_finish()
    summary = summarize(result)
    event = summary.kinds["event"]
    assert (event.read, event.documents) == (5, 3)
    assert event.read == event.documents + event.duplicates + event.dead_letter_total
    assert event.dead_letters == Counter({"damaged_file": 1, "not_utf8": 1})
    assert summary.kinds["usage"].dead_letters == Counter({"damaged_file": 1})
    assert summary.reconciled
