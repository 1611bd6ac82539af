"""Print the data streams' status overview, the portal's table, on demand.

    python -m pipelines.status --status_location gs://bucket/out/status

The job writes one status record per stream to ``<status_location>/status.jsonl``
(``transforms/status.py``) as it delivers; this reads it back: API, type,
destination, last data and remote status of every stream the job has seen
(``make status`` shows the last local run's). It reads the location only, so it
is safe to run beside a running job.
"""

from __future__ import annotations

import argparse
import sys

from transforms.status import load_status, render_status_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.status", description=__doc__.split("\n\n")[0])
    parser.add_argument("--status_location", required=True,
                        help="The job's --status_location (default of a run: <output_dir>/status); a directory, "
                             "gs:// or s3://.")
    args = parser.parse_args(argv)
    records = load_status(args.status_location)
    if not records:
        sys.stdout.write(f"no stream status under {args.status_location} yet: no run has delivered there "
                         "(make run-local writes out/status)\n")
        return 0
    sys.stdout.write(render_status_table(sorted(records.values(), key=lambda record: record.stream_id)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
