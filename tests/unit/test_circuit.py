"""Each stream's circuit (schemas/circuit.py): the rules, and that it is shared by
every instance, bundle and worker through its store."""

from __future__ import annotations

import time

import pytest

from schemas.circuit import CLOSED, HALF_OPEN, OPEN, RECOVERING, CircuitSettings, CircuitStore, parked_token

SETTINGS = CircuitSettings(deactivate_after=3, probe_initial_seconds=10, probe_max_seconds=300, sync_seconds=2)


@pytest.fixture
def store(tmp_path) -> CircuitStore:
    return CircuitStore(str(tmp_path / "status"), SETTINGS)


def test_three_failed_batches_in_a_row_open_it_and_a_success_in_between_resets(store):
    store.record("s", False, "unreachable")
    store.record("s", False, "unreachable")
    store.record("s", True)
    assert store.get("s").failures == 0 and store.get("s").closed
    for _ in range(2):
        store.record("s", False, "remote_error")
    assert store.get("s").state == CLOSED and parked_token(store.get("s")) is None
    state = store.record("s", False, "remote_error")
    assert (state.state, state.token, state.failures) == (OPEN, "remote_error", 3)
    assert 10 <= state.next_probe_at - state.opened_at <= 11  # the first probe, with up to 10 % jitter
    assert parked_token(state) == "remote_error"


@pytest.mark.parametrize("token, retryable", [("auth_failed", False), ("not_found", False), ("payload_rejected", True)])
def test_a_permanent_failure_opens_it_at_once(store, token, retryable):
    state = store.record("s", False, token, retryable=retryable)
    assert (state.state, state.token, state.failures) == (OPEN, token, 1)


def test_a_healthy_stream_costs_no_write(store, tmp_path):
    store.record("s", True)
    store.record("s", True)
    assert not (tmp_path / "status" / "circuits").exists()


def test_workers_share_the_file_and_see_a_change_within_the_sync_time(tmp_path):
    """Two stores of one location stand for two workers (or a worker and a
    re-drive): every change re-reads the file first, and reads are at most
    ``sync_seconds`` old."""
    location = str(tmp_path / "status")
    worker_a = CircuitStore(location, SETTINGS)
    worker_b = CircuitStore(location, CircuitSettings(sync_seconds=0))
    worker_a.record("s", False, "unreachable")
    worker_b.record("s", False, "unreachable")  # reads a's count first: 2, not 1
    assert worker_a.record("s", False, "unreachable").state == OPEN
    assert worker_b.get("s").state == OPEN
    worker_b.close("s")
    assert worker_a.get("s", fresh=True).closed


def test_instances_of_one_sink_share_it_without_a_location():
    """No location (sink tests): one scope per sink, shared by every instance
    unpickled from it, and by nothing else."""
    one, same, other = CircuitStore(None, SETTINGS, scope="sink-1"), CircuitStore(None, SETTINGS, scope="sink-1"), \
        CircuitStore(None, SETTINGS, scope="sink-2")
    one.open("s", "destination_refused")
    assert same.get("s").state == OPEN and other.get("s").closed


def test_probes_double_their_spacing_up_to_the_maximum(store):
    store.open("s", "unreachable")
    delays = []
    for _ in range(7):
        assert store.begin_probe("s", "worker-1", force=True)
        assert store.get("s").state == HALF_OPEN
        delays.append(store.probe_failed("s", "worker-1", "unreachable").probe_delay_seconds)
    assert delays == [20, 40, 80, 160, 300, 300, 300]
    state = store.get("s")
    assert state.state == OPEN and state.probes == 7 and state.next_probe_at > time.time() + 299


def test_a_probe_waits_for_its_time_and_for_whoever_holds_the_stream(store):
    store.open("s", "unreachable")
    assert not store.begin_probe("s", "worker-1"), "not due yet"
    assert store.begin_probe("s", "worker-1", force=True)
    assert not store.begin_probe("s", "worker-2", force=True), "held by worker-1"
    store.recovering("s", "worker-1")
    assert store.get("s").state == RECOVERING
    assert not store.take_drain("s", "redrive-9"), "still held by worker-1"
    store.release("s", "worker-1")
    assert store.take_drain("s", "redrive-9")


def test_closing_keeps_draining_stragglers_for_a_while_then_forgets(tmp_path):
    store = CircuitStore(str(tmp_path / "status"), CircuitSettings(drain_seconds=30))
    store.open("s", "unreachable")
    store.close("s")
    assert [c.stream_id for c in store.streams_needing_attention()] == ["s"]
    store.forget("s")
    assert (tmp_path / "status" / "circuits" / "s.json").exists(), "still draining: kept"
    later = time.time() + 31
    assert store.streams_needing_attention(now=later) == []
    store.forget("s", now=later)
    assert not (tmp_path / "status" / "circuits" / "s.json").exists()


def test_a_torn_file_reads_as_closed(tmp_path):
    path = tmp_path / "status" / "circuits"
    path.mkdir(parents=True)
    (path / "s.json").write_text('{"stream_id": "s", "sta')
    assert CircuitStore(str(tmp_path / "status"), SETTINGS).get("s").closed


def test_healthy_streams_cost_one_listing_not_a_read_each(store, monkeypatch):
    """Only failed streams have a circuit file: a worker asking about 1,000
    healthy streams lists the circuits once per sync time and opens nothing."""
    import schemas.circuit as circuit_module

    store.open("failing", "unreachable")
    opened, listed = [], []
    real_open, real_match = circuit_module.FileSystems.open, circuit_module.FileSystems.match
    monkeypatch.setattr(circuit_module.FileSystems, "open", lambda path, *a, **k: opened.append(path) or
                        real_open(path, *a, **k))
    monkeypatch.setattr(circuit_module.FileSystems, "match", lambda patterns, *a, **k: listed.append(patterns) or
                        real_match(patterns, *a, **k))
    other_worker = CircuitStore(store.location, SETTINGS)
    circuit_module._LISTED.clear()
    circuit_module._CACHE.clear()
    states = [other_worker.get(f"s{i}") for i in range(1000)] + [other_worker.get("failing")]
    assert all(s.closed for s in states[:-1]) and states[-1].state == OPEN
    assert len(listed) == 1 and len(opened) == 1, "one listing, one read: the failing stream's file"
