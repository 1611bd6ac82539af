"""How a run ends (``pipelines/drain.py``, the exit statuses of
``pipelines/data_streamer.main``): a failure named in one line, a streaming run
waited on and drained, what was in flight, and the status each ending gets.
The real processes are in ``tests/e2e/test_endings.py``."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import pytest
from apache_beam.runners.runner import PipelineState

from pipelines import data_streamer, drain
from pipelines.drain import PipelineFailedError, StreamingRun, describe_failure
from pipelines.summary import DrainReport, KindSummary, RunSummary

PARK_ERROR = ("NotADirectoryError: [Errno 20] Not a directory: '/srv/parked' "
              "[while running 'Deliver/WriteParked[rest_api]/Write']")


@pytest.mark.parametrize("error, step, text", [
    # Beam could not rebuild the type with the annotation: a RuntimeError naming it.
    (RuntimeError(PARK_ERROR), "Deliver/WriteParked[rest_api]/Write",
     "NotADirectoryError: [Errno 20] Not a directory: '/srv/parked'"),
    # ... or it could: the same type, the annotation appended.
    (ValueError("bad config [while running 'Usage/Enrich/Enrich']"), "Usage/Enrich/Enrich", "ValueError: bad config"),
    # A portable runner: the worker's traceback in the message.
    (RuntimeError("Pipeline job-42 failed in state FAILED: Traceback (most recent call last):\n"
                  "  File \"sinks/parking.py\", line 118, in write\n"
                  "KeyError: 'stream' [while running 'Deliver/Route']\n"), "Deliver/Route", "KeyError: 'stream'"),
    # Not a step's error: the runner's.
    (ConnectionError("job service at localhost:8099 unreachable"), None,
     "ConnectionError: job service at localhost:8099 unreachable"),
])
def test_a_failure_is_its_step_and_error(error, step, text):
    failure = describe_failure(error)
    assert (failure.step, failure.error) == (step, text)
    assert "\n" not in str(failure)
    assert str(failure) == (f"the pipeline failed in step '{step}': {text}" if step
                            else f"the pipeline failed: {text}")


def test_a_long_error_is_cut_to_one_readable_line():
    failure = describe_failure(RuntimeError("x" * 5000 + " [while running 'A']"))
    assert failure.step == "A" and len(failure.error) < drain.MAX_ERROR_CHARS + 40


def _summary(read: int = 0, documents: int = 0, dead: int = 0, routed: int = 0, delivered: int = 0) -> RunSummary:
    events = KindSummary(read=read, valid=read - dead, unique=read - dead, documents=documents,
                         routed_documents=routed, routed=routed, dead_letters={"not_json": dead} if dead else {})
    streams = {"rest": {"routed": routed, "delivered": delivered}} if routed else {}
    return RunSummary({"event": events, "usage": KindSummary()}, streams=streams)


def test_in_flight_is_what_sits_between_two_counts():
    assert _summary(read=10, documents=7, dead=1, routed=7, delivered=4).in_flight() == {
        "records": 2, "documents": 0, "deliveries": 3}
    assert _summary(read=10, documents=9, dead=1, routed=9, delivered=9).in_flight() == {
        "records": 0, "documents": 0, "deliveries": 0}


class _Result:
    """A runner's result: ``wait_until_finish`` blocks until the job ends."""

    def __init__(self) -> None:
        self.state = PipelineState.RUNNING
        self.error: BaseException | None = None
        self.ended = threading.Event()
        self.cancelled = False

    def wait_until_finish(self) -> Any:
        self.ended.wait()
        if self.error is not None:
            self.state = PipelineState.FAILED
            raise self.error
        return self.state

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.ended.set()

    def cancel(self) -> None:
        self.cancelled = True
        self.state = PipelineState.CANCELLED
        self.ended.set()


class _Counts:
    """The counters as the run reads them, changed by the test."""

    def __init__(self, summary: RunSummary) -> None:
        self.summary = summary

    def __call__(self, result: Any) -> RunSummary:
        return self.summary


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(drain, "POLL_SECONDS", 0.02)
    monkeypatch.setattr(drain, "QUIET_SECONDS", 0.1)


def test_a_failure_ends_the_wait_with_its_step():
    result = _Result()
    running = StreamingRun(result, None, _Counts(_summary()))
    result.fail(RuntimeError(PARK_ERROR))
    with pytest.raises(PipelineFailedError) as caught:
        running.wait(None, threading.Event())
    assert caught.value.step == "Deliver/WriteParked[rest_api]/Write"
    running.cancel()
    assert not result.cancelled  # a failed job is not cancelled again


def test_the_wait_ends_at_sigterm_or_after_the_run_seconds():
    result = _Result()
    running = StreamingRun(result, None, _Counts(_summary()))
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert running.wait(None, stop) == "SIGTERM"
    assert running.wait(0, threading.Event()) == "--run_seconds"
    running.cancel()
    assert result.cancelled
    assert not running._waiter.is_alive()


@pytest.mark.alone  # asserts a timing: make test runs it with nothing beside it
def test_a_drain_ends_once_nothing_is_in_flight_and_the_counts_stand_still():
    counts = _Counts(_summary(read=10, documents=6, routed=6, delivered=3))
    result = _Result()
    running = StreamingRun(result, None, counts)
    threading.Timer(0.3, lambda: setattr(counts, "summary", _summary(read=10, documents=10, routed=10,
                                                                     delivered=10))).start()
    started = time.monotonic()
    seconds = running.drain(reads_stopped=True, limit_seconds=10)
    assert 0.3 + drain.QUIET_SECONDS <= seconds < 5 and time.monotonic() - started < 5
    running.cancel()
    report = running.report("SIGTERM", True, 10, seconds)
    assert report.clean and report.in_flight == {"records": 0, "documents": 0, "deliveries": 0,
                                                 "dead_letters_unwritten": 0}


