"""``make submit-flink`` and ``make submit-dataflow``: the streaming job on a cluster.

Each subcommand turns a few deployment settings into the flags its runner needs,
checks them before anything is contacted, and submits ``pipelines.data_streamer``
detached (it prints the job id and returns; the job runs until cancelled)::

    python -m pipelines.submit flink --flink_master flink-jobmanager:8081 \\
        --events_subscription projects/p/subscriptions/raw-events \\
        --usage_subscription projects/p/subscriptions/raw-usage \\
        --reference_dir gs://b/reference --streams_config gs://b/streams.json --output_dir gs://b/out

    python -m pipelines.submit dataflow --project p --region europe-west1 --temp_location gs://b/tmp \\
        --events_subscription ... --usage_subscription ... --reference_dir ... --streams_config ... \\
        --output_dir gs://b/out

What both pass: ``--streaming``; ``--setup_file`` (this repository's setup.py:
workers install the job's packages from it); ``--job_name`` (default
``datastreamer``; an in-place update must reuse it, and the job's transform labels
are stable between builds, tests/unit/test_runner_api.py); ``--detach``. Flink also
gets its SDK worker environment, a checkpoint interval (Pub/Sub messages are
acknowledged when a checkpoint completes) and the cross-language Pub/Sub read
(``--pubsub_expansion_service``); Dataflow gets Streaming Engine and
``--update``. Any other flag is passed to the job as is (``python -m
pipelines.data_streamer --help``; Beam's runner options).

``--dry_run`` prints the flags and builds the job graph, without submitting.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

SETUP_FILE = str(Path(__file__).resolve().parent.parent / "setup.py")
DEFAULT_JOB_NAME = "datastreamer"
#: Flink: the SDK worker pool sidecar of each TaskManager (apache/beam_python3.11_sdk --worker_pool).
DEFAULT_FLINK_ENVIRONMENT = ("EXTERNAL", "localhost:50000")
DEFAULT_CHECKPOINT_MS = 60_000
_DATAFLOW_JOB_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
#: Locations every worker must share: a path on one machine's disk would split
#: parked batches and stream status across workers, and vanish with them.
_LOCATION_FLAGS = ("reference_dir", "streams_config", "output_dir", "archive_location", "park_location",
                   "status_location")


class SubmitError(ValueError):
    """A deployment setting is missing or unusable; the message names the flag."""


def _common(parser: argparse.ArgumentParser) -> None:
    job = parser.add_argument_group("the job")
    job.add_argument("--events_subscription",
                     help="Pub/Sub subscription of raw events, projects/<p>/subscriptions/<s>.")
    job.add_argument("--usage_subscription", help="Pub/Sub subscription of raw usage records.")
    job.add_argument("--reference_dir", required=True, help="Reference data directory (gs://, s3://, ...).")
    streams = job.add_mutually_exclusive_group(required=True)
    streams.add_argument("--streams_config", help="Data streams file (gs://, s3://, ...).")
    streams.add_argument("--streams_db", help="The portal's stream store instead of a file: a PostgreSQL URL every "
                                              "worker reaches (postgresql+psycopg://user@host/db; docs/portal.md).")
    job.add_argument("--output_dir", required=True,
                     help="Dead letters, delivery results, parked batches and stream status (gs://, s3://, ...).")
    job.add_argument("--archive_location", help="Raw archive for backfill (gs://, s3://, ...). Default: none.")
    job.add_argument("--park_location", help="Parked batches. Default: <output_dir>/parked.")
    job.add_argument("--status_location", help="Stream status. Default: <output_dir>/status.")
    job.add_argument("--job_name", default=DEFAULT_JOB_NAME,
                     help=f"Job name; an update or savepoint restore reuses it. Default: {DEFAULT_JOB_NAME}.")
    job.add_argument("--dry_run", action="store_true", help="Print the flags and build the graph; do not submit.")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.submit", description=__doc__.split("\n\n")[0],
                                     epilog="Other flags go to the job (python -m pipelines.data_streamer --help).")
    runners = parser.add_subparsers(dest="runner", required=True)

    flink = runners.add_parser("flink", help="Submit to a Flink cluster.")
    _common(flink)
    target = flink.add_mutually_exclusive_group(required=True)
    target.add_argument("--flink_master", help="Flink REST endpoint host:port: Beam's FlinkRunner starts a Flink "
                        "job server for the submission (java; the jar comes from Maven Central or "
                        "--flink_job_server_jar).")
    target.add_argument("--job_endpoint", help="host:port of a running Beam Flink job server "
                        "(apache/beam_flink<version>_job_server); submitted with the PortableRunner.")
    flink.add_argument("--environment_type", default=DEFAULT_FLINK_ENVIRONMENT[0],
                       choices=("EXTERNAL", "DOCKER", "PROCESS"),
                       help=f"Where TaskManagers run the Python SDK workers. Default: {DEFAULT_FLINK_ENVIRONMENT[0]} "
                       "(a worker pool sidecar).")
    flink.add_argument("--environment_config", default=None,
                       help=f"The worker pool address (EXTERNAL; default {DEFAULT_FLINK_ENVIRONMENT[1]}), the SDK "
                       "image (DOCKER; default Beam's for this Python) or the boot command (PROCESS, JSON).")
    flink.add_argument("--parallelism", type=int, default=None, help="Flink parallelism. Default: the cluster's.")
    flink.add_argument("--checkpointing_interval_ms", type=int, default=DEFAULT_CHECKPOINT_MS,
                       help="Checkpoint interval; Pub/Sub acknowledges on checkpoints, so without them messages are "
                       f"redelivered. Default: {DEFAULT_CHECKPOINT_MS}.")
    flink.add_argument("--pubsub_expansion_service", default="auto",
                       help="Expansion service of the cross-language Pub/Sub read: host:port, a jar, or 'auto' "
                       "(Beam's GCP IO expansion service jar from Maven Central, run with local Java). Default: auto.")

    dataflow = runners.add_parser("dataflow", help="Submit to Google Cloud Dataflow.")
    _common(dataflow)
    dataflow.add_argument("--project", required=True, help="Google Cloud project.")
    dataflow.add_argument("--region", required=True, help="Dataflow region, e.g. europe-west1.")
    dataflow.add_argument("--temp_location", required=True, help="gs:// path for temporary and staged files.")
    dataflow.add_argument("--service_account_email", default=None,
                          help="Worker service account. Default: the project's Compute Engine default.")
    dataflow.add_argument("--max_num_workers", type=int, default=None, help="Autoscaling ceiling.")
    dataflow.add_argument("--update", action="store_true",
                          help="Replace the running job of the same --job_name in place, keeping its state.")
    return parser


def _check_common(args: argparse.Namespace) -> None:
    if not args.events_subscription and not args.usage_subscription:
        raise SubmitError("--events_subscription or --usage_subscription: a streaming job reads at least one")
    for flag in _LOCATION_FLAGS:
        value = getattr(args, flag)
        if value and "://" not in value:
            raise SubmitError(f"--{flag}: {value!r} is a local path; every worker must reach it, so give a shared "
                              "file system URL (gs://, s3://, hdfs://)")
    if args.streams_db and not args.streams_db.split("://", 1)[0].split("+", 1)[0].startswith("postgres"):
        raise SubmitError("--streams_db: every worker must reach the stream store: a PostgreSQL URL "
                          "(postgresql+psycopg://...), not a file of one machine's disk")


def _job_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--streaming", f"--job_name={args.job_name}", f"--setup_file={SETUP_FILE}", "--detach"]
    for flag in ("events_subscription", "usage_subscription", *_LOCATION_FLAGS, "streams_db"):
        value = getattr(args, flag)
        if value:
            flags.append(f"--{flag}={value}")
    return flags


def flink_flags(args: argparse.Namespace) -> list[str]:
    """The job's flags for Flink, from the ``flink`` subcommand's arguments."""
    _check_common(args)
    if args.flink_master:
        # The job goes to the cluster as an uber jar through its REST API: a
        # detached launcher would otherwise exit, taking the job server it
        # started along, before that job server had handed the job over (seen
        # with Beam 2.62: the launcher printed RUNNING, the cluster had no job).
        flags = ["--runner=FlinkRunner", f"--flink_master={args.flink_master}", "--flink_submit_uber_jar"]
    else:
        flags = ["--runner=PortableRunner", f"--job_endpoint={args.job_endpoint}"]
    config = args.environment_config
    if config is None and args.environment_type == "EXTERNAL":
        config = DEFAULT_FLINK_ENVIRONMENT[1]
    flags.append(f"--environment_type={args.environment_type}")
    if config:
        flags.append(f"--environment_config={config}")
    if args.parallelism:
        flags.append(f"--parallelism={args.parallelism}")
    if args.checkpointing_interval_ms <= 0:
        raise SubmitError("--checkpointing_interval_ms must be positive: Pub/Sub acknowledges on checkpoints")
    flags += [f"--checkpointing_interval={args.checkpointing_interval_ms}",
              f"--pubsub_expansion_service={args.pubsub_expansion_service}"]
    return flags + _job_flags(args)


def dataflow_flags(args: argparse.Namespace) -> list[str]:
    """The job's flags for Dataflow, from the ``dataflow`` subcommand's arguments."""
    _check_common(args)
    if not _DATAFLOW_JOB_NAME.fullmatch(args.job_name):
        raise SubmitError(f"--job_name: Dataflow job names are lower-case letters, digits and '-', starting with a "
                          f"letter, got {args.job_name!r}")
    for flag in ("temp_location", *_LOCATION_FLAGS):
        value = getattr(args, flag)
        if value and not value.startswith("gs://") and flag != "streams_config":
            raise SubmitError(f"--{flag}: Dataflow workers need a gs:// path, got {value!r}")
    flags = ["--runner=DataflowRunner", f"--project={args.project}", f"--region={args.region}",
             f"--temp_location={args.temp_location}", "--enable_streaming_engine"]
    if args.service_account_email:
        flags.append(f"--service_account_email={args.service_account_email}")
    if args.max_num_workers:
        flags.append(f"--max_num_workers={args.max_num_workers}")
    if args.update:
        flags.append("--update")
    return flags + _job_flags(args)


def runner_flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse a submit command line; return its arguments and the job's full flags."""
    args, extra = _parser().parse_known_args(argv)
    build = flink_flags if args.runner == "flink" else dataflow_flags
    return args, build(args) + extra


