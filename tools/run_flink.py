"""``make run-flink``: ``make run-local`` on Apache Flink.

The batch job over the sample fleet runs on Beam's ``FlinkRunner`` with
``--flink_master=[local]``: the runner starts Beam's Flink job server
(:mod:`tools.flink.jars`: Beam's classes and Flink 1.19 from Maven, cached
outside the repo), which runs the job on a Flink mini-cluster inside its own JVM.
The Python SDK workers come from an SDK worker pool process (``EXTERNAL``), where a
TaskManager's sidecar would stand, and deliver to the same local destinations as
``make run-local``. Everything is stopped at the end, also on failure.

    python -m tools.run_flink --sample_dir data/sample --output_dir out/flink

``--flink_master=host:port`` sends the job to a running cluster instead
(``make flink-cluster``). Other flags go to the job.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from tools import run_local
from tools.flink.jars import JavaToolsError, launcher_jar
from tools.local_streams import set_local_secrets
from tools.portable import WorkerPool

#: Flink parallelism of local runs: the machine's two cores.
DEFAULT_PARALLELISM = 2


def flink_flags(master: str, pool: WorkerPool, parallelism: int = DEFAULT_PARALLELISM) -> list[str]:
    """``--runner=FlinkRunner`` flags: Beam's Flink job server from our launcher
    jar, the SDK workers of ``pool``."""
    return ["--runner=FlinkRunner", f"--flink_master={master}", f"--flink_job_server_jar={launcher_jar()}",
            f"--parallelism={parallelism}", "--environment_type=EXTERNAL", f"--environment_config={pool.address}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.run_flink", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample_dir", default="data/sample", help="Sample fleet directory. Default: data/sample.")
    parser.add_argument("--output_dir", default="out/flink", help="Job outputs. Default: out/flink.")
    parser.add_argument("--flink_master", default="[local]",
                        help="Flink REST endpoint, or [local] for a mini-cluster in the job server. Default: [local].")
    parser.add_argument("--parallelism", type=int, default=DEFAULT_PARALLELISM,
                        help=f"Flink parallelism. Default: {DEFAULT_PARALLELISM}.")
    args, job_args = parser.parse_known_args(argv)
    try:
        launcher_jar()  # fetch the jars before anything starts, with a clear error
    except JavaToolsError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    set_local_secrets()  # the workers read the local destinations' secrets from their environment
    logs = Path(args.output_dir) / "services"
    logs.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(WorkerPool(env=os.environ, log_path=logs / "worker_pool.log"))
        sys.stdout.write(f"Flink {args.flink_master} through Beam's Flink job server; SDK worker pool on "
                         f"{pool.address} (pid {pool.pid}); logs under {logs}\n")
        sys.stdout.flush()
        return run_local.main([f"--sample_dir={args.sample_dir}", f"--output_dir={args.output_dir}",
                               *flink_flags(args.flink_master, pool, args.parallelism), *job_args])


if __name__ == "__main__":
    sys.exit(main())
