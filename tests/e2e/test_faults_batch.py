"""Under faults, a batch run keeps its promises (real receivers, default timeouts).

A batch run (the FnApi runner, as ``make run-local``) over a generated fleet
delivers to three healthy REST bulk streams, alone and then beside streams whose
destinations never answer, reset, answer 503 for a while, 429 with
Retry-After, 401, slowly, or with malformed bodies. With the delivery defaults
(read timeout 30 s, stream budget 5 s): the healthy streams' p99 delivery
latency, from the job's start, stays within 1.5x their p99 alone plus one
connect timeout; the dead destination gets at most 3 failed batches; and every
routed document is delivered or parked (the run reconciles).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from pipelines import data_streamer
from sinks.parking import ParkStore
from tests.streams import rest_stream
from tools import faults
from tools.latency import arrivals, percentile
from tools.local_destinations import HttpReceiver
from tools.sample_fleet import generate

pytestmark = pytest.mark.alone

CONNECT_TIMEOUT_SECONDS = 5.0
HEALTHY = ("healthy-1", "healthy-2", "healthy-3")
#: stream -> (fault, every routed document ends delivered (True) or parked (False))
FAULTS = {
    "hang": (faults.always(faults.HANG), False),
    "reset": (faults.always(faults.RESET), False),
    # An outage a batch's own retries outlast: 4 answers 503, then none. (A timed
    # outage is not deterministic here: full jitter can spend all 5 attempts in
    # under a second. Longer outages are the recovery step's, in streaming.)
    "outage-503": (faults.first(4, faults.unavailable()), True),
    "throttled": (faults.first(2, faults.throttled(retry_after=1)), True),
    "unauthorized": (faults.always(faults.UNAUTHORIZED), False),
    "slow": (faults.always(faults.slow(2.0)), True),
    "truncated": (faults.always(faults.truncated_body()), False),
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("fleet")
    generate(directory, seed=5, days=1, endpoints=24, organisations=1, formats=("jsonl",))
    return directory


@pytest.fixture(scope="module")
def org(fleet) -> int:
    return json.loads((fleet / "reference" / "organisation.json").read_text())[0]["id"]


def _stream(stream_id: str, receiver: HttpReceiver, org: int) -> dict[str, Any]:
    # Bulk requests of 200 documents: each stream's documents are several batches.
    return rest_stream(stream_id, f"{receiver.url}/{stream_id}", bulk=True, organisation_id=org,
                       batching={"bulk_size": 200})


def _run(fleet: Path, out: Path, streams: list[dict[str, Any]]) -> tuple[dict[str, Any], float]:
    """Run the job (its defaults but insecure loopback destinations); (summary, start time)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "streams.json").write_text(json.dumps({"streams": streams}))
    started = time.time()
    code = data_streamer.main([
        f"--events_input={fleet / 'raw' / 'events.jsonl'}",
        f"--usage_input={fleet / 'raw' / 'usage.jsonl'}",
        f"--reference_dir={fleet / 'reference'}",
        f"--streams_config={out / 'streams.json'}",
        f"--output_dir={out}",
        "--allow_insecure_destinations",
    ])
    summary = json.loads((out / "summary.json").read_text())
    summary["code"] = code
    return summary, started


def _p99(receivers: dict[str, HttpReceiver], started: float) -> float:
    values = sorted(hit[0].received_at - started for name in HEALTHY
                    for hit in arrivals(receivers[name]).values())
    return percentile(values, 99)


def _parked_ids(out: Path, stream_id: str) -> set[str]:
    store = ParkStore(str(out / "parked"))
    return {str(d["id"]) for path in store.list(stream_id) for _, d in store.read(path).documents}


def test_failing_destinations_cost_the_healthy_streams_a_bounded_delay(fleet, org, tmp_path, stream_secrets):
    with contextlib.ExitStack() as stack:
        receivers = {name: stack.enter_context(HttpReceiver()) for name in (*HEALTHY, *FAULTS)}
        alone, started = _run(fleet, tmp_path / "alone", [_stream(s, receivers[s], org) for s in HEALTHY])
        baseline = _p99(receivers, started)
        for receiver in receivers.values():
            receiver.clear()
        for name, (fault, _) in FAULTS.items():
            receivers[name].down(fault)
        summary, started = _run(fleet, tmp_path / "faults", [_stream(s, r, org) for s, r in receivers.items()])
        p99 = _p99(receivers, started)
        recorded = {name: receivers[name].requests() for name in FAULTS}
        delivered = {name: set(arrivals(receivers[name])) for name in receivers}
    print(f"batch: healthy p99 {p99:.2f} s from the job's start with the faults, {baseline:.2f} s alone; "
          f"requests per faulty stream {({n: len(r) for n, r in recorded.items()})}")
    assert alone["code"] == 0 and summary["code"] == 0
    assert summary["reconciled"] is True, "every routed document delivered or parked"
    assert p99 <= 1.5 * baseline + CONNECT_TIMEOUT_SECONDS
    routed = summary["streams"]["healthy-1"]["routed"]
    for name in HEALTHY:
        assert summary["streams"][name]["delivered"] == routed and len(delivered[name]) == routed
    out = tmp_path / "faults"
    for name, (_, ends_delivered) in FAULTS.items():
        counts = summary["streams"][name]
        assert counts["routed"] == routed, name
        if ends_delivered:
            assert (counts["delivered"], counts.get("parked", 0)) == (routed, 0), (name, counts)
        else:
            assert counts["parked"] == routed and len(_parked_ids(out, name)) == routed, (name, counts)
    # A destination that never answers gets at most 3 failed batches (requests of
    # 200 documents here) before its circuit opens; 401 only one.
    assert 1 <= len(recorded["hang"]) <= 3
    assert len(recorded["unauthorized"]) == 1
    status = {r["stream_id"]: r for r in map(json.loads, (out / "status" / "status.jsonl").read_text().splitlines())}
    assert (status["hang"]["state"], status["hang"]["error"]) == ("deactivated", "unreachable")
    assert (status["unauthorized"]["state"], status["unauthorized"]["error"]) == ("deactivated", "auth_failed")
    assert all(status[name]["state"] == "active" for name in HEALTHY)
