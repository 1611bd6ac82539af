"""The streaming latency benchmark (``tools/bench/streaming.py``): its
percentile and sweep logic, and one tiny run of the job and the trivial pipeline
against the real Pub/Sub emulator."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from tools.bench import streaming
from tools.bench.streaming import RateSearch, drift, judge, latency_stats, percentile


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3
    assert math.isnan(percentile([], 50))


def test_lost_records_are_infinitely_late():
    latencies = [0.5] * 990
    assert latency_stats(latencies, lost=10)["p99"] == 0.5  # 10 of 1000: 1 %, p99 is the worst delivered
    stats = latency_stats(latencies, lost=11)  # 11 of 1001: p99 is a lost record
    assert stats["p99"] == math.inf and stats["p50"] == 0.5 and stats["max"] == math.inf


def _step(**changes):
    step = {"rate": 200.0, "achieved_rate": 200.0, "lost": 0, "p99": 1.0, "drift": 0.1}
    return step | changes


def test_judge_names_the_reason():
    assert judge(_step(), 5, 2) == (True, "ok")
    assert judge(_step(p99=5.0), 5, 2)[0]
    assert judge(_step(p99=5.01), 5, 2) == (False, "p99 5.01 s > 5 s")
    assert judge(_step(lost=3, p99=math.inf), 5, 2) == (False, "3 records lost")
    assert judge(_step(drift=2.5), 5, 2)[1] == "latency drifted up 2.50 s"
    assert judge(_step(drift=2.5), 5, 0)[0], "0 disables the drift check"
    assert "publisher" in judge(_step(achieved_rate=150.0), 5, 2)[1]
    assert judge(_step(throughput=190.0), 5, 2)[0]
    assert judge(_step(throughput=180.0), 5, 2) == (False, "delivered only 180/s"), "falling behind slowly"
    assert "overloaded" in judge(_step(overloaded_after_seconds=12.0), 5, 2)[1]


def test_a_sweeps_cost_per_record_comes_from_the_fastest_step_kept_up_at_the_rate_asked():
    def step(rate, achieved, kept_up, cpu, p99):
        return {"rate": rate, "achieved_rate": achieved, "kept_up": kept_up,
                "cpu_seconds_per_million_records": cpu, "p50": p99 / 2, "p95": p99, "p99": p99}

    summary = streaming.summarize_steps([
        step(100.0, 100.0, True, 900.0, 1.5),
        step(200.0, 185.0, True, 700.0, 1.2),  # the publisher fell short: its own rate, not 200/s
        step(400.0, 400.0, False, 500.0, 9.0),  # did not keep up
    ])
    assert summary == {"kept_up_rate": 200.0,
                       "latency_floor": {"rate": 200.0, "p50": 0.6, "p95": 1.2, "p99": 1.2},
                       "cpu_seconds_per_million_records": 900.0, "cpu_at_rate": 100.0}
    # A single step the publisher fell short of, as on a loaded machine: no cost figure.
    only = streaming.summarize_steps([step(20.0, 18.0, True, 21653.5, 0.8)])
    assert only["cpu_seconds_per_million_records"] is None and only["cpu_at_rate"] is None
    assert only["kept_up_rate"] == 20.0
    assert streaming.summarize_steps([]) == {"kept_up_rate": None, "latency_floor": None,
                                             "cpu_seconds_per_million_records": None, "cpu_at_rate": None}


def test_drift_compares_first_and_last_quarter():
    steady = [(t, 1.0 + (t % 2) * 0.1) for t in range(40)]
    assert abs(drift(steady)) < 0.2
    behind = [(t, 1.0 + t * 0.25) for t in range(40)]  # a quarter second more per record
    assert drift(behind) == pytest.approx(7.5)
    assert drift([(t, 1.0) for t in range(30)] + [(t, math.inf) for t in range(30, 40)]) == math.inf


def _search(outcome, overloaded=lambda rate: False, **options) -> tuple[list[float], float | None]:
    """The rates a search tries when ``outcome(rate)`` says whether each passes."""
    search = RateSearch(200, **options)
    tried = []
    while (rate := search.next_rate()) is not None:
        tried.append(rate)
        search.record(rate, outcome(rate), overloaded(rate))
    return tried, search.sustainable


def test_sweep_doubles_then_bisects():
    tried, best = _search(lambda rate: rate <= 1000, refine=2)
    assert tried == [200, 400, 800, 1600, 1131, 951]
    assert best == 951


def test_sweep_halves_when_the_first_rate_fails():
    tried, best = _search(lambda rate: rate <= 60, refine=1, min_rate=25)
    assert tried == [200, 100, 50, 71]
    assert best == 50


def test_sweep_jumps_down_from_an_overload():
    tried, best = _search(lambda rate: rate <= 15, lambda rate: rate > 40, refine=1, min_rate=10)
    assert tried == [200, 50, 12, 24]
    assert best == 12


def test_sweep_stops_going_down_at_a_latency_floor():
    search = RateSearch(200)
    search.record(200, False, overloaded=True)
    assert search.next_rate() == 50
    search.record(50, False, floor=True)  # kept up, but p99 over the limit: lower rates will not help
    assert search.next_rate() is None and search.sustainable is None


def test_sweep_stops_at_the_bounds():
    assert _search(lambda rate: True, max_rate=1000) == ([200, 400, 800, 1000], 1000)
    assert _search(lambda rate: False, min_rate=25) == ([200, 100, 50, 25], None)
    assert _search(lambda rate: False, lambda rate: True, min_rate=10) == ([200, 50, 12, 10], None)


def test_a_pass_above_a_failure_is_not_capacity():
    search = RateSearch(200, rates=[200, 400, 800])
    for rate, passed in ((200, True), (400, False), (800, True)):
        assert search.next_rate() == rate
        search.record(rate, passed)
    assert search.next_rate() is None
    assert search.sustainable == 200


def test_tiny_run_against_the_emulator(tmp_path):
    """One rate, a few seconds, both pipelines: every record published in the
    measured window arrives, with a positive latency."""
    from tools.pubsub_emulator import EmulatorToolsError, check_tools

    try:
        check_tools()
    except EmulatorToolsError as err:
        pytest.fail(str(err), pytrace=False)
    parser = argparse.ArgumentParser()
    streaming.add_arguments(parser)
    args = parser.parse_args([
        "--stream_rates=20", "--stream_seconds=3", "--stream_warmup_seconds=0", "--stream_refresh_seconds=5",
        "--stream_tail_seconds=40", "--stream_abort_seconds=0", "--stream_budget_seconds=150",
        f"--stream_sample_dir={tmp_path / 'no-fleet'}",  # generates a one-day fleet
    ])
    result = streaming.run(args, tmp_path)
    print(streaming.render(result))
    json.dumps(result, allow_nan=False)  # JSON-serialisable as it is
    for which in ("job", "trivial"):
        (step,) = result[which]["steps"]
        assert step["rate"] == 20
        assert step["published"] > 0
        assert step["delivered"] == step["published"] and step["lost"] == 0, which
        assert 0 < step["p50"] <= step["p95"] <= step["p99"] <= step["max"]
        assert result[which]["startups_seconds"]
        assert step["throughput"] > 0
    assert result["rate"] == 20
    assert result["published"] == result["delivered"] == result["job"]["steps"][0]["published"]
    assert result["p99_seconds"] == result["job"]["steps"][0]["p99"] > 0
    assert result["ok"] is True
    assert result["publish_errors"] == 0 and result["receiver"]["bad_requests"] == 0
    assert "Streaming latency" in streaming.render(result)
    # The same figures per runner; locally the pipeline is one process.
    local = result["runners"]["local"]
    assert local["runner"] == "BundleBasedDirectRunner" and list(result["runners"]) == ["local"]
    assert local["job"] == result["job"] and local["p99_seconds"] == result["p99_seconds"]
    for which in ("job", "trivial"):
        (step,) = local[which]["steps"]
        assert set(step["cpu_seconds_by_role"]) == {"job"} and step["cpu_seconds"] > 0
        # Per million records delivered in the 3 s window; a job slower than
        # that to deliver its first one (a loaded machine) delivered none in it.
        if step["records_in_window"]:
            assert step["cpu_seconds_per_million_records"] == pytest.approx(
                step["cpu_seconds"] / step["records_in_window"] * 1e6, rel=0.01)
        else:
            assert step["cpu_seconds_per_million_records"] is None
