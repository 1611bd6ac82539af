"""Fault injection for the DataDog sink, against a real loopback intake.

Each case runs ``WriteToDataDog`` under ``TestPipeline`` against
:class:`~tools.local_destinations.HttpReceiver` answering a
:class:`~tools.local_destinations.Script`, writes the parked batches to a real
park store and the results to files, and asserts exactly what the intake received
(the bodies the sink's own payload functions make of the documents), what was
parked (documents by id, reason, token, attempts), the delivery results (status,
token, attempts, counts), that delivered + parked + dead-lettered documents equal
the documents in, and that no credential appears in any log line or output.
"""

from __future__ import annotations

import copy
import glob
import logging
from pathlib import Path
from typing import Any, NamedTuple

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.transforms.window import TimestampedValue

from sinks.datadog import SERIES_PATH, WriteToDataDog
from sinks.datadog_series import Payload, aggregate_usage, build_payloads, series_groups
from sinks.http import Timeouts
from sinks.parking import ParkedBatch, ParkStore, WriteParkedBatches
from sinks.retry import RetryPolicy
from tests.guide_samples import EXPECTED_USAGE
from tests.policies import unhurried
from tests.streams import SECRETS, config, datadog_stream
from tools.local_destinations import Reply, Script
from transforms.enrich import volume_mb

STREAM = "dd-faults"
INTERVAL = 60
#: 2019-07-17 08:21:00 UTC, the start of a 60 s window.
T0 = 1_563_351_660
API_KEY = SECRETS["DATASTREAMER_TEST_DD_API_KEY"]
FAST = unhurried(3)
ACCEPTED = Reply(202, b'{"errors":[]}')
#: Generous: only the hanging-intake case needs a short read timeout.
TIMEOUTS = Timeouts(connect_seconds=2.0, read_seconds=5.0)


# --------------------------------------------------------------------------- documents


def usage(doc_id: int, endpoint: int, rx: int, tx: int, cost: float) -> dict[str, Any]:
    """The guide's usage sample (5.2) as another record of another endpoint."""
    document = copy.deepcopy(EXPECTED_USAGE["5.2"])
    document["id"] = doc_id
    document["cost"] = cost
    document["endpoint"] = {"id": endpoint}
    document["sim"] = {"iccid": f"89882280667{endpoint:08d}", "id": 200_000 + endpoint}
    document["imsi"] = f"9014053{endpoint:08d}"
    document["volume"] = volume_mb(rx, tx)
    return document


def window_documents(window: int, endpoints: int = 3, per_endpoint: int = 2) -> list[tuple[int, dict[str, Any]]]:
    """(epoch seconds, document) in window number ``window`` (from T0)."""
    out = []
    for e in range(endpoints):
        for i in range(per_endpoint):
            doc_id = 500_000_000 + window * 1_000 + e * 10 + i
            at = T0 + window * INTERVAL + 5 + 20 * i + e
            out.append((at, usage(doc_id, 8_390_000 + e, rx=13_800 * (i + 1) + e, tx=8_531 + 7 * e,
                                  cost=0.00558275 * (i + 1))))
    return out


def expected_payloads(timed: list[tuple[int, dict[str, Any]]], window: int, max_bytes: int) -> list[Payload]:
    """What the sink must send for one window: its own aggregation and packing."""
    start = T0 + window * INTERVAL
    documents = [d for at, d in timed if start <= at < start + INTERVAL]
    payloads, too_large = build_payloads(series_groups(aggregate_usage(documents), start, INTERVAL), max_bytes)
    assert not too_large
    return payloads


def ids(documents) -> list[int]:
    return sorted(d["id"] for d in documents)


# --------------------------------------------------------------------------- running the sink


class Run(NamedTuple):
    results: list[dict[str, Any]]
    parked: list[ParkedBatch]
    dead_letters: list[dict[str, Any]]
    outputs_text: str  # every output file, to search for secrets


def _read_lines(prefix: Path) -> list[str]:
    return [line for path in sorted(glob.glob(f"{prefix}*")) for line in Path(path).read_text().splitlines() if line]


