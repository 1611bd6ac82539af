"""``make bench``'s batch part: end to end at a tiny size, and its checks failing
when they must (the bench's comparison is only worth something if it can say no)."""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter

import requests

from sinks.outbound import SIGNATURE_HEADER, sign
from tools.bench import __main__ as bench
from tools.bench import batch
from tools.bench.receiver import LeanReceiver, PathStats, document_digest


def test_batch_bench_end_to_end(tmp_path):
    results_dir, work_dir = tmp_path / "results", tmp_path / "work"
    code = bench.main(["--records", "3000", "--memory_records", "600", "--skip_streaming",
                       "--results_dir", str(results_dir), "--work_dir", str(work_dir)])
    assert code == 0
    latest = json.loads((results_dir / "latest.json").read_text())
    assert [p.name for p in results_dir.glob("bench-*.json")] != []
    assert latest["ok"] is True
    assert {"python", "cpu_count", "cpu_model", "memory_total_mib", "apache_beam"} <= set(latest["machine"])
    result = latest["batch"]
    records = result["fleet"]["records"]
    assert records >= 3000
    for name in ("baseline", "pipeline"):
        run = result[name]
        assert run["exit_code"] == 0
        assert run["records"] == records
        assert run["records_per_second"] > 0 and run["records_per_cpu_second"] > 0 and run["peak_rss_mib"] > 50
        assert len(run["load_average_start_end"]) == 2
    assert result["ratio_pipeline_to_baseline"] == round(
        result["pipeline"]["records_per_second"] / result["baseline"]["records_per_second"], 3)
    check = result["check"]
    assert check["same_documents"] is True and check["same_counts"] is True and check["ok"] is True
    assert check["documents_only_in_baseline"] == check["documents_only_in_pipeline"] == 0
    # The counts reconcile, in both runs, and match the generator's ground truth.
    for name in ("baseline", "pipeline"):
        counts = check["counts"][name]
        assert sum(c["read"] for c in counts.values()) == records
        for kind in counts.values():
            assert kind["read"] == kind["documents"] + kind["duplicates"] + sum(kind["dead_letters"].values())
            assert kind["documents"] == kind["routed_documents"] + kind["filtered"]
        assert all(k["matches"] for k in check["manifest"][name].values())
    # Every routed document arrived, once, at its stream (3 organisations, one stream each).
    routed = sum(k["routed_documents"] for k in check["counts"]["pipeline"].values())
    assert len(check["streams"]) == 3
    assert sum(s["pipeline_distinct"] for s in check["streams"].values()) == routed
    assert sum(s["baseline_documents"] for s in check["streams"].values()) == routed
    # Memory: the 1x fleet was run, the 5x one (= the batch fleet) reused.
    memory = latest["memory"]
    assert memory["1x"]["exit_code"] == 0 and memory["1x"]["records"] < memory["5x"]["records"]
    assert memory["5x"]["reused_from"] == "batch.pipeline"
    assert memory["rss_ratio_5x_to_1x"] > 0
    assert latest["streaming"] == {"skipped": "--skip_streaming"}
    # The generated fleet is cached and git-ignored.
    assert (work_dir / ".gitignore").read_text().strip().endswith("*")
    assert list((work_dir / "fleets").glob("*/.complete"))


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
