"""The Kinesis sink: the DoFn with injected clients, the composite under
TestPipeline, and end to end on moto's Kinesis (records read back from every shard
and compared exactly to the documents sent). Fault injection against moto is in
tests/composite/test_faults_aws.py."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import apache_beam as beam
import orjson
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.delivery import PERMANENT_FAILURE, RETRIES_EXHAUSTED, DeliveryResult
from sinks.aws import boto3_client
from sinks.kinesis import (
    MAX_RECORD_BYTES,
    MAX_RECORDS_PER_REQUEST,
    MAX_REQUEST_BYTES,
    WriteToKinesis,
    _KinesisWriteFn,
    partition_key,
)
from sinks.parking import PARKED, ParkedBatch
from sinks.results import DEAD_LETTERS
from tests.documents import event_doc, usage_doc
from tests.guide_samples import EXPECTED_EVENTS, EXPECTED_USAGE
from tests.policies import unhurried
from tests.streams import SECRETS, config, kinesis_stream

BASE = datetime(2026, 11, 1, 8, 0, 0, tzinfo=UTC)
#: Three attempts with millisecond backoff, so retries do not slow the tests.
FAST = unhurried(3)


# --------------------------------------------------------------------------- documents


def padded(doc: dict[str, Any], size: int) -> dict[str, Any]:
    """``doc`` with its description grown so its JSON is about ``size`` bytes."""
    doc["description"] = ""
    doc["description"] = "x" * max(0, size - len(orjson.dumps(doc)))
    return doc


def doc_time(kind: str, doc: dict[str, Any]) -> datetime:
    if kind == "event":
        return datetime.strptime(doc["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z")
    return datetime.strptime(doc["end_timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def fleet_documents() -> list[tuple[str, dict[str, Any]]]:
    """Events and usage of 5 endpoints interleaved in time (some at the same second,
    told apart by id), plus organisation-level events without an endpoint."""
    items: list[tuple[str, dict[str, Any]]] = []
    doc_id = 1000
    for step in range(12):
        for endpoint in range(5):
            doc_id += 1
            moment = BASE + timedelta(seconds=7 * step + (endpoint % 2))
            if (step + endpoint) % 3 == 0:
                items.append(("usage", usage_doc(doc_id, moment, 9_000 + endpoint)))
            else:
                sample = "5.1.1" if step % 2 else "5.1.2"
                items.append(("event", event_doc(sample, doc_id, moment, 9_000 + endpoint)))
    for step in range(4):
        doc_id += 1
        items.append(("event", event_doc("5.1.3", doc_id, BASE + timedelta(seconds=11 * step))))
    random.Random(5).shuffle(items)  # arrival order is not time order
    return items


# --------------------------------------------------------------------------- moto helpers


def new_stream(kinesis, shards: int = 4) -> str:
    name = f"ds-{uuid.uuid4().hex[:12]}"
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    return name


def read_stream(kinesis, name: str) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Every record of every shard from TRIM_HORIZON, in shard order: shard id ->
    [(partition key, decoded document)]."""
    shards: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for shard in kinesis.list_shards(StreamName=name)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        records: list[dict[str, Any]] = []
        while iterator:
            response = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            records.extend(response["Records"])
            if not response["Records"]:
                break
            iterator = response.get("NextShardIterator")
        sequence = [int(r["SequenceNumber"]) for r in records]
        assert sequence == sorted(sequence)
        shards[shard["ShardId"]] = [(r["PartitionKey"], json.loads(r["Data"])) for r in records]
    return shards


#: Calls recorded by the wrapping client factory, per test token. Module level:
#: the DoFn (and its factory) are pickled, but the DirectRunner runs in process.
CALLS: dict[str, list[dict[str, Any]]] = {}


