"""The data streamer job: raw events and usage records in, customer documents out.

Batch run on the DirectRunner over the sample fleet (what ``make run-local`` does)::

    python -m pipelines.data_streamer \\
        --events_input 'data/sample/raw/events.jsonl' \\
        --usage_input 'data/sample/raw/usage.jsonl' \\
        --reference_dir data/sample/reference --output_dir out

The same graph runs on any Beam runner (``--runner``); the inputs and the reference
directory may be ``gs://`` or ``s3://`` paths. ``--help`` lists every flag.

The graph (the data flow of the design brief, docs/architecture.md)::

    ReadEvents -> Events[ParseAndValidate -> Deduplicate -> Enrich] -> WriteEvents
    ReadUsage  -> Usage[ParseAndValidate -> Deduplicate -> Enrich]  -> WriteUsage
    ReferenceData (side input of both Enrich steps)
    with --streams_config: Deliver[Route[event], Route[usage] -> Deliver[<api type>]] -> WriteDeliveries
    dead letters of every step -> WriteDeadLetters
"""

from __future__ import annotations

import argparse
import atexit
import functools
import glob
import json
import logging
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.window import GlobalWindows

from pipelines.drain import PipelineFailedError, StreamingRun, describe_failure, stop_reading, wrap_result
from pipelines.options import (
    ArchiveOptions,
    DeliveryOptions,
    InputOptions,
    OptionError,
    OutputOptions,
    ProcessingOptions,
    ReferenceOptions,
    ReliabilityOptions,
    RunOptions,
    StreamingOptions,
    as_flags,
    check_input_patterns,
    is_streaming,
    parse_job_flags,
    runner_name,
    stream_limits,
    validate,
)
from pipelines.summary import DrainReport, RunSummary, summarize
from schemas.delivery import DeliveryResult
from schemas.records import dead_letter_json
from schemas.snapshots import RefreshingSnapshot
from schemas.streams import (
    DESTINATION_OF,
    SecretPolicy,
    StreamConfig,
    StreamConfigError,
    check_secret_refs,
)
from sinks.delivery import DeliverToStreams, DeliverySettings
from sinks.http import Timeouts
from sinks.outbound import DestinationRefusedError, OutboundGuard
from sinks.parking import ParkStore
from sinks.retry import RetryPolicy
from transforms.archive import ArchiveRawRecords
from transforms.chunks import Unchunk, document_lines
from transforms.documents import RawToDocuments
from transforms.files import ReadRawRecords, WriteJsonLines, WriteWindowedJsonLines, write_dead_letters
from transforms.lateness import window_lateness_seconds
from transforms.reference import LoadReferenceData, ReferenceDataError, load_reference_data
from transforms.refresh import Ticks, first_refresh
from transforms.routing import LoadStreamConfig, is_database_url, load_stream_config
from transforms.status import LiveJob, load_status, render_status_table, stream_holds

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


@dataclass
class SideInputs:
    """What enrichment and routing read: global one-shot snapshots (side inputs)
    in a batch run, snapshots each worker re-reads every refresh interval
    (``transforms/refresh.py``) in a streaming run."""

    reference: beam.pvalue.AsSideInput | RefreshingSnapshot
    streams: beam.pvalue.AsSideInput | RefreshingSnapshot | None
    holds: beam.pvalue.AsSideInput | RefreshingSnapshot | None
    #: the refresh ticks (streaming): the lateness gate's heartbeats
    ticks: beam.PCollection | None = None


