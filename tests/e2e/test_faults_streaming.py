"""Under faults, the streaming job keeps its promises (real parts, default timeouts).

Each run is the real job on the DirectRunner's streaming executor, reading the
Pub/Sub emulator, with REST bulk streams of one organisation delivering to
loopback receivers; one or more receivers fail the way real ones do
(``tools/faults.py``). Asserted: the healthy streams' p99 latency stays within
1.5x their p99 without the fault plus one connect timeout; a dead destination
gets at most ``deactivate_after`` failed batches before its circuit opens; an
outage that ends is recovered by the job alone, backlog first; and every
document published is delivered or parked, none lost.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.streaming_run import CONNECT_TIMEOUT_SECONDS, StreamingRun, run_streaming
from tests.streams import rest_stream
from tools import faults
from tools.latency import arrivals
from tools.local_destinations import HttpReceiver

pytestmark = pytest.mark.alone

RATE = 10  # events a second
PUBLISH_SECONDS = 60
HEALTHY = ("healthy-1", "healthy-2", "healthy-3")


@pytest.fixture(scope="module")
def sample_reference_dir_module(tmp_path_factory) -> Path:
    from tests import guide_samples
    from tests.conftest import write_reference

    return write_reference(tmp_path_factory.mktemp("reference"), guide_samples.reference_tables())


@pytest.fixture(scope="module")
def stream_secrets_module():
    from tests.streams import SECRETS

    with pytest.MonkeyPatch.context() as patch:
        for name, value in SECRETS.items():
            patch.setenv(name, value)
        yield SECRETS


def _bulk(stream_id: str, receiver: HttpReceiver) -> dict[str, Any]:
    return rest_stream(stream_id, f"{receiver.url}/{stream_id}", bulk=True)


@contextlib.contextmanager
def _receivers(names: tuple[str, ...]):
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(HttpReceiver()) for name in names}


def _everything_healthy(run: StreamingRun, streams: tuple[str, ...]) -> bool:
    return all(run.delivered_ids(s) >= set(run.sent_at) for s in streams)


def _print(label: str, run: StreamingRun, streams: tuple[str, ...]) -> None:
    for stream_id in streams:
        print(f"{label} {stream_id}: {run.report(stream_id)}")
    healthy = tuple(s for s in streams if s.startswith("healthy"))
    print(f"{label}: healthy p99 {run.p99(healthy):.2f} s, phases {run.phases}")


@pytest.fixture(scope="module")
def baseline(pubsub_emulator, tmp_path_factory, sample_reference_dir_module, stream_secrets_module) -> float:
    """The healthy streams' p99 latency with every destination healthy."""
    work = tmp_path_factory.mktemp("baseline")
    with _receivers(HEALTHY) as receivers:
        run = run_streaming(pubsub_emulator, work, [_bulk(s, r) for s, r in receivers.items()], receivers,
                            sample_reference_dir_module, rate=RATE, publish_seconds=PUBLISH_SECONDS,
                            settled=lambda r: _everything_healthy(r, HEALTHY), settle_seconds=60,
                            first_id=10_000_000)
        _print("baseline", run, HEALTHY)
        assert _everything_healthy(run, HEALTHY)
        return run.p99(HEALTHY)


def test_a_destination_that_never_answers_costs_the_others_a_bounded_delay(
        baseline, pubsub_emulator, tmp_path, sample_reference_dir_module, stream_secrets_module):
    with _receivers((*HEALTHY, "hang")) as receivers:
        receivers["hang"].down(faults.HANG)
        streams = [_bulk(s, r) for s, r in receivers.items()]

        def settled(run: StreamingRun) -> bool:
            return _everything_healthy(run, HEALTHY) and run.parked_ids("hang") >= set(run.sent_at)

        run = run_streaming(pubsub_emulator, tmp_path, streams, receivers, sample_reference_dir_module, rate=RATE,
                            publish_seconds=PUBLISH_SECONDS, settled=settled, settle_seconds=90,
                            first_id=20_000_000)
        _print("hang", run, HEALTHY)
        hung = receivers["hang"].requests()
        circuit = run.circuit("hang")
        status = run.status()["hang"]
    p99 = run.p99(HEALTHY)
    print(f"hang: p99 {p99:.2f} s against baseline {baseline:.2f} s; hanging receiver got {len(hung)} requests; "
          f"circuit {circuit}; status {status}")
    assert p99 <= 1.5 * baseline + CONNECT_TIMEOUT_SECONDS
    # Nothing lost: every document is at each healthy receiver, and parked for the dead one.
    assert _everything_healthy(run, HEALTHY)
    assert run.parked_ids("hang") >= set(run.sent_at)
    # At most 3 failed batches before the circuit opened; later requests are probes.
    assert circuit is not None and circuit["state"] == "open"
    before_open = [r for r in hung if r.received_at <= circuit["opened_at"]]
    assert 1 <= len(before_open) <= 3
    probes = len(hung) - len(before_open)
    assert probes <= 3, "probes are spaced 10 s, 20 s, 40 s ... apart"
    assert (status["state"], status["error"], status["circuit"]) == ("deactivated", "unreachable", "open")


