"""``python -m tools.crash.job --ack_journal PATH [job flags]``: the streaming job
as ``make run-local-streaming`` runs it (``tools.local_job``: the local runner
named, the DirectRunner workarounds applied, the local destinations'
placeholder credentials), with its Pub/Sub acknowledgements journaled to
``PATH`` (:mod:`tools.crash.journal`).

Its own process, so that the crash harness can ``kill -9`` it: the job is
everything this process holds, as it is for ``make run-local-streaming``, which
runs the same ``tools.local_job.main`` in its launcher's process.
"""

from __future__ import annotations

import argparse
import sys

from tools import local_job
from tools.crash.journal import install


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.crash.job", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ack_journal", required=True,
                        help="File the job's Pub/Sub pulls and acknowledgements are appended to.")
    args, job_argv = parser.parse_known_args(argv)
    install(args.ack_journal)
    return local_job.main(job_argv)


if __name__ == "__main__":
    sys.exit(main())
