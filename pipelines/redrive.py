"""Re-drive a stream's parked batches once its destination is fixed.

    python -m pipelines.redrive --stream_id rest-1 --streams_config streams.yaml \\
        --park_location gs://bucket/parked --status_location gs://bucket/status

(``make redrive STREAM=<id>`` with the local defaults.) The stream is reactivated
first: its status becomes active with no consecutive failures. Its parked batches
are then delivered through the same sink, failure policy and circuit as live
data, as a Beam job on any runner, each parked document once (a replayed input
may have parked a document twice, in different batches). What fails again is
parked again and the stream is deactivated again by the usual rule; the batches
re-driven are removed from the park once their documents are delivered or parked
anew. The status is updated from the results, and the run prints what
was delivered, what is still parked, and the stream's status; it exits 0 when
nothing it re-drove was parked again. While a streaming job runs, the re-drive
closes the stream's circuit first and holds the stream meanwhile; batches the
job parked before it saw the circuit closed are delivered by its recovery step.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import TimestampedValue

from pipelines.data_streamer import check_destinations, delivery_settings, secret_policy
from pipelines.options import (
    DeliveryOptions,
    OptionError,
    OutputOptions,
    ReliabilityOptions,
    as_flags,
    parse_job_flags,
    stream_limits,
)
from pipelines.summary import summarize
from schemas.circuit import CircuitStore
from schemas.streams import DataStream, StreamConfigError, build_stream_config
from schemas.timestamps import now_iso
from sinks.delivery import sinks_for
from sinks.ordering import document_time
from sinks.parking import ParkStore, WriteParkedBatches
from transforms.files import WriteJsonLines, write_dead_letters
from transforms.routing import load_stream_config, routed_element
from transforms.status import (
    StreamStatus,
    UpdateStreamStatus,
    load_status,
    render_status_table,
    stream_holds,
    write_status,
)

_LOG = logging.getLogger(__name__)


def _parked_documents(path: str, store_location: str) -> Iterator[tuple[tuple[str, int], dict[str, Any]]]:
    for kind, document in ParkStore(store_location).read(path).documents:
        yield (kind, document["id"]), document


def _routed(keyed: tuple[tuple[str, int], Any], stream: DataStream) -> Any:
    (kind, _), documents = keyed
    document = next(iter(documents))
    return TimestampedValue(routed_element(stream, kind, document), document_time(kind, document).timestamp())


def _result_json(result: Any) -> bytes:
    return orjson.dumps(result.to_dict())


def reactivate(status_location: str, stream: DataStream, streams_db: str | None = None) -> None:
    """Mark the stream active before re-driving: the customer fixed it. Its
    circuit closes, so a job that is running sends its live documents again
    within seconds (``schemas/circuit.py``), not after a refresh interval.
    With ``streams_db``, the stream store's status row says so too."""
    CircuitStore(status_location).close(stream.id)
    records = load_status(status_location)
    current = records.get(stream.id)
    if current is not None:
        records[stream.id] = replace(current, state="active", error=None, consecutive_failures=0)
    else:
        records[stream.id] = StreamStatus(stream.id, stream.organisation_id, stream.api_type, stream.stream_type,
                                          stream.describe_destination(), "active", None, None, None, 0, "")
    write_status(status_location, records.values())
    if streams_db:
        from schemas.stream_store import write_status_db

        write_status_db(streams_db, [asdict(records[stream.id])])


