"""``python -m tools.flink.job [job flags]``: the job as ``tools.local_job`` runs
it (the local destinations' credentials, insecure local destinations allowed),
for runs on Flink in a process of their own: the crash harness submits the streaming job to
a standalone cluster with it (``--detach``) and kills the cluster's TaskManager,
not this process.
"""

from __future__ import annotations

import sys

from tools import local_job

if __name__ == "__main__":
    sys.exit(local_job.main(sys.argv[1:]))