def _batch_side_inputs(p: beam.Pipeline, options: PipelineOptions,
                       settings: DeliverySettings | None) -> SideInputs:
    reference = beam.pvalue.AsSingleton(
        p | "ReferenceData" >> LoadReferenceData(options.view_as(ReferenceOptions).reference_dir)
    )
    streams = holds = None
    config_path = options.view_as(DeliveryOptions).streams_config
    if config_path and settings is not None:
        streams = beam.pvalue.AsSingleton(p | "StreamConfig" >> LoadStreamConfig(config_path,
                                                                                  stream_limits(options)))
        holds = beam.pvalue.AsSingleton(
            p
            | "StatusLocation" >> beam.Create([settings.status_location])
            | "PreviousStatus" >> beam.Map(lambda location, db: stream_holds(location, db), settings.streams_db)
        )
    return SideInputs(reference, streams, holds)


def _streaming_side_inputs(p: beam.Pipeline, options: PipelineOptions, settings: DeliverySettings | None,
                           ticks: beam.PCollection | None, first_refresh_seconds: int | None) -> SideInputs:
    """Reference data, stream configuration and holds, re-read by each worker
    every refresh interval; the refresh ticks (``PeriodicImpulse``, the refresh
    subscription's messages, or the test's ``ticks``) are the lateness gate's
    heartbeats."""
    interval = options.view_as(StreamingOptions).refresh_interval_seconds
    first = first_refresh(interval) if first_refresh_seconds is None else first_refresh_seconds
    refresh_subscription = options.view_as(StreamingOptions).refresh_subscription
    if ticks is None and refresh_subscription:
        ticks = p | "RefreshTicks" >> read_pubsub(
            refresh_subscription, None, options.view_as(InputOptions).pubsub_expansion_service)
    elif ticks is None:
        ticks = p | "RefreshTicks" >> Ticks(interval, first)
    directory = options.view_as(ReferenceOptions).reference_dir
    reference = RefreshingSnapshot("reference", functools.partial(load_reference_data, directory), interval)
    streams = holds = None
    config_path = options.view_as(DeliveryOptions).streams_config
    if config_path and settings is not None:
        streams = RefreshingSnapshot(
            "streams", functools.partial(load_stream_config, config_path, stream_limits(options)), interval)
        holds = RefreshingSnapshot("holds", functools.partial(stream_holds, settings.status_location,
                                                              settings.streams_db), interval)
    return SideInputs(reference, streams, holds, ticks)


def read_pubsub(subscription: str, timestamp_attribute: str | None,
                expansion_service: str | None) -> beam.PTransform:
    """Message bodies of ``subscription``: Python's ``ReadFromPubSub`` (Dataflow
    replaces it with its native read; the DirectRunner with a pulling one), or
    with ``expansion_service`` Beam's Java PubsubIO as a cross-language
    transform, the only Pub/Sub read portable runners such as Flink can run."""
    if not expansion_service:
        return beam.io.ReadFromPubSub(subscription=subscription, timestamp_attribute=timestamp_attribute)
    from apache_beam.io.external.gcp.pubsub import ReadFromPubSub as ExternalReadFromPubSub

    return ExternalReadFromPubSub(subscription=subscription, timestamp_attribute=timestamp_attribute,
                                  expansion_service=resolve_expansion_service(expansion_service))


#: The expansion service's experiment that expands unbounded reads as primitive ``Read``s.
USE_DEPRECATED_READ = "use_deprecated_read"


def resolve_expansion_service(value: str) -> Any:
    """``--pubsub_expansion_service`` as Beam takes it: an address as is, a jar
    run with local Java, or ``auto`` for Beam's released GCP IO expansion service
    jar (downloaded from Maven Central once, into ~/.apache_beam/cache/jars)."""
    from apache_beam.transforms.external import BeamJarExpansionService, JavaJarExpansionService

    if value == "auto":
        # Primitive reads: as a splittable DoFn (Beam's default) PubsubIO held
        # Flink's watermark at its minimum, so no window ever closed (Beam 2.62,
        # Flink 1.19; docs/flink.md). The read runs as Flink's native source.
        return BeamJarExpansionService("sdks:java:io:google-cloud-platform:expansion-service:shadowJar",
                                       append_args=[f"--experiments={USE_DEPRECATED_READ}"])
    if value.endswith(".jar"):
        return JavaJarExpansionService(value)
    return value


