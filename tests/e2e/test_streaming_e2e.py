"""The streaming job end to end with real parts: records published to the Pub/Sub
emulator are read by ``ReadFromPubSub`` on the DirectRunner, enriched, routed and
delivered to a loopback REST receiver and to moto's S3, each exactly once per
stream, within a bounded time; then the test cancels the pipeline and stops the
emulator, and checks both are gone."""

from __future__ import annotations

import csv
import io
import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from pipelines.data_streamer import build_pipeline, write_outputs
from tests.guide_samples import RAW_EVENTS, RAW_USAGE
from tests.streams import rest_stream, s3_stream
from tools.pubsub_emulator import PubSubEmulator, Ticker, create_topic_and_subscription, publish

#: Everything must arrive within this; a healthy run needs ~8 s (S3 files wait
#: for their 10 s window to close).
DEADLINE_SECONDS = 120
EVENTS, USAGE = 12, 6
REFRESH_SECONDS = 10


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _records(now: datetime) -> tuple[list[bytes], list[bytes]]:
    events = [orjson.dumps(RAW_EVENTS["5.1.1"] | {"id": 7_000_000 + i, "timestamp": _iso(now - timedelta(seconds=i))})
              for i in range(EVENTS)]
    usage = [orjson.dumps(RAW_USAGE["5.2"] | {
        "id": 8_000_000 + i,
        "start_timestamp": _iso(now - timedelta(seconds=60 + i)),
        "end_timestamp": _iso(now - timedelta(seconds=i)),
    }) for i in range(USAGE)]
    # Pub/Sub is at-least-once: the first event arrives twice, and a junk line once.
    return events + events[:1] + [b"{not json"], usage


def _s3_ids(s3: Any, bucket: str) -> list[int]:
    ids = []
    for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode("utf-8")
        ids += [int(row["id"]) for row in csv.DictReader(io.StringIO(body))]
    return ids


def _prefetch_threads_end(timeout: float = 30.0) -> bool:
    """Whether the background pulls of ``tools/direct_runner/direct_pubsub.py`` all stop
    once the job is cancelled: its executor ends after the bundle under way, then
    each thread finishes its call in flight (a pull has a one-second deadline).
    Seconds when the machine keeps up; the 30 s are for one that does not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [t for t in threading.enumerate() if t.name.startswith("pubsub-prefetch:")]:
            return True
        time.sleep(0.1)
    return False


def _port_open(host: str) -> bool:
    address, port = host.split(":")
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((address, int(port))) == 0


def test_pubsub_to_rest_and_s3_once_per_stream(tmp_path, stream_secrets, http_receiver, aws_session,
                                                 moto_server, sample_reference_dir):
    emulator = PubSubEmulator(work_dir=tmp_path / "emulator")
    with emulator:
        project = emulator.project
        subscriptions = {
            kind: create_topic_and_subscription(project, f"raw-{kind}", f"datastreamer-{kind}")
            for kind in ("events", "usage", "refresh")
        }
        bucket = "streaming-e2e"
        aws_session("s3").create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
        streams = [
            rest_stream("rest-live", f"{http_receiver.url}/live"),
            s3_stream("s3-live", moto_server.url, bucket, batching={"rotation_seconds": 10}),
        ]
        config = tmp_path / "streams.json"
        config.write_text(json.dumps({"streams": streams}))
        options = PipelineOptions([
            "--streaming",
            f"--events_subscription={subscriptions['events']}",
            f"--usage_subscription={subscriptions['usage']}",
            f"--reference_dir={sample_reference_dir}",
            f"--streams_config={config}",
            f"--output_dir={tmp_path / 'out'}",
            "--allow_insecure_destinations",
            f"--refresh_interval_seconds={REFRESH_SECONDS}",
            f"--refresh_subscription={subscriptions['refresh']}",
            "--output_window_seconds=5",
            "--max_buffering_seconds=1",
        ])
        pipeline = beam.Pipeline(options=options)
        write_outputs(build_pipeline(pipeline, options), str(tmp_path / "out"), window_seconds=5)
        # The lateness gate's heartbeats: a few per refresh interval.
        ticker = Ticker(project, "raw-refresh", 2.5).start()
        result = pipeline.run()
        try:
            events, usage = _records(datetime.now(tz=UTC))
            assert publish(project, "raw-events", events) == EVENTS + 2
            assert publish(project, "raw-usage", usage) == USAGE
            expected = {7_000_000 + i for i in range(EVENTS)} | {8_000_000 + i for i in range(USAGE)}
            s3 = aws_session("s3")
            deadline = time.monotonic() + DEADLINE_SECONDS
            rest_ids: list[int] = []
            s3_ids: list[int] = []
            while time.monotonic() < deadline:
                rest_ids = [r.json()["id"] for r in http_receiver.requests() if r.path == "/live"]
                s3_ids = _s3_ids(s3, bucket)
                if set(rest_ids) >= expected and set(s3_ids) >= expected:
                    break
                time.sleep(0.5)
            # A little longer, so a duplicate delivery would show up.
            delivered_after = time.monotonic() - (deadline - DEADLINE_SECONDS)
            time.sleep(2)
            rest_ids = [r.json()["id"] for r in http_receiver.requests() if r.path == "/live"]
            s3_ids = _s3_ids(s3, bucket)
        finally:
            result.cancel()
            ticker.stop()
        print(f"delivered everywhere {delivered_after:.1f} s after publishing")
        assert result.state == PipelineState.CANCELLED
        assert _prefetch_threads_end(), "the DirectRunner's Pub/Sub prefetch threads outlived the job"
        assert sorted(rest_ids) == sorted(expected), "REST: each document once"
        assert sorted(s3_ids) == sorted(expected), "S3: each document once"
    assert emulator.pid is None or not _port_open(emulator.host)
    assert not _port_open(emulator.host)


@pytest.mark.parametrize("flags, message", [
    (["--events_subscription=projects/demo-project/subscriptions/raw"], "need --streaming"),
    (["--streaming", "--events_subscription=raw-events"], "expected projects/<project>/subscriptions/<name>"),
    (["--streaming", "--events_subscription=projects/demo-project/subscriptions/raw",
      "--refresh_subscription=projects/demo-project/subscriptions/refresh",
      "--allowed_lateness_seconds=90000"], "between 0 and --dedup_horizon_seconds"),
    (["--streaming", "--events_subscription=projects/demo-project/subscriptions/raw",
      "--events_input=x.jsonl"], "files or Pub/Sub, not both"),
    (["--streaming", "--events_subscription=projects/demo-project/subscriptions/raw"],
     "--refresh_subscription is required on the DirectRunner"),
])
def test_streaming_options_are_checked(flags, message, capsys, sample_reference_dir):
    from pipelines import data_streamer

    assert data_streamer.main([*flags, f"--reference_dir={sample_reference_dir}"]) == 2
    assert message in capsys.readouterr().err
