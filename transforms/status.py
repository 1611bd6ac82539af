"""Stream status: what the portal's overview page shows per stream.

Computed from the delivery results of a run, merged into the previous status (one
JSON record per stream in ``<status_location>/status.jsonl``): last successful
delivery time, last remote status (HTTP code or AWS error code), consecutive failed
batches, and a state: ``active``, ``paused`` (by the customer) or ``deactivated``
with a stable error token (``unreachable``, ``auth_failed``, ``not_found``,
``payload_rejected``, ``redirected``, ``throttled``, ``remote_error``,
``destination_refused``, ``credentials_unavailable``).

The state of a stream the customer has not paused or deactivated is its circuit's
(``schemas/circuit.py``, kept beside this file in ``circuits/``): ``deactivated``
with the token while the circuit is not closed (the portal's "Error", with the
reason), ``active`` once it is closed again; ``circuit`` and ``next_probe_at``
say where recovery stands. Without a circuit store (a status written from
results alone) the rule is the circuit's own: deactivated at once on a permanent
error, or after ``deactivate_after`` consecutive failed batches.

The live job also writes ``<status_location>/live_job.json`` with every status
update (:class:`LiveJob`): whether it streams, its refresh interval and output
window, and when. ``pipelines.historic`` reads it to decide whether a streaming
job may still be parking a stream's live documents after the history marker.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.io.filesystems import FileSystems

from schemas.circuit import OPEN, RECOVERING, RESUMING, CircuitStore
from schemas.delivery import DELIVERED, PARKED_STATUS, PERMANENT_TOKENS, REMOTE_ERROR, DeliveryResult
from schemas.snapshots import RefreshingSnapshot, current
from schemas.streams import StreamConfig
from schemas.timestamps import now_iso, parse_iso

STATUS_FILE = "status.jsonl"
#: What the live job says about itself each time it writes the status (:class:`LiveJob`).
LIVE_JOB_FILE = "live_job.json"


@dataclass(frozen=True)
class StreamStatus:
    stream_id: str
    organisation_id: int
    api_type: str
    stream_type: str
    destination: str  # without credentials
    state: str  # active | paused | deactivated
    error: str | None  # the deactivation token
    last_success_at: str | None
    last_remote_status: str | None
    consecutive_failures: int
    updated_at: str
    #: closed | open | half_open | recovering (``schemas/circuit.py``)
    circuit: str = "closed"
    #: open: when the destination is probed next (ISO 8601 UTC)
    next_probe_at: str | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))


def status_path(location: str) -> str:
    return f"{location.rstrip('/')}/{STATUS_FILE}"


def load_status(location: str | None) -> dict[str, StreamStatus]:
    """The last written status per stream id; empty when there is none yet."""
    if not location:
        return {}
    path = status_path(location)
    if not FileSystems.exists(path):
        return {}
    with FileSystems.open(path) as handle:
        lines = handle.read().splitlines()
    return {record.stream_id: record for record in (StreamStatus(**orjson.loads(line)) for line in lines if line)}


def write_status(location: str, records: Iterable[StreamStatus]) -> str:
    path = status_path(location)
    body = b"".join(record.to_json() + b"\n" for record in sorted(records, key=lambda r: r.stream_id))
    with FileSystems.create(path) as handle:
        handle.write(body)
    return path


@dataclass(frozen=True)
class LiveJob:
    """What the live job (``pipelines.data_streamer``) writes to
    ``<status_location>/live_job.json`` with every status update: whether it is
    a streaming run and, if so, how often it re-reads the holds and writes the
    status. A batch run writes it once, at its end; a streaming run once per
    output window that had delivery results. Backfills and re-drives never
    write it, so ``pipelines.historic`` can tell a streaming job that is still
    running from a batch run that has ended, which the status records'
    ``updated_at`` alone cannot (both rewrite every record)."""

    streaming: bool
    #: streaming: ``--refresh_interval_seconds`` (how often the holds are re-read)
    refresh_interval_seconds: int | None = None
    #: streaming: ``--output_window_seconds`` (how often status and parked batches are written)
    output_window_seconds: int | None = None
    #: when it was written (ISO 8601 UTC), set by :func:`write_live_job`
    written_at: str = ""


def live_job_path(location: str) -> str:
    return f"{location.rstrip('/')}/{LIVE_JOB_FILE}"


def write_live_job(location: str, job: LiveJob) -> str:
    path = live_job_path(location)
    with FileSystems.create(path) as handle:
        handle.write(orjson.dumps(asdict(replace(job, written_at=now_iso()))))
    return path


def load_live_job(location: str | None) -> LiveJob | None:
    """The last :class:`LiveJob` written to the location; None when there is
    none (no live job of this version has written status there) or it cannot
    be read."""
    if not location or not FileSystems.exists(live_job_path(location)):
        return None
    try:
        with FileSystems.open(live_job_path(location)) as handle:
            raw = orjson.loads(handle.read())
        job = LiveJob(streaming=bool(raw["streaming"]), refresh_interval_seconds=raw.get("refresh_interval_seconds"),
                      output_window_seconds=raw.get("output_window_seconds"), written_at=str(raw["written_at"]))
        parse_iso(job.written_at)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return job


def last_status_update(location: str | None, streams_db: str | None = None) -> str | None:
    """The latest ``updated_at`` of the status records (ISO 8601 UTC), of the
    portal's ``stream_status`` table with ``streams_db``; None when there is
    none. Every writer of the status sets it (live jobs, backfills, re-drives)."""
    if streams_db:
        from schemas.stream_store import last_status_update_db

        return last_status_update_db(streams_db)
    records = load_status(location)
    return max((record.updated_at for record in records.values() if record.updated_at), default=None)


def advance(
    status: StreamStatus, results: Iterable[DeliveryResult], deactivate_after: int
) -> StreamStatus:
    """Apply one run's results, in time order, to a stream's status."""
    state, error = status.state, status.error
    failures, last_success, remote = status.consecutive_failures, status.last_success_at, status.last_remote_status
    for result in sorted(results, key=lambda r: r.started_at):
        if result.status == PARKED_STATUS and result.attempts == 0:
            if result.token and state == "active":
                state, error = "deactivated", result.token
            continue
        remote = result.remote_status
        if result.status == DELIVERED:
            failures, last_success = 0, result.started_at
            continue
        failures += 1
        token = result.token or REMOTE_ERROR
        if state == "active" and (token in PERMANENT_TOKENS or failures >= deactivate_after):
            state, error = "deactivated", token
    return replace(status, state=state, error=error, consecutive_failures=failures, last_success_at=last_success,
                   last_remote_status=remote, updated_at=now_iso())


def merge_status(
    config: StreamConfig,
    previous: Mapping[str, StreamStatus],
    results: Mapping[str, list[DeliveryResult]],
    deactivate_after: int,
) -> list[StreamStatus]:
    """The new status of every configured stream."""
    records = []
    for stream_id, stream in sorted(config.streams.items()):
        before = previous.get(stream_id)
        base = StreamStatus(
            stream_id=stream_id,
            organisation_id=stream.organisation_id,
            api_type=stream.api_type,
            stream_type=stream.stream_type,
            destination=stream.describe_destination(),
            state=before.state if before else "active",
            error=before.error if before else None,
            last_success_at=before.last_success_at if before else None,
            last_remote_status=before.last_remote_status if before else None,
            consecutive_failures=before.consecutive_failures if before else 0,
            updated_at=now_iso(),
        )
        if stream.state != "active":
            # The customer's choice wins: paused or deactivated in the portal.
            base = replace(base, state=stream.state, error=None if stream.state == "paused" else base.error)
        records.append(advance(base, results.get(stream_id, []), deactivate_after))
    return records


def with_circuits(records: list[StreamStatus], circuits: CircuitStore) -> list[StreamStatus]:
    """The records with the state of their circuits (module docstring)."""
    out = []
    for record in records:
        circuit = circuits.get(record.stream_id, fresh=True)
        probe = (datetime.fromtimestamp(circuit.next_probe_at, UTC).isoformat(timespec="seconds")
                 if circuit.state == OPEN and circuit.next_probe_at else None)
        record = replace(record, circuit=circuit.state, next_probe_at=probe)
        if record.state in ("active", "deactivated") and not (record.state == "deactivated" and record.error is None):
            if circuit.closed or (circuit.state == RECOVERING and circuit.token == RESUMING):
                record = replace(record, state="active", error=None)
            else:
                record = replace(record, state="deactivated", error=circuit.token or REMOTE_ERROR)
        out.append(record)
    return out


class StreamHolds(dict):
    """What holds streams back from live delivery, read from the status location:
    ``{stream_id: token}`` of streams to park (empty here: a failing
    destination's documents are parked by its sink, which reads the stream's
    circuit every few seconds, not at a refresh interval), and
    ``history_delivered``, the streams with the historic-data flag whose history
    has been delivered (``pipelines/historic.py``). A stream with the flag whose
    history is not delivered yet has its live documents parked
    (``awaiting_history``) until then; see docs/backfill.md, "Historic data"."""

    def __init__(self, deactivated: Mapping[str, str], history_delivered: Iterable[str] = ()) -> None:
        super().__init__(deactivated)
        self.history_delivered = frozenset(history_delivered)

    def __reduce__(self) -> tuple[Any, ...]:
        return StreamHolds, (dict(self), tuple(sorted(self.history_delivered)))


def history_marker(location: str, stream_id: str) -> str:
    """The file that says a stream's history has been delivered."""
    return f"{location.rstrip('/')}/history/{stream_id}.json"


