"""pipelines.historic after the marker: whether it waits for a streaming job
(``check_live_job``, ``wait_for_live_job``), and which parked documents it
drops as already delivered as history (``drop_delivered_history``)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from pipelines.historic import (
    LiveJobCheck,
    check_live_job,
    drop_delivered_history,
    live_job_proof,
    wait_for_live_job,
)
from schemas.delivery import AWAITING_HISTORY, RETRIES_EXHAUSTED, DeliveryResult
from sinks.parking import ParkedBatch, ParkStore
from tests.streams import config, rest_stream
from transforms.status import LiveJob, _UpdateStatusFn, live_job_path, load_live_job, write_live_job

M = datetime(2026, 12, 3, 17, 0, tzinfo=UTC)  # the marker
WHERE = "/status"


def _stamp(at: datetime, streaming: bool = True, refresh: int | None = 300, window: int | None = 60) -> LiveJob:
    if not streaming:
        refresh = window = None
    return LiveJob(streaming, refresh, window, at.isoformat(timespec="milliseconds"))


def _check(live, status_before=None, now=M + timedelta(seconds=5), started=M - timedelta(seconds=30), refresh=300):
    return check_live_job(live, status_before, M, now, started, refresh, WHERE)


def test_after_a_batch_run_there_is_nothing_to_wait_for():
    check = _check(_stamp(M - timedelta(seconds=40), streaming=False))
    assert not check.wait
    assert "was a batch run" in check.reason


def test_a_running_streaming_job_is_waited_for_until_a_status_write_after_its_refresh_and_two_windows():
    check = _check(_stamp(M - timedelta(seconds=20)))
    assert check.wait and check.stamped
    assert check.proof_after == M + timedelta(seconds=300 + 2 * 60)
    assert "a streaming job is running" in check.reason
    # Its own intervals count, not --refresh_interval_seconds.
    assert _check(_stamp(M - timedelta(seconds=20), refresh=10, window=5), refresh=300).proof_after == \
        M + timedelta(seconds=20)


def test_a_streaming_job_that_has_re_read_the_holds_already_is_not_waited_for():
    check = _check(_stamp(M + timedelta(seconds=421)), now=M + timedelta(seconds=430))
    assert not check.wait
    assert "has re-read the holds since the marker" in check.reason


def test_a_streaming_job_silent_for_two_of_its_intervals_is_taken_as_stopped():
    assert _check(_stamp(M - timedelta(seconds=100)), now=M + timedelta(seconds=499)).wait
    check = _check(_stamp(M - timedelta(seconds=100)), now=M + timedelta(seconds=501))
    assert not check.wait and "no streaming job is running" in check.reason


def test_without_live_job_json_the_status_records_decide():
    assert not _check(None).wait
    old = (M - timedelta(seconds=30 + 601)).isoformat()
    assert not _check(None, status_before=old).wait
    recent = (M - timedelta(seconds=40)).isoformat()
    check = _check(None, status_before=recent)
    assert check.wait and not check.stamped
    assert check.proof_after == M + timedelta(seconds=300)
    assert "older version" in check.reason


def test_proof_from_the_status_records_must_be_written_after_the_wait_began():
    check = LiveJobCheck(True, "", M + timedelta(seconds=10), stamped=False)
    since = M + timedelta(seconds=20)  # this command's own re-drive wrote the status before
    assert live_job_proof(check, None, (M + timedelta(seconds=15)).isoformat(), since) is None
    assert live_job_proof(check, None, (M + timedelta(seconds=21)).isoformat(), since) is not None


def test_a_batch_stamp_during_the_wait_proves_nothing():
    check = LiveJobCheck(True, "", M + timedelta(seconds=10))
    assert live_job_proof(check, _stamp(M + timedelta(seconds=30), streaming=False), None, M) is None
    assert live_job_proof(check, _stamp(M + timedelta(seconds=30)), None, M) is not None


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_wait_ends_at_the_first_proof():
    clock = _Clock()
    check = LiveJobCheck(True, "", M + timedelta(seconds=10))
    stamps = iter([M, M + timedelta(seconds=5), M + timedelta(seconds=11)])
    waited, proof = wait_for_live_job(check, 120, lambda: (_stamp(next(stamps)), None), M, clock, clock.sleep)
    assert proof is not None and waited == 10.0 and clock.sleeps == [5.0, 5.0]


def test_the_wait_is_bounded_by_the_settle_time():
    clock = _Clock()
    check = LiveJobCheck(True, "", M + timedelta(seconds=10))
    waited, proof = wait_for_live_job(check, 12, lambda: (_stamp(M), None), M, clock, clock.sleep)
    assert proof is None and waited == 12.0 and clock.sleeps == [5.0, 5.0, 2.0]


def test_the_wait_sees_a_job_writing_live_job_json(tmp_path):
    """A stand-in for a streaming job: writes the stamp every 0.2 s, as the
    job's status update does every output window."""
    location = str(tmp_path)
    stop = threading.Event()

    def job() -> None:
        while not stop.wait(0.2):
            write_live_job(location, LiveJob(True, 1, 1))

    marker = datetime.now(UTC)
    write_live_job(location, LiveJob(True, 1, 1))
    check = check_live_job(load_live_job(location), None, marker, datetime.now(UTC), marker, 300, location)
    assert check.wait and check.proof_after == marker + timedelta(seconds=3)
    thread = threading.Thread(target=job)
    thread.start()
    try:
        started = time.monotonic()
        waited, proof = wait_for_live_job(check, 30, lambda: (load_live_job(location), None), marker, poll=0.1)
        assert waited < 30
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
    assert proof is not None and "streaming job wrote status" in proof
    # At least until the stamp after the marker's 3 s (the job's writes are the
    # proof); not the 30 s limit (``waited`` above). No tighter upper bound: the
    # unit tier runs at nice 19 beside the alone tests, where seconds go by.
    assert elapsed >= 2.0, elapsed