def run(argv: list[str] | None = None, prepare: Callable[[list[str]], list[str]] | None = None) -> int:
    """``prepare`` (``pipelines.historic``): given the paths of the parked
    batches this run is about to re-drive, returns the paths to re-drive
    instead (it may rewrite batches without some of their documents)."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.redrive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stream_id", required=True, help="The stream whose parked batches are re-delivered.")
    for options_class in (DeliveryOptions, ReliabilityOptions, OutputOptions):
        options_class._add_argparse_args(parser)
    known, beam_args = parse_job_flags(parser, argv)
    stream_id = known.stream_id
    options = PipelineOptions(beam_args + as_flags(vars(known), skip=("stream_id",)))
    if not options.view_as(DeliveryOptions).streams_config:
        raise OptionError("--streams_config is required")
    config = load_stream_config(options.view_as(DeliveryOptions).streams_config, stream_limits(options))
    if stream_id not in config.streams:
        raise StreamConfigError(f"stream {stream_id!r} is not in the stream configuration")
    stream = config[stream_id]
    if stream.state != "active":
        raise StreamConfigError(f"stream {stream_id!r} is {stream.state} in its configuration; activate it first")
    # Only the stream re-driven is delivered to: another stream's destination is not this run's concern.
    check_destinations(build_stream_config([stream]), options.view_as(ReliabilityOptions).allow_insecure_destinations,
                       secret_policy(options))
    settings = delivery_settings(options)
    # The marker where the job reads it: the stream store's with --streams_db (a
    # stream deleted in the portal and made again lost it there), else the file.
    if stream.historic_data and stream_id not in stream_holds(settings.status_location,
                                                              settings.streams_db).history_delivered:
        raise StreamConfigError(f"stream {stream_id!r} is awaiting its history: run pipelines.historic first "
                                "(make historic STREAM=...), which delivers it and then releases the live data")
    store = ParkStore(settings.park_location)
    before = store.list(stream_id)
    reactivate(settings.status_location, stream, settings.streams_db)
    # Held while this runs: a streaming job's recovery step leaves the stream's
    # parked batches to this re-drive instead of sending them too.
    circuits = CircuitStore(settings.status_location)
    owner = f"redrive-{os.getpid()}"
    circuits.take_drain(stream.id, owner)
    try:
        if prepare is not None:
            before = prepare(before)
        parked_again = _redrive(options, settings, config, stream, store, before)
    finally:
        circuits.release(stream.id, owner)
    sys.stdout.write(render_status_table([load_status(settings.status_location)[stream_id]]))
    # Batches a running job parked meanwhile (before it saw the circuit closed)
    # are not this run's failure: the job's recovery step delivers them.
    return 0 if parked_again == 0 else 1


def _redrive(options: PipelineOptions, settings: Any, config: Any, stream: DataStream, store: ParkStore,
             before: list[str]) -> int:
    """Deliver ``before``; the number of documents parked again."""
    stream_id = stream.id
    sys.stdout.write(f"re-driving {len(before)} parked batches of stream {stream_id} ({stream.api_type})\n")
    if before:
        out = options.view_as(OutputOptions).output_dir.rstrip("/")
        pipeline = beam.Pipeline(options=options)
        streams = beam.pvalue.AsSingleton(pipeline | "StreamConfig" >> beam.Create([config]))
        routed = (
            pipeline
            | "ParkedBatches" >> beam.Create(before)
            | "Documents" >> beam.FlatMap(_parked_documents, settings.park_location)
            # A replayed input parks its documents again, in other batches: deliver each once.
            | "OncePerDocument" >> beam.GroupByKey()
            | "Routed" >> beam.Map(_routed, stream)
        )
        delivered = routed | f"Deliver[{stream.api_type}]" >> sinks_for(settings, streams)[stream.api_type]
        if delivered.parked is not None:
            delivered.parked | "ParkAgain" >> WriteParkedBatches(settings.park_location, settings.streams_db)
        delivered.dead_letters | "WriteDeadLetters" >> write_dead_letters(f"{out}/redrive/dead_letters")
        delivered.results | "WriteDeliveries" >> WriteJsonLines(f"{out}/redrive/deliveries", encode=_result_json)
        # With --streams_db, the status, the delivered counts and what is parked
        # again go to the stream store too: the portal shows the re-drive.
        delivered.results | "StreamStatus" >> UpdateStreamStatus(
            settings.status_location, streams, settings.policy.deactivate_after, settings.policy.circuit_location,
            streams_db=settings.streams_db,
        )
        started = now_iso()
        result = pipeline.run()
        result.wait_until_finish()
        summary = summarize(result)
        # Batches this run parked again were rewritten (parked_at after the start);
        # every other batch re-driven has had all its documents delivered or re-parked.
        store.delete(path for path in before if store.read(path).parked_at < started)
        after = store.list(stream_id)
        counts = summary.deliveries.get(stream.api_type, {})
        sys.stdout.write(
            f"  delivered {counts.get('documents', 0)} documents in {counts.get('requests', 0)} requests; "
            f"parked again {counts.get('parked', 0)}; {len(after)} batches still parked\n"
        )
        return int(counts.get("parked", 0))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(argv)
    except (OptionError, StreamConfigError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