def mark_history_delivered(location: str, stream_id: str, detail: Mapping[str, Any]) -> str:
    path = history_marker(location, stream_id)
    with FileSystems.create(path) as handle:
        handle.write(orjson.dumps({"stream_id": stream_id, "delivered_at": now_iso(), **detail}))
    return path


def history_delivered(location: str | None) -> frozenset[str]:
    if not location:
        return frozenset()
    matched = FileSystems.match([history_marker(location, "*")])[0].metadata_list
    return frozenset(m.path.rsplit("/", 1)[-1].removesuffix(".json") for m in matched)


def stream_holds(location: str | None, streams_db: str | None = None) -> StreamHolds:
    """The :class:`StreamHolds` of the status location, or of the portal's
    stream store with ``--streams_db`` (re-read every refresh interval by a
    streaming run)."""
    if streams_db:
        from schemas.stream_store import history_delivered_db

        return StreamHolds({}, history_delivered_db(streams_db))
    return StreamHolds({}, history_delivered(location))


class _UpdateStatusFn(beam.DoFn):
    def __init__(self, location: str, deactivate_after: int, circuit_location: str | None = None,
                 streams_db: str | None = None, live_job: LiveJob | None = None) -> None:
        self._location = location
        self._deactivate_after = deactivate_after
        self._circuit_location = circuit_location
        self._streams_db = streams_db
        self._live_job = live_job

    def process(
        self, element: tuple[None, Iterable[tuple[str, list[DeliveryResult]]]],
        config: StreamConfig | RefreshingSnapshot,
    ) -> Iterator[StreamStatus]:
        config = current(config)
        results = {stream_id: items for stream_id, items in element[1] if stream_id is not None}
        records = merge_status(config, load_status(self._location), results, self._deactivate_after)
        if self._circuit_location is not None:
            records = with_circuits(records, CircuitStore(self._circuit_location))
        write_status(self._location, records)
        if self._streams_db:
            # What the portal's API and pages show (schemas/stream_store.py).
            from schemas.stream_store import record_deliveries_db, write_status_db

            write_status_db(self._streams_db, [asdict(record) for record in records])
            record_deliveries_db(self._streams_db, [result.to_dict() for items in results.values() for result in items])
        if self._live_job is not None:
            write_live_job(self._location, self._live_job)
        yield from records


