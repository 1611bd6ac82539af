"""REST API and REST API bulk sinks.

Three tiers: the DoFns called directly with an injected session (what is sent,
how outcomes become results and parked batches); the composites under
``TestPipeline`` with ``assert_that`` on their outputs; and end to end against a
real loopback HTTP receiver, comparing what it received with the documents sent.
The failure policy's fault cases against real endpoints are in
``tests/composite/test_faults_rest.py``. The local receiver is plain http on 127.0.0.1, which
the outbound rules refuse, so these tests pass ``allow_insecure=True`` (what
``make run-local`` does too).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import apache_beam as beam
import orjson
import pytest
import requests
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from schemas import metrics
from schemas.delivery import SECRET_UNAVAILABLE, UNKNOWN_STREAM
from sinks.http import Timeouts, new_session
from sinks.ordering import order_key
from sinks.outbound import SIGNATURE_HEADER, OutboundGuard, verify_signature
from sinks.parking import ParkedBatch
from sinks.rest import (
    WriteToRestApi,
    WriteToRestApiBulk,
    _RestBulkWriteFn,
    _RestWriteFn,
)
from tests.guide_samples import EXPECTED_EVENTS, EXPECTED_USAGE
from tests.policies import unhurried
from tests.streams import SECRETS, config, rest_stream
from tools.local_destinations import Reply, free_port

TOKEN = SECRETS["DATASTREAMER_TEST_REST_TOKEN"]
SIGNING_SECRET = SECRETS["DATASTREAMER_TEST_SIGNING_SECRET"]
#: Two attempts a request, milliseconds apart: the retry policy's own timing is
#: tested in tests/composite/test_faults_rest.py.
FAST = unhurried(2)
BASE = datetime(2019, 7, 17, 8, 0, 0, tzinfo=UTC)
ELEMENT_TS = 1_563_350_400  # 2019-07-17T08:00:00Z, the element timestamp of every test input


# --------------------------------------------------------------------------- documents


_USAGE_JSON = orjson.dumps(EXPECTED_USAGE["5.2"])


def usage_doc(doc_id: int, seconds: int = 0, endpoint_id: int = 8392037) -> dict[str, Any]:
    doc = orjson.loads(_USAGE_JSON)  # a fresh copy, ten times faster than deepcopy
    doc["id"] = doc_id
    doc["endpoint"] = {"id": endpoint_id}
    doc["start_timestamp"] = f"{BASE + timedelta(seconds=seconds - 49):%Y-%m-%d %H:%M:%S}"
    doc["end_timestamp"] = f"{BASE + timedelta(seconds=seconds):%Y-%m-%d %H:%M:%S}"
    return doc


def event_doc(doc_id: int, seconds: int = 0, sample: str = "5.1.1") -> dict[str, Any]:
    doc = copy.deepcopy(EXPECTED_EVENTS[sample])
    doc["id"] = doc_id
    doc["timestamp"] = f"{BASE + timedelta(seconds=seconds):%Y-%m-%dT%H:%M:%S}.000+0000"
    return doc


def as_elements(stream_id: str, docs: list[dict[str, Any]]) -> list[tuple[str, tuple[str, dict[str, Any]]]]:
    return [(stream_id, ("usage" if "end_timestamp" in doc else "event", doc)) for doc in docs]


def run_sink(transform_factory, streams_config, elements):
    """Run a sink over ``elements``; returns (pipeline, SinkOutputs) for assert_that.
    Use as ``with`` body: the caller runs the pipeline by leaving the block."""
    p = TestPipeline()
    streams = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([streams_config]))
    routed = (
        p
        | "Elements" >> beam.Create(elements, reshuffle=False)
        | "Stamp" >> beam.Map(lambda e: TimestampedValue(e, ELEMENT_TS))
    )
    return p, routed | "Deliver" >> transform_factory(streams)


def rest_sink(**options):
    """A ``WriteToRestApi`` factory for :func:`run_sink`: to the loopback receiver
    (``allow_insecure``), quick retries, 1 s buffering."""
    return lambda streams: WriteToRestApi(streams, **{"allow_insecure": True, "policy": FAST,
                                                      "max_buffering_seconds": 1, **options})


def bulk_sink(**options):
    return lambda streams: WriteToRestApiBulk(streams, **{"allow_insecure": True, "policy": FAST,
                                                          "max_buffering_seconds": 1, **options})


# --------------------------------------------------------------------------- matchers


def _check(predicate, message):
    def matcher(actual):
        actual = list(actual)
        if not predicate(actual):
            raise BeamAssertException(f"{message}: {actual[:5]!r}{' ...' if len(actual) > 5 else ''}")

    return matcher


def totals_per_stream(expected: dict[str, tuple[int, str]]):
    """Results per stream sum to ``documents`` and all have ``status``."""

    def matcher(results):
        results = list(results)
        got = {}
        for r in results:
            docs, statuses = got.get(r.stream_id, (0, set()))
            got[r.stream_id] = (docs + r.documents, statuses | {r.status})
        want = {sid: (docs, {status}) for sid, (docs, status) in expected.items()}
        if got != want:
            raise BeamAssertException(f"results per stream {got} != {want}")

    return matcher


# --------------------------------------------------------------------------- fake session


class FakeResponse:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        self.headers: dict[str, str] = {}
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeSession(requests.Session):
    """A real session (so adapters mount as usual) whose ``request`` records the
    call and answers from ``outcome(url)``: a status code or an exception."""

    def __init__(self, outcome=lambda url: 200) -> None:
        super().__init__()
        self.max_redirects = 0
        self.outcome = outcome
        self.calls: list[dict[str, Any]] = []
        self.closed = False

    def request(self, method, url, **kwargs):  # type: ignore[override]
        self.calls.append({"method": method, "url": url, **kwargs})
        answer = self.outcome(url)
        if isinstance(answer, BaseException):
            raise answer
        return FakeResponse(answer)

    def close(self) -> None:
        self.closed = True
        super().close()


def public_dns(host: str) -> list[str]:
    """A resolver for the outbound guard: every name is a public address."""
    return ["93.184.216.34"]


def started(fn, session: FakeSession):
    """``fn`` set up with ``session``, and a guard whose DNS answers a public
    address (the fake hosts do not resolve here)."""
    fn._session_factory = lambda: session
    fn.setup()
    fn._guard = OutboundGuard(fn._allow_insecure, resolver=public_dns)
    return fn


def split_outputs(outputs) -> tuple[list[Any], list[ParkedBatch], list[dict[str, Any]]]:
    """A DoFn's outputs as (results, parked batches, dead letters)."""
    results, parked, letters = [], [], []
    for output in outputs:
        if not isinstance(output, beam.pvalue.TaggedOutput):
            results.append(output)
        elif output.tag == "parked":
            parked.append(output.value)
        else:
            letters.append(output.value)
    return results, parked, letters


