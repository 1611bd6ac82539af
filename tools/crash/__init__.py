"""Crash without loss, measured: a streaming run killed with ``kill -9`` mid-stream,
and what that cost in records lost and delivered twice.

A crash run (:func:`run_crash`):

1. starts the Pub/Sub emulator (or takes one), topics and subscriptions of its
   own, the refresh ticks, and ``make run-local-streaming``'s local destinations
   (an HTTP receiver on 127.0.0.1 for the REST and DataDog streams, moto for S3
   and Kinesis: :class:`tools.local_streams.LocalDestinations`);
2. has a :class:`Target` start the streaming job on those subscriptions;
3. publishes a known set of valid records (a sample fleet without defects,
   :func:`crash_fleet`: every record is valid, every id unique, each record's
   times moved to the moment it is published) at a steady rate, keeping each
   record's Pub/Sub message id;
4. once records arrive at the receiver, waits ``kill_after_seconds`` and has the
   target ``kill -9`` the process it chose (publishing goes on), then
   ``recover``: restart the job where the runner does not restart itself;
5. waits until the run settled: every record delivered, or nothing new at the
   receiver for a while once Pub/Sub had time to redeliver what the killed
   process held unacknowledged (its ack deadline). A target that must lose
   nothing (Flink) is given no quiet (``quiet_seconds=None``): its run settles
   only when every record arrived, or fails at ``settle_timeout``, so a job
   that waits for a core is not taken for one that lost records;
6. stops the job, takes what is left in the subscriptions, and reports
   (:class:`CrashReport`): **published**, **delivered** (distinct record ids at
   the REST bulk stream, which every record is routed to), **lost** (published,
   never delivered) and **duplicates** (deliveries beyond the first of an id),
   with what explains each lost record where the target can tell.

**What is pluggable**: what runs the job, which process is killed and how the
job comes back are a :class:`Target`. :class:`tools.crash.direct.DirectRunnerTarget`
runs the job as ``make run-local-streaming`` does (its own OS process, on the
BundleBasedDirectRunner), kills that process and starts it again on the same
subscriptions. A Flink target would submit the job to a
:class:`tools.flink.services.StandaloneCluster` with checkpointing, kill a
TaskManager JVM (``kill_taskmanager``) and recover by starting a TaskManager
and waiting until Flink has restarted the job from its last completed
checkpoint; everything else here is the same for it.

Why the REST bulk stream is the measure: it is the one destination that gets every
record (``stream_type`` both, the only organisation of the crash fleet) with its
id, in a log this process reads directly. The job's other streams run as in
``make run-local-streaming``, so the job does its usual work.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import math
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import boto3
import orjson
from google.api_core import exceptions

from schemas.records import Kind
from tools.latency import documents
from tools.local_destinations import HttpReceiver, RecordedRequest
from tools.local_streams import KINESIS_STREAM, REGION, LocalDestinations
from tools.pubsub_emulator import (
    PubSubEmulator,
    Ticker,
    create_topic_and_subscription,
    publisher_client,
    record_time,
    shift_record,
    subscriber_client,
)
from tools.run_local_streaming import DRAIN_SECONDS, REFRESH_SECONDS, _streaming_streams
from tools.sample_fleet import generate

KINDS: tuple[Kind, ...] = ("event", "usage")
#: Topic and subscription name of each kind (``make run-local-streaming``'s names).
TOPIC_OF: dict[Kind, str] = {"event": "events", "usage": "usage"}
#: The subscriptions' ack deadline: ``make run-local-streaming``'s (the helper's default).
ACK_DEADLINE_SECONDS = 60


# --- What a target is given, and what it reports -------------------------------


@dataclass(frozen=True)
class JobSpec:
    """The streaming job of a crash run, the same whatever runs it: its
    subscriptions, inputs and outputs, and where a target keeps its files."""

    emulator_host: str
    project: str
    subscriptions: Mapping[str, str]
    reference_dir: Path
    streams_config: Path
    output_dir: Path
    work_dir: Path
    refresh_interval_seconds: int = REFRESH_SECONDS
    drain_seconds: int = DRAIN_SECONDS

    def job_flags(self) -> list[str]:
        """The job's own flags, as ``make run-local-streaming`` gives them (no
        runner: a target adds its runner's flags, and may drop what its runner
        does without: ``--refresh_subscription`` drives the refresh where
        ``PeriodicImpulse`` cannot run, the DirectRunner)."""
        return [
            "--streaming",
            f"--events_subscription={self.subscriptions['events']}",
            f"--usage_subscription={self.subscriptions['usage']}",
            f"--refresh_subscription={self.subscriptions['refresh']}",
            f"--refresh_interval_seconds={self.refresh_interval_seconds}",
            f"--reference_dir={self.reference_dir}",
            f"--streams_config={self.streams_config}",
            f"--output_dir={self.output_dir}",
            f"--archive_location={self.output_dir / 'archive'}",
            "--output_window_seconds=10",
            f"--drain_seconds={self.drain_seconds}",
        ]


@dataclass(frozen=True)
class Acknowledgements:
    """What a job process did with its Pub/Sub messages, by message id, each
    with the unix time it first happened: ``pulled`` (fetched from Pub/Sub),
    ``sent`` (its acknowledgement left the process), ``confirmed`` (Pub/Sub
    answered that acknowledgement; a subset of ``sent``) and ``read`` (the
    runner's reader took it into a bundle and asked for its acknowledgement,
    which leaves a moment later: ``sent``)."""

    pulled: Mapping[str, float]
    sent: Mapping[str, float]
    confirmed: Mapping[str, float]
    read: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Killed:
    """What a target killed: a description, its pid, when (unix time), and,
    where the runner can tell, what the killed process had acknowledged."""

    what: str
    pid: int
    at: float
    acknowledged: Acknowledgements | None = None


@dataclass(frozen=True)
class Stopped:
    """How the job ended once the run settled: the target's own words, an exit
    status where there is a process to have one, the job's summary where it
    wrote one."""

    how: str
    exit_status: int | None = None
    summary: dict[str, Any] | None = None


class Target(Protocol):
    """What runs the job, what is killed, how the job comes back.

    The harness calls, in order: :meth:`start` once; :meth:`problem` while it
    waits (a job that fails by itself ends the run with that message);
    :meth:`kill` once, mid-stream; :meth:`recover` right after (a runner that
    restarts the job by itself waits there until it has, or does nothing);
    :meth:`stop` once, on every way out (also after a failure, so it must cope
    with a job that is gone)."""

    name: str

    def start(self, job: JobSpec) -> None:
        """Start the streaming job and return once it reads its subscriptions
        (records are published from then on, so that the kill comes mid-stream
        however long the job took to start); raise if it cannot."""
        ...

    def problem(self) -> str | None:
        """Why the job is not running when it should be (it exited, its runner
        reports it failed), or None."""
        ...

    def kill(self) -> Killed:
        """``kill -9`` the chosen process and return once it is gone."""
        ...

    def recover(self) -> str:
        """Bring the job back after :meth:`kill`, on the same subscriptions;
        say what was done."""
        ...

    def stop(self) -> Stopped:
        """End the job and everything the target started."""
        ...


# --- The records ---------------------------------------------------------------


def crash_fleet(directory: Path, records_per_kind: int, seed: int = 17) -> Path:
    """A sample fleet with one organisation and no injected defects (no
    duplicates, no malformed records), large enough for ``records_per_kind``
    records of each kind: every record is valid, every id unique, and every
    record is routed to the organisation's REST bulk stream. Returns its
    directory (``reference/``, ``raw/``); generated again only when missing."""
    marker = directory / f".complete-{records_per_kind}-{seed}"
    if marker.exists():
        return directory
    endpoints, days = max(8, math.ceil(records_per_kind / 12)), 1
    while True:
        manifest = generate(directory, seed=seed, days=days, organisations=1, endpoints=endpoints,
                            duplicate_rate=0.0, malformed_rate=0.0, formats=("jsonl",))
        stats = manifest["jsonl"]
        if min(stats["events"]["valid_unique"], stats["usage"]["valid_unique"]) >= records_per_kind:
            break
        days *= 2
    marker.touch()
    return directory


def fleet_records(directory: Path, records_per_kind: int) -> dict[Kind, list[dict[str, Any]]]:
    """The first ``records_per_kind`` records of each kind of a :func:`crash_fleet`."""
    files = {"event": "events", "usage": "usage"}
    out: dict[Kind, list[dict[str, Any]]] = {}
    for kind in KINDS:
        lines = (directory / "raw" / f"{files[kind]}.jsonl").read_bytes().splitlines()
        out[kind] = [orjson.loads(line) for line in lines if line.strip()][:records_per_kind]
        if len(out[kind]) < records_per_kind:
            raise ValueError(f"{directory} has {len(out[kind])} {kind} records, not {records_per_kind}")
    return out


def record_key(kind: Kind, record_id: Any) -> str:
    """A record's identity across both kinds (their ids are separate spaces)."""
    return f"{kind}:{record_id}"


