"""Streaming latency benchmark (part of ``make bench``): publish-to-receipt latency
of the streaming job, and the highest rate it sustains, on each runner of
``--runners`` that runs the streaming job (``tools/bench/runners.py``): the
BundleBasedDirectRunner (``local``) and Flink ``[local]`` (``flink``).

    python -m tools.bench.streaming [--runners local,flink] [--stream_rate 1000] [--stream_seconds 30] ...

What it does, in one process plus a child process tree per pipeline under test:

- starts the Pub/Sub emulator and a loopback REST bulk receiver (:class:`LatencyReceiver`)
  that notes when each document id arrived;
- starts the real job, ``pipelines.data_streamer --streaming`` reading
  ``--events_subscription``/``--usage_subscription``, one ``rest_api_bulk``
  stream (both kinds) per organisation of the fleet pointing at the receiver,
  ``--max_buffering_seconds 1``, with the runner's command
  (:meth:`BenchRunner.command`): on the local runner ``python -m tools.local_job``,
  refresh ticks from ``--refresh_subscription`` ticked by :class:`AlignedTicker`
  (the DirectRunner cannot run ``PeriodicImpulse`` beside ``ReadFromPubSub``);
  on Flink ``python -m tools.bench.runners flink``, which starts the worker pool,
  the Java expansion service of the cross-language Pub/Sub read and the job
  server's mini-cluster as ``make run-flink-streaming`` does, refresh ticks from
  ``PeriodicImpulse``. The pipeline runs in a **subprocess tree**: it can be
  stopped cleanly whatever state the runner is in (:func:`stop_tree`), its
  CPU-bound threads do not compete for this process's GIL with the publisher and
  the receiver (on 2 cores that would slow both sides and blur what is
  measured), and the CPU of every process of it is the pipeline's;
- publishes valid records of the sample fleet (each with a fresh id, its times
  moved to the moment of publishing, so nothing is late or a duplicate) at a
  steady rate from this process (:class:`RatePublisher`), noting each id's
  publish time; latency = receipt time - publish time, same clock. On Flink,
  publishing starts once Flink's REST API reports the job running;
- per **step** (one rate): ``--stream_warmup_seconds`` published and discarded,
  then ``--stream_seconds`` measured; publishing drops to a trickle of 20 a
  second (not measured: no stream of the field ever falls silent, and on Flink
  the last records before a silence waited for traffic to resume) and the step
  waits up to ``--stream_tail_seconds`` for its records. A record that never arrives counts
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
  start costs 5-20 s locally and a minute or more on Flink, and a job that has
  been running for minutes is the honest subject; each step starts from an
  empty pipeline because the previous step's records are all received first.
  When they are not (an overloaded step left a backlog) the job is replaced by
  a fresh one;
- the **runner's ceiling**: the same sweep with a trivial pipeline on the same
  runner, reading the same two kinds of message from the same emulator with the
  same source as the job there (locally Beam's ``ReadFromPubSub`` with the
  job's DirectRunner fixes, :func:`tools.direct_runner.apply_direct_runner_fixes`;
  on Flink the cross-language read through the same expansion service,
  ``pipelines.data_streamer.read_pubsub``), parsing them with orjson and POSTing
  each bundle's records as a JSON array to the same receiver
  (``tools/bench/trivial.py``), from ``--stream_trivial_start_rate``. On a small
  machine its ceiling is also the machine's: the emulator, the publisher and the
  pipeline share the cores.

``--stream_budget_seconds`` is per runner and counts measuring only: the
pipelines' start-ups (a Flink one takes a minute or more here) extend it.

Per step the result also has ``throughput`` (records per second the pipeline
delivered, first to last receipt: the rate when it kept up, its capacity when it
did not), and the CPU of the measured window of **every process of the
pipeline** (``tools/bench/proctree.py``: on Flink the submitter, the job server
JVM, the worker pool, the SDK workers and the expansion service; locally the one
job process; the emulator, publisher and receiver are this process's and not
counted): ``cpu_share`` (CPU seconds per wall second; the DirectRunner's
executor polls without sleeping while timers are pending, so near 100 % does
not by itself mean saturated), ``cpu_seconds_per_million_records`` (that CPU
over the records delivered in the window), and where it went
(``cpu_seconds_by_role``, the JVMs' busiest ``jvm_thread_cpu_seconds``): the
bench's own profile of a step.

The targets (``make bench``'s issue): the job's sustainable rate at least
:data:`TARGET_RATIO` of the trivial pipeline's on the same runner, and p99 at
most :data:`TARGET_P99_SECONDS` at the headline rate ``--stream_rate`` (1,000
records/s). A runner that cannot sustain the headline rate on the machine says
so (its headline step failed) beside the p99 at the highest rate it sustained.

Results (:func:`run`): ``runners.<runner>`` for each runner (``job`` and
``trivial`` sweeps, sustainable rates and their ratio, the headline step's
latency, CPU seconds per million records, the targets), or ``skipped`` with the
reason (no Java); the top-level ``job``, ``trivial``, ``rate``, ``p99_seconds``
... keys, the shape of ``make bench``'s results format 2, are the local
runner's (else the first runner's).

Latency floor: a record is enriched once the reference snapshot of its refresh
interval is loaded, and that snapshot is the one of the tick at the interval's
start (``transforms/refresh.py``), so a record in real time waits for no
window to close; what remains is the runner's scheduling, batching
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
import signal
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

from tools.bench.proctree import CpuReading, cpu_between, descendants, read_stat, read_tree_cpu
from tools.bench.runners import FLINK, LOCAL, REST_URL_FILE, BenchRunner, selected

ROOT = Path(__file__).resolve().parents[2]
#: The headline rate: the latency target is p99 at most TARGET_P99_SECONDS at 1,000 records/s.
DEFAULT_RATE = 1000.0
DEFAULT_P99_LIMIT = 5.0
#: The targets: the job's sustainable rate over the trivial pipeline's on the same
#: runner, and p99 at the headline rate.
TARGET_RATIO = 0.8
TARGET_P99_SECONDS = 2.0
#: Longest wait for Flink to report a fresh pipeline's job running: the job
#: server, the mini-cluster and the SDK workers start in about a minute here,
#: more under load (tests/e2e/test_flink_streaming.py waits as long).
FLINK_START_SECONDS = 300.0
#: How long a stopped pipeline may take to end by itself (SIGTERM: on Flink it
#: cancels its job and stops its worker pool and expansion service) before what
#: is left of its process tree is killed.
STOP_GRACE_SECONDS = {LOCAL.name: 10.0, FLINK.name: 30.0}
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
#: Rate of the unmeasured records published while a step's last records are waited for.
_TRICKLE_RATE = 20.0
_QUARTER = 4


# --- Options ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The streaming benchmark's options (all ``--stream_...``)."""
    group = parser.add_argument_group("streaming latency benchmark")
    group.add_argument("--stream_rate", type=float, default=DEFAULT_RATE,
                       help="Records published per second (events and usage mixed as in the fleet) at the "
                       "headline step, the rate of the latency target (p99 at most "
                       f"{TARGET_P99_SECONDS:g} s), and the first step of the sweep. Default: {DEFAULT_RATE:.0f}.")
    group.add_argument("--stream_seconds", type=float, default=30.0,
                       help="Measured seconds per step. Default: 30.")
    group.add_argument("--stream_warmup_seconds", type=float, default=10.0,
                       help="Seconds published at a step's rate before measuring starts (discarded); should exceed "
                       "the latency, so the pipeline carries the step's load when measuring starts. Default: 10.")
    group.add_argument("--stream_tail_seconds", type=float, default=20.0,
                       help="After a step's measured window, longest wait for its records (publishing a trickle "
                       f"of {_TRICKLE_RATE:.0f} a second meanwhile); those still missing are lost (infinite "
                       "latency). Default: 20.")
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
                       help="Wall-clock budget of the streaming benchmark per runner, the pipelines' start-ups "
                       "not counted; a step that would not fit is not started (the job's sweep gets "
                       f"{round(_JOB_SHARE * 100)}%% of it first). Default: 450.")
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
                       help="Longest wait for a fresh pipeline's first delivery (on Flink: once the job runs, "
                       f"which may take up to {FLINK_START_SECONDS:.0f} s). Default: 120.")


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