OUTAGE_SECONDS = 40
#: Long enough for live data after the recovery: the circuit opens within ~25 s,
#: probes follow 10 s and then 20 s later (+10 % jitter), so the one after the
#: outage comes by ~60 s.
OUTAGE_PUBLISH_SECONDS = 80


def test_an_outage_that_ends_is_recovered_by_the_job_alone_backlog_first(
        pubsub_emulator, tmp_path, sample_reference_dir_module, stream_secrets_module):
    """A 40 s outage (503 to everything), then the destination is back: the job
    probes, delivers the parked backlog in order, then live data; at the end
    every document is delivered once or more and nothing is parked."""
    names = ("healthy-1", "outage")
    with _receivers(names) as receivers:
        receivers["outage"].down(faults.unavailable())
        ended: dict[str, float] = {}

        def during(elapsed: float) -> None:
            if elapsed >= OUTAGE_SECONDS and not ended:
                receivers["outage"].up()
                ended["at"] = time.time()

        def settled(run: StreamingRun) -> bool:
            return (_everything_healthy(run, names) and not run.parked_ids("outage")
                    and (run.circuit("outage") or {}).get("state", "closed") == "closed")

        run = run_streaming(pubsub_emulator, tmp_path, [_bulk(s, r) for s, r in receivers.items()], receivers,
                            sample_reference_dir_module, rate=RATE, publish_seconds=OUTAGE_PUBLISH_SECONDS,
                            settled=settled, settle_seconds=120, first_id=30_000_000, during=during)
        _print("outage", run, names)
        recorded = receivers["outage"].requests()
    assert _everything_healthy(run, names), "every document reached the recovered destination"
    assert run.parked_ids("outage") == set(), "nothing left parked"
    status = run.status()["outage"]
    assert (status["state"], status["circuit"]) == ("active", "closed"), status
    failed = [r for r in recorded if not r.accepted]
    assert failed and all(r.received_at < ended["at"] for r in failed), "no failure after the outage ended"
    # Backlog first: every document published before the destination answered
    # again arrived no later than any document published after that.
    arrived = {doc: hit[0].received_at for doc, hit in arrivals(recorded).items()}
    recovered_at = min(r.received_at for r in recorded if r.accepted)
    backlog = [arrived[d] for d, sent in run.sent_at.items() if sent < recovered_at]
    live = [arrived[d] for d, sent in run.sent_at.items() if sent > recovered_at]
    print(f"outage: recovered {recovered_at - ended['at']:.1f} s after it ended; backlog {len(backlog)} documents "
          f"delivered by {max(backlog) - recovered_at:.1f} s after; first live {min(live) - recovered_at:.1f} s after")
    assert max(backlog) <= min(live)
    assert run.summary is not None
    counts = run.summary.streams.get("outage", {})
    print(f"outage counts: {counts}")
    # Every parked document was recovered by this run, and the counts add up.
    assert counts["recovered"] == counts["unparked"] == counts["parked"] > 0
    assert run.summary.stream_reconciled(counts)


#: stream -> (fault, every document ends delivered (True) or parked (False))
ZOO = {
    "reset": (faults.always(faults.RESET), False),
    "throttled": (faults.for_seconds(20, faults.throttled(retry_after=1), from_first_request=True), True),
    "unauthorized": (faults.always(faults.UNAUTHORIZED), False),
    # A bundle waits for its slowest lane: a slow destination's answer time adds
    # to the latency of every stream in the bundles it is in (docs/delivery.md).
    "slow": (faults.always(faults.slow(1.0)), True),
    "truncated": (faults.always(faults.truncated_body()), False),
    "garbled-200": (faults.always(faults.garbled_body(200)), True),
}


