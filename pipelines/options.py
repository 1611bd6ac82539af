"""Pipeline options, one class per concern.

Every flag states its format and default in its help. :func:`validate` checks them
before the graph is built and raises an error naming the bad flag, so a typo fails
on the submitting machine instead of on a worker an hour later.
"""

from __future__ import annotations

import argparse
import difflib
import re
import urllib.parse

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from schemas.records import quote
from schemas.streams import DEFAULT_MAX_STREAMS, DEFAULT_MAX_STREAMS_PER_ORGANISATION, StreamLimits
from transforms.dedup import DEFAULT_HORIZON_SECONDS
from transforms.files import FORMATS, detect_format
from transforms.lateness import DEFAULT_ALLOWED_LATENESS_SECONDS
from transforms.parse import DEFAULT_MAX_RECORD_BYTES
from transforms.refresh import DEFAULT_REFRESH_SECONDS

DEFAULT_OUTPUT_WINDOW_SECONDS = 60
#: The largest --max_streams and --max_streams_per_organisation accepted; the
#: 16 MiB a configuration file may have holds some 60,000 streams anyway.
MAX_STREAMS_LIMIT = 1_000_000
#: How long a stopped streaming run may drain (SIGTERM, --run_seconds). A supervisor must wait
#: longer before it kills (Kubernetes' terminationGracePeriodSeconds, systemd's TimeoutStopSec):
#: docs/streaming.md.
DEFAULT_DRAIN_SECONDS = 30


class OptionError(ValueError):
    """A flag has a value the job cannot run with; the message names the flag."""


def as_flags(values: dict[str, object], skip: tuple[str, ...] = (),
             parser: argparse.ArgumentParser | None = None) -> list[str]:
    """Parsed flag values back into arguments for ``PipelineOptions``: unset ones
    dropped, booleans as bare flags (``--flag=False`` is not valid for them).
    ``parser`` names the flag of a destination that is not the flag's own name
    (``--pubsub_endpoint`` keeps its value in ``pubsub_root_url``)."""
    names = {action.dest: action.option_strings[0] for action in (parser._actions if parser else ())
             if action.option_strings}
    flags = []
    for key, value in values.items():
        if key in skip or value is None or value is False:
            continue
        name = names.get(key, f"--{key}")
        flags.append(name if value is True else f"{name}={value}")
    return flags


class InputOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--events_input",
            default=None,
            help="File pattern of raw network events (JSONL, Avro or Parquet; local, gs:// or s3://). "
            "Default: none (no events read).",
        )
        parser.add_argument(
            "--usage_input",
            default=None,
            help="File pattern of raw usage records (JSONL, Avro or Parquet). Default: none.",
        )
        parser.add_argument(
            "--input_format",
            default=None,
            choices=FORMATS,
            help="Format of both inputs. Default: detected from each pattern's extension "
            "(.jsonl/.ndjson/.json, .avro, .parquet).",
        )
        parser.add_argument(
            "--events_subscription",
            default=None,
            help="Pub/Sub subscription of raw network events, projects/<project>/subscriptions/<name>: a "
            "streaming run (needs --streaming). Default: none.",
        )
        parser.add_argument(
            "--usage_subscription",
            default=None,
            help="Pub/Sub subscription of raw usage records (streaming). Default: none.",
        )
        parser.add_argument(
            "--pubsub_timestamp_attribute",
            default=None,
            help="Message attribute with the record's event time (epoch millis or RFC 3339), when the "
            "publisher sets one: runners then estimate the watermark from event time instead of publish time. "
            "The record's own timestamp is the element's event time either way. Default: none.",
        )
        parser.add_argument(
            "--pubsub_expansion_service",
            default=None,
            help="Read Pub/Sub through Beam's cross-language (Java) PubsubIO expanded by this expansion service: "
            "host:port of a running one, a path to its jar, or 'auto' (Beam's GCP IO expansion service jar from "
            "Maven Central, run with local Java). Required for streaming on portable runners (Flink, "
            "PortableRunner): Python's own Pub/Sub read only runs on Dataflow and the DirectRunner. "
            "Default: none (Python's read).",
        )
        # The destination is the name Java's PubsubOptions.pubsubRootUrl is sent
        # under (Java camel-cases it); Beam's own Python --pubsub_root_url is sent
        # as pubsubRootUrl, which Java reads as pubsubrooturl and ignores.
        parser.add_argument(
            "--pubsub_endpoint",
            dest="pubsub_root_url",
            default=None,
            help="Root URL of the Pub/Sub API for the cross-language read (--pubsub_expansion_service): a "
            "regional endpoint such as https://europe-west3-pubsub.googleapis.com (messages stay in the region), "
            "a Private Service Connect endpoint, or an emulator's http://host:port. "
            "Default: Google's global endpoint.",
        )