def document_key(document: Mapping[str, Any]) -> str | None:
    """The identity of the record a delivered document came from (a usage
    document has an ``end_timestamp``, an event document has none)."""
    if "id" not in document:
        return None
    return record_key("usage" if "end_timestamp" in document else "event", document["id"])


def _restamped(record: dict[str, Any], kind: Kind) -> bytes:
    """The record with its times moved to now, as ``PacedPublisher(restamp=True)``
    moves them: on time for the job's watermark whenever it is published."""
    moment = record_time(record, kind)
    if moment is not None:
        offset = round((datetime.now(tz=UTC) - moment) / timedelta(seconds=1)) * timedelta(seconds=1)
        shift_record(record, kind, offset)
    return orjson.dumps(record)


class KnownPublisher:
    """Publishes each kind's records to its topic at ``rate`` records a second
    and kind, in a background thread, keeping every record's message id and
    publish time: the known set a crash run is measured against."""

    def __init__(self, project: str, topics: Mapping[Kind, str], records: Mapping[Kind, list[dict[str, Any]]],
                 rate: float, host: str) -> None:
        self._project, self._topics, self._records, self._rate, self._host = project, topics, records, rate, host
        self._lock = threading.Lock()
        #: Pub/Sub message id -> record key, for every record the emulator accepted.
        self.message_keys: dict[str, str] = {}
        #: record key -> unix time its publish was accepted.
        self.published_at: dict[str, float] = {}
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crash-publisher", daemon=True)

    @property
    def published(self) -> int:
        with self._lock:
            return len(self.published_at)

    def start(self) -> KnownPublisher:
        self._thread.start()
        return self

    def done(self) -> bool:
        return not self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        client = publisher_client(self._host)
        futures: list[concurrent.futures.Future[str]] = []
        try:
            paths = {kind: client.topic_path(self._project, topic) for kind, topic in self._topics.items()}
            began, total = time.monotonic(), max(len(records) for records in self._records.values())
            for index in range(total):
                delay = began + index / self._rate - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                for kind in KINDS:
                    if index < len(self._records[kind]):
                        record = dict(self._records[kind][index])
                        key = record_key(kind, record["id"])
                        future = client.publish(paths[kind], _restamped(record, kind))
                        future.add_done_callback(lambda f, key=key: self._done(f, key))
                        futures.append(future)
                if self._stop.is_set():
                    break
        except BaseException as error:  # noqa: BLE001 - reported by the run
            self.error = error
        finally:
            client.stop()  # sends what is batched, in the background ...
            concurrent.futures.wait(futures, timeout=60)  # ... so wait for it before closing the channel
            client.transport.close()
            self.finished_at = time.time()

    def _done(self, future: Any, key: str) -> None:
        try:
            message_id = future.result()
        except Exception as error:  # noqa: BLE001 - reported by the run
            self.error = error
            return
        with self._lock:
            self.message_keys[message_id] = key
            self.published_at[key] = time.time()


