"""The batch job through Beam's portable runner: submitted with
``--runner=PortableRunner`` to a job service running as its own process, its SDK
workers in a worker pool process (``make run-portable``), it must deliver exactly
what the DirectRunner delivers on the same input.

The worker pool's workers are separate processes that import the job from the
installed package and read the stream secrets from their own environment, which
is what Flink TaskManagers and Dataflow workers do; the DirectRunner runs
everything in the test's process. Per-request grouping (bulk arrays, Kinesis
batches) may differ between runners, so deliveries are compared document by
document, S3 files by name and rows, DataDog by points.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipelines import data_streamer
from tests.documents import kinesis_documents
from tests.streams import REGION, SECRETS, datadog_stream, kinesis_stream, rest_stream, s3_stream
from tools.local_destinations import HttpReceiver
from tools.portable import JobService, WorkerPool, portable_flags
from tools.processes import group_alive
from tools.sample_fleet import generate


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("fleet")
    generate(directory, seed=11, days=1, endpoints=30)
    return directory


@pytest.fixture(scope="module")
def secrets_in_env():
    monkeypatch = pytest.MonkeyPatch()
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    yield
    monkeypatch.undo()


def _streams(org: int, other: int, http_url: str, aws_url: str, suffix: str) -> list[dict[str, Any]]:
    return [
        rest_stream("rest-events", f"{http_url}/rest-events", stream_type="events", organisation_id=org),
        rest_stream("bulk-both", f"{http_url}/bulk-both", bulk=True, organisation_id=org,
                    batching={"bulk_size": 200}),
        rest_stream("bulk-other", f"{http_url}/bulk-other", bulk=True, stream_type="events", organisation_id=other),
        kinesis_stream("kinesis-usage", aws_url, f"portable-{suffix}", stream_type="usage", organisation_id=org),
        s3_stream("s3-both", aws_url, f"portable-{suffix}", prefix="iot/", organisation_id=org,
                  batching={"rotation_seconds": 900}),
        datadog_stream("dd", f"{http_url}/dd", organisation_id=org, batching={"metrics_interval_seconds": 600}),
    ]


def _aws(service: str, url: str) -> Any:
    return boto3.client(service, endpoint_url=url, region_name=REGION, aws_access_key_id="t",
                        aws_secret_access_key="t")


def _s3_files(url: str, bucket: str) -> dict[str, list[str]]:
    client = _aws("s3", url)
    files = {}
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        lines = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode("utf-8").splitlines()
        files[obj["Key"]] = [lines[0], *sorted(lines[1:])]  # the header, then the rows in any order
    return files


def _lines(out: Path, folder: str) -> list[str]:
    return sorted(line for path in (out / folder).glob("*.jsonl") for line in path.read_text().splitlines())


def _canonical(documents: list[Any]) -> list[str]:
    return sorted(json.dumps(document, sort_keys=True) for document in documents)


def _run(fleet: Path, out: Path, moto_url: str, suffix: str, runner_flags: list[str]) -> dict[str, Any]:
    orgs = sorted(o["id"] for o in json.loads((fleet / "reference" / "organisation.json").read_text()))
    _aws("s3", moto_url).create_bucket(Bucket=f"portable-{suffix}",
                                       CreateBucketConfiguration={"LocationConstraint": REGION})
    kinesis = _aws("kinesis", moto_url)
    kinesis.create_stream(StreamName=f"portable-{suffix}", ShardCount=2)
    kinesis.get_waiter("stream_exists").wait(StreamName=f"portable-{suffix}", WaiterConfig={"Delay": 0.2})
    with HttpReceiver() as receiver:
        config = out / "streams.json"
        config.write_text(json.dumps({"streams": _streams(orgs[0], orgs[1], receiver.url, moto_url, suffix)}))
        code = data_streamer.main([
            f"--events_input={fleet / 'raw' / 'events.jsonl'}",
            f"--usage_input={fleet / 'raw' / 'usage.jsonl'}",
            f"--reference_dir={fleet / 'reference'}",
            f"--streams_config={config}",
            f"--output_dir={out}",
            "--allow_insecure_destinations",
            *runner_flags,
        ])
        requests = receiver.requests()
    by_path: dict[str, list[Any]] = {}
    for request in requests:
        by_path.setdefault(request.path, []).append(request.json())
    points = Counter(
        (series["metric"], tuple(sorted(series.get("tags", []))), point["timestamp"], round(point["value"], 6))
        for payload in by_path.get("/dd/api/v2/series", []) for series in payload["series"]
        for point in series["points"]
    )
    summary = json.loads((out / "summary.json").read_text())
    return {
        "code": code,
        "summary": summary,
        "events": _lines(out, "events"),
        "usage": _lines(out, "usage"),
        "dead_letters": _lines(out, "dead_letters"),
        "rest-events": _canonical(by_path.get("/rest-events", [])),
        "bulk-both": _canonical([doc for array in by_path.get("/bulk-both", []) for doc in array]),
        "bulk-other": _canonical([doc for array in by_path.get("/bulk-other", []) for doc in array]),
        "kinesis-usage": _canonical(kinesis_documents(_aws("kinesis", moto_url), f"portable-{suffix}")),
        "s3-both": _s3_files(moto_url, f"portable-{suffix}"),
        "dd": points,
    }


@pytest.fixture(scope="module")
def direct(fleet, tmp_path_factory, moto_server, secrets_in_env) -> dict[str, Any]:
    return _run(fleet, tmp_path_factory.mktemp("direct"), moto_server.url, "direct", ["--runner=DirectRunner"])


@pytest.fixture(scope="module")
def portable(fleet, tmp_path_factory, moto_server, secrets_in_env) -> dict[str, Any]:
    logs = tmp_path_factory.mktemp("services")
    with JobService(log_path=logs / "job_service.log") as job_service, \
            WorkerPool(env=os.environ, log_path=logs / "worker_pool.log") as pool:
        result = _run(fleet, tmp_path_factory.mktemp("portable"), moto_server.url, "portable",
                      portable_flags(job_service, pool))
        result["job_service_pid"], result["pool_pid"] = job_service.pid, pool.pid
        result["worker_log"] = (logs / "worker_pool.log").read_text()
    return result


def test_the_portable_run_used_separate_processes_and_stopped_them(portable):
    assert portable["job_service_pid"] != os.getpid() and portable["pool_pid"] != os.getpid()
    assert "Starting worker with command" in portable["worker_log"]  # the pool started SDK workers
    # Stopped with everything they started (the pool's SDK workers): no live process left in their groups.
    assert not group_alive(portable["job_service_pid"])
    assert not group_alive(portable["pool_pid"])


def test_both_runs_succeed_and_reconcile(direct, portable):
    assert (direct["code"], portable["code"]) == (0, 0)
    assert direct["summary"]["reconciled"] is True and portable["summary"]["reconciled"] is True
    # Every stream got documents on both runners, so the comparisons below compare something.
    for key in ("rest-events", "bulk-both", "bulk-other", "kinesis-usage", "s3-both", "dd"):
        assert direct[key], key


@pytest.mark.parametrize("output", ["events", "usage", "dead_letters"])
def test_the_same_documents_and_dead_letters(direct, portable, output):
    assert direct[output] and portable[output] == direct[output]


@pytest.mark.parametrize("stream", ["rest-events", "bulk-both", "bulk-other", "kinesis-usage", "s3-both", "dd"])
def test_each_destination_receives_the_same(direct, portable, stream):
    assert portable[stream] == direct[stream]


def test_the_same_counts(direct, portable):
    for key in ("event", "usage", "streams", "delivery_dead_letters"):
        assert portable["summary"][key] == direct["summary"][key], key
    documents = {api: counts["documents"] for api, counts in direct["summary"]["deliveries"].items()}
    assert {api: counts["documents"] for api, counts in portable["summary"]["deliveries"].items()} == documents


def test_a_dead_destination_is_cut_off_across_bundles_and_worker_processes(fleet, tmp_path, secrets_in_env):
    """The circuit is the stream's, not a DoFn instance's: on the portable runner,
    with SDK workers in their own processes and the stream's documents in many
    batches (bulk requests of 20), a destination that never answers gets at most
    ``--deactivate_after_failures`` (3) requests, the default read timeout cut to
    the stream budget; the healthy stream gets everything and the run reconciles."""
    from tools import faults

    org = sorted(o["id"] for o in json.loads((fleet / "reference" / "organisation.json").read_text()))[0]
    out = tmp_path / "out"
    out.mkdir()
    with HttpReceiver() as dead, HttpReceiver() as healthy, \
            JobService(log_path=tmp_path / "job_service.log") as job_service, \
            WorkerPool(env=os.environ, log_path=tmp_path / "worker_pool.log") as pool:
        dead.down(faults.HANG)
        config = out / "streams.json"
        config.write_text(json.dumps({"streams": [
            rest_stream("dead", f"{dead.url}/dead", bulk=True, organisation_id=org, batching={"bulk_size": 20}),
            rest_stream("healthy", f"{healthy.url}/healthy", bulk=True, organisation_id=org),
        ]}))
        code = data_streamer.main([
            f"--events_input={fleet / 'raw' / 'events.jsonl'}",
            f"--usage_input={fleet / 'raw' / 'usage.jsonl'}",
            f"--reference_dir={fleet / 'reference'}",
            f"--streams_config={config}",
            f"--output_dir={out}",
            "--allow_insecure_destinations",
            *portable_flags(job_service, pool),
        ])
        hung = dead.requests()
        delivered = sum(len(r.json()) for r in healthy.requests())
    summary = json.loads((out / "summary.json").read_text())
    routed = summary["streams"]["dead"]["routed"]
    assert code == 0 and summary["reconciled"] is True
    assert routed > 20 * 3, "enough batches that an instance-local count would send more"
    assert 1 <= len(hung) <= 3
    assert summary["streams"]["dead"]["parked"] == routed
    assert delivered == summary["streams"]["healthy"]["delivered"] == routed
    circuit = json.loads((out / "status" / "circuits" / "dead.json").read_text())
    assert (circuit["state"], circuit["token"]) == ("open", "unreachable")