# =========================================================================== tier a: DoFns


def test_order_key_puts_events_and_usage_on_one_time_line():
    early_usage = ("usage", usage_doc(9, seconds=10))
    later_event = ("event", event_doc(1, seconds=20))
    same_time_event = ("event", event_doc(5, seconds=10))
    ordered = sorted([later_event, same_time_event, early_usage], key=lambda item: order_key(*item))
    assert [doc["id"] for _, doc in ordered] == [5, 9, 1]  # at 08:00:10 id 5 before 9, then 08:00:20


def test_rest_fn_sends_one_document_per_request_with_headers(stream_secrets):
    streams = config(rest_stream("s1", "https://customer.example/hook", rest={
        "url": "https://customer.example/hook", "method": "PUT", "headers": {"X-Customer": "tests"},
        "auth_header": "Authorization", "auth_secret": {"env": "DATASTREAMER_TEST_REST_TOKEN"},
        "signing_secret": {"env": "DATASTREAMER_TEST_SIGNING_SECRET"}}))
    session = FakeSession()
    fn = started(_RestWriteFn(new_session, Timeouts(2, 4), concurrency=3), session)
    docs = [usage_doc(i, seconds=100 - i) for i in range(10)]
    results = list(fn.process(("s1", [("usage", d) for d in docs]), streams))
    fn.teardown()

    assert session.closed
    assert len(session.calls) == 10 and len(results) == 10
    assert sorted(orjson.loads(c["data"])["id"] for c in session.calls) == list(range(10))
    for call in session.calls:
        assert call["method"] == "PUT"
        assert call["url"] == "https://customer.example/hook"
        assert call["timeout"] == (2, 4)  # under the batch budget (5 s): as configured
        assert call["allow_redirects"] is False
        headers = dict(call["headers"])
        assert verify_signature(SIGNING_SECRET, headers.pop(SIGNATURE_HEADER), call["data"])
        assert headers == {"X-Customer": "tests", "Content-Type": "application/json", "Authorization": TOKEN}
    assert {(r.status, r.documents, r.failed_documents, r.status_code, r.target, r.attempts) for r in results} == {
        ("delivered", 1, 0, 200, "https://customer.example/hook", 1)}
    assert sum(r.bytes for r in results) == sum(len(orjson.dumps(d)) for d in docs)


def test_rest_fn_pool_matches_concurrency():
    session = FakeSession()
    fn = started(_RestWriteFn(new_session, Timeouts(), concurrency=5), session)
    try:
        for url in ("http://a.example/x", "https://b.example/y"):
            adapter = session.get_adapter(url)
            assert adapter._pool_maxsize == 5
        assert fn._pool._max_workers == 5
    finally:
        fn.teardown()