def _sources(p: beam.Pipeline, options: PipelineOptions) -> dict[str, beam.PCollection]:
    """Raw elements per kind: Pub/Sub messages (streaming) or file rows (batch)."""
    inputs = options.view_as(InputOptions)
    sources = {}
    for kind, label, attribute in _INPUTS:
        subscription = getattr(inputs, attribute.replace("_input", "_subscription"))
        pattern = getattr(inputs, attribute)
        if subscription:
            sources[kind] = p | f"Read{label}" >> read_pubsub(
                subscription, inputs.pubsub_timestamp_attribute, inputs.pubsub_expansion_service)
        elif pattern:
            sources[kind] = p | f"Read{label}" >> ReadRawRecords(pattern, inputs.input_format)
    return sources


def build_pipeline(
    p: beam.Pipeline,
    options: PipelineOptions,
    sources: dict[str, beam.PCollection] | None = None,
    ticks: beam.PCollection | None = None,
    first_refresh_seconds: int | None = None,
    document_chunks: bool = False,
    recovery_ticks: beam.PCollection | None = None,
) -> dict[str, beam.PCollection]:
    """Wire the graph; return the documents per kind, all dead letters and, when
    streams are configured, the delivery results (``"deliveries"``), parked batch
    paths and status records.

    Batch and streaming share this graph; only the source and the side inputs
    differ. ``sources`` replaces the raw inputs of the options (``{"event": ...,
    "usage": ...}``), and ``ticks``/``first_refresh_seconds`` the refresh
    impulse, for tests that drive a streaming run from a ``TestStream``; such a
    run recovers failed streams only with ``recovery_ticks`` (ticks stamped with
    the time they stand for; a real run ticks every
    ``--recovery_interval_seconds``, ``sinks/recovery.py``). Tests
    assert on the returned PCollections; :func:`run` writes them.

    A bounded run carries its records and documents in chunks
    (``transforms/chunks.py``) up to the sinks; its ``"event"`` and ``"usage"``
    outputs are single documents, or with ``document_chunks`` the chunks of
    ``(document, event time in ms)`` pairs (:func:`write_outputs` takes either).
    """
    inputs = _sources(p, options) if sources is None else sources
    streaming = any(not raw.is_bounded for raw in inputs.values())
    processing = options.view_as(ProcessingOptions)
    lateness = options.view_as(StreamingOptions).allowed_lateness_seconds
    refresh = options.view_as(StreamingOptions).refresh_interval_seconds
    delivery = options.view_as(DeliveryOptions)
    settings = delivery_settings(options, streaming) if delivery.streams_config else None
    if settings is not None:
        # Said beside every status update, for pipelines.historic (transforms/status.py).
        window = options.view_as(StreamingOptions).output_window_seconds
        settings = replace(settings, live_job=LiveJob(streaming, refresh if streaming else None,
                                                      window if streaming else None))
    if streaming:
        side = _streaming_side_inputs(p, options, settings, ticks, first_refresh_seconds)
    else:
        side = _batch_side_inputs(p, options, settings)
    outputs: dict[str, beam.PCollection] = {}
    dead_letters = []
    archive = options.view_as(ArchiveOptions).archive_location
    for kind, label, _ in _INPUTS:
        if kind not in inputs:
            continue
        result = inputs[kind] | label >> RawToDocuments(
            kind,
            side.reference,
            dedup_horizon_seconds=processing.dedup_horizon_seconds,
            max_record_bytes=processing.max_record_bytes,
            allowed_lateness_seconds=lateness,
            heartbeats=side.ticks,
            keep_valid=bool(archive),
            chunked_documents=not streaming,
        )
        outputs[kind] = result.documents
        dead_letters.append(result.dead_letters)
        if archive:
            result.valid | f"Archive[{label}]" >> ArchiveRawRecords(
                kind, archive, window_lateness_seconds(lateness, refresh) if streaming else 0)
    if settings is not None:
        documents = {kind: outputs[kind] for kind in ("event", "usage") if kind in outputs}
        if recovery_ticks is None and streaming and ticks is None and settings.recovery_interval_seconds:
            if options.view_as(StreamingOptions).refresh_subscription:
                # The DirectRunner, where PeriodicImpulse cannot run beside
                # ReadFromPubSub: the refresh ticks (its harness sends one every
                # few seconds) drive recovery too, at most once an interval.
                recovery_ticks = side.ticks
            else:
                recovery_ticks = p | "RecoveryTicks" >> Ticks(settings.recovery_interval_seconds, int(time.time()))
        delivered = documents | "Deliver" >> DeliverToStreams(side.streams, side.holds, settings,
                                                              chunked=not streaming, recovery_ticks=recovery_ticks)
        outputs["deliveries"] = delivered.results
        outputs["parked"] = delivered.parked
        outputs["status"] = delivered.status
        delivery_dead = delivered.dead_letters
        if streaming:
            # Gathered in processing-time windows; a Flatten needs one windowing
            # (its output would claim the first input's, and a runner encoding
            # these elements with the global window's coder would fail).
            delivery_dead = delivery_dead | "UnwindowDeliveryDeadLetters" >> beam.WindowInto(GlobalWindows())
        dead_letters.append(delivery_dead)
    outputs["dead_letters"] = tuple(dead_letters) | "AllDeadLetters" >> beam.Flatten()
    if not streaming and not document_chunks:
        for kind, label, _ in _INPUTS:
            if kind in outputs:
                outputs[kind] = outputs[kind] | f"Unchunk[{label}]" >> Unchunk()
    return outputs


