"""Beam's portable runner on this machine: a job service and a worker pool, each
its own process.

- :class:`JobService` runs ``python -m
  apache_beam.runners.portability.local_job_service_main``: the Job API that a
  Flink job server exposes too, backed by Beam's portable (FnApi) runner. A job
  reaches it with ``--runner=PortableRunner --job_endpoint=localhost:PORT``.
- :class:`WorkerPool` runs Beam's SDK worker pool
  (``apache_beam.runners.worker.worker_pool_main``), the process a Flink
  TaskManager talks to with ``--environment_type=EXTERNAL`` (on Kubernetes: the
  ``apache/beam_python3.11_sdk --worker_pool`` sidecar). Its workers are separate
  processes, so a job run through it proves what workers need: the code importable
  from the installed package, every DoFn and side input picklable, clients made
  in ``setup`` and secrets read from the workers' own environment. Each worker
  starts as in Beam's SDK container, with the job's pipeline options
  (:mod:`tools.sdk_boot`).

:func:`portable_flags` gives the flags that submit a job to them.
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tools.processes import PortService, free_port

ROOT = Path(__file__).resolve().parent.parent
#: Environment types a job submitted to the local job service can use.
ENVIRONMENTS = ("EXTERNAL", "LOOPBACK")


class JobService(PortService):
    """Beam's local job service on ``127.0.0.1`` and a free port."""

    name = "Beam job service"

    def __init__(self, port: int | None = None, *, staging_dir: str | os.PathLike[str] | None = None,
                 log_path: str | os.PathLike[str] | None = None) -> None:
        port = port or free_port()
        command = [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", str(port)]
        if staging_dir is not None:
            command += ["--staging_dir", str(staging_dir)]
        super().__init__(command, port, log_path=log_path)


def boot_executable() -> Path:
    """An executable that starts a worker as Beam's SDK container does
    (:mod:`tools.sdk_boot`), for the pool's ``--container_executable`` (a path,
    so a small script; made once per process, in a temporary directory)."""
    global _BOOT
    if _BOOT is None or not _BOOT.exists():
        directory = Path(tempfile.mkdtemp(prefix="beam-sdk-boot-"))
        _BOOT = directory / "boot"
        _BOOT.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT))}${{PYTHONPATH:+:$PYTHONPATH}} "
                         f"exec {shlex.quote(sys.executable)} -m tools.sdk_boot \"$@\"\n")
        _BOOT.chmod(0o755)
        atexit.register(shutil.rmtree, directory, True)
    return _BOOT


_BOOT: Path | None = None


class WorkerPool(PortService):
    """Beam's Python SDK worker pool on a free port. ``env`` is the environment of
    its workers (where stream secrets referenced as ``{"env": ...}`` are read);
    by default this process's."""

    name = "Beam worker pool"

    def __init__(self, port: int | None = None, *, env: Mapping[str, str] | None = None,
                 log_path: str | os.PathLike[str] | None = None) -> None:
        port = port or free_port()
        worker_env = dict(os.environ if env is None else env)
        # The workers' ``python`` is the one of this virtual environment, where
        # the job's package is installed.
        venv_bin = str(Path(sys.executable).parent)
        worker_env["PATH"] = os.pathsep.join([venv_bin, worker_env.get("PATH", "")])
        command = [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port", str(port),
                   f"--container_executable={boot_executable()}"]
        super().__init__(command, port, env=worker_env, log_path=log_path)


def portable_flags(job_service: JobService, worker_pool: WorkerPool | None = None) -> list[str]:
    """``--runner=PortableRunner`` flags for a job on ``job_service``: its SDK
    workers come from ``worker_pool`` (``EXTERNAL``), else from the submitting
    process (``LOOPBACK``)."""
    flags = ["--runner=PortableRunner", f"--job_endpoint={job_service.address}"]
    if worker_pool is not None:
        return [*flags, "--environment_type=EXTERNAL", f"--environment_config={worker_pool.address}"]
    return [*flags, "--environment_type=LOOPBACK"]
