"""Streaming latency benchmark (part of ``make bench``): publish-to-receipt latency
of the streaming job on the BundleBasedDirectRunner, and the highest rate it sustains.

    python -m tools.bench.streaming [--stream_rate 200] [--stream_seconds 30] ...

What it does, in one process plus two child processes:

- starts the Pub/Sub emulator and a loopback REST bulk receiver (:class:`LatencyReceiver`)
  that notes when each document id arrived;
- starts the real job, ``python -m pipelines.data_streamer --streaming`` reading
  ``--events_subscription``/``--usage_subscription``, with ``--refresh_subscription``
  ticked by :class:`AlignedTicker`, one ``rest_api_bulk`` stream (both kinds) per
  organisation of the fleet pointing at the receiver, ``--max_buffering_seconds 1``.
  It runs in a **subprocess**: it can be stopped cleanly (process group) whatever
  state the DirectRunner is in, and its CPU-bound worker thread does not compete
  for this process's GIL with the publisher and the receiver (on 2 cores that
  would slow both sides and blur what is measured);
- publishes valid records of the sample fleet (each with a fresh id, its times
  moved to the moment of publishing, so nothing is late or a duplicate) at a
  steady rate from this process (:class:`RatePublisher`), noting each id's
  publish time; latency = receipt time - publish time, same clock;
- per **step** (one rate): ``--stream_warmup_seconds`` published and discarded,
  then ``--stream_seconds`` measured; publishing stops and the step waits up to
  ``--stream_tail_seconds`` for its records. A record that never arrives counts
  as infinitely late (so it fails p99) and is reported as missing (``lost``). A
  step stops early, failed, once a record has waited ``--stream_abort_seconds``
  (overloaded: everything published after it is at least as late);
- **sweep**: steps in one long-running job, rates multiplied by
  ``--stream_step_factor`` from ``--stream_rate`` while they pass (p99 at most
  ``--stream_p99_limit``, nothing missing, latency not drifting upwards, the
  publisher kept the rate), divided while they fail (by the factor squared after
  an overloaded step), then ``--stream_refine`` bisection steps between the
  highest pass and the lowest failure. A failure at a rate the pipeline *kept up
  with* (all delivered, no drift, throughput at the rate) is a latency floor and
  ends a downward search. One job with phases rather than a job per step: a job
  start costs 5-20 s and a first side-input load, and a job that has been running
  for minutes is the honest subject; each step starts from an empty pipeline
  because the previous step's records are all received first. When they are not
  (an overloaded step left a backlog) the job is replaced by a fresh one;
- the **runner's ceiling**: the same sweep with a trivial pipeline on the same
  BundleBasedDirectRunner (same fixes, :func:`tools.direct_runner.apply_direct_runner_fixes`),
  reading the same two kinds of message from the same emulator, parsing them
  with orjson and POSTing each bundle's records as a JSON array to the same
  receiver (:func:`trivial_main`), from ``--stream_trivial_start_rate``. On a
  small machine its ceiling is also the machine's: the emulator, the publisher
  and the pipeline share the cores.

Per step the result also has ``throughput`` (records per second the pipeline
delivered, first to last receipt: the rate when it kept up, its capacity when it
did not) and ``cpu_share`` (the pipeline process's CPU per wall second; the
DirectRunner's executor polls without sleeping while timers are pending, so
near 100 % does not by itself mean saturated).

Latency floor: a record is enriched once the reference snapshot of its refresh
interval is loaded, and that snapshot is the one of the tick at the interval's
start (``transforms/refresh.py``), so a record in real time waits for no
window to close; what remains is the DirectRunner's scheduling, batching
(``--stream_max_buffering_seconds``) and delivery. (Until 2026-11-22 a
snapshot's window was the interval it served, and every record waited for its
interval to end: p50 9.2 s, p99 13.7 s at 200/s with a 10 s interval.)
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RATE = 200.0
DEFAULT_P99_LIMIT = 5.0
#: Stream credentials of the bench's streams, set only in the job's environment.
_SECRETS = {
    "DATASTREAMER_BENCH_REST_TOKEN": "Bearer bench-rest-token",
    "DATASTREAMER_BENCH_SIGNING_SECRET": "bench-signing-secret",
}
#: The part of the budget the job's sweep may use before the trivial pipeline's starts.
_JOB_SHARE = 0.55
#: A step whose publisher managed less than this share of the rate measures the publisher.
_PUBLISHER_SHORTFALL = 0.95
#: A step whose pipeline delivered at least this share of the rate kept up with it.
_KEPT_UP = 0.95
#: Rate of the records published until a fresh pipeline has delivered its first one.
_PRIMER_RATE = 20.0
_QUARTER = 4


# --- Options ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The streaming benchmark's options (all ``--stream_...``)."""
    group = parser.add_argument_group("streaming latency benchmark")
    group.add_argument("--stream_rate", type=float, default=DEFAULT_RATE,
                       help="Records published per second (events and usage mixed as in the fleet) at the "
                       "headline step, and the first step of the sweep. Default: 200.")
    group.add_argument("--stream_seconds", type=float, default=30.0,
                       help="Measured seconds per step. Default: 30.")
    group.add_argument("--stream_warmup_seconds", type=float, default=10.0,
                       help="Seconds published at a step's rate before measuring starts (discarded); should exceed "
                       "the latency, so the pipeline carries the step's load when measuring starts. Default: 10.")
    group.add_argument("--stream_tail_seconds", type=float, default=20.0,
                       help="After a step stops publishing, longest wait for its records; those still missing "
                       "are lost (infinite latency). Default: 20.")
    group.add_argument("--stream_p99_limit", type=float, default=DEFAULT_P99_LIMIT,
                       help="A rate is sustainable when p99 is at most this many seconds (and nothing is lost, "
                       "latency does not drift up, the publisher kept the rate). Default: 5.")
    group.add_argument("--stream_max_drift", type=float, default=2.0,
                       help="A step also fails when the median latency of its last quarter exceeds its first "
                       "quarter's by more than this many seconds (falling behind); 0 disables. Default: 2.")
    group.add_argument("--stream_abort_seconds", type=float, default=20.0,
                       help="Stop a step early, as failed, once a record has waited this long (the pipeline is "
                       "overloaded; saves the budget for the next steps); 0 disables. Default: 20.")
    group.add_argument("--stream_step_factor", type=float, default=2.0,
                       help="Sweep: multiply the rate by this while steps pass, divide while they fail. Default: 2.")
    group.add_argument("--stream_refine", type=int, default=2,
                       help="Sweep: bisection steps between the highest passing and lowest failing rate. Default: 2.")
    group.add_argument("--stream_min_rate", type=float, default=10.0,
                       help="Sweep: lowest rate tried. Default: 10.")
    group.add_argument("--stream_max_rate", type=float, default=6400.0,
                       help="Sweep: highest rate tried. Default: 6400.")
    group.add_argument("--stream_rates", default=None,
                       help="Comma-separated rates to run instead of the sweep, in order (e.g. 200,400). "
                       "Default: sweep.")
    group.add_argument("--stream_budget_seconds", type=float, default=450.0,
                       help="Wall-clock budget of the whole streaming benchmark; a step that would not fit is not "
                       f"started (the job's sweep gets {round(_JOB_SHARE * 100)}%% of it first). Default: 450.")
    group.add_argument("--stream_pipelines", default="job,trivial",
                       help="Which pipelines to measure: job, trivial or both. Default: job,trivial.")
    group.add_argument("--stream_refresh_seconds", type=int, default=10,
                       help="The job's --refresh_interval_seconds; shorter intervals cost the job more per "
                       "second (a snapshot and timers per window). Default: 10.")
    group.add_argument("--stream_trivial_start_rate", type=float, default=800.0,
                       help="First rate of the trivial pipeline's sweep (at least --stream_rate and the job's "
                       "sustainable rate). Default: 800.")
    group.add_argument("--stream_max_buffering_seconds", type=int, default=1,
                       help="The job's --max_buffering_seconds. Default: 1.")
    group.add_argument("--stream_job_args", default="",
                       help="More flags for the job, one shell-quoted string (e.g. '--output_window_seconds=10').")
    group.add_argument("--stream_sample_dir", default="data/sample",
                       help="Sample fleet the records come from (make sample-data); generated into the work "
                       "directory when missing. Default: data/sample.")
    group.add_argument("--stream_startup_timeout", type=float, default=120.0,
                       help="Longest wait for a fresh pipeline's first delivery. Default: 120.")