def test_rest_fn_outcomes_become_results_and_parked_batches_without_raising(stream_secrets):
    streams = config(
        rest_stream("ok", "https://a.example/ok"),
        rest_stream("moved", "https://a.example/moved"),
        rest_stream("broken", "https://a.example/broken"),
        rest_stream("down", "https://a.example/down"),
        rest_stream("slow", "https://a.example/slow"),
        rest_stream("rejected", "https://a.example/rejected"),
    )
    answers = {"/ok": 204, "/moved": 301, "/broken": 503, "/down": requests.ConnectionError("refused"),
               "/slow": requests.ReadTimeout("too slow"), "/rejected": 422}
    session = FakeSession(lambda url: answers["/" + url.rsplit("/", 1)[1]])
    fn = started(_RestWriteFn(new_session, Timeouts(), concurrency=2, policy=FAST), session)
    got, parked_by_stream = {}, {}
    for sid in answers:
        document = event_doc(1)
        results, parked, _ = split_outputs(fn.process((sid.strip("/"), [("event", document)]), streams))
        got[sid.strip("/")] = [(r.status, r.status_code, r.error, r.token, r.attempts, r.failed_documents,
                                r.parked_documents) for r in results]
        parked_by_stream[sid.strip("/")] = [(b.reason, b.token, b.attempts, b.documents == (("event", document),))
                                            for b in parked]
    fn.teardown()
    assert got == {
        "ok": [("delivered", 204, None, None, 1, 0, 0)],
        "moved": [("failed", 301, "http_301", "redirected", 1, 1, 1)],
        "broken": [("failed", 503, "http_503", "remote_error", 2, 1, 1)],
        "down": [("failed", None, "ConnectionError", "unreachable", 2, 1, 1)],
        "slow": [("failed", None, "ReadTimeout", "unreachable", 2, 1, 1)],
        "rejected": [("failed", 422, "http_422", "payload_rejected", 1, 1, 1)],
    }
    assert parked_by_stream == {
        "ok": [],
        "moved": [("permanent_failure", "redirected", 1, True)],
        "broken": [("retries_exhausted", "remote_error", 2, True)],
        "down": [("retries_exhausted", "unreachable", 2, True)],
        "slow": [("retries_exhausted", "unreachable", 2, True)],
        "rejected": [("permanent_failure", "payload_rejected", 1, True)],
    }
    assert Counter(call["url"].rsplit("/", 1)[1] for call in session.calls) == {
        "ok": 1, "moved": 1, "broken": 2, "down": 2, "slow": 2, "rejected": 1}


def test_rest_fn_exceptions_of_a_request_are_its_failure_and_bugs_of_the_sink_raise(stream_secrets,
                                                                                     monkeypatch):
    """Whatever the HTTP stack raises for a request, even a KeyError, is that
    stream's failed attempt (retried, parked); a bug in the sink's own code, outside
    the request, still raises."""
    streams = config(rest_stream("s", "https://a.example/s"))
    session = FakeSession(lambda url: KeyError("a library's bug"))
    fn = started(_RestWriteFn(new_session, Timeouts(), concurrency=1, policy=FAST), session)
    try:
        document = event_doc(1)
        results, parked, _ = split_outputs(fn.process(("s", [("event", document)]), streams))
        assert [(r.status, r.error, r.token, r.attempts, r.parked_documents) for r in results] == [
            ("failed", "KeyError", "remote_error", 2, 1)]
        assert [(b.reason, b.documents) for b in parked] == [("retries_exhausted", (("event", document),))]
        assert len(session.calls) == 2

        def broken_settle(*args: Any) -> Any:
            raise KeyError("a bug of the sink")

        monkeypatch.setattr(fn, "settle", broken_settle)
        with pytest.raises(KeyError, match="a bug of the sink"):
            list(fn.process(("t", [("event", event_doc(2))]), config(rest_stream("t", "https://a.example/t"))))
    finally:
        fn.teardown()


def test_missing_secret_and_unknown_stream_fail_without_sending(monkeypatch):
    monkeypatch.delenv("DATASTREAMER_TEST_REST_TOKEN", raising=False)
    streams = config(rest_stream("s1", "http://a.example/x", bulk=True))
    session = FakeSession()
    fn = started(_RestBulkWriteFn(new_session, Timeouts(), allow_insecure=True,
                                  max_request_bytes=1024 * 1024), session)
    batch = [("usage", usage_doc(i)) for i in range(5)]
    no_secret, parked_no_secret, _ = split_outputs(fn.process(("s1", batch), streams))
    again, parked_again, _ = split_outputs(fn.process(("s1", batch), streams))
    unknown, parked_unknown, _ = split_outputs(fn.process(("gone", batch), streams))
    fn.teardown()
    assert session.calls == []
    assert [(r.status, r.error, r.token, r.documents, r.parked_documents, r.attempts) for r in no_secret] == [
        ("failed", SECRET_UNAVAILABLE, "credentials_unavailable", 5, 5, 0)]
    assert [(b.reason, b.error, b.token, b.documents) for b in parked_no_secret] == [
        ("permanent_failure", SECRET_UNAVAILABLE, "credentials_unavailable", tuple(batch))]
    # the stream is deactivated on this worker: its next batch is parked as such
    assert [(r.status, r.token, r.attempts) for r in again] == [("parked", "credentials_unavailable", 0)]
    assert [(b.reason, b.token, len(b.documents)) for b in parked_again] == [
        ("stream_deactivated", "credentials_unavailable", 5)]
    assert [(r.status, r.error, r.documents) for r in unknown] == [("failed", UNKNOWN_STREAM, 5)]
    assert [(b.stream_id, b.reason, b.error, b.documents) for b in parked_unknown] == [
        ("gone", "permanent_failure", UNKNOWN_STREAM, tuple(batch))]


