"""Deliver a new stream's history before its live data (the historic-data option).

    python -m pipelines.historic --stream_id rest-1 --streams_config streams.yaml \\
        --archive_location gs://bucket/archive --reference_dir gs://bucket/reference \\
        --output_dir gs://bucket/out [--history_days 7] [--settle_seconds 600]

The guide: "if the transfer of historic data is chosen up to 7 days of historic data
will be sent, before live data is transferred." For a stream with
``historic_data: true`` this run

1. checks the stream (configured, active, with the flag); when its history
   marker already exists it backfills nothing, only releases live documents still
   held (step 4), and exits 0: running it twice is safe;
2. backfills ``[created_at - history_days, created_at)`` from the raw archive to
   that stream only (``pipelines/backfill.py``, same routing, filters, sinks,
   retries and parking as live data), after reactivating the stream if an
   earlier, failed attempt got it deactivated. The backfill also writes the
   ``[kind, id]`` of every document it routes to the stream to
   ``<status_location>/history-ids/<stream_id>/<run>/`` (and this command adds
   the ids of those no destination can take, ``not_deliverable.jsonl``);
3. writes the stream's history marker (``transforms/status.py``,
   ``<status_location>/history/<stream_id>.json``, naming that directory as
   ``document_ids``) only if the backfill reconciled, every request it sent
   was delivered and it parked nothing for the stream; otherwise it exits 1,
   the live data stays held and the ids are removed;
4. releases the held live documents: re-drives the stream's parked batches
   (``pipelines/redrive.py``) at once, then waits only while a running
   streaming job may still be parking them (below), and re-drives what it
   parked meanwhile. Before each re-drive it drops from the batches every
   document the history delivered (by kind and id: a live run before the
   marker holds the documents of the range too when it reads a backlog or late
   data, and the batches an earlier, failed attempt parked are history), so
   each document of the range reaches the destination once. The report counts
   the held documents, those dropped as already delivered as history and
   those re-driven (held = dropped + re-driven, per parked copy).

Why by id, not by time. Dropping every held document whose time is in the range
would also drop those the backfill did not have: a streaming job writes an
hour's archive file when the hour closes, so a late record of the last hour can
be held but not archived yet; a live job may archive elsewhere; current
reference data may route a document differently. Such a document would never be
delivered. By id it is re-driven, after the history, as late live data (the
report says how many). The cost: the history's ids are written to the status
location (a JSON line of about 20 bytes per document: tens of MB for 7 days of a
large stream) and read back line by line at each release, keeping in memory only
those that match a parked document (the parked batches are read whole, as
before).

The wait. The live job writes ``<status_location>/live_job.json`` with every
status update (``transforms.status.LiveJob``): streaming or batch, its refresh
interval and output window; backfills and re-drives do not write it. A batch run
reads the holds when it starts and writes it once, at its end. So:

- last written by a batch run: no wait (nothing that has ended parks again);
- written by a streaming job within two of its intervals (the longer of its
  refresh interval and output window): wait until it writes status at or after
  marker + its refresh interval + two output windows, at most
  ``--settle_seconds`` (default twice ``--refresh_interval_seconds``). By then it
  has re-read the holds (every refresh interval, at interval starts), what it
  routed before was parked when its output window closed, and the status write
  is of a later window than that;
- written by a streaming job longer ago: taken as stopped, no wait;
- no ``live_job.json`` (a job of an earlier version): when the status records
  (``status.jsonl``, or the ``stream_status`` table with ``--streams_db``) were
  written within two ``--refresh_interval_seconds`` before this command
  started, wait until they are written again after marker +
  ``--refresh_interval_seconds``; otherwise no wait.

``--settle_seconds 0`` never waits. The output says which case applied, what it
waited for and what ended the wait.

The ordering guarantee. Until the marker exists, the live job routes every live
document of the stream to the park store (reason ``awaiting_history``,
``transforms/routing.py``) instead of its destination: batch runs read the holds
when they start, streaming runs every refresh interval. The backfill is not held:
it passes routing a plain ``{stream_id: token}`` of deactivated streams, not a
``StreamHolds``. The marker is written only after the backfill has finished with
every history document delivered, and held live documents reach the destination
only through the re-drives of step 4, which start after the marker. So every
history document is delivered before any live one. Within one request or file
documents are in time order anyway.

Limits, honestly:

- The receiver gets history and then live data, but not necessarily live data in
  time order: live documents the live job delivers directly once it has seen the
  marker may arrive before held ones of the second re-drive (those parked between
  the marker and the job's next refresh).
- A live record whose time is before ``created_at`` but that arrives after the
  backfill ran is delivered as live data (late), not as history; so is a held one
  the backfill did not have (above). Held documents older than the range
  (before ``created_at - history_days``) are delivered as live data too.
- DataDog drops points older than about an hour, so most of a DataDog stream's
  history is accepted by the intake and then discarded.
- A history document no destination can take (delivery dead letter, e.g. too
  large) is reported and counted in the marker but does not block the live data:
  retrying would never deliver it. Its held copy is re-driven (and dead-lettered
  again), not counted as delivered.
- A batch live run that started before the marker and is still running parks
  all its documents of the stream even if it ends afterwards; a second run of
  this command (the marker exists) releases such stragglers, without the
  documents the marker's ids say the history delivered. The same holds if a
  streaming job could not show within ``--settle_seconds`` that it re-read the
  holds, or wrote no status for two of its intervals (no delivery results: it is
  taken as stopped) and parks after this command ended. Markers of earlier
  versions name no ids: their stragglers are re-driven whole (receivers drop
  repeats by ``id``; S3 and Kinesis consumers see them).
- The live data is held from the stream's creation until this command has run: it
  must run soon after a stream with the flag is created.

Exit codes: 0 history delivered (or delivered before) and every held live
document released; 1 the history or part of the held live data was not
delivered (the output says why, the stream stays as safe as it was); 2 bad
options or configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import backfill, redrive
from pipelines.data_streamer import check_destinations, delivery_settings, secret_policy
from pipelines.options import (
    ArchiveOptions,
    DeliveryOptions,
    OptionError,
    OutputOptions,
    ProcessingOptions,
    ReferenceOptions,
    ReliabilityOptions,
    as_flags,
    parse_job_flags,
    stream_limits,
)
from schemas.delivery import AWAITING_HISTORY, DELIVERED, PARKED_STATUS
from schemas.streams import DataStream, StreamConfigError, build_stream_config
from schemas.timestamps import now_iso, parse_iso
from sinks.ordering import document_time
from sinks.parking import ParkedBatch, ParkStore
from transforms.archive import archive_paths
from transforms.reference import ReferenceDataError
from transforms.refresh import DEFAULT_REFRESH_SECONDS
from transforms.routing import load_stream_config
from transforms.status import (
    LiveJob,
    history_marker,
    last_status_update,
    live_job_path,
    load_live_job,
    load_status,
    mark_history_delivered,
)

_LOG = logging.getLogger(__name__)

#: "up to 7 days of historic data will be sent"
MAX_HISTORY_DAYS = 7
_OWN = ("stream_id", "history_days", "settle_seconds", "refresh_interval_seconds", "allow_empty_history")
#: Set per step by this command (each step writes under its own directory).
_LOCATIONS = ("output_dir", "park_location", "status_location")
#: How often the wait for a streaming job looks at the status location again.
POLL_SECONDS = 5.0
#: A live job is taken as running while its last status update is at most this
#: many of its intervals old (refresh interval or output window, the longer).
RECENT_INTERVALS = 2


def _dests(*option_classes: Any) -> set[str]:
    parser = argparse.ArgumentParser(add_help=False)
    for option_class in option_classes:
        option_class._add_argparse_args(parser)
    return {action.dest for action in parser._actions}


def _parse_args(argv: list[str] | None) -> tuple[Any, list[str], PipelineOptions]:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.historic",
        description=__doc__.split("\n\n")[0],
        epilog="Any other flag is a Beam pipeline option (--runner, ...), passed to the backfill and re-drive jobs.",
    )
    parser.add_argument("--stream_id", required=True, help="The stream with historic_data: true.")
    parser.add_argument("--history_days", type=float, default=MAX_HISTORY_DAYS,
                        help="Days of history before the stream's created_at (more than 0, at most "
                        f"{MAX_HISTORY_DAYS}). Default: {MAX_HISTORY_DAYS}.")
    parser.add_argument("--refresh_interval_seconds", type=int, default=DEFAULT_REFRESH_SECONDS,
                        help="The live streaming job's --refresh_interval_seconds (how often it re-reads the "
                        "holds), for a job that does not say it in the status location (an older version). "
                        f"Default: {DEFAULT_REFRESH_SECONDS}.")
    parser.add_argument("--settle_seconds", type=float, default=None,
                        help="The longest wait after the marker for a running streaming job to show that it has "
                        "re-read the holds (it writes status after marker + its refresh interval + two output "
                        "windows); no wait when no streaming job is running. 0: never wait. "
                        "Default: 2 x --refresh_interval_seconds.")
    parser.add_argument("--allow_empty_history", action="store_true", default=False,
                        help="Write the marker even when the archive has no file at all in the range (a wrong "
                        "--archive_location looks the same). Default: off (exit 1).")
    for options_class in (ReferenceOptions, ProcessingOptions, DeliveryOptions, ReliabilityOptions, ArchiveOptions,
                          OutputOptions):
        options_class._add_argparse_args(parser)
    known, beam_args = parse_job_flags(parser, argv)
    return known, beam_args, PipelineOptions(beam_args + as_flags(vars(known), skip=_OWN))


def _read_json_lines(pattern: str) -> Iterator[dict[str, Any]]:
    for result in FileSystems.match([pattern]):
        for metadata in sorted(result.metadata_list, key=lambda m: m.path):
            with FileSystems.open(metadata.path) as handle:
                for line in handle:
                    if line.strip():
                        yield orjson.loads(line)


def _batches(store: ParkStore, stream_id: str) -> list[ParkedBatch]:
    return [store.read(path) for path in store.list(stream_id)]


def _held(store: ParkStore, stream_id: str) -> list[ParkedBatch]:
    return [b for b in _batches(store, stream_id) if b.reason == AWAITING_HISTORY]


def _by_reason(batches: list[ParkedBatch]) -> str:
    counts: dict[str, int] = {}
    for batch in batches:
        counts[batch.reason] = counts.get(batch.reason, 0) + len(batch.documents)
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))


# --- The documents the history delivered -------------------------------------------

def history_ids_dir(status_location: str, stream_id: str, stamp: str) -> str:
    """Where one run keeps the ``[kind, id]`` of the documents its backfill
    delivered (``delivered-*.jsonl``, written by the backfill) and of those no
    destination can take (``not_deliverable.jsonl``); the marker names it."""
    return f"{status_location.rstrip('/')}/history-ids/{stream_id}/{stamp}"


def delivered_as_history(ids_dir: str, among: set[tuple[str, Any]]) -> set[tuple[str, Any]]:
    """The keys of ``among`` (``(kind, id)``) that the history of ``ids_dir``
    delivered. The id files are read line by line and only matches are kept:
    memory grows with ``among`` (the parked documents), not with the history."""
    if not among:
        return set()
    found = {key for key in ((item[0], item[1]) for item in _read_json_lines(f"{ids_dir}/delivered-*"))
             if key in among}
    if found:
        found -= {(item[0], item[1]) for item in _read_json_lines(f"{ids_dir}/not_deliverable.jsonl")}
    return found


@dataclass
class ReleaseCounts:
    """What the re-drives of one run were given, per parked copy of a document."""

    held_batches: int = 0
    held_documents: int = 0
    #: held documents the history had delivered: removed from their batches, not re-driven
    dropped_held: int = 0
    #: documents of batches parked for another reason (an earlier attempt's
    #: history the destination refused) that this history delivered
    dropped_other: int = 0
    #: held documents whose time is in the history's range but that the
    #: history did not deliver (not in the archive it read): re-driven
    in_range_kept: int = 0

    def add(self, other: ReleaseCounts) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def drop_delivered_history(store: ParkStore, paths: list[str], ids_dir: str | None, start: datetime | None,
                           end: datetime | None) -> tuple[list[str], ReleaseCounts]:
    """Remove from the parked batches at ``paths`` every document the history
    of ``ids_dir`` delivered (each is delivered once: by the history, never
    again by the re-drive). A batch left with documents is written anew (a new
    batch id, its reason and ``parked_at`` kept) before the old file is
    deleted, so a crash in between leaves a copy the re-drive delivers once; a
    batch left empty is deleted. Returns the paths to re-drive and the counts."""
    counts = ReleaseCounts()
    batches = [(path, store.read(path)) for path in paths]
    keys = {(kind, document["id"]) for _, batch in batches for kind, document in batch.documents}
    delivered = delivered_as_history(ids_dir, keys) if ids_dir else set()
    out = []
    for path, batch in batches:
        held = batch.reason == AWAITING_HISTORY
        keep = tuple((kind, document) for kind, document in batch.documents if (kind, document["id"]) not in delivered)
        dropped = len(batch.documents) - len(keep)
        if held:
            counts.held_batches += 1
            counts.held_documents += len(batch.documents)
            counts.dropped_held += dropped
            if start is not None and end is not None:
                counts.in_range_kept += sum(1 for kind, document in keep
                                            if start <= document_time(kind, document) < end)
        else:
            counts.dropped_other += dropped
        if not dropped:
            out.append(path)
            continue
        if keep:
            out.append(store.write(replace(batch, documents=keep)))
        store.delete([path])
    # Two batches left with the same documents are one file (the batch id is their ids').
    return list(dict.fromkeys(out)), counts


# --- Whether a live job may still park the stream's documents ----------------------

@dataclass(frozen=True)
class LiveJobCheck:
    """Whether to wait after the marker, and why: the wait is for a streaming
    job that may still route with the holds it read before the marker."""

    wait: bool
    reason: str
    #: a status write at or after this shows the job has re-read the holds since the marker
    proof_after: datetime | None = None
    #: the proof comes from ``live_job.json``; else (a job that does not write it)
    #: from the status records' ``updated_at``
    stamped: bool = True


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def check_live_job(live: LiveJob | None, status_before: str | None, marker_at: datetime, now: datetime,
                   started_at: datetime, refresh_seconds: int, where: str,
                   status_where: str | None = None) -> LiveJobCheck:
    """Decide the wait from what the status location says (pure; the module docstring has the rules).

    ``live``: ``live_job.json`` now; ``status_before``: the latest status
    update when this command started (before its own backfill and re-drive
    rewrote the status); ``refresh_seconds``: ``--refresh_interval_seconds``,
    for a job that does not say its own; ``where``: the status location;
    ``status_where``: where ``status_before`` was read, when not there (the
    stream store with ``--streams_db``)."""
    status_where = status_where or where
    if live is not None and live.streaming:
        written = parse_iso(live.written_at)
        refresh = live.refresh_interval_seconds or refresh_seconds
        window = live.output_window_seconds or 0
        proof_after = marker_at + timedelta(seconds=refresh + 2 * window)
        if written >= proof_after:
            return LiveJobCheck(False, f"the streaming job has re-read the holds since the marker: it wrote status "
                                f"at {_iso(written)}, after marker + its refresh interval ({refresh} s) + "
                                f"two output windows ({window} s)", proof_after)
        recent = RECENT_INTERVALS * max(refresh, window)
        if (now - written).total_seconds() > recent:
            return LiveJobCheck(False, f"no streaming job is running: the last one wrote status to {where} at "
                                f"{_iso(written)}, more than {recent} s ago ({RECENT_INTERVALS} of its "
                                "intervals)", proof_after)
        return LiveJobCheck(True, f"a streaming job is running (it wrote status at {_iso(written)}); it "
                            f"re-reads the holds every {refresh} s and writes status every {window} s: waiting until "
                            f"it writes status after {_iso(proof_after)} (marker + {refresh} s + 2 x {window} s)",
                            proof_after)
    if live is not None:
        return LiveJobCheck(False, f"the last live job to write status to {where} was a batch run, at "
                            f"{_iso(parse_iso(live.written_at))}: it had read the holds when it started and "
                            "has ended; no streaming job has written status there since")
    proof_after = marker_at + timedelta(seconds=refresh_seconds)
    recent = RECENT_INTERVALS * refresh_seconds
    if status_before is None:
        return LiveJobCheck(False, f"no live job has written status to {status_where}", proof_after, stamped=False)
    before = parse_iso(status_before)
    if (started_at - before).total_seconds() > recent:
        return LiveJobCheck(False, f"no live job has written status to {status_where} in the {recent} s before this "
                            f"command started (last at {_iso(before)})", proof_after, stamped=False)
    return LiveJobCheck(True, f"status was written to {status_where} at {_iso(before)} by a job that does "
                        f"not say whether it streams (no {live_job_path(where)}: an older version?): waiting until "
                        f"the status is written after {_iso(proof_after)} (marker + "
                        f"--refresh_interval_seconds {refresh_seconds} s)", proof_after, stamped=False)


def live_job_proof(check: LiveJobCheck, live: LiveJob | None, status_now: str | None,
                   since: datetime) -> str | None:
    """What shows the streaming job has re-read the holds since the marker, or None.
    ``since``: when the wait began (this command wrote no status after it)."""
    assert check.proof_after is not None
    if check.stamped:
        if live is not None and live.streaming and parse_iso(live.written_at) >= check.proof_after:
            return f"the streaming job wrote status at {_iso(parse_iso(live.written_at))}"
        return None
    if status_now is not None:
        written = parse_iso(status_now)
        if written >= check.proof_after and written > since:
            return f"the status was written at {_iso(written)}"
    return None


def wait_for_live_job(check: LiveJobCheck, settle: float, read: Callable[[], tuple[LiveJob | None, str | None]],
                      since: datetime, clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep,
                      poll: float = POLL_SECONDS) -> tuple[float, str | None]:
    """Poll ``read`` (``live_job.json``, the latest status update) every
    ``poll`` seconds until :func:`live_job_proof` holds or ``settle`` seconds
    have passed; (seconds waited, the proof or None)."""
    started = clock()
    while True:
        proof = live_job_proof(check, *read(), since)
        waited = clock() - started
        if proof is not None or waited >= settle:
            return waited, proof
        sleep(min(poll, settle - waited))


def _check_options(known: Any, options: PipelineOptions) -> DataStream:
    if not 0 < known.history_days <= MAX_HISTORY_DAYS:
        raise OptionError(f"--history_days must be more than 0 and at most {MAX_HISTORY_DAYS}")
    if known.refresh_interval_seconds < 1:
        raise OptionError("--refresh_interval_seconds must be at least 1")
    if known.settle_seconds is not None and known.settle_seconds < 0:
        raise OptionError("--settle_seconds must not be negative")
    if not options.view_as(ArchiveOptions).archive_location:
        raise OptionError("--archive_location is required")
    if not options.view_as(ReferenceOptions).reference_dir:
        raise OptionError("--reference_dir is required")
    config_path = options.view_as(DeliveryOptions).streams_config
    if not config_path:
        raise OptionError("--streams_config is required")
    config = load_stream_config(config_path, stream_limits(options))
    if known.stream_id not in config.streams:
        raise StreamConfigError(f"stream {known.stream_id!r} is not in the stream configuration")
    stream = config[known.stream_id]
    if not stream.historic_data:
        raise StreamConfigError(f"stream {stream.id!r} does not have historic_data: true; its live data is "
                                "delivered as it comes (use pipelines.backfill for a one-off range)")
    if stream.state != "active":
        raise StreamConfigError(f"stream {stream.id!r} is {stream.state} in its configuration; history is "
                                "delivered to an active stream only")
    # Backfill and re-drive deliver to this stream only: check its destination now, before the marker.
    check_destinations(build_stream_config([stream]), options.view_as(ReliabilityOptions).allow_insecure_destinations,
                       secret_policy(options))
    return stream


class _Historic:
    """One run of the command; the steps of the module docstring."""

    def __init__(self, known: Any, beam_args: list[str], options: PipelineOptions, stream: DataStream) -> None:
        self.stream = stream
        self.settings = delivery_settings(options)
        self.store = ParkStore(self.settings.park_location)
        self.marker = history_marker(self.settings.status_location, stream.id)
        self.end = parse_iso(stream.created_at)
        self.start = self.end - timedelta(days=known.history_days)
        self.refresh = known.refresh_interval_seconds
        self.settle = 2 * known.refresh_interval_seconds if known.settle_seconds is None else known.settle_seconds
        self.allow_empty = known.allow_empty_history
        self.archive = options.view_as(ArchiveOptions).archive_location
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        self.run_dir = f"{options.view_as(OutputOptions).output_dir.rstrip('/')}/historic/{stream.id}/{stamp}"
        self.ids_dir = history_ids_dir(self.settings.status_location, stream.id, stamp)
        values = vars(known)
        locations = [f"--park_location={self.settings.park_location}",
                     f"--status_location={self.settings.status_location}"]
        skip = _OWN + _LOCATIONS
        self.backfill_flags = beam_args + as_flags(values, skip=skip) + locations
        redrive_dests = _dests(DeliveryOptions, ReliabilityOptions) - set(_LOCATIONS)
        self.redrive_flags = beam_args + as_flags({k: v for k, v in values.items() if k in redrive_dests}) + locations
        self.started_at = datetime.now(UTC)
        # Before this run's own backfill and re-drives rewrite the status.
        self.status_before = last_status_update(self.settings.status_location, self.settings.streams_db)

    def out(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def run(self) -> int:
        stream = self.stream
        self.out(f"historic data of stream {stream.id} (created {stream.created_at}): "
                 f"{self.start.isoformat()} to {self.end.isoformat()}")
        if FileSystems.exists(self.marker):
            return self.already_delivered()
        if not self.allow_empty and not any(
            next(archive_paths(self.archive, kind, self.start, self.end), None) for kind in ("event", "usage")
        ):
            self.out(f"  no archive file at all under {self.archive} for the range: is --archive_location right? "
                     "Live data stays held; --allow_empty_history marks the history delivered anyway")
            return 1
        delivered = self.deliver_history()
        if delivered is None:
            self._forget_ids()
            return 1
        documents, not_deliverable = delivered
        mark_history_delivered(self.settings.status_location, stream.id, {
            "from": self.start.isoformat(), "to": self.end.isoformat(), "documents": documents,
            "not_deliverable": not_deliverable, "document_ids": self.ids_dir,
        })
        if self.settings.streams_db:
            from schemas.stream_store import mark_history_delivered_db

            mark_history_delivered_db(self.settings.streams_db, stream.id, now_iso())
        # From now on a live job that re-reads the holds sees the marker.
        marker_at = datetime.now(UTC)
        self.out(f"  history delivered: {documents} documents; marker {self.marker}")
        return self.release(marker_at, self.ids_dir, self.start, self.end)

    def already_delivered(self) -> int:
        with FileSystems.open(self.marker) as handle:
            detail = orjson.loads(handle.read())
        self.out(f"  history was already delivered at {detail.get('delivered_at')} "
                 f"({detail.get('documents')} documents, {detail.get('from')} to {detail.get('to')}); "
                 "nothing to backfill")
        if not _held(self.store, self.stream.id):
            return 0
        # An interrupted run, or a live run that had not seen the marker yet.
        ids_dir = detail.get("document_ids")
        if not ids_dir:
            self.out("  the marker names no document ids (an earlier version wrote it): held documents are "
                     "re-driven whole, including any the history delivered (receivers drop repeats by id)")
        start, end = (parse_iso(detail[k]) if detail.get(k) else None for k in ("from", "to"))
        return self.release(parse_iso(detail["delivered_at"]), ids_dir, start, end)

    def deliver_history(self) -> tuple[int, int] | None:
        """Run the backfill; (documents delivered, not deliverable) when the whole
        history was delivered, else None (and why is printed)."""
        stream_id = self.stream.id
        previous = load_status(self.settings.status_location)
        current = previous.get(stream_id)
        if current is not None and current.state == "deactivated":
            # Only an earlier attempt's backfill can have deactivated a held stream
            # (live documents are parked without a request); this run is the retry.
            self.out(f"  stream was deactivated ({current.error}) by an earlier run: reactivated for the history")
            redrive.reactivate(self.settings.status_location, self.stream)
        started = now_iso()
        code = backfill.run([*self.backfill_flags, f"--stream_id={stream_id}", f"--from={self.start.isoformat()}",
                             f"--to={self.end.isoformat()}", f"--output_dir={self.run_dir}",
                             f"--document_ids_output={self.ids_dir}/delivered"])
        results = [r for r in _read_json_lines(f"{self.run_dir}/backfill/deliveries-*.jsonl")
                   if r["stream_id"] == stream_id]
        letters = [letter for letter in _read_json_lines(f"{self.run_dir}/backfill/dead_letters-*.jsonl")
                   if letter.get("stream_id") == stream_id]
        not_deliverable = len(letters)
        documents = sum(r["documents"] - r["parked_documents"] for r in results
                        if r["status"] not in (PARKED_STATUS, "failed"))
        batches = _batches(self.store, stream_id)
        parked = [b for b in batches if b.reason != AWAITING_HISTORY and b.parked_at >= started]
        failed = [r for r in results if r["status"] != DELIVERED]
        problems = []
        if code != 0:
            problems.append(f"the backfill exited with {code} (its counts do not reconcile)")
        if failed:
            problems.append(f"{len(failed)} of its {len(results)} requests were not delivered")
        if parked:
            problems.append(f"it parked {sum(len(b.documents) for b in parked)} documents ({_by_reason(parked)})")
        if not_deliverable:
            self.out(f"  {not_deliverable} history documents cannot be delivered to this destination at all "
                     f"(dead letters under {self.run_dir}/backfill)")
            _write_keys(f"{self.ids_dir}/not_deliverable.jsonl",
                        ((letter["kind"], letter["record_id"]) for letter in letters))
        if problems:
            self.out(f"  history NOT delivered: {'; '.join(problems)}.")
            self.out("  The live data stays held (no marker written). Fix the destination and run this command "
                     f"again; do not run pipelines.redrive for {stream_id} before its history is delivered.")
            return None
        older = [b for b in batches if b.reason != AWAITING_HISTORY and b.parked_at < started]
        if older:
            self.out(f"  {len(older)} batches parked by earlier runs ({_by_reason(older)}) are re-driven after the "
                     "history with the held live data, without the documents this history delivered")
        return documents, not_deliverable

    def _forget_ids(self) -> None:
        matched = FileSystems.match([f"{self.ids_dir}/*"])[0].metadata_list
        if matched:
            FileSystems.delete([m.path for m in matched])

    def release(self, marker_at: datetime, ids_dir: str | None, start: datetime | None,
                end: datetime | None) -> int:
        """Re-drive the parked batches now, without the documents the history
        delivered; wait while a running streaming job may still park live
        documents it routed with the holds of before the marker; re-drive
        what it parked meanwhile."""
        stream_id = self.stream.id
        counts = ReleaseCounts()

        def prepare(paths: list[str]) -> list[str]:
            kept, step = drop_delivered_history(self.store, paths, ids_dir, start, end)
            counts.add(step)
            return kept

        if self.store.list(stream_id):
            self._redrive("release", prepare)
        self.settle_live_job(marker_at)
        if _held(self.store, stream_id):
            self._redrive("release-after-wait", prepare)
        remaining = _batches(self.store, stream_id)
        released = counts.held_documents - counts.dropped_held
        self.out(f"  live data released: {counts.held_batches} held batches ({counts.held_documents} documents): "
                 f"{counts.dropped_held} dropped as already delivered as history, {released} re-driven"
                 + (f" ({counts.in_range_kept} of them from the history's range, which the history did not "
                    "have: delivered as late live data)" if counts.in_range_kept else ""))
        if counts.dropped_other:
            self.out(f"  {counts.dropped_other} documents of batches parked by earlier attempts were dropped as "
                     "already delivered as history")
        if remaining:
            self.out(f"  {len(remaining)} batches of the stream are still parked ({_by_reason(remaining)}): "
                     f"the history is delivered, so pipelines.redrive --stream_id {stream_id} may deliver them "
                     "once the destination takes them")
            return 1
        return 0

    def settle_live_job(self, marker_at: datetime) -> None:
        """Wait only while a streaming job may still park the stream's live
        documents with the holds it read before the marker (module docstring)."""
        location = self.settings.status_location

        def read() -> tuple[LiveJob | None, str | None]:
            return load_live_job(location), last_status_update(location, self.settings.streams_db)

        live, _ = read()
        now = datetime.now(UTC)
        check = check_live_job(live, self.status_before, marker_at, now, self.started_at, self.refresh, location,
                               "the stream store's stream_status" if self.settings.streams_db else None)
        if not check.wait:
            self.out(f"  no wait: {check.reason}")
            return
        if not self.settle:
            self.out(f"  no wait (--settle_seconds 0), although {check.reason}")
            return
        self.out(f"  {check.reason} (at most {self.settle:g} s, --settle_seconds)")
        waited, proof = wait_for_live_job(check, self.settle, read, now)
        if proof is not None:
            self.out(f"  waited {waited:.0f} s: {proof}, so it has re-read the holds since the marker")
        else:
            self.out(f"  waited {waited:.0f} s (--settle_seconds) without the job showing it has re-read the holds: "
                     "live documents it parks until it does stay held; run this command again later to release "
                     "them")

    def _redrive(self, name: str, prepare: Callable[[list[str]], list[str]]) -> int:
        return redrive.run([*self.redrive_flags, f"--stream_id={self.stream.id}",
                            f"--output_dir={self.run_dir}/{name}"], prepare=prepare)


def _write_keys(path: str, keys: Iterable[tuple[str, Any]]) -> None:
    with FileSystems.create(path) as handle:
        handle.write(b"".join(orjson.dumps(list(key)) + b"\n" for key in keys))


def run(argv: list[str] | None = None) -> int:
    known, beam_args, options = _parse_args(argv)
    stream = _check_options(known, options)
    return _Historic(known, beam_args, options, stream).run()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(argv)
    except (OptionError, StreamConfigError, ReferenceDataError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