# --- Percentiles and the sweep (pure) ---------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100] of ascending values (``inf`` allowed);
    ``nan`` for none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_stats(latencies: Sequence[float], lost: int = 0) -> dict[str, float]:
    """p50/p95/p99/max of ``latencies`` plus ``lost`` records counted as infinitely late."""
    values = sorted(latencies) + [math.inf] * lost
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "p99": percentile(values, 99),
            "max": values[-1] if values else math.nan}


def drift(samples: Sequence[tuple[float, float]]) -> float:
    """Median latency of the last quarter minus that of the first quarter of
    ``(publish time, latency)`` samples: how much the job fell behind while the
    rate stayed the same (``inf`` latencies count)."""
    if len(samples) < 2 * _QUARTER:
        return 0.0
    ordered = sorted(samples)
    quarter = len(ordered) // _QUARTER
    first = sorted(latency for _, latency in ordered[:quarter])
    last = sorted(latency for _, latency in ordered[-quarter:])
    early, late = percentile(first, 50), percentile(last, 50)
    if math.isinf(early):
        return 0.0  # lost from the start: the lost count says it
    return late - early


def judge(step: dict[str, Any], p99_limit: float, max_drift: float) -> tuple[bool, str]:
    """Whether a step's rate was sustained, and if not why."""
    if step.get("overloaded_after_seconds") is not None:
        return False, "overloaded: a record waited past --stream_abort_seconds, step stopped early"
    if step["achieved_rate"] < _PUBLISHER_SHORTFALL * step["rate"]:
        return False, f"publisher reached only {step['achieved_rate']:.0f}/s"
    if step["lost"]:
        return False, f"{step['lost']} records lost"
    if step.get("throughput", math.inf) < _KEPT_UP * step["achieved_rate"]:
        return False, f"delivered only {step['throughput']:.0f}/s"
    if not step["p99"] <= p99_limit:
        return False, f"p99 {step['p99']:.2f} s > {p99_limit:g} s"
    if max_drift > 0 and step["drift"] > max_drift:
        return False, f"latency drifted up {step['drift']:.2f} s"
    return True, "ok"