class RecordingFactory:
    """boto3's real client on moto, wrapped to record each put_records call."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        CALLS[self.token] = []

    @property
    def calls(self) -> list[dict[str, Any]]:
        return CALLS[self.token]

    def __call__(self, *args: Any) -> Any:
        return RecordingClient(boto3_client(*args), self.token)


class RecordingClient:
    def __init__(self, client: Any, token: str) -> None:
        self._client, self._token = client, token

    def put_records(self, **kwargs: Any) -> Any:
        records = kwargs["Records"]
        CALLS[self._token].append({
            "stream": kwargs["StreamName"],
            "count": len(records),
            "bytes": sum(len(r["Data"]) + len(r["PartitionKey"].encode()) for r in records),
            "ids": [json.loads(r["Data"])["id"] for r in records],
        })
        return self._client.put_records(**kwargs)

    def close(self) -> None:
        self._client.close()


class FailingClient:
    """Answers put_records like Kinesis under throttling: the records of the given
    document ids (None: every record) fail on every call, the others succeed. The
    ids of each call are recorded, per stream name."""

    def __init__(self, failing_ids: frozenset[int] | None, token: str) -> None:
        self._failing, self._token = failing_ids, token

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        ids = [json.loads(r["Data"])["id"] for r in Records]
        CALLS[self._token].append({"stream": StreamName, "ids": ids})
        out = []
        for position, doc_id in enumerate(ids):
            if self._failing is None or doc_id in self._failing:
                out.append({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded"})
            else:
                out.append({"SequenceNumber": str(position), "ShardId": "shardId-000000000000"})
        failed = sum(1 for r in out if "ErrorCode" in r)
        return {"FailedRecordCount": failed, "Records": out, "ResponseMetadata": {"HTTPStatusCode": 200}}

    def close(self) -> None:
        pass


class FailingFactory:
    def __init__(self, failing_ids: frozenset[int] | None) -> None:
        self._failing = failing_ids
        self.token = uuid.uuid4().hex
        CALLS[self.token] = []

    @property
    def calls(self) -> list[dict[str, Any]]:
        return CALLS[self.token]

    def __call__(self, *args: Any) -> FailingClient:
        return FailingClient(self._failing, self.token)


def pipeline() -> TestPipeline:
    """A TestPipeline on the FnApiRunner. The DirectRunner would pick its
    bundle-based runner for GroupIntoBatches (a processing-time timer) and that
    runner loses a batch flushed at the end of the input when a GroupByKey follows,
    as assert_that's does (apache/beam#28716, open)."""
    return TestPipeline(runner=FnApiRunner())


def summary(result: DeliveryResult) -> tuple[Any, ...]:
    return (result.stream_id, result.status, result.documents, result.failed_documents, result.error)


def parked_summary(batch: ParkedBatch) -> tuple[Any, ...]:
    return (batch.stream_id, batch.reason, batch.token, batch.attempts, sorted(d["id"] for _, d in batch.documents))


def run_fn(
    fn: _KinesisWriteFn, element: Any, streams: Any
) -> tuple[list[DeliveryResult], list[dict[str, Any]], list[ParkedBatch]]:
    fn.setup()
    try:
        outputs = list(fn.process(element, streams))
    finally:
        fn.teardown()
    results = [o for o in outputs if isinstance(o, DeliveryResult)]
    letters = [o.value for o in outputs if getattr(o, "tag", None) == DEAD_LETTERS]
    parked = [o.value for o in outputs if getattr(o, "tag", None) == PARKED]
    assert len(results) + len(letters) + len(parked) == len(outputs)
    return results, letters, parked


# --------------------------------------------------------------------------- unit and DoFn


def test_partition_key_is_the_endpoint_or_the_organisation():
    assert partition_key(EXPECTED_EVENTS["5.1.1"]) == "8638726"
    assert partition_key(EXPECTED_USAGE["5.2"]) == "8392037"
    assert partition_key(EXPECTED_EVENTS["5.1.3"]) == "org-839921"