class UpdateStreamStatus(beam.PTransform):
    """Delivery results -> the new status records, written to the status location.

    Once per window of results: at the end of a batch run (the global window), and
    every output window of a streaming run. All of a window's results meet in one
    merge (one key), so two updates never race to write the status file.
    """

    def __init__(self, location: str, streams: beam.pvalue.AsSideInput | RefreshingSnapshot, deactivate_after: int,
                 circuit_location: str | None = None, streams_db: str | None = None,
                 live_job: LiveJob | None = None) -> None:
        """``circuit_location``: where the sinks keep their circuits (the
        stream's state is its circuit's, module docstring); ``streams_db``: the
        portal's stream store, where the status and delivery counts are written
        too; ``live_job``: the live job's :class:`LiveJob`, written beside the
        status with every update (None for backfills and re-drives)."""
        super().__init__()
        self._streams_db = streams_db
        self._live_job = live_job
        self._location = location
        self._streams = streams
        self._deactivate_after = deactivate_after
        self._circuit_location = circuit_location

    def expand(self, results: beam.PCollection) -> beam.PCollection:
        per_stream = (
            results
            | "KeyByStream" >> beam.Map(lambda r: (r.stream_id, r))
            | "GroupByStream" >> beam.GroupByKey()
            | "AsLists" >> beam.MapTuple(lambda stream_id, items: (None, (stream_id, list(items))))
        )
        if results.is_bounded:
            # A batch run writes the status even when no stream got a result
            # (every stream paused, nothing routed).
            always = results.pipeline | "Always" >> beam.Create([(None, (None, []))])
            per_stream = (per_stream, always) | "WithAlways" >> beam.Flatten()
        return (
            per_stream
            | "AllStreams" >> beam.GroupByKey()
            | "Merge" >> beam.ParDo(_UpdateStatusFn(self._location, self._deactivate_after, self._circuit_location,
                                                   self._streams_db, self._live_job), self._streams)
        )


def render_status_table(records: Iterable[StreamStatus]) -> str:
    """The portal's overview table: API, type, destination, last data, remote status."""
    lines = [
        "",
        "Stream status",
        f"  {'stream':<26}{'API':<15}{'type':<8}{'destination':<52}{'last data':<31}{'remote status'}",
    ]
    for record in records:
        if record.state == "deactivated" and record.circuit != "closed":
            remote = f"error ({record.error}, {record.circuit.replace('_', '-')}"
            remote += f", next probe {record.next_probe_at[11:19]}Z)" if record.next_probe_at else ")"
        else:
            remote = record.state if record.state != "deactivated" else f"deactivated ({record.error})"
        if record.last_remote_status:
            remote += f", last {record.last_remote_status}"
        lines.append(
            f"  {record.stream_id:<26}{record.api_type:<15}{record.stream_type:<8}{record.destination[:50]:<52}"
            f"{(record.last_success_at or '-'):<31}{remote}"
        )
    return "\n".join(lines) + "\n"