class RateSearch:
    """The sweep's rates: ``start``, then times ``factor`` while steps pass (up to
    ``max_rate``) or divided while they fail (down to ``min_rate``; divided by
    ``factor`` squared after an overloaded step, which is far off), then up to
    ``refine`` geometric bisections between the highest pass and the lowest
    failure above it. A failure at a rate the pipeline kept up with (``floor``:
    everything delivered, no drift, but p99 over the limit) ends a downward
    search: a lower rate only lowers the load, not the latency floor. With
    ``rates``, exactly those in order."""

    def __init__(self, start: float, *, factor: float = 2.0, min_rate: float = 10.0, max_rate: float = 6400.0,
                 refine: int = 2, rates: Sequence[float] | None = None) -> None:
        if factor <= 1:
            raise ValueError("the step factor must be above 1")
        self.start, self.factor, self.refine = start, factor, refine
        self.min_rate, self.max_rate = min_rate, max_rate
        self._fixed = list(rates) if rates else None
        self.results: list[tuple[float, bool]] = []
        self._overloaded: set[float] = set()
        self._floors: set[float] = set()
        self._bisections = 0

    def record(self, rate: float, passed: bool, overloaded: bool = False, floor: bool = False) -> None:
        self.results.append((rate, passed))
        if overloaded:
            self._overloaded.add(rate)
        if floor and not passed:
            self._floors.add(rate)

    @property
    def sustainable(self) -> float | None:
        """The highest passing rate below the lowest failing one (a pass above a
        failure is noise, not capacity)."""
        failed = [rate for rate, passed in self.results if not passed]
        ceiling = min(failed) if failed else math.inf
        passed = [rate for rate, ok in self.results if ok and rate < ceiling]
        return max(passed) if passed else None

    def next_rate(self) -> float | None:
        if self._fixed is not None:
            return self._fixed[len(self.results)] if len(self.results) < len(self._fixed) else None
        if not self.results:
            return self.start
        low = self.sustainable
        failed = [rate for rate, passed in self.results if not passed and (low is None or rate > low)]
        high = min(failed) if failed else None
        if high is None:  # everything passed so far
            assert low is not None
            return None if low >= self.max_rate else min(round(low * self.factor), self.max_rate)
        if low is None:  # everything failed so far
            if high in self._floors:
                return None
            lower = round(high / (self.factor ** 2 if high in self._overloaded else self.factor))
            if lower >= self.min_rate:
                return lower
            return self.min_rate if high > self.min_rate * 1.1 else None
        middle = round(math.sqrt(low * high))
        if self._bisections >= self.refine or middle <= low or middle >= high or high / low < 1.1:
            return None
        self._bisections += 1
        return middle


# --- Records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolRecord:
    kind: str  # "event" or "usage"
    line: bytes
    moment: float  # the record's event time, epoch seconds


def load_pool(sample_dir: Path) -> list[PoolRecord]:
    """The sample fleet's records that the job turns into documents (valid,
    known references), both kinds interleaved in event-time order."""
    from schemas.records import RecordError
    from tools.pubsub_emulator import record_time
    from transforms.enrich import enrich_event, enrich_usage
    from transforms.parse import parse_record
    from transforms.reference import load_reference_data

    reference = load_reference_data(str(sample_dir / "reference"))
    enrich = {"event": enrich_event, "usage": enrich_usage}
    pool = []
    for kind, name in (("event", "events"), ("usage", "usage")):
        for line in (sample_dir / "raw" / f"{name}.jsonl").read_bytes().splitlines():
            try:
                record, _ = parse_record(kind, line)
                enrich[kind](record, reference)
            except (RecordError, KeyError, ValueError, TypeError):
                continue
            moment = record_time(orjson.loads(line), kind)  # type: ignore[arg-type]
            if moment is not None:
                pool.append(PoolRecord(kind, line, moment.timestamp()))
    pool.sort(key=lambda r: r.moment)
    return pool


def organisations(sample_dir: Path) -> list[int]:
    from transforms.reference import load_table

    return sorted(load_table(str(sample_dir / "reference"), "organisation"))


def bench_streams(orgs: Sequence[int], url: str) -> list[dict[str, Any]]:
    """One ``rest_api_bulk`` stream of both kinds per organisation, to the receiver."""
    return [{
        "id": f"bench-bulk-{org}", "organisation_id": org, "stream_type": "both", "api_type": "rest_api_bulk",
        "created_at": "2026-10-01T00:00:00Z",
        "rest": {"url": f"{url}/bench/{org}", "auth_header": "Authorization",
                 "auth_secret": {"env": "DATASTREAMER_BENCH_REST_TOKEN"},
                 "signing_secret": {"env": "DATASTREAMER_BENCH_SIGNING_SECRET"}},
    } for org in orgs]