@pytest.mark.parametrize(
    ("failing", "status", "failed_documents", "calls"),
    [
        (frozenset({1, 3}), "partial", 2, [[0, 1, 2, 3, 4], [1, 3], [1, 3]]),
        (None, "failed", 5, [[0, 1, 2, 3, 4]] * 3),
        (frozenset(), "delivered", 0, [[0, 1, 2, 3, 4]]),
    ],
)
def test_fn_retries_only_the_failed_records_and_parks_what_still_fails(stream_secrets, failing, status,
                                                                        failed_documents, calls):
    streams = config(kinesis_stream("k1", "http://127.0.0.1:9", "s"))
    items = [("event", event_doc("5.1.1", i, BASE + timedelta(seconds=i))) for i in range(5)]
    factory = FailingFactory(failing)
    results, letters, parked = run_fn(_KinesisWriteFn(factory, FAST, allow_insecure=True), ("k1", items), streams)
    error = None if status == "delivered" else "ProvisionedThroughputExceededException"
    assert [summary(r) for r in results] == [("k1", status, 5, failed_documents, error)]
    assert [(r.attempts, r.parked_documents, r.token) for r in results] == [
        (len(calls), failed_documents, None if status == "delivered" else "throttled")
    ]
    assert results[0].target == "kinesis://eu-central-1/s"
    assert [c["ids"] for c in factory.calls] == calls
    assert letters == []
    if status == "delivered":
        assert parked == []
    else:
        parked_ids = [1, 3] if failing else [0, 1, 2, 3, 4]
        assert [parked_summary(b) for b in parked] == [("k1", RETRIES_EXHAUSTED, "throttled", 3, parked_ids)]
        assert list(parked[0].documents) == [item for item in items if item[1]["id"] in parked_ids]
        assert (parked[0].api_type, parked[0].error) == ("aws_kinesis", "ProvisionedThroughputExceededException")


def test_fn_unreadable_secret_is_a_failed_result_without_the_secret(monkeypatch):
    monkeypatch.delenv("DATASTREAMER_TEST_AWS_KEY_ID", raising=False)
    monkeypatch.setenv("DATASTREAMER_TEST_AWS_SECRET", SECRETS["DATASTREAMER_TEST_AWS_SECRET"])
    streams = config(kinesis_stream("k1", "http://127.0.0.1:9", "s"))
    items = [("usage", usage_doc(1, BASE, 7))]
    factory = FailingFactory(frozenset())
    results, _, parked = run_fn(_KinesisWriteFn(factory, FAST, allow_insecure=True), ("k1", items), streams)
    assert [summary(r) for r in results] == [("k1", "failed", 1, 1, "secret_unavailable")]
    assert [(r.token, r.attempts, r.parked_documents) for r in results] == [("credentials_unavailable", 0, 1)]
    assert [parked_summary(b) for b in parked] == [("k1", PERMANENT_FAILURE, "credentials_unavailable", 0, [1])]
    assert factory.calls == []
    assert SECRETS["DATASTREAMER_TEST_AWS_SECRET"] not in repr(results) + repr(parked)


# --------------------------------------------------------------------------- end to end on moto


def test_delivers_every_document_in_endpoint_order_on_moto(stream_secrets, moto_server, aws_session):
    kinesis = aws_session("kinesis")
    name = new_stream(kinesis, shards=4)
    streams = config(kinesis_stream("k1", moto_server.url, name))
    items = fleet_documents()
    with pipeline() as p:
        side = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([streams]))
        out = p | beam.Create([("k1", item) for item in items]) | WriteToKinesis(side, max_buffering_seconds=1,
                                                                                 policy=FAST, allow_insecure=True)
        assert_that(out.results | beam.Map(summary), equal_to([("k1", "delivered", len(items), 0, None)]),
                    label="CheckResults")
        assert_that(out.results | beam.Map(lambda r: any(v in repr(r) for v in SECRETS.values())),
                    equal_to([False]), label="CheckNoSecrets")
        assert_that(out.dead_letters, equal_to([]), label="CheckNoDeadLetters")
        assert_that(out.parked, equal_to([]), label="CheckNothingParked")

    shards = read_stream(kinesis, name)
    received = [doc for records in shards.values() for _, doc in records]
    assert sorted(received, key=lambda d: d["id"]) == sorted((doc for _, doc in items), key=lambda d: d["id"])
    kinds = {doc["id"]: kind for kind, doc in items}
    used_shards = set()
    for shard_id, records in shards.items():
        by_key: dict[str, list[dict[str, Any]]] = {}
        for key, doc in records:
            assert key == partition_key(doc)
            by_key.setdefault(key, []).append(doc)
        for docs in by_key.values():
            order = [(doc_time(kinds[d["id"]], d), d["id"]) for d in docs]
            assert order == sorted(order), f"records of one endpoint out of time order in {shard_id}"
        if records:
            used_shards.add(shard_id)
    keys_per_shard = [{key for key, _ in records} for records in shards.values()]
    assert sum(len(keys) for keys in keys_per_shard) == len(set().union(*keys_per_shard)) == 6  # one shard a key
    assert len(used_shards) >= 2  # the test would not show anything about shards otherwise