# --- Reading the receiver and the subscriptions --------------------------------


def deliveries(requests: Iterable[RecordedRequest]) -> list[tuple[float, str]]:
    """Every (arrival unix time, record key) of the accepted ``requests``, one
    per document: a record delivered twice appears twice."""
    out = []
    for request in requests:
        if request.accepted:
            out += [(request.received_at, key) for document in documents(request)
                    if (key := document_key(document)) is not None]
    return out


def drain_subscription(subscription: str, host: str) -> list[bytes]:
    """Take (and acknowledge) every message still in ``subscription``: what no
    job read. Ends after two empty pulls in a row."""
    left: list[bytes] = []
    with subscriber_client(host) as subscriber:
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
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in received])
    return left


def dead_letters(output_dir: Path) -> dict[str, str]:
    """record key -> reason of every dead letter the job wrote."""
    out: dict[str, str] = {}
    for path in sorted((output_dir / "dead_letters").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                letter = json.loads(line)
                if letter.get("record_id") is not None:
                    out[record_key(letter["kind"], letter["record_id"])] = letter["reason"]
    return out


# --- The report ----------------------------------------------------------------


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {"min": round(ordered[0], 3), "median": round(statistics.median(ordered), 3),
            "p99": round(ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)], 3),
            "max": round(ordered[-1], 3)}


