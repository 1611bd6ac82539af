"""Routing: a document reaches all and only its organisation's matching, active
streams; stream type, event type and alert filters hold; the rest is filtered."""

from __future__ import annotations

import copy
import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import data_streamer
from pipelines.options import stream_limits
from pipelines.summary import summarize
from schemas.streams import StreamLimits
from tests.guide_samples import EXPECTED_EVENTS, EXPECTED_USAGE
from tests.streams import config, datadog_stream, kinesis_stream, rest_stream, s3_stream
from transforms.routing import RouteToStreams, route

ORG, OTHER = 80025, 839921


def _event(doc_id, type_id, alert=False, org=ORG):
    doc = copy.deepcopy(EXPECTED_EVENTS["5.1.1"])
    doc.update(id=doc_id, alert=alert)
    doc["event_type"] = {"id": type_id, "description": "x"}
    doc["organisation"] = {"id": org, "name": "n"}
    return doc


def _usage(doc_id, org=ORG):
    doc = copy.deepcopy(EXPECTED_USAGE["5.2"])
    doc.update(id=doc_id)
    doc["organisation"] = {"id": org, "name": "n"}
    return doc


STREAMS = config(
    rest_stream("all-events", "http://h.example/a", stream_type="events"),
    rest_stream("bulk-both", "http://h.example/b", bulk=True, stream_type="both"),
    rest_stream("location-alerts", "http://h.example/c", stream_type="events",
                filters={"event_type_ids": [1, 2], "alert": True}),
    rest_stream("no-alerts", "http://h.example/d", stream_type="both", filters={"alert": False}),
    kinesis_stream("usage-kinesis", "http://127.0.0.1:1", "st", stream_type="usage"),
    s3_stream("s3-both", "http://127.0.0.1:1", "bucket-a", batching={"rotation_seconds": 900}),
    datadog_stream("dd", "http://127.0.0.1:1", batching={"metrics_interval_seconds": 120}),
    rest_stream("paused", "http://h.example/p", state="paused"),
    rest_stream("deactivated", "http://h.example/q", state="deactivated"),
    rest_stream("other-org", "http://h.example/o", organisation_id=OTHER),
)


INACTIVE = [("parked", "deactivated"), ("parked", "paused")]


def _targets(kind, doc, deactivated=None):
    return sorted(
        (api, element[0] if isinstance(element[0], str) else element[0][0])
        for api, element in route(kind, doc, STREAMS, deactivated)
    )


def test_event_fan_out_and_filters():
    assert _targets("event", _event(1, 1, alert=True)) == sorted([
        ("aws_s3", "s3-both"), ("rest_api", "all-events"), ("rest_api", "location-alerts"),
        ("rest_api_bulk", "bulk-both"), *INACTIVE,
    ])
    assert _targets("event", _event(2, 1, alert=False)) == sorted([
        ("aws_s3", "s3-both"), ("rest_api", "all-events"), ("rest_api", "no-alerts"), ("rest_api_bulk", "bulk-both"),
        *INACTIVE,
    ])
    assert _targets("event", _event(3, 5, alert=True)) == sorted([
        ("aws_s3", "s3-both"), ("rest_api", "all-events"), ("rest_api_bulk", "bulk-both"), *INACTIVE,
    ])


def test_usage_fan_out():
    assert _targets("usage", _usage(4)) == sorted([
        ("aws_kinesis", "usage-kinesis"), ("aws_s3", "s3-both"), ("datadog", "dd"), ("rest_api", "no-alerts"),
        ("rest_api_bulk", "bulk-both"), *INACTIVE,
    ])


def test_streams_deactivated_by_an_earlier_run_are_parked_not_delivered():
    targets = _targets("usage", _usage(4), deactivated={"usage-kinesis": "not_found"})
    assert ("parked", "usage-kinesis") in targets and ("aws_kinesis", "usage-kinesis") not in targets
    parked = [e for tag, e in route("usage", _usage(4), STREAMS, {"usage-kinesis": "not_found"}) if tag == "parked"]
    assert ("usage-kinesis", ("aws_kinesis", "stream_deactivated", "not_found", ("usage", _usage(4)))) in parked
    assert ("paused", ("rest_api", "stream_paused", None, ("usage", _usage(4)))) in parked


def test_other_organisations_get_nothing():
    assert _targets("event", _event(5, 1, org=OTHER)) == [("rest_api", "other-org")]
    assert _targets("usage", _usage(6, org=4242)) == []


def test_routed_element_shapes():
    by_api = dict(route("usage", _usage(7), STREAMS))
    assert by_api["aws_s3"][0] == ("s3-both", "usage", 900)
    assert by_api["datadog"][0] == ("dd", 120)
    assert by_api["aws_kinesis"] == ("usage-kinesis", ("usage", _usage(7)))


def test_route_transform_outputs_and_filtered_count():
    events = [_event(1, 1, alert=True), _event(2, 5), _event(3, 1, org=4242)]
    p = TestPipeline()
    streams = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([STREAMS]))
    deactivated = beam.pvalue.AsSingleton(p | "Deactivated" >> beam.Create([{}]))
    routed = p | beam.Create(events) | RouteToStreams("event", streams, deactivated)
    key = beam.Map(lambda e: (e[0], e[1][1]["id"]))
    assert_that(routed.rest_api | "KeyRest" >> key, equal_to(
        [("all-events", 1), ("location-alerts", 1), ("all-events", 2), ("no-alerts", 2)]), label="Rest")
    assert_that(routed.rest_api_bulk | "KeyBulk" >> key, equal_to([("bulk-both", 1), ("bulk-both", 2)]), label="Bulk")
    assert_that(routed.aws_s3 | beam.Map(lambda e: (e[0], e[1]["id"])),
                equal_to([(("s3-both", "event", 900), 1), (("s3-both", "event", 900), 2)]), label="S3")
    assert_that(routed.datadog, equal_to([]), label="NoEventsToDataDog")
    assert_that(routed.aws_kinesis, equal_to([]), label="NoEventsToUsageKinesis")
    result = p.run()
    result.wait_until_finish()
    summary = summarize(result)
    assert summary.kinds["event"].routed == 12  # 8 deliveries and 4 parked for the inactive streams
    assert summary.kinds["event"].routed_documents == 2
    assert summary.kinds["event"].filtered == 1


def test_a_batch_job_loads_its_streams_on_the_worker_within_the_limits_of_its_flags(tmp_path, sample_reference_dir):
    """The batch graph's stream configuration is loaded on a worker with the
    job's --max_streams: a file that grew past it after the start is refused
    there too (the submitting machine's check is in tests/e2e)."""
    path = tmp_path / "streams.json"
    path.write_text(json.dumps([rest_stream(f"s{n}", "http://h.example/a") for n in range(3)]))
    options = data_streamer._parse_args([f"--events_input={tmp_path}/events.jsonl",
                                         f"--reference_dir={sample_reference_dir}", f"--streams_config={path}",
                                         f"--output_dir={tmp_path}/out", "--max_streams=2"])
    assert stream_limits(options) == StreamLimits(max_streams=2, max_streams_per_organisation=100)
    p = TestPipeline()
    side = data_streamer._batch_side_inputs(p, options, data_streamer.delivery_settings(options))
    _ = p | beam.Create([None]) | beam.Map(lambda _, streams: len(streams), side.streams)
    with pytest.raises(Exception, match=r"streams has 3 entries, more than the 2 streams a configuration may hold "
                                        r"\(--max_streams\)"):
        p.run().wait_until_finish()