def test_bulk_fn_splits_by_count_and_bytes_in_time_order(stream_secrets):
    streams = config(rest_stream("b", "http://a.example/bulk", bulk=True, batching={"bulk_size": 4}))
    docs = [("usage", usage_doc(100 + i, seconds=(i * 7) % 23)) for i in range(23)]
    docs += [("event", event_doc(200 + i, seconds=(i * 5) % 23)) for i in range(10)]
    one = len(orjson.dumps(docs[0][1]))
    limit = 3 * one + 300  # about 3 usage docs: bytes, not bulk_size 4, must split some requests
    session = FakeSession()
    fn = started(_RestBulkWriteFn(new_session, Timeouts(), allow_insecure=True,
                                  max_request_bytes=limit), session)
    results = list(fn.process(("b", docs), streams))
    fn.teardown()

    bodies = [call["data"] for call in session.calls]
    arrays = [orjson.loads(body) for body in bodies]
    assert all(len(body) <= limit for body in bodies)
    assert all(1 <= len(a) <= 4 for a in arrays)
    assert any(len(a) < 4 for a in arrays[:-1])  # the byte limit did split
    sent = [doc for array in arrays for doc in array]
    kinds = {doc["id"]: kind for kind, doc in docs}
    keys = [order_key(kinds[doc["id"]], doc) for doc in sent]
    assert keys == sorted(keys)  # within and across requests
    assert sorted(d["id"] for d in sent) == sorted(d["id"] for _, d in docs)
    assert [r.documents for r in results] == [len(a) for a in arrays]
    assert [r.bytes for r in results] == [len(b) for b in bodies]
    # bodies are the documents' own orjson bytes, joined: nothing re-serialized
    assert bodies[0] == b"[" + b",".join(orjson.dumps(d) for d in arrays[0]) + b"]"


