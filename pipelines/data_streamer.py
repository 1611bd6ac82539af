"""The data streamer job: raw events and usage records in, customer documents out.

Batch run on the DirectRunner over the sample fleet (what ``make run-local`` does)::

    python -m pipelines.data_streamer \\
        --events_input 'data/sample/raw/events.jsonl' \\
        --usage_input 'data/sample/raw/usage.jsonl' \\
        --reference_dir data/sample/reference --output_dir out

The same graph runs on any Beam runner (``--runner``); the inputs and the reference
directory may be ``gs://`` or ``s3://`` paths. ``--help`` lists every flag.

The graph (DESIGN.md's data flow)::

    ReadEvents -> Events[ParseAndValidate -> Deduplicate -> Enrich] -> WriteEvents
    ReadUsage  -> Usage[ParseAndValidate -> Deduplicate -> Enrich]  -> WriteUsage
    ReferenceData (side input of both Enrich steps)
    with --streams_config: Deliver[Route[event], Route[usage] -> Deliver[<api type>]] -> WriteDeliveries
    dead letters of every step -> WriteDeadLetters
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import apache_beam as beam
import orjson
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.options import (
    ArchiveOptions,
    DeliveryOptions,
    InputOptions,
    OptionError,
    OutputOptions,
    ProcessingOptions,
    ReferenceOptions,
    ReliabilityOptions,
    as_flags,
    validate,
)
from pipelines.summary import RunSummary, summarize
from schemas.streams import StreamConfig, StreamConfigError
from sinks.http import Timeouts
from sinks.outbound import DestinationRefusedError, check_url
from sinks.parking import ParkStore
from sinks.results import DeliveryResult
from sinks.retry import RetryPolicy
from transforms.archive import ArchiveRawRecords
from transforms.delivery import DeliverToStreams, DeliverySettings
from transforms.documents import RawToDocuments
from transforms.files import ReadRawRecords, WriteJsonLines, write_dead_letters
from transforms.reference import LoadReferenceData, ReferenceDataError, load_reference_data
from transforms.routing import LoadStreamConfig, load_stream_config
from transforms.status import deactivated_streams, load_status, render_status_table

_LOG = logging.getLogger(__name__)

#: (kind, stable label, option attribute): the two record kinds of the job.
_INPUTS = (("event", "Events", "events_input"), ("usage", "Usage", "usage_input"))
#: Output sub-directory and file prefix of each output.
OUTPUT_PREFIXES = {
    "event": "events/events",
    "usage": "usage/usage",
    "dead_letters": "dead_letters/dead_letters",
    "deliveries": "deliveries/deliveries",
}


def build_pipeline(p: beam.Pipeline, options: PipelineOptions) -> dict[str, beam.PCollection]:
    """Wire the graph; return the documents per kind, all dead letters and, when
    streams are configured, the delivery results (``"deliveries"``).

    Tests assert on the returned PCollections; :func:`run` writes them.
    """
    inputs = options.view_as(InputOptions)
    processing = options.view_as(ProcessingOptions)
    reference = beam.pvalue.AsSingleton(
        p | "ReferenceData" >> LoadReferenceData(options.view_as(ReferenceOptions).reference_dir)
    )
    outputs: dict[str, beam.PCollection] = {}
    dead_letters = []
    for kind, label, attribute in _INPUTS:
        pattern = getattr(inputs, attribute)
        if not pattern:
            continue
        raw = p | f"Read{label}" >> ReadRawRecords(pattern, inputs.input_format)
        result = raw | label >> RawToDocuments(
            kind,
            reference,
            dedup_horizon_seconds=processing.dedup_horizon_seconds,
            max_record_bytes=processing.max_record_bytes,
        )
        outputs[kind] = result.documents
        dead_letters.append(result.dead_letters)
        archive = options.view_as(ArchiveOptions).archive_location
        if archive:
            result.valid | f"Archive[{label}]" >> ArchiveRawRecords(kind, archive)
    delivery = options.view_as(DeliveryOptions)
    if delivery.streams_config:
        settings = delivery_settings(options)
        streams = beam.pvalue.AsSingleton(p | "StreamConfig" >> LoadStreamConfig(delivery.streams_config))
        deactivated = beam.pvalue.AsSingleton(
            p
            | "StatusLocation" >> beam.Create([settings.status_location])
            | "PreviousStatus" >> beam.Map(lambda location: deactivated_streams(load_status(location)))
        )
        documents = {kind: outputs[kind] for kind in ("event", "usage") if kind in outputs}
        delivered = documents | "Deliver" >> DeliverToStreams(streams, deactivated, settings)
        outputs["deliveries"] = delivered.results
        outputs["parked"] = delivered.parked
        outputs["status"] = delivered.status
        dead_letters.append(delivered.dead_letters)
    outputs["dead_letters"] = tuple(dead_letters) | "AllDeadLetters" >> beam.Flatten()
    return outputs


def delivery_settings(options: PipelineOptions) -> DeliverySettings:
    """Delivery settings from the flags; park and status default to the output dir."""
    delivery = options.view_as(DeliveryOptions)
    reliability = options.view_as(ReliabilityOptions)
    base = options.view_as(OutputOptions).output_dir.rstrip("/")
    return DeliverySettings(
        park_location=reliability.park_location or f"{base}/parked",
        status_location=reliability.status_location or f"{base}/status",
        max_buffering_seconds=delivery.max_buffering_seconds,
        timeouts=Timeouts(delivery.http_connect_timeout, delivery.http_read_timeout),
        rest_concurrency=delivery.rest_concurrency,
        policy=RetryPolicy(
            max_attempts=reliability.max_attempts,
            deadline_seconds=reliability.retry_deadline_seconds,
            base_delay_seconds=reliability.retry_base_delay_seconds,
            max_delay_seconds=reliability.retry_max_delay_seconds,
            deactivate_after=reliability.deactivate_after_failures,
        ),
        allow_insecure=reliability.allow_insecure_destinations,
    )


def check_destinations(config: StreamConfig, allow_insecure: bool) -> None:
    """Refuse, before anything runs, REST and DataDog destinations the outbound
    rules forbid (sinks check again when they send)."""
    for stream in config.streams.values():
        url = getattr(stream.destination, "url", None) if stream.api_type != "datadog" else stream.destination.base_url
        if url is None:
            continue
        try:
            check_url(url, allow_insecure=allow_insecure)
        except DestinationRefusedError as err:
            raise StreamConfigError(
                f"stream {stream.id!r}: destination refused: {err} "
                "(--allow_insecure_destinations allows it for development)"
            ) from None


def write_outputs(outputs: dict[str, beam.PCollection], output_dir: str) -> None:
    base = output_dir.rstrip("/")
    if "event" in outputs:
        outputs["event"] | "WriteEvents" >> WriteJsonLines(f"{base}/{OUTPUT_PREFIXES['event']}")
    if "usage" in outputs:
        outputs["usage"] | "WriteUsage" >> WriteJsonLines(f"{base}/{OUTPUT_PREFIXES['usage']}")
    outputs["dead_letters"] | "WriteDeadLetters" >> write_dead_letters(f"{base}/{OUTPUT_PREFIXES['dead_letters']}")
    if "deliveries" in outputs:
        outputs["deliveries"] | "WriteDeliveries" >> WriteJsonLines(
            f"{base}/{OUTPUT_PREFIXES['deliveries']}", encode=delivery_json
        )


def delivery_json(result: DeliveryResult) -> bytes:
    return orjson.dumps(result.to_dict())


def _clear_previous_outputs(output_dir: str) -> None:
    """Remove the shards a previous run wrote, so a run with fewer shards does not
    leave stale files beside its own."""
    base = output_dir.rstrip("/")
    patterns = [f"{base}/{prefix}-*-of-*.jsonl" for prefix in OUTPUT_PREFIXES.values()]
    stale = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    if stale:
        FileSystems.delete(stale)


def _parse_args(argv: list[str] | None) -> PipelineOptions:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.data_streamer",
        description=__doc__.split("\n\n")[0],
        epilog="Any other flag is a Beam pipeline option (--runner, --direct_num_workers, ...).",
    )
    for options_class in (InputOptions, ReferenceOptions, ProcessingOptions, DeliveryOptions, ReliabilityOptions,
                          ArchiveOptions, OutputOptions):
        options_class._add_argparse_args(parser)
    known, beam_args = parser.parse_known_args(argv)
    return PipelineOptions(beam_args + as_flags(vars(known)))


def run(argv: list[str] | None = None) -> RunSummary:
    """Parse flags, run the job to completion, write and print the summary."""
    options = _parse_args(argv)
    validate(options)
    # Fail fast, on the submitting machine, with the loader's message naming the
    # bad file, row and field; workers load the same directory again.
    reference = load_reference_data(options.view_as(ReferenceOptions).reference_dir)
    _LOG.info("reference data: %s", reference.sizes())
    streams_config = options.view_as(DeliveryOptions).streams_config
    if streams_config:
        config = load_stream_config(streams_config)
        check_destinations(config, options.view_as(ReliabilityOptions).allow_insecure_destinations)
        _LOG.info("streams: %d", len(config))
    output_dir = options.view_as(OutputOptions).output_dir
    _clear_previous_outputs(output_dir)

    pipeline = beam.Pipeline(options=options)
    write_outputs(build_pipeline(pipeline, options), output_dir)
    result = pipeline.run()
    result.wait_until_finish()

    summary = summarize(result)
    summary_path = f"{output_dir.rstrip('/')}/summary.json"
    with FileSystems.create(summary_path) as handle:
        handle.write(json.dumps(summary.to_dict(), indent=2, sort_keys=True).encode("utf-8"))
    sys.stdout.write(summary.render())
    sys.stdout.write(f"  outputs under {output_dir}\n")
    if streams_config:
        settings = delivery_settings(options)
        sys.stdout.write(render_status_table(load_status(settings.status_location).values()))
        retention = options.view_as(ReliabilityOptions).park_retention_days
        expired = ParkStore(settings.park_location).expired(retention)
        if expired:
            sys.stdout.write(f"  {len(expired)} parked batches are older than {retention} days (not deleted): "
                             f"{', '.join(expired[:5])}{' ...' if len(expired) > 5 else ''}\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run(argv)
    except (OptionError, ReferenceDataError, StreamConfigError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    return 0 if summary.reconciled else 1


if __name__ == "__main__":
    sys.exit(main())
