"""``make flink-cluster``: a standalone Flink cluster on this machine until Ctrl-C.

Starts a JobManager (REST on ``--rest_port``, default 8081, what ``make
submit-flink FLINK_MASTER=localhost:8081`` and ``make run-flink
FLINK_MASTER=localhost:8081`` take) and ``--taskmanagers`` TaskManagers, each its
own JVM on the Maven class path of :mod:`tools.flink.jars`, with config, logs,
checkpoints and savepoints under ``--directory``. Ctrl-C stops them all.

    python -m tools.flink.cluster --directory out/flink-cluster
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from tools.flink.jars import JavaToolsError
from tools.flink.services import DEFAULT_SLOTS, StandaloneCluster
from tools.processes import ServiceStartError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.flink.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--directory", default="out/flink-cluster", help="Config, logs, checkpoints, savepoints.")
    parser.add_argument("--rest_port", type=int, default=8081, help="The JobManager's REST port. Default: 8081.")
    parser.add_argument("--taskmanagers", type=int, default=1, help="TaskManager processes. Default: 1.")
    parser.add_argument("--slots", type=int, default=DEFAULT_SLOTS, help=f"Slots each. Default: {DEFAULT_SLOTS}.")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with StandaloneCluster(args.directory, taskmanagers=args.taskmanagers, slots=args.slots,
                               rest_port=args.rest_port) as cluster:
            pids = [p.pid for p in cluster.taskmanagers]
            sys.stdout.write(f"Flink cluster up: REST http://{cluster.master} (FLINK_MASTER={cluster.master}); "
                             f"JobManager pid {cluster.jobmanager.pid if cluster.jobmanager else '?'}, TaskManager "
                             f"pids {pids}; logs in {cluster.log_dir}. Ctrl-C stops it.\n")
            sys.stdout.flush()
            while True:
                time.sleep(1)
    except (JavaToolsError, ServiceStartError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    except KeyboardInterrupt:
        sys.stdout.write("stopped the Flink cluster\n")
        return 0


if __name__ == "__main__":
    sys.exit(main())