def test_requests_stay_within_the_count_and_byte_limits_on_moto(stream_secrets, moto_server, aws_session):
    """Stream k1 gets 1,800 documents of ~4 KB (its requests are cut by count),
    stream k2 520 of ~12 KB (a batch of 500 is 6 MB: cut by bytes)."""
    kinesis = aws_session("kinesis")
    small_name, large_name = new_stream(kinesis, shards=2), new_stream(kinesis, shards=2)
    streams = config(kinesis_stream("k1", moto_server.url, small_name),
                     kinesis_stream("k2", moto_server.url, large_name))
    small = [("k1", ("event", padded(event_doc("5.1.2", i, BASE + timedelta(milliseconds=i), 9_000 + i % 40), 4_000)))
             for i in range(1, 1_801)]
    large = [("k2", ("usage", padded(usage_doc(10_000 + i, BASE + timedelta(seconds=i), 9_000 + i % 40), 12_000)))
             for i in range(520)]
    factory = RecordingFactory()
    with pipeline() as p:
        side = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([streams]))
        out = p | beam.Create(small + large) | WriteToKinesis(side, client_factory=factory, max_buffering_seconds=1,
                                                                policy=FAST, allow_insecure=True)
        assert_that(out.results | beam.Map(lambda r: (r.stream_id, r.status, r.failed_documents)) | beam.Distinct(),
                    equal_to([("k1", "delivered", 0), ("k2", "delivered", 0)]), label="CheckDelivered")
        assert_that(out.results | beam.Map(lambda r: (r.stream_id, r.documents)) | beam.CombinePerKey(sum),
                    equal_to([("k1", len(small)), ("k2", len(large))]), label="CheckCounts")
        assert_that(out.parked, equal_to([]), label="CheckNothingParked")

    calls = factory.calls
    assert all(c["count"] <= MAX_RECORDS_PER_REQUEST and c["bytes"] <= MAX_REQUEST_BYTES for c in calls)
    # k1: only the count limit binds, so its requests are the batches of 500.
    assert sorted(c["count"] for c in calls if c["stream"] == small_name) == [300, 500, 500, 500]
    # k2: a batch of 500 needs two requests, the first filled to within one record of 5 MiB.
    assert any(c["count"] < MAX_RECORDS_PER_REQUEST and c["bytes"] > MAX_REQUEST_BYTES - 12_500
               for c in calls if c["stream"] == large_name)
    for name, items in ((small_name, small), (large_name, large)):
        expected = sorted((doc for _, (_, doc) in items), key=lambda d: d["id"])
        assert sorted(i for c in calls if c["stream"] == name for i in c["ids"]) == [d["id"] for d in expected]
        received = [doc for records in read_stream(kinesis, name).values() for _, doc in records]
        assert sorted(received, key=lambda d: d["id"]) == expected