def delivery_settings(options: PipelineOptions, streaming: bool = False) -> DeliverySettings:
    """Delivery settings from the flags; park and status default to the output dir."""
    stream_options = options.view_as(StreamingOptions)
    delivery = options.view_as(DeliveryOptions)
    reliability = options.view_as(ReliabilityOptions)
    base = options.view_as(OutputOptions).output_dir.rstrip("/")
    status_location = reliability.status_location or f"{base}/status"
    return DeliverySettings(
        park_location=reliability.park_location or f"{base}/parked",
        status_location=status_location,
        max_buffering_seconds=delivery.max_buffering_seconds,
        timeouts=Timeouts(delivery.http_connect_timeout, delivery.http_read_timeout),
        rest_concurrency=delivery.rest_concurrency,
        policy=RetryPolicy(
            max_attempts=reliability.max_attempts,
            deadline_seconds=reliability.retry_deadline_seconds,
            base_delay_seconds=reliability.retry_base_delay_seconds,
            max_delay_seconds=reliability.retry_max_delay_seconds,
            deactivate_after=reliability.deactivate_after_failures,
            stream_budget_seconds=reliability.stream_budget_seconds,
            release_overrun_streams=streaming,
            resume_backlog_first=streaming and reliability.recovery_interval_seconds > 0,
            stream_concurrency=reliability.stream_concurrency,
            circuit_location=status_location,
            probe_initial_seconds=reliability.probe_initial_seconds,
            probe_max_seconds=reliability.probe_max_seconds,
        ),
        allow_insecure=reliability.allow_insecure_destinations,
        secrets=secret_policy(options),
        streams_db=delivery.streams_config if is_database_url(delivery.streams_config) else None,
        window_lateness_seconds=window_lateness_seconds(
            stream_options.allowed_lateness_seconds, stream_options.refresh_interval_seconds) if streaming else 0,
        output_window_seconds=stream_options.output_window_seconds if streaming else None,
        recovery_interval_seconds=reliability.recovery_interval_seconds if streaming else 0,
    )


