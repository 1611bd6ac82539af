"""The crash target of the local streaming runner: the job as ``make
run-local-streaming`` runs it (``tools.local_job`` on the BundleBasedDirectRunner
with the workarounds of ``tools/direct_runner``), in a process of its own.

The DirectRunner runs the whole job in that one process and does not restart it:
so the process is what :meth:`DirectRunnerTarget.kill` kills, and
:meth:`~DirectRunnerTarget.recover` starts a new one on the same subscriptions
and output directory, as an operator or a supervisor (systemd, Kubernetes)
would. Each process journals its Pub/Sub acknowledgements
(:mod:`tools.crash.journal`), so the report can say which lost records the
killed process had acknowledged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools.crash import Acknowledgements, JobSpec, Killed, Stopped
from tools.crash.journal import Journal, read_journal
from tools.processes import log_tail
from tools.pubsub_emulator import EMULATOR_HOST_ENV, PROJECT_ENV

ROOT = Path(__file__).resolve().parents[2]
#: How long a job process may take to start reading Pub/Sub (about 5 s on an
#: idle 2-CPU machine, 15 s beside another job).
STARTUP_TIMEOUT_SECONDS = 180.0
#: Beyond the job's drain, how long a SIGTERM'd job may take to print its
#: summary and exit before it is killed.
EXIT_GRACE_SECONDS = 60.0


def acknowledgements(journal: Journal) -> Acknowledgements:
    return Acknowledgements(pulled=dict(journal.events.get("pulled", {})),
                            sent=dict(journal.events.get("ack-sent", {})),
                            confirmed=dict(journal.events.get("acked", {})),
                            read=dict(journal.events.get("read", {})))


class DirectRunnerTarget:
    """``make run-local-streaming``'s job as a process; killed with SIGKILL to
    its process group, restarted by starting another."""

    name = "the DirectRunner (BundleBasedDirectRunner, make run-local-streaming)"

    def __init__(self, flags: Sequence[str] = (), startup_timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
        #: Further job flags, after the harness's.
        self.flags = list(flags)
        self.startup_timeout = startup_timeout
        self._job: JobSpec | None = None
        self._process: subprocess.Popen[bytes] | None = None
        #: (process, its log, its journal) of every job process started, in order.
        self.processes: list[tuple[subprocess.Popen[bytes], Path, Path]] = []

    def start(self, job: JobSpec) -> None:
        """Start the job process and return once it reads Pub/Sub: its journal
        has a first pull (the refresh ticks are there from the start)."""
        self._job = job
        self._launch()
        _, _, journal = self.processes[-1]
        deadline = time.monotonic() + self.startup_timeout
        while not read_journal(journal).ids("pulled"):
            if (problem := self.problem()) is not None:
                raise RuntimeError(problem)
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the job process did not read Pub/Sub within {self.startup_timeout:.0f} s")
            time.sleep(0.2)

    def _launch(self) -> None:
        assert self._job is not None
        job = self._job
        number = len(self.processes) + 1
        log, journal = job.work_dir / f"job-{number}.log", job.work_dir / f"job-{number}.acks"
        command = [sys.executable, "-m", "tools.crash.job", f"--ack_journal={journal}", *job.job_flags(),
                   *self.flags]
        env = {**os.environ, EMULATOR_HOST_ENV: job.emulator_host, PROJECT_ENV: job.project,
               "PYTHONUNBUFFERED": "1"}
        with log.open("ab") as handle:
            # Its own session: the kill reaches the job and nothing else.
            self._process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=handle,
                                             stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.processes.append((self._process, log, journal))

    def problem(self) -> str | None:
        if self._process is None or self._process.poll() is None:
            return None
        log = self.processes[-1][1]
        return (f"the job process {self._process.pid} exited with status {self._process.returncode}; "
                f"end of {log}:\n{log_tail(log, 40)}")

    def kill(self) -> Killed:
        process, _, journal = self.processes[-1]
        at = time.time()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return Killed("the job process", process.pid, at, acknowledgements(read_journal(journal)))

    def recover(self) -> str:
        self._launch()
        assert self._process is not None
        return f"started a new job process (pid {self._process.pid}) on the same subscriptions"

    def stop(self) -> Stopped:
        """SIGTERM, as a supervisor stops the job: it stops reading, drains and
        writes its summary; SIGKILL if it has not ended in time."""
        process = self._process
        if process is None:
            return Stopped("no job was started")
        self._process = None
        if process.poll() is not None:
            return Stopped(f"the job process had exited with status {process.returncode}", process.returncode)
        assert self._job is not None
        os.killpg(process.pid, signal.SIGTERM)
        try:
            status = process.wait(timeout=self._job.drain_seconds + EXIT_GRACE_SECONDS)
            how = f"SIGTERM: the job drained and exited with status {status}"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            status = process.wait()
            how = "SIGTERM, then SIGKILL: the job did not exit in time"
        return Stopped(how, status, self._summary())

    def _summary(self) -> dict[str, Any] | None:
        assert self._job is not None
        path = self._job.output_dir / "summary.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def journals(self) -> list[Journal]:
        """The acknowledgement journal of every job process, in order."""
        return [read_journal(journal) for _, _, journal in self.processes]
