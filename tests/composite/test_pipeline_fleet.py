"""The whole batch pipeline over a generated fleet, in each raw file format.

The generator's manifest states exactly what a correct run must report (lines,
unique valid records, duplicates, dead letters by reason, documents per event
type); these tests run the real graph and compare its metrics to that, and check
every event type 0 to 15 came out as a document of the right shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.data_streamer import build_pipeline, main
from pipelines.summary import summarize
from schemas.catalogues import EVENT_TYPES, LOCATION_EVENT_TYPES, PDP_EVENT_TYPES
from tools.sample_fleet import generate

COMMON_KEYS = {"id", "alert", "description", "timestamp", "event_type", "event_source", "event_severity",
               "organisation"}
NETWORK_KEYS = COMMON_KEYS | {"endpoint", "imsi", "sim", "detail"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    directory = tmp_path_factory.mktemp("fleet")
    manifest = generate(directory, seed=11, days=2, endpoints=60, reference_format="csv")
    return directory, manifest


def _shape(document: dict[str, Any]) -> tuple[int, bool]:
    """(event type, whether the document has the objects its type must have)."""
    type_id = document["event_type"]["id"]
    keys = set(document)
    if type_id in LOCATION_EVENT_TYPES:
        ok = keys == NETWORK_KEYS and {"tapcode", "mnc", "country"} <= set(document["detail"])
    elif type_id in PDP_EVENT_TYPES:
        ok = keys == NETWORK_KEYS and "pdp_context" in document["detail"]
        ok = ok and (type_id != 5 or "volume" in document["detail"])
    elif type_id in (6, 13, 14):
        ok = "user" in keys and keys >= COMMON_KEYS
    elif type_id in (8, 9, 10):
        ok = "sim" in keys and keys >= COMMON_KEYS
    elif type_id in (11, 15):
        ok = "endpoint" in keys and keys >= COMMON_KEYS
    else:
        ok = keys >= COMMON_KEYS
    return type_id, ok and document["event_type"]["description"] == EVENT_TYPES[type_id]


@pytest.mark.parametrize("fmt", ["jsonl", "avro", "parquet"])
def test_run_reports_exactly_what_the_manifest_says(fleet, fmt):
    directory, manifest = fleet
    options = PipelineOptions(
        events_input=str(directory / "raw" / f"events.{fmt}"),
        usage_input=str(directory / "raw" / f"usage.{fmt}"),
        reference_dir=str(directory / "reference"),
    )
    p = TestPipeline(options=options)
    outputs = build_pipeline(p, options)
    shapes = outputs["event"] | beam.Map(_shape) | beam.Filter(lambda s: not s[1])
    assert_that(shapes, equal_to([]), label="EveryDocumentHasItsTypesObjects")
    result = p.run()
    result.wait_until_finish()
    summary = summarize(result)

    assert summary.reconciled
    for kind, stats in (("event", manifest[fmt]["events"]), ("usage", manifest[fmt]["usage"])):
        got = summary.kinds[kind]
        assert got.read == stats["lines"]
        assert got.documents == stats["valid_unique"]
        assert got.duplicates == stats["duplicates"]
        assert got.dead_letters == stats["dead_letters"]
    expected_types = {k: v for k, v in manifest[fmt]["events"]["event_types"].items() if v}
    assert summary.kinds["event"].documents_by_type == expected_types
    assert sorted(int(t) for t in expected_types) == list(range(16))


def _documents_written(directory: Path, fmt: str, out: Path) -> dict[str, list[bytes]]:
    code = main([
        f"--events_input={directory / 'raw' / f'events.{fmt}'}",
        f"--usage_input={directory / 'raw' / f'usage.{fmt}'}",
        f"--reference_dir={directory / 'reference'}",
        f"--output_dir={out}",
    ])
    assert code == 0
    return {
        kind: sorted(line for path in (out / kind).glob(f"{kind}-*.jsonl") for line in path.read_bytes().splitlines())
        for kind in ("events", "usage")
    }


def test_file_formats_yield_the_same_documents(fleet, tmp_path, capsys):
    """Avro and Parquet carry the same valid records as JSONL, so the documents
    written (byte for byte, not only their counts) are the same."""
    directory, manifest = fleet
    jsonl = _documents_written(directory, "jsonl", tmp_path / "jsonl")
    avro = _documents_written(directory, "avro", tmp_path / "avro")
    assert len(jsonl["events"]) == manifest["jsonl"]["events"]["valid_unique"]
    assert len(jsonl["usage"]) == manifest["jsonl"]["usage"]["valid_unique"]
    assert avro == jsonl