def secret_policy(options: PipelineOptions) -> SecretPolicy:
    """Where stream secrets may come from, from the flags."""
    reliability = options.view_as(ReliabilityOptions)
    return SecretPolicy(env_prefix=reliability.secret_env_prefix, secrets_dir=reliability.secrets_dir)


def destination_urls(config: StreamConfig) -> list[tuple[str, str, str]]:
    """(stream id, field, URL) of every customer-given address: REST URLs,
    DataDog base URLs (its ``url`` or the site's API host) and AWS
    ``endpoint_url`` overrides."""
    urls = []
    for stream in config.streams.values():
        destination, block = stream.destination, DESTINATION_OF[stream.api_type]
        if stream.api_type == "datadog":
            urls.append((stream.id, f"{block}.url", destination.base_url))  # type: ignore[union-attr]
        elif block == "rest":
            urls.append((stream.id, f"{block}.url", destination.url))  # type: ignore[union-attr]
        elif destination.endpoint_url is not None:  # type: ignore[union-attr]
            urls.append((stream.id, f"{block}.endpoint_url", destination.endpoint_url))  # type: ignore[union-attr]
    return urls


def check_destinations(config: StreamConfig, allow_insecure: bool, secrets: SecretPolicy | None = None) -> None:
    """Refuse, before anything runs, destinations the outbound rules forbid
    (through the same :class:`OutboundGuard` the sinks check with when they open
    a stream and connect), and secret references ``secrets`` does not allow
    (workers check again when they read). Raises :class:`StreamConfigError`
    naming the stream and the field."""
    guard = OutboundGuard(allow_insecure)
    for stream_id, name, url in destination_urls(config):
        try:
            guard.check(url)
        except DestinationRefusedError as err:
            raise StreamConfigError(
                f"stream {stream_id!r}: destination refused ({name}): {err} "
                "(--allow_insecure_destinations allows it for development)",
                field=name,
            ) from None
    check_secret_refs(config, secrets or SecretPolicy())


def write_outputs(outputs: dict[str, beam.PCollection], output_dir: str, window_seconds: int | None = None,
                  document_chunks: bool = False) -> None:
    """Documents, dead letters and delivery results as JSON lines under
    ``output_dir``: sharded files at the end of a batch run, or a file per window
    of ``window_seconds`` in a streaming run. ``document_chunks``: the documents
    are :func:`build_pipeline`'s chunks (a batch run), written a chunk at a time."""
    base = output_dir.rstrip("/")
    if window_seconds is not None:
        encoders = {"event": orjson.dumps, "usage": orjson.dumps, "dead_letters": dead_letter_json,
                    "deliveries": delivery_json}
        for key, encode in encoders.items():
            if key in outputs:
                outputs[key] | f"Write[{key}]" >> WriteWindowedJsonLines(
                    f"{base}/{OUTPUT_PREFIXES[key]}", window_seconds, encode)
        return
    encode_documents = document_lines if document_chunks else orjson.dumps
    if "event" in outputs:
        outputs["event"] | "WriteEvents" >> WriteJsonLines(f"{base}/{OUTPUT_PREFIXES['event']}", encode_documents)
    if "usage" in outputs:
        outputs["usage"] | "WriteUsage" >> WriteJsonLines(f"{base}/{OUTPUT_PREFIXES['usage']}", encode_documents)
    outputs["dead_letters"] | "WriteDeadLetters" >> write_dead_letters(f"{base}/{OUTPUT_PREFIXES['dead_letters']}")
    if "deliveries" in outputs:
        outputs["deliveries"] | "WriteDeliveries" >> WriteJsonLines(
            f"{base}/{OUTPUT_PREFIXES['deliveries']}", encode=delivery_json
        )


def delivery_json(result: DeliveryResult) -> bytes:
    return orjson.dumps(result.to_dict())


