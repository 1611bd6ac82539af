"""Deliver a new stream's history before its live data (the historic-data option).

    python -m pipelines.historic --stream_id rest-1 --streams_config streams.yaml \\
        --archive_location gs://bucket/archive --reference_dir gs://bucket/reference \\
        --output_dir gs://bucket/out [--history_days 7] [--settle_seconds 600]

The guide: "if the transfer of historic data is chosen up to 7 days of historic data
will be sent, before live data is transferred." For a stream with
``historic_data: true`` this run

1. checks the stream (configured, active, with the flag); when its history
   marker already exists it backfills nothing, only releases live documents still
   held (see the limits), and exits 0: running it twice is safe;
2. backfills ``[created_at - history_days, created_at)`` from the raw archive to
   that stream only (``pipelines/backfill.py``, same routing, filters, sinks,
   retries and parking as live data), after reactivating the stream if an
   earlier, failed attempt got it deactivated;
3. writes the stream's history marker (``transforms/status.py``,
   ``<status_location>/history/<stream_id>.json``) only if the backfill
   reconciled, every request it sent was delivered and it parked nothing for the
   stream; otherwise it exits 1 and the live data stays held;
4. releases the held live documents: re-drives the stream's parked batches
   (``pipelines/redrive.py``) at once, waits ``--settle_seconds`` (default twice
   ``--refresh_interval_seconds``) so that a running streaming job re-reads the
   holds and stops parking, and re-drives what it parked meanwhile.

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
  backfill ran is delivered as live data (late), not as history.
- DataDog drops points older than about an hour, so most of a DataDog stream's
  history is accepted by the intake and then discarded.
- Batches an earlier, failed attempt parked (history the destination refused)
  are re-driven together with the held live data, after the marker: they repeat
  history documents this run's backfill has just delivered, which receivers drop
  by ``id`` (S3 and Kinesis consumers see the repeat).
- A history document no destination can take (delivery dead letter, e.g. too
  large) is reported and counted in the marker but does not block the live data:
  retrying would never deliver it.
- A batch live run that started before the marker parks all its documents of the
  stream even if it ends afterwards; a second run of this command (the marker
  exists) releases such stragglers. The same holds if the streaming job could not
  re-read the holds within ``--settle_seconds``.
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
from collections.abc import Iterator
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
from sinks.parking import ParkedBatch, ParkStore
from transforms.archive import archive_paths
from transforms.reference import ReferenceDataError
from transforms.refresh import DEFAULT_REFRESH_SECONDS
from transforms.routing import load_stream_config
from transforms.status import history_marker, load_status, mark_history_delivered

_LOG = logging.getLogger(__name__)

#: "up to 7 days of historic data will be sent"
MAX_HISTORY_DAYS = 7
_OWN = ("stream_id", "history_days", "settle_seconds", "refresh_interval_seconds", "allow_empty_history")
#: Set per step by this command (each step writes under its own directory).
_LOCATIONS = ("output_dir", "park_location", "status_location")


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
                        f"holds). Default: {DEFAULT_REFRESH_SECONDS}.")
    parser.add_argument("--settle_seconds", type=float, default=None,
                        help="Wait after the marker before the last re-drive, so a running streaming job has "
                        "re-read the holds and stopped parking. Default: 2 x --refresh_interval_seconds.")
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
                for line in handle.read().splitlines():
                    if line:
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
        self.settle = 2 * known.refresh_interval_seconds if known.settle_seconds is None else known.settle_seconds
        self.allow_empty = known.allow_empty_history
        self.archive = options.view_as(ArchiveOptions).archive_location
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        self.run_dir = f"{options.view_as(OutputOptions).output_dir.rstrip('/')}/historic/{stream.id}/{stamp}"
        values = vars(known)
        locations = [f"--park_location={self.settings.park_location}",
                     f"--status_location={self.settings.status_location}"]
        skip = _OWN + _LOCATIONS
        self.backfill_flags = beam_args + as_flags(values, skip=skip) + locations
        redrive_dests = _dests(DeliveryOptions, ReliabilityOptions) - set(_LOCATIONS)
        self.redrive_flags = beam_args + as_flags({k: v for k, v in values.items() if k in redrive_dests}) + locations

    def out(self, text: str) -> None:
        sys.stdout.write(text + "\n")

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
            return 1
        documents, not_deliverable = delivered
        mark_history_delivered(self.settings.status_location, stream.id, {
            "from": self.start.isoformat(), "to": self.end.isoformat(), "documents": documents,
            "not_deliverable": not_deliverable,
        })
        if self.settings.streams_db:
            from schemas.stream_store import mark_history_delivered_db

            mark_history_delivered_db(self.settings.streams_db, stream.id, now_iso())
        self.out(f"  history delivered: {documents} documents; marker {self.marker}")
        return self.release()

    def already_delivered(self) -> int:
        with FileSystems.open(self.marker) as handle:
            detail = orjson.loads(handle.read())
        self.out(f"  history was already delivered at {detail.get('delivered_at')} "
                 f"({detail.get('documents')} documents, {detail.get('from')} to {detail.get('to')}); "
                 "nothing to backfill")
        if not _held(self.store, self.stream.id):
            return 0
        # An interrupted run, or a live run that had not seen the marker yet.
        return self.release()

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
                             f"--to={self.end.isoformat()}", f"--output_dir={self.run_dir}"])
        results = [r for r in _read_json_lines(f"{self.run_dir}/backfill/deliveries-*.jsonl")
                   if r["stream_id"] == stream_id]
        not_deliverable = sum(1 for letter in _read_json_lines(f"{self.run_dir}/backfill/dead_letters-*.jsonl")
                              if letter.get("stream_id") == stream_id)
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
        if problems:
            self.out(f"  history NOT delivered: {'; '.join(problems)}.")
            self.out("  The live data stays held (no marker written). Fix the destination and run this command "
                     f"again; do not run pipelines.redrive for {stream_id} before its history is delivered.")
            return None
        older = [b for b in batches if b.reason != AWAITING_HISTORY and b.parked_at < started]
        if older:
            self.out(f"  {len(older)} batches parked by earlier runs ({_by_reason(older)}) are re-driven after the "
                     "history with the held live data")
        return documents, not_deliverable

    def release(self) -> int:
        """Re-drive the held live documents now, and once more after the settle
        time for what a running live job parked before it saw the marker."""
        stream_id = self.stream.id
        held = _held(self.store, stream_id)
        released_batches = len(held)
        released_documents = sum(len(b.documents) for b in held)
        if self.store.list(stream_id):
            self._redrive("release")
        if self.settle:
            self.out(f"  waiting {self.settle:g} s for running live jobs to re-read the holds (--settle_seconds)")
            time.sleep(self.settle)
            late = _held(self.store, stream_id)
            if late:
                released_batches += len(late)
                released_documents += sum(len(b.documents) for b in late)
                self._redrive("release-after-settle")
        remaining = _batches(self.store, stream_id)
        self.out(f"  live data released: {released_batches} held batches ({released_documents} documents)")
        if remaining:
            self.out(f"  {len(remaining)} batches of the stream are still parked ({_by_reason(remaining)}): "
                     f"the history is delivered, so pipelines.redrive --stream_id {stream_id} may deliver them "
                     "once the destination takes them")
            return 1
        return 0

    def _redrive(self, name: str) -> int:
        return redrive.run([*self.redrive_flags, f"--stream_id={self.stream.id}",
                            f"--output_dir={self.run_dir}/{name}"])


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