def run_sink(tmp_path: Path, url: str, timed: list[tuple[int, dict[str, Any]]], *, policy: RetryPolicy = FAST,
             timeouts: Timeouts = TIMEOUTS, allow_insecure: bool = True,
             max_payload_bytes: int = 500_000) -> Run:
    """``WriteToDataDog`` over ``timed``: results and dead letters written as JSON
    lines, parked batches through the real park store."""
    streams_config = config(datadog_stream(STREAM, url, batching={"metrics_interval_seconds": INTERVAL}))
    park = tmp_path / "park"
    p = TestPipeline()
    streams = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([streams_config]))
    outputs = (
        p
        | "Usage" >> beam.Create([(at, ((STREAM, INTERVAL), doc)) for at, doc in timed])
        | "Stamp" >> beam.Map(lambda item: TimestampedValue(item[1], item[0]))
        | "WriteToDataDog" >> WriteToDataDog(streams, timeouts=timeouts, max_payload_bytes=max_payload_bytes,
                                             policy=policy, allow_insecure=allow_insecure)
    )
    (outputs.results
     | "ResultJson" >> beam.Map(lambda r: orjson.dumps(r.to_dict()).decode())
     | "WriteResults" >> beam.io.WriteToText(str(tmp_path / "results")))
    (outputs.dead_letters
     | "LetterJson" >> beam.Map(lambda d: orjson.dumps({**d, "payload": d["payload"].decode()}).decode())
     | "WriteLetters" >> beam.io.WriteToText(str(tmp_path / "letters")))
    _ = outputs.parked | "Park" >> WriteParkedBatches(str(park))
    p.run().wait_until_finish()

    store = ParkStore(str(park))
    parked_paths = store.list()
    results = [orjson.loads(line) for line in _read_lines(tmp_path / "results")]
    letters = [orjson.loads(line) for line in _read_lines(tmp_path / "letters")]
    text = "\n".join([*_read_lines(tmp_path / "results"), *_read_lines(tmp_path / "letters"),
                      *(Path(path).read_text() for path in parked_paths)])
    return Run(results, [store.read(path) for path in parked_paths], letters, text)


def assert_reconciles(timed: list[tuple[int, dict[str, Any]]], run: Run) -> None:
    """delivered + parked + dead-lettered = documents in; each document once."""
    delivered = sum(r["documents"] for r in run.results if r["status"] == "delivered")
    parked_ids = [d["id"] for batch in run.parked for _, d in batch.documents]
    assert len(parked_ids) == len(set(parked_ids))
    assert sum(r["parked_documents"] for r in run.results) == len(parked_ids)
    assert all(kind == "usage" for batch in run.parked for kind, _ in batch.documents)
    assert delivered + len(parked_ids) + len(run.dead_letters) == len(timed)


def assert_no_secrets(caplog, run: Run) -> None:
    for secret in SECRETS.values():
        assert secret not in caplog.text
        assert secret not in run.outputs_text


def result_fields(result: dict[str, Any]) -> tuple[Any, ...]:
    return (result["status"], result["status_code"], result["error"], result["token"], result["attempts"],
            result["documents"], result["failed_documents"], result["parked_documents"],
            result["redelivered_documents"])


def parked_fields(batch: ParkedBatch) -> tuple[Any, ...]:
    return (batch.stream_id, batch.api_type, batch.reason, batch.error, batch.token, batch.status_code,
            batch.attempts, ids(d for _, d in batch.documents))


@pytest.fixture(autouse=True)
def _debug_logs(caplog):
    caplog.set_level(logging.DEBUG)


# --------------------------------------------------------------------------- cases


def test_503_then_202_recovers_and_counts_the_possible_duplicates(http_receiver, stream_secrets, tmp_path, caplog):
    http_receiver.responder = Script({SERIES_PATH: [Reply(503, b'{"errors":["unavailable"]}'), ACCEPTED]})
    timed = window_documents(0)
    [payload] = expected_payloads(timed, 0, 500_000)

    run = run_sink(tmp_path, http_receiver.url, timed)

    received = http_receiver.requests()
    assert [(r.method, r.path) for r in received] == [("POST", SERIES_PATH)] * 2
    assert received[0].body == received[1].body == payload.body  # the retry resends the same payload
    assert all(r.headers["DD-API-KEY"] == API_KEY for r in received)
    # Delivered on the second attempt; the 503 may have been stored: reported as redelivered.
    assert [result_fields(r) for r in run.results] == [("delivered", 202, None, None, 2, 6, 0, 0, 6)]
    assert run.parked == [] and run.dead_letters == []
    assert_reconciles(timed, run)
    assert_no_secrets(caplog, run)


@pytest.mark.alone  # asserts a timing: make test runs it with nothing beside it
def test_429_waits_for_retry_after(http_receiver, stream_secrets, tmp_path, caplog):
    throttled = Reply(429, b'{"errors":["Rate limit exceeded"]}',
                      headers={"Content-Type": "application/json", "Retry-After": "1"})
    http_receiver.responder = Script({SERIES_PATH: [throttled, ACCEPTED]})
    timed = window_documents(0)
    [payload] = expected_payloads(timed, 0, 500_000)

    run = run_sink(tmp_path, http_receiver.url, timed)

    received = http_receiver.requests()
    assert [r.body for r in received] == [payload.body, payload.body]
    # The backoff alone would wait at most 0.05 s: the gap is Retry-After's second.
    assert 0.95 <= received[1].received_at - received[0].received_at < 3.0
    # A 429 was not processed: nothing can have been delivered twice.
    assert [result_fields(r) for r in run.results] == [("delivered", 202, None, None, 2, 6, 0, 0, 0)]
    assert run.parked == [] and run.dead_letters == []
    assert_reconciles(timed, run)
    assert_no_secrets(caplog, run)


