"""The crash target of Flink: the streaming job submitted to a standalone Flink
cluster (:class:`tools.flink.services.StandaloneCluster`: a JobManager and a
TaskManager, each its own JVM), the TaskManager killed with ``kill -9``.

Flink restarts the job by itself from its last completed checkpoint once a
TaskManager offers slots again (the cluster restarts jobs with exponential
delay, without a limit), so :meth:`FlinkClusterTarget.recover` only does what a
supervisor would: it starts a new TaskManager, then waits until the job runs
again. Java's PubsubIO acknowledges a message when the checkpoint that holds it
completes, so what the killed TaskManager had read since the last checkpoint is
read again (duplicates, counted), and nothing acknowledged is lost.

The job is submitted (``tools.flink.job``, a launcher that waits on it) with the Flink flags of
:func:`tools.flink.streaming.flink_streaming`: the SDK worker pool and the Java
expansion service are this target's, outside the TaskManager, as a TaskManager's
sidecar would be. The refresh ticks come from ``PeriodicImpulse``: the job gets
no ``--refresh_subscription``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools.crash import JobSpec, Killed, Stopped
from tools.flink.services import StandaloneCluster
from tools.flink.streaming import flink_streaming
from tools.local_streams import set_local_secrets
from tools.processes import log_tail, stop_group
from tools.pubsub_emulator import EMULATOR_HOST_ENV, PROJECT_ENV

ROOT = Path(__file__).resolve().parents[2]
#: Submitting (the job server starts, the graph is expanded and staged) and the
#: job's tasks running, on a loaded two-core machine.
STARTUP_TIMEOUT_SECONDS = 420.0
#: The job running again after the kill: the JobManager notices the TaskManager
#: gone within its heartbeat timeout (15 s), restarts with up to 10 s of delay,
#: and the new TaskManager's tasks and SDK workers start.
RECOVERY_TIMEOUT_SECONDS = 300.0
CHECKPOINT_MS = 5_000
#: Longest the JobManager may go without answering while it is up (each request
#: waits ``REST_TIMEOUT_SECONDS``).
ANSWER_TIMEOUT_SECONDS = 60.0


class FlinkClusterTarget:
    """The streaming job on a standalone cluster; the TaskManager is killed."""

    name = "Flink (a standalone cluster; kill -9 of its TaskManager JVM)"

    def __init__(self, parallelism: int = 2, checkpoint_ms: int = CHECKPOINT_MS,
                 startup_timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
        self.parallelism = parallelism
        self.checkpoint_ms = checkpoint_ms
        self.startup_timeout = startup_timeout
        self._stack = contextlib.ExitStack()
        self._cluster: StandaloneCluster | None = None
        self._job_id: str | None = None
        self._log: Path | None = None
        self._launcher: subprocess.Popen[bytes] | None = None
        #: completed checkpoints before the kill, and the one the job restored
        self.checkpoints_before_kill = 0
        self.restored_checkpoint: int | None = None

    def start(self, job: JobSpec) -> None:
        set_local_secrets()  # the SDK workers read the local destinations' credentials from their environment
        cluster = self._stack.enter_context(StandaloneCluster(job.work_dir / "flink-cluster"))
        self._cluster = cluster
        flink = flink_streaming(self._stack, job.work_dir, f"http://{job.emulator_host}", cluster.master,
                                self.parallelism, self.checkpoint_ms)
        flags = [flag for flag in job.job_flags() if not flag.startswith("--refresh_subscription")]
        self._log = job.work_dir / "submit.log"
        env = {**os.environ, EMULATOR_HOST_ENV: job.emulator_host, PROJECT_ENV: job.project, "PYTHONUNBUFFERED": "1"}
        with self._log.open("ab") as handle:
            # Not --detach: the launcher's job server hands the job to the cluster
            # after the launcher's run() returned, and a detached launcher exits
            # (taking its job server along) before the cluster has the job. It
            # stays until the job is cancelled, as a launcher waiting on its job.
            self._launcher = subprocess.Popen(
                [sys.executable, "-m", "tools.flink.job", *flink.flags, *flags], cwd=ROOT,
                stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._stack.callback(self._stop_launcher)
        self._wait_running(self.startup_timeout, "the job to run on the cluster")

    def _stop_launcher(self) -> None:
        if self._launcher is not None and self._launcher.poll() is None:
            stop_group(self._launcher, 60.0)

    def _job(self) -> dict[str, Any] | None:
        assert self._cluster is not None
        jobs = self._cluster.jobs()
        if not jobs:
            return None
        job = max(jobs, key=lambda j: j["start-time"])
        self._job_id = job["jid"]
        return job

    def _running(self) -> bool:
        job = self._job()
        return job is not None and _all_running(job)

    def _wait_running(self, timeout: float, what: str) -> None:
        self._wait_for(self._running, timeout, what)

    def _wait_for(self, ready: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll ``ready`` every second until it returns something true, and return that;
        raises the job's problem, or after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not (value := ready()):
            if (problem := self.problem()) is not None:
                raise RuntimeError(problem)
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}: {self._job()}")
            time.sleep(1.0)
        return value

    def _restored(self) -> dict[str, Any] | None:
        """The checkpoint the job restored (Flink's ``latest.restored``), if it has."""
        assert self._cluster is not None and self._job_id is not None
        return ((self._cluster.checkpoints(self._job_id) or {}).get("latest") or {}).get("restored")

    def problem(self) -> str | None:
        if self._launcher is not None and self._launcher.poll() is not None and self._job() is None:
            return (f"the launcher exited with status {self._launcher.returncode} before the cluster had the job; "
                    f"end of {self._log}:\n{log_tail(self._log, 40)}")  # type: ignore[arg-type]
        job = self._job() if self._cluster is not None else None
        if job is not None and job["state"] in ("FAILED", "CANCELED", "FINISHED"):
            return f"the job on the cluster is {job['state']}; logs in {self._cluster.log_dir}"  # type: ignore[union-attr]
        return None

    def kill(self) -> Killed:
        assert self._cluster is not None and self._job_id is not None
        cluster, job_id = self._cluster, self._job_id
        stats = self._wait_for(lambda: cluster.checkpoints(job_id), ANSWER_TIMEOUT_SECONDS,
                               "the JobManager to answer before the kill")
        self.checkpoints_before_kill = int(stats.get("counts", {}).get("completed", 0))
        at = time.time()
        pid = self._cluster.kill_taskmanager()
        return Killed("the TaskManager JVM", pid, at)

    def recover(self) -> str:
        assert self._cluster is not None and self._job_id is not None
        process = self._cluster.start_taskmanager(wait=False)
        started = time.monotonic()
        # The job first fails over, then runs again. Only an answer of the
        # JobManager tells: one that did not answer has not shown the failover.
        deadline = started + RECOVERY_TIMEOUT_SECONDS
        restored = None
        if self.checkpoints_before_kill:
            restored = self._wait_for(lambda: self._running() and self._restored(), RECOVERY_TIMEOUT_SECONDS,
                                      "the job to restore a checkpoint and run again")
        else:
            # Nothing to restore from: its tasks seen leaving RUNNING, then running again.
            while time.monotonic() < started + 60 and ((job := self._job()) is None or _all_running(job)):
                time.sleep(0.5)
            self._wait_running(max(1.0, deadline - time.monotonic()), "the job to run again after the kill")
        self.restored_checkpoint = restored.get("id") if restored else None
        return (f"started a new TaskManager (pid {process.pid}); Flink restarted the job from checkpoint "
                f"{self.restored_checkpoint} ({self.checkpoints_before_kill} completed before the kill) and it "
                f"ran again {time.monotonic() - started:.0f} s later")

    def stop(self) -> Stopped:
        how = "no job was submitted"
        jobs = _jobs_json(self._cluster)
        if self._cluster is not None and self._job_id is not None:
            request = urllib.request.Request(f"http://{self._cluster.master}/jobs/{self._job_id}?mode=cancel",
                                             method="PATCH")
            try:
                with urllib.request.urlopen(request, timeout=10):
                    pass
                how = "cancelled on the cluster (Flink's own drain is stop --drain with a savepoint)"
            except OSError as err:
                how = f"cancelling failed: {err}"
        self._stack.close()
        return Stopped(how, None, jobs)


def _all_running(job: dict[str, Any]) -> bool:
    return job["state"] == "RUNNING" and job["tasks"]["running"] == job["tasks"]["total"]


def _jobs_json(cluster: StandaloneCluster | None) -> dict[str, Any] | None:
    if cluster is None:
        return None
    return json.loads(json.dumps({"jobs": cluster.jobs()}))
