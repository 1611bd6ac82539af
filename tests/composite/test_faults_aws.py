"""Fault injection for the Kinesis and S3 sinks against moto's server.

The real paths run on moto: records and objects go to its Kinesis and S3 and are
read back; a missing stream or bucket is moto's own answer. What moto cannot do
(throttle, fail single records, answer ``SlowDown`` or ``AccessDenied``, lose a
reply) comes from :class:`FaultyFactory`: the sink's client factory returns boto3's
real client on moto wrapped so that the first N calls fail as told and later calls
pass through. Each test asserts what the destination holds, what was parked, the
results, that every document in is delivered, parked or dead-lettered exactly once,
and that no secret reached a log line (captured at DEBUG, where botocore logs the
request headers with the access key id).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from botocore.exceptions import ClientError, ReadTimeoutError

from schemas.delivery import PERMANENT_FAILURE, RETRIES_EXHAUSTED, STREAM_DEACTIVATED, DeliveryResult
from sinks.aws import boto3_client
from sinks.kinesis import WriteToKinesis, partition_key
from sinks.parking import ParkedBatch
from sinks.redaction import MASK
from sinks.retry import RetryPolicy
from sinks.s3 import WriteToS3
from tests.composite.test_sink_kinesis import new_stream, read_stream
from tests.composite.test_sink_s3 import expected_row, new_bucket, parse_csv, read_bucket, routed, sort_key, stamp
from tests.documents import event_doc, usage_doc
from tests.policies import unhurried
from tests.streams import SECRETS, config, kinesis_stream, s3_stream

BASE = datetime(2026, 11, 1, 8, 5, 0, tzinfo=UTC)
#: Fast retries: three attempts, backoff of milliseconds.
FAST = unhurried(3)
THROTTLED_RECORD = "ProvisionedThroughputExceededException"


# --------------------------------------------------------------------------- fault injection

#: Calls seen by each factory, and what a pipeline emitted, per token. Module level:
#: the DoFn and its factory are pickled, but the runner runs in this process.
CALLS: dict[str, list[dict[str, Any]]] = {}
COLLECTED: dict[str, dict[str, list[Any]]] = {}

RAISE = "raise"  # ClientError(code, status) without reaching moto
FAIL_RECORDS = "fail_records"  # Kinesis: these documents' records fail, the others reach moto
LOST_REPLY = "lost_reply"  # the call reaches moto, then the reply is lost (read timeout)


@dataclass(frozen=True)
class Fault:
    kind: str
    times: int | None = None  # the first `times` calls fail; None: every call
    code: str = ""
    status: int = 400
    record_codes: tuple[tuple[int, str], ...] = ()  # FAIL_RECORDS: document id -> record ErrorCode


class FaultyFactory:
    """A client factory: boto3's real client on moto, wrapped to inject ``fault``
    into the first calls of ``put_records`` / ``put_object`` and record every call."""

    def __init__(self, fault: Fault | None = None) -> None:
        self.fault = fault
        self.token = uuid.uuid4().hex
        CALLS[self.token] = []

    @property
    def calls(self) -> list[dict[str, Any]]:
        return CALLS[self.token]

    def __call__(self, *args: Any) -> FaultyClient:
        return FaultyClient(boto3_client(*args), self.fault, self.token)


class FaultyClient:
    def __init__(self, client: Any, fault: Fault | None, token: str) -> None:
        self._client, self._fault, self._token = client, fault, token

    def _injecting(self, call: dict[str, Any]) -> Fault | None:
        calls = CALLS[self._token]
        fault = self._fault
        active = fault is not None and (fault.times is None or len(calls) < fault.times)
        call["fault"] = fault.kind if active else None  # type: ignore[union-attr]
        calls.append(call)
        return fault if active else None

    def _error(self, fault: Fault, operation: str) -> ClientError:
        return ClientError({"Error": {"Code": fault.code, "Message": "injected"},
                            "ResponseMetadata": {"HTTPStatusCode": fault.status}}, operation)

    def put_records(self, **kwargs: Any) -> dict[str, Any]:
        ids = [json.loads(r["Data"])["id"] for r in kwargs["Records"]]
        fault = self._injecting({"method": "put_records", "stream": kwargs["StreamName"], "ids": ids})
        if fault is None:
            return self._client.put_records(**kwargs)
        if fault.kind == RAISE:
            raise self._error(fault, "PutRecords")
        if fault.kind == LOST_REPLY:
            self._client.put_records(**kwargs)
            raise ReadTimeoutError(endpoint_url="injected")
        failing = dict(fault.record_codes)
        passing = [r for r, i in zip(kwargs["Records"], ids, strict=True) if i not in failing]
        real = (self._client.put_records(StreamName=kwargs["StreamName"], Records=passing) if passing
                else {"FailedRecordCount": 0, "Records": [], "ResponseMetadata": {"HTTPStatusCode": 200}})
        answers = iter(real["Records"])
        records = [{"ErrorCode": failing[i], "ErrorMessage": "injected"} if i in failing else next(answers)
                   for i in ids]
        return {"FailedRecordCount": real["FailedRecordCount"] + sum(1 for i in ids if i in failing),
                "Records": records, "ResponseMetadata": real["ResponseMetadata"]}

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        fault = self._injecting({"method": "put_object", "bucket": kwargs["Bucket"], "key": kwargs["Key"]})
        if fault is None:
            return self._client.put_object(**kwargs)
        if fault.kind == LOST_REPLY:
            self._client.put_object(**kwargs)
            raise ReadTimeoutError(endpoint_url="injected")
        raise self._error(fault, "PutObject")

    def close(self) -> None:
        self._client.close()


# --------------------------------------------------------------------------- running and checking


def _collect(value: Any, token: str, name: str) -> None:
    COLLECTED[token][name].append(value)


def run_sink(make_sink: Callable[[Any], beam.PTransform], elements: list[Any], streams: Any, *,
             stamped: bool = False) -> tuple[list[DeliveryResult], list[ParkedBatch], list[dict[str, Any]]]:
    """Run the sink ``make_sink(side input)`` over ``elements``; its results, parked
    batches and dead letters. ``stamped``: give elements their document's time."""
    token = uuid.uuid4().hex
    COLLECTED[token] = {"results": [], "parked": [], "dead_letters": []}
    with TestPipeline(runner=FnApiRunner()) as p:
        side = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([streams]))
        routed_elements = p | "Elements" >> beam.Create(elements)
        if stamped:
            routed_elements = routed_elements | "Stamp" >> beam.Map(stamp)
        out = routed_elements | "Sink" >> make_sink(side)
        for name in ("results", "parked", "dead_letters"):
            _ = getattr(out, name) | f"Collect_{name}" >> beam.Map(_collect, token, name)
    collected = COLLECTED.pop(token)
    return collected["results"], collected["parked"], collected["dead_letters"]