def test_403_parks_at_once_and_deactivates_the_stream(http_receiver, stream_secrets, tmp_path, caplog):
    http_receiver.responder = Script({SERIES_PATH: [Reply(403, b'{"errors":["Forbidden"]}')]})
    timed = window_documents(0) + window_documents(1, endpoints=2)
    payloads = {window: expected_payloads(timed, window, 500_000) for window in (0, 1)}
    assert [len(p) for p in payloads.values()] == [1, 1]

    run = run_sink(tmp_path, http_receiver.url, timed)

    # One request only: 403 is permanent (no retry), and the stream is then
    # deactivated, so the other window's payload is parked without a request.
    # Which window the runner hands over first is its choice; find it by body.
    [request] = http_receiver.requests()
    [sent] = [w for w, [p] in payloads.items() if p.body == request.body]
    [other] = [w for w in payloads if w != sent]
    sent_payload, other_payload = payloads[sent][0], payloads[other][0]
    assert sorted(parked_fields(b) for b in run.parked) == sorted([
        (STREAM, "datadog", "permanent_failure", "http_403", "auth_failed", 403, 1, ids(sent_payload.usage_documents)),
        (STREAM, "datadog", "stream_deactivated", None, "auth_failed", None, 0, ids(other_payload.usage_documents)),
    ])
    assert sorted(result_fields(r) for r in run.results) == sorted([
        ("failed", 403, "http_403", "auth_failed", 1, sent_payload.documents, sent_payload.documents,
         sent_payload.documents, 0),
        ("parked", None, None, "auth_failed", 0, other_payload.documents, 0, other_payload.documents, 0),
    ])
    assert ids(d for _, d in timed) == ids(d for b in run.parked for _, d in b.documents)  # all of them parked
    assert run.dead_letters == []
    assert_reconciles(timed, run)
    assert_no_secrets(caplog, run)


@pytest.mark.alone  # asserts a timing: make test runs it with nothing beside it
def test_hanging_intake_times_out_within_the_policy_and_parks(http_receiver, stream_secrets, tmp_path, caplog):
    http_receiver.responder = Script({SERIES_PATH: [Reply(202, b'{"errors":[]}', delay_seconds=10.0)]})
    timed = window_documents(0)
    [payload] = expected_payloads(timed, 0, 500_000)
    policy = unhurried(2)  # only the read timeout ends the two attempts

    run = run_sink(tmp_path, http_receiver.url, timed, policy=policy,
                   timeouts=Timeouts(connect_seconds=1.0, read_seconds=0.3))

    assert [r.body for r in http_receiver.requests()] == [payload.body, payload.body]  # two attempts, then give up
    assert [result_fields(r) for r in run.results] == [("failed", None, "ReadTimeout", "unreachable", 2, 6, 6, 6, 0)]
    # Two read timeouts of 0.3 s, not the 10 s hang (the bound leaves a starved machine room).
    assert run.results[0]["duration_ms"] < 8_000
    assert [parked_fields(b) for b in run.parked] == [
        (STREAM, "datadog", "retries_exhausted", "ReadTimeout", "unreachable", None, 2, ids(d for _, d in timed))]
    assert run.dead_letters == []
    assert_reconciles(timed, run)
    assert_no_secrets(caplog, run)


def test_http_url_is_refused_without_allow_insecure(http_receiver, stream_secrets, tmp_path, caplog):
    timed = window_documents(0, endpoints=6, per_endpoint=1)
    limit = 5_000  # several payloads in the one window
    payloads = expected_payloads(timed, 0, limit)
    assert len(payloads) >= 2

    run = run_sink(tmp_path, http_receiver.url, timed, allow_insecure=False, max_payload_bytes=limit)

    assert http_receiver.requests() == []
    assert "destination refused" in caplog.text and "https" in caplog.text
    # The first payload is refused (a configuration error: permanent); that
    # deactivates the stream, so the rest of the window is parked without a check.
    first, rest = payloads[0], payloads[1:]
    assert sorted(parked_fields(b) for b in run.parked) == sorted([
        (STREAM, "datadog", "permanent_failure", "destination_refused", "destination_refused", None, 0,
         ids(first.usage_documents)),
        *((STREAM, "datadog", "stream_deactivated", None, "destination_refused", None, 0, ids(p.usage_documents))
          for p in rest),
    ])
    assert sorted(result_fields(r) for r in run.results) == sorted([
        ("failed", None, "destination_refused", "destination_refused", 0, first.documents, first.documents,
         first.documents, 0),
        *(("parked", None, None, "destination_refused", 0, p.documents, 0, p.documents, 0) for p in rest),
    ])
    assert run.dead_letters == []
    assert_reconciles(timed, run)
    assert_no_secrets(caplog, run)