def test_live_job_json_unreadable_is_none(tmp_path):
    assert load_live_job(str(tmp_path)) is None
    (tmp_path / "live_job.json").write_text("{not json")
    assert load_live_job(str(tmp_path)) is None
    (tmp_path / "live_job.json").write_text('{"streaming": true, "written_at": "yesterday"}')
    assert load_live_job(str(tmp_path)) is None


def test_the_status_update_writes_live_job_json_only_for_the_live_job(tmp_path):
    streams = config(rest_stream("r", "https://hooks.example.com/a"))
    result = DeliveryResult("r", "rest_api", 1, 10, "delivered", 202, None, 0, "2026-12-03T17:00:00.000+00:00", 5,
                            "https://hooks.example.com/a")
    backfill = _UpdateStatusFn(str(tmp_path / "a"), 3)
    list(backfill.process((None, [("r", [result])]), streams))
    assert (tmp_path / "a" / "status.jsonl").exists() and load_live_job(str(tmp_path / "a")) is None
    live = _UpdateStatusFn(str(tmp_path / "b"), 3, live_job=LiveJob(True, 300, 60))
    before = datetime.now(UTC)
    list(live.process((None, [("r", [result])]), streams))
    stamp = load_live_job(str(tmp_path / "b"))
    assert stamp is not None and (stamp.streaming, stamp.refresh_interval_seconds, stamp.output_window_seconds) == \
        (True, 300, 60)
    assert datetime.fromisoformat(stamp.written_at) >= before - timedelta(milliseconds=1)
    assert live_job_path(str(tmp_path / "b")).endswith("/live_job.json")


# --- dropping what the history delivered ---------------------------------------------

def _doc(kind: str, doc_id: int, hour: int) -> tuple[str, dict]:
    if kind == "event":
        return kind, {"id": doc_id, "timestamp": f"2026-11-01T{hour:02d}:00:00.000+0000"}
    return kind, {"id": doc_id, "start_timestamp": f"2026-11-01 {hour:02d}:00:00", "end_timestamp":
                  f"2026-11-01 {hour:02d}:10:00"}


def _batch(reason: str, documents, parked_at: str = "2026-12-03T16:00:00.000+00:00") -> ParkedBatch:
    return ParkedBatch("s", "rest_api_bulk", reason, None, None, None, 0, parked_at, tuple(documents))


def _ids(path, keys) -> None:
    path.write_bytes(b"".join(orjson.dumps(list(key)) + b"\n" for key in keys))


START, END = datetime(2026, 11, 1, 0, tzinfo=UTC), datetime(2026, 11, 1, 12, tzinfo=UTC)


def test_documents_the_history_delivered_are_dropped_from_every_parked_batch(tmp_path):
    store = ParkStore(str(tmp_path / "parked"))
    mixed = store.write(_batch(AWAITING_HISTORY, [_doc("event", 1, 3), _doc("usage", 1, 4), _doc("event", 2, 13),
                                                  _doc("event", 3, 5), _doc("event", 9, 6)]))
    all_history = store.write(_batch(AWAITING_HISTORY, [_doc("event", 4, 7), _doc("event", 5, 8)]))
    live_only = store.write(_batch(AWAITING_HISTORY, [_doc("event", 6, 14)]))
    earlier = store.write(_batch(RETRIES_EXHAUSTED, [_doc("event", 4, 7), _doc("usage", 7, 9)]))
    ids = tmp_path / "ids"
    ids.mkdir()
    # event 1 and usage 1 are different documents; event 3 was routed but is not deliverable.
    _ids(ids / "delivered-00000-of-00002.jsonl", [("event", 1), ("event", 3), ("event", 4)])
    _ids(ids / "delivered-00001-of-00002.jsonl", [("event", 5), ("usage", 7), ("event", 99)])
    _ids(ids / "not_deliverable.jsonl", [("event", 3)])

    paths, counts = drop_delivered_history(store, sorted([mixed, all_history, live_only, earlier]), str(ids),
                                           START, END)

    assert (counts.held_batches, counts.held_documents, counts.dropped_held, counts.dropped_other) == (3, 8, 3, 2)
    # usage 1, event 3 (not deliverable) and event 9 are in the range but not delivered by the history.
    assert counts.in_range_kept == 3
    assert sorted(paths) == sorted(store.list("s"))
    left = {path: store.read(path) for path in paths}
    assert live_only in left and all_history not in left and earlier not in left and mixed not in left
    rewritten = [b for p, b in left.items() if p != live_only]
    assert len(rewritten) == 1
    assert [(k, d["id"]) for k, d in rewritten[0].documents] == [("usage", 1), ("event", 2), ("event", 3),
                                                                 ("event", 9)]
    assert (rewritten[0].reason, rewritten[0].parked_at) == (AWAITING_HISTORY, "2026-12-03T16:00:00.000+00:00")


@pytest.mark.parametrize("ids_dir", [None, "missing"])
def test_without_document_ids_nothing_is_dropped(tmp_path, ids_dir):
    store = ParkStore(str(tmp_path / "parked"))
    path = store.write(_batch(AWAITING_HISTORY, [_doc("event", 1, 3)]))
    paths, counts = drop_delivered_history(store, [path], ids_dir and str(tmp_path / ids_dir), START, END)
    assert paths == [path] and (counts.held_documents, counts.dropped_held, counts.in_range_kept) == (1, 0, 1)
