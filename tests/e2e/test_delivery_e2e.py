"""The whole job delivering to real local destinations (loopback HTTP receiver,
moto's server): each destination receives exactly the documents its stream
should get, and no secret from the stream config leaks into logs, outputs, dead
letters, delivery results or the pickled pipeline."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import data_streamer
from schemas.streams import parse_stream_config
from sinks.csv_format import flatten
from tests.documents import kinesis_documents
from tests.streams import REGION, datadog_stream, kinesis_stream, rest_stream, s3_stream
from tools.sample_fleet import generate
from transforms.routing import route

KINESIS = "e2e-usage"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("fleet")
    generate(directory, seed=5, days=1, endpoints=40)
    return directory


def _streams(org: int, other: int, http_url: str, aws_url: str) -> list[dict[str, Any]]:
    return [
        rest_stream("rest-events", f"{http_url}/rest-events", stream_type="events", organisation_id=org),
        rest_stream("bulk-both", f"{http_url}/bulk-both", bulk=True, organisation_id=org,
                    batching={"bulk_size": 250}),
        rest_stream("bulk-alerts", f"{http_url}/bulk-alerts", bulk=True, stream_type="events",
                    organisation_id=other, filters={"event_type_ids": [1, 2, 3], "alert": False}),
        kinesis_stream("kinesis-usage", aws_url, KINESIS, stream_type="usage", organisation_id=org),
        s3_stream("s3-both", aws_url, "e2e-bucket", prefix="iot/", organisation_id=org,
                  batching={"rotation_seconds": 900}),
        datadog_stream("dd", f"{http_url}/dd", organisation_id=org, batching={"metrics_interval_seconds": 600}),
        rest_stream("paused", f"{http_url}/paused", organisation_id=org, state="paused"),
    ]


def _documents(out: Path) -> dict[str, list[dict[str, Any]]]:
    docs = {}
    for kind, folder in (("event", "events"), ("usage", "usage")):
        docs[kind] = [json.loads(line) for path in sorted((out / folder).glob("*.jsonl"))
                      for line in path.read_text(encoding="utf-8").splitlines()]
    return docs


def _csv_rows(value: Any) -> str:
    return "" if value is None else str(value)


@pytest.fixture(scope="module")
def delivered(fleet, tmp_path_factory, moto_server):
    """Run the job once for the module; yield everything the tests inspect."""
    from tests.streams import SECRETS
    from tools.local_destinations import HttpReceiver

    monkeypatch = pytest.MonkeyPatch()
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    orgs = sorted(json.loads((fleet / "reference" / "organisation.json").read_text()), key=lambda o: o["id"])
    org, other = orgs[0]["id"], orgs[1]["id"]
    out = tmp_path_factory.mktemp("out")
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_server.url, region_name=REGION,
                      aws_access_key_id="t", aws_secret_access_key="t")
    kinesis = boto3.client("kinesis", endpoint_url=moto_server.url, region_name=REGION,
                           aws_access_key_id="t", aws_secret_access_key="t")
    s3.create_bucket(Bucket="e2e-bucket", CreateBucketConfiguration={"LocationConstraint": REGION})
    kinesis.create_stream(StreamName=KINESIS, ShardCount=2)
    kinesis.get_waiter("stream_exists").wait(StreamName=KINESIS, WaiterConfig={"Delay": 0.2})

    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Collect(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with HttpReceiver() as receiver:
            streams = _streams(org, other, receiver.url, moto_server.url)
            config_path = out / "streams.json"
            config_path.write_text(json.dumps({"streams": streams}))
            argv = [
                f"--events_input={fleet / 'raw' / 'events.jsonl'}",
                f"--usage_input={fleet / 'raw' / 'usage.jsonl'}",
                f"--reference_dir={fleet / 'reference'}",
                f"--streams_config={config_path}",
                f"--output_dir={out}",
                "--allow_insecure_destinations",  # the receivers are http://127.0.0.1
            ]
            code = data_streamer.main(argv)
            http_requests = receiver.requests()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    yield {
        "code": code, "out": out, "argv": argv, "config": parse_stream_config(config_path.read_text()),
        "http": http_requests, "s3": s3, "kinesis": kinesis, "logs": records, "docs": _documents(out),
    }
    monkeypatch.undo()


def _expected(delivered, stream_id: str) -> list[dict[str, Any]]:
    config = delivered["config"]
    expected = []
    for kind, docs in delivered["docs"].items():
        for doc in docs:
            targets = [e for _, e in route(kind, doc, config)]
            ids = [t[0] if isinstance(t[0], str) else t[0][0] for t in targets]
            if stream_id in ids:
                expected.append(doc)
    return expected


def _by_id(docs):
    return sorted(docs, key=lambda d: (d["id"], "start_timestamp" in d))


def test_job_succeeds_and_reconciles(delivered):
    assert delivered["code"] == 0
    summary = json.loads((delivered["out"] / "summary.json").read_text())
    assert summary["reconciled"] is True
    results = [json.loads(line) for path in (delivered["out"] / "deliveries").glob("*.jsonl")
               for line in path.read_text().splitlines()]
    assert results and all(r["status"] == "delivered" for r in results)
    assert {r["api_type"] for r in results} == {"rest_api", "rest_api_bulk", "aws_kinesis", "aws_s3", "datadog"}


def test_rest_api_receives_one_document_per_request(delivered):
    requests = [r for r in delivered["http"] if r.path == "/rest-events"]
    expected = _expected(delivered, "rest-events")
    assert expected and len(requests) == len(expected)
    assert _by_id([r.json() for r in requests]) == _by_id(expected)


@pytest.mark.parametrize(("stream_id", "limit"), [("bulk-both", 250), ("bulk-alerts", 3000)])
def test_rest_bulk_receives_arrays_of_its_documents(delivered, stream_id, limit):
    requests = [r for r in delivered["http"] if r.path == f"/{stream_id}"]
    arrays = [r.json() for r in requests]
    assert all(isinstance(a, list) and 1 <= len(a) <= limit for a in arrays)
    expected = _expected(delivered, stream_id)
    assert expected
    assert _by_id([doc for array in arrays for doc in array]) == _by_id(expected)


def test_paused_stream_receives_nothing(delivered):
    assert not [r for r in delivered["http"] if r.path == "/paused"]


def test_kinesis_receives_the_usage_documents(delivered):
    assert _by_id(kinesis_documents(delivered["kinesis"], KINESIS)) == _by_id(_expected(delivered, "kinesis-usage"))


def test_s3_receives_one_csv_per_kind_and_window(delivered):
    s3 = delivered["s3"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="e2e-bucket", Prefix="iot/")["Contents"]]
    expected = _expected(delivered, "s3-both")
    windows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for doc in expected:
        if "start_timestamp" in doc:
            stamp = doc["end_timestamp"].replace("-", "").replace(":", "").replace(" ", "_")
            kind = "cdr"
        else:
            stamp = doc["timestamp"][:19].replace("-", "").replace(":", "").replace("T", "_")
            kind = "events"
        minute = int(stamp[11:13]) // 15 * 15
        windows[f"iot/{kind}_{stamp[:11]}{minute:02d}00.csv"].append(doc)
    assert sorted(keys) == sorted(windows)
    for key, docs in windows.items():
        body = s3.get_object(Bucket="e2e-bucket", Key=key)["Body"].read().decode("utf-8")
        rows = list(csv.DictReader(io.StringIO(body)))
        kind = "usage" if key.startswith("iot/cdr_") else "event"
        want = [{k: _csv_rows(v) for k, v in flatten(kind, doc).items()} for doc in docs]
        assert sorted(rows, key=lambda r: int(r["id"])) == sorted(want, key=lambda r: int(r["id"]))


def test_datadog_sums_match_the_usage(delivered):
    payloads = [r.json() for r in delivered["http"] if r.path == "/dd/api/v2/series"]
    points = defaultdict(float)
    for payload in payloads:
        for series in payload["series"]:
            points[series["metric"]] += sum(p["value"] for p in series["points"])
    usage = _expected(delivered, "dd")
    data = [u for u in usage if u["traffic_type"]["name"] == "Data"]
    assert points["endpoint.volume"] == pytest.approx(sum(u["volume"]["total"] for u in data), abs=1e-6)
    assert points["endpoint.volume_rx"] == pytest.approx(sum(u["volume"]["rx"] for u in data), abs=1e-6)
    assert points["endpoint.volume_tx"] == pytest.approx(sum(u["volume"]["tx"] for u in data), abs=1e-6)
    assert points["endpoint.cost"] == pytest.approx(sum(u["cost"] for u in usage), abs=1e-6)


def test_no_secret_leaks_anywhere(delivered):
    from tests.streams import SECRETS

    secrets = [v.encode() for v in SECRETS.values()]
    # Every file the job wrote: documents, dead letters, delivery results, summary.
    for path in delivered["out"].rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not [s for s in secrets if s in content], path
    # Every log line of the run, formatted with its arguments and exceptions.
    formatter = logging.Formatter("%(name)s %(message)s")
    for record in delivered["logs"]:
        text = formatter.format(record).encode()
        assert not [s for s in secrets if s in text], record.name
    # What the receivers saw is the only place a secret may be: the REST auth header.
    for request in delivered["http"]:
        assert not [s for s in secrets if s in request.body]
    # The pipeline graph as a runner receives it, and every pickled transform in it.
    options = data_streamer._parse_args(delivered["argv"])
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    data_streamer.write_outputs(data_streamer.build_pipeline(pipeline, options), str(delivered["out"] / "graph"))
    proto = pipeline.to_runner_api().SerializeToString()
    assert not [s for s in secrets if s in proto]
    pickled = pickler.dumps(pipeline.transforms_stack[0])
    assert not [s for s in secrets if s in pickled]
