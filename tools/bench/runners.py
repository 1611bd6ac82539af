"""The runners ``make bench`` measures the job on, by name.

- ``local``: the local runner of the run's kind (:mod:`tools.runners`: the
  FnApiRunner for batch, the BundleBasedDirectRunner for streaming), the job in
  one process (``tools.local_job``).
- ``flink``: Beam's FlinkRunner on ``[local]``, the Flink mini-cluster inside
  Beam's Flink job server, exactly as ``make run-flink`` and ``make
  run-flink-streaming`` run it: the job server JVM from the launcher jar of
  :mod:`tools.flink.jars`, the Python SDK workers from a worker pool process
  (:class:`tools.portable.WorkerPool`). The measured command is this module's
  :func:`main`, which starts the pool, runs the job through ``tools.local_job``
  and stops the pool, so every process of the run (submitter, JVM, pool, SDK
  workers) is a descendant of the one command the bench times: its CPU and RSS
  are the run's. A streaming run (``--streaming`` among the job's flags) gets
  what :func:`tools.flink.streaming.flink_streaming` starts and flags: the Java
  expansion service of the cross-language Pub/Sub read (a descendant too),
  ``--pubsub_endpoint`` of the emulator the environment names
  (``PUBSUB_EMULATOR_HOST``), checkpoints, and a REST port of the mini-cluster,
  written to ``<--flink_dir>/rest_url`` for the bench to watch the job
  (:func:`tools.flink.metrics.job_running`). ``--program trivial`` runs the
  streaming bench's trivial pipeline (``tools/bench/trivial.py``) there instead
  of the job.

A :class:`BenchRunner` says which kinds of job the bench measures on it: both
run the batch and the streaming job. The streaming bench
(``tools/bench/streaming.py``) starts its sessions with
:meth:`BenchRunner.command` for each runner of ``selected(..., streaming=True)``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.runners import BATCH, STREAMING


@dataclass(frozen=True)
class BenchRunner:
    """One runner the bench can measure the job on."""

    name: str
    #: how reports name it
    label: str
    #: what runs the job on it: ``python <entry> <job flags>``
    entry: tuple[str, ...]
    #: whether the streaming job runs on it (the streaming bench's runners)
    streaming: bool
    #: how reports name it in the streaming bench, when not ``label``
    streaming_label: str | None = None

    def command(self, job_args: Sequence[str]) -> list[str]:
        """The command that runs the job with ``job_args`` on this runner."""
        return [sys.executable, *self.entry, *job_args]

    def unavailable(self) -> str | None:
        """Why it cannot run on this machine (a missing tool), else None."""
        if self.name != FLINK.name:
            return None
        from tools.flink.jars import JavaToolsError, launcher_jar

        try:
            launcher_jar()  # Java, Maven and the jars (fetched the first time, ~300 MB)
        except JavaToolsError as err:
            return str(err)
        return None


LOCAL = BenchRunner("local", BATCH.rsplit(".", 1)[-1], ("-m", "tools.local_job"), streaming=True,
                    streaming_label=STREAMING)
FLINK = BenchRunner("flink", "Flink [local]", ("-m", "tools.bench.runners", "flink"), streaming=True)
RUNNERS = {runner.name: runner for runner in (LOCAL, FLINK)}
#: Under ``--flink_dir``: the REST URL of a streaming run's mini-cluster, once it is known.
REST_URL_FILE = "rest_url"


def selected(names: str, streaming: bool = False) -> list[BenchRunner]:
    """The runners of a ``--runners`` value (``local,flink``), in that order;
    for the streaming bench only those the streaming job runs on."""
    runners = []
    for name in (part.strip() for part in names.split(",")):
        if not name:
            continue
        if name not in RUNNERS:
            raise ValueError(f"unknown runner {name!r}: choose from {', '.join(RUNNERS)}")
        runners.append(RUNNERS[name])
    return [runner for runner in runners if runner.streaming or not streaming]


def run_on_flink(job_args: Sequence[str], pool_log: str | None = None, flink_dir: str | None = None,
                 program: str = "job") -> int:
    """The job on Flink ``[local]`` with a worker pool of its own, started and
    stopped here (in the measured process tree), like ``make run-flink``
    without its local destinations: the bench brings its own receiver. With
    ``--streaming`` among ``job_args``, as ``make run-flink-streaming`` runs it
    (:func:`_stream_on_flink`)."""
    from tools import local_job
    from tools.portable import WorkerPool
    from tools.run_flink import flink_flags

    if "--streaming" in job_args:
        return _stream_on_flink(job_args, Path(flink_dir or tempfile.mkdtemp(prefix="bench-flink-")), program)
    with WorkerPool(env=os.environ, log_path=pool_log) as pool:
        return local_job.main([*job_args, *flink_flags("[local]", pool)])


def _stream_on_flink(job_args: Sequence[str], flink_dir: Path, program: str) -> int:
    """A streaming run on Flink ``[local]``: the worker pool and the expansion
    service started here, the Pub/Sub emulator of ``PUBSUB_EMULATOR_HOST`` as
    the cross-language read's endpoint, the mini-cluster's REST URL written to
    ``flink_dir`` as soon as it is chosen (the job starts a minute later)."""
    from tools import local_job
    from tools.flink.streaming import flink_streaming

    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not host:
        sys.stderr.write("error: a streaming run on Flink reads the Pub/Sub emulator that PUBSUB_EMULATOR_HOST "
                         "names, and it is not set\n")
        return 2
    flink_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as running:
        flink = flink_streaming(running, flink_dir, f"http://{host}")
        (flink_dir / REST_URL_FILE).write_text(flink.rest_url)
        if program == "trivial":
            from tools.bench import trivial

            return trivial.main([*job_args, *flink.flags])
        return local_job.main([*job_args, *flink.flags])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tools.bench.runners flink [--worker_pool_log PATH] [--flink_dir DIR]
    [--program job|trivial] <job flags>``."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench.runners")
    parser.add_argument("runner", choices=[FLINK.name])
    parser.add_argument("--worker_pool_log", help="Batch: where the worker pool and its SDK workers log.")
    parser.add_argument("--flink_dir", help="Streaming: the services' logs, Flink's config and the REST URL "
                        f"({REST_URL_FILE}). Default: a temporary directory.")
    parser.add_argument("--program", choices=("job", "trivial"), default="job",
                        help="Streaming: the job, or the streaming bench's trivial pipeline. Default: job.")
    args, job_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return run_on_flink(job_args, args.worker_pool_log, args.flink_dir, args.program)


if __name__ == "__main__":
    sys.exit(main())