def _clear_previous_outputs(output_dir: str) -> None:
    """Remove the shards and the summary a previous run wrote, so a run with fewer
    shards does not leave stale files beside its own, and a run that is stopped
    leaves no summary that looks like its own."""
    base = output_dir.rstrip("/")
    patterns = [f"{base}/{prefix}-*-of-*.jsonl" for prefix in OUTPUT_PREFIXES.values()] + [f"{base}/summary.json"]
    stale = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    if stale:
        FileSystems.delete(stale)


def _remove_temporary_files(output_dir: str, archive_location: str | None) -> None:
    """The file sinks' temporary files of a run that was interrupted (Ctrl-C): the
    ``beam-temp-*`` folders of the JSON-lines outputs and the archive's ``_temp``
    folder. A finished run removes its own."""
    base = output_dir.rstrip("/")
    folders = [f"{base}/beam-temp-*"] + [f"{base}/{folder}/beam-temp-*"
                                         for folder in sorted({p.split("/")[0] for p in OUTPUT_PREFIXES.values()})]
    if archive_location:
        folders.append(f"{archive_location.rstrip('/')}/_temp")
    files = sorted({m.path for result in FileSystems.match([f"{folder}/*" for folder in folders])
                    for m in result.metadata_list})
    if files:
        FileSystems.delete(files)
    # Object stores have no folders; a local disk keeps them, empty or not.
    for pattern in folders:
        if "://" not in pattern:
            for folder in glob.glob(pattern):
                shutil.rmtree(folder, ignore_errors=True)


def _parse_args(argv: list[str] | None) -> PipelineOptions:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.data_streamer",
        description=__doc__.split("\n\n")[0],
        epilog="Any other flag is a Beam pipeline option (--runner, --direct_num_workers, ...).",
    )
    for options_class in (InputOptions, ReferenceOptions, ProcessingOptions, StreamingOptions, DeliveryOptions,
                          ReliabilityOptions, ArchiveOptions, OutputOptions, RunOptions):
        options_class._add_argparse_args(parser)
    known, beam_args = parse_job_flags(parser, argv)
    return PipelineOptions(beam_args + as_flags(vars(known), parser=parser))


def job_graph(options: PipelineOptions) -> beam.Pipeline:
    """The job as :func:`run` submits it: the graph and the writers of its
    outputs, not yet run (``pipelines.submit --dry_run`` and the runner API
    tests build it too)."""
    pipeline = beam.Pipeline(options=options)
    streaming = is_streaming(options)
    window = options.view_as(StreamingOptions).output_window_seconds if streaming else None
    outputs = build_pipeline(pipeline, options, document_chunks=not streaming)
    write_outputs(outputs, options.view_as(OutputOptions).output_dir, window, document_chunks=not streaming)
    return pipeline


def _job_id(result: Any) -> str:
    """The runner's id of a submitted job (Dataflow's job id, the job service's
    invocation id), or "unknown"."""
    job_id = getattr(result, "job_id", None)
    if callable(job_id):
        return str(job_id())
    return str(getattr(result, "_job_id", None) or "unknown")


