"""The streaming job on Apache Flink, the production path: Beam's ``FlinkRunner``
on ``[local]`` (a Flink mini-cluster in Beam's Flink job server), the
cross-language Pub/Sub read (Java's PubsubIO, ``EMBEDDED`` in Flink's JVM) from
the Pub/Sub emulator, refresh and recovery ticks from ``PeriodicImpulse``,
checkpoints every 10 s (``tools/flink/streaming.py``).

What ``test_streaming_e2e.py`` checks on the local runner: every record reaches
the REST receiver and moto's S3 exactly once per stream, a duplicate publish and
a junk line included, within a bounded time. And a reference change (an
organisation renamed in the reference files) reaches the documents within one
refresh interval (plus a reload's few seconds), with no restart.

Records flow all along, as in production: a trickle of other records (2 a
second of each kind) runs beside the ones checked. After a burst followed by
silence, deliveries on Flink stopped until traffic resumed (4 of 18 records in
240 s; docs/flink.md).

Needs Java 17 and Maven (jars fetched into ~/.m2 on first use) and gcloud's
Pub/Sub emulator.
"""

from __future__ import annotations

import contextlib
import json
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
from tests.conftest import write_reference
from tests.e2e.test_streaming_e2e import EVENTS, USAGE, _iso, _records, _s3_ids
from tests.guide_samples import RAW_EVENTS, RAW_USAGE
from tests.streams import rest_stream, s3_stream
from tools.flink.metrics import job_running
from tools.flink.streaming import flink_streaming
from tools.pubsub_emulator import PubSubEmulator, create_topic_and_subscription, publish

pytestmark = pytest.mark.flink

REFRESH_SECONDS = 20
#: The job server, the mini-cluster and the SDK workers start in about a minute
#: on this machine; more under load.
START_SECONDS = 300
#: Everything must arrive within this once published. S3 files wait for their
#: 10 s window to close, and on Flink the watermark follows Java PubsubIO's
#: estimate: the oldest publish time read in the last minute, or the clock once
#: a minute passed without a message; so about a minute after a burst (four
#: beside the rest of make test on a loaded day, 2026-12-04). The waits end once
#: everything arrived.
DEADLINE_SECONDS = 600
#: A reload after an interval starts, and the document's way to the receiver.
RELOAD_SLACK_SECONDS = 10


def _rest_docs(receiver: Any, path: str) -> list[dict[str, Any]]:
    return [r.json() for r in receiver.requests() if r.path == path]