def test_destinations_failing_every_other_way_beside_healthy_ones(
        baseline, pubsub_emulator, tmp_path, sample_reference_dir_module, stream_secrets_module):
    """Resets, 429 with Retry-After for 20 s, 401, slow answers, truncated and
    garbled bodies, each on its own stream beside three healthy ones: the healthy
    streams keep their latency bound, the recoverable ones end delivered with
    nothing parked, the others parked whole; 401 opens the circuit at once."""
    with _receivers((*HEALTHY, *ZOO)) as receivers:
        for name, (fault, _) in ZOO.items():
            receivers[name].down(fault)

        def settled(run: StreamingRun) -> bool:
            sent = set(run.sent_at)
            return _everything_healthy(run, HEALTHY) and all(
                (run.delivered_ids(name) >= sent and not run.parked_ids(name)) if delivered
                else run.parked_ids(name) >= sent for name, (_, delivered) in ZOO.items())

        run = run_streaming(pubsub_emulator, tmp_path, [_bulk(s, r) for s, r in receivers.items()], receivers,
                            sample_reference_dir_module, rate=RATE, publish_seconds=PUBLISH_SECONDS,
                            settled=settled, settle_seconds=120, first_id=40_000_000)
        _print("zoo", run, (*HEALTHY, *ZOO))
        recorded = {name: receivers[name].requests() for name in ZOO}
    sent = set(run.sent_at)
    p99 = run.p99(HEALTHY)
    print(f"zoo: p99 {p99:.2f} s against baseline {baseline:.2f} s")
    assert p99 <= 1.5 * baseline + CONNECT_TIMEOUT_SECONDS
    assert _everything_healthy(run, HEALTHY)
    for name, (_, delivered) in ZOO.items():
        if delivered:
            assert run.delivered_ids(name) >= sent and not run.parked_ids(name), name
        else:
            assert run.parked_ids(name) >= sent, name
            circuit = run.circuit(name)
            assert circuit is not None and circuit["state"] == "open", (name, circuit)
    opened = run.circuit("unauthorized")["opened_at"]
    assert len([r for r in recorded["unauthorized"] if r.received_at <= opened]) == 1, "401: not retried"
    assert run.status()["unauthorized"]["error"] == "auth_failed"
    assert run.summary is not None
    for name in (*HEALTHY, *ZOO):
        assert run.summary.stream_reconciled(run.summary.streams[name]), (name, run.summary.streams[name])


def test_a_redrive_while_the_job_runs_needs_no_second_one(
        pubsub_emulator, tmp_path, sample_reference_dir_module, stream_secrets_module):
    """The outage ends, an operator re-drives by hand before the job's own probe
    (set far off here): the job sends live documents again within seconds, not
    after a refresh interval, and its recovery step delivers what was parked
    while the re-drive ran. At the end nothing is parked and no second re-drive
    is needed."""
    names = ("healthy-1", "fixed")
    with _receivers(names) as receivers:
        receivers["fixed"].down(faults.unavailable())
        redriven: dict[str, Any] = {}

        def during(elapsed: float) -> None:
            if elapsed >= 30 and "up" not in redriven:
                receivers["fixed"].up()
                redriven["up"] = time.time()
            if elapsed >= 35 and "code" not in redriven:
                out = tmp_path / "out"
                started = time.time()
                redriven["code"] = subprocess.run(
                    [sys.executable, "-m", "pipelines.redrive", "--stream_id=fixed",
                     f"--streams_config={tmp_path / 'streams.json'}", f"--park_location={out / 'parked'}",
                     f"--status_location={out / 'status'}", f"--output_dir={tmp_path / 'redrive'}",
                     "--allow_insecure_destinations"], capture_output=True, text=True, timeout=120).returncode
                redriven["started"], redriven["ended"] = started, time.time()

        def settled(run: StreamingRun) -> bool:
            return _everything_healthy(run, names) and not run.parked_ids("fixed")

        run = run_streaming(pubsub_emulator, tmp_path, [_bulk(s, r) for s, r in receivers.items()], receivers,
                            sample_reference_dir_module, rate=RATE, publish_seconds=PUBLISH_SECONDS,
                            settled=settled, settle_seconds=90, first_id=50_000_000, during=during,
                            flags=["--probe_initial_seconds=600", "--probe_max_seconds=600"])
        _print("redrive", run, names)
        recorded = receivers["fixed"].requests()
    assert redriven["code"] == 0
    assert _everything_healthy(run, names) and run.parked_ids("fixed") == set()
    arrived = {doc: hit[0].received_at for doc, hit in arrivals(recorded).items()}
    after = [arrived[d] - sent for d, sent in run.sent_at.items() if sent > redriven["ended"] + 3]
    assert after, "documents were published after the re-drive"
    print(f"redrive: took {redriven['ended'] - redriven['started']:.1f} s; live latency after it: "
          f"max {max(after):.1f} s over {len(after)} documents")
    # Live again right away: within the buffering (5 s) and the circuit's sync (2 s),
    # far from the 10 s refresh interval, let alone a second re-drive.
    assert max(after) < 10
