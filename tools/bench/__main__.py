"""``make bench`` / ``python -m tools.bench``: throughput and memory of the job.

In one run, on a generated fleet (cached under ``tools/bench/work/``):

1. batch: the baseline (``tools/bench/baseline.py``, a plain Python loop) and
   the real batch pipeline on each runner of ``--runners`` (``tools/bench/runners.py``:
   the FnApiRunner through ``tools.local_job``, and Flink ``[local]`` as ``make
   run-flink`` runs it), each a child process over the same input delivering to
   the same loopback REST bulk streams; records per second, records per CPU
   second and CPU seconds per million records (CPU of every process of the run,
   the JVM and SDK workers included), their ratio to the baseline, peak RSS of
   all processes of each run, where the CPU went by process (and JVM thread),
   and a check that each pipeline delivered the baseline's documents (exit 1 if not);
2. memory: peak RSS of all processes of the batch pipeline's run on each runner
   at ``--memory_records`` and 5x that;
3. streaming: ``tools/bench/streaming.py`` when present, on each runner of
   ``--runners`` (the BundleBasedDirectRunner and Flink ``[local]``): the job's
   and a trivial pipeline's sustainable rates, p99 latency at ``--stream_rate``,
   CPU seconds per million records of all the pipeline's processes.

Results go to ``tools/bench/results/bench-<UTC time>.json`` and ``tools/bench/results/latest.json``
(:data:`RESULTS_FORMAT` 3: ``streaming.runners.<runner>`` as well, the streaming
figures per runner, whose top-level keys are still the local runner's; format 2:
``batch.pipelines.<runner>`` and ``memory.pipelines.<runner>``, streaming on the
local runner only; format 1 had one ``batch.pipeline``, the FnApiRunner).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from tools.bench import batch
from tools.bench.runners import RUNNERS, selected

DEFAULT_RECORDS = 1_000_000
DEFAULT_MEMORY_RECORDS = 200_000
#: 3: streaming results per runner too (``streaming.runners``); 2: batch and memory results per
#: runner (``batch.pipelines``, ``memory.pipelines``); 1: the FnApiRunner only.
RESULTS_FORMAT = 3


def _streaming_module() -> tuple[ModuleType | None, str | None]:
    """``tools.bench.streaming``, or why it is not there."""
    try:
        from tools.bench import streaming
    except ImportError as err:
        return None, f"tools.bench.streaming is not available ({err})"
    return streaming, None


def _runners(value: str) -> str:
    """``--runners``, checked when parsed: an unknown name is a usage error."""
    try:
        if not selected(value):
            raise ValueError("no runner named")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return value


def build_parser(streaming: ModuleType | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS,
                        help="Raw records (events and usage) of the batch fleet; the fleet is generated with "
                             f"ceil(records / {batch.RECORDS_PER_ENDPOINT}) endpoints, so it has at least about "
                             f"this many. Default: {DEFAULT_RECORDS:,}.")
    parser.add_argument("--memory_records", type=int, default=DEFAULT_MEMORY_RECORDS,
                        help="Records of the 1x memory-scaling fleet; the 5x fleet has five times as many. Not 5x "
                             "the --records default: the batch pipeline on the FnApiRunner took about 1.7 min and "
                             "4.9 GiB of RSS per million records on a 2-CPU, 23 GiB machine, so 5 million would "
                             "need about 9 min and more memory than that machine has. A size equal to the "
                             "batch fleet reuses the batch run's measurement. "
                             f"Default: {DEFAULT_MEMORY_RECORDS:,}.")
    parser.add_argument("--seed", type=int, default=7, help="Fleet generator seed. Default: 7.")
    parser.add_argument("--runners", type=_runners, default=",".join(RUNNERS),
                        help="The runners the job is measured on, comma-separated: local (batch: the "
                             "FnApiRunner; streaming: the BundleBasedDirectRunner) and flink (Flink [local], as "
                             "make run-flink and make run-flink-streaming run it; needs Java 17 and Maven, skipped "
                             "with the reason without them). Default: %(default)s.")
    parser.add_argument("--skip_batch", action="store_true", help="Skip the baseline vs pipeline comparison.")
    parser.add_argument("--skip_memory", action="store_true", help="Skip the memory-scaling runs.")
    parser.add_argument("--skip_streaming", action="store_true", help="Skip the streaming bench.")
    parser.add_argument("--child_timeout", type=float, default=batch.DEFAULT_CHILD_TIMEOUT,
                        help="Seconds a baseline or pipeline run may take before it is killed with every process "
                             "it started (and reported as failed). Default: %(default).0f.")
    parser.add_argument("--results_dir", default="tools/bench/results",
                        help="Where the result JSON files go. Default: tools/bench/results.")
    parser.add_argument("--work_dir", default="tools/bench/work",
                        help="Generated fleets and run outputs (git-ignored). Default: tools/bench/work.")
    parser.add_argument("--pipeline_args", type=shlex.split, default=[],
                        help="Extra flags for the pipeline children (every runner), one string "
                             "(e.g. '--direct_num_workers=2').")
    if streaming is not None:
        streaming.add_arguments(parser)
    return parser


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _memory_total_mib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024, 0)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "processor": platform.processor() or None,
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "memory_total_mib": _memory_total_mib(),
        "platform": platform.platform(),
        "apache_beam": version("apache-beam"),
        "orjson": version("orjson"),
    }


def write_results(results: dict[str, Any], results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(results, indent=2, sort_keys=False) + "\n"
    path = results_dir / f"bench-{stamp}.json"
    path.write_text(text)
    (results_dir / "latest.json").write_text(text)
    return path


def _run_streaming(streaming: ModuleType, args: argparse.Namespace, work_dir: Path, results: dict[str, Any],
                   out: Any) -> bool:
    """The streaming phase; False when it failed. Missing tools (gcloud, Java: the
    Pub/Sub emulator) skip it with the reason instead of failing the bench, so the
    batch figures of a machine without them still count."""
    from tools.pubsub_emulator import EmulatorToolsError

    try:
        result = streaming.run(args, work_dir)
    except EmulatorToolsError as err:
        results["streaming"] = {"skipped": f"missing tools: {err}"}
        out.write(f"\nStreaming: skipped, {err}\n")
        return True
    except Exception as err:  # noqa: BLE001 - record it with the other results, then fail the run
        results["streaming"] = {"error": f"{type(err).__name__}: {err}"}
        out.write(f"\nStreaming: FAILED, {type(err).__name__}: {err}\n")
        return False
    results["streaming"] = result
    out.write(streaming.render(result))
    return not (isinstance(result, dict) and result.get("ok") is False)


def main(argv: list[str] | None = None) -> int:
    streaming, missing = _streaming_module()
    args = build_parser(streaming).parse_args(argv)
    work_dir = batch.prepare_work_dir(Path(args.work_dir))
    started = time.monotonic()
    results: dict[str, Any] = {
        "results_format": RESULTS_FORMAT,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "parameters": {k: v for k, v in vars(args).items()},
    }
    out = sys.stdout
    ok = True
    batch_result = None
    runners = batch.runner_choice(args)
    if args.skip_batch:
        results["batch"] = {"skipped": "--skip_batch"}
    else:
        batch_result = batch.run_batch(args, work_dir, out, runners)
        results["batch"] = batch_result
        out.write(batch.render_batch(batch_result))
        ok = ok and batch_result["ok"]
    if args.skip_memory:
        results["memory"] = {"skipped": "--skip_memory"}
    else:
        memory = batch.run_memory(args, work_dir, batch_result, out, runners)
        results["memory"] = memory
        out.write(batch.render_memory(memory))
        ok = ok and memory["ok"]
    if args.skip_streaming:
        results["streaming"] = {"skipped": "--skip_streaming"}
    elif streaming is None:
        results["streaming"] = {"skipped": missing}
        out.write(f"\nStreaming: skipped, {missing}\n")
    else:
        ok = _run_streaming(streaming, args, work_dir, results, out) and ok
    results["total_seconds"] = round(time.monotonic() - started, 1)
    results["ok"] = ok
    path = write_results(results, Path(args.results_dir))
    out.write(f"\nResults: {path} (and latest.json); took {results['total_seconds']:.0f} s\n")
    if not ok:
        out.write("FAILED: see the checks above\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