class StreamingOptions(PipelineOptions):
    """Settings that only matter when the input is unbounded (Pub/Sub, ``--streaming``)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--allowed_lateness_seconds",
            type=int,
            default=DEFAULT_ALLOWED_LATENESS_SECONDS,
            help="How far behind the watermark a record may arrive and still be delivered (counted as late); "
            "older records are dead-lettered as too_late. At most --dedup_horizon_seconds. "
            f"Default: {DEFAULT_ALLOWED_LATENESS_SECONDS}.",
        )
        parser.add_argument(
            "--refresh_interval_seconds",
            type=int,
            default=DEFAULT_REFRESH_SECONDS,
            help="How often reference data, stream configurations and stream holds are re-read while "
            f"streaming; a change takes effect within one interval. Default: {DEFAULT_REFRESH_SECONDS}.",
        )
        parser.add_argument(
            "--refresh_subscription",
            default=None,
            help="Pub/Sub subscription whose messages trigger the refreshes instead of a PeriodicImpulse (a "
            "ticker, or storage notifications when reference files change). Required on the DirectRunner, "
            "where PeriodicImpulse cannot run beside ReadFromPubSub (seen with Beam 2.77). Default: none.",
        )
        parser.add_argument(
            "--output_window_seconds",
            type=int,
            default=DEFAULT_OUTPUT_WINDOW_SECONDS,
            help="Window of the streaming run's output files (documents, dead letters, deliveries) and "
            f"status updates. Default: {DEFAULT_OUTPUT_WINDOW_SECONDS}.",
        )
        parser.add_argument(
            "--run_seconds",
            type=int,
            default=None,
            help="Stop a streaming run after this many seconds (stop reading, drain as on SIGTERM, see "
            "--drain_seconds) and print its summary (local runs, demos). Default: run until cancelled or SIGTERM.",
        )
        parser.add_argument(
            "--drain_seconds",
            type=int,
            default=DEFAULT_DRAIN_SECONDS,
            help="When a streaming run is stopped (SIGTERM, --run_seconds): how long it may take, after it stopped "
            "reading, for every record read to be delivered, filtered, a duplicate, dead-lettered or parked, and the "
            "output window holding the last dead letter to be written, before it is cancelled; what is still in "
            "flight then is in the summary and the exit status is 3. On the local runner only (docs/streaming.md); "
            f"Flink and Dataflow drain with their own tools. Default: {DEFAULT_DRAIN_SECONDS}.",
        )


class RunOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--detach",
            action="store_true",
            default=False,
            help="Return as soon as the runner has accepted the job and print its id, without waiting or a summary "
            "(submitting to Flink or Dataflow). Default: off (wait, then print the summary).",
        )


class ReferenceOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--reference_dir",
            default=None,
            help="Directory with one file per reference entity, <entity>.{parquet,json,jsonl,csv} "
            "(see docs/formats.md). Required.",
        )


class ProcessingOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--dedup_horizon_seconds",
            type=int,
            default=DEFAULT_HORIZON_SECONDS,
            help="Event-time horizon within which a repeated record id is a duplicate, in seconds. "
            f"Default: {DEFAULT_HORIZON_SECONDS}.",
        )
        parser.add_argument(
            "--max_record_bytes",
            type=int,
            default=DEFAULT_MAX_RECORD_BYTES,
            help=f"Largest raw record accepted, in bytes; larger ones are dead-lettered as oversized. "
            f"Default: {DEFAULT_MAX_RECORD_BYTES}.",
        )


class ArchiveOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--archive_location",
            default=None,
            help="Where every valid raw record is archived in hourly Avro files for backfill (directory, gs:// "
            "or s3://). Default: none (no archive).",
        )


class OutputOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--output_dir",
            default="out",
            help="Where documents (events/, usage/), dead letters (dead_letters/) and summary.json go. "
            "Default: out.",
        )


class DeliveryOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--streams_config",
            default=None,
            help="JSON or YAML file of the customers' data streams (see docs/data-streams.md), or the portal's "
            "database (as --streams_db). Default: none (documents are only written under --output_dir).",
        )
        parser.add_argument(
            "--streams_db",
            dest="streams_config",
            default=None,
            help="The portal's stream store instead of a file: a SQLAlchemy URL (sqlite:///out/portal.db, "
            "postgresql+psycopg://user@host/db; docs/portal.md). Streams are read from it at start and at every "
            "refresh of a streaming run; status, deliveries and history markers are written back to it.",
        )
        parser.add_argument(
            "--max_buffering_seconds",
            type=int,
            default=5,
            help="Longest a document waits for a REST or Kinesis batch to fill, in seconds (1 to 300). Default: 5.",
        )
        parser.add_argument(
            "--http_connect_timeout",
            type=float,
            default=5.0,
            help="Connect timeout of REST and DataDog requests, in seconds. Default: 5.",
        )
        parser.add_argument(
            "--http_read_timeout",
            type=float,
            default=30.0,
            help="Read timeout of REST and DataDog requests, in seconds. Default: 30.",
        )
        parser.add_argument(
            "--rest_concurrency",
            type=int,
            default=8,
            help="Concurrent requests per worker and rest_api batch (1 to 64). Default: 8.",
        )
        parser.add_argument(
            "--max_streams",
            type=int,
            default=DEFAULT_MAX_STREAMS,
            help="Most data streams --streams_config may hold: every worker holds them all and re-reads them at "
            "each refresh. A larger configuration is refused at start (exit 2) and, edited later, at a refresh "
            f"(the last good one is kept). Default: {DEFAULT_MAX_STREAMS}.",
        )
        parser.add_argument(
            "--max_streams_per_organisation",
            type=int,
            default=DEFAULT_MAX_STREAMS_PER_ORGANISATION,
            help="Most data streams one organisation may have: each of its documents is routed, serialised and "
            "sent once per stream. Enforced like --max_streams. "
            f"Default: {DEFAULT_MAX_STREAMS_PER_ORGANISATION}.",
        )


class ReliabilityOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--max_attempts", type=int, default=5,
                            help="Requests per batch before it is parked (1 to 20). Default: 5.")
        parser.add_argument("--retry_deadline_seconds", type=float, default=30.0,
                            help="Longest a batch is retried before it is parked, seconds. Default: 30.")
        parser.add_argument("--retry_base_delay_seconds", type=float, default=0.5,
                            help="First backoff step; waits are full-jitter exponential. Default: 0.5.")
        parser.add_argument("--retry_max_delay_seconds", type=float, default=10.0,
                            help="Longest single backoff wait, seconds. Default: 10.")
        parser.add_argument("--deactivate_after_failures", type=int, default=3,
                            help="Consecutive failed batches after which a stream's circuit opens and its "
                            "documents are parked (a permanent error opens it at once). Default: 3.")
        parser.add_argument("--stream_budget_seconds", type=float, default=5.0,
                            help="Longest one batch of one stream may take, retries included, before it is "
                            "parked and the bundle goes on: the delay one dead destination can cause the other "
                            "streams, per failed batch (read timeouts are cut to it). Default: 5.")
        parser.add_argument("--stream_concurrency", type=int, default=16,
                            help="Streams whose batches a sink sends side by side, per worker (1 to 64). Default: 16.")
        parser.add_argument("--probe_initial_seconds", type=float, default=10.0,
                            help="After a stream's circuit opens, when its destination is first probed; each "
                            "failed probe doubles the wait. Default: 10.")
        parser.add_argument("--probe_max_seconds", type=float, default=300.0,
                            help="Longest wait between two probes of a failing destination. Default: 300.")
        parser.add_argument("--recovery_interval_seconds", type=int, default=5,
                            help="Streaming: how often open circuits are looked at, probed when due, and "
                            "recovered streams' parked batches delivered (0: never; re-drive by hand). Default: 5.")
        parser.add_argument("--park_location", default=None,
                            help="Durable store of parked batches: a directory, gs:// or s3:// path. "
                            "Default: <output_dir>/parked.")
        parser.add_argument("--status_location", default=None,
                            help="Where stream status records are kept (status.jsonl). Default: <output_dir>/status.")
        parser.add_argument("--park_retention_days", type=int, default=7,
                            help="Parked batches older than this are reported in the summary. Default: 7.")
        parser.add_argument("--allow_insecure_destinations", action="store_true", default=False,
                            help="DEVELOPMENT ONLY: allow http and destinations on loopback, private or "
                            "metadata addresses and raw IPs (run-local and tests). Default: off.")
        parser.add_argument("--secret_env_prefix", default="DATASTREAMER_",
                            help="Stream secrets given as {\"env\": NAME} may only name environment variables "
                            "starting with this prefix (the worker's other variables, its own credentials among "
                            "them, are never read). Default: DATASTREAMER_.")
        parser.add_argument("--secrets_dir", default=None,
                            help="Directory stream secrets given as {\"file\": PATH} must be inside (a relative PATH "
                            "is relative to it; links are followed and must stay inside). Default: none (file "
                            "secrets are refused).")


def validate(options: PipelineOptions) -> None:
    """Raise :class:`OptionError` naming the first bad flag."""
    inputs = options.view_as(InputOptions)
    streaming = is_streaming(options)
    if streaming:
        validate_streaming(options)
    elif not inputs.events_input and not inputs.usage_input:
        raise OptionError("--events_input or --usage_input: give at least one input file pattern")
    if inputs.input_format is None:
        for flag, pattern in (("--events_input", inputs.events_input), ("--usage_input", inputs.usage_input)):
            if pattern:
                try:
                    detect_format(pattern)
                except ValueError as err:
                    raise OptionError(f"{flag}: {err}") from None
    if not options.view_as(ReferenceOptions).reference_dir:
        raise OptionError("--reference_dir is required")
    processing = options.view_as(ProcessingOptions)
    if processing.dedup_horizon_seconds <= 0:
        raise OptionError("--dedup_horizon_seconds must be a positive number of seconds")
    if processing.max_record_bytes < 1024:
        raise OptionError("--max_record_bytes must be at least 1024")
    delivery = options.view_as(DeliveryOptions)
    if not 1 <= delivery.max_buffering_seconds <= 300:
        raise OptionError("--max_buffering_seconds must be between 1 and 300")
    if delivery.http_connect_timeout <= 0 or delivery.http_read_timeout <= 0:
        raise OptionError("--http_connect_timeout and --http_read_timeout must be positive")
    if not 1 <= delivery.rest_concurrency <= 64:
        raise OptionError("--rest_concurrency must be between 1 and 64")
    stream_limits(options)
    reliability = options.view_as(ReliabilityOptions)
    if not 1 <= reliability.max_attempts <= 20:
        raise OptionError("--max_attempts must be between 1 and 20")
    if not 0.5 <= reliability.stream_budget_seconds <= 600:
        raise OptionError("--stream_budget_seconds must be between 0.5 and 600")
    if not 1 <= reliability.stream_concurrency <= 64:
        raise OptionError("--stream_concurrency must be between 1 and 64")
    if not 0 < reliability.probe_initial_seconds <= reliability.probe_max_seconds:
        raise OptionError("--probe_initial_seconds must be positive and at most --probe_max_seconds")
    if reliability.recovery_interval_seconds < 0:
        raise OptionError("--recovery_interval_seconds must be 0 (off) or a positive number of seconds")
    if reliability.retry_deadline_seconds <= 0:
        raise OptionError("--retry_deadline_seconds must be positive")
    if not 0 < reliability.retry_base_delay_seconds <= reliability.retry_max_delay_seconds:
        raise OptionError("--retry_base_delay_seconds must be positive and at most --retry_max_delay_seconds")
    if reliability.deactivate_after_failures < 1:
        raise OptionError("--deactivate_after_failures must be at least 1")
    if reliability.park_retention_days < 1:
        raise OptionError("--park_retention_days must be at least 1")
    validate_secret_options(options)


def stream_limits(options: PipelineOptions) -> StreamLimits:
    """``--max_streams`` and ``--max_streams_per_organisation``, checked: every
    command that loads a stream configuration (the job, re-drive, backfill,
    historic) passes them to its loaders, the workers' included."""
    delivery = options.view_as(DeliveryOptions)
    for flag, value in (("--max_streams", delivery.max_streams),
                        ("--max_streams_per_organisation", delivery.max_streams_per_organisation)):
        if not 1 <= value <= MAX_STREAMS_LIMIT:
            raise OptionError(f"{flag} must be between 1 and {MAX_STREAMS_LIMIT:,}")
    return StreamLimits(delivery.max_streams, delivery.max_streams_per_organisation)