class _Trickle:
    """Two records a second of each kind, ids from 6,000,000, until stopped."""

    def __init__(self, project: str) -> None:
        self._project = project
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trickle", daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(0.5):
            now = datetime.now(tz=UTC)
            publish(self._project, "raw-events",
                    [orjson.dumps(RAW_EVENTS["5.1.1"] | {"id": 6_000_000 + n, "timestamp": _iso(now)})])
            usage = RAW_USAGE["5.2"] | {"id": 6_000_000 + n, "end_timestamp": _iso(now),
                                        "start_timestamp": _iso(now - timedelta(seconds=60))}
            publish(self._project, "raw-usage", [orjson.dumps(usage)])
            n += 1

    def __enter__(self) -> _Trickle:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_the_streaming_job_on_flink_delivers_once_per_stream_and_applies_a_reference_change(
        tmp_path, stream_secrets, http_receiver, aws_session, moto_server, sample_tables):
    reference = write_reference(tmp_path / "reference", sample_tables)
    with PubSubEmulator(work_dir=tmp_path / "emulator") as emulator, contextlib.ExitStack() as running:
        project = emulator.project
        subscriptions = {kind: create_topic_and_subscription(project, f"raw-{kind}", f"datastreamer-{kind}")
                         for kind in ("events", "usage")}
        bucket = "flink-streaming-e2e"
        aws_session("s3").create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
        config = tmp_path / "streams.json"
        config.write_text(json.dumps({"streams": [
            rest_stream("rest-live", f"{http_receiver.url}/live"),
            s3_stream("s3-live", moto_server.url, bucket, batching={"rotation_seconds": 10}),
        ]}))
        flink = flink_streaming(running, tmp_path, emulator.url)
        options = PipelineOptions([
            *flink.flags, "--streaming",
            f"--events_subscription={subscriptions['events']}",
            f"--usage_subscription={subscriptions['usage']}",
            f"--reference_dir={reference}",
            f"--streams_config={config}",
            f"--output_dir={tmp_path / 'out'}",
            "--allow_insecure_destinations",
            f"--refresh_interval_seconds={REFRESH_SECONDS}",
            "--output_window_seconds=5",
            "--max_buffering_seconds=1",
        ])
        pipeline = beam.Pipeline(options=options)
        write_outputs(build_pipeline(pipeline, options), str(tmp_path / "out"), window_seconds=5)
        result = pipeline.run()
        try:
            started = time.monotonic()
            while not job_running(flink.rest_url):
                assert time.monotonic() - started < START_SECONDS, "the job did not start on Flink"
                assert not PipelineState.is_terminal(result.state), f"the job ended: {result.state}"
                time.sleep(1)
            print(f"running on Flink {time.monotonic() - started:.0f} s after submitting")
            running.enter_context(_Trickle(project))

            # 1. Once per stream, a duplicate publish and a junk line included.
            events, usage = _records(datetime.now(tz=UTC))
            assert publish(project, "raw-events", events) == EVENTS + 2
            assert publish(project, "raw-usage", usage) == USAGE
            expected = {7_000_000 + i for i in range(EVENTS)} | {8_000_000 + i for i in range(USAGE)}
            s3 = aws_session("s3")
            published = time.monotonic()
            while time.monotonic() - published < DEADLINE_SECONDS:
                rest_ids = [d["id"] for d in _rest_docs(http_receiver, "/live") if d["id"] in expected]
                if set(rest_ids) >= expected and set(_s3_ids(s3, bucket)) >= expected:
                    break
                time.sleep(0.5)
            delivered_after = time.monotonic() - published
            time.sleep(2)  # a duplicate delivery would show up
            rest_ids = [d["id"] for d in _rest_docs(http_receiver, "/live") if d["id"] in expected]
            s3_ids = [i for i in _s3_ids(s3, bucket) if i in expected]
            print(f"delivered everywhere {delivered_after:.1f} s after publishing")
            assert sorted(rest_ids) == sorted(expected), "REST: each document once"
            assert sorted(s3_ids) == sorted(expected), "S3: each document once"

            # 2. The organisation is renamed in the reference files; one event a
            # second until documents published a refresh interval (and a reload)
            # later carry the new name.
            renamed = json.loads(json.dumps(sample_tables))
            renamed["organisation"][0]["name"] = "WBV Renamed On Flink"
            write_reference(reference, renamed)
            changed = time.time()
            sent: dict[int, float] = {}
            doc_id = 9_000_000
            while time.time() - changed < REFRESH_SECONDS + RELOAD_SLACK_SECONDS + 15:
                raw = RAW_EVENTS["5.1.1"] | {"id": doc_id, "timestamp": _iso(datetime.now(tz=UTC))}
                publish(project, "raw-events", [orjson.dumps(raw)])
                sent[doc_id] = time.time()
                doc_id += 1
                time.sleep(1)
            deadline = time.monotonic() + DEADLINE_SECONDS
            while time.monotonic() < deadline:
                names = {d["id"]: d["organisation"]["name"] for d in _rest_docs(http_receiver, "/live")
                         if d["id"] in sent}
                if set(names) >= set(sent):
                    break
                time.sleep(0.5)
        finally:
            result.cancel()
            cancelled = time.monotonic()
            while not PipelineState.is_terminal(result.state) and time.monotonic() - cancelled < 60:
                time.sleep(0.5)
        assert result.state == PipelineState.CANCELLED
        assert set(names) == set(sent), "every event after the change was delivered"
        late = {i: names[i] for i, at in sent.items() if at >= changed + REFRESH_SECONDS + RELOAD_SLACK_SECONDS}
        assert late and set(late.values()) == {"WBV Renamed On Flink"}, late
        first_new = min((at for i, at in sent.items() if names[i] == "WBV Renamed On Flink"), default=None)
        assert first_new is not None
        print(f"the renamed organisation reached documents published {first_new - changed:.1f} s after the change "
              f"(refresh interval {REFRESH_SECONDS} s)")
