"""``make run-local``: the whole job on this machine, delivering for real.

Starts the local destinations on 127.0.0.1 (:class:`tools.local_streams.LocalDestinations`:
an HTTP receiver standing in for the customers' REST endpoints and DataDog's
intake, moto's server for S3 and Kinesis), writes a stream configuration that
covers every API type and stream type for the sample fleet's organisations,
loads it into the portal's stream store and serves the portal beside them
(:class:`tools.local_portal.LocalPortal`, ``out/portal.db``), runs the batch job
on the FnApiRunner (:mod:`tools.runners`) with ``--streams_db`` (so the portal
shows what it delivered), prints its progress every few seconds, then what each
destination received, and shuts everything down (``make run-portal`` serves the
store again).

Each run starts from a clean slate: the stream status and parked batches of an
earlier local run refer to destinations that are gone, so they are cleared (and
the run says so) instead of silently deactivating or parking this run's streams.

    .venv/bin/python -m tools.run_local --sample_dir data/sample --output_dir out
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from schemas.sealing import KEY_ENV
from tools import local_job
from tools.local_portal import LocalPortal
from tools.local_streams import INTERRUPTED, LocalDestinations, Progress

#: What one request may take here (``--stream_budget_seconds``; the job's default is
#: 5 s, sized for the real services). moto and the HTTP receiver run in this process,
#: beside the FnApiRunner's workers and sharing their interpreter lock: on a loaded
#: 2-CPU machine one PutRecords of 500 records to moto took longer than 5 s, and the
#: Kinesis stream's batches were parked as if AWS were down (make test, 2026-12-04).
#: docs/delivery.md describes the trade-off; a flag given to the command still wins.
LOCAL_STREAM_BUDGET_SECONDS = 30


def clear_previous_state(out: Path) -> list[str]:
    """Remove an earlier local run's stream status and parked batches under
    ``out``; the names of what was removed."""
    removed = []
    for name in ("status", "parked"):
        path = out / name
        if path.exists():
            shutil.rmtree(path)
            removed.append(str(path))
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.run_local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample_dir", default="data/sample", help="Sample fleet directory. Default: data/sample.")
    parser.add_argument("--output_dir", default="out", help="Job outputs. Default: out.")
    parser.add_argument("--keep_portal", choices=("auto", "yes", "no"), default="auto",
                        help="Keep the portal up after the run until Ctrl-C: yes, no, or auto (when the terminal is "
                        "interactive). Default: auto.")
    args, job_args = parser.parse_known_args(argv)
    keep = args.keep_portal == "yes" or (args.keep_portal == "auto" and sys.stdin.isatty() and sys.stdout.isatty())
    sample, out = Path(args.sample_dir), Path(args.output_dir)
    started = time.monotonic()
    try:
        return _run(sample, out, job_args, started, keep)
    except KeyboardInterrupt:
        sys.stderr.write(f"interrupted: stopped the job and the local destinations after "
                         f"{time.monotonic() - started:.0f} s; outputs under {out} are incomplete\n")
        return INTERRUPTED


def _serve_until_interrupted(portal: LocalPortal) -> None:
    """Keep the portal (and the destinations its "test destination" reaches) up
    after the run, until Ctrl-C: the overview shows what the run delivered."""
    sys.stdout.write(f"the portal stays up to show the run: {portal.url}/portal/data-streams "
                     "(Ctrl-C stops it and the local destinations)\n")
    sys.stdout.flush()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sys.stdout.write("stopped the portal and the local destinations\n")


def _run(sample: Path, out: Path, job_args: list[str], started: float, keep_portal: bool = False) -> int:
    for path in clear_previous_state(out):
        sys.stdout.write(f"cleared {path} of the previous local run (its destinations are gone)\n")
    with LocalDestinations(sample, out) as local, LocalPortal(out, streams_config=local.config_path) as portal:
        sys.stdout.write(f"local destinations: HTTP receiver {local.receiver.url}, moto {local.moto.url}; "
                         f"{len(local.streams)} streams in {local.config_path}\n{portal.describe()}\n"
                         f"running the batch job ({local_job.runner_of(job_args).rsplit('.', 1)[-1]}) over {sample}\n")
        sys.stdout.flush()
        # Streams created in the portal carry sealed credentials: the job opens them with the portal's key.
        os.environ[KEY_ENV] = portal.sealing_key
        with Progress(local):
            code = local_job.main([
                f"--events_input={sample / 'raw' / 'events.jsonl'}",
                f"--usage_input={sample / 'raw' / 'usage.jsonl'}",
                f"--reference_dir={sample / 'reference'}",
                f"--streams_db={portal.database_url}",
                f"--output_dir={out}",
                f"--archive_location={out / 'archive'}",
                f"--stream_budget_seconds={LOCAL_STREAM_BUDGET_SECONDS}",
                *job_args,
            ])
        if code == INTERRUPTED:  # the job said so; the destinations stop on the way out
            return code
        sys.stdout.write("reading back what the local destinations received ...\n")
        sys.stdout.flush()
        sys.stdout.write(local.report())
        if keep_portal:
            _serve_until_interrupted(portal)
    sys.stdout.write(f"  stream config: {local.config_path}, loaded into {portal.database_url}; the portal "
                     f"stopped with the run: `make run-portal` serves it again; took "
                     f"{time.monotonic() - started:.0f} s\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
