"""The bench's baseline: the batch job's work as a plain single-process Python loop.

    python -m tools.bench.baseline --events_input data/sample/raw/events.jsonl \\
        --usage_input data/sample/raw/usage.jsonl --reference_dir data/sample/reference \\
        --streams_config streams.json --output_dir out/baseline --allow_insecure_destinations

It reads the same flags as ``pipelines.data_streamer`` for what it supports (JSONL
input, ``rest_api_bulk`` streams) and prints a JSON summary on stdout. No Beam
pipeline runs: the ``transforms`` modules it imports define Beam transforms, so
Beam is imported, but only their pure functions are called.

Why it is a fair comparison (the same work, done plainly, nothing skipped):

- Read: every line of every input file, as bytes, newline stripped, like
  ``ReadFromText(coder=BytesCoder())`` (an empty line is a record, ``empty``).
- Parse and validate: ``transforms.parse.parse_record`` with ``--max_record_bytes``,
  the function ``_ParseFn`` calls; a ``RecordError`` becomes a dead letter with
  ``schemas.records.dead_letter`` (same reason, detail, payload, best-effort id),
  any other exception an ``internal_error`` dead letter, as in the job.
- De-duplicate: a set of ids per kind; every repeat of an id is a duplicate. That
  is ``DeduplicateById``'s behaviour in a batch run (``transforms/dedup.py``: the
  watermark only moves at the end of the input, so the horizon's timers fire only
  then and every repeat is dropped; and the sample fleet's repeats are exact copies
  a few records apart, so which copy wins does not change a document).
- Enrich: ``transforms.enrich.enrich_event`` / ``enrich_usage`` against the
  ``ReferenceData`` of ``transforms.reference.load_reference_data``; a
  ``RecordError`` becomes an ``enrich`` dead letter with the validated record as
  payload, as ``_EnrichFn`` does.
- Route: ``transforms.routing.route`` with the ``StreamConfig`` of
  ``load_stream_config`` and the holds of the status location
  (``transforms.status.stream_holds``), as the job's batch side inputs.
- Batch: per stream, groups of ``BULK_BATCH_SIZE`` (10,000) documents, as the bulk
  sink's ``BatchPerStream`` makes them; each group sorted with
  ``sinks.ordering.order_key`` and split with ``sinks.results.chunked`` into
  requests of the stream's ``bulk_size`` documents and at most 10 MiB, a document
  that cannot fit alone dead-lettered ``record_too_large`` (what
  ``_RestBulkWriteFn`` does).
- Serialize and send: each document serialized once with orjson, the body
  ``[doc,doc,...]``; POSTed with a ``requests.Session`` (``sinks.http.new_session``,
  no redirects), the stream's headers, ``Content-Type``, the auth header from its
  secret and an ``X-DataStreamer-Signature`` computed per attempt
  (``sinks.outbound.sign``), retried by the same ``sinks.retry.RetryPolicy`` with
  ``classify_http``/``classify_exception``; a batch that fails for good is counted
  as parked (the bench's receiver never fails, so it stays 0).
- Write: documents per kind, dead letters (``dead_letter_json``) and one delivery
  result per request as JSON lines files under ``--output_dir`` with the job's
  names (one shard each), and ``summary.json``.

What it does not do (and the job does, at little cost on this input): Beam
metrics, the raw archive (the bench runs neither with ``--archive_location``),
the stream status file, park files, and the other API types (refused here).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from requests.structures import CaseInsensitiveDict

from schemas.delivery import DeliveryResult
from schemas.records import RecordError, dead_letter, dead_letter_json
from schemas.streams import StreamConfig, StreamConfigError
from sinks.http import Timeouts, new_session
from sinks.ordering import order_key
from sinks.outbound import OutboundGuard, check_url
from sinks.rest import BULK_BATCH_SIZE, DEFAULT_MAX_REQUEST_BYTES, credentials_of, mount_pool, signed_request
from sinks.results import Stopwatch, chunked
from sinks.retry import Attempt, RetryPolicy
from sinks.secrets import SecretResolver
from transforms.dedup import DEFAULT_HORIZON_SECONDS
from transforms.enrich import enrich_event, enrich_usage
from transforms.parse import DEFAULT_MAX_RECORD_BYTES, parse_record
from transforms.reference import ReferenceData, load_reference_data
from transforms.routing import PARKED, load_stream_config, route
from transforms.status import stream_holds

KINDS = (("event", "events_input", "events/events"), ("usage", "usage_input", "usage/usage"))
SHARD = "-00000-of-00001.jsonl"
_ENRICH = {"event": enrich_event, "usage": enrich_usage}


def read_lines(pattern: str) -> Iterator[bytes]:
    """Every line of the files matching ``pattern``, without its line end."""
    for path in sorted(glob.glob(pattern)):
        with open(path, "rb", buffering=1 << 20) as handle:
            for line in handle:
                if line.endswith(b"\n"):
                    line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
                yield line


def record_id(payload: bytes) -> int | None:
    """Best-effort id of an invalid record, for its dead letter (as the job's parser)."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    return value if type(value) is int and -(2**63) <= value < 2**63 else None


class BulkSender:
    """The bulk sink's grouping, chunking, signing and sending, for one run."""

    def __init__(self, config: StreamConfig, output_dir: Path, timeouts: Timeouts, policy: RetryPolicy,
                 allow_insecure: bool, deliveries: BinaryIO, dead_letters: BinaryIO) -> None:
        self._config = config
        self._timeouts = timeouts
        self._policy = policy
        self._deliveries = deliveries
        self._dead_letters = dead_letters
        self._secrets = SecretResolver()
        self._session = new_session()
        mount_pool(self._session, 1, OutboundGuard(allow_insecure))
        self._groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self._credentials: dict[str, tuple[CaseInsensitiveDict, str]] = {}
        self.requests = self.delivered = self.failed = self.too_large = self.bytes = 0
        self.per_stream: dict[str, dict[str, int]] = {}
        for stream in config.streams.values():
            if stream.api_type != "rest_api_bulk":
                raise StreamConfigError(f"stream {stream.id!r}: the baseline only sends rest_api_bulk streams, "
                                        f"not {stream.api_type}")
            if not allow_insecure:
                check_url(stream.destination.url)

    def add(self, stream_id: str, item: tuple[str, dict[str, Any]]) -> None:
        group = self._groups.setdefault(stream_id, [])
        group.append(item)
        if len(group) >= BULK_BATCH_SIZE:
            del self._groups[stream_id]
            self._send_group(stream_id, group)

    def flush(self) -> None:
        for stream_id in sorted(self._groups):
            self._send_group(stream_id, self._groups[stream_id])
        self._groups.clear()
        self._session.close()

    def _headers(self, stream_id: str) -> tuple[CaseInsensitiveDict, str]:
        cached = self._credentials.get(stream_id)
        if cached is None:
            cached = self._credentials[stream_id] = credentials_of(self._config[stream_id].destination, self._secrets)
        return cached

    def _send_group(self, stream_id: str, group: list[tuple[str, dict[str, Any]]]) -> None:
        stream = self._config[stream_id]
        counts = self.per_stream.setdefault(stream_id, {"requests": 0, "delivered": 0, "parked": 0,
                                                        "not_deliverable": 0})
        sendable: list[bytes] = []
        for kind, document in sorted(group, key=lambda item: order_key(*item)):
            body = orjson.dumps(document)
            if len(body) + 2 > DEFAULT_MAX_REQUEST_BYTES:
                letter = dead_letter(kind, "deliver", "record_too_large",
                                     f"rest_api_bulk record of {len(body)} bytes exceeds the "
                                     f"{DEFAULT_MAX_REQUEST_BYTES}-byte limit", body, document.get("id"))
                letter["stream_id"] = stream_id
                self._dead_letters.write(dead_letter_json(letter) + b"\n")
                self.too_large += 1
                counts["not_deliverable"] += 1
                continue
            sendable.append(body)
        headers, signing_secret = self._headers(stream_id)
        url, method = stream.destination.url, stream.destination.method
        for chunk in chunked(sendable, stream.batching.bulk_size, DEFAULT_MAX_REQUEST_BYTES - 1, len, overhead=1):
            body = b"[" + b",".join(chunk) + b"]"

            def attempt(body: bytes = body) -> Attempt:
                return signed_request(self._session, method, url, body, headers, signing_secret, self._timeouts)

            watch = Stopwatch()
            outcome = self._policy.run(attempt)
            self.requests += outcome.attempts
            counts["requests"] += outcome.attempts
            ok = outcome.ok
            if ok:
                self.delivered += len(chunk)
                self.bytes += len(body)
                counts["delivered"] += len(chunk)
            else:
                self.failed += len(chunk)
                counts["parked"] += len(chunk)
            result = DeliveryResult(
                stream_id, "rest_api_bulk", len(chunk), len(body), "delivered" if ok else "failed",
                outcome.last.status_code, outcome.last.error if not ok else None, 0 if ok else len(chunk),
                watch.started_at, watch.elapsed_ms(), url, attempts=outcome.attempts,
                token=None if ok else outcome.last.token,
                redelivered_documents=len(chunk) if outcome.maybe_delivered_twice else 0,
                parked_documents=0 if ok else len(chunk),
            )
            self._deliveries.write(orjson.dumps(result.to_dict()) + b"\n")


def _open(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "wb", buffering=1 << 20)  # closed by run()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole run; returns the summary (also written as ``summary.json``)."""
    started = time.monotonic()
    reference: ReferenceData = load_reference_data(args.reference_dir)
    config = load_stream_config(args.streams_config) if args.streams_config else None
    out = Path(args.output_dir)
    for prefix in ("events/events", "usage/usage", "dead_letters/dead_letters", "deliveries/deliveries"):
        for stale in glob.glob(f"{out / prefix}-*-of-*.jsonl"):
            os.remove(stale)
    status_location = args.status_location or str(out / "status")
    holds = stream_holds(status_location) if config is not None else None
    policy = RetryPolicy(max_attempts=args.max_attempts, deadline_seconds=args.retry_deadline_seconds)
    timeouts = Timeouts(args.http_connect_timeout, args.http_read_timeout)
    dead_file = _open(out / f"dead_letters/dead_letters{SHARD}")
    deliveries_file = _open(out / f"deliveries/deliveries{SHARD}") if config is not None else None
    sender = (BulkSender(config, out, timeouts, policy, args.allow_insecure_destinations, deliveries_file, dead_file)
              if config is not None else None)
    kinds: dict[str, dict[str, Any]] = {}
    max_bytes = args.max_record_bytes
    for kind, attribute, prefix in KINDS:
        pattern = getattr(args, attribute)
        if not pattern:
            continue
        enrich = _ENRICH[kind]
        counts = {"read": 0, "valid": 0, "unique": 0, "documents": 0, "routed": 0, "routed_documents": 0,
                  "filtered": 0, "parked_documents": 0, "dead_letters": {}}
        dead_by_reason: dict[str, int] = counts["dead_letters"]
        seen: set[int] = set()
        with _open(out / f"{prefix}{SHARD}") as documents_file:
            for line in read_lines(pattern):
                counts["read"] += 1
                letter = None
                try:
                    record, _event_ms = parse_record(kind, line, max_bytes)
                except RecordError as err:
                    letter = dead_letter(kind, "parse", err.reason, err.detail, line, record_id(line))
                except Exception as err:  # noqa: BLE001 - as the job: a parser bug is a counted dead letter
                    letter = dead_letter(kind, "parse", "internal_error", f"{type(err).__name__} while parsing",
                                         line, record_id(line))
                if letter is None:
                    counts["valid"] += 1
                    record_key = record["id"]
                    if record_key in seen:
                        continue
                    seen.add(record_key)
                    counts["unique"] += 1
                    try:
                        document = enrich(record, reference)
                    except RecordError as err:
                        letter = dead_letter(kind, "enrich", err.reason, err.detail, orjson.dumps(record),
                                             record_key)
                    except Exception as err:  # noqa: BLE001
                        letter = dead_letter(kind, "enrich", "internal_error",
                                             f"{type(err).__name__} while enriching", orjson.dumps(record),
                                             record_key)
                if letter is not None:
                    dead_by_reason[letter["reason"]] = dead_by_reason.get(letter["reason"], 0) + 1
                    dead_file.write(dead_letter_json(letter) + b"\n")
                    continue
                counts["documents"] += 1
                documents_file.write(orjson.dumps(document) + b"\n")
                if sender is None:
                    continue
                routed = route(kind, document, config, holds)
                if not routed:
                    counts["filtered"] += 1
                    continue
                counts["routed_documents"] += 1
                counts["routed"] += len(routed)
                for tag, element in routed:
                    if tag == PARKED:
                        counts["parked_documents"] += 1
                        continue
                    sender.add(element[0], element[1])
        counts["duplicates"] = counts["valid"] - counts["unique"]
        kinds[kind] = counts
    if sender is not None:
        sender.flush()
    dead_file.close()
    if deliveries_file is not None:
        deliveries_file.close()
    read = sum(k["read"] for k in kinds.values())
    documents = sum(k["documents"] for k in kinds.values())
    duplicates = sum(k["duplicates"] for k in kinds.values())
    dead = sum(sum(k["dead_letters"].values()) for k in kinds.values())
    summary: dict[str, Any] = {
        **kinds,
        "reconciled": read == documents + duplicates + dead,
        "totals": {"read": read, "documents": documents, "duplicates": duplicates, "dead_letters": dead},
        "seconds": round(time.monotonic() - started, 3),
    }
    if sender is not None:
        summary["deliveries"] = {"rest_api_bulk": {"requests": sender.requests, "documents": sender.delivered,
                                                   "failed_documents": sender.failed, "bytes": sender.bytes}}
        summary["delivery_dead_letters"] = sender.too_large
        summary["streams"] = sender.per_stream
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.baseline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events_input", help="File pattern of raw events (JSONL).")
    parser.add_argument("--usage_input", help="File pattern of raw usage records (JSONL).")
    parser.add_argument("--reference_dir", required=True, help="Reference data directory.")
    parser.add_argument("--streams_config", help="Stream configuration (rest_api_bulk streams only).")
    parser.add_argument("--output_dir", default="out/baseline", help="Outputs. Default: out/baseline.")
    parser.add_argument("--status_location", help="Previous stream status. Default: <output_dir>/status.")
    parser.add_argument("--dedup_horizon_seconds", type=int, default=DEFAULT_HORIZON_SECONDS,
                        help="Accepted for symmetry with the job; a batch run drops every repeat (see the module).")
    parser.add_argument("--max_record_bytes", type=int, default=DEFAULT_MAX_RECORD_BYTES)
    parser.add_argument("--http_connect_timeout", type=float, default=5.0)
    parser.add_argument("--http_read_timeout", type=float, default=30.0)
    parser.add_argument("--max_attempts", type=int, default=5)
    parser.add_argument("--retry_deadline_seconds", type=float, default=30.0)
    parser.add_argument("--allow_insecure_destinations", action="store_true",
                        help="DEVELOPMENT ONLY: allow http and loopback destinations.")
    args = parser.parse_args(argv)
    if not (args.events_input or args.usage_input):
        parser.error("give --events_input and/or --usage_input")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except StreamConfigError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_SORT_KEYS).decode() + "\n")
    return 0 if summary["reconciled"] else 1


if __name__ == "__main__":
    sys.exit(main())
