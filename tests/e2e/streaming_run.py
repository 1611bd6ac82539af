"""A streaming job run for the fault suite: the real job on the DirectRunner's
streaming executor, records published to the Pub/Sub emulator at a steady rate,
REST streams delivering to loopback receivers that fail as a test tells them.

The job runs with the delivery defaults (connect 5 s, read 30 s, stream budget
5 s, circuit after 3 failed batches, first probe after 10 s): the fault suite
measures what a user gets, not what shortened timeouts would hide.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from pipelines.data_streamer import build_pipeline, write_outputs
from pipelines.summary import RunSummary, summarize
from sinks.parking import ParkStore
from tests.guide_samples import RAW_EVENTS
from tools.latency import latency_report
from tools.local_destinations import HttpReceiver
from tools.pubsub_emulator import PubSubEmulator, Ticker, create_topic_and_subscription, publish

REFRESH_SECONDS = 10
#: The connect timeout of the defaults: the latency bound's allowance.
CONNECT_TIMEOUT_SECONDS = 5.0


@dataclass
class StreamingRun:
    """What a run left: the receivers' logs, when each document was published,
    the job's summary, parked batches and status."""

    receivers: dict[str, HttpReceiver]
    sent_at: dict[str, float]
    out: Path
    summary: RunSummary | None = None
    state: str = ""
    phases: dict[str, float] = field(default_factory=dict)

    def report(self, stream_id: str) -> dict[str, float]:
        return latency_report(self.receivers[stream_id], self.sent_at)

    def p99(self, stream_ids: Sequence[str]) -> float:
        """The p99 latency over the documents of all ``stream_ids`` together."""
        from tools.latency import latencies, percentile

        values: list[float] = []
        lost = 0
        for stream_id in stream_ids:
            got = latencies(self.receivers[stream_id], self.sent_at)
            values += got
            lost += len(self.sent_at) - len(got)
        return percentile(sorted(values) + [float("inf")] * lost, 99)

    def delivered_ids(self, stream_id: str) -> set[str]:
        from tools.latency import arrivals

        return set(arrivals(self.receivers[stream_id]))

    def parked_ids(self, stream_id: str) -> set[str]:
        store = ParkStore(str(self.out / "parked"))
        return {str(document["id"]) for path in store.list(stream_id) for _, document in store.read(path).documents}

    def status(self) -> dict[str, dict[str, Any]]:
        path = self.out / "status" / "status.jsonl"
        if not path.exists():
            return {}
        return {r["stream_id"]: r for r in map(json.loads, path.read_text().splitlines())}

    def circuit(self, stream_id: str) -> dict[str, Any] | None:
        path = self.out / "status" / "circuits" / f"{stream_id}.json"
        return json.loads(path.read_text()) if path.exists() else None


def _event(doc_id: int, now: datetime) -> bytes:
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return orjson.dumps(RAW_EVENTS["5.1.1"] | {"id": doc_id, "timestamp": stamp})


def run_streaming(
    emulator: PubSubEmulator,
    work: Path,
    streams: list[dict[str, Any]],
    receivers: dict[str, HttpReceiver],
    reference_dir: Path,
    *,
    rate: float,
    publish_seconds: float,
    settled: Callable[[StreamingRun], bool],
    settle_seconds: float,
    first_id: int,
    during: Callable[[float], None] | None = None,
    flags: Sequence[str] = (),
    published_enough: Callable[[float], bool] | None = None,
) -> StreamingRun:
    """Run the job, publish ``rate`` events a second for ``publish_seconds``
    (calling ``during(elapsed)`` every half second, to start or end an outage;
    with ``published_enough``, publishing ends as soon as it says so, within
    ``publish_seconds`` still), then wait up to ``settle_seconds`` for
    ``settled``, cancel the job and read its summary."""
    project = emulator.project
    name = work.name
    subscriptions = {kind: create_topic_and_subscription(project, f"{name}-{kind}", f"{name}-{kind}-sub")
                     for kind in ("events", "refresh")}
    config = work / "streams.json"
    config.write_text(json.dumps({"streams": streams}))
    out = work / "out"
    options = PipelineOptions([
        "--streaming",
        f"--events_subscription={subscriptions['events']}",
        f"--reference_dir={reference_dir}",
        f"--streams_config={config}",
        f"--output_dir={out}",
        "--allow_insecure_destinations",
        f"--refresh_interval_seconds={REFRESH_SECONDS}",
        f"--refresh_subscription={subscriptions['refresh']}",
        "--output_window_seconds=5",
        *flags,
    ])
    pipeline = beam.Pipeline(options=options)
    write_outputs(build_pipeline(pipeline, options), str(out), window_seconds=5)
    run = StreamingRun(receivers, {}, out)
    ticker = Ticker(project, f"{name}-refresh", 2.5).start()
    result = pipeline.run()
    started = time.monotonic()
    try:
        next_id = first_id
        while (elapsed := time.monotonic() - started) < publish_seconds:
            if published_enough is not None and published_enough(elapsed):
                break
            now = datetime.now(tz=UTC)
            count = max(1, round(rate / 2))
            records = [_event(next_id + i, now) for i in range(count)]
            sent = time.time()
            publish(project, f"{name}-events", records)
            for i in range(count):
                run.sent_at[str(next_id + i)] = sent
            next_id += count
            if during is not None:
                during(elapsed)
            time.sleep(max(0.0, 0.5 - (time.monotonic() - started - elapsed)))
        run.phases["published"] = time.monotonic() - started
        deadline = time.monotonic() + settle_seconds
        while time.monotonic() < deadline and not settled(run):
            if PipelineState.is_terminal(result.state):
                break
            time.sleep(1)
        run.phases["settled"] = time.monotonic() - started
        # The output window (5 s) closes after the last results: status written.
        time.sleep(6)
    finally:
        ticker.stop()
        if not PipelineState.is_terminal(result.state):
            result.cancel()
    run.state = str(result.state)
    run.summary = summarize(result)
    return run
