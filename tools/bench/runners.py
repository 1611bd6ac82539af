"""The runners ``make bench`` measures the job on, by name.

- ``local``: the local runner of the run's kind (:mod:`tools.runners`: the
  FnApiRunner for batch), the job in one process (``tools.local_job``).
- ``flink``: Beam's FlinkRunner on ``[local]``, the Flink mini-cluster inside
  Beam's Flink job server, exactly as ``make run-flink`` runs it
  (:func:`tools.run_flink.flink_flags`): the job server JVM from the launcher jar
  of :mod:`tools.flink.jars`, the Python SDK workers from a worker pool process
  (:class:`tools.portable.WorkerPool`). The measured command is this module's
  :func:`main`, which starts the pool, runs the job through ``tools.local_job``
  and stops the pool, so every process of the run (submitter, JVM, pool, SDK
  workers) is a descendant of the one command the bench times: its CPU and RSS
  are the run's.

A :class:`BenchRunner` says which kinds of job the bench measures on it: on
Flink, the batch job only, so far. For the streaming job on Flink beside the
local one: ``streaming=True`` on ``FLINK``, :func:`run_on_flink` adding the
streaming job's Flink flags when its arguments have ``--streaming`` (the
expansion service of the cross-language Pub/Sub read, checkpointing), and the
streaming bench (``tools/bench/streaming.py``) starting its job session with
:meth:`BenchRunner.command` for each runner of ``selected(..., streaming=True)``
instead of its one local command (``Session.command``), as the batch part does.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from tools.runners import BATCH


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


LOCAL = BenchRunner("local", BATCH.rsplit(".", 1)[-1], ("-m", "tools.local_job"), streaming=True)
FLINK = BenchRunner("flink", "Flink [local]", ("-m", "tools.bench.runners", "flink"), streaming=False)
RUNNERS = {runner.name: runner for runner in (LOCAL, FLINK)}


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


def run_on_flink(job_args: Sequence[str], pool_log: str | None = None) -> int:
    """The job on Flink ``[local]`` with a worker pool of its own, started and
    stopped here (in the measured process tree), like ``make run-flink``
    without its local destinations: the bench brings its own receiver."""
    from tools import local_job
    from tools.portable import WorkerPool
    from tools.run_flink import flink_flags

    with WorkerPool(env=os.environ, log_path=pool_log) as pool:
        return local_job.main([*job_args, *flink_flags("[local]", pool)])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tools.bench.runners flink [--worker_pool_log PATH] <job flags>``."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench.runners")
    parser.add_argument("runner", choices=[FLINK.name])
    parser.add_argument("--worker_pool_log", help="Where the worker pool and its SDK workers log.")
    args, job_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return run_on_flink(job_args, args.worker_pool_log)


if __name__ == "__main__":
    sys.exit(main())