@dataclass(frozen=True)
class Observations:
    """The raw material of a report, for checks of its own (not serialized):
    every record published (key -> unix time accepted) and its message id,
    the receiver's requests on the measured path, what was left in the
    subscriptions, the dead letters, and what the target said it killed."""

    published_at: Mapping[str, float]
    message_keys: Mapping[str, str]
    requests: Sequence[RecordedRequest]
    left: frozenset[str]
    dead: Mapping[str, str]
    killed: Killed


@dataclass
class CrashReport:
    """What a crash run measured. ``published`` = ``delivered`` + ``lost``
    (distinct published records); ``deliveries`` = ``delivered`` + ``duplicates``
    + ``unknown`` (documents at the receiver). ``lost_because`` explains each lost
    record: ``left in subscription`` (no job read it: the run did not settle),
    ``dead letter: <reason>`` (the job rejected it), ``acknowledged by the killed
    process`` (Pub/Sub answered its acknowledgement), ``acknowledgement sent by
    the killed process`` (it left, unanswered), ``unexplained`` (none of these,
    or the target cannot tell). ``evidence`` is there when the target can tell
    what the killed process acknowledged (:func:`acknowledgement_evidence`)."""

    target: str
    published: int
    delivered: int
    lost: int
    duplicates: int
    deliveries: int
    unknown: int
    killed: dict[str, Any]
    recovered: str
    stopped: dict[str, Any]
    lost_because: dict[str, int]
    #: Records published before the kill (publishing went on after it).
    published_before_kill: int
    #: Distinct records delivered before the kill.
    delivered_before_kill: int
    #: Of the duplicated records: how many were delivered both before and after the kill.
    duplicates_across_kill: int
    evidence: dict[str, Any] | None
    phases: dict[str, float] = field(default_factory=dict)
    #: How the wait for the last deliveries ended (:func:`_settle`).
    settled: str = ""
    lost_ids: list[str] = field(default_factory=list)
    duplicate_ids: dict[str, int] = field(default_factory=dict)
    observations: Observations | None = field(default=None, repr=False, compare=False)

    @property
    def reconciled(self) -> bool:
        return (self.published == self.delivered + self.lost
                and self.deliveries == self.delivered + self.duplicates + self.unknown)

    def to_json(self) -> dict[str, Any]:
        out = {name: value for name, value in asdict(self).items() if name != "observations"}
        return {**out, "reconciled": self.reconciled}

    def text(self) -> str:
        lines = [
            f"crash run on {self.target}",
            f"  killed {self.killed['what']} (pid {self.killed['pid']}) {self.phases.get('killed', 0):.1f} s "
            f"after the job was started; {self.recovered}",
            f"  published {self.published} ({self.published_before_kill} before the kill), "
            f"delivered {self.delivered} ({self.delivered_before_kill} before the kill), lost {self.lost}, "
            f"duplicates {self.duplicates} ({self.duplicates_across_kill} records across the kill); "
            f"reconciled: {'yes' if self.reconciled else 'NO'}",
        ]
        if self.lost_because:
            lines.append("  lost because: " + ", ".join(f"{why} {n}" for why, n in sorted(self.lost_because.items())))
        if (evidence := self.evidence) is not None:
            lines.append(
                f"  the killed process: acknowledged {evidence['acknowledged']} records, "
                f"{evidence['acknowledged_delivered_before_kill']} of them delivered before the kill "
                f"(each {evidence['acknowledgement_to_delivery_seconds']} s after its acknowledgement, "
                f"{evidence['delivered_before_acknowledged']} before it); "
                f"delivered and killed before acknowledging {evidence['delivered_not_acknowledged']}; "
                f"the lost ones acknowledged {evidence['lost_acknowledged_before_kill_seconds']} s before the kill; "
                f"pulled and not acknowledged {evidence['pulled_not_acknowledged']}, "
                f"of which delivered later {evidence['pulled_not_acknowledged_delivered']}")
        lines.append(f"  {self.settled or 'settled: not recorded'}; phases (s since the start): "
                     + ", ".join(f"{phase} {seconds:g}" for phase, seconds in self.phases.items()))
        lines.append(f"  stopped: {self.stopped['how']}")
        if self.unknown:
            lines.append(f"  {self.unknown} documents at the receiver were never published")
        return "\n".join(lines) + "\n"


