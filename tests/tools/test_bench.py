"""``make bench``'s batch part: end to end at a tiny size, and its checks failing
when they must (the bench's comparison is only worth something if it can say no)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from sinks.outbound import SIGNATURE_HEADER, sign
from tools.bench import __main__ as bench
from tools.bench import batch, proctree, runners, streaming
from tools.bench.receiver import LeanReceiver, PathStats, document_digest


def test_batch_bench_end_to_end(tmp_path):
    results_dir, work_dir = tmp_path / "results", tmp_path / "work"
    code = bench.main(["--records", "3000", "--memory_records", "600", "--skip_streaming", "--runners", "local",
                       "--results_dir", str(results_dir), "--work_dir", str(work_dir)])
    assert code == 0
    latest = json.loads((results_dir / "latest.json").read_text())
    assert [p.name for p in results_dir.glob("bench-*.json")] != []
    assert latest["ok"] is True and latest["results_format"] == bench.RESULTS_FORMAT
    assert {"python", "cpu_count", "cpu_model", "memory_total_mib", "apache_beam"} <= set(latest["machine"])
    result = latest["batch"]
    records = result["fleet"]["records"]
    assert records >= 3000
    assert list(result["pipelines"]) == ["local"] and result["ok"] is True
    pipeline = result["pipelines"]["local"]
    for run in (result["baseline"], pipeline):
        assert run["exit_code"] == 0
        assert run["records"] == records
        assert run["records_per_second"] > 0 and run["records_per_cpu_second"] > 0 and run["peak_rss_mib"] > 50
        assert run["cpu_seconds_per_million_records"] == pytest.approx(
            (run["cpu_user_seconds"] + run["cpu_system_seconds"]) / records * 1e6, rel=0.02)
        # One process: the sampled sum adds nothing to the kernel's peak.
        assert run["peak_rss_all_processes_mib"] == run["peak_rss_mib"]
        assert run["processes"]["processes_by_role"] == {"job": 1} and run["processes"]["samples"] > 0
        assert len(run["load_average_start_end"]) == 2
    assert pipeline["ratio_to_baseline"] == round(
        pipeline["records_per_second"] / result["baseline"]["records_per_second"], 3)
    assert pipeline["ratio_per_cpu_second"] == round(
        pipeline["records_per_cpu_second"] / result["baseline"]["records_per_cpu_second"], 3)
    check = pipeline["check"]
    assert check["same_documents"] is True and check["same_counts"] is True and check["ok"] is True
    assert check["documents_only_in_baseline"] == check["documents_only_in_pipeline"] == 0
    # The counts reconcile, in both runs, and match the generator's ground truth.
    for counts, manifest in ((result["baseline_counts"], result["baseline_manifest"]),
                             (check["counts"], check["manifest"])):
        assert sum(c["read"] for c in counts.values()) == records
        for kind in counts.values():
            assert kind["read"] == kind["documents"] + kind["duplicates"] + sum(kind["dead_letters"].values())
            assert kind["documents"] == kind["routed_documents"] + kind["filtered"]
        assert all(k["matches"] for k in manifest.values())
    # Every routed document arrived, once, at its stream (3 organisations, one stream each).
    routed = sum(k["routed_documents"] for k in check["counts"].values())
    assert len(check["streams"]) == 3
    assert sum(s["pipeline_distinct"] for s in check["streams"].values()) == routed
    assert sum(s["baseline_documents"] for s in check["streams"].values()) == routed
    # Memory: the 1x fleet was run, the 5x one (= the batch fleet) reused.
    memory = latest["memory"]["pipelines"]["local"]
    assert memory["1x"]["exit_code"] == 0 and memory["1x"]["records"] < memory["5x"]["records"]
    assert memory["5x"]["reused_from"] == "batch.pipelines.local"
    assert memory["rss_ratio_5x_to_1x"] == round(
        memory["5x"]["peak_rss_all_processes_mib"] / memory["1x"]["peak_rss_all_processes_mib"], 3)
    assert latest["streaming"] == {"skipped": "--skip_streaming"}
    # The generated fleet is cached and git-ignored.
    assert (work_dir / ".gitignore").read_text().strip().endswith("*")
    assert list((work_dir / "fleets").glob("*/.complete"))


@pytest.mark.flink
def test_batch_bench_on_flink_counts_every_process_of_the_run(tmp_path):
    """The one bench test that starts Flink (Beam's job server JVM with its
    mini-cluster, a worker pool and its SDK workers; about a minute): the same
    documents as the baseline, and CPU and RSS of all those processes."""
    results_dir, work_dir = tmp_path / "results", tmp_path / "work"
    code = bench.main(["--records", "3000", "--skip_memory", "--skip_streaming", "--runners", "flink",
                       "--results_dir", str(results_dir), "--work_dir", str(work_dir)])
    assert code == 0
    result = json.loads((results_dir / "latest.json").read_text())["batch"]
    flink = result["pipelines"]["flink"]
    assert flink["runner"] == "Flink [local]" and flink["check"]["ok"] is True
    assert flink["check"]["same_documents"] is True and flink["check"]["documents_only_in_pipeline"] == 0
    processes = flink["processes"]
    assert {"jvm", "sdk_workers", "worker_pool", "job"} <= set(processes["processes_by_role"])
    # The sum over processes is more than any one of them: the JVM and the Python side at once.
    assert flink["peak_rss_all_processes_mib"] > flink["peak_rss_mib"]
    assert processes["peak_rss_mib_by_role"]["jvm"] > 0 and processes["peak_rss_mib_by_role"]["sdk_workers"] > 0
    # The kernel's total (the launcher reaped every process) covers what the sampler saw of each.
    total = flink["cpu_user_seconds"] + flink["cpu_system_seconds"]
    sampled = sum(processes["cpu_seconds_by_role"].values())
    assert 0.7 * total <= sampled <= total + 1
    assert processes["cpu_seconds_by_role"]["jvm"] > 1 and processes["cpu_seconds_by_role"]["sdk_workers"] > 1
    assert processes["jvm_thread_cpu_seconds"]
    # Nothing of the run is left running.
    assert not [line for line in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
                .splitlines() if str(work_dir) in line]


@pytest.mark.flink
def test_streaming_bench_on_flink_measures_both_pipelines_and_every_process(tmp_path):
    """The streaming bench on Flink [local], tiny (one fixed rate of seconds,
    so the budget only bounds a slow machine; two Flink start-ups of about a
    minute each): the job and the trivial pipeline each deliver every record
    published, and a step's CPU is that of every process of the pipeline's tree
    (the job server JVM, the SDK workers, the worker pool, the submitter), per
    million records delivered."""
    results_dir, work_dir = tmp_path / "results", tmp_path / "work"
    code = bench.main(["--skip_batch", "--skip_memory", "--runners", "flink", "--results_dir", str(results_dir),
                       "--work_dir", str(work_dir), "--stream_rates=20", "--stream_seconds=5",
                       "--stream_warmup_seconds=5", "--stream_tail_seconds=60", "--stream_abort_seconds=0",
                       "--stream_budget_seconds=300", f"--stream_sample_dir={tmp_path / 'no-fleet'}"])
    assert code == 0
    latest = json.loads((results_dir / "latest.json").read_text())
    assert latest["results_format"] == bench.RESULTS_FORMAT == 3
    result = latest["streaming"]
    assert result["ok"] is True and list(result["runners"]) == ["flink"]
    flink = result["runners"]["flink"]
    assert flink["runner"] == "Flink [local]"
    for which in ("job", "trivial"):
        (step,) = flink[which]["steps"]
        assert step["rate"] == 20 and step["published"] > 0, which
        assert step["delivered"] == step["published"] and step["lost"] == 0, which
        assert 0 < step["p50"] <= step["p99"], which
        assert flink[which]["startups_seconds"], which
        # The CPU of the measured window is the whole tree's, split by process role.
        roles = step["cpu_seconds_by_role"]
        assert {"jvm", "sdk_workers", "worker_pool", "job", "expansion_service"} <= set(roles), which
        assert roles["jvm"] > 0 and step["jvm_thread_cpu_seconds"], which
        assert step["cpu_seconds"] == pytest.approx(sum(roles.values()), abs=0.05)
        assert step["records_in_window"] > 0
        assert step["cpu_seconds_per_million_records"] == pytest.approx(
            step["cpu_seconds"] / step["records_in_window"] * 1e6, rel=0.01)
        # Per wall second of the window: the 5 s of publishing and the CPU readings
        # around it (6.3 s in all seen at nice 19 beside the alone tests).
        assert step["window_seconds"] >= 5
        assert step["cpu_share"] == pytest.approx(step["cpu_seconds"] / step["window_seconds"], abs=0.01)
        # The runner's figure is the step's when the step kept up at the rate
        # asked; a publisher that fell short of it (a loaded machine) gives none.
        expected = ({"value": step["cpu_seconds_per_million_records"], "at_rate": 20}
                    if step["kept_up"] and streaming.publisher_kept_rate(step) else {"value": None, "at_rate": None})
        assert flink["cpu_seconds_per_million_records"][which] == expected, step
    # The job's SDK workers did the job's Python work.
    assert flink["job"]["steps"][0]["cpu_seconds_by_role"]["sdk_workers"] > 0
    assert flink["rate"] == 20 and flink["published"] == flink["job"]["steps"][0]["published"]
    assert set(flink["targets"]) == {"ratio", "p99_at_headline_rate"}
    assert flink["startups_seconds"] > 0
    # Results format 2's top-level keys: the first runner's figures when local was not measured.
    assert result["job"] == flink["job"] and result["p99_seconds"] == flink["p99_seconds"]
    assert result["receiver"]["bad_requests"] == 0 and result["publish_errors"] == 0
    # Nothing of the runs is left: the submitter names its Flink directory, every
    # process it started has it in its environment (FLINK_CONF_DIR).
    assert not _processes_mentioning(str(work_dir))


def _processes_mentioning(text: str) -> list[int]:
    """Processes whose command line or environment mentions ``text``."""
    found = []
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if any(text.encode() in (process / name).read_bytes() for name in ("cmdline", "environ")):
                found.append(int(process.name))
        except OSError:
            continue
    return found


def _stats(*documents: dict) -> PathStats:
    stats = PathStats(requests=1, documents=len(documents))
    stats.digests.update(document_digest(d) for d in documents)
    return stats


def test_comparison_detects_one_different_document():
    docs = [{"id": i, "organisation": {"id": 1}, "cost": 0.5} for i in range(5)]
    same = batch.compare_deliveries({"org/1": _stats(*docs)}, {"org/1": _stats(*reversed(docs))})
    assert same["same_documents"] is True
    # Same number of documents, one with a different value.
    changed = [*docs[:4], {**docs[4], "cost": 0.6}]
    result = batch.compare_deliveries({"org/1": _stats(*docs)}, {"org/1": _stats(*changed)})
    assert result["same_documents"] is False
    assert result["documents_only_in_baseline"] == 1 and result["documents_only_in_pipeline"] == 1
    # One missing, one delivered twice, one stream missing altogether.
    assert batch.compare_deliveries({"org/1": _stats(*docs)}, {"org/1": _stats(*docs[:4])})["same_documents"] is False
    assert batch.compare_deliveries({"org/1": _stats(*docs)},
                                    {"org/1": _stats(*docs, docs[0])})["same_documents"] is False
    assert batch.compare_deliveries({"org/1": _stats(*docs), "org/2": _stats(docs[0])},
                                    {"org/1": _stats(*docs)})["same_documents"] is False
    assert batch.compare_deliveries({}, {})["same_documents"] is False  # nothing delivered proves nothing


def test_digest_ignores_key_order_only():
    assert document_digest({"a": 1, "b": {"c": 2, "d": 3}}) == document_digest({"b": {"d": 3, "c": 2}, "a": 1})
    assert document_digest({"a": 1}) != document_digest({"a": 1.0})
    assert document_digest({"a": 1}) == hashlib.sha1(b'{"a":1}').digest()


def test_count_comparison_detects_a_difference():
    counts = {"read": 10, "valid": 9, "documents": 8, "duplicates": 1, "routed_documents": 8, "filtered": 0,
              "dead_letters": {"not_json": 1, "unknown_reference:sim": 1}}
    baseline = {"event": counts, "usage": counts}
    assert batch.compare_counts(baseline, json.loads(json.dumps(baseline)))["same_counts"] is True
    moved = {**counts, "dead_letters": {"not_json": 2}}
    result = batch.compare_counts(baseline, {"event": counts, "usage": moved})
    assert result["same_counts"] is False
    assert list(result["differences"]) == ["usage.dead_letters"]


def test_receiver_counts_documents_and_refuses_unsigned_requests():
    secret, token = "s3cret", "Bearer t"
    with LeanReceiver(auth_value=token, signing_secret=secret) as receiver:
        body = b'[{"id":1},{"id":2}]'
        with requests.Session() as session:
            ok = session.post(f"{receiver.url}/run/a", data=body,
                              headers={"Authorization": token, SIGNATURE_HEADER: sign(secret, body)}, timeout=5)
            bad = session.post(f"{receiver.url}/run/a", data=body,
                               headers={"Authorization": token, SIGNATURE_HEADER: sign("other", body)}, timeout=5)
        assert ok.status_code == bad.status_code == 202
        stats = receiver.take("/run/")
    assert set(stats) == {"a"}
    assert (stats["a"].requests, stats["a"].documents, stats["a"].unsigned) == (2, 4, 1)
    assert stats["a"].digests == Counter({document_digest({"id": 1}): 2, document_digest({"id": 2}): 2})
    result = batch.compare_deliveries(stats, stats)
    assert result["same_documents"] is False  # an unsigned request fails the check


def test_child_peak_rss_is_the_childs_own(tmp_path):
    # Held by this process while the children run: a child spawned straight from
    # here would report at least this much (Linux keeps the peak across exec).
    ballast = bytearray(400 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])
    big = batch.run_child([sys.executable, "-c", "b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"],
                          tmp_path / "big.log")
    small = batch.run_child([sys.executable, "-c", "pass"], tmp_path / "small.log")
    assert big.exit_code == small.exit_code == 0
    assert big.peak_rss_kib > 300 * 1024 > small.peak_rss_kib
    assert batch.run_child([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "x.log").exit_code == 3
    del ballast


def test_child_run_counts_every_process_it_started(tmp_path):
    # The command starts two children that hold 150 MiB each at once with its own,
    # and an orphan that burns a second of CPU after the command has exited. Each
    # holds its memory until all three have theirs, then 2 s more: at once however
    # late a loaded machine starts one of them.
    hold = ("import pathlib, time; b = bytearray(150 * 2**20); b[::4096] = b'x' * len(b[::4096])\n"
            f"d = pathlib.Path({str(tmp_path / 'held')!r}); d.mkdir(exist_ok=True)\n"
            "import os; (d / str(os.getpid())).touch(); end = time.monotonic() + 120\n"
            "while len(list(d.iterdir())) < 3 and time.monotonic() < end: time.sleep(0.05)\n"
            "time.sleep(2)")
    burn = "import time; end = time.process_time() + 1.0\nwhile time.process_time() < end: pass"
    script = (f"import subprocess, sys\n"
              f"kids = [subprocess.Popen([sys.executable, '-c', {hold!r}]) for _ in range(2)]\n"
              f"exec({hold!r})\n"
              f"[kid.wait() for kid in kids]\n"
              f"subprocess.Popen([sys.executable, '-c', {burn!r}], start_new_session=True)\n")
    run = batch.run_child([sys.executable, "-c", script], tmp_path / "tree.log")
    assert run.exit_code == 0
    assert 150 * 1024 < run.peak_rss_kib < 300 * 1024  # the largest single process
    assert run.peak_rss_all_kib > 450 * 1024  # all three at once
    assert run.tree is not None and run.tree.processes_by_role == {"job": 4}
    assert run.leftovers == 1 and run.cpu_seconds >= 1.0  # the orphan's CPU is the run's


def test_render_shows_skipped_runners_and_the_split():
    processes = {"cpu_seconds_by_role": {"jvm": 30.0, "sdk_workers": 10.0},
                 "jvm_thread_cpu_seconds": {"C2 CompilerThre": 12.0, "GC Thread": 3.0},
                 "peak_rss_mib_by_role": {"jvm": 1200.0, "sdk_workers": 250.0}}
    point = {"records": 1000, "peak_rss_all_processes_mib": 1450.0, "wall_seconds": 30.0, "processes": processes}
    memory = {"pipelines": {"local": {"runner": "FnApiRunner", "skipped": "no"},
                            "flink": {"runner": "Flink [local]", "1x": point, "5x": {**point, "records": 5000},
                                      "rss_ratio_5x_to_1x": 1.0, "records_ratio": 5.0, "ok": True}}}
    text = batch.render_memory(memory)
    assert "FnApiRunner: skipped, no" in text and "ratio 5x / 1x 1.00" in text and "jvm 1,200, sdk_workers 250" in text
    assert batch._cpu_split(processes) == "jvm 30 s (75%), sdk_workers 10 s (25%)"
    assert batch._jvm_threads(processes) == "'C2 CompilerThre' 12 s (80%), 'GC Thread' 3 s (20%)"


def test_thread_groups_and_roles():
    assert proctree.thread_group("GC Thread#12") == "GC Thread"
    assert proctree.thread_group("grpc-default-executor-3") == "grpc-default-executor"
    assert proctree.thread_group("C2 CompilerThre") == "C2 CompilerThre"
    assert proctree.role_of("java", "java -jar FlinkJobServerDriver.jar") == "jvm"
    assert proctree.role_of("python", 'python -c from apache_beam.runners.worker.sdk_worker import SdkHarness; '
                                      'SdkHarness("localhost:1").run()') == "sdk_workers"
    assert proctree.role_of("python", "python -m apache_beam.runners.worker.worker_pool_main") == "worker_pool"
    # The pool as tools/portable.py starts it, and a worker it starts through the boot script.
    pool = ("python -m apache_beam.runners.worker.worker_pool_main --service_port 4000 "
            "--container_executable=/tmp/beam-sdk-boot-x1/boot")
    assert proctree.role_of("python", pool) == "worker_pool"
    assert proctree.role_of("sh", "/bin/sh /tmp/beam-sdk-boot-x1/boot --id=1-1 --provision_endpoint=x") == "sdk_workers"
    assert proctree.role_of("python", "python -m tools.sdk_boot --id=1-1") == "sdk_workers"
    assert proctree.role_of("python3.11", "python -m tools.local_job") == "job"
    assert runners.selected("local,flink") == [runners.LOCAL, runners.FLINK]
    assert runners.selected("local,flink", streaming=True) == [runners.LOCAL, runners.FLINK]
    assert proctree.role_of("java", "java -jar ExpansionService.jar 4567") == "expansion_service"


def test_a_child_seen_before_its_exec_gets_the_role_of_what_it_execs():
    """A child sampled between its fork and its exec shows its parent's command
    line (a job); once it execs the worker pool, the pool is what is counted,
    also after it exited and waits to be reaped (a zombie has no command line)."""
    script = ("import os, sys, time\n"
              "pid = os.fork()\n"
              "if pid == 0:\n"
              "    time.sleep(1.0)\n"
              "    pool = 'worker_pool' + '_main'  # not in this script's own command line\n"
              "    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(3)', pool])\n"
              "time.sleep(6)  # the child exits after about 4 s: a zombie for two seconds\n"
              "os.waitpid(pid, 0)\n")
    launcher = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run(sys.argv[1:])",
                                 sys.executable, "-c", script])
    sampler = proctree.TreeSampler(launcher.pid, interval=0.1).start()
    launcher.wait(timeout=30)
    usage = sampler.stop()
    assert usage.processes_by_role == {"job": 1, "worker_pool": 1}, usage.processes_by_role


def test_a_run_that_overruns_is_killed_with_all_it_started(tmp_path):
    # The command and a child in a session of its own both sleep far longer than the timeout.
    script = ("import subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
              "time.sleep(300)\n")
    started = time.monotonic()
    run = batch.run_child([sys.executable, "-c", script, str(tmp_path)], tmp_path / "slow.log", timeout=2.0)
    assert time.monotonic() - started < 30
    assert run.timed_out and run.exit_code == -9 and run.to_dict()["timed_out"] is True
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and str(tmp_path) in _process_args():
        time.sleep(0.2)
    assert str(tmp_path) not in _process_args()


def _process_args() -> str:
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