def publisher_kept_rate(step: dict[str, Any]) -> bool:
    """Whether the publisher reached a step's rate: a step it fell short of
    (a loaded machine) measured the pipeline at a rate of the publisher's own."""
    return step["achieved_rate"] >= _PUBLISHER_SHORTFALL * step["rate"]


def judge(step: dict[str, Any], p99_limit: float, max_drift: float) -> tuple[bool, str]:
    """Whether a step's rate was sustained, and if not why."""
    if step.get("overloaded_after_seconds") is not None:
        return False, "overloaded: a record waited past --stream_abort_seconds, step stopped early"
    if not publisher_kept_rate(step):
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


def _running(pid: int, start_ticks: int) -> bool:
    """Whether the process ``pid`` that started at ``start_ticks`` still runs (a
    zombie does not: it holds nothing but its exit status)."""
    stat = read_stat(Path(f"/proc/{pid}/stat"))
    if stat is None or stat.start_ticks != start_ticks:
        return False
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2:].split()[0] != "Z"


def _kill_all(processes: Sequence[tuple[int, int]], signum: int) -> None:
    for pid, start in processes:
        if _running(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def stop_tree(process: subprocess.Popen[bytes], grace_seconds: float) -> None:
    """Stop a pipeline and every process it started. SIGTERM to the pipeline's
    own process, which then stops its job (on Flink: cancels it, then stops the
    worker pool and the expansion service it started); after ``grace_seconds``
    SIGKILL to it and to whatever of its tree is left. Its tree is read before:
    on Flink the worker pool and the expansion service run in process groups of
    their own, so a submitter that died before stopping them would leave them
    running, re-parented out of reach of a process group's signal."""
    tree = [(stat.pid, stat.start_ticks) for stat in descendants(process.pid)]
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        tree += [(stat.pid, stat.start_ticks) for stat in descendants(process.pid)]
        process.kill()
        process.wait()
    deadline = time.monotonic() + grace_seconds / 3
    while any(_running(pid, start) for pid, start in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    _kill_all(tree, signal.SIGKILL)


class Session:
    """One running pipeline (the job or the trivial one) on ``runner``, a process
    tree of its own, with fresh subscriptions to the bench topics (deleted when
    it stops)."""

    def __init__(self, which: str, index: int, *, runner: BenchRunner, project: str, host: str, work_dir: Path,
                 args: argparse.Namespace, sample: Path, streams_config: Path, receiver_url: str,
                 run_seconds: int) -> None:
        self.which, self.index, self.runner, self.project, self.host = which, index, runner, project, host
        self.dir = work_dir / runner.name / f"{which}-{index}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._args, self._sample, self._config = args, sample, streams_config
        self._url, self._run_seconds = receiver_url, run_seconds
        self._subscriptions: list[str] = []
        self._ticker: AlignedTicker | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def on_flink(self) -> bool:
        return self.runner.name == FLINK.name

    @property
    def flink_dir(self) -> Path:
        return self.dir / "flink"

    def _subscribe(self, topic: str) -> str:
        from tools.pubsub_emulator import create_topic_and_subscription

        path = create_topic_and_subscription(self.project, topic, f"{topic}-{self.runner.name}-{self.which}-"
                                             f"{self.index}", host=self.host)
        self._subscriptions.append(path)
        return path

    def command(self) -> list[str]:
        reads = [f"--events_subscription={self._subscribe('bench-events')}",
                 f"--usage_subscription={self._subscribe('bench-usage')}"]
        flink = [f"--flink_dir={self.flink_dir}"] if self.on_flink else []
        if self.which == "trivial":
            trivial = ["--streaming", *reads, f"--url={self._url}/trivial", f"--run_seconds={self._run_seconds}"]
            if self.on_flink:
                return self.runner.command([*flink, "--program=trivial", *trivial])
            return [sys.executable, "-m", "tools.bench.trivial", *trivial]
        out = self.dir / "out"
        job = ["--streaming", *reads,
               f"--refresh_interval_seconds={self._args.stream_refresh_seconds}",
               f"--max_buffering_seconds={self._args.stream_max_buffering_seconds}",
               f"--run_seconds={self._run_seconds}",
               f"--reference_dir={self._sample / 'reference'}", f"--streams_config={self._config}",
               f"--output_dir={out}", f"--archive_location={out / 'archive'}",
               "--allow_insecure_destinations", *shlex.split(self._args.stream_job_args)]
        if not self.on_flink:
            # The DirectRunner cannot run PeriodicImpulse beside ReadFromPubSub: the
            # ticks come from a subscription (AlignedTicker); Flink ticks by itself.
            job.append(f"--refresh_subscription={self._subscribe('bench-refresh')}")
        return self.runner.command([*flink, *job])

    def start(self) -> Session:
        command = self.command()
        if self.which == "job" and not self.on_flink:
            self._ticker = AlignedTicker(self.project, "bench-refresh", self._args.stream_refresh_seconds,
                                         self.host).__enter__()
        env = {**os.environ, **_SECRETS, "PUBSUB_EMULATOR_HOST": self.host, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        (self.dir / "command.txt").write_text(shlex.join(command) + "\n")
        log = (self.dir / "pipeline.log").open("wb")
        self.started_at = time.time()
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rest_url(self) -> str | None:
        """Flink's REST endpoint of the session's mini-cluster, once its process has chosen it."""
        try:
            return (self.flink_dir / REST_URL_FILE).read_text().strip() or None
        except OSError:
            return None

    def cpu(self) -> CpuReading | None:
        """The CPU so far of every process of the pipeline (None once it has gone)."""
        if not self.alive():
            return None
        assert self.process is not None
        return read_tree_cpu(self.process.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join((self.dir / "pipeline.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        from tools.pubsub_emulator import subscriber_client

        if self.process is not None and self.process.poll() is None:
            stop_tree(self.process, STOP_GRACE_SECONDS.get(self.runner.name, 10.0))
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


def _wait_received(receiver: LatencyReceiver, ids: range, deadline: float, session: Session,
                   publisher: RatePublisher | None = None) -> int:
    """Wait until every id arrived or ``deadline``; return how many are missing.
    With ``publisher``, a trickle of :data:`_TRICKLE_RATE` records a second
    (never measured) goes on meanwhile: the records waited for are not followed
    by silence, which no production stream has and which stalls Flink's
    deliveries (docs/flink.md: after a burst, the last records waited for
    traffic to resume)."""
    trickle, stop = None, threading.Event()
    if publisher is not None:
        trickle = threading.Thread(target=publisher.run, args=(_TRICKLE_RATE, max(deadline - time.time(), 0)),
                                   kwargs={"until": stop}, name="tail-trickle", daemon=True)
        trickle.start()
    try:
        while True:
            missing = receiver.missing(ids)
            if missing == 0 or time.time() >= deadline or not session.alive():
                return missing
            time.sleep(0.25)
    finally:
        stop.set()
        if trickle is not None:
            trickle.join()


def wait_until_flink_runs(session: Session, timeout: float = FLINK_START_SECONDS) -> None:
    """Wait until Flink reports the session's job running with every task (it
    reads from then on); :class:`StartupError` when it exits or takes too long."""
    from tools.flink.metrics import job_running

    deadline = time.time() + timeout
    while True:
        url = session.rest_url()
        if url is not None and job_running(url):
            return
        if not session.alive():
            raise StartupError(f"the {session.which} pipeline exited with {session.process.returncode} before "
                               f"its job ran on Flink:\n{session.log_tail()}")
        if time.time() > deadline:
            raise StartupError(f"the {session.which} pipeline's job did not run on Flink within {timeout:.0f} s:"
                               f"\n{session.log_tail()}")
        time.sleep(1.0)


def prime(session: Session, publisher: RatePublisher, receiver: LatencyReceiver, args: argparse.Namespace) -> float:
    """Publish slowly until the fresh pipeline delivers, then let it catch up;
    return the seconds from its start to its first delivery. On Flink,
    publishing starts once the job runs there (a minute's backlog would be a
    burst, not the steady traffic the job is measured with)."""
    if session.on_flink:
        wait_until_flink_runs(session)
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
    missing = _wait_received(receiver, ids, time.time() + args.stream_startup_timeout, session, publisher)
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
        cpu_before, wall_before = session.cpu(), time.time()
        ids, achieved = publisher.run(rate, args.stream_seconds, until=watch.overloaded)
        cpu_after, wall_after = session.cpu(), time.time()
    overloaded = watch.overloaded.is_set()
    if overloaded and not ids:  # already in the warm-up: judge on what was published
        ids = warmup
    everything = range(warmup.start, ids.stop)
    if not overloaded:
        _wait_received(receiver, everything, time.time() + args.stream_tail_seconds, session, publisher)
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
        "overloaded_after_seconds": round(wall_after - wall_before, 1) if overloaded else None,
        "throughput": _throughput(receiver.times(everything), time.time()),
        **_window_cpu(cpu_before, cpu_after, wall_after - wall_before,
                      _received_between(receiver, range(everything.start, publisher.next_id),
                                        wall_before, wall_after)),
    }
    step["sustained"], step["verdict"] = judge(step, args.stream_p99_limit, args.stream_max_drift)
    step["kept_up"] = (not overloaded and lost == 0 and step["throughput"] >= _KEPT_UP * achieved
                       and not (args.stream_max_drift > 0 and step["drift"] > args.stream_max_drift))
    drained = not overloaded and receiver.missing(everything) == 0 and session.alive()
    return step, drained


def _received_between(receiver: LatencyReceiver, ids: range, since: float, until: float) -> int:
    """How many of ``ids`` arrived from ``since`` to ``until``: the records the
    pipeline got through in a measured window (its rate when it kept up, its
    capacity when it did not)."""
    return sum(1 for moment in receiver.times(ids) if moment is not None and since <= moment <= until)


def _window_cpu(before: CpuReading | None, after: CpuReading | None, wall: float, records: int) -> dict[str, Any]:
    """The CPU of every process of the pipeline in a measured window: per wall
    second, per million records delivered in it, and where it went."""
    if before is None or after is None or wall <= 0:
        return {"cpu_seconds": None, "cpu_share": None, "records_in_window": records,
                "cpu_seconds_per_million_records": None}
    used = cpu_between(before, after)
    # The window's own wall time, kept: on a loaded machine it outlasts the
    # publishing it measures (reading every process's CPU takes a while).
    return {"cpu_seconds": used["cpu_seconds"], "cpu_share": round(used["cpu_seconds"] / wall, 2),
            "window_seconds": round(wall, 2), "records_in_window": records,
            "cpu_seconds_per_million_records": round(used["cpu_seconds"] / records * 1e6, 1) if records else None,
            "cpu_seconds_by_role": used["cpu_seconds_by_role"],
            "jvm_thread_cpu_seconds": used["jvm_thread_cpu_seconds"]}


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


class Budget:
    """A runner's wall-clock budget for measuring (``--stream_budget_seconds``):
    pipeline start-ups extend it, so a runner that starts slowly (Flink) gets as
    many steps as one that starts fast."""

    def __init__(self, seconds: float) -> None:
        self.began = time.time()
        self.seconds = seconds
        self.startups = 0.0

    def until(self, share: float = 1.0) -> float:
        """When the first ``share`` of the budget ends."""
        return self.began + share * self.seconds + self.startups


def sweep(which: str, start_rate: float, budget: Budget, share: float, *, runner: BenchRunner, project: str,
          host: str, work_dir: Path, args: argparse.Namespace, sample: Path, config: Path,
          publisher: RatePublisher, receiver: LatencyReceiver) -> dict[str, Any]:
    """Run the rate search for one pipeline on ``runner`` within ``share`` of ``budget``."""
    fixed = [float(r) for r in args.stream_rates.split(",")] if args.stream_rates else None
    search = RateSearch(start_rate, factor=args.stream_step_factor, min_rate=args.stream_min_rate,
                        max_rate=args.stream_max_rate, refine=args.stream_refine, rates=fixed)
    step_cost = args.stream_warmup_seconds + args.stream_seconds + 5
    result: dict[str, Any] = {"steps": [], "startups_seconds": [], "stopped": "done"}
    session: Session | None = None
    index = 0
    try:
        while (rate := search.next_rate()) is not None:
            if session is None:
                if time.time() + step_cost > budget.until(share):
                    result["stopped"] = "budget"
                    break
                index += 1
                # A safety net: the bench stops its sessions itself.
                run_seconds = int(max(budget.until(share) - time.time(), 0) + FLINK_START_SECONDS + 600)
                session = Session(which, index, runner=runner, project=project, host=host, work_dir=work_dir,
                                  args=args, sample=sample, streams_config=config, receiver_url=receiver.url,
                                  run_seconds=run_seconds).start()
                try:
                    result["startups_seconds"].append(round(prime(session, publisher, receiver, args), 1))
                except StartupError as err:
                    result["stopped"] = f"error: {err}"
                    break
                finally:
                    budget.startups += time.time() - session.started_at
            if time.time() + step_cost > budget.until(share):
                result["stopped"] = "budget"
                break
            step, drained = measure_step(rate, session, publisher, receiver, args)
            step["session"] = index
            result["steps"].append(step)
            search.record(rate, step["sustained"], step["overloaded_after_seconds"] is not None, step["kept_up"])
            _progress(f"  {runner.name:<5} {which:<7} {_step_line(step)}")
            if not drained:
                session.stop()
                session = None
    finally:
        if session is not None:
            session.stop()
    result["sustainable_rate"] = search.sustainable
    result.update(summarize_steps(result["steps"]))
    return result


def summarize_steps(steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A sweep's figures from its measured steps: the fastest rate it kept up
    with, its latency when load was not the problem, and what a record costs."""
    kept = [step for step in steps if step["kept_up"]]
    # What the latency is when load is not the problem: the best step it kept up with.
    best = min(kept, key=lambda step: step["p99"], default=None)
    # What a record costs when the pipeline is not overloaded: the fastest step it
    # kept up with at the rate asked (a step the publisher fell short of ran at a
    # rate of its own).
    fastest = max((step for step in kept if step.get("cpu_seconds_per_million_records")
                   and publisher_kept_rate(step)),
                  key=lambda step: step["rate"], default=None)
    return {
        "kept_up_rate": max((step["rate"] for step in kept), default=None),
        "latency_floor": {key: best[key] for key in ("rate", "p50", "p95", "p99")} if best else None,
        "cpu_seconds_per_million_records": fastest["cpu_seconds_per_million_records"] if fastest else None,
        "cpu_at_rate": fastest["rate"] if fastest else None,
    }


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


#: The keys of a runner's figures that make bench's results format 2 had at the
#: top level of ``streaming`` (the local runner's then); they still are, for the
#: local runner (else the first one measured).
_FORMAT_2_KEYS = ("job", "trivial", "rate", "p50_seconds", "p95_seconds", "p99_seconds", "max_seconds",
                  "published", "delivered", "lost", "job_sustainable_rate", "trivial_sustainable_rate", "ratio",
                  "kept_up_ratio")


def run_runner(runner: BenchRunner, which: Sequence[str], **common: Any) -> dict[str, Any]:
    """The job's and the trivial pipeline's sweeps on ``runner`` (``common``: :func:`sweep`'s
    keyword arguments but the runner), and what they add up to."""
    args: argparse.Namespace = common["args"]
    budget = Budget(args.stream_budget_seconds)
    part: dict[str, Any] = {"runner": runner.streaming_label or runner.label}
    if "job" in which:
        share = _JOB_SHARE if "trivial" in which else 1.0
        part["job"] = sweep("job", args.stream_rate, budget, share, runner=runner, **common)
    if "trivial" in which:
        job_rate = part.get("job", {}).get("sustainable_rate")
        start = max(args.stream_rate, job_rate or 0, args.stream_trivial_start_rate)
        part["trivial"] = sweep("trivial", start, budget, 1.0, runner=runner, **common)
    part.update(summarise(part, args.stream_rate))
    part["startups_seconds"] = round(budget.startups, 1)
    part["runtime_seconds"] = round(time.time() - budget.began, 1)
    return part


def summarise(part: dict[str, Any], headline_rate: float) -> dict[str, Any]:
    """A runner's figures from its sweeps: the headline step (the job's at
    ``headline_rate``, else its first), the sustainable rates and their ratio,
    CPU per million records, and whether the targets are met."""
    steps = part.get("job", part.get("trivial", {})).get("steps", [])
    headline = next((step for step in steps if step["rate"] == headline_rate), steps[0] if steps else None)
    out: dict[str, Any] = {"rate": headline["rate"] if headline else headline_rate}
    for key in ("p50", "p95", "p99", "max"):
        out[f"{key}_seconds"] = headline[key] if headline else None
    for key in ("published", "delivered", "lost"):
        out[key] = headline[key] if headline else None
    out["headline_sustained"] = headline["sustained"] if headline else None
    out["headline_verdict"] = headline["verdict"] if headline else "not measured"
    job_rate = part.get("job", {}).get("sustainable_rate")
    trivial_rate = part.get("trivial", {}).get("sustainable_rate")
    out["job_sustainable_rate"], out["trivial_sustainable_rate"] = job_rate, trivial_rate
    out["ratio"] = round(job_rate / trivial_rate, 3) if job_rate and trivial_rate else None
    job_kept, trivial_kept = (part.get(which, {}).get("kept_up_rate") for which in ("job", "trivial"))
    out["kept_up_ratio"] = round(job_kept / trivial_kept, 3) if job_kept and trivial_kept else None
    # The latency at the highest rate sustained, for a runner that did not sustain the headline rate.
    best = next((step for step in steps if job_rate is not None and step["rate"] == job_rate and step["sustained"]),
                None)
    out["at_sustainable_rate"] = {key: best[key] for key in ("rate", "p50", "p95", "p99")} if best else None
    out["cpu_seconds_per_million_records"] = {
        which: {"value": part[which]["cpu_seconds_per_million_records"], "at_rate": part[which]["cpu_at_rate"]}
        for which in ("job", "trivial") if which in part}
    out["targets"] = {
        "ratio": {"target": TARGET_RATIO, "measured": out["ratio"],
                  "met": out["ratio"] is not None and out["ratio"] >= TARGET_RATIO},
        "p99_at_headline_rate": {"target_seconds": TARGET_P99_SECONDS, "rate": out["rate"],
                                 "measured": out["p99_seconds"],
                                 "met": out["p99_seconds"] is not None and out["p99_seconds"] <= TARGET_P99_SECONDS
                                 and out["lost"] == 0},
    }
    # False only when a pipeline could not be run (its sweep ended in an error),
    # not for slow figures: those are the measurement.
    out["ok"] = not any(part[which]["stopped"].startswith("error") for which in ("job", "trivial") if which in part)
    return out


def run(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """Run the streaming benchmark on each runner of ``args.runners`` that runs
    the streaming job (the local runner when ``args`` has none); return a
    JSON-serialisable result (``inf`` latencies of lost records as ``null``)."""
    from tools.pubsub_emulator import PubSubEmulator, check_tools

    began = time.time()
    work_dir = Path(work_dir) / "streaming"
    work_dir.mkdir(parents=True, exist_ok=True)
    which = [name.strip() for name in args.stream_pipelines.split(",") if name.strip()]
    if not set(which) <= {"job", "trivial"} or not which:
        raise ValueError(f"--stream_pipelines: job, trivial or both, not {args.stream_pipelines!r}")
    runners = selected(getattr(args, "runners", LOCAL.name), streaming=True)
    if not runners:
        raise ValueError(f"--runners: none of {args.runners!r} runs the streaming job")
    check_tools()
    sample = ensure_sample(Path(args.stream_sample_dir), work_dir)
    pool = load_pool(sample)
    result: dict[str, Any] = {
        "settings": {key: value for key, value in vars(args).items() if key.startswith("stream_")},
        "p99_limit_seconds": args.stream_p99_limit,
        "targets": {"ratio_at_least": TARGET_RATIO, "p99_seconds_at_most": TARGET_P99_SECONDS,
                    "at_rate": args.stream_rate},
        "pool_records": len(pool),
        "runners": {},
    }
    with PubSubEmulator(work_dir=work_dir / "emulator") as emulator, LatencyReceiver() as receiver:
        _create_topics(emulator.project, emulator.host, ("bench-events", "bench-usage", "bench-refresh"))
        config = work_dir / "streams.json"
        config.write_text(json.dumps({"streams": bench_streams(organisations(sample), receiver.url)}, indent=2))
        publisher = RatePublisher(emulator.project, emulator.host, pool)
        common = {"project": emulator.project, "host": emulator.host, "work_dir": work_dir, "args": args,
                  "sample": sample, "config": config, "publisher": publisher, "receiver": receiver}
        try:
            for runner in runners:
                unavailable = runner.unavailable()
                if unavailable:
                    result["runners"][runner.name] = {"runner": runner.streaming_label or runner.label,
                                                      "skipped": unavailable}
                    _progress(f"  {runner.name}: skipped, {unavailable}")
                    continue
                result["runners"][runner.name] = run_runner(runner, which, **common)
        finally:
            publisher.close()
        result["publish_errors"] = publisher.errors
        result["receiver"] = {"requests": receiver.requests, "duplicates": receiver.duplicates,
                              "bad_requests": receiver.bad}
    measured = {name: part for name, part in result["runners"].items() if "skipped" not in part}
    first = measured.get(LOCAL.name) or next(iter(measured.values()), {})
    result.update({key: first.get(key) for key in _FORMAT_2_KEYS if key in first})
    result["ok"] = all(part["ok"] for part in measured.values())
    result["load_average"] = [round(value, 2) for value in os.getloadavg()]
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


def _latency(value: float | None) -> str:
    return "lost" if value is None else f"{value:.2f} s"


def _step_line(step: dict[str, Any]) -> str:
    cpu, per_million = step.get("cpu_share"), step.get("cpu_seconds_per_million_records")
    text = (f"{step['rate']:>7.0f}/s  sent {step['published']:>6} got {step['delivered']:>6} "
            f"missing {step['lost']:>6}  thru {step['throughput']:>6.0f}/s  "
            f"p50 {_seconds(step['p50']):>6} p95 {_seconds(step['p95']):>6} p99 {_seconds(step['p99']):>6}  "
            f"drift {_seconds(step['drift']):>6}  cpu {'-' if cpu is None else f'{cpu:.0%}':>5} "
            f"{'-' if per_million is None else f'{per_million:,.0f}':>7} s/M  "
            f"{'ok' if step['sustained'] else 'FAIL: ' + step['verdict']}")
    return text


def _split(step: dict[str, Any]) -> str:
    """Where a step's CPU went: by process role, and the JVMs' busiest threads."""
    by_role = step.get("cpu_seconds_by_role") or {}
    total = sum(by_role.values())
    if not total:
        return ""
    text = ", ".join(f"{role} {seconds:.0f} s ({seconds / total:.0%})"
                     for role, seconds in sorted(by_role.items(), key=lambda item: -item[1]) if seconds >= 0.5)
    threads = step.get("jvm_thread_cpu_seconds") or {}
    if threads:
        text += "; JVM threads: " + ", ".join(f"{name!r} {seconds:.0f} s" for name, seconds in
                                              list(threads.items())[:5] if seconds >= 0.5)
    return text


def _render_runner(part: dict[str, Any], limit: float) -> list[str]:
    lines = [f" {part['runner']}:"]
    if "skipped" in part:
        return [f" {part['runner']}: skipped, {part['skipped']}"]
    if part.get("published") is not None:
        sustained = "" if part["headline_sustained"] else f"  NOT SUSTAINED: {part['headline_verdict']}"
        lines.append(f"  at {part['rate']:.0f} records/s: p50 {_latency(part['p50_seconds'])}, "
                     f"p95 {_latency(part['p95_seconds'])}, p99 {_latency(part['p99_seconds'])} "
                     f"({part['delivered']} of {part['published']} delivered; {part['lost']} missing, "
                     f"counted as infinitely late){sustained}")
    best = part.get("at_sustainable_rate")
    if best and best["rate"] != part["rate"]:
        lines.append(f"  at its sustainable rate, {best['rate']:.0f}/s: p50 {_latency(best['p50'])}, "
                     f"p95 {_latency(best['p95'])}, p99 {_latency(best['p99'])}")
    for which, title in (("job", "the job"), ("trivial", "trivial pipeline (read, parse, POST)")):
        sweep_ = part.get(which)
        if not sweep_:
            continue
        rate = sweep_["sustainable_rate"]
        cpu = sweep_.get("cpu_seconds_per_million_records")
        cpu_text = "-" if cpu is None else f"{cpu:,.0f} s per million records at {sweep_['cpu_at_rate']:.0f}/s"
        lines.append(f"  {title}: sustainable rate (p99 <= {limit:g} s) "
                     f"{'none' if rate is None else f'{rate:.0f}/s'}; CPU {cpu_text}"
                     f"; start-up {', '.join(f'{s:.0f} s' for s in sweep_['startups_seconds']) or '-'}"
                     f"{'; sweep cut short by the budget' if sweep_['stopped'] == 'budget' else ''}")
        floor = sweep_.get("latency_floor")
        if rate is None and floor is not None:
            lines.append(f"    (kept up with {sweep_['kept_up_rate']:.0f}/s, but even at {floor['rate']:.0f}/s p99 "
                         f"is {floor['p99']:.2f} s: a latency floor, not a throughput limit)")
        if sweep_["stopped"].startswith("error"):
            lines.append(f"    stopped by an {sweep_['stopped']}")
        for step in sweep_["steps"]:
            lines.append(f"    {_step_line(step)}")
            split = _split(step)
            if split:
                lines.append(f"      CPU: {split}")
    if "job" in part and "trivial" in part:
        ratio, kept = part.get("ratio"), part.get("kept_up_ratio")
        lines.append(f"  job / runner ceiling (sustainable rates): {'-' if ratio is None else f'{ratio:.0%}'}; "
                     f"highest rates kept up with: {'-' if kept is None else f'{kept:.0%}'}")
    targets = part.get("targets") or {}
    if targets:
        ratio, p99 = targets["ratio"], targets["p99_at_headline_rate"]
        lines.append(f"  targets: job / trivial >= {ratio['target']:.0%}: {'met' if ratio['met'] else 'NOT met'}; "
                     f"p99 <= {p99['target_seconds']:g} s at {p99['rate']:.0f}/s: "
                     f"{'met' if p99['met'] else 'NOT met'}")
    return lines


def render(result: dict[str, Any]) -> str:
    """The result as readable lines."""
    lines = ["Streaming latency (Pub/Sub emulator -> the pipeline on each runner -> loopback REST bulk receiver)",
             "  per step: records sent in the measured window, received by the end of the step, missing (lost "
             "or still queued when an overloaded step was stopped), records/s the pipeline delivered while "
             "measuring, latency percentiles (s), drift, the CPU of all the pipeline's processes (1 core = 100%) "
             "and per million records delivered in the window"]
    for part in result.get("runners", {}).values():
        lines.extend(_render_runner(part, result["p99_limit_seconds"]))
    load = result.get("load_average")
    lines.append(f"  took {result['runtime_seconds']:.0f} s"
                 + (f"; load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
                    f"({os.cpu_count()} CPUs)" if load else ""))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m tools.bench.streaming", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--runners", default=LOCAL.name,
                        help="Runners to measure on, comma-separated: local (the BundleBasedDirectRunner) and "
                        "flink (Flink [local]). Default: %(default)s.")
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
