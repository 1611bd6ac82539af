"""How a run ends, as an operator sees it: its exit status, its one line on
stderr, its summary (docs/configuration.md#exit-status, docs/streaming.md).

The job runs as its own process (``python -m tools.local_job``, what ``make
run-local-streaming`` runs) against the real Pub/Sub emulator (one per module),
a loopback REST receiver and moto's S3:

- SIGTERM mid-stream: the job stops reading, drains what it read to the receiver
  and the dead-letter files, exits 0, and its summary accounts for every record
  read; what it did not read is still in the subscription for the next run;
- a drain that cannot finish in ``--drain_seconds`` (an S3 file that closes
  once a minute) exits 3, the summary saying what was in flight;
- a pipeline that fails (the park location is a file) exits 1 with one line
  naming the step and the error, in streaming with ``--run_seconds`` (before the
  time is up) and in batch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.api_core import exceptions

from tests.guide_samples import RAW_EVENTS
from tests.streams import REGION, rest_stream, s3_stream
from tools import runners
from tools.processes import free_port
from tools.pubsub_emulator import Ticker, create_topic_and_subscription, publish, subscriber_client

pytestmark = pytest.mark.alone

ROOT = Path(__file__).resolve().parents[2]
REFRESH_SECONDS = 10
#: The job's first delivery comes ~5 s after its start here; allow for a loaded machine.
STARTUP_SECONDS = 120
DRAIN_SECONDS = 30


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event(record_id: int) -> bytes:
    return orjson.dumps(RAW_EVENTS["5.1.1"] | {"id": record_id, "timestamp": _iso(datetime.now(tz=UTC))})


class _Publisher:
    """Raw events published every 0.25 s until stopped, as a live network would:
    unique ids, and every fourth round a junk line and a repeat of the round's
    first record (Pub/Sub is at-least-once)."""

    def __init__(self, project: str, topic: str, first_id: int) -> None:
        self._project, self._topic, self._next = project, topic, first_id
        self.ids: list[int] = []
        self.junk = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"publisher-{topic}", daemon=True)

    def _run(self) -> None:
        rounds = 0
        while not self._stop.is_set():
            ids = list(range(self._next, self._next + 10))
            self._next += 10
            batch = [_event(record_id) for record_id in ids]
            if rounds % 4 == 0:
                batch += [b"{not json", batch[0]]
            publish(self._project, self._topic, batch)
            self.ids += ids
            self.junk += rounds % 4 == 0
            rounds += 1
            self._stop.wait(0.25)

    def __enter__(self) -> _Publisher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _subscriptions(project: str, name: str) -> dict[str, str]:
    return {kind: create_topic_and_subscription(project, f"{name}-{kind}", f"{name}-{kind}")
            for kind in ("events", "usage", "refresh")}


def _start_job(tmp_path: Path, subscriptions: dict[str, str], streams: list[dict[str, Any]], reference: Path,
               *flags: str) -> tuple[subprocess.Popen[bytes], Path]:
    """The streaming job as its own process, in its own session (a signal to it
    reaches no one else); its stdout and stderr in files."""
    (tmp_path / "streams.json").write_text(json.dumps({"streams": streams}))
    command = [sys.executable, "-m", "tools.local_job", "--streaming",
               f"--events_subscription={subscriptions['events']}",
               f"--usage_subscription={subscriptions['usage']}",
               f"--refresh_subscription={subscriptions['refresh']}",
               f"--refresh_interval_seconds={REFRESH_SECONDS}",
               f"--reference_dir={reference}", f"--streams_config={tmp_path / 'streams.json'}",
               f"--output_dir={tmp_path / 'out'}", "--output_window_seconds=5", "--max_buffering_seconds=1",
               *flags]
    process = subprocess.Popen(command, cwd=ROOT, stdout=(tmp_path / "stdout").open("wb"),
                               stderr=(tmp_path / "stderr").open("wb"), start_new_session=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return process, tmp_path


def _output(directory: Path) -> str:
    return (directory / "stdout").read_text() + "\n--- stderr ---\n" + (directory / "stderr").read_text()[-6000:]


def _wait(process: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _wait_for_delivery(receiver: Any, process: subprocess.Popen[bytes], directory: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while not receiver.requests():
        if process.poll() is not None or time.monotonic() > deadline:
            _wait(process, 0.1)
            pytest.fail(f"no delivery within {STARTUP_SECONDS} s:\n{_output(directory)}")
        time.sleep(0.2)


def _left_in(subscription: str) -> list[bytes]:
    """Every message still in the subscription (acknowledged as taken)."""
    left: list[bytes] = []
    with subscriber_client() as subscriber:
        empty = 0
        while empty < 2:
            try:
                response = subscriber.pull(subscription=subscription, max_messages=1000, timeout=3)
            except exceptions.DeadlineExceeded:
                empty += 1
                continue
            received = list(response.received_messages)
            if not received:
                empty += 1
                continue
            left += [message.message.data for message in received]
            subscriber.acknowledge(subscription=subscription, ack_ids=[message.ack_id for message in received])
    return left


def _dead_letter_lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted((out / "dead_letters").glob("dead_letters-*.jsonl"))
            for line in path.read_text().splitlines() if line]


@pytest.fixture
def ticking(pubsub_emulator):
    """Refresh ticks for one subscription set (the local runner needs them)."""
    tickers: list[Ticker] = []

    def start(name: str) -> None:
        tickers.append(Ticker(pubsub_emulator.project, f"{name}-refresh", REFRESH_SECONDS / 4).start())

    yield start
    for ticker in tickers:
        ticker.stop()


def test_sigterm_stops_reading_drains_and_exits_0(pubsub_emulator, ticking, tmp_path, stream_secrets, http_receiver,
                                                   sample_reference_dir):
    subscriptions = _subscriptions(pubsub_emulator.project, "term")
    ticking("term")
    process, directory = _start_job(tmp_path, subscriptions,
                                    [rest_stream("rest-bulk-term", f"{http_receiver.url}/bulk", bulk=True)],
                                    sample_reference_dir, f"--drain_seconds={DRAIN_SECONDS}")
    with _Publisher(pubsub_emulator.project, "term-events", 7_100_000) as publisher:
        _wait_for_delivery(http_receiver, process, directory)
        time.sleep(3)  # mid-stream: records arriving, some on their way to the receiver
        sent = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        code = _wait(process, DRAIN_SECONDS + 60)
        took = time.monotonic() - sent
    output = _output(directory)
    assert code == 0, output
    assert took < DRAIN_SECONDS + 30, f"{took:.1f} s after SIGTERM:\n{output}"
    assert "stopping (SIGTERM): stopped reading" in output
    assert "stopped by SIGTERM: stopped reading, then drained for" in output

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    drain = summary["drain"]
    assert drain["reason"] == "SIGTERM" and drain["reads_stopped"] and drain["clean"], drain
    assert drain["in_flight"] == {"records": 0, "documents": 0, "deliveries": 0, "dead_letters_unwritten": 0}
    assert 0 < drain["seconds"] < DRAIN_SECONDS
    assert summary["reconciled"] is True, output
    events = summary["event"]
    # Every record read is accounted for: delivered, a duplicate or a dead letter.
    delivered = [document["id"] for request in http_receiver.requests("/bulk") for document in request.json()]
    assert len(delivered) == len(set(delivered)) == events["documents"] > 0
    assert summary["streams"]["rest-bulk-term"]["delivered"] == events["documents"]
    assert events["read"] == events["documents"] + events["duplicates"] + sum(events["dead_letters"].values())
    assert events["duplicates"] > 0 and events["dead_letters"]["not_json"] > 0
    # ... and every dead letter is in the dead-letter files (their window was written before the cancel).
    assert len(_dead_letter_lines(tmp_path / "out")) == sum(events["dead_letters"].values())

    # What the job did not read waits in the subscription for the next run: nothing published is lost.
    left = _left_in(subscriptions["events"])
    left_ids = {orjson.loads(data)["id"] for data in left if data != b"{not json"}
    assert set(publisher.ids) - set(delivered) - left_ids == set()
    assert events["dead_letters"]["not_json"] + left.count(b"{not json") >= publisher.junk
    assert events["read"] < len(publisher.ids) + 2 * publisher.junk  # it did stop reading


def test_a_drain_cut_short_exits_3_saying_what_was_in_flight(pubsub_emulator, ticking, tmp_path, stream_secrets,
                                                              moto_server, aws_session, sample_reference_dir):
    """An S3 stream writes a file per minute, when the minute's window closes:
    a 2-second drain cannot wait for that, so its documents are in flight when
    the job is cancelled. Also the --run_seconds way of stopping."""
    aws_session("s3").create_bucket(Bucket="endings-cut", CreateBucketConfiguration={"LocationConstraint": REGION})
    subscriptions = _subscriptions(pubsub_emulator.project, "cut")
    ticking("cut")
    process, directory = _start_job(
        tmp_path, subscriptions,
        [s3_stream("s3-cut", moto_server.url, "endings-cut", batching={"rotation_seconds": 60})],
        sample_reference_dir, "--run_seconds=15", "--drain_seconds=2")
    with _Publisher(pubsub_emulator.project, "cut-events", 7_200_000):
        code = _wait(process, 15 + STARTUP_SECONDS)
    output = _output(directory)
    assert code == 3, output
    assert "stopping (--run_seconds): stopped reading" in output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    drain = summary["drain"]
    assert drain["reason"] == "--run_seconds" and drain["reads_stopped"] and not drain["clean"], drain
    stream = summary["streams"]["s3-cut"]
    assert drain["in_flight"]["deliveries"] == stream["routed"] - stream.get("delivered", 0) > 0, summary
    assert summary["reconciled"] is False
    assert f"in flight when it stopped: {drain['in_flight']['deliveries']} deliveries" in output
    assert "read and acknowledged, but at no destination" in output


def test_a_failing_streaming_run_exits_1_naming_the_step(pubsub_emulator, ticking, tmp_path, stream_secrets,
                                                         sample_reference_dir):
    """The park location cannot be written (it is under a file) and the
    destination refuses connections: parking fails, the pipeline fails, and the
    run says so and exits 1 at once, not at --run_seconds with exit 0."""
    (tmp_path / "a-file").write_text("not a directory")
    park = tmp_path / "a-file" / "parked"
    subscriptions = _subscriptions(pubsub_emulator.project, "fail")
    ticking("fail")
    publish(pubsub_emulator.project, "fail-events", [_event(7_300_000 + i) for i in range(20)])
    started = time.monotonic()
    process, directory = _start_job(
        tmp_path, subscriptions, [rest_stream("rest-bulk-fail", f"http://127.0.0.1:{free_port()}/bulk", bulk=True)],
        sample_reference_dir, "--run_seconds=300", f"--park_location={park}", "--max_attempts=1",
        "--http_connect_timeout=1")
    code = _wait(process, STARTUP_SECONDS + 60)
    took = time.monotonic() - started
    output = _output(directory)
    assert code == 1, output
    assert took < STARTUP_SECONDS, f"{took:.0f} s: it waited for --run_seconds\n{output}"
    last = (directory / "stderr").read_text().rstrip().splitlines()[-1]
    assert last.startswith("error: the pipeline failed in step '"), output
    step = last.split("'")[1]
    assert "Park" in step, last
    assert last.endswith(f"NotADirectoryError: [Errno 20] Not a directory: '{park}'"), last
    assert not (tmp_path / "out" / "summary.json").exists()


def test_a_failing_batch_run_exits_1_naming_the_step(tmp_path, stream_secrets, sample_reference_dir):
    (tmp_path / "a-file").write_text("not a directory")
    park = tmp_path / "a-file" / "parked"
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(_event(7_400_000 + i) for i in range(5)) + b"\n")
    streams = [rest_stream("rest-bulk-batch", f"http://127.0.0.1:{free_port()}/bulk", bulk=True)]
    (tmp_path / "streams.json").write_text(json.dumps({"streams": streams}))
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.data_streamer", runners.runner_flag(streaming=False),
         f"--events_input={tmp_path / 'events.jsonl'}", f"--reference_dir={sample_reference_dir}",
         f"--streams_config={tmp_path / 'streams.json'}", f"--output_dir={tmp_path / 'out'}",
         f"--park_location={park}", "--allow_insecure_destinations", "--max_attempts=1",
         "--http_connect_timeout=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: the pipeline failed in step '") and "Park" in last.split("'")[1], last
    assert last.endswith(f"NotADirectoryError: [Errno 20] Not a directory: '{park}'"), last
    assert not (tmp_path / "out" / "summary.json").exists()