def validate_secret_options(options: PipelineOptions) -> None:
    """The secret flags every job that delivers shares (job, re-drive, backfill)."""
    reliability = options.view_as(ReliabilityOptions)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", reliability.secret_env_prefix or ""):
        raise OptionError("--secret_env_prefix must be a non-empty environment variable name prefix "
                          "(letters, digits, '_')")
    if reliability.secrets_dir is not None and not reliability.secrets_dir.strip():
        raise OptionError("--secrets_dir must not be empty")


def check_input_patterns(options: PipelineOptions) -> None:
    """Raise :class:`OptionError` when an input pattern matches no file.

    Beam's readers only notice while the graph is built or run, with a traceback
    dozens of lines long; a pattern that names nothing is a typo to report in one
    line, naming the flag (the job's exit status 2)."""
    inputs = options.view_as(InputOptions)
    for flag, pattern in (("--events_input", inputs.events_input), ("--usage_input", inputs.usage_input)):
        if not pattern:
            continue
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as err:  # noqa: BLE001 - any failure to list is the flag's problem, in one line
            raise OptionError(f"{flag}: cannot list {quote(pattern)}: {type(err).__name__}") from None
        if not matched:
            raise OptionError(f"{flag}: {quote(pattern)} matches no file")


_SUBSCRIPTION = re.compile(r"projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/subscriptions/[A-Za-z][-\w.~+%]{2,254}")