@pytest.mark.alone  # asserts a timing: make test runs it with nothing beside it
def test_a_drain_cut_short_reports_what_was_in_flight():
    result = _Result()
    running = StreamingRun(result, None, _Counts(_summary(read=10, documents=6, routed=6, delivered=3)))
    seconds = running.drain(reads_stopped=True, limit_seconds=0.3)
    assert 0.3 <= seconds < 5  # the 0.3 s limit, not a wait for the counts
    running.cancel()
    report = running.report("--run_seconds", True, 0.3, seconds)
    assert not report.clean
    assert report.in_flight == {"records": 4, "documents": 0, "deliveries": 3, "dead_letters_unwritten": 0}
    assert "in flight when it stopped: 4 records, 3 deliveries: read and acknowledged" in "\n".join(report.render())


@pytest.mark.alone  # asserts a timing: make test runs it with nothing beside it
def test_reads_that_could_not_stop_are_not_waited_for():
    result = _Result()
    running = StreamingRun(result, None, _Counts(_summary(read=3, documents=1, routed=1, delivered=1)))
    assert running.drain(reads_stopped=False, limit_seconds=30) < 10  # not the 30 s limit
    running.cancel()
    report = running.report("SIGTERM", False, 30, 0)
    assert not report.clean
    assert "could not stop the reads, so it cancelled without draining" in report.render()[0]


def test_dead_letters_count_as_in_flight_until_their_output_window_is_written():
    wall = [1_000.0]
    counts = _Counts(_summary(read=1, dead=0))
    result = _Result()
    running = StreamingRun(result, 10, counts, wall=lambda: wall[0])
    running._sample(force=True)
    wall[0] = 1_005.0  # a dead letter counted in the window [1000, 1010)
    counts.summary = _summary(read=1, dead=1)
    running._sample(force=True)
    for moment, unwritten in ((1_006.0, 1), (1_012.0, 1), (1_013.5, 0)):
        wall[0] = moment  # the window fires at 1010 and is written within the grace of 3 s
        assert running._dead_letters_unwritten(counts.summary) == unwritten, moment
    running.cancel()


def test_stopping_reads_asks_the_readers_registered_for_the_runner():
    stopped: list[frozenset[str]] = []
    drain.register_read_stopper(["TestOnlyRunner"], stopped.append)
    assert drain.stop_reading("TestOnlyRunner", ["projects/p/subscriptions/a"]) is True
    assert stopped == [frozenset({"projects/p/subscriptions/a"})]
    assert drain.stop_reading("DataflowRunner", ["projects/p/subscriptions/a"]) is False


@pytest.mark.parametrize("report, code", [
    (None, 0),
    (DrainReport("SIGTERM", 30, 4.2, True, {"records": 0, "deliveries": 0}), 0),
    (DrainReport("SIGTERM", 30, 30.0, True, {"records": 0, "deliveries": 7}), 3),
])
def test_exit_statuses_of_runs_that_end(monkeypatch, report, code):
    summary = _summary(read=2, documents=2, routed=2, delivered=2 if code == 0 else 0)
    summary.drain = report
    monkeypatch.setattr(data_streamer, "run", lambda argv: summary)
    assert data_streamer.main([]) == code


def test_a_failed_pipeline_exits_1_with_one_line(monkeypatch, capsys):
    def failing(argv: Any) -> None:
        raise describe_failure(RuntimeError(PARK_ERROR))

    monkeypatch.setattr(data_streamer, "run", failing)
    assert data_streamer.main([]) == 1
    assert capsys.readouterr().err == (
        "error: the pipeline failed in step 'Deliver/WriteParked[rest_api]/Write': "
        "NotADirectoryError: [Errno 20] Not a directory: '/srv/parked'\n")


def test_sigterm_drains_a_streaming_run_and_stops_anything_else(monkeypatch, capsys):
    beam_logger = logging.getLogger("apache_beam")
    monkeypatch.setattr(beam_logger, "level", beam_logger.level)  # a stop quietens Beam's logger: restored after
    def streaming(argv: Any) -> RunSummary:
        data_streamer._DRAINABLE.set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert data_streamer._TERMINATE.is_set() and not data_streamer._STOP_NOW.is_set()
        os.kill(os.getpid(), signal.SIGTERM)  # a second one: end the drain now
        assert data_streamer._STOP_NOW.is_set()
        return _summary()

    monkeypatch.setattr(data_streamer, "run", streaming)
    assert data_streamer.main([]) == 0

    def batch(argv: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(data_streamer, "run", batch)
    assert data_streamer.main([]) == 143
    assert capsys.readouterr().err == "terminated: the job was stopped (SIGTERM); its outputs are incomplete\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_stopped_run_without_any_counter_says_so_instead_of_reconciling_zeros():
    """Flink's job server reports no metrics for a cancelled streaming job: the
    summary must not print zeros as a reconciliation."""
    summary = RunSummary({"event": KindSummary(), "usage": KindSummary()}, counted=False)
    summary.drain = DrainReport("SIGTERM", 30, 0.0, False, {"records": 0})
    text = summary.render()
    assert "counts: none; the runner reported no metrics" in text
    assert "reconciled:" not in text and "records read" not in text
    assert (summary.to_dict()["reconciled"], summary.to_dict()["counted"]) == (None, False)
    # A batch run with no counter (no input at all) is an ordinary, counted run.
    batch = RunSummary({"event": KindSummary(), "usage": KindSummary()}, counted=False)
    assert batch.to_dict()["reconciled"] is True and "records read" in batch.render()
