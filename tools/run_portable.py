"""``make run-portable``: ``make run-local`` through Beam's portable runner.

Starts a Beam job service and an SDK worker pool, each as its own process
(:mod:`tools.portable`), and submits the batch job over the sample fleet to
the job service with ``--runner=PortableRunner`` and the same local destinations
as ``make run-local``. The job service speaks the Job API a Flink job server
speaks; the worker pool stands where a Flink TaskManager's SDK worker sidecar
does. Both are stopped at the end, also on failure.

    python -m tools.run_portable --sample_dir data/sample --output_dir out/portable

``--environment_type LOOPBACK`` runs the SDK workers inside this process instead
of the worker pool (quicker to debug). Other flags go to the job.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from tools import run_local
from tools.local_streams import set_local_secrets
from tools.portable import ENVIRONMENTS, JobService, WorkerPool, portable_flags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.run_portable", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample_dir", default="data/sample", help="Sample fleet directory. Default: data/sample.")
    parser.add_argument("--output_dir", default="out/portable", help="Job outputs. Default: out/portable.")
    parser.add_argument("--environment_type", choices=ENVIRONMENTS, default="EXTERNAL",
                        help="Where the SDK workers run: EXTERNAL, a worker pool process (default), or LOOPBACK, "
                        "this process.")
    args, job_args = parser.parse_known_args(argv)
    # The workers read the local destinations' placeholder secrets from their own
    # environment, as real workers do: set them before the worker pool starts.
    set_local_secrets()
    logs = Path(args.output_dir) / "services"
    logs.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        job_service = stack.enter_context(JobService(log_path=logs / "job_service.log"))
        pool = None
        if args.environment_type == "EXTERNAL":
            pool = stack.enter_context(WorkerPool(env=os.environ, log_path=logs / "worker_pool.log"))
        sys.stdout.write(f"Beam job service on {job_service.address} (pid {job_service.pid})"
                         + (f", worker pool on {pool.address} (pid {pool.pid})" if pool else "")
                         + f"; logs under {logs}\n")
        sys.stdout.flush()
        return run_local.main([f"--sample_dir={args.sample_dir}", f"--output_dir={args.output_dir}",
                               *portable_flags(job_service, pool), *job_args])


if __name__ == "__main__":
    sys.exit(main())