def ensure_sample(sample_dir: Path, work_dir: Path) -> Path:
    """``sample_dir`` if it holds a fleet, else a one-day fleet generated into ``work_dir``."""
    if (sample_dir / "raw" / "events.jsonl").is_file() and (sample_dir / "reference").is_dir():
        return sample_dir
    generated = work_dir / "sample"
    if not (generated / "raw" / "events.jsonl").is_file():
        subprocess.run([sys.executable, "-m", "tools.sample_fleet", "--output_dir", str(generated),
                        "--days", "1", "--formats", "jsonl"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return generated


# --- Receiver ---------------------------------------------------------------------------------


class LatencyReceiver:
    """A loopback REST bulk endpoint that answers 202 at once and notes, per
    document id, when the request carrying it arrived (the body read). Keeps only
    ids and times (``HttpReceiver`` keeps every body, hundreds of MB over a sweep)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received: dict[int, float] = {}
        self.duplicates = 0
        self.requests = 0
        self.bad = 0
        receiver = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                arrived = time.time()
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "13")
                self.end_headers()
                self.wfile.write(b'{"errors":[]}')
                receiver._note(body, arrived)

            do_POST = do_PUT = _handle  # noqa: N815 - http.server's naming

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="latency-receiver", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _note(self, body: bytes, arrived: float) -> None:
        try:
            documents = orjson.loads(body)
            ids = [document["id"] for document in documents]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            with self._lock:
                self.bad += 1
            return
        with self._lock:
            self.requests += 1
            for record_id in ids:
                if record_id in self.received:
                    self.duplicates += 1
                else:
                    self.received[record_id] = arrived

    def missing(self, ids: range) -> int:
        with self._lock:
            return sum(1 for record_id in ids if record_id not in self.received)

    def times(self, ids: range) -> list[float | None]:
        with self._lock:
            return [self.received.get(record_id) for record_id in ids]

    def __enter__(self) -> LatencyReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- Publishing -------------------------------------------------------------------------------


class RatePublisher:
    """Publishes pool records at a steady rate to the events and usage topics, each
    with a fresh id and its times moved to the moment of publishing (whole seconds
    back, so never in the future), and notes each id's publish time and event time.
    Publishing runs in the caller's thread; the client batches for at most 5 ms."""

    def __init__(self, project: str, host: str, pool: Sequence[PoolRecord]) -> None:
        import grpc
        from google.cloud import pubsub_v1
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

        channel = grpc.insecure_channel(host, options=[("grpc.enable_http_proxy", 0)])
        self._client = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(max_messages=500, max_bytes=1_000_000, max_latency=0.005),
            transport=PublisherGrpcTransport(channel=channel),
        )
        self._topics = {"event": self._client.topic_path(project, "bench-events"),
                        "usage": self._client.topic_path(project, "bench-usage")}
        self._pool = itertools.cycle(pool)
        self._next_id = int(time.time()) * 1_000_000
        self.published: dict[int, tuple[float, float]] = {}  # id -> (publish time, event time)
        self._errors = 0
        self._lock = threading.Lock()

    @property
    def topics(self) -> dict[str, str]:
        return dict(self._topics)

    @property
    def next_id(self) -> int:
        return self._next_id

    @property
    def errors(self) -> int:
        with self._lock:
            return self._errors

    def _done(self, future: Any) -> None:
        if future.exception() is not None:
            with self._lock:
                self._errors += 1

    def publish_one(self) -> None:
        from tools.pubsub_emulator import shift_record

        source = next(self._pool)
        record = orjson.loads(source.line)
        record_id = self._next_id
        record["id"] = record_id
        now = time.time()
        offset = math.floor(now - source.moment)
        shift_record(record, source.kind, timedelta(seconds=offset))  # type: ignore[arg-type]
        data = orjson.dumps(record)
        # Noted before the id counts as published (watchers read both from other threads).
        self.published[record_id] = (time.time(), source.moment + offset)
        self._next_id = record_id + 1
        self._client.publish(self._topics[source.kind], data).add_done_callback(self._done)

    def run(self, rate: float, seconds: float, until: threading.Event | None = None) -> tuple[range, float]:
        """Publish at ``rate`` for ``seconds`` (or until ``until`` is set); return
        the ids published and the rate achieved."""
        first = self._next_id
        began = time.time()
        end = began + seconds
        sent = 0
        while True:
            now = time.time()
            if now >= end or (until is not None and until.is_set()):
                break
            due = int((now - began) * rate) + 1 - sent
            for _ in range(due):
                self.publish_one()
            sent += max(due, 0)
            delay = began + sent / rate - time.time()
            if delay > 0:
                time.sleep(min(delay, max(end - time.time(), 0), 0.05))
        elapsed = max(time.time() - began, 1e-9)
        return range(first, self._next_id), sent / elapsed

    def close(self) -> None:
        self._client.stop()
        self._client.transport.close()


class AlignedTicker:
    """The refresh ticks of a DirectRunner job (``--refresh_subscription``): one just
    after each boundary of the refresh interval and one half-way, so every refresh
    window has its snapshot as early as ``PeriodicImpulse`` would give it, and one
    lost tick cannot leave a window without a snapshot."""

    def __init__(self, project: str, topic: str, interval: float, host: str) -> None:
        self._project, self._topic, self._interval, self._host = project, topic, interval, host
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aligned-ticker", daemon=True)

    def _run(self) -> None:
        from tools.pubsub_emulator import publish

        half = self._interval / 2
        while not self._stop.is_set():
            publish(self._project, self._topic, [b"tick"], host=self._host)
            now = time.time()
            wake = (math.floor(now / half) + 1) * half + 0.05
            self._stop.wait(max(wake - now, 0.01))

    def __enter__(self) -> AlignedTicker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


# --- Pipelines under test ---------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process (Linux /proc), None when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Session:
    """One running pipeline (the job or the trivial one) in its own process group,
    with fresh subscriptions to the bench topics (deleted when it stops)."""

    def __init__(self, which: str, index: int, *, project: str, host: str, work_dir: Path, args: argparse.Namespace,
                 sample: Path, streams_config: Path, receiver_url: str, run_seconds: int) -> None:
        self.which, self.index, self.project, self.host = which, index, project, host
        self.dir = work_dir / f"{which}-{index}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._args, self._sample, self._config = args, sample, streams_config
        self._url, self._run_seconds = receiver_url, run_seconds
        self._subscriptions: list[str] = []
        self._ticker: AlignedTicker | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def _subscribe(self, topic: str) -> str:
        from tools.pubsub_emulator import create_topic_and_subscription

        path = create_topic_and_subscription(self.project, topic, f"{topic}-{self.which}-{self.index}",
                                             host=self.host)
        self._subscriptions.append(path)
        return path

    def command(self) -> list[str]:
        events, usage = self._subscribe("bench-events"), self._subscribe("bench-usage")
        if self.which == "trivial":
            return [sys.executable, "-m", "tools.bench.streaming", "_trivial_pipeline",
                    f"--events_subscription={events}", f"--usage_subscription={usage}",
                    f"--url={self._url}/trivial", f"--run_seconds={self._run_seconds}"]
        refresh = self._subscribe("bench-refresh")
        out = self.dir / "out"
        return [sys.executable, "-m", "tools.local_job", "--streaming",
                f"--events_subscription={events}", f"--usage_subscription={usage}",
                f"--refresh_subscription={refresh}",
                f"--refresh_interval_seconds={self._args.stream_refresh_seconds}",
                f"--max_buffering_seconds={self._args.stream_max_buffering_seconds}",
                f"--run_seconds={self._run_seconds}",
                f"--reference_dir={self._sample / 'reference'}", f"--streams_config={self._config}",
                f"--output_dir={out}", f"--archive_location={out / 'archive'}",
                "--allow_insecure_destinations", *shlex.split(self._args.stream_job_args)]

    def start(self) -> Session:
        command = self.command()
        if self.which == "job":
            self._ticker = AlignedTicker(self.project, "bench-refresh", self._args.stream_refresh_seconds,
                                         self.host).__enter__()
        env = {**os.environ, **_SECRETS, "PUBSUB_EMULATOR_HOST": self.host, "PYTHONUNBUFFERED": "1"}
        (self.dir / "command.txt").write_text(shlex.join(command) + "\n")
        log = (self.dir / "pipeline.log").open("wb")
        self.started_at = time.time()
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float | None:
        return _cpu_seconds(self.process.pid) if self.process is not None else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join((self.dir / "pipeline.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        from tools.processes import stop_group
        from tools.pubsub_emulator import subscriber_client

        if self.process is not None and self.process.poll() is None:
            stop_group(self.process, grace_seconds=10)
        if self._ticker is not None:
            self._ticker.__exit__()
            self._ticker = None
        with subscriber_client(self.host) as subscriber:
            for path in self._subscriptions:
                with contextlib.suppress(Exception):  # best effort: the emulator goes away anyway
                    subscriber.delete_subscription(subscription=path)
        self._subscriptions.clear()


class StartupError(RuntimeError):
    """A pipeline did not deliver within the startup timeout."""


def _wait_received(receiver: LatencyReceiver, ids: range, deadline: float, session: Session) -> int:
    """Wait until every id arrived or ``deadline``; return how many are missing."""
    while True:
        missing = receiver.missing(ids)
        if missing == 0 or time.time() >= deadline or not session.alive():
            return missing
        time.sleep(0.25)


def prime(session: Session, publisher: RatePublisher, receiver: LatencyReceiver, args: argparse.Namespace) -> float:
    """Publish slowly until the fresh pipeline delivers, then let it catch up;
    return the seconds from its start to its first delivery."""
    delivered = threading.Event()
    first = publisher.next_id

    def watch() -> None:
        while not delivered.is_set() and session.alive():
            if receiver.missing(range(first, max(publisher.next_id, first + 1))) < publisher.next_id - first:
                delivered.set()
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ids, _ = publisher.run(_PRIMER_RATE, args.stream_startup_timeout, until=delivered)
    delivered.set()
    watcher.join()
    if not session.alive():
        raise StartupError(f"the {session.which} pipeline exited with {session.process.returncode}:\n"
                           f"{session.log_tail()}")
    startup = time.time() - session.started_at
    missing = _wait_received(receiver, ids, time.time() + args.stream_startup_timeout, session)
    if missing == len(ids):
        raise StartupError(f"the {session.which} pipeline delivered nothing in {args.stream_startup_timeout:.0f} s:\n"
                           f"{session.log_tail()}")
    return startup


class _BacklogWatch:
    """Sets ``overloaded`` once the oldest record not yet received was published
    more than ``limit`` seconds ago: the step has failed for sure (everything
    published since is at least that late too, far more than 1 %), so the rest of
    its publishing would only grow a backlog."""

    def __init__(self, publisher: RatePublisher, receiver: LatencyReceiver, first_id: int, limit: float) -> None:
        self.overloaded = threading.Event()
        self.behind = 0.0
        self._publisher, self._receiver, self._cursor, self._limit = publisher, receiver, first_id, limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backlog-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            end = self._publisher.next_id
            received = self._receiver.received
            while self._cursor < end and self._cursor in received:
                self._cursor += 1
            if self._cursor < end:
                self.behind = time.time() - self._publisher.published[self._cursor][0]
                if self.behind > self._limit:
                    self.overloaded.set()
                    return

    def __enter__(self) -> _BacklogWatch:
        if self._limit > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def measure_step(rate: float, session: Session, publisher: RatePublisher, receiver: LatencyReceiver,
                 args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """One step at ``rate``: warm-up, measured window, tail. Returns the step's
    figures and whether the pipeline was empty again at the end (an overloaded
    step stops publishing early and does not wait for its tail)."""
    with _BacklogWatch(publisher, receiver, publisher.next_id, args.stream_abort_seconds) as watch:
        warmup, _ = publisher.run(rate, args.stream_warmup_seconds, until=watch.overloaded)
        cpu_before, wall_before = session.cpu_seconds(), time.time()
        ids, achieved = publisher.run(rate, args.stream_seconds, until=watch.overloaded)
        cpu_after, wall_after = session.cpu_seconds(), time.time()
    overloaded = watch.overloaded.is_set()
    if overloaded and not ids:  # already in the warm-up: judge on what was published
        ids = warmup
    everything = range(warmup.start, ids.stop)
    if not overloaded:
        _wait_received(receiver, everything, time.time() + args.stream_tail_seconds, session)
    times = receiver.times(ids)
    latencies, samples = [], []
    for record_id, received in zip(ids, times, strict=True):
        published, _moment = publisher.published[record_id]
        latency = math.inf if received is None else received - published
        samples.append((published, latency))
        if received is not None:
            latencies.append(latency)
    lost = len(ids) - len(latencies)
    stats = latency_stats(latencies, lost)
    step: dict[str, Any] = {
        "rate": rate, "achieved_rate": round(achieved, 1), "published": len(ids), "delivered": len(latencies),
        "lost": lost, **{key: _rounded(value) for key, value in stats.items()},
        "drift": _rounded(drift(samples)),
        "cpu_share": (round((cpu_after - cpu_before) / (wall_after - wall_before), 2)
                      if cpu_before is not None and cpu_after is not None and wall_after > wall_before else None),
        "overloaded_after_seconds": round(wall_after - wall_before, 1) if overloaded else None,
        "throughput": _throughput(receiver.times(everything), time.time()),
    }
    step["sustained"], step["verdict"] = judge(step, args.stream_p99_limit, args.stream_max_drift)
    step["kept_up"] = (not overloaded and lost == 0 and step["throughput"] >= _KEPT_UP * achieved
                       and not (args.stream_max_drift > 0 and step["drift"] > args.stream_max_drift))
    drained = not overloaded and receiver.missing(everything) == 0 and session.alive()
    return step, drained


def _throughput(receipts: Sequence[float | None], until: float) -> float:
    """Records per second the pipeline delivered of a step (warm-up included),
    from its first receipt to its last, or to ``until`` (when the step stopped
    watching) if some never arrived: the publishing rate when it kept up, its
    capacity when it did not."""
    times = sorted(moment for moment in receipts if moment is not None)
    if len(times) < 2:
        return 0.0
    end = times[-1] if len(times) == len(receipts) else max(until, times[-1])
    return round((len(times) - 1) / max(end - times[0], 1e-9), 1)


def _rounded(value: float) -> float:
    return round(value, 3) if math.isfinite(value) else value


def sweep(which: str, start_rate: float, deadline: float, *, project: str, host: str, work_dir: Path,
          args: argparse.Namespace, sample: Path, config: Path, publisher: RatePublisher,
          receiver: LatencyReceiver) -> dict[str, Any]:
    """Run the rate search for one pipeline within ``deadline``."""
    fixed = [float(r) for r in args.stream_rates.split(",")] if args.stream_rates else None
    search = RateSearch(start_rate, factor=args.stream_step_factor, min_rate=args.stream_min_rate,
                        max_rate=args.stream_max_rate, refine=args.stream_refine, rates=fixed)
    step_cost = args.stream_warmup_seconds + args.stream_seconds + 5
    run_seconds = int(max(deadline - time.time(), 0) + args.stream_startup_timeout + args.stream_tail_seconds + 60)
    result: dict[str, Any] = {"steps": [], "startups_seconds": [], "stopped": "done"}
    session: Session | None = None
    index = 0
    try:
        while (rate := search.next_rate()) is not None:
            if session is None:
                if time.time() + 20 + step_cost > deadline:
                    result["stopped"] = "budget"
                    break
                index += 1
                session = Session(which, index, project=project, host=host, work_dir=work_dir, args=args,
                                  sample=sample, streams_config=config, receiver_url=receiver.url,
                                  run_seconds=run_seconds).start()
                try:
                    result["startups_seconds"].append(round(prime(session, publisher, receiver, args), 1))
                except StartupError as err:
                    result["stopped"] = f"error: {err}"
                    break
            if time.time() + step_cost > deadline:
                result["stopped"] = "budget"
                break
            step, drained = measure_step(rate, session, publisher, receiver, args)
            step["session"] = index
            result["steps"].append(step)
            search.record(rate, step["sustained"], step["overloaded_after_seconds"] is not None, step["kept_up"])
            _progress(f"  {which:<7} {_step_line(step)}")
            if not drained:
                session.stop()
                session = None
    finally:
        if session is not None:
            session.stop()
    result["sustainable_rate"] = search.sustainable
    kept = [step for step in result["steps"] if step["kept_up"]]
    result["kept_up_rate"] = max((step["rate"] for step in kept), default=None)
    # What the latency is when load is not the problem: the best step it kept up with.
    best = min(kept, key=lambda step: step["p99"], default=None)
    result["latency_floor"] = {key: best[key] for key in ("rate", "p50", "p95", "p99")} if best else None
    return result


# --- The trivial pipeline (run in its own process) --------------------------------------------


def trivial_main(argv: Sequence[str]) -> int:
    """``ReadFromPubSub`` (both subscriptions) -> orjson parse -> one POST per
    bundle to ``--url``, on the BundleBasedDirectRunner with the job's fixes, for
    ``--run_seconds``: the runner's own ceiling."""
    import apache_beam as beam
    import requests
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.runner import PipelineState

    from tools.direct_runner import apply_direct_runner_fixes
    from tools.runners import runner_flag

    parser = argparse.ArgumentParser(prog="trivial pipeline")
    parser.add_argument("--events_subscription", required=True)
    parser.add_argument("--usage_subscription", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--run_seconds", type=int, required=True)
    known = parser.parse_args(argv)

    class PostBundle(beam.DoFn):
        def __init__(self, url: str) -> None:
            self._url = url

        def setup(self) -> None:
            self._session = requests.Session()

        def start_bundle(self) -> None:
            self._documents: list[Any] = []

        def process(self, document: Any) -> None:
            self._documents.append(document)

        def finish_bundle(self) -> None:
            if self._documents:
                self._session.post(self._url, data=orjson.dumps(self._documents),
                                   headers={"Content-Type": "application/json"}, timeout=30).raise_for_status()
                self._documents = []

        def teardown(self) -> None:
            self._session.close()

    apply_direct_runner_fixes()
    pipeline = beam.Pipeline(options=PipelineOptions(["--streaming", runner_flag(streaming=True)]))
    raw = [pipeline | f"Read[{name}]" >> beam.io.ReadFromPubSub(subscription=subscription)
           for name, subscription in (("events", known.events_subscription), ("usage", known.usage_subscription))]
    _ = (tuple(raw) | "Merge" >> beam.Flatten() | "Parse" >> beam.Map(orjson.loads)
         | "Post" >> beam.ParDo(PostBundle(known.url)))
    result = pipeline.run()
    deadline = time.monotonic() + known.run_seconds
    while time.monotonic() < deadline and not PipelineState.is_terminal(result.state):
        time.sleep(0.5)
    if not PipelineState.is_terminal(result.state):
        result.cancel()
    return 0


# --- run / render -----------------------------------------------------------------------------


def _progress(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _create_topics(project: str, host: str, topics: Sequence[str]) -> None:
    """The bench topics; pipelines subscribe afresh (:class:`Session`). Messages
    published while no subscription exists are dropped, as Pub/Sub does."""
    from google.api_core.exceptions import AlreadyExists

    from tools.pubsub_emulator import publisher_client

    client = publisher_client(host)
    try:
        for topic in topics:
            with contextlib.suppress(AlreadyExists):
                client.create_topic(name=client.topic_path(project, topic))
    finally:
        client.transport.close()


def run(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """Run the streaming benchmark; return a JSON-serialisable result (``inf``
    latencies of lost records as ``null``)."""
    from tools.pubsub_emulator import PubSubEmulator, check_tools

    began = time.time()
    work_dir = Path(work_dir) / "streaming"
    work_dir.mkdir(parents=True, exist_ok=True)
    which = [name.strip() for name in args.stream_pipelines.split(",") if name.strip()]
    if not set(which) <= {"job", "trivial"} or not which:
        raise ValueError(f"--stream_pipelines: job, trivial or both, not {args.stream_pipelines!r}")
    check_tools()
    sample = ensure_sample(Path(args.stream_sample_dir), work_dir)
    pool = load_pool(sample)
    deadline = began + args.stream_budget_seconds
    result: dict[str, Any] = {
        "settings": {key: value for key, value in vars(args).items() if key.startswith("stream_")},
        "p99_limit_seconds": args.stream_p99_limit,
        "pool_records": len(pool),
    }
    with PubSubEmulator(work_dir=work_dir / "emulator") as emulator, LatencyReceiver() as receiver:
        _create_topics(emulator.project, emulator.host, ("bench-events", "bench-usage", "bench-refresh"))
        config = work_dir / "streams.json"
        config.write_text(json.dumps({"streams": bench_streams(organisations(sample), receiver.url)}, indent=2))
        publisher = RatePublisher(emulator.project, emulator.host, pool)
        common = {"project": emulator.project, "host": emulator.host, "work_dir": work_dir, "args": args,
                  "sample": sample, "config": config, "publisher": publisher, "receiver": receiver}
        try:
            if "job" in which:
                share = _JOB_SHARE if "trivial" in which else 1.0
                result["job"] = sweep("job", args.stream_rate, began + share * args.stream_budget_seconds, **common)
            if "trivial" in which:
                job_rate = result.get("job", {}).get("sustainable_rate")
                start = max(args.stream_rate, job_rate or 0, args.stream_trivial_start_rate)
                result["trivial"] = sweep("trivial", start, deadline, **common)
        finally:
            publisher.close()
        result["publish_errors"] = publisher.errors
        result["receiver"] = {"requests": receiver.requests, "duplicates": receiver.duplicates,
                              "bad_requests": receiver.bad}
    # The headline: the job's step at --stream_rate (else its first step).
    steps = result.get("job", result.get("trivial", {})).get("steps", [])
    headline = next((step for step in steps if step["rate"] == args.stream_rate), steps[0] if steps else None)
    result["rate"] = headline["rate"] if headline else args.stream_rate
    for key in ("p50", "p95", "p99", "max"):
        result[f"{key}_seconds"] = headline[key] if headline else None
    for key in ("published", "delivered", "lost"):
        result[key] = headline[key] if headline else None
    job_rate = result.get("job", {}).get("sustainable_rate")
    trivial_rate = result.get("trivial", {}).get("sustainable_rate")
    result["job_sustainable_rate"], result["trivial_sustainable_rate"] = job_rate, trivial_rate
    result["ratio"] = round(job_rate / trivial_rate, 3) if job_rate and trivial_rate else None
    job_kept, trivial_kept = (result.get(which, {}).get("kept_up_rate") for which in ("job", "trivial"))
    result["kept_up_ratio"] = round(job_kept / trivial_kept, 3) if job_kept and trivial_kept else None
    # False only when a pipeline could not be run (its sweep ended in an error),
    # not for slow figures: those are the measurement.
    result["ok"] = not any(result[which]["stopped"].startswith("error") for which in ("job", "trivial")
                           if which in result)
    result["runtime_seconds"] = round(time.time() - began, 1)
    return _json_safe(result)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def _seconds(value: float | None) -> str:
    return "lost" if value is None else f"{value:.2f}"


def _step_line(step: dict[str, Any]) -> str:
    cpu = step.get("cpu_share")
    text = (f"{step['rate']:>7.0f}/s  sent {step['published']:>6} got {step['delivered']:>6} "
            f"missing {step['lost']:>6}  thru {step['throughput']:>6.0f}/s  "
            f"p50 {_seconds(step['p50']):>6} p95 {_seconds(step['p95']):>6} p99 {_seconds(step['p99']):>6}  "
            f"drift {_seconds(step['drift']):>6}  cpu {'-' if cpu is None else f'{cpu:.0%}':>4}  "
            f"{'ok' if step['sustained'] else 'FAIL: ' + step['verdict']}")
    return text


def render(result: dict[str, Any]) -> str:
    """The result as readable lines."""
    lines = ["Streaming latency (Pub/Sub emulator -> BundleBasedDirectRunner -> loopback REST bulk receiver)"]
    if result.get("p99_seconds") is not None or result.get("published") is not None:
        lines.append(f"  at {result['rate']:.0f} records/s: p50 {_seconds(result['p50_seconds'])} s, "
                     f"p95 {_seconds(result['p95_seconds'])} s, p99 {_seconds(result['p99_seconds'])} s "
                     f"({result['delivered']} of {result['published']} delivered; {result['lost']} missing, "
                     "counted as infinitely late)")
    lines.append("  per step: records sent in the measured window, received by the end of the step, missing (lost "
                 "or still queued when an overloaded step was stopped), records/s the pipeline delivered while "
                 "measuring, latency percentiles (s), drift, the pipeline's CPU (1 core = 100%)")
    limit = result["p99_limit_seconds"]
    for which, title in (("job", "the job"), ("trivial", "trivial pipeline (read, parse, POST)")):
        part = result.get(which)
        if not part:
            continue
        rate = part["sustainable_rate"]
        lines.append(f"  {title}: sustainable rate (p99 <= {limit:g} s) "
                     f"{'none' if rate is None else f'{rate:.0f}/s'}"
                     f"; start-up {', '.join(f'{s:.0f} s' for s in part['startups_seconds']) or '-'}"
                     f"{'; sweep cut short by the budget' if part['stopped'] == 'budget' else ''}")
        floor = part.get("latency_floor")
        if rate is None and floor is not None:
            lines.append(f"    (kept up with {part['kept_up_rate']:.0f}/s, but even at {floor['rate']:.0f}/s p99 is "
                         f"{floor['p99']:.2f} s: a latency floor, not a throughput limit)")
        if part["stopped"].startswith("error"):
            lines.append(f"    stopped by an {part['stopped']}")
        for step in part["steps"]:
            lines.append(f"    {_step_line(step)}")
    if "job" in result and "trivial" in result:
        ratio, kept = result.get("ratio"), result.get("kept_up_ratio")
        lines.append(f"  job / runner ceiling (sustainable rates): {'-' if ratio is None else f'{ratio:.0%}'}; "
                     f"highest rates kept up with: {'-' if kept is None else f'{kept:.0%}'}")
    lines.append(f"  took {result['runtime_seconds']:.0f} s")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_trivial_pipeline"]:
        return trivial_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m tools.bench.streaming", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--work_dir", default="out/bench", help="Where logs and job outputs go. Default: out/bench.")
    args = parser.parse_args(argv)
    from tools.pubsub_emulator import EmulatorStartError, EmulatorToolsError

    try:
        result = run(args, Path(args.work_dir))
    except (EmulatorToolsError, EmulatorStartError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    sys.stdout.write(render(result))
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    # Import by its importable name, so what Beam pickles refers to this module.
    from tools.bench import streaming as _importable

    sys.exit(_importable.main())
