"""``python -m tools.crash``: crash runs of the streaming job, measured.

Each run starts the job, publishes known records at a steady rate, ``kill -9``s
mid-stream, brings the job back, waits until the run settled and prints what was
published, delivered, lost and delivered twice (``tools/crash/__init__.py``).
``--target direct`` (the default) runs the job as ``make run-local-streaming``
does and kills its process, then starts another; ``--target flink`` submits it to
a standalone Flink cluster and kills the TaskManager JVM, then starts another
TaskManager and lets Flink restart the job from its last checkpoint
(``tools/crash/flink.py``). The reports go to ``<output_dir>/crash-runs.json`` as
well.

    python -m tools.crash --runs 3 --output_dir out/crash
    python -m tools.crash --target flink --runs 1 --output_dir out/crash-flink
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tools.crash import ACK_DEADLINE_SECONDS, CrashRunError, run_crash
from tools.crash.direct import DirectRunnerTarget
from tools.crash.flink import FlinkClusterTarget
from tools.pubsub_emulator import EmulatorStartError, EmulatorToolsError, PubSubEmulator, check_tools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.crash", description=__doc__.split("\n\n")[0],
                                     epilog="Any other flag is passed to the job (pipelines.data_streamer).")
    parser.add_argument("--output_dir", default="out/crash", help="Work and report directory. Default: out/crash.")
    parser.add_argument("--target", choices=("direct", "flink"), default="direct",
                        help="What runs the job and what is killed (module docstring). Default: direct.")
    parser.add_argument("--runs", type=int, default=3, help="Crash runs, one after the other. Default: 3.")
    parser.add_argument("--records", type=int, default=3000, help="Records published per kind. Default: 3000.")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="Records published per second and kind. Default: 50.")
    parser.add_argument("--kill_after", type=float, default=20.0,
                        help="Seconds after the first delivery the job is killed. Default: 20.")
    parser.add_argument("--kill_spread", type=float, default=5.0,
                        help="Run n of N is killed (n-1)/N of this many seconds later than --kill_after, so the "
                             "kills do not all land at the same point of the REST batching cycle "
                             "(--max_buffering_seconds, default 5). Default: 5.")
    parser.add_argument("--quiet", type=float, default=None,
                        help="The run has settled when nothing new reached the receiver for this many seconds "
                             "(past the redelivery deadline). Default: 15 for direct; none for flink, which must "
                             "lose nothing: its run settles when every record arrived, or fails at --settle_timeout.")
    parser.add_argument("--settle_timeout", type=float, default=600.0,
                        help="Seconds after the job ran again at which a run that has not settled ends. Default: 600.")
    parser.add_argument("--ack_deadline", type=int, default=ACK_DEADLINE_SECONDS,
                        help=f"The subscriptions' ack deadline, seconds. Default: {ACK_DEADLINE_SECONDS}.")
    args, job_flags = parser.parse_known_args(argv)
    try:
        check_tools()
    except EmulatorToolsError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    reports = []

    def log(line: str) -> None:
        sys.stdout.write(f"  {line}\n")
        sys.stdout.flush()

    try:
        with PubSubEmulator(work_dir=out / "emulator") as emulator:
            for number in range(1, args.runs + 1):
                target = DirectRunnerTarget(job_flags) if args.target == "direct" else FlinkClusterTarget()
                kill_after = args.kill_after + args.kill_spread * (number - 1) / args.runs
                report = run_crash(target, out / f"run-{number}", records_per_kind=args.records, rate=args.rate,
                                   kill_after_seconds=kill_after, ack_deadline_seconds=args.ack_deadline,
                                   quiet_seconds=(args.quiet if args.quiet is not None
                                                  else 15.0 if args.target == "direct" else None),
                                   settle_timeout=args.settle_timeout,
                                   emulator=emulator, name=f"crash{number}", log=log)
                sys.stdout.write(f"run {number}: " + report.text())
                sys.stdout.flush()
                reports.append(report.to_json())
                (out / "crash-runs.json").write_text(json.dumps(reports, indent=2) + "\n")
    except (EmulatorStartError, EmulatorToolsError, CrashRunError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    sys.stdout.write(f"reports: {out / 'crash-runs.json'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