def acknowledgement_evidence(acknowledged: Acknowledgements, message_keys: Mapping[str, str],
                             first_arrival: Mapping[str, float], killed_at: float,
                             lost: set[str]) -> dict[str, Any]:
    """What the killed process's acknowledgements say about the losses, by
    record: how many it acknowledged; how many of those reached the receiver
    before the kill, and how long after their acknowledgement; how many arrived
    *before* it acknowledged them (acknowledging after delivery would make that
    most of them); how long before the kill the lost ones were acknowledged; and
    the records it had pulled without acknowledging, which Pub/Sub must
    redeliver, and how many of them were delivered in the end."""
    def keyed(messages: Mapping[str, float]) -> dict[str, float]:
        return {message_keys[m]: moment for m, moment in messages.items() if m in message_keys}

    sent, pulled, read = keyed(acknowledged.sent), keyed(acknowledged.pulled), keyed(acknowledged.read)
    delivered_before = {k for k in sent if first_arrival.get(k, float("inf")) < killed_at}
    unacknowledged = set(pulled) - set(sent)
    return {
        "acknowledged": len(sent),
        "acknowledged_confirmed": len(keyed(acknowledged.confirmed)),
        "acknowledged_delivered_before_kill": len(delivered_before),
        "acknowledged_not_delivered": sum(1 for k in sent if k not in first_arrival),
        "delivered_before_acknowledged": sum(1 for k in delivered_before if first_arrival[k] <= sent[k]),
        # Read, delivered, and killed before the acknowledgement left: Pub/Sub
        # sends these again, and the new process delivers them a second time.
        "delivered_not_acknowledged": sum(1 for k in set(read) - set(sent)
                                          if first_arrival.get(k, float("inf")) < killed_at),
        "acknowledgement_to_delivery_seconds": _spread([first_arrival[k] - sent[k] for k in delivered_before]),
        "lost_acknowledged_before_kill_seconds": _spread([killed_at - sent[k] for k in lost if k in sent]),
        "pulled_not_acknowledged": len(unacknowledged),
        "pulled_not_acknowledged_delivered": len(unacknowledged & set(first_arrival)),
    }


def explain_losses(lost: set[str], *, left: set[str], dead: Mapping[str, str],
                   acknowledged: Acknowledgements | None, message_keys: Mapping[str, str]) -> dict[str, str]:
    """Why each lost record is lost, first match wins: it is still in the
    subscription, the job dead-lettered it, the killed process acknowledged it
    (answered, or only sent), else unexplained."""
    confirmed = {message_keys[m] for m in acknowledged.confirmed if m in message_keys} if acknowledged else set()
    sent = {message_keys[m] for m in acknowledged.sent if m in message_keys} if acknowledged else set()
    why = {}
    for key in lost:
        if key in left:
            why[key] = "left in subscription"
        elif key in dead:
            why[key] = f"dead letter: {dead[key]}"
        elif key in confirmed:
            why[key] = "acknowledged by the killed process"
        elif key in sent:
            why[key] = "acknowledgement sent by the killed process"
        else:
            why[key] = "unexplained"
    return why


# --- The run -------------------------------------------------------------------


class CrashRunError(RuntimeError):
    """The run could not be measured (the job failed, nothing arrived)."""