def kinesis_sink(factory: FaultyFactory, policy: RetryPolicy = FAST) -> Callable[[Any], beam.PTransform]:
    return lambda side: WriteToKinesis(side, client_factory=factory, max_buffering_seconds=1, policy=policy,
                                        allow_insecure=True)


def s3_sink(factory: FaultyFactory, policy: RetryPolicy = FAST) -> Callable[[Any], beam.PTransform]:
    return lambda side: WriteToS3(side, client_factory=factory, policy=policy, allow_insecure=True)


def outcome(result: DeliveryResult) -> tuple[Any, ...]:
    return (result.stream_id, result.status, result.documents, result.parked_documents, result.attempts,
            result.token, result.error, result.redelivered_documents)


def parked_summary(batch: ParkedBatch) -> tuple[Any, ...]:
    return (batch.stream_id, batch.reason, batch.token, batch.error, batch.attempts,
            sorted(d["id"] for _, d in batch.documents))


def assert_reconciles(results: list[DeliveryResult], parked: list[ParkedBatch], letters: list[dict[str, Any]],
                      documents_in: int) -> None:
    """delivered + parked + dead-lettered = documents in, and the results' parked
    counts are the parked batches'."""
    delivered = sum(r.documents - r.parked_documents for r in results)
    parked_documents = sum(len(b.documents) for b in parked)
    assert sum(r.parked_documents for r in results) == parked_documents
    assert sum(r.failed_documents for r in results) == parked_documents
    assert delivered + parked_documents + len(letters) == documents_in


