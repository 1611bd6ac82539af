"""Flink on this machine: Beam's Flink job server, the Java expansion service of
the cross-language Pub/Sub read, and a standalone Flink cluster (a JobManager
and TaskManagers, each its own JVM), all from the class path of
:mod:`tools.flink.jars`.

- :class:`FlinkJobServer`: ``FlinkJobServerDriver``, the Job API endpoint a job
  reaches with ``--runner=PortableRunner --job_endpoint=...``; it runs jobs on
  ``[local]`` (a Flink mini-cluster in its own JVM) or submits them to a cluster's
  REST endpoint. (``--runner=FlinkRunner --flink_job_server_jar=<launcher jar>``
  starts the same process itself.)
- :class:`ExpansionService`: Beam's Java expansion service with Beam's GCP IO,
  which expands ``ReadFromPubSub`` into Java's PubsubIO. Its transforms get the
  ``EMBEDDED`` Java environment: Flink runs them inside its own JVM, on the same
  class path, where Beam's default (a Docker container of Beam's Java SDK) cannot
  run here.
- :class:`StandaloneCluster`: ``StandaloneSessionClusterEntrypoint`` (the
  JobManager, REST on ``rest_port``) and ``TaskManagerRunner`` processes, the
  ones Flink's ``start-cluster.sh`` starts, with a config directory of their own
  (checkpoints and HA-less recovery settings below). A TaskManager can be killed
  (``kill -9``) and another started, as a supervisor would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.data_streamer import USE_DEPRECATED_READ
from tools.flink.jars import (
    EXPANSION_SERVICE_MAIN,
    JOB_SERVER_MAIN,
    classpath,
    java,
    java17_flags,
    launcher_jar,
)
from tools.processes import PortService, ServiceStartError, free_port, log_tail, stop_group

#: Slots per TaskManager; the job's parallelism is at most slots x TaskManagers.
DEFAULT_SLOTS = 2
#: Longest wait for one answer of the JobManager's REST API.
REST_TIMEOUT_SECONDS = 20.0
JOBMANAGER_MAIN = "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint"
TASKMANAGER_MAIN = "org.apache.flink.runtime.taskexecutor.TaskManagerRunner"


class FlinkJobServer(PortService):
    """Beam's Flink job server on a free port; jobs run on ``flink_master``
    (``[local]``: a mini-cluster inside this JVM; ``host:port``: a cluster)."""

    name = "Flink job server"

    def __init__(self, flink_master: str = "[local]", *, port: int | None = None,
                 env: Mapping[str, str] | None = None, log_path: str | os.PathLike[str] | None = None,
                 artifacts_dir: str | os.PathLike[str] | None = None) -> None:
        port = port or free_port()
        self.artifacts_dir = Path(artifacts_dir or tempfile.mkdtemp(prefix="flink-artifacts-"))
        command = [java(), *java17_flags(), "-jar", str(launcher_jar(JOB_SERVER_MAIN)),
                   f"--flink-master={flink_master}", f"--job-port={port}", f"--artifact-port={free_port()}",
                   "--expansion-port=0", f"--artifacts-dir={self.artifacts_dir}"]
        super().__init__(command, port, env=env, log_path=log_path, startup_timeout=120.0)


class ExpansionService(PortService):
    """Beam's Java expansion service (GCP IO on its class path) on a free port,
    giving the Java transforms it expands the ``EMBEDDED`` environment and
    primitive reads (``pipelines.data_streamer.USE_DEPRECATED_READ``, as ``auto`` has)."""

    name = "Java expansion service"

    def __init__(self, *, port: int | None = None, log_path: str | os.PathLike[str] | None = None) -> None:
        port = port or free_port()
        command = [java(), *java17_flags(), "-jar", str(launcher_jar(EXPANSION_SERVICE_MAIN)), str(port),
                   "--defaultEnvironmentType=EMBEDDED", f"--experiments={USE_DEPRECATED_READ}"]
        super().__init__(command, port, log_path=log_path, startup_timeout=120.0)


def _flink_config(directory: Path, rest_port: int, rpc_port: int, slots: int) -> str:
    """``flink-conf.yaml`` of a one-machine cluster: loopback addresses, memory
    sized for this 2-core machine, file checkpoints, and restarts that keep
    trying while a TaskManager is replaced."""
    settings = {
        "jobmanager.rpc.address": "localhost",
        "jobmanager.rpc.port": rpc_port,
        "jobmanager.bind-host": "localhost",
        "rest.address": "localhost",
        "rest.bind-address": "localhost",
        "rest.port": rest_port,
        "taskmanager.host": "localhost",
        "taskmanager.bind-host": "localhost",
        "taskmanager.numberOfTaskSlots": slots,
        "jobmanager.memory.process.size": "1024m",
        "taskmanager.memory.process.size": "3072m",
        # The batch job's graph has many exchanges; Flink's default (10 % of the
        # process, ~110 MB here) is 3,500 buffers; 256 MB (8,192) was still too few for it
        # at parallelism 2 (each of its ~300 tasks asks for 512).
        "taskmanager.memory.network.min": "1g",
        "taskmanager.memory.network.max": "1g",
        "parallelism.default": 1,
        # A TaskManager killed with -9 is noticed within 15 s (the default, 50 s,
        # leaves a crashed job waiting most of a minute before it restarts).
        "heartbeat.interval": 3000,
        "heartbeat.timeout": 15000,
        "state.checkpoints.dir": (directory / "checkpoints").as_uri(),
        "state.savepoints.dir": (directory / "savepoints").as_uri(),
        "state.checkpoints.num-retained": 2,
        # A killed TaskManager is replaced by its supervisor (here: the test); until
        # then the job waits between attempts instead of failing for good.
        "restart-strategy.type": "exponential-delay",
        "restart-strategy.exponential-delay.initial-backoff": "1 s",
        "restart-strategy.exponential-delay.max-backoff": "10 s",
        "restart-strategy.exponential-delay.attempts-before-reset-backoff": 1000,
        "env.java.opts.all": " ".join(java17_flags()),
    }
    return "".join(f"{key}: {value}\n" for key, value in settings.items())


class StandaloneCluster:
    """A Flink session cluster of one JobManager and ``taskmanagers`` TaskManager
    processes on localhost; ``with`` starts it and stops every process.

    ``directory`` holds its config, logs, checkpoints and savepoints (a temporary
    directory unless given). :attr:`master` is what ``--flink_master`` takes.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, taskmanagers: int = 1,
                 slots: int = DEFAULT_SLOTS, rest_port: int | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="flink-cluster-")).resolve()
        self.rest_port = rest_port or free_port()
        self.rpc_port = free_port()
        self.slots = slots
        self.taskmanager_count = taskmanagers
        self.env = dict(os.environ if env is None else env)
        self.jobmanager: subprocess.Popen[bytes] | None = None
        self.taskmanagers: list[subprocess.Popen[bytes]] = []

    @property
    def master(self) -> str:
        return f"localhost:{self.rest_port}"

    @property
    def config_dir(self) -> Path:
        return self.directory / "conf"

    @property
    def log_dir(self) -> Path:
        return self.directory / "log"

    def _resource_params(self, kind: str) -> tuple[list[str], list[str]]:
        """JVM flags and ``-D`` settings of a JobManager (``JM``) or TaskManager
        (``TM``), worked out from the config's memory sizes by Flink's own
        ``BashJavaUtils``, as ``jobmanager.sh``/``taskmanager.sh`` do."""
        result = subprocess.run(
            [java(), "-cp", os.pathsep.join(map(str, classpath())), "org.apache.flink.runtime.util.bash.BashJavaUtils",
             f"GET_{kind}_RESOURCE_PARAMS", "--configDir", str(self.config_dir)],
            capture_output=True, text=True, check=False)
        lines = [line.split(":", 1)[1] for line in result.stdout.splitlines()
                 if line.startswith("BASH_JAVA_UTILS_EXEC_RESULT:")]
        if result.returncode != 0 or len(lines) != 2:
            raise ServiceStartError(f"Flink's BashJavaUtils could not size the {kind} (exit {result.returncode}):\n"
                                    f"{(result.stdout + result.stderr)[-2000:]}")
        return lines[0].split(), lines[1].split()

    def _spawn(self, main_class: str, name: str) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}.log"
        jvm, settings = self._resource_params("JM" if main_class == JOBMANAGER_MAIN else "TM")
        command = [java(), *java17_flags(), *jvm, "-cp", os.pathsep.join(map(str, classpath())),
                   f"-Dlog.file={log}", main_class, "--configDir", str(self.config_dir), *settings]
        with log.open("ab") as handle:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                    env=self.env, start_new_session=True)

    def start(self) -> StandaloneCluster:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "flink-conf.yaml").write_text(
            _flink_config(self.directory, self.rest_port, self.rpc_port, self.slots))
        try:
            self.jobmanager = self._spawn(JOBMANAGER_MAIN, "jobmanager")
            self._wait(lambda: self.overview() is not None, "the JobManager's REST endpoint", 120.0)
            for _ in range(self.taskmanager_count):
                self.start_taskmanager()
        except BaseException:
            self.stop()
            raise
        return self

    def start_taskmanager(self, timeout: float = 120.0, wait: bool = True) -> subprocess.Popen[bytes]:
        """Start one more TaskManager and wait until the JobManager counts it
        (``wait``; after a kill the JobManager may still count the dead one)."""
        expected = self.registered_taskmanagers() + 1
        process = self._spawn(TASKMANAGER_MAIN, f"taskmanager-{len(self.taskmanagers)}")
        self.taskmanagers.append(process)
        if wait:
            self._wait(lambda: self.registered_taskmanagers() >= expected, "a TaskManager to register", timeout,
                       process)
        return process

    def kill_taskmanager(self, index: int = -1) -> int:
        """``kill -9`` one TaskManager JVM (its SDK workers, in its process group,
        too); returns its pid."""
        process = self.taskmanagers.pop(index)
        os.killpg(process.pid, 9)
        process.wait()
        return process.pid

    def _wait(self, ready: Any, what: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for proc, name in ((self.jobmanager, "jobmanager"), (process, "taskmanager")):
                if proc is not None and proc.poll() is not None:
                    raise ServiceStartError(f"the Flink {name} exited with status {proc.returncode} while waiting "
                                            f"for {what}; logs in {self.log_dir}:\n"
                                            f"{log_tail(self.log_dir / f'{name}.log')}")
            if time.monotonic() > deadline:
                raise ServiceStartError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {self.log_dir}")
            time.sleep(0.5)

    def rest(self, path: str) -> Any:
        """GET ``path`` of the JobManager's REST API (JSON), ``None`` while it is
        down. A JobManager that is up answers within ``REST_TIMEOUT_SECONDS`` even
        at nice 19 on a loaded machine; a shorter wait read a slow answer as "down"."""
        try:
            with urllib.request.urlopen(f"http://{self.master}{path}", timeout=REST_TIMEOUT_SECONDS) as response:
                return json.load(response)
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            return None

    def overview(self) -> dict[str, Any] | None:
        return self.rest("/overview")

    def registered_taskmanagers(self) -> int:
        overview = self.overview() or {}
        return int(overview.get("taskmanagers", 0))

    def jobs(self) -> list[dict[str, Any]]:
        return (self.rest("/jobs/overview") or {}).get("jobs", [])

    def checkpoints(self, job_id: str) -> dict[str, Any] | None:
        """The job's checkpoint statistics (``counts``, ``latest``), ``None`` without an answer."""
        return self.rest(f"/jobs/{job_id}/checkpoints")

    def stop(self) -> None:
        for process in [*self.taskmanagers, self.jobmanager]:
            if process is not None and process.poll() is None:
                stop_group(process, 10.0)
        self.taskmanagers, self.jobmanager = [], None
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> StandaloneCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
