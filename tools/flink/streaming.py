"""What a streaming run of the job on Flink needs on this machine, for the
launcher (``make run-flink-streaming``), the tests and the bench.

- the Python SDK worker pool (``EXTERNAL`` environment);
- Beam's Java expansion service, for the cross-language Pub/Sub read, whose
  Java transforms run in the ``EMBEDDED`` environment inside Flink's JVM;
- the emulator's address for Java's PubsubIO (``--pubsub_endpoint``);
- checkpoints (PubsubIO acknowledges a message once the checkpoint holding it
  completes);
- a REST endpoint to watch the job: on ``[local]`` the mini-cluster's, on a port
  of ours (``FLINK_CONF_DIR`` for the job server the ``FlinkRunner`` starts), else
  the cluster's. Through it the job's counters are read while it runs
  (:mod:`tools.flink.metrics`), registered for the drain and the summary.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.drain import register_result_wrapper
from tools.flink.metrics import FlinkCountersResult
from tools.flink.services import ExpansionService
from tools.portable import WorkerPool
from tools.processes import free_port
from tools.run_flink import DEFAULT_PARALLELISM, flink_flags

#: Checkpoints every 10 s: a local run sees several, and no message waits for its
#: checkpoint anywhere near Pub/Sub's acknowledgement deadline.
CHECKPOINT_MS = 10_000


@dataclass
class FlinkStreaming:
    """The job's Flink flags and where to watch the job."""

    flags: list[str]
    rest_url: str
    pool: WorkerPool
    expansion: ExpansionService


def _set_env(name: str, value: str, running: contextlib.ExitStack) -> None:
    previous = os.environ.get(name)
    os.environ[name] = value
    running.callback(lambda: os.environ.pop(name, None) if previous is None
                     else os.environ.__setitem__(name, previous))


def flink_streaming(running: contextlib.ExitStack, out: Path, emulator_url: str, flink_master: str = "[local]",
                    parallelism: int = DEFAULT_PARALLELISM, checkpoint_ms: int = CHECKPOINT_MS) -> FlinkStreaming:
    """Starts the worker pool and the expansion service (stopped with
    ``running``); returns the job's flags for ``flink_master``."""
    logs = out / "services"
    logs.mkdir(parents=True, exist_ok=True)
    if flink_master == "[local]":
        rest_port = free_port()
        conf = out / "flink-conf"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "flink-conf.yaml").write_text(
            f"rest.port: {rest_port}\nrest.address: 127.0.0.1\nrest.bind-address: 127.0.0.1\n")
        _set_env("FLINK_CONF_DIR", str(conf), running)
        rest_url = f"http://127.0.0.1:{rest_port}"
    else:
        rest_url = flink_master if "://" in flink_master else f"http://{flink_master}"
    register_result_wrapper(["FlinkRunner"], functools.partial(FlinkCountersResult, rest_url=rest_url))
    pool = running.enter_context(WorkerPool(env=os.environ, log_path=logs / "worker_pool.log"))
    expansion = running.enter_context(ExpansionService(log_path=logs / "expansion_service.log"))
    flags = [*flink_flags(flink_master, pool, parallelism), f"--checkpointing_interval={checkpoint_ms}",
             f"--pubsub_expansion_service={expansion.address}", f"--pubsub_endpoint={emulator_url}"]
    return FlinkStreaming(flags, rest_url, pool, expansion)
