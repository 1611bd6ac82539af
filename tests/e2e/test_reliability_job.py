"""Reliability of the whole job against real local destinations: isolation of a
hanging destination, parking, stream status across runs, re-drive, reconciliation,
and no secret in any log line."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipelines import data_streamer, redrive
from sinks.parking import ParkStore
from tests.streams import REGION, SECRETS, datadog_stream, kinesis_stream, rest_stream, s3_stream
from tools.local_destinations import HttpReceiver, Reply, Script
from tools.sample_fleet import generate

pytestmark = pytest.mark.alone

FAST = ["--max_attempts=3", "--retry_deadline_seconds=2", "--retry_base_delay_seconds=0.01",
        "--retry_max_delay_seconds=0.05", "--http_read_timeout=0.5", "--http_connect_timeout=0.5",
        "--allow_insecure_destinations"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("fleet")
    generate(directory, seed=3, days=1, endpoints=24, organisations=1, formats=("jsonl",))
    return directory


@pytest.fixture(scope="module")
def org(fleet) -> int:
    return json.loads((fleet / "reference" / "organisation.json").read_text())[0]["id"]


@pytest.fixture
def logs():
    """Every log record of the test, at DEBUG, whoever logs it."""
    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler, root = _Collect(level=logging.DEBUG), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield records
    root.removeHandler(handler)
    root.setLevel(level)


def _assert_no_secret(records: list[logging.LogRecord], out: Path) -> None:
    formatter = logging.Formatter("%(name)s %(message)s")
    for record in records:
        text = formatter.format(record)
        leaked = [name for name, value in SECRETS.items() if value in text]
        assert not leaked, (record.name, leaked)
    for path in out.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not [n for n, v in SECRETS.items() if v.encode() in content], path


def _run(fleet: Path, out: Path, streams: list[dict[str, Any]], *extra: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "streams.json").write_text(json.dumps({"streams": streams}))
    code = data_streamer.main([
        f"--events_input={fleet / 'raw' / 'events.jsonl'}",
        f"--usage_input={fleet / 'raw' / 'usage.jsonl'}",
        f"--reference_dir={fleet / 'reference'}",
        f"--streams_config={out / 'streams.json'}",
        f"--output_dir={out}",
        *FAST,
        *extra,
    ])
    summary = json.loads((out / "summary.json").read_text())
    summary["code"] = code
    return summary


def _status(out: Path) -> dict[str, dict[str, Any]]:
    lines = (out / "status" / "status.jsonl").read_text().splitlines()
    return {record["stream_id"]: record for record in map(json.loads, lines)}


def _parked_ids(out: Path, stream_id: str) -> list[int]:
    store = ParkStore(str(out / "parked"))
    return sorted(doc["id"] for path in store.list(stream_id) for _, doc in store.read(path).documents)


def test_a_hanging_destination_does_not_hold_the_others(fleet, org, tmp_path, moto_server, aws_session,
                                                         stream_secrets, logs):
    """Four streams deliver while a fifth never answers: the four finish within a
    small multiple of their healthy time, the fifth is parked and deactivated."""
    aws_session("s3").create_bucket(Bucket="iso-bucket", CreateBucketConfiguration={"LocationConstraint": REGION})
    kinesis = aws_session("kinesis")
    kinesis.create_stream(StreamName="iso-stream", ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName="iso-stream", WaiterConfig={"Delay": 0.2})
    with HttpReceiver(Script({"/hang": [Reply(delay_seconds=30)]})) as receiver:
        healthy = [
            rest_stream("bulk", f"{receiver.url}/bulk", bulk=True, organisation_id=org),
            kinesis_stream("kinesis", moto_server.url, "iso-stream", stream_type="usage", organisation_id=org),
            s3_stream("s3", moto_server.url, "iso-bucket", organisation_id=org, batching={"rotation_seconds": 900}),
            datadog_stream("dd", f"{receiver.url}/dd", organisation_id=org,
                           batching={"metrics_interval_seconds": 3600}),
        ]
        started = time.monotonic()
        baseline = _run(fleet, tmp_path / "healthy", healthy)
        healthy_seconds = time.monotonic() - started
        receiver.clear()

        hanging = rest_stream("hang", f"{receiver.url}/hang", organisation_id=org, stream_type="events")
        started = time.monotonic()
        summary = _run(fleet, tmp_path / "with-hang", [*healthy, hanging])
        total_seconds = time.monotonic() - started
        hang_requests = receiver.requests("/hang")

    assert baseline["code"] == 0 and summary["code"] == 0
    for stream_id in ("bulk", "kinesis", "s3", "dd"):
        assert summary["streams"][stream_id]["delivered"] == baseline["streams"][stream_id]["delivered"] > 0
        assert summary["streams"][stream_id].get("parked", 0) == 0
    routed = summary["streams"]["hang"]["routed"]
    assert summary["streams"]["hang"]["parked"] == routed > 0
    assert summary["streams"]["hang"].get("delivered", 0) == 0
    # Bounded: the circuit opens after deactivate_after (3) failed requests; the up to
    # 8 (--rest_concurrency) in flight finish their attempts (3); the rest is parked.
    assert len(hang_requests) <= (3 + 8) * 3
    status = _status(tmp_path / "with-hang")
    assert status["hang"]["state"] == "deactivated" and status["hang"]["error"] == "unreachable"
    assert all(status[s]["state"] == "active" for s in ("bulk", "kinesis", "s3", "dd"))
    assert summary["reconciled"] is True
    assert total_seconds < 3 * healthy_seconds + 2, (total_seconds, healthy_seconds)
    _assert_no_secret(logs, tmp_path)


def test_failing_stream_is_parked_deactivated_and_redriven(fleet, org, tmp_path, stream_secrets, logs):
    """A stream fails, its batches are parked and it is deactivated; the next run
    parks its documents without trying; the destination recovers and re-drive
    delivers every parked document, empties the park and reactivates the stream."""
    script = Script({"/down": [Reply(503, body=b'{"error":"maintenance"}')]})
    with HttpReceiver(script) as receiver:
        streams = [
            rest_stream("down", f"{receiver.url}/down", bulk=True, organisation_id=org, batching={"bulk_size": 200}),
            rest_stream("up", f"{receiver.url}/up", bulk=True, organisation_id=org, stream_type="usage"),
        ]
        out = tmp_path / "out"
        first = _run(fleet, out, streams)
        assert first["code"] == 0 and first["reconciled"] is True
        routed = first["streams"]["down"]["routed"]
        assert first["streams"]["down"]["parked"] == routed > 200
        assert first["streams"]["up"]["delivered"] == first["streams"]["up"]["routed"]
        status = _status(out)["down"]
        assert (status["state"], status["error"]) == ("deactivated", "remote_error")
        assert status["last_remote_status"] == "503"
        assert status["last_success_at"] is None
        tried = len(receiver.requests("/down"))
        assert 3 <= tried <= 3 * 3  # at most deactivate_after batches, each with max_attempts requests

        first_parked = _parked_ids(out, "down")
        assert len(first_parked) == len(set(first_parked)) == routed

        # Second run over the same input: deactivated by the status, so parked at
        # routing without a request. A replay parks its documents again.
        second = _run(fleet, out, streams)
        assert len(receiver.requests("/down")) == tried
        assert second["streams"]["down"]["parked"] == routed
        parked_ids = _parked_ids(out, "down")
        assert len(parked_ids) == 2 * routed and sorted(set(parked_ids)) == first_parked

        # The destination recovers; re-drive.
        receiver.responder = Script({})
        receiver.clear()
        code = redrive.main(["--stream_id=down", f"--streams_config={out / 'streams.json'}",
                             f"--output_dir={out}", *FAST])
        delivered = sorted(doc["id"] for r in receiver.requests("/down") for doc in r.json())
    assert code == 0
    assert delivered == first_parked  # each parked document delivered exactly once
    assert ParkStore(str(out / "parked")).list("down") == []
    status = _status(out)["down"]
    assert (status["state"], status["error"], status["consecutive_failures"]) == ("active", None, 0)
    assert status["last_remote_status"] == "202" and status["last_success_at"]
    _assert_no_secret(logs, tmp_path)


def test_redrive_keeps_what_fails_again(fleet, org, tmp_path, stream_secrets):
    with HttpReceiver(Script({"/down": [Reply(404)]})) as receiver:
        streams = [rest_stream("down", f"{receiver.url}/down", bulk=True, organisation_id=org, stream_type="usage")]
        out = tmp_path / "out"
        _run(fleet, out, streams)
        before = _parked_ids(out, "down")
        assert before and _status(out)["down"]["error"] == "not_found"
        code = redrive.main(["--stream_id=down", f"--streams_config={out / 'streams.json'}",
                             f"--output_dir={out}", *FAST])
    assert code == 1
    assert _parked_ids(out, "down") == before
    assert _status(out)["down"]["state"] == "deactivated"


def test_paused_stream_is_parked_and_old_parked_batches_are_reported(fleet, org, tmp_path, stream_secrets, capsys):
    with HttpReceiver() as receiver:
        streams = [rest_stream("paused", f"{receiver.url}/p", bulk=True, organisation_id=org, state="paused")]
        out = tmp_path / "out"
        summary = _run(fleet, out, streams)
        assert not receiver.requests()
    assert summary["streams"]["paused"]["parked"] == summary["streams"]["paused"]["routed"] > 0
    store = ParkStore(str(out / "parked"))
    batch = store.read(store.list("paused")[0])
    assert batch.reason == "stream_paused" and batch.attempts == 0
    old = replace(batch, parked_at="2020-01-01T00:00:00.000+00:00", documents=(("usage", {"id": 1}),))
    old_path = store.write(old)
    capsys.readouterr()
    _run(fleet, out, streams)
    printed = capsys.readouterr().out
    assert "1 parked batches are older than 7 days (not deleted)" in printed and old_path in printed
    assert Path(old_path).exists()
    assert _status(out)["paused"]["state"] == "paused"