def run(argv: list[str] | None = None) -> RunSummary | None:
    """Parse flags, run the job to completion, write and print the summary;
    with ``--detach``, submit the job and return None. A streaming run runs
    until SIGTERM or ``--run_seconds``, then stops reading and drains
    (:func:`_stop_streaming`); its summary says how it ended. A job that fails
    raises :class:`PipelineFailedError` (main's exit status 1)."""
    options = _parse_args(argv)
    # The submitting machine reads the same locations as the workers (s3:// with
    # --s3_endpoint_url, gs://, ...) before any pipeline exists to configure them.
    FileSystems.set_options(options)
    validate(options)
    check_input_patterns(options)
    # Fail fast, on the submitting machine, with the loader's message naming the
    # bad file, row and field; workers load the same directory again.
    reference = load_reference_data(options.view_as(ReferenceOptions).reference_dir)
    _LOG.info("reference data: %s", reference.sizes())
    streams_config = options.view_as(DeliveryOptions).streams_config
    if streams_config:
        config = load_stream_config(streams_config, stream_limits(options))
        check_destinations(config, options.view_as(ReliabilityOptions).allow_insecure_destinations,
                           secret_policy(options))
        _LOG.info("streams: %d", len(config))
    output_dir = options.view_as(OutputOptions).output_dir
    _clear_previous_outputs(output_dir)
    streaming = is_streaming(options)

    pipeline = job_graph(options)
    runner = runner_name(options)  # before the run: some runners rewrite the options they were given
    archive = options.view_as(ArchiveOptions).archive_location
    detach = options.view_as(RunOptions).detach
    if streaming and not detach:
        _DRAINABLE.set()  # from now on SIGTERM drains the run instead of stopping it at once
    try:
        result = pipeline.run()
    except BaseException as error:
        if _INTERRUPTED.is_set():  # a blocking batch run (FnApiRunner) stopped midway
            _remove_temporary_files(output_dir, archive)
            # Again at exit: a bundle already under way on a runner thread may
            # still open a temporary file after the first pass.
            atexit.register(_remove_temporary_files, output_dir, archive)
            raise KeyboardInterrupt from None
        raise _failed(error) from error
    result = wrap_result(runner.rsplit(".", 1)[-1], result)
    if detach:
        job_id = _job_id(result)
        sys.stdout.write(f"submitted to the {runner}: job {job_id}, state {result.state}\n")
        return None
    drain = None
    if streaming:
        drain = _stop_streaming(result, options, runner)
    else:
        try:
            result.wait_until_finish()
        except BaseException as error:
            if not _INTERRUPTED.is_set():
                raise _failed(error) from error
            if not PipelineState.is_terminal(result.state):
                result.cancel()
            _remove_temporary_files(output_dir, archive)
            atexit.register(_remove_temporary_files, output_dir, archive)
            raise KeyboardInterrupt from None
        if result.state == PipelineState.FAILED:
            raise PipelineFailedError(None, "the runner reports the job FAILED (its log says why)")

    summary = summarize(result)
    summary.streaming = streaming
    summary.drain = drain
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


def _failed(error: BaseException) -> BaseException:
    """What a runner raised while running the job, as :class:`PipelineFailedError`
    (its step and error, for main's one line); a KeyboardInterrupt or SystemExit
    as it is. An error that names no step is not a DoFn's, which Beam has logged
    with its traceback already: its traceback is logged here."""
    if not isinstance(error, Exception):
        return error
    failure = describe_failure(error)
    if failure.step is None:
        _LOG.error("the runner raised", exc_info=error)
    return failure


def _stop_streaming(result: Any, options: PipelineOptions, runner: str) -> DrainReport:
    """Wait on a streaming run until SIGTERM, ``--run_seconds`` or its end; then
    stop its reads, drain it (``pipelines/drain.py``) and cancel it. Raises
    :class:`PipelineFailedError` when the job fails meanwhile."""
    stream_options = options.view_as(StreamingOptions)
    inputs = options.view_as(InputOptions)
    limit = stream_options.drain_seconds
    running = StreamingRun(result, stream_options.output_window_seconds)
    try:  # cancelled on every way out, Ctrl-C and failures too: a streaming job left running goes on for minutes
        reason = running.wait(stream_options.run_seconds, _TERMINATE)
        reads_stopped, seconds = False, 0.0
        if not reason.startswith("the runner"):
            subscriptions = [path for path in (inputs.events_subscription, inputs.usage_subscription) if path]
            reads_stopped = stop_reading(runner.rsplit(".", 1)[-1], subscriptions)
            if reads_stopped:
                sys.stdout.write(f"stopping ({reason}): stopped reading; draining what was read, for up to {limit} s\n")
            else:
                sys.stdout.write(f"stopping ({reason}): this process cannot stop the {runner}'s reads: "
                                 "cancelling now (drain with the runner's own tools, docs/streaming.md)\n")
            sys.stdout.flush()
            seconds = running.drain(reads_stopped, limit, _STOP_NOW)
    finally:
        running.cancel()
    return running.report(reason, reads_stopped, limit, seconds)


