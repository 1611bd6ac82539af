"""``make run-flink-streaming``: ``make run-local-streaming`` on Apache Flink.

The streaming job runs the production path: Beam's ``FlinkRunner`` on
``--flink_master=[local]`` (a Flink mini-cluster inside Beam's Flink job server)
or on a cluster (``--flink_master=host:port``), reading the Pub/Sub emulator
through the cross-language read (Java's PubsubIO from Beam's expansion service,
in the ``EMBEDDED`` Java environment inside Flink's JVM), refresh ticks and
recovery ticks from ``PeriodicImpulse``, and checkpoints every
``--checkpointing_interval`` ms (PubsubIO acknowledges a message when the
checkpoint that holds it completes). The Python SDK workers come from an SDK
worker pool process (``EXTERNAL``).

Everything else is ``make run-local-streaming``: the sample fleet published at a
realistic pace, the local destinations, the report. Publishing starts once the
job runs on Flink (Flink's REST API says so: starting the job server, the
mini-cluster and the SDK workers takes a minute here) and goes on for
``--run_seconds``; then the harness sends itself a SIGTERM, as a supervisor
stops the job. The job's reads cannot be stopped from this process (on a cluster
that is ``flink stop --drain``), so the harness stops *publishing* instead
(registered as the run's read stopper), and the job drains what was published,
counted from Flink's REST API (``tools/flink/metrics.py``), before it is
cancelled.

    python -m tools.run_flink_streaming --sample_dir data/sample --output_dir out/flink-streaming
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from pathlib import Path

from pipelines.drain import register_read_stopper
from tools import run_local_streaming
from tools.flink.jars import JavaToolsError, launcher_jar
from tools.flink.metrics import start_when_running
from tools.flink.streaming import flink_streaming
from tools.local_streams import set_local_secrets
from tools.pubsub_emulator import PubSubEmulator
from tools.run_flink import DEFAULT_PARALLELISM
from tools.run_local_streaming import Publishing, RunnerSetup

#: The job stops by itself this long after ``--run_seconds`` if it never ran.
START_ALLOWANCE_SECONDS = 600
#: The drain: S3 files and DataDog points close when the watermark passes their
#: window, and Java PubsubIO's watermark reaches the clock only a minute after
#: the last message (``tools/flink/streaming.py``).
DRAIN_SECONDS = 180
#: Records published per second and kind by default: what Flink drained in time
#: on this two-core machine beside the emulator, moto and the receivers (10: exit
#: 0, every stream delivered, 92 s of drain; 50: S3 and DataDog still had 7,600
#: documents waiting for their windows after 180 s); run-local-streaming
#: publishes 150.
DEFAULT_RATE = 10.0


def flink_streaming_setup(flink_master: str, run_seconds: int,
                          parallelism: int = DEFAULT_PARALLELISM) -> RunnerSetup:
    """The Flink side of a run (:func:`tools.flink.streaming.flink_streaming`):
    publishing starts once the job runs on Flink; ``run_seconds`` later this
    process gets a SIGTERM, as a supervisor stops the job: the job stops the
    publishing (its registered read stopper), drains and exits."""

    def setup(running: contextlib.ExitStack, out: Path, emulator: PubSubEmulator, publishing: Publishing) -> list[str]:
        flink = flink_streaming(running, out, emulator.url, flink_master, parallelism)
        sys.stdout.write(f"Flink {flink_master} through Beam's Flink job server (REST {flink.rest_url}); SDK worker "
                         f"pool on {flink.pool.address}; Java expansion service on {flink.expansion.address}\n")
        register_read_stopper(["FlinkRunner"], lambda _subscriptions: publishing.stop())

        def publish_then_stop() -> None:
            publishing.start()
            sys.stdout.write(f"the job runs on Flink: publishing for {run_seconds} s\n")
            stop = threading.Timer(run_seconds, signal.raise_signal, (signal.SIGTERM,))
            stop.daemon = True
            stop.start()
            running.callback(stop.cancel)

        start_when_running(flink.rest_url, publish_then_stop)
        return [*flink.flags, f"--run_seconds={run_seconds + START_ALLOWANCE_SECONDS}",
                f"--drain_seconds={DRAIN_SECONDS}"]

    return setup


def main(argv: list[str] | None = None) -> int:
    args, job_args = run_local_streaming.parse_args("python -m tools.run_flink_streaming",
                                                    __doc__.split("\n\n")[0], argv, default_rate=DEFAULT_RATE)
    master, parallelism = "[local]", DEFAULT_PARALLELISM
    for arg in list(job_args):
        if arg.startswith("--flink_master="):
            master = arg.split("=", 1)[1]
            job_args.remove(arg)
        elif arg.startswith("--parallelism="):
            parallelism = int(arg.split("=", 1)[1])
            job_args.remove(arg)
    try:
        launcher_jar()  # fetch the jars before anything starts, with a clear error
    except JavaToolsError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    set_local_secrets()  # the workers read the local destinations' secrets from their environment
    setup = flink_streaming_setup(master, args.run_seconds, parallelism)
    return run_local_streaming.stream_sample_fleet(args, job_args, setup)


if __name__ == "__main__":
    sys.exit(main())