@pytest.mark.parametrize(("spare", "per_request"), [(0, 3), (-1, 2)])
def test_bulk_fn_byte_limit_is_exact(stream_secrets, spare, per_request):
    """Documents of equal size d: a body of n is n*d + (n - 1) commas + 2 brackets.
    A limit of exactly 3 documents' body takes 3 a request, one byte less takes 2."""
    streams = config(rest_stream("b", "http://a.example/bulk", bulk=True, batching={"bulk_size": 10}))
    docs = [usage_doc(100 + i, seconds=i) for i in range(9)]
    size = len(orjson.dumps(docs[0]))
    assert {len(orjson.dumps(d)) for d in docs} == {size}
    limit = 3 * size + 2 + 2 + spare
    session = FakeSession()
    fn = started(_RestBulkWriteFn(new_session, Timeouts(), allow_insecure=True,
                                  max_request_bytes=limit), session)
    list(fn.process(("b", [("usage", d) for d in docs]), streams))
    fn.teardown()
    counts = [len(orjson.loads(c["data"])) for c in session.calls]
    assert counts == [per_request] * (9 // per_request) + ([9 % per_request] if 9 % per_request else [])
    assert max(len(c["data"]) for c in session.calls) <= limit


@pytest.mark.parametrize(("spare", "sent"), [(0, True), (-1, False)])
def test_bulk_fn_too_large_boundary(stream_secrets, spare, sent):
    """A document is sendable exactly when ``[doc]`` fits the limit."""
    streams = config(rest_stream("b", "http://a.example/bulk", bulk=True))
    doc = usage_doc(1)
    session = FakeSession()
    fn = started(_RestBulkWriteFn(new_session, Timeouts(), allow_insecure=True,
                                  max_request_bytes=len(orjson.dumps(doc)) + 2 + spare),
                 session)
    out = list(fn.process(("b", [("usage", doc)]), streams))
    fn.teardown()
    assert len(session.calls) == (1 if sent else 0)
    assert [isinstance(o, beam.pvalue.TaggedOutput) for o in out] == [not sent]


def test_bulk_fn_dead_letters_a_document_too_large_for_any_request(stream_secrets):
    streams = config(rest_stream("b", "http://a.example/bulk", bulk=True))
    big = usage_doc(1)
    big["imsi"] = "9" * 5000
    small = [usage_doc(2), usage_doc(3)]
    session = FakeSession()
    fn = started(_RestBulkWriteFn(new_session, Timeouts(), allow_insecure=True,
                                  max_request_bytes=4000), session)
    out = list(fn.process(("b", [("usage", small[0]), ("usage", big), ("usage", small[1])]), streams))
    fn.teardown()
    letters = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
    results = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    assert [(letter["reason"], letter["record_id"], letter["stage"]) for letter in letters] == [
        ("record_too_large", 1, "deliver")]
    assert orjson.loads(letters[0]["payload"]) == big
    assert [orjson.loads(c["data"]) for c in session.calls] == [small]
    assert [(r.documents, r.status) for r in results] == [(2, "delivered")]


# =========================================================================== tier b: composites


def test_two_streams_of_one_organisation_never_share_a_request(http_receiver, stream_secrets):
    url = http_receiver.url
    streams = config(
        rest_stream("first", f"{url}/first", bulk=True, batching={"bulk_size": 10}),
        rest_stream("second", f"{url}/second", bulk=True, batching={"bulk_size": 10}),
        rest_stream("single-a", f"{url}/single-a"),
        rest_stream("single-b", f"{url}/single-b"),
    )
    first = [usage_doc(i, seconds=i) for i in range(15)]
    second = [usage_doc(1000 + i, seconds=i) for i in range(12)]
    interleaved = [e for pair in zip(as_elements("first", first), as_elements("second", second[:12]), strict=False)
                   for e in pair] + as_elements("first", first[12:])
    single_a = [event_doc(2000 + i, seconds=i) for i in range(6)]
    single_b = [event_doc(3000 + i, seconds=i) for i in range(4)]

    p, bulk = run_sink(bulk_sink(), streams, interleaved)
    assert_that(bulk.results, totals_per_stream({"first": (15, "delivered"), "second": (12, "delivered")}))
    p.run().wait_until_finish()
    p, single = run_sink(rest_sink(), streams,
                         as_elements("single-a", single_a) + as_elements("single-b", single_b))
    assert_that(single.results, totals_per_stream({"single-a": (6, "delivered"), "single-b": (4, "delivered")}))
    p.run().wait_until_finish()

    ids_by_path: dict[str, list[int]] = {}
    for request in http_receiver.requests():
        body = request.json()
        ids_by_path.setdefault(request.path, []).extend(d["id"] for d in (body if isinstance(body, list) else [body]))
    assert {path: sorted(ids) for path, ids in ids_by_path.items()} == {
        "/first": [d["id"] for d in first], "/second": [d["id"] for d in second],
        "/single-a": [d["id"] for d in single_a], "/single-b": [d["id"] for d in single_b],
    }


def parked_summary(batch: ParkedBatch) -> tuple[Any, ...]:
    ids = tuple(sorted(d["id"] for _, d in batch.documents))
    return batch.stream_id, batch.reason, batch.token, batch.attempts, ids


@pytest.mark.parametrize(("status", "single_expected", "bulk_expected", "single_parked", "bulk_parked", "sent"), [
    # retried (2 attempts), every request fails: each is parked on its own
    (500,
     [("failed", 500, 1, 1, 2)] * 3,
     [("failed", 500, 2, 2, 2), ("failed", 500, 2, 2, 2), ("failed", 500, 1, 1, 2)],
     [("single", "retries_exhausted", "remote_error", 2, (i,)) for i in range(3)],
     [("bulk", "retries_exhausted", "remote_error", 2, ids) for ids in ((0, 1), (2, 3), (4,))],
     {"/single": 6, "/bulk": 6}),
    # permanent: one attempt, the stream is deactivated, the rest parked without a request
    (301,
     [("failed", 301, 1, 1, 1), ("parked", None, 2, 2, 0)],
     [("failed", 301, 2, 2, 1), ("parked", None, 3, 3, 0)],
     [("single", "permanent_failure", "redirected", 1, (0,)),
      ("single", "stream_deactivated", "redirected", 0, (1, 2))],
     [("bulk", "permanent_failure", "redirected", 1, (0, 1)),
      ("bulk", "stream_deactivated", "redirected", 0, (2, 3, 4))],
     {"/single": 1, "/bulk": 1}),
], ids=["500", "301"])
def test_error_and_redirect_answers_are_failed_results(http_receiver, stream_secrets, status, single_expected,
                                                        bulk_expected, single_parked, bulk_parked, sent):
    http_receiver.responder = lambda request: Reply(status, b"{}", {"Location": "http://127.0.0.1:1/elsewhere"})
    url = http_receiver.url
    streams = config(rest_stream("single", f"{url}/single"),
                     rest_stream("bulk", f"{url}/bulk", bulk=True, batching={"bulk_size": 2}))
    fields = beam.Map(lambda r: (r.status, r.status_code, r.documents, r.parked_documents, r.attempts))
    p, single = run_sink(rest_sink(concurrency=1), streams,
                         as_elements("single", [event_doc(i, seconds=i) for i in range(3)]))
    assert_that(single.results | fields, equal_to(single_expected))
    assert_that(single.parked | beam.Map(parked_summary), equal_to(single_parked), label="Parked")
    p.run().wait_until_finish()
    p, bulk = run_sink(bulk_sink(), streams, as_elements("bulk", [usage_doc(i, seconds=i) for i in range(5)]))
    assert_that(bulk.results | fields, equal_to(bulk_expected))
    assert_that(bulk.parked | beam.Map(parked_summary), equal_to(bulk_parked), label="Parked")
    p.run().wait_until_finish()
    # nothing followed the Location header: the receiver saw only the configured paths
    assert Counter(r.path for r in http_receiver.requests()) == sent


def test_connection_refused_is_a_failed_result_with_an_error_token(stream_secrets):
    closed = f"http://127.0.0.1:{free_port()}"
    streams = config(rest_stream("single", f"{closed}/single"), rest_stream("bulk", f"{closed}/bulk", bulk=True))
    p, single = run_sink(rest_sink(), streams,
                         as_elements("single", [event_doc(1), event_doc(2)]))
    assert_that(single.results | beam.Map(lambda r: (r.stream_id, r.status, r.status_code, r.error, r.token)),
                equal_to([("single", "failed", None, "ConnectionError", "unreachable")] * 2))
    assert_that(single.parked | beam.Map(parked_summary),
                equal_to([("single", "retries_exhausted", "unreachable", 2, (i,)) for i in (1, 2)]), label="Parked")
    result = p.run()
    result.wait_until_finish()
    # "requests" counts attempts: two documents, two attempts each
    assert delivery_counters(result) == {"deliver|rest_api|requests": 4, "deliver|rest_api|failed_documents": 2}
    p, bulk = run_sink(bulk_sink(), streams,
                       as_elements("bulk", [usage_doc(1), usage_doc(2)]))
    assert_that(bulk.results | beam.Map(lambda r: (r.stream_id, r.status, r.documents, r.error, r.target)),
                equal_to([("bulk", "failed", 2, "ConnectionError", f"{closed}/bulk")]))
    assert_that(bulk.parked | beam.Map(parked_summary),
                equal_to([("bulk", "retries_exhausted", "unreachable", 2, (1, 2))]), label="Parked")
    p.run().wait_until_finish()


# =========================================================================== tier c: end to end


def big_doc(i: int) -> dict[str, Any]:
    return usage_doc(10_000_000 + i, seconds=(i * 7919) % 3600, endpoint_id=8_000_000 + i % 50)


def test_bulk_end_to_end_25000_documents_respect_bulk_size(http_receiver, stream_secrets):
    url = http_receiver.url
    streams = config(
        rest_stream("big", f"{url}/big", bulk=True, batching={"bulk_size": 3000}),
        rest_stream("tiny", f"{url}/tiny", bulk=True, batching={"bulk_size": 7}),
    )
    big = [big_doc(i) for i in range(25_000)]
    tiny = [usage_doc(20_000_000 + i, seconds=i) for i in range(100)] + [event_doc(30_000_000 + i) for i in range(3)]
    p = TestPipeline()
    side = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([streams]))
    # the 25,000 documents are made inside the pipeline: a Create of them all would
    # spend most of the test serializing them into the pipeline graph
    numbers = p | "Numbers" >> beam.Create(range(25_000))
    generated = numbers | "Big" >> beam.Map(lambda i: ("big", ("usage", big_doc(i))))
    given = p | "Tiny" >> beam.Create(as_elements("tiny", tiny))
    routed = (generated, given) | beam.Flatten() | "Stamp" >> beam.Map(lambda e: TimestampedValue(e, ELEMENT_TS))
    outputs = routed | "Deliver" >> WriteToRestApiBulk(side, max_buffering_seconds=5, policy=FAST,
                                                           allow_insecure=True)
    assert_that(outputs.results, totals_per_stream({"big": (25_000, "delivered"), "tiny": (103, "delivered")}),
                label="Totals")
    assert_that(outputs.results, _check(lambda rs: all(r.failed_documents == 0 and r.status_code == 202
                                                       for r in rs), "a request failed"), label="AllOk")
    assert_that(outputs.dead_letters, equal_to([]), label="NoDeadLetters")
    assert_that(outputs.parked, equal_to([]), label="NothingParked")
    p.run().wait_until_finish()

    for path, docs, limit in (("/big", big, 3000), ("/tiny", tiny, 7)):
        arrays = [r.json() for r in http_receiver.requests(path)]
        assert all(isinstance(a, list) and 1 <= len(a) <= limit for a in arrays), path
        received = [doc for array in arrays for doc in array]
        assert len(received) == len(docs)
        assert {d["id"]: d for d in received} == {d["id"]: d for d in docs}  # each once, field for field
        for array in arrays:  # each request in time order
            keys = [order_key("usage" if "end_timestamp" in d else "event", d) for d in array]
            assert keys == sorted(keys)
    assert len(http_receiver.requests("/tiny")) >= 103 // 7 + 1