def is_streaming(options: PipelineOptions) -> bool:
    """A streaming run reads Pub/Sub subscriptions instead of files."""
    inputs = options.view_as(InputOptions)
    return bool(inputs.events_subscription or inputs.usage_subscription)


#: Runners on which Python's own ``ReadFromPubSub`` runs (it is a native source
#: that only these replace with a working implementation).
NATIVE_PUBSUB_RUNNERS = ("DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "DataflowRunner",
                         "TestDataflowRunner")


def runner_name(options: PipelineOptions) -> str:
    """The ``--runner`` as a class name (``DirectRunner`` when unset)."""
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    return runner if isinstance(runner, str) else type(runner).__name__


def validate_streaming(options: PipelineOptions) -> None:
    inputs = options.view_as(InputOptions)
    runner = runner_name(options).rsplit(".", 1)[-1]
    if runner not in NATIVE_PUBSUB_RUNNERS and not inputs.pubsub_expansion_service:
        raise OptionError(f"--pubsub_expansion_service is required to read Pub/Sub on the {runner}: Python's "
                          "ReadFromPubSub only runs on Dataflow and the DirectRunner; give the host:port of an "
                          "expansion service with Beam's GCP IO, its jar, or 'auto' (docs/runners.md)")
    if inputs.pubsub_root_url is not None:
        if not inputs.pubsub_expansion_service:
            raise OptionError("--pubsub_endpoint: only the cross-language read (--pubsub_expansion_service) takes "
                              "it; Python's read uses its client's endpoint (PUBSUB_EMULATOR_HOST for an emulator)")
        endpoint = urllib.parse.urlsplit(inputs.pubsub_root_url)
        if (endpoint.scheme not in ("http", "https") or not endpoint.hostname or endpoint.path not in ("", "/")
                or endpoint.username is not None or endpoint.query or endpoint.fragment):
            # The value is not echoed: a URL may carry credentials.
            raise OptionError("--pubsub_endpoint: expected https://host[:port] (http:// for an emulator), without "
                              "a path, credentials or query")
    if inputs.events_input or inputs.usage_input:
        raise OptionError("--events_input/--usage_input and --events_subscription/--usage_subscription: "
                          "a run reads files or Pub/Sub, not both (backfill reads the archive)")
    for flag, path in (("--events_subscription", inputs.events_subscription),
                       ("--usage_subscription", inputs.usage_subscription)):
        if path and not _SUBSCRIPTION.fullmatch(path):
            raise OptionError(f"{flag}: expected projects/<project>/subscriptions/<name>, got {path!r}")
    if not options.view_as(StandardOptions).streaming:
        raise OptionError("--events_subscription/--usage_subscription need --streaming")
    refresh = options.view_as(StreamingOptions).refresh_subscription
    if refresh and not _SUBSCRIPTION.fullmatch(refresh):
        raise OptionError(f"--refresh_subscription: expected projects/<project>/subscriptions/<name>, got {refresh!r}")
    if not refresh and runner in ("DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"):
        raise OptionError("--refresh_subscription is required on the DirectRunner: its streaming mode cannot run "
                          "PeriodicImpulse beside ReadFromPubSub (seen with Beam 2.77); publish a message to it every "
                          "refresh interval (make run-local-streaming does)")
    streaming = options.view_as(StreamingOptions)
    horizon = options.view_as(ProcessingOptions).dedup_horizon_seconds
    if not 0 <= streaming.allowed_lateness_seconds <= horizon:
        raise OptionError(f"--allowed_lateness_seconds must be between 0 and --dedup_horizon_seconds ({horizon}): "
                          "a record later than the de-duplication horizon could be delivered twice")
    if not 1 <= streaming.refresh_interval_seconds <= 86_400:
        raise OptionError("--refresh_interval_seconds must be between 1 and 86400")
    if not 1 <= streaming.output_window_seconds <= 3600:
        raise OptionError("--output_window_seconds must be between 1 and 3600")
    if not 0 <= streaming.drain_seconds <= 3600:
        raise OptionError("--drain_seconds must be between 0 and 3600")


