"""Sending a bundle's streams side by side within their budgets
(sinks/dispatch.py), and the recovery step that probes open circuits and
delivers the backlog first (sinks/recovery.py), on real loopback receivers.

The dispatch tests' budgets are short (half a second) to test the mechanism
quickly, so they are marked ``alone`` (a stall of a second decides which of a
request's read timeout and the bundle's budget is seen first); the fault suite
(tests/e2e/test_faults_*.py) measures it with the defaults. The recovery
tests' receivers answer: their requests get an unhurried budget
(``tests/policies.py``), as the tier runs at nice 19 beside the alone tests.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apache_beam import pvalue
from apache_beam.transforms.window import GlobalWindow, IntervalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from schemas.circuit import OPEN, RECOVERING, CircuitStore
from schemas.delivery import DEADLINE_EXCEEDED, DELIVERED, IN_FLIGHT, DeliveryResult
from sinks.dispatch import OVERRUNS
from sinks.http import Timeouts, new_session
from sinks.parking import PARKED, ParkedBatch, ParkStore
from sinks.recovery import RecoveredPane, _RecoverFn, sink_elements
from sinks.rest import _RestBulkWriteFn
from sinks.retry import RetryPolicy
from sinks.s3 import file_name
from tests.documents import event_doc, usage_doc
from tests.policies import UNHURRIED_SECONDS
from tests.streams import config, rest_stream, s3_stream
from tools import faults
from tools.local_destinations import HttpReceiver

SHORT = dict(max_attempts=2, deadline_seconds=5, base_delay_seconds=0.01, max_delay_seconds=0.05,
             stream_budget_seconds=0.5, budget_grace_seconds=0.5, probe_initial_seconds=0.1, probe_max_seconds=1)


def _fn(location: str | None = None, release_overrun_streams: bool = True, *,
        stream_budget_seconds: float = UNHURRIED_SECONDS, **extra: Any) -> _RestBulkWriteFn:
    """The bulk sink with the SHORT policy; ``stream_budget_seconds``: what a request
    may take (the dispatch tests pass SHORT's half second)."""
    policy = RetryPolicy(**(SHORT | {"stream_budget_seconds": stream_budget_seconds}), circuit_location=location,
                         release_overrun_streams=release_overrun_streams, **extra)
    fn = _RestBulkWriteFn(new_session, Timeouts(1, 30), 1_000_000, policy, allow_insecure=True)
    fn.setup()
    return fn


def _unwrap(outputs: list[Any]) -> tuple[list[DeliveryResult], list[ParkedBatch]]:
    results, parked = [], []
    for output in outputs:
        value = output.value if isinstance(output, pvalue.TaggedOutput) else output
        if isinstance(value, WindowedValue):
            value = value.value
        if isinstance(output, pvalue.TaggedOutput) and output.tag == PARKED:
            parked.append(value)
        elif isinstance(value, DeliveryResult):
            results.append(value)
    return results, parked


BASE = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def _batch(first_id: int, n: int = 3) -> list[tuple[str, dict[str, Any]]]:
    return [("event", event_doc("5.1.1", first_id + i, BASE + timedelta(seconds=i))) for i in range(n)]


@pytest.mark.alone  # asserts a timing: make test runs it with nothing beside it
def test_a_bundle_sends_streams_side_by_side_and_parks_a_batch_that_overruns(stream_secrets):
    """A destination that drips its answer (each read within the read timeout,
    the whole far beyond the budget) is abandoned at budget plus grace: its batch
    is parked as maybe delivered, and the healthy stream's batch was delivered
    meanwhile, not after it."""
    with HttpReceiver() as healthy, HttpReceiver() as dripping:
        # The whole answer takes 40 x 0.2 = 8 s, each read 0.2 s.
        dripping.down(faults.drip(dataclasses.replace(faults.OK, body=b'{"ok":true,"pad":"' + b"x" * 21 + b'"}'),
                                  chunk_bytes=1, interval_seconds=0.2))
        streams = config(rest_stream("dripping", f"{dripping.url}/d", bulk=True),
                         rest_stream("healthy", f"{healthy.url}/h", bulk=True))
        fn = _fn(stream_budget_seconds=SHORT["stream_budget_seconds"])
        fn.start_bundle()
        started = time.monotonic()
        outputs = list(fn.process(("dripping", _batch(1)), streams, GlobalWindow(), None, Timestamp(0)))
        outputs += list(fn.process(("healthy", _batch(10)), streams, GlobalWindow(), None, Timestamp(0)))
        outputs += list(fn.finish_bundle())
        took = time.monotonic() - started
        healthy_at = healthy.requests()[0].received_monotonic - started
        fn.teardown()
    results, parked = _unwrap(outputs)
    assert all(isinstance(o.value if isinstance(o, pvalue.TaggedOutput) else o, WindowedValue) for o in outputs)
    # Bounds by what they tell apart, not by how fast this machine is (it runs
    # alone, but CI machines are slower): waiting for the dripping stream would put
    # the healthy request at the budget plus grace (1 s) or later, and the
    # bundle's end at the whole answer (8 s).
    assert healthy_at < 1.0, "the healthy stream did not wait for the dripping one"
    assert 1.0 <= took < 5.0, "the bundle waited budget + grace for the overrun, not the whole answer"
    by_stream = {r.stream_id: r for r in results}
    assert (by_stream["healthy"].status, by_stream["healthy"].documents) == (DELIVERED, 3)
    assert (by_stream["dripping"].status, by_stream["dripping"].error) == ("failed", IN_FLIGHT)
    assert [(p.stream_id, p.error, [d["id"] for _, d in p.documents]) for p in parked] == [
        ("dripping", IN_FLIGHT, [1, 2, 3])]


@pytest.mark.alone  # asserts a timing: make test runs it with nothing beside it
def test_a_hanging_stream_costs_a_bundle_one_budget_and_the_circuit_stops_it(stream_secrets):
    """Five batches of a dead stream in one bundle, one lane: the first request
    runs out of its budget; after that the bundle waits for no more of that
    stream. The batch that started next is abandoned in flight (parked, maybe
    delivered), the three behind it are parked without a request, and the
    circuit, counting the abandoned batch and its request when it ends, is open
    for the next bundle."""
    with HttpReceiver() as dead:
        dead.down(faults.HANG)
        streams = config(rest_stream("dead", f"{dead.url}/d", bulk=True))
        fn = _fn(stream_budget_seconds=SHORT["stream_budget_seconds"])
        fn.start_bundle()
        started = time.monotonic()
        outputs = []
        for n in range(5):
            outputs += list(fn.process(("dead", _batch(100 * n)), streams, GlobalWindow(), None, Timestamp(0)))
        outputs += list(fn.finish_bundle())
        took = time.monotonic() - started
        # The abandoned request times out (its budget, cut short) and the circuit
        # counts it: 0.5 s on an idle machine; on a loaded one, waited for by the
        # circuit opening.
        time.sleep(SHORT["stream_budget_seconds"] + 0.5)
        opened_by = time.monotonic() + 30
        while fn._circuits.get("dead").state != OPEN and time.monotonic() < opened_by:
            time.sleep(0.05)
        fn.start_bundle()
        later = list(fn.process(("dead", _batch(900)), streams, GlobalWindow(), None, Timestamp(0)))
        later += list(fn.finish_bundle())
        requests = dead.requests()
        fn.teardown()
    budget = SHORT["stream_budget_seconds"]
    # One budget, then a short wait for the abandoned batch; a budget for each of
    # the five batches (2.5 s) is what the bound tells apart.
    assert budget <= took < 5 * budget, "one budget, then a short wait for the abandoned batch"
    results, parked = _unwrap(outputs)
    assert len(requests) == 2
    assert [(r.attempts, r.error) for r in results] == [
        (1, "ReadTimeout"), (0, IN_FLIGHT), (0, DEADLINE_EXCEEDED), (0, DEADLINE_EXCEEDED), (0, DEADLINE_EXCEEDED)]
    assert [p.reason for p in parked] == ["retries_exhausted"] * 5
    assert [p.documents[0][1]["id"] for p in parked] == [0, 100, 200, 300, 400]
    later_results, later_parked = _unwrap(later)
    assert [(r.attempts, p.reason) for r, p in zip(later_results, later_parked, strict=True)] == [
        (0, "stream_deactivated")]


@pytest.mark.alone  # asserts a timing: make test runs it with nothing beside it
def test_in_batch_a_hanging_stream_holds_its_bundle_so_every_failure_reaches_the_circuit(stream_secrets):
    """Batch (``release_overrun_streams=False``): the bundle's end waits for each
    of a dead stream's requests instead of abandoning them, so when the bundle
    (and maybe its worker process) ends, the circuit has counted all three and is
    open; nothing was abandoned in flight."""
    with HttpReceiver() as dead:
        dead.down(faults.HANG)
        streams = config(rest_stream("dead", f"{dead.url}/d", bulk=True))
        fn = _fn(release_overrun_streams=False, stream_budget_seconds=SHORT["stream_budget_seconds"])
        outputs = []
        started = time.monotonic()
        for n in range(3):  # one batch per bundle: each bundle's end sees one request
            fn.start_bundle()
            outputs += list(fn.process(("dead", _batch(100 * n)), streams, GlobalWindow(), None, Timestamp(0)))
            outputs += list(fn.finish_bundle())
        took = time.monotonic() - started
        requests = dead.requests()
        state = fn._circuits.get("dead").state
        fn.teardown()
    budget = SHORT["stream_budget_seconds"]
    results, parked = _unwrap(outputs)
    assert len(requests) == 3
    assert took >= 3 * budget, "each bundle waited for its request"
    assert [(r.attempts, r.error) for r in results] == [(1, "ReadTimeout")] * 3
    assert IN_FLIGHT not in [r.error for r in results]
    assert [p.documents[0][1]["id"] for p in parked] == [0, 100, 200]
    assert state == OPEN


def _park(store: ParkStore, stream_id: str, first_id: int, reason: str = "stream_deactivated") -> str:
    batch = ParkedBatch(stream_id, "rest_api_bulk", reason, None, "unreachable", None, 0,
                        "2026-12-01T00:00:00.000+00:00", tuple(_batch(first_id)))
    path = store.write(batch)
    time.sleep(0.02)  # distinct modification times: the backlog's order
    return path


def _recover_fn(tmp_path, fn: _RestBulkWriteFn) -> _RecoverFn:
    recover = _RecoverFn({"rest_api_bulk": fn}, str(tmp_path / "parked"), str(tmp_path / "status"),
                         UNHURRIED_SECONDS, 0)
    recover.setup()
    return recover


def test_recovery_probes_then_delivers_the_backlog_in_order_and_closes(tmp_path, stream_secrets):
    with HttpReceiver() as receiver:
        streams = config(rest_stream("r", f"{receiver.url}/r", bulk=True))
        store = ParkStore(str(tmp_path / "parked"))
        paths = [_park(store, "r", 100 * n) for n in range(3)]
        _park(store, "r", 900, reason="stream_paused")  # kept while paused: the stream is active again
        fn = _fn(str(tmp_path / "status"))
        circuits = CircuitStore(str(tmp_path / "status"), RetryPolicy(**SHORT).circuit_settings())
        circuits.open("r", "unreachable")
        time.sleep(0.2)  # the probe is due
        recover = _recover_fn(tmp_path, fn)
        results, _ = _unwrap(list(recover.process("tick", streams)))
        recover.teardown()
        bodies = [[d["id"] for d in r.json()] for r in receiver.requests()]
    assert bodies == [[0, 1, 2], [100, 101, 102], [200, 201, 202], [900, 901, 902]], "oldest first"
    assert [r.status for r in results] == [DELIVERED] * 4
    assert not set(paths) & set(store.list("r")), "delivered batches are deleted"
    assert store.list("r") == []
    assert circuits.get("r", fresh=True).closed


def test_an_activated_stream_gets_what_was_kept_while_paused_first_once(tmp_path, stream_secrets):
    """Activated in the portal (``resumed_at``): the circuit goes recovering (the
    sinks park live documents behind the backlog), the batches kept while it was
    paused are delivered oldest first, then the circuit closes. The same
    ``resumed_at`` is acted on once; a paused stream's backlog stays."""
    with HttpReceiver() as receiver:
        resumed = rest_stream("r", f"{receiver.url}/r", bulk=True, resumed_at="2026-12-01T08:00:00+00:00")
        paused = rest_stream("p", f"{receiver.url}/p", bulk=True, state="paused",
                             resumed_at="2026-12-01T08:00:00+00:00")
        streams = config(resumed, paused)
        store = ParkStore(str(tmp_path / "parked"))
        for n in range(2):
            _park(store, "r", 100 * n, reason="stream_paused")
        _park(store, "p", 500, reason="stream_paused")
        circuits = CircuitStore(str(tmp_path / "status"), RetryPolicy(**SHORT).circuit_settings())
        recover = _recover_fn(tmp_path, _fn(str(tmp_path / "status")))
        results, _ = _unwrap(list(recover.process("tick", streams)))
        state = circuits.get("r", fresh=True)
        assert state.closed and state.resumed_at == "2026-12-01T08:00:00+00:00"
        time.sleep(0.05)
        again = _recover_fn(tmp_path, _fn(str(tmp_path / "status")))  # another worker, or the next tick
        assert list(again.process("tick", streams)) == []
        recover.teardown()
        again.teardown()
        bodies = [(r.path, [d["id"] for d in r.json()]) for r in receiver.requests()]
    assert bodies == [("/r", [0, 1, 2]), ("/r", [100, 101, 102])]
    assert [r.status for r in results] == [DELIVERED] * 2
    assert store.list("r") == [] and len(store.list("p")) == 1, "a paused stream keeps its backlog"


def test_a_live_batch_of_a_resumed_stream_is_parked_behind_its_backlog(tmp_path, stream_secrets):
    """Between the resume and the end of the drain, the sink parks live
    documents (recoverable, delivered after the backlog): the backlog goes first."""
    with HttpReceiver() as receiver:
        streams = config(rest_stream("r", f"{receiver.url}/r", bulk=True))
        circuits = CircuitStore(str(tmp_path / "status"), RetryPolicy(**SHORT).circuit_settings())
        assert circuits.resume("r", "2026-12-01T08:00:00+00:00").state == RECOVERING
        fn = _fn(str(tmp_path / "status"))
        _, parked = _unwrap(list(fn.deliver_now(("r", _batch(7)), streams, GlobalWindow(), None)))
        fn.teardown()
        assert receiver.requests() == []
    assert [(p.stream_id, p.reason) for p in parked] == [("r", "stream_deactivated")]


@pytest.mark.parametrize("streaming", [True, False])
def test_before_the_recovery_step_acts_on_a_resume_a_streaming_sink_parks_and_a_batch_one_sends(
        tmp_path, stream_secrets, streaming):
    """The refreshed configuration may reach a sink before the recovery step's
    tick: in streaming the sink parks the resumed stream's live documents until
    the circuit acted on the resume (the backlog goes first). A batch run has no
    recovery step, so it sends them."""
    with HttpReceiver() as receiver:
        streams = config(rest_stream("r", f"{receiver.url}/r", bulk=True, resumed_at="2026-12-01T08:00:00+00:00"))
        fn = _fn(str(tmp_path / "status"), resume_backlog_first=streaming)
        results, parked = _unwrap(list(fn.deliver_now(("r", _batch(7)), streams, GlobalWindow(), None)))
        fn.teardown()
        sent = len(receiver.requests())
    if streaming:
        assert sent == 0 and [(p.stream_id, p.token) for p in parked] == [("r", "resuming")]
    else:
        assert sent == 1 and [r.status for r in results] == [DELIVERED] and parked == []


def test_a_restart_probes_an_open_circuit_now(tmp_path, stream_secrets):
    """Restarted in Error (``resumed_at``): the open circuit's probe, due in an
    hour, is sent at the next tick."""
    with HttpReceiver() as receiver:
        store = ParkStore(str(tmp_path / "parked"))
        _park(store, "r", 0, reason="stream_deactivated")
        circuits = CircuitStore(str(tmp_path / "status"), RetryPolicy(**SHORT).circuit_settings())
        circuits.open("r", "unreachable")
        circuits._update("r", lambda s: dataclasses.replace(s, next_probe_at=time.time() + 3600))
        recover = _recover_fn(tmp_path, _fn(str(tmp_path / "status")))
        assert list(recover.process("tick", config(rest_stream("r", f"{receiver.url}/r", bulk=True)))) == []
        recover.teardown()
        restarted = config(rest_stream("r", f"{receiver.url}/r", bulk=True,
                                       resumed_at="2026-12-01T09:00:00+00:00"))
        recover = _recover_fn(tmp_path, _fn(str(tmp_path / "status")))
        results, _ = _unwrap(list(recover.process("tick", restarted)))
        recover.teardown()
        assert [[d["id"] for d in r.json()] for r in receiver.requests()] == [[0, 1, 2]]
    assert [r.status for r in results] == [DELIVERED]
    assert circuits.get("r", fresh=True).closed


def _closed_with_a_parked_batch(tmp_path, receiver: HttpReceiver, stream_id: str,
                                probe_initial_seconds: float) -> tuple[Any, ParkStore, _RestBulkWriteFn, CircuitStore]:
    """A REST bulk stream with one batch parked by a failure, its circuit closed:
    (stream config, park store, sink, circuits)."""
    policy = RetryPolicy(**(SHORT | {"probe_initial_seconds": probe_initial_seconds,
                                     "stream_budget_seconds": UNHURRIED_SECONDS}),
                         circuit_location=str(tmp_path / "status"))
    streams = config(rest_stream(stream_id, f"{receiver.url}/{stream_id}", bulk=True))
    store = ParkStore(str(tmp_path / "parked"))
    _park(store, stream_id, 0, reason="retries_exhausted")
    fn = _RestBulkWriteFn(new_session, Timeouts(1, 30), 1_000_000, policy, allow_insecure=True)
    fn.setup()
    return streams, store, fn, CircuitStore(str(tmp_path / "status"), policy.circuit_settings())


def _age_last_failure(circuits: CircuitStore, stream_id: str, seconds: float) -> None:
    """Move the stream's last recorded failure ``seconds`` into the past: a
    minute passing, without a test that sleeps it or a short delay that a
    stalled nice-19 process overruns before its "not yet" (CI, 2026-12-04:
    a 1 s delay was over before the first tick)."""
    circuits._update(stream_id, lambda state: dataclasses.replace(state, failed_at=state.failed_at - seconds))


@pytest.mark.parametrize("token", ["unreachable", "throttled", "server_error"])
def test_a_stream_whose_last_batch_failed_waits_a_first_probe_delay_before_recovery_resends(
        tmp_path, stream_secrets, token):
    """A stream whose last batch failed (it hung, reset, was throttled, answered
    5xx), circuit still closed, its batch parked: recovery leaves it alone for
    the first probe's delay (its live batches tell first; re-sending at once
    would hold every step of the DirectRunner for a budget per tick), then
    re-sends the parked batch even if no live batch came. Nothing in this
    process's overrun record: the circuit, which every worker shares, decides."""
    with HttpReceiver() as receiver:
        streams, store, fn, circuits = _closed_with_a_parked_batch(tmp_path, receiver, "failed", 60.0)
        circuits.record("failed", False, token, True)
        assert not OVERRUNS.overran("failed")
        soon = _recover_fn(tmp_path, fn)
        assert list(soon.process("tick", streams)) == []
        soon.teardown()
        assert receiver.requests() == [], "left to its live batches"
        _age_last_failure(circuits, "failed", 61.0)
        later = _recover_fn(tmp_path, fn)
        results, _ = _unwrap(list(later.process("tick", streams)))
        later.teardown()
        bodies = [[d["id"] for d in r.json()] for r in receiver.requests()]
    assert bodies == [[0, 1, 2]]
    assert [r.status for r in results] == [DELIVERED]
    assert store.list("failed") == []


def test_after_a_live_success_recovery_delivers_what_the_failures_parked_at_once(tmp_path, stream_secrets):
    """The failures were followed by a successful live batch (the destination
    answers again, circuit still closed): the parked batch goes at the next
    tick, without waiting for the first probe's delay."""
    with HttpReceiver() as receiver:
        streams, _, fn, circuits = _closed_with_a_parked_batch(tmp_path, receiver, "back", 60.0)
        circuits.record("back", False, "server_error", True)
        circuits.record("back", True)
        recover = _recover_fn(tmp_path, fn)
        results, _ = _unwrap(list(recover.process("tick", streams)))
        recover.teardown()
        bodies = [[d["id"] for d in r.json()] for r in receiver.requests()]
    assert bodies == [[0, 1, 2]]
    assert [r.status for r in results] == [DELIVERED]


def test_a_failed_probe_keeps_the_backlog_and_waits_twice_as_long(tmp_path, stream_secrets):
    with HttpReceiver() as receiver:
        receiver.down(faults.unavailable())
        streams = config(rest_stream("r", f"{receiver.url}/r", bulk=True))
        store = ParkStore(str(tmp_path / "parked"))
        paths = [_park(store, "r", 100 * n) for n in range(2)]
        fn = _fn(str(tmp_path / "status"))
        circuits = CircuitStore(str(tmp_path / "status"), RetryPolicy(**SHORT).circuit_settings())
        circuits.open("r", "unreachable")
        time.sleep(0.2)
        recover = _recover_fn(tmp_path, fn)
        list(recover.process("tick", streams))
        recover.teardown()
        tried = [tuple(d["id"] for d in r.json()) for r in receiver.requests()]
    # One attempt (the policy would make two): the next probe is the retry, and
    # a probe of a fast-failing destination holds the job's other steps for no backoff.
    assert tried == [(0, 1, 2)], "only the oldest batch probed, once"
    assert store.list("r") == sorted(paths)
    state = circuits.get("r", fresh=True)
    assert (state.state, state.probes, state.probe_delay_seconds) == (OPEN, 1, 0.2)


def test_once_a_probe_got_through_the_backlog_is_sent_with_the_policys_retries(tmp_path, stream_secrets):
    """Only the probe is a single attempt: the backlog behind it is live data
    again, and one 503 while it is delivered is retried, not a failed probe."""
    with HttpReceiver() as receiver:
        streams = config(rest_stream("r", f"{receiver.url}/r", bulk=True))
        store = ParkStore(str(tmp_path / "parked"))
        for n in range(2):
            _park(store, "r", 100 * n)
        fn = _fn(str(tmp_path / "status"))
        circuits = CircuitStore(str(tmp_path / "status"), RetryPolicy(**SHORT).circuit_settings())
        circuits.open("r", "unreachable")
        time.sleep(0.2)
        receiver.down(faults.matching(lambda request: bool(request.body) and request.json()[0]["id"] == 100,
                                      faults.first(1, faults.unavailable())))
        recover = _recover_fn(tmp_path, fn)
        results, _ = _unwrap(list(recover.process("tick", streams)))
        recover.teardown()
        tried = [(tuple(d["id"] for d in r.json()), r.accepted) for r in receiver.requests()]
    assert tried == [((0, 1, 2), True), ((100, 101, 102), False), ((100, 101, 102), True)]
    assert [r.status for r in results] == [DELIVERED, DELIVERED]
    assert store.list("r") == []
    assert circuits.get("r", fresh=True).closed


def test_a_probe_waits_while_a_redrive_holds_the_stream(tmp_path, stream_secrets):
    with HttpReceiver() as receiver:
        streams = config(rest_stream("r", f"{receiver.url}/r", bulk=True))
        _park(ParkStore(str(tmp_path / "parked")), "r", 0)
        fn = _fn(str(tmp_path / "status"))
        circuits = CircuitStore(str(tmp_path / "status"), RetryPolicy(**SHORT).circuit_settings())
        circuits.open("r", "unreachable")
        assert circuits.begin_probe("r", "redrive-1", force=True)
        circuits.recovering("r", "redrive-1")
        recover = _recover_fn(tmp_path, fn)
        list(recover.process("tick", streams))
        recover.teardown()
        assert receiver.requests() == []
    assert circuits.get("r", fresh=True).state == RECOVERING


def test_recovered_s3_batches_are_files_of_their_own_in_their_windows():
    stream = config(s3_stream("s", "http://127.0.0.1:1", "b", batching={"rotation_seconds": 60}))["s"]
    batch = ParkedBatch("s", "aws_s3", "retries_exhausted", None, None, None, 1, "2026-12-01T00:00:00.000+00:00",
                        (("usage", usage_doc(1, BASE + timedelta(seconds=10))),
                         ("usage", usage_doc(2, BASE + timedelta(seconds=70))),
                         ("event", event_doc("5.1.1", 3, BASE + timedelta(seconds=20)))))
    elements = sink_elements(stream, batch)
    start = int(BASE.timestamp())
    assert sorted((key, [d["id"] for d in docs], w.start.micros // 10**6 - start, w.end.micros // 10**6 - start)
                  for (key, docs), w in elements) == [
        (("s", "event", 60), [3], 0, 60), (("s", "usage", 60), [1], 0, 60), (("s", "usage", 60), [2], 60, 120)]
    assert all(isinstance(w, IntervalWindow) for _, w in elements)
    pane = RecoveredPane(batch.batch_id[:8])
    assert file_name("usage", datetime(2026, 12, 1, 8, 5), pane_index=pane.index,
                     recovered=pane.recovered) == f"cdr_20261201_080500_r{batch.batch_id[:8]}.csv"


@pytest.mark.parametrize("api_type", ["rest_api", "rest_api_bulk", "aws_kinesis"])
def test_batching_sinks_take_a_parked_batch_as_one_element(api_type):
    stream = config(rest_stream("r", "http://127.0.0.1:1/r"))["r"]
    stream = type(stream)(**{**stream.__dict__, "api_type": api_type}) if api_type != "rest_api" else stream
    batch = ParkedBatch("r", api_type, "retries_exhausted", None, None, None, 1, "t", tuple(_batch(1)))
    [(element, window)] = sink_elements(stream, batch)
    assert element == ("r", list(batch.documents)) and window == GlobalWindow()


def test_a_request_retrying_when_its_sink_is_torn_down_ends_on_its_own_terms(stream_secrets):
    """Teardown does not wait for a request still running (an abandoned one holds
    its thread until its budget ends): the request's next attempt, after the
    destination's Retry-After, is a real request with a real outcome, never an
    error of the sink's own closed client (it was an ``AttributeError`` on the
    emptied session, counted against the destination as a ``remote_error``)."""
    with HttpReceiver() as receiver:
        receiver.down(faults.first(1, faults.unavailable(retry_after=1)))
        streams = config(rest_stream("r", f"{receiver.url}/r", bulk=True))
        fn = _fn()
        outputs: list[Any] = []

        def bundle() -> None:
            fn.start_bundle()
            outputs.extend(fn.process(("r", _batch(0)), streams, GlobalWindow(), None, Timestamp(0)))
            outputs.extend(fn.finish_bundle())

        sender = threading.Thread(target=bundle)
        sender.start()
        first_by = time.monotonic() + UNHURRIED_SECONDS
        while not receiver.requests() and time.monotonic() < first_by:
            time.sleep(0.01)
        fn.teardown()  # within the Retry-After second (or later on a stalled machine: the same outcome)
        sender.join(UNHURRIED_SECONDS)
        tried = [(r.accepted, [d["id"] for d in r.json()]) for r in receiver.requests()]
    results, parked = _unwrap(outputs)
    assert tried == [(False, [0, 1, 2]), (True, [0, 1, 2])]
    assert [(r.status, r.attempts, r.error) for r in results] == [(DELIVERED, 2, None)]
    assert parked == []
