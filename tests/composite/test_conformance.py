"""Conformance with the product guide: raw records that correspond to the guide's
four JSON samples produce exactly those documents (names, nesting, types,
formats, key order). The samples and their corrections are in guide_samples.py."""

from __future__ import annotations

import json

import apache_beam as beam
import fastavro
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to, is_empty

from pipelines.data_streamer import build_pipeline
from schemas import load_schema
from schemas.arrow import arrow_schema
from tests.guide_samples import EXPECTED_EVENTS, EXPECTED_USAGE, RAW_EVENTS, RAW_USAGE
from transforms.enrich import enrich_event, enrich_usage
from transforms.parse import parse_record


def _types(value):
    """The JSON type tree of a value, to compare types and not only values."""
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value).__name__


@pytest.mark.parametrize("sample", sorted(EXPECTED_EVENTS))
def test_event_sample_from_json_bytes(sample, sample_reference):
    record, _ = parse_record("event", orjson.dumps(RAW_EVENTS[sample]))
    document = enrich_event(record, sample_reference)
    expected = EXPECTED_EVENTS[sample]
    assert document == expected
    assert list(document) == list(expected)
    assert _types(document) == _types(expected)
    # What a receiver gets on the wire parses back to the sample.
    assert json.loads(orjson.dumps(document)) == expected


def test_usage_sample_from_json_bytes(sample_reference):
    record, _ = parse_record("usage", orjson.dumps(RAW_USAGE["5.2"]))
    document = enrich_usage(record, sample_reference)
    assert document == EXPECTED_USAGE["5.2"]
    assert list(document) == list(EXPECTED_USAGE["5.2"])
    assert _types(document) == _types(EXPECTED_USAGE["5.2"])
    assert "€" in orjson.dumps(document).decode("utf-8")


def test_event_time_is_the_records_own_timestamp():
    _, event_ms = parse_record("event", orjson.dumps(RAW_EVENTS["5.1.1"]))
    assert event_ms == 1563380880000  # 2019-07-17T16:28:00Z
    _, usage_ms = parse_record("usage", RAW_USAGE["5.2"])
    assert usage_ms == 1563351720000  # end of the interval, 2019-07-17T08:22:00Z


def _write_inputs(tmp_path, fmt):
    events, usage = list(RAW_EVENTS.values()), list(RAW_USAGE.values())
    if fmt == "jsonl":
        (tmp_path / "events.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in events))
        (tmp_path / "usage.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in usage))
    elif fmt == "avro":
        for name, schema, rows in (("events", "raw_event", events), ("usage", "raw_usage", usage)):
            with open(tmp_path / f"{name}.avro", "wb") as handle:
                fastavro.writer(handle, load_schema(schema), rows)
    else:
        for name, schema, rows in (("events", "raw_event", events), ("usage", "raw_usage", usage)):
            table = pa.Table.from_pylist(rows, schema=arrow_schema(schema))
            pq.write_table(table, tmp_path / f"{name}.parquet")
    return str(tmp_path / f"events.{fmt}"), str(tmp_path / f"usage.{fmt}")


@pytest.mark.parametrize("fmt", ["jsonl", "avro", "parquet"])
def test_pipeline_produces_the_samples_from_every_file_format(tmp_path, sample_reference_dir, fmt):
    events_input, usage_input = _write_inputs(tmp_path, fmt)
    options = PipelineOptions(
        events_input=events_input, usage_input=usage_input, reference_dir=str(sample_reference_dir)
    )
    with TestPipeline(options=options) as p:
        outputs = build_pipeline(p, options)
        assert_that(outputs["event"], equal_to(list(EXPECTED_EVENTS.values())), label="CheckEvents")
        assert_that(outputs["usage"], equal_to(list(EXPECTED_USAGE.values())), label="CheckUsage")
        assert_that(outputs["dead_letters"], is_empty(), label="CheckNoDeadLetters")


def test_documents_serialize_to_the_samples_json(tmp_path, sample_reference_dir):
    events_input, usage_input = _write_inputs(tmp_path, "jsonl")
    options = PipelineOptions(
        events_input=events_input, usage_input=usage_input, reference_dir=str(sample_reference_dir)
    )
    with TestPipeline(options=options) as p:
        outputs = build_pipeline(p, options)
        wire = outputs["event"] | beam.Map(lambda doc: json.loads(orjson.dumps(doc)))
        assert_that(wire, equal_to(list(EXPECTED_EVENTS.values())))