def test_rest_end_to_end_one_document_per_request(http_receiver, stream_secrets):
    url = http_receiver.url
    streams = config(
        rest_stream("put", f"{url}/put", rest={"url": f"{url}/put", "method": "PUT",
                                               "headers": {"X-Customer": "tests"}, "auth_header": "Authorization",
                                               "auth_secret": {"env": "DATASTREAMER_TEST_REST_TOKEN"},
        "signing_secret": {"env": "DATASTREAMER_TEST_SIGNING_SECRET"}}),
        rest_stream("post", f"{url}/post"),
    )
    put_docs = [event_doc(500 + i, seconds=i, sample=s) for i, s in enumerate(sorted(EXPECTED_EVENTS) * 7)]
    post_docs = [usage_doc(900 + i, seconds=i) for i in range(9)] + list(EXPECTED_EVENTS.values())
    p, outputs = run_sink(rest_sink(concurrency=4), streams,
                          as_elements("put", put_docs) + as_elements("post", post_docs))
    assert_that(outputs.results, totals_per_stream({"put": (21, "delivered"), "post": (12, "delivered")}))
    assert_that(outputs.results | beam.Map(lambda r: r.documents), equal_to([1] * 33), label="OnePerResult")
    assert_that(outputs.parked, equal_to([]), label="NothingParked")
    p.run().wait_until_finish()

    for path, method, docs in (("/put", "PUT", put_docs), ("/post", "POST", post_docs)):
        requests_ = http_receiver.requests(path)
        assert len(requests_) == len(docs)
        received = [r.json() for r in requests_]
        assert all(isinstance(body, dict) for body in received)  # one object, not an array
        assert sorted(received, key=lambda d: d["id"]) == sorted(docs, key=lambda d: d["id"])
        for request in requests_:
            assert request.method == method
            headers = {k.lower(): v for k, v in request.headers.items()}
            assert headers["content-type"] == "application/json"
            assert headers["x-customer"] == "tests"
            assert headers["authorization"] == SECRETS["DATASTREAMER_TEST_REST_TOKEN"]
            assert verify_signature(SIGNING_SECRET, headers[SIGNATURE_HEADER.lower()], request.body)


