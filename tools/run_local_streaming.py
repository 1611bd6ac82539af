"""``make run-local-streaming``: the streaming job on this machine, for a bounded time.

Starts the Pub/Sub emulator (gcloud; it needs Java) and the local destinations of
``make run-local`` (an HTTP receiver, moto's server), creates the raw topics and
subscriptions, publishes the sample fleet's records at a realistic pace with their
times moved to now (so they are on time for the watermark), and ticks the refresh
topic. Runs the streaming job (``ReadFromPubSub`` on the DirectRunner) for
``--run_seconds``, then stops it (it stops reading and drains what it read, for up
to :data:`DRAIN_SECONDS`), prints what each destination received, the run's
counts and the stream status, and shuts everything down. If gcloud, its
Pub/Sub emulator or Java is missing it says what to install.

    python -m tools.run_local_streaming --sample_dir data/sample --output_dir out/streaming
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tools import local_job
from tools.local_streams import INTERRUPTED, LocalDestinations, Progress
from tools.pubsub_emulator import (
    EmulatorStartError,
    EmulatorToolsError,
    PacedPublisher,
    PubSubEmulator,
    Ticker,
    check_tools,
    create_topic_and_subscription,
)

REFRESH_SECONDS = 20
#: The drain at the end of the run: its S3 files and DataDog points rotate every
#: 30 s (:func:`_streaming_streams`) and close with the clock, which took 25 s of
#: the job's default 30 here; twice that leaves room on a busy machine.
DRAIN_SECONDS = 60


def _streaming_streams(streams: list[dict]) -> None:
    """run-local's streams, with S3 files and DataDog points every 30 s so a short
    run sees them rotate, and without the history stream (its live data would
    only be held)."""
    streams[:] = [stream for stream in streams if not stream.get("historic_data")]
    for stream in streams:
        if stream["api_type"] == "aws_s3":
            stream.setdefault("batching", {})["rotation_seconds"] = 30
        if stream["api_type"] == "datadog":
            stream["batching"]["metrics_interval_seconds"] = 30


class Publishing:
    """The paced publishers of a run's raw records, started and stopped together."""

    def __init__(self, publishers: list[PacedPublisher]) -> None:
        self.publishers = publishers
        self._lock = threading.Lock()
        self._started = False

    def start(self) -> None:
        with self._lock:
            if not self._started:
                self._started = True
                for publisher in self.publishers:
                    publisher.start()

    def stop(self) -> None:
        # All told to stop first, so that their waits for what is in flight overlap.
        for publisher in self.publishers:
            publisher.stop(timeout=0)
        for publisher in self.publishers:
            publisher.stop()

    @property
    def published(self) -> int:
        return sum(p.published for p in self.publishers)


#: What a runner adds to a streaming run of the sample fleet: given the run's
#: resources (closed at its end), the output directory, the emulator and the
#: publishing (which it starts when the job can read), it starts what the runner
#: needs and returns the job's runner flags.
RunnerSetup = Callable[[contextlib.ExitStack, Path, PubSubEmulator, Publishing], list[str]]


def parse_args(prog: str, description: str, argv: list[str] | None,
               default_rate: float = 150.0) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--sample_dir", default="data/sample", help="Sample fleet directory. Default: data/sample.")
    parser.add_argument("--output_dir", default="out/streaming", help="Job outputs. Default: out/streaming.")
    parser.add_argument("--run_seconds", type=int, default=90, help="How long the job runs. Default: 90.")
    parser.add_argument("--rate", type=float, default=default_rate,
                        help=f"Records published per second and kind. Default: {default_rate:g}.")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, job_args = parse_args("python -m tools.run_local_streaming", __doc__.split("\n\n")[0], argv)
    return stream_sample_fleet(args, job_args)


def stream_sample_fleet(args: argparse.Namespace, job_args: list[str], runner: RunnerSetup | None = None) -> int:
    """The run of :func:`main`, on the local streaming runner (refresh ticks from
    a Pub/Sub topic, publishing from the start) or on what ``runner`` sets up
    (``PeriodicImpulse`` ticks; it starts the publishing)."""
    try:
        check_tools()
    except EmulatorToolsError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    sample = Path(args.sample_dir)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as running:
            emulator = running.enter_context(PubSubEmulator(work_dir=out / "emulator"))
            local = running.enter_context(LocalDestinations(sample, out, adjust=_streaming_streams))
            project = emulator.project
            subscriptions = {name: create_topic_and_subscription(project, f"raw-{name}", f"datastreamer-{name}")
                             for name in ("events", "usage", "refresh")}
            publishing = Publishing([
                PacedPublisher(project, f"raw-{kind}", (sample / "raw" / f"{kind}.jsonl").read_bytes().splitlines(),
                               "event" if kind == "events" else "usage", rate=args.rate, restamp=True)
                for kind in ("events", "usage")])
            running.callback(publishing.stop)  # before the emulator stops, on every way out
            if runner is None:
                # Several ticks per interval, so the lateness gate's heartbeats keep coming.
                running.enter_context(Ticker(project, "raw-refresh", REFRESH_SECONDS / 4))
                runner_flags = [f"--refresh_subscription={subscriptions['refresh']}"]
                publishing.start()
            else:
                runner_flags = runner(running, out, emulator, publishing)
            sys.stdout.write(f"streaming for {args.run_seconds} s: Pub/Sub emulator {emulator.host}, "
                             f"{args.rate:.0f} records/s per kind\n")
            sys.stdout.flush()
            with Progress(local):
                code = local_job.main([
                    "--streaming",
                    f"--events_subscription={subscriptions['events']}",
                    f"--usage_subscription={subscriptions['usage']}",
                    f"--refresh_interval_seconds={REFRESH_SECONDS}",
                    f"--run_seconds={args.run_seconds}",
                    f"--reference_dir={sample / 'reference'}",
                    f"--streams_config={local.config_path}",
                    f"--output_dir={out}",
                    f"--archive_location={out / 'archive'}",
                    "--output_window_seconds=10",
                    f"--drain_seconds={DRAIN_SECONDS}",
                    *runner_flags,  # after the defaults: a runner may change them
                    *job_args,
                ])
            if code == INTERRUPTED:  # the job said so; the rest stops on the way out
                return code
            publishing.stop()
            published = publishing.published
            sys.stdout.write(local.report())
            sys.stdout.write(f"  published {published} raw records; stream config: {local.config_path}\n")
    except (EmulatorStartError, EmulatorToolsError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"interrupted: stopped the job, the publishers, the emulator and the destinations "
                         f"after {time.monotonic() - started:.0f} s; outputs under {out} are incomplete\n")
        return INTERRUPTED
    sys.stdout.write(f"  stopped the job, the emulator and the destinations; took {time.monotonic() - started:.0f} s\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