@contextlib.contextmanager
def _emulator(emulator: PubSubEmulator | None, work_dir: Path) -> Iterator[PubSubEmulator]:
    if emulator is not None:
        yield emulator
        return
    with PubSubEmulator(work_dir=work_dir / "emulator") as started:
        yield started


def forget_aws(url: str, streams: Sequence[Mapping[str, Any]]) -> None:
    """Delete the buckets and the Kinesis stream :class:`LocalDestinations`
    created. moto keeps its data per process, not per server, so the next run's
    destinations in this process could not create them again."""
    def client(service: str) -> Any:
        return boto3.client(service, endpoint_url=url, region_name=REGION, aws_access_key_id="local",
                            aws_secret_access_key="local")

    s3 = client("s3")
    for stream in streams:
        if stream["api_type"] == "aws_s3":
            bucket = stream["s3"]["bucket"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    s3.delete_object(Bucket=bucket, Key=obj["Key"])
            s3.delete_bucket(Bucket=bucket)
    client("kinesis").delete_stream(StreamName=KINESIS_STREAM, EnforceConsumerDeletion=True)


def bulk_path(streams: Sequence[Mapping[str, Any]]) -> str:
    """The receiver path of the REST bulk stream that takes both kinds."""
    for stream in streams:
        if stream["api_type"] == "rest_api_bulk" and stream["stream_type"] == "both" and not stream.get("filters"):
            return "/" + stream["rest"]["url"].split("/", 3)[3]
    raise ValueError("no unfiltered REST bulk stream of both kinds in the local streams")


def run_crash(
    target: Target,
    work_dir: Path,
    *,
    records_per_kind: int = 3000,
    rate: float = 50.0,
    kill_after_seconds: float = 20.0,
    ack_deadline_seconds: int = ACK_DEADLINE_SECONDS,
    quiet_seconds: float | None = 15.0,
    first_delivery_timeout: float = 120.0,
    settle_timeout: float = 300.0,
    emulator: PubSubEmulator | None = None,
    name: str = "crash",
    log: Callable[[str], None] = lambda _: None,
) -> CrashReport:
    """One crash run of ``target`` (module docstring): ``records_per_kind``
    events and as many usage records published at ``rate`` a second per kind,
    the kill ``kill_after_seconds`` after the first delivery. The run settles
    when every record arrived, or (``quiet_seconds`` not None) when nothing new
    arrived for ``quiet_seconds`` past the redelivery deadline, or at
    ``settle_timeout`` after the job ran again. ``name`` prefixes
    the topics and subscriptions (unique per run on a shared emulator).
    ``log`` gets a line at each phase. The job's outputs and the target's files
    go under ``work_dir``; the crash fleet next to it (``crash-fleet``, shared
    by the runs of one directory)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    fleet = crash_fleet(work_dir.parent / "crash-fleet", records_per_kind)
    records = fleet_records(fleet, records_per_kind)
    if records_per_kind / rate <= kill_after_seconds:
        raise ValueError("publishing must outlast kill_after_seconds, or the kill is not mid-stream")
    out = work_dir / "out"
    phases: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(_emulator(emulator, work_dir))
        host, project = server.host, server.project
        subscriptions = {
            topic: create_topic_and_subscription(project, f"{name}-{topic}", f"{name}-{topic}",
                                                 ack_deadline_seconds, host=host)
            for topic in ("events", "usage", "refresh")}
        # Several ticks per refresh interval, as make run-local-streaming ticks.
        stack.enter_context(Ticker(project, f"{name}-refresh", REFRESH_SECONDS / 4, host=host))
        local = stack.enter_context(LocalDestinations(fleet, out, adjust=_streaming_streams))
        stack.callback(forget_aws, local.moto.url, local.streams)
        path = bulk_path(local.streams)
        job = JobSpec(host, project, subscriptions, fleet / "reference", local.config_path, out, work_dir)
        stop = _StopOnce(target)
        stack.callback(stop)
        started = time.monotonic()
        try:
            target.start(job)
        except RuntimeError as error:
            raise CrashRunError(f"the job did not start: {error}") from error
        phases["reading"] = time.monotonic() - started
        log(f"{name}: started the job on {target.name}; publishing {records_per_kind} records per kind at "
            f"{rate:g}/s each")
        publisher = KnownPublisher(project, {k: f"{name}-{TOPIC_OF[k]}" for k in KINDS}, records, rate, host).start()
        stack.callback(publisher.stop)
        _wait(lambda: bool(local.receiver.requests(path)), target, publisher, first_delivery_timeout,
              f"no delivery within {first_delivery_timeout:.0f} s of the first publish")
        phases["first_delivery"] = time.monotonic() - started
        log(f"{name}: first delivery after {phases['first_delivery']:.1f} s; killing in {kill_after_seconds:g} s")
        _wait(lambda: False, target, publisher, kill_after_seconds, None)
        if publisher.done():
            raise CrashRunError(f"publishing ended before the kill ({phases['first_delivery']:.0f} s to the first "
                                "delivery): publish more records, or kill sooner, for a kill mid-stream")
        killed = target.kill()
        published_before_kill = sum(1 for moment in list(publisher.published_at.values()) if moment < killed.at)
        phases["killed"] = time.monotonic() - started
        log(f"{name}: killed {killed.what} (pid {killed.pid}) at {phases['killed']:.1f} s")
        recovered = target.recover()
        phases["recovered"] = time.monotonic() - started
        log(f"{name}: {recovered} ({phases['recovered']:.1f} s)")
        published_keys = _published_keys(records)
        settled = _settle(local.receiver, path, published_keys, target, publisher, killed.at + ack_deadline_seconds,
                          quiet_seconds, settle_timeout, owed=_owed(killed, publisher, published_keys, out))
        phases["settled"] = time.monotonic() - started
        log(f"{name}: {settled} ({phases['settled']:.1f} s); stopping the job")
        publisher.stop()
        if publisher.error is not None:
            raise CrashRunError(f"publishing failed: {publisher.error!r}")
        stopped = stop()
        phases["stopped"] = time.monotonic() - started
        left_messages = [data for topic in ("events", "usage")
                         for data in drain_subscription(subscriptions[topic], host)]
        requests = local.receiver.requests(path)
    return _report(target.name, publisher, requests, left_messages, dead_letters(out), killed, recovered, stopped,
                   published_before_kill, phases, settled)


def _published_keys(records: Mapping[Kind, list[dict[str, Any]]]) -> set[str]:
    return {record_key(kind, record["id"]) for kind in KINDS for record in records[kind]}


class _StopOnce:
    """``target.stop()`` at most once: both the run's normal end and its way out
    on an error call it."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self.stopped: Stopped | None = None

    def __call__(self) -> Stopped:
        if self.stopped is None:
            self.stopped = self._target.stop()
        return self.stopped


def _wait(ready: Callable[[], bool], target: Target, publisher: KnownPublisher, timeout: float,
          failure: str | None) -> None:
    """Wait up to ``timeout`` for ``ready``; raise on a job problem or a publish
    error meanwhile, and at the timeout when ``failure`` says what it means."""
    deadline = time.monotonic() + timeout
    while not ready():
        if (problem := target.problem()) is not None:
            raise CrashRunError(problem)
        if publisher.error is not None:
            raise CrashRunError(f"publishing failed: {publisher.error!r}")
        if time.monotonic() >= deadline:
            if failure is None:
                return
            raise CrashRunError(failure)
        time.sleep(0.2)


def _owed(killed: Killed, publisher: KnownPublisher, published: set[str],
          out: Path) -> Callable[[], set[str]] | None:
    """When the target can tell what the killed process acknowledged: the
    records that must still arrive, all but those it acknowledged (they may be
    lost) and those the job dead-lettered."""
    acknowledged = killed.acknowledged
    if acknowledged is None:
        return None

    def owed() -> set[str]:
        keys = publisher.message_keys
        sent = {keys[m] for m in acknowledged.sent if m in keys}
        return published - sent - set(dead_letters(out))

    return owed


def _settle(receiver: HttpReceiver, path: str, published: set[str], target: Target, publisher: KnownPublisher,
            redelivered_by: float, quiet_seconds: float | None, timeout: float,
            owed: Callable[[], set[str]] | None = None) -> str:
    """Wait until every published record arrived, or (``quiet_seconds`` not
    None) until nothing new arrived for ``quiet_seconds`` once publishing ended
    and ``quiet_seconds`` have passed since ``redelivered_by`` (the killed
    process's unacknowledged messages are due again then) and every record
    ``owed()`` says must arrive has, or ``timeout``.
    Returns how it settled, with how many records had arrived.

    A quiet is wall-clock time: a job starved of CPU (make test runs the Flink
    tests at nice 19 beside others) delivers nothing for minutes without having
    lost anything, which is why a target that must lose nothing gets none, and
    why a quiet ends the wait only once what must arrive has."""
    deadline = time.monotonic() + timeout
    seen, last_new = 0, time.monotonic()
    while True:
        if (problem := target.problem()) is not None:
            raise CrashRunError(problem)
        arrived = {key for _, key in deliveries(receiver.requests(path))} & published
        if len(arrived) != seen:
            seen, last_new = len(arrived), time.monotonic()
        if publisher.done() and len(arrived) == len(published):
            return "settled: every published record arrived"
        # Quiet counted from the redelivery deadline on: what Pub/Sub redelivers
        # then still has to go through the job (seen: 18 messages redelivered 60 s
        # after the kill, at the very moment a quiet that began earlier ended).
        if (quiet_seconds is not None and publisher.done() and time.time() >= redelivered_by + quiet_seconds
                and time.monotonic() - last_new >= quiet_seconds and (owed is None or owed() <= arrived)):
            return (f"settled: nothing new for {quiet_seconds:g} s, {quiet_seconds:g} s past the redelivery deadline "
                    f"({seen} of {len(published)} records arrived)")
        if time.monotonic() >= deadline:
            return (f"not settled after {timeout:.0f} s: {seen} of {len(published)} records arrived, the last new "
                    f"one {time.monotonic() - last_new:.0f} s before")
        time.sleep(0.5)


def _report(target: str, publisher: KnownPublisher, requests: list[RecordedRequest], left_messages: list[bytes],
            dead: Mapping[str, str], killed: Killed, recovered: str, stopped: Stopped, published_before_kill: int,
            phases: dict[str, float], settled: str = "") -> CrashReport:
    published = set(publisher.published_at)
    arrived = deliveries(requests)
    counts = Counter(key for _, key in arrived)
    delivered = set(counts) & published
    lost = published - delivered
    left = set()
    for data in left_messages:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = orjson.loads(data)
            left.add(record_key("usage" if "end_timestamp" in record else "event", record["id"]))
    why = explain_losses(lost, left=left, dead=dead, acknowledged=killed.acknowledged,
                         message_keys=publisher.message_keys)
    first_arrival: dict[str, float] = {}
    before: Counter[str] = Counter()
    for moment, key in sorted(arrived):
        first_arrival.setdefault(key, moment)
        before[key] += moment < killed.at
    duplicate_ids = {key: n for key, n in counts.items() if n > 1 and key in published}
    evidence = None
    if killed.acknowledged is not None:
        evidence = acknowledgement_evidence(killed.acknowledged, publisher.message_keys, first_arrival, killed.at,
                                            lost)
    summary = stopped.summary or {}
    return CrashReport(
        target=target,
        published=len(published),
        delivered=len(delivered),
        lost=len(lost),
        duplicates=sum(n - 1 for n in duplicate_ids.values()),
        deliveries=sum(counts.values()),
        unknown=sum(n for key, n in counts.items() if key not in published),
        killed={"what": killed.what, "pid": killed.pid, "at": killed.at},
        recovered=recovered,
        stopped={"how": stopped.how, "exit_status": stopped.exit_status, "drain": summary.get("drain"),
                 "reconciled": summary.get("reconciled")},
        lost_because=dict(Counter(why.values())),
        published_before_kill=published_before_kill,
        delivered_before_kill=sum(1 for key in delivered if before[key]),
        duplicates_across_kill=sum(1 for key, n in duplicate_ids.items() if 0 < before[key] < n),
        evidence=evidence,
        phases={k: round(v, 1) for k, v in phases.items()},
        settled=settled,
        lost_ids=sorted(lost),
        duplicate_ids=dict(sorted(duplicate_ids.items())),
        observations=Observations(dict(publisher.published_at), dict(publisher.message_keys), requests,
                                  frozenset(left), dict(dead), killed),
    )