def test_bulk_end_to_end_too_large_document_is_dead_lettered_not_sent(http_receiver, stream_secrets):
    url = http_receiver.url
    streams = config(rest_stream("bulk", f"{url}/bulk", bulk=True))
    docs = [usage_doc(i, seconds=i) for i in range(4)]
    big = event_doc(77, sample="5.1.2")
    big["description"] = "x" * 20_000
    p, outputs = run_sink(bulk_sink(max_request_bytes=16_000),
                          streams, as_elements("bulk", [*docs[:2], big, *docs[2:]]))
    assert_that(outputs.dead_letters | beam.Map(lambda d: (d["reason"], d["kind"], d["record_id"],
                                                          orjson.loads(d["payload"]) == big)),
                equal_to([("record_too_large", "event", 77, True)]), label="DeadLetter")
    assert_that(outputs.results | beam.Map(lambda r: (r.documents, r.status)), equal_to([(4, "delivered")]),
                label="Results")
    result = p.run()
    result.wait_until_finish()
    assert [r.json() for r in http_receiver.requests()] == [docs]
    body = http_receiver.requests()[0].body
    assert delivery_counters(result) == {
        "deliver|rest_api_bulk|requests": 1, "deliver|rest_api_bulk|documents": 4,
        "deliver|rest_api_bulk|bytes": len(body), "deliver|rest_api_bulk|dead_letters": 1,
    }


def delivery_counters(result) -> dict[str, int]:
    """Committed counters of the namespace; zero counters (failed_documents) left out.
    Input-reconciliation dead letters (``dead_letter|...``) must not appear."""
    counters = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))["counters"]
    return {c.key.metric.name: c.committed for c in counters if c.committed}


def test_no_secret_in_results_dead_letters_logs_or_graph(http_receiver, stream_secrets, caplog):
    caplog.set_level(logging.DEBUG)
    http_receiver.responder = lambda request: Reply(503 if request.path == "/fails" else 200)
    url = http_receiver.url
    closed = f"http://127.0.0.1:{free_port()}"
    streams = config(
        rest_stream("fails", f"{url}/fails", bulk=True),
        rest_stream("works", f"{url}/works", bulk=True, batching={"bulk_size": 2}),
        rest_stream("refused", f"{closed}/refused"),
        rest_stream("single", f"{url}/fails"),
    )
    big = usage_doc(99)
    big["imsi"] = "1" * 3000
    bulk_elements = as_elements("fails", [usage_doc(1), big]) + as_elements("works", [usage_doc(i) for i in range(5)])
    single_elements = as_elements("refused", [event_doc(3)]) + as_elements("single", [event_doc(4)])

    def no_secret(items):
        text = repr(list(items))
        if TOKEN in text or "rest-token" in text or SIGNING_SECRET in text:
            raise BeamAssertException("secret found in sink output")

    p, bulk = run_sink(bulk_sink(max_request_bytes=2000),
                       streams, bulk_elements)
    assert_that(bulk.results, no_secret, label="ResultsClean")
    assert_that(bulk.dead_letters, no_secret, label="DeadLettersClean")
    assert_that(bulk.parked, no_secret, label="ParkedClean")
    assert_that(bulk.dead_letters | beam.Map(lambda d: d["reason"]), equal_to(["record_too_large"]), label="DL")
    graph = p.to_runner_api().SerializeToString()
    assert TOKEN.encode() not in graph and SIGNING_SECRET.encode() not in graph  # the graph holds references only
    p.run().wait_until_finish()
    p, single = run_sink(rest_sink(), streams, single_elements)
    assert_that(single.results | beam.Map(lambda r: (r.stream_id, r.status, r.status_code, r.error)),
                equal_to([("refused", "failed", None, "ConnectionError"), ("single", "failed", 503, "http_503")]))
    assert_that(single.results, no_secret, label="ResultsClean")
    assert_that(single.parked, no_secret, label="ParkedClean")
    p.run().wait_until_finish()

    # the test can fail: the secrets really were used, and failures really were logged
    assert all(r.headers.get("Authorization") == TOKEN for r in http_receiver.requests())
    assert all(verify_signature(SIGNING_SECRET, r.headers[SIGNATURE_HEADER], r.body) for r in http_receiver.requests())
    assert any("requests to" in record.getMessage() and "failed" in record.getMessage()
               for record in caplog.records)
    for record in caplog.records:
        for secret in (TOKEN, "rest-token", SIGNING_SECRET):
            assert secret not in record.getMessage()
            assert secret not in repr(record.args) and secret not in (record.exc_text or "")
    assert TOKEN not in caplog.text and SIGNING_SECRET not in caplog.text