def assert_no_secret_logged(caplog: pytest.LogCaptureFixture, *, sink_sent_requests: bool = True) -> None:
    texts = [caplog.text, *(r.getMessage() for r in caplog.records), *(r.exc_text or "" for r in caplog.records)]
    for name, value in SECRETS.items():
        assert not any(value in text for text in texts), f"{name} in a log line"
    assert any(r.name.startswith("botocore") for r in caplog.records)
    if sink_sent_requests:
        # Not vacuous: botocore logged the sink's requests at DEBUG, the key id masked.
        assert MASK in caplog.text


@pytest.fixture
def debug_logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


# --------------------------------------------------------------------------- documents


def kinesis_items(first_id: int, count: int) -> list[tuple[str, dict[str, Any]]]:
    """Events (one an organisation event without endpoint) and usage of four
    endpoints, one second apart, so time order is id order."""
    items: list[tuple[str, dict[str, Any]]] = []
    for n in range(count):
        doc_id, moment, endpoint = first_id + n, BASE + timedelta(seconds=n), 9_000 + n % 4
        if n % 3 == 2:
            items.append(("usage", usage_doc(doc_id, moment, endpoint)))
        elif n == 3:
            items.append(("event", event_doc("5.1.3", doc_id, moment)))
        else:
            items.append(("event", event_doc("5.1.1" if n % 2 else "5.1.2", doc_id, moment, endpoint)))
    return items


def received(kinesis: Any, name: str) -> list[dict[str, Any]]:
    """Every document in every shard of the stream, partition keys checked."""
    documents = []
    for records in read_stream(kinesis, name).values():
        for key, document in records:
            assert key == partition_key(document)
            documents.append(document)
    return documents