#: Set by Ctrl-C (SIGINT) while :func:`main` runs. Beam re-raises an exception
#: raised inside a DoFn as a RuntimeError naming the step, so a KeyboardInterrupt
#: that lands in the FnApiRunner's bundle processing arrives as one; this tells
#: the two apart.
_INTERRUPTED = threading.Event()


#: Set by :func:`run` once a SIGTERM should drain a streaming run instead of
#: stopping the job at once (a batch run, or before the job was submitted).
_DRAINABLE = threading.Event()
#: SIGTERM during a streaming run: stop reading, drain, then end.
_TERMINATE = threading.Event()
#: A second SIGTERM during the drain: end it now.
_STOP_NOW = threading.Event()
#: SIGTERM outside a streaming run's drain: stopped as Ctrl-C stops it.
_TERMINATED = threading.Event()

#: Exit statuses of :func:`main` (docs/configuration.md#exit-status).
EXIT_OK = 0
EXIT_FAILED = 1  # the job failed, or a finished run's counts do not reconcile
EXIT_USAGE = 2  # a bad flag, reference data or stream configuration
EXIT_IN_FLIGHT = 3  # a streaming run stopped with records in flight after its drain
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM outside a streaming run (128 + SIGTERM)


def _on_interrupt(signum: int, frame: Any) -> None:
    _INTERRUPTED.set()
    # What unwinds now is the stop itself: Beam would log every step it passes
    # through with a traceback. The one line of main() says what happened.
    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    raise KeyboardInterrupt


def _on_terminate(signum: int, frame: Any) -> None:
    """SIGTERM, what Kubernetes, systemd and supervisors send to stop a process:
    a streaming run drains (its wait loop sees the flag; a second SIGTERM ends
    the drain), anything else stops as on Ctrl-C."""
    if _DRAINABLE.is_set():
        if _TERMINATE.is_set():
            _STOP_NOW.set()
        _TERMINATE.set()
        return
    _TERMINATED.set()
    _on_interrupt(signum, frame)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for event in (_INTERRUPTED, _DRAINABLE, _TERMINATE, _STOP_NOW, _TERMINATED):
        event.clear()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main_thread:
        previous = {signal.SIGINT: signal.signal(signal.SIGINT, _on_interrupt),
                    signal.SIGTERM: signal.signal(signal.SIGTERM, _on_terminate)}
    try:
        summary = run(argv)
    except (OptionError, ReferenceDataError, StreamConfigError) as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_USAGE
    except BaseException as error:
        if _TERMINATED.is_set():
            sys.stderr.write("terminated: the job was stopped (SIGTERM); its outputs are incomplete\n")
            return EXIT_TERMINATED
        if _INTERRUPTED.is_set():
            sys.stderr.write("interrupted: the job was stopped; its outputs are incomplete\n")
            return EXIT_INTERRUPTED
        if isinstance(error, PipelineFailedError):
            sys.stderr.write(f"error: {error}\n")
            return EXIT_FAILED
        raise
    finally:
        _DRAINABLE.clear()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if summary is None:  # --detach: submitted
        return EXIT_OK
    if summary.drain is not None and not summary.drain.clean:
        return EXIT_IN_FLIGHT
    return EXIT_OK if summary.reconciled else EXIT_FAILED


if __name__ == "__main__":
    # Run the importable module rather than ``__main__``: what the job pickles
    # then refers to ``pipelines.data_streamer``, which workers import from the
    # installed package, instead of functions of a main session they do not have.
    from pipelines import data_streamer as _importable

    sys.exit(_importable.main())