class _FindBatching(PipelineVisitor):
    def __init__(self) -> None:
        self.found: dict[str, Any] = {}

    def enter_composite_transform(self, node) -> None:
        self.visit_transform(node)

    def visit_transform(self, node) -> None:
        if isinstance(node.transform, beam.GroupIntoBatches | beam.GroupByKey):
            self.found[node.full_label] = node.transform


def test_streaming_input_goes_through_group_into_batches(http_receiver, stream_secrets):
    """Unbounded input is batched with GroupIntoBatches, bounded by count and by
    ``max_buffering_seconds``; everything sent arrives once, per stream."""
    url = http_receiver.url
    streams = config(rest_stream("live", f"{url}/live", bulk=True, batching={"bulk_size": 2}),
                     rest_stream("one", f"{url}/one"))
    live = [usage_doc(i, seconds=i) for i in range(5)]
    one = [event_doc(100 + i, seconds=i) for i in range(3)]
    events = (
        TestStream()
        .add_elements([TimestampedValue(e, ELEMENT_TS + 1) for e in as_elements("live", live[:3])])
        .add_elements([TimestampedValue(e, ELEMENT_TS + 2) for e in as_elements("one", one)])
        .advance_watermark_to(ELEMENT_TS + 60)
        .add_elements([TimestampedValue(e, ELEMENT_TS + 61) for e in as_elements("live", live[3:])])
        .advance_watermark_to_infinity()
    )
    p = TestPipeline(options=PipelineOptions(streaming=True))
    side = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([streams]))
    routed = p | "Live" >> events
    bulk = routed | "Bulk" >> beam.Filter(lambda e: e[0] == "live") | "DeliverBulk" >> WriteToRestApiBulk(
        side, max_buffering_seconds=7, policy=FAST, allow_insecure=True)
    single = routed | "Single" >> beam.Filter(lambda e: e[0] == "one") | "DeliverOne" >> WriteToRestApi(
        side, max_buffering_seconds=3, policy=FAST, allow_insecure=True)
    # assert_that misses outputs of timers in the DirectRunner's streaming mode
    # (apache/beam#18987): collect into this module instead (same process)
    STREAMING_RESULTS.clear()
    _ = (bulk.results, single.results) | beam.Flatten() | beam.Map(_collect)
    finder = _FindBatching()
    p.visit(finder)
    assert {label: transform.params.max_buffering_duration_secs for label, transform in finder.found.items()} == {
        "DeliverBulk/BatchPerStream/GroupIntoBatches": 7, "DeliverOne/BatchPerStream/GroupIntoBatches": 3}
    p.run().wait_until_finish()

    arrays = [r.json() for r in http_receiver.requests("/live")]
    assert all(len(a) <= 2 for a in arrays)
    assert sorted((d for a in arrays for d in a), key=lambda d: d["id"]) == live
    assert sorted((r.json() for r in http_receiver.requests("/one")), key=lambda d: d["id"]) == one
    assert sorted((r.stream_id, r.status) for r in STREAMING_RESULTS for _ in range(r.documents)) == (
        [("live", "delivered")] * 5 + [("one", "delivered")] * 3)


def test_bounded_input_is_grouped_with_group_by_key():
    """A bounded input uses GroupByKey instead (see BatchPerStream for why)."""
    p = TestPipeline()
    side = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([config()]))
    _ = p | beam.Create([("s", ("usage", usage_doc(1)))]) | "Deliver" >> WriteToRestApiBulk(side)
    finder = _FindBatching()
    p.visit(finder)
    assert [label for label in finder.found if "BatchPerStream" in label and "CountPerStream" not in label] == [
        "Deliver/BatchPerStream/GroupByStream"]


def test_a_large_bounded_stream_is_grouped_in_shards_that_keep_each_endpoint_together():
    """A bounded stream is grouped in shards of about four batches, not as one
    group holding the whole stream; an endpoint's documents share a shard."""
    from sinks.batching import _shard_by_endpoint, _split_shard

    routed = [("s", ("usage", {"id": i, "endpoint": {"id": i % 10}})) for i in range(1000)]
    keyed = [_shard_by_endpoint(element, {"s": 1000}, 120) for element in routed]
    shards: dict[Any, list[Any]] = {}
    for key, value in keyed:
        shards.setdefault(key, []).append(value)
    assert {stream for stream, _ in shards} == {"s"}
    assert 1 < len(shards) <= 9  # ceil(1000 / 120) shards at most, endpoints hashed into them
    for values in shards.values():
        endpoints = {doc["endpoint"]["id"] for _, doc in values}
        for other in shards.values():
            if other is not values:
                assert endpoints.isdisjoint({doc["endpoint"]["id"] for _, doc in other})
    batches = [batch for key, values in shards.items() for batch in _split_shard((key, values), 30)]
    assert all(stream == "s" and 1 <= len(batch) <= 30 for stream, batch in batches)
    assert sorted(doc["id"] for _, batch in batches for _, doc in batch) == list(range(1000))


STREAMING_RESULTS: list[Any] = []


def _collect(result) -> None:
    STREAMING_RESULTS.append(result)