def _option_classes() -> list[type[PipelineOptions]]:
    """Every ``PipelineOptions`` subclass loaded: Beam's (runners, IOs) and the job's."""
    found, todo = [], list(PipelineOptions.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.append(cls)
            todo.extend(cls.__subclasses__())
    return found


#: Options of Beam's Java Flink runner (``FlinkPipelineOptions``) that the Python
#: SDK declares no option class for: the portable runner forwards unknown flags to
#: the job server, which reads these. Named here so a typo in any other flag still
#: fails (docs/runners.md).
JAVA_RUNNER_FLAGS = frozenset({
    "--checkpointing_interval", "--checkpointing_mode", "--checkpoint_timeout_millis",
    "--min_pause_between_checkpoints", "--fail_on_checkpointing_errors", "--savepoint_path",
    "--allow_non_restored_state", "--state_backend", "--state_backend_storage_path",
    "--externalized_checkpoints_enabled", "--retain_externalized_checkpoints_on_cancellation",
    "--number_of_execution_retries", "--execution_retry_delay", "--object_reuse", "--auto_watermark_interval",
    "--shutdown_sources_after_idle_ms", "--latency_tracking_interval", "--finish_bundle_before_checkpointing",
})


def parse_job_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """``parser``'s flags and the rest as Beam pipeline options; an :class:`OptionError`
    for any flag that neither ``parser`` nor any Beam option class knows.

    Beam itself only logs "Discarding unparseable args" and runs on without the
    flag: a misspelled ``--streams_confg`` would run the job without streams and
    exit 0. The message carries the suggestion Beam's warning would have made."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser  # Beam's parser: it knows
    # value-provider arguments, which a plain ArgumentParser does not.

    known, beam_args = parser.parse_known_args(argv)
    beam_parser = _BeamArgumentParser(allow_abbrev=False, add_help=False)
    for cls in _option_classes():
        try:
            cls._add_argparse_args(beam_parser)
        except argparse.ArgumentError:
            continue  # an option two classes declare: the first one's is enough to know the flag
    _, unknown = beam_parser.parse_known_args(beam_args)
    flags = [arg for arg in unknown if arg.startswith("-") and arg.split("=", 1)[0] not in JAVA_RUNNER_FLAGS]
    if flags:
        names = [option for p in (parser, beam_parser) for action in p._actions for option in action.option_strings]
        name = flags[0].split("=", 1)[0]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]}?" if close else " (--help lists the job's flags)"
        raise OptionError(f"unknown flag {name[:80]}{hint}")
    return known, beam_args
