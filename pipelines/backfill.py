"""Backfill a historic time range to one data stream from the raw archive.

    python -m pipelines.backfill --stream_id rest-1 --from 2026-11-01T06:00:00Z \\
        --to 2026-11-01T12:00:00Z --archive_location gs://bucket/archive \\
        --reference_dir gs://bucket/reference --streams_config streams.yaml

(``make backfill STREAM=<id> FROM=<time> TO=<time>`` with the local defaults.)
Reads the archived raw records of the hours overlapping ``[from, to)`` (at most
``--max_backfill_days``, default 7), runs them through the same parse, de-duplication
and enrichment as live data, with the *current* reference data, keeps the documents
whose time is in the range, and delivers them only to the given stream, through the
same routing (its stream type and filters hold), batching, sinks, failure policy,
parking and status as live data. No other stream receives anything. A backfill is a
replay: receivers drop documents they already have by ``id``.

With ``--document_ids_output <prefix>`` it also writes the ``[kind, id]`` of every
document of the range routed to the stream, one JSON array a line, under
``<prefix>-SSSSS-of-NNNNN.jsonl``: ``pipelines.historic`` keeps them to drop
the stream's parked documents that its history has delivered already.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import apache_beam as beam
from apache_beam.io.avroio import ReadAllFromAvro
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.data_streamer import check_destinations, delivery_json, delivery_settings, secret_policy
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
from pipelines.summary import summarize
from schemas.streams import StreamConfig, StreamConfigError, build_stream_config
from schemas.timestamps import parse_iso
from sinks.delivery import DeliverToStreams
from sinks.ordering import document_time
from transforms.archive import archive_paths
from transforms.documents import RawToDocuments
from transforms.files import WriteJsonLines, write_dead_letters
from transforms.reference import LoadReferenceData, ReferenceDataError
from transforms.routing import PARKED, load_stream_config, route
from transforms.status import load_status, render_status_table

_LOG = logging.getLogger(__name__)
_KINDS = (("event", "Events"), ("usage", "Usage"))


def _in_range(document: dict[str, Any], kind: str, start: datetime, end: datetime) -> bool:
    return start <= document_time(kind, document) < end


def _in_range_chunk(chunk: list[tuple[dict[str, Any], int]], kind: str, start: datetime,
                    end: datetime) -> Iterator[list[tuple[dict[str, Any], int]]]:
    """The documents of a chunk (``transforms/chunks.py``) within the range."""
    kept = [pair for pair in chunk if _in_range(pair[0], kind, start, end)]
    if kept:
        yield kept


def _routed_ids(chunk: list[tuple[dict[str, Any], int]], kind: str, config: StreamConfig) -> Iterator[list[Any]]:
    """``[kind, id]`` of the documents of a chunk that routing sends to a stream of ``config``."""
    for document, _ in chunk:
        if any(tag != PARKED for tag, _ in route(kind, document, config)):  # type: ignore[arg-type]
            yield [kind, document["id"]]


def _parse_args(argv: list[str] | None) -> tuple[Any, PipelineOptions]:
    parser = argparse.ArgumentParser(prog="python -m pipelines.backfill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stream_id", required=True, help="The only stream that receives the backfill.")
    parser.add_argument("--from", dest="start", required=True, help="Start of the range, ISO 8601 with offset.")
    parser.add_argument("--to", dest="end", required=True, help="End of the range (exclusive), ISO 8601.")
    parser.add_argument("--max_backfill_days", type=int, default=7, help="Longest range accepted. Default: 7.")
    parser.add_argument("--document_ids_output", default=None,
                        help="Also write [kind, id] of every document routed to the stream, as JSON lines under "
                        "this prefix (pipelines.historic uses them). Default: none.")
    for options_class in (ReferenceOptions, ProcessingOptions, DeliveryOptions, ReliabilityOptions, ArchiveOptions,
                          OutputOptions):
        options_class._add_argparse_args(parser)
    known, beam_args = parse_job_flags(parser, argv)
    skip = ("stream_id", "start", "end", "max_backfill_days", "document_ids_output")
    return known, PipelineOptions(beam_args + as_flags(vars(known), skip=skip))


def run(argv: list[str] | None = None) -> int:
    known, options = _parse_args(argv)
    try:
        start, end = parse_iso(known.start), parse_iso(known.end)
    except ValueError as err:
        raise OptionError(f"--from/--to: {err}") from None
    if not start < end:
        raise OptionError("--from must be before --to")
    if end - start > timedelta(days=known.max_backfill_days):
        raise OptionError(f"--from/--to: the range is longer than --max_backfill_days ({known.max_backfill_days})")
    archive = options.view_as(ArchiveOptions).archive_location
    if not archive:
        raise OptionError("--archive_location is required")
    if not options.view_as(ReferenceOptions).reference_dir:
        raise OptionError("--reference_dir is required")
    config_path = options.view_as(DeliveryOptions).streams_config
    if not config_path:
        raise OptionError("--streams_config is required")
    config = load_stream_config(config_path, stream_limits(options))
    if known.stream_id not in config.streams:
        raise StreamConfigError(f"stream {known.stream_id!r} is not in the stream configuration")
    only = build_stream_config([config[known.stream_id]])
    check_destinations(only, options.view_as(ReliabilityOptions).allow_insecure_destinations, secret_policy(options))
    settings = delivery_settings(options)
    processing = options.view_as(ProcessingOptions)
    out = options.view_as(OutputOptions).output_dir.rstrip("/")

    pipeline = beam.Pipeline(options=options)
    reference = beam.pvalue.AsSingleton(
        pipeline | "ReferenceData" >> LoadReferenceData(options.view_as(ReferenceOptions).reference_dir)
    )
    documents, dead_letters, files = {}, [], 0
    for kind, label in _KINDS:
        paths = list(archive_paths(archive, kind, start, end))
        files += len(paths)
        if not paths:
            continue
        result = (
            pipeline
            | f"Archive[{label}]" >> beam.Create(paths)
            | f"Read[{label}]" >> ReadAllFromAvro()
            | label >> RawToDocuments(kind, reference, processing.dedup_horizon_seconds, processing.max_record_bytes,
                                      chunked_documents=True)
        )
        documents[kind] = result.documents | f"InRange[{label}]" >> beam.FlatMap(_in_range_chunk, kind, start, end)
        dead_letters.append(result.dead_letters)
    sys.stdout.write(f"backfilling {known.stream_id} from {start.isoformat()} to {end.isoformat()}: "
                     f"{files} archive files\n")
    if not documents:
        sys.stdout.write("  nothing archived in that range\n")
        return 0
    streams = beam.pvalue.AsSingleton(pipeline | "StreamConfig" >> beam.Create([only]))
    # Nothing held at routing: a stream whose circuit is open has its documents
    # parked by its sink (the circuits are in the status location).
    deactivated = beam.pvalue.AsSingleton(pipeline | "PreviousStatus" >> beam.Create([{}]))
    # The status keeps every stream's record, not only the backfilled one's.
    all_streams = beam.pvalue.AsSingleton(pipeline | "AllStreams" >> beam.Create([config]))
    delivered = documents | "Deliver" >> DeliverToStreams(streams, deactivated, settings, status_streams=all_streams,
                                                          chunked=True)
    dead_letters.append(delivered.dead_letters)
    tuple(dead_letters) | "AllDeadLetters" >> beam.Flatten() | "WriteDeadLetters" >> write_dead_letters(
        f"{out}/backfill/dead_letters"
    )
    delivered.results | "WriteDeliveries" >> WriteJsonLines(f"{out}/backfill/deliveries", encode=delivery_json)
    if known.document_ids_output:
        ids = [chunks | f"RoutedIds[{kind}]" >> beam.FlatMap(_routed_ids, kind, only)
               for kind, chunks in sorted(documents.items())]
        tuple(ids) | "AllRoutedIds" >> beam.Flatten() | "WriteRoutedIds" >> WriteJsonLines(known.document_ids_output)
    result = pipeline.run()
    result.wait_until_finish()
    summary = summarize(result)
    sys.stdout.write(summary.render())
    sys.stdout.write(render_status_table([load_status(settings.status_location)[known.stream_id]]))
    return 0 if summary.reconciled else 1


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(argv)
    except (OptionError, StreamConfigError, ReferenceDataError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