def by_id(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(documents, key=lambda d: d["id"])


def missing_name() -> str:
    return f"missing-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- Kinesis


def test_kinesis_partial_failure_then_success_resends_only_the_failed_records(
        stream_secrets, moto_server, aws_session, debug_logs):
    kinesis = aws_session("kinesis")
    name = new_stream(kinesis, shards=2)
    streams = config(kinesis_stream("k1", moto_server.url, name))
    items = kinesis_items(100, 10)
    failing = ((101, THROTTLED_RECORD), (104, "InternalFailure"), (108, THROTTLED_RECORD))
    factory = FaultyFactory(Fault(FAIL_RECORDS, times=1, record_codes=failing))

    results, parked, letters = run_sink(kinesis_sink(factory), [("k1", item) for item in items], streams)

    assert [(c["ids"], c["fault"]) for c in factory.calls] == [
        (list(range(100, 110)), FAIL_RECORDS),
        ([101, 104, 108], None),  # exactly the failed records, in their order
    ]
    assert [outcome(r) for r in results] == [("k1", "delivered", 10, 0, 2, None, None, 0)]
    assert parked == [] and letters == []
    documents = received(kinesis, name)
    assert Counter(d["id"] for d in documents) == Counter(range(100, 110))  # each exactly once
    assert by_id(documents) == [doc for _, doc in items]
    assert_reconciles(results, parked, letters, len(items))
    assert_no_secret_logged(debug_logs)


def test_kinesis_records_failing_on_every_call_are_parked_and_the_others_delivered_once(
        stream_secrets, moto_server, aws_session, debug_logs):
    kinesis = aws_session("kinesis")
    name = new_stream(kinesis, shards=2)
    streams = config(kinesis_stream("k1", moto_server.url, name))
    items = kinesis_items(200, 10)
    failing = ((202, "InternalFailure"), (205, THROTTLED_RECORD), (209, THROTTLED_RECORD))
    factory = FaultyFactory(Fault(FAIL_RECORDS, record_codes=failing))

    results, parked, letters = run_sink(kinesis_sink(factory), [("k1", item) for item in items], streams)

    assert [c["ids"] for c in factory.calls] == [list(range(200, 210)), [202, 205, 209], [202, 205, 209]]
    # The first failed record's code names the failure: InternalFailure is remote_error.
    assert [outcome(r) for r in results] == [("k1", "partial", 10, 3, 3, "remote_error", "InternalFailure", 0)]
    assert [parked_summary(b) for b in parked] == [
        ("k1", RETRIES_EXHAUSTED, "remote_error", "InternalFailure", 3, [202, 205, 209])
    ]
    assert list(parked[0].documents) == [item for item in items if item[1]["id"] in (202, 205, 209)]
    assert letters == []
    documents = received(kinesis, name)
    delivered_ids = [i for i in range(200, 210) if i not in (202, 205, 209)]
    assert Counter(d["id"] for d in documents) == Counter(delivered_ids)
    assert by_id(documents) == [doc for _, doc in items if doc["id"] in delivered_ids]
    assert_reconciles(results, parked, letters, len(items))
    assert_no_secret_logged(debug_logs)


def test_kinesis_missing_stream_parks_at_once_and_deactivates_the_stream(
        stream_secrets, moto_server, aws_session, debug_logs):
    """600 documents are two batches (500 + 100) of the missing stream: the first
    request fails with not_found and is not retried, the second batch is parked
    without a call. A healthy stream beside it delivers everything."""
    kinesis = aws_session("kinesis")
    missing, healthy = missing_name(), new_stream(kinesis, shards=1)
    streams = config(kinesis_stream("k1", moto_server.url, missing), kinesis_stream("k2", moto_server.url, healthy))
    items = kinesis_items(1_000, 600)
    other = kinesis_items(5_000, 5)
    factory = FaultyFactory()

    results, parked, letters = run_sink(
        kinesis_sink(factory), [("k1", item) for item in items] + [("k2", item) for item in other], streams)

    missing_calls = [c for c in factory.calls if c["stream"] == missing]
    assert len(missing_calls) == 1
    first = sorted(missing_calls[0]["ids"])
    assert len(first) in (500, 100)
    second = sorted(set(range(1_000, 1_600)) - set(first))
    k1 = sorted((outcome(r) for r in results if r.stream_id == "k1"), key=lambda o: o[1])
    assert k1 == [
        ("k1", "failed", len(first), len(first), 1, "not_found", "ResourceNotFoundException", 0),
        ("k1", "parked", len(second), len(second), 0, "not_found", None, 0),
    ]
    assert [r.status_code for r in results if r.stream_id == "k1" and r.status == "failed"] == [400]
    assert sorted((parked_summary(b) for b in parked), key=lambda s: s[1]) == [
        ("k1", PERMANENT_FAILURE, "not_found", "ResourceNotFoundException", 1, first),
        ("k1", STREAM_DEACTIVATED, "not_found", None, 0, second),
    ]
    # Parked as received: the (kind, document) pairs, every one of the 600 once.
    assert sorted((pair for b in parked for pair in b.documents), key=lambda kd: kd[1]["id"]) == items
    assert [outcome(r) for r in results if r.stream_id == "k2"] == [("k2", "delivered", 5, 0, 1, None, None, 0)]
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        kinesis.describe_stream(StreamName=missing)
    assert by_id(received(kinesis, healthy)) == [doc for _, doc in other]
    assert letters == []
    assert_reconciles(results, parked, letters, len(items) + len(other))
    assert_no_secret_logged(debug_logs)


def test_kinesis_throttled_call_is_retried_whole_until_it_succeeds(
        stream_secrets, moto_server, aws_session, debug_logs):
    kinesis = aws_session("kinesis")
    name = new_stream(kinesis, shards=2)
    streams = config(kinesis_stream("k1", moto_server.url, name))
    items = kinesis_items(300, 8)
    factory = FaultyFactory(Fault(RAISE, times=2, code=THROTTLED_RECORD, status=400))

    results, parked, letters = run_sink(kinesis_sink(factory), [("k1", item) for item in items], streams)

    ids = list(range(300, 308))
    assert [(c["ids"], c["fault"]) for c in factory.calls] == [(ids, RAISE), (ids, RAISE), (ids, None)]
    assert [outcome(r) for r in results] == [("k1", "delivered", 8, 0, 3, None, None, 0)]
    assert [r.status_code for r in results] == [200]
    assert parked == [] and letters == []
    documents = received(kinesis, name)
    assert Counter(d["id"] for d in documents) == Counter(ids)
    assert by_id(documents) == [doc for _, doc in items]
    assert_reconciles(results, parked, letters, len(items))
    assert_no_secret_logged(debug_logs)


def test_kinesis_records_resent_after_a_lost_reply_are_reported_as_redelivered(
        stream_secrets, moto_server, aws_session, debug_logs):
    """The first call reaches the stream but its reply is lost (read timeout): the
    retry stores the records again. Nothing hides it: the result counts them."""
    kinesis = aws_session("kinesis")
    name = new_stream(kinesis, shards=1)
    streams = config(kinesis_stream("k1", moto_server.url, name))
    items = kinesis_items(400, 4)
    factory = FaultyFactory(Fault(LOST_REPLY, times=1))

    results, parked, letters = run_sink(kinesis_sink(factory), [("k1", item) for item in items], streams)

    assert [c["fault"] for c in factory.calls] == [LOST_REPLY, None]
    assert [outcome(r) for r in results] == [("k1", "delivered", 4, 0, 2, None, None, 4)]
    assert parked == [] and letters == []
    assert Counter(d["id"] for d in received(kinesis, name)) == Counter({400: 2, 401: 2, 402: 2, 403: 2})
    assert_reconciles(results, parked, letters, len(items))
    assert_no_secret_logged(debug_logs)


# --------------------------------------------------------------------------- S3


def s3_elements(stream_id: str, first_id: int, offsets: list[float], rotation: int = 60) -> list[Any]:
    """Usage and events of ``stream_id`` at BASE + offsets (seconds)."""
    elements = []
    for n, offset in enumerate(offsets):
        moment = BASE + timedelta(seconds=offset)
        if n % 2:
            elements.append(routed(stream_id, rotation, "usage", usage_doc(first_id + n, moment, 9_000 + n)))
        else:
            elements.append(routed(stream_id, rotation, "event", event_doc("5.1.1", first_id + n, moment, 9_000 + n)))
    return elements


def expected_files(elements: list[Any], prefix: str = "") -> dict[str, list[dict[str, str]]]:
    """key -> CSV rows for the elements, none of whose windows is split (rotation 60 s)."""
    files: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    for (_, kind, rotation), doc in elements:
        moment = datetime.strptime(doc["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z") if kind == "event" else \
            datetime.strptime(doc["end_timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        start = datetime.fromtimestamp(moment.timestamp() // rotation * rotation, UTC)
        name = f"{prefix}{'events' if kind == 'event' else 'cdr'}_{start:%Y%m%d_%H%M%S}.csv"
        files.setdefault(name, (kind, []))[1].append(doc)
    return {name: [expected_row(kind, d) for d in sorted(docs, key=sort_key(kind))]
            for name, (kind, docs) in files.items()}


def bucket_files(s3: Any, bucket: str) -> dict[str, list[dict[str, str]]]:
    return {key: parse_csv(body)[1] for key, (_, body) in read_bucket(s3, bucket).items()}


def test_s3_missing_bucket_parks_the_file_and_deactivates_the_stream(
        stream_secrets, moto_server, aws_session, debug_logs):
    """Two windows of events of a stream whose bucket is missing: the first file
    fails with not_found and is not retried, the second is parked without a
    request. A healthy stream beside it gets its file."""
    s3 = aws_session("s3")
    missing, healthy = missing_name(), new_bucket(s3)
    streams = config(s3_stream("s1", moto_server.url, missing, batching={"rotation_seconds": 60}),
                     s3_stream("s2", moto_server.url, healthy, batching={"rotation_seconds": 60}))
    elements = [routed("s1", 60, "event", event_doc("5.1.1", 10 + n, BASE + timedelta(seconds=s), 9_000 + n))
                for n, s in enumerate([5, 20, 70, 80, 95])]  # windows 08:05 (2) and 08:06 (3)
    other = s3_elements("s2", 50, [1, 2, 3])
    factory = FaultyFactory()

    results, parked, letters = run_sink(s3_sink(factory), elements + other, streams, stamped=True)

    missing_calls = [c for c in factory.calls if c["bucket"] == missing]
    assert len(missing_calls) == 1
    first_key = missing_calls[0]["key"]
    windows = {"events_20261101_080500.csv": [10, 11], "events_20261101_080600.csv": [12, 13, 14]}
    (second_key,) = set(windows) - {first_key}
    s1 = sorted(((*outcome(r), r.target) for r in results if r.stream_id == "s1"), key=lambda o: o[1])
    assert s1 == [
        ("s1", "failed", len(windows[first_key]), len(windows[first_key]), 1, "not_found", "NoSuchBucket", 0,
         f"s3://{missing}/{first_key}"),
        ("s1", "parked", len(windows[second_key]), len(windows[second_key]), 0, "not_found", None, 0,
         f"s3://{missing}/{second_key}"),
    ]
    assert sorted((parked_summary(b) for b in parked), key=lambda s: s[1]) == [
        ("s1", PERMANENT_FAILURE, "not_found", "NoSuchBucket", 1, windows[first_key]),
        ("s1", STREAM_DEACTIVATED, "not_found", None, 0, windows[second_key]),
    ]
    assert [b.status_code for b in parked if b.reason == PERMANENT_FAILURE] == [404]
    assert sorted(((kind, doc) for b in parked for kind, doc in b.documents), key=lambda kd: kd[1]["id"]) == \
        [("event", doc) for _, doc in elements]
    assert missing not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert sorted(outcome(r) for r in results if r.stream_id == "s2") == [
        ("s2", "delivered", 1, 0, 1, None, None, 0), ("s2", "delivered", 2, 0, 1, None, None, 0),
    ]
    assert bucket_files(s3, healthy) == expected_files(other)
    assert letters == []
    assert_reconciles(results, parked, letters, len(elements) + len(other))
    assert_no_secret_logged(debug_logs)


def test_s3_slow_down_then_success_writes_the_file_once(stream_secrets, moto_server, aws_session, debug_logs):
    s3 = aws_session("s3")
    bucket = new_bucket(s3)
    streams = config(s3_stream("s1", moto_server.url, bucket, prefix="fleet/", batching={"rotation_seconds": 60}))
    elements = [routed("s1", 60, "usage", usage_doc(20 + n, BASE + timedelta(seconds=3 * n), 9_000 + n))
                for n in range(4)]
    factory = FaultyFactory(Fault(RAISE, times=1, code="SlowDown", status=503))

    results, parked, letters = run_sink(s3_sink(factory), elements, streams, stamped=True)

    key = "fleet/cdr_20261101_080500.csv"
    assert [(c["key"], c["fault"]) for c in factory.calls] == [(key, RAISE), (key, None)]
    assert [(*outcome(r), r.status_code) for r in results] == [("s1", "delivered", 4, 0, 2, None, None, 0, 200)]
    assert parked == [] and letters == []
    assert bucket_files(s3, bucket) == expected_files(elements, "fleet/") == {
        key: [expected_row("usage", doc) for _, doc in elements]
    }
    assert_reconciles(results, parked, letters, len(elements))
    assert_no_secret_logged(debug_logs)


def test_s3_access_denied_parks_the_file_as_auth_failed(stream_secrets, moto_server, aws_session, debug_logs):
    s3 = aws_session("s3")
    bucket = new_bucket(s3)
    streams = config(s3_stream("s1", moto_server.url, bucket, batching={"rotation_seconds": 60}))
    elements = s3_elements("s1", 30, [4, 9, 14])  # one events file, one cdr file
    factory = FaultyFactory(Fault(RAISE, code="AccessDenied", status=403))

    results, parked, letters = run_sink(s3_sink(factory), elements, streams, stamped=True)

    # The first file fails for good and deactivates the stream: the second is parked without a request.
    assert len(factory.calls) == 1
    first_key = factory.calls[0]["key"]
    files = {"events_20261101_080500.csv": [30, 32], "cdr_20261101_080500.csv": [31]}
    (second_key,) = set(files) - {first_key}
    assert sorted(((*outcome(r), r.status_code) for r in results), key=lambda o: o[1]) == [
        ("s1", "failed", len(files[first_key]), len(files[first_key]), 1, "auth_failed", "AccessDenied", 0, 403),
        ("s1", "parked", len(files[second_key]), len(files[second_key]), 0, "auth_failed", None, 0, None),
    ]
    assert sorted((parked_summary(b) for b in parked), key=lambda s: s[1]) == [
        ("s1", PERMANENT_FAILURE, "auth_failed", "AccessDenied", 1, files[first_key]),
        ("s1", STREAM_DEACTIVATED, "auth_failed", None, 0, files[second_key]),
    ]
    assert sorted(((kind, doc) for b in parked for kind, doc in b.documents), key=lambda kd: kd[1]["id"]) == \
        [(kind, doc) for (_, kind, _), doc in elements]
    assert bucket_files(s3, bucket) == {}
    assert letters == []
    assert_reconciles(results, parked, letters, len(elements))
    assert_no_secret_logged(debug_logs, sink_sent_requests=False)  # every call was refused