def test_a_record_over_one_mib_is_dead_lettered_and_not_sent(stream_secrets, moto_server, aws_session):
    kinesis = aws_session("kinesis")
    name = new_stream(kinesis, shards=2)
    streams = config(kinesis_stream("k1", moto_server.url, name))
    ok = [("event", event_doc("5.1.1", i, BASE + timedelta(seconds=i))) for i in range(3)]
    too_large = ("event", padded(event_doc("5.1.1", 99, BASE), MAX_RECORD_BYTES + 10))
    factory = RecordingFactory()
    with pipeline() as p:
        side = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([streams]))
        out = (p | beam.Create([("k1", item) for item in [*ok, too_large]])
               | WriteToKinesis(side, client_factory=factory, max_buffering_seconds=1, policy=FAST,
                                allow_insecure=True))
        assert_that(out.results | beam.Map(summary), equal_to([("k1", "delivered", 3, 0, None)]),
                    label="CheckResults")
        assert_that(out.dead_letters | beam.Map(lambda d: (d["kind"], d["stage"], d["reason"], d["record_id"],
                                                            json.loads(d["payload"]) == too_large[1])),
                    equal_to([("event", "deliver", "record_too_large", 99, True)]), label="CheckDeadLetter")
        assert_that(out.parked, equal_to([]), label="CheckNothingParked")

    assert [i for c in factory.calls for i in c["ids"]] == [0, 1, 2]
    received = [doc for records in read_stream(kinesis, name).values() for _, doc in records]
    assert sorted(received, key=lambda d: d["id"]) == [doc for _, doc in ok]


def test_a_missing_stream_gives_a_failed_result_with_the_aws_error(stream_secrets, moto_server):
    streams = config(kinesis_stream("k1", moto_server.url, f"missing-{uuid.uuid4().hex[:8]}"))
    items = [("usage", usage_doc(i, BASE + timedelta(seconds=i), 7)) for i in range(4)]
    with pipeline() as p:
        side = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([streams]))
        out = p | beam.Create([("k1", item) for item in items]) | WriteToKinesis(
            side, max_buffering_seconds=1, policy=FAST, allow_insecure=True)
        assert_that(out.results | beam.Map(lambda r: (*summary(r), r.status_code, r.token, r.attempts)),
                    equal_to([("k1", "failed", 4, 4, "ResourceNotFoundException", 400, "not_found", 1)]),
                    label="CheckResults")
        assert_that(out.parked | beam.Map(parked_summary),
                    equal_to([("k1", PERMANENT_FAILURE, "not_found", 1, [0, 1, 2, 3])]), label="CheckParked")


def test_a_partial_failure_in_the_pipeline_counts_and_parks_the_failed_records(stream_secrets):
    streams = config(kinesis_stream("k1", "http://127.0.0.1:9", "s"), kinesis_stream("k2", "http://127.0.0.1:9", "t"))
    items = [(sid, ("event", event_doc("5.1.1", i, BASE + timedelta(seconds=i)))) for sid in ("k1", "k2")
             for i in range(6)]
    factory = FailingFactory(frozenset({0, 4, 5}))
    with pipeline() as p:
        side = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([streams]))
        out = p | beam.Create(items) | WriteToKinesis(side, client_factory=factory, max_buffering_seconds=1,
                                                      policy=FAST, allow_insecure=True)
        assert_that(out.results | beam.Map(lambda r: (*summary(r), r.attempts, r.parked_documents)), equal_to([
            ("k1", "partial", 6, 3, "ProvisionedThroughputExceededException", 3, 3),
            ("k2", "partial", 6, 3, "ProvisionedThroughputExceededException", 3, 3),
        ]), label="CheckResults")
        assert_that(out.parked | beam.Map(parked_summary), equal_to([
            ("k1", RETRIES_EXHAUSTED, "throttled", 3, [0, 4, 5]),
            ("k2", RETRIES_EXHAUSTED, "throttled", 3, [0, 4, 5]),
        ]), label="CheckParked")
    for name in ("s", "t"):
        assert [c["ids"] for c in factory.calls if c["stream"] == name] == [[0, 1, 2, 3, 4, 5], [0, 4, 5], [0, 4, 5]]