def build_graph(flags: list[str]) -> Any:
    """The job graph these flags submit (a ``beam.Pipeline``, not run): what
    ``--dry_run`` and the runner API tests build."""
    from pipelines import data_streamer
    from pipelines.options import validate

    # Beam's own dry-run flag: Dataflow's option validation otherwise asks GCS
    # about the temp bucket while the graph is built.
    options = data_streamer._parse_args([*flags, "--dry_run=True"])
    validate(options)
    return data_streamer.job_graph(options)


def main(argv: list[str] | None = None) -> int:
    from pipelines import data_streamer
    from pipelines.options import OptionError
    from schemas.streams import StreamConfigError
    from transforms.reference import ReferenceDataError

    try:
        args, flags = runner_flags(sys.argv[1:] if argv is None else argv)
    except SubmitError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    sys.stdout.write("python -m pipelines.data_streamer \\\n    " + " \\\n    ".join(flags) + "\n")
    try:
        if args.dry_run:
            graph = build_graph(flags).to_runner_api()
            sys.stdout.write(f"dry run: built the graph, {len(graph.components.transforms)} transforms; "
                             "not submitted\n")
            return 0
        return data_streamer.main(flags)
    except (OptionError, ReferenceDataError, StreamConfigError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    except RuntimeError as err:
        # Beam raises RuntimeError when an expansion service or job server cannot be
        # started or reached (no Java, no Maven Central, a wrong host:port).
        sys.stderr.write(f"error: {err}\n(the expansion service or job server: see docs/runners.md)\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
