"""Pipeline options, one class per concern.

Every flag states its format and default in its help. :func:`validate` checks them
before the graph is built and raises an error naming the bad flag, so a typo fails
on the submitting machine instead of on a worker an hour later.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.dedup import DEFAULT_HORIZON_SECONDS
from transforms.files import FORMATS, detect_format
from transforms.parse import DEFAULT_MAX_RECORD_BYTES


class OptionError(ValueError):
    """A flag has a value the job cannot run with; the message names the flag."""


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


class ReferenceOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--reference_dir",
            default=None,
            help="Directory with one file per reference entity, <entity>.{parquet,json,jsonl,csv} "
            "(see README). Required.",
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


class OutputOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--output_dir",
            default="out",
            help="Where documents (events/, usage/), dead letters (dead_letters/) and summary.json go. "
            "Default: out.",
        )


def validate(options: PipelineOptions) -> None:
    """Raise :class:`OptionError` naming the first bad flag."""
    inputs = options.view_as(InputOptions)
    if not inputs.events_input and not inputs.usage_input:
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
