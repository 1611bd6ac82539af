"""Every exception of a request is its stream's failure, and only a response that
proves delivery counts as delivered.

Against real loopback endpoints (:class:`~tools.local_destinations.HttpReceiver`)
standing in for a customer's REST endpoint, DataDog, and an S3- or
Kinesis-compatible endpoint that answers what no AWS service would: a header value
no request can carry (a secret outside Latin-1, one with a line break), a body
botocore cannot parse, a ``200 {}`` to ``PutRecords``, fewer results than records,
results without sequence numbers, an object stored without an ETag. Each case
asserts the exact results (status, attempts, error, token, counts), the parked
batches, what the endpoint received (one HTTP request per attempt: no library
retries behind the policy's back), and that nothing was raised out of the sink.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from schemas.delivery import DeliveryResult
from schemas.streams import build_stream_config, stream_from_dict
from sinks.aws import boto3_client
from sinks.datadog import SERIES_PATH, WriteToDataDog
from sinks.kinesis import _KinesisWriteFn
from sinks.parking import ParkedBatch
from sinks.rest import WriteToRestApi, WriteToRestApiBulk
from sinks.retry import RetryPolicy
from sinks.s3 import _S3WriteFn
from tests.composite.test_faults_datadog import usage
from tests.documents import event_doc
from tests.policies import unhurried
from tests.streams import SECRETS, config, datadog_stream, kinesis_stream, rest_stream, s3_stream
from tools.local_destinations import HttpReceiver, RecordedRequest, Reply, Script, always_ok
from transforms.status import merge_status

BASE = dt.datetime(2026, 11, 1, 8, 0, 5, tzinfo=dt.UTC)
#: Two attempts, milliseconds of backoff.
TWICE = unhurried(2, max_delay_seconds=0.02)
#: Secrets no header can carry; the tests search the logs for them too.
BAD_SECRETS = {
    "DATASTREAMER_TEST_TOKEN_UNICODE": "Bearer tökén-東京-5f1e9c",
    "DATASTREAMER_TEST_TOKEN_NEWLINE": "Bearer a1b2c3\r\nX-Injected: yes",
    "DATASTREAMER_TEST_DD_KEY_UNICODE": "ключ0123456789abcdef0123456789ab",
}
COLLECTED: dict[str, dict[str, list[Any]]] = {}


@pytest.fixture(scope="module")
def shared_receiver() -> Iterator[HttpReceiver]:
    """One server for the module: stopping one takes half a second (its poll)."""
    with HttpReceiver() as server:
        yield server


@pytest.fixture
def http_receiver(shared_receiver: HttpReceiver) -> HttpReceiver:
    """The shared server with an empty request log, answering 202 until a test says otherwise."""
    shared_receiver.clear()
    shared_receiver.responder = always_ok
    return shared_receiver


@pytest.fixture
def bad_secrets(monkeypatch, stream_secrets) -> dict[str, str]:
    for name, value in BAD_SECRETS.items():
        monkeypatch.setenv(name, value)
    return BAD_SECRETS


@pytest.fixture(autouse=True)
def no_secret_logged(caplog):
    caplog.set_level(logging.DEBUG)
    yield
    for value in [*SECRETS.values(), *BAD_SECRETS.values()]:
        assert value not in caplog.text


def events(first_id: int, count: int) -> list[tuple[str, dict[str, Any]]]:
    return [("event", event_doc("5.1.1", first_id + n, BASE + dt.timedelta(seconds=n), 9_000 + n))
            for n in range(count)]


def ids(items: Any) -> list[int]:
    return sorted(document["id"] for _, document in items)


def outcome(result: DeliveryResult) -> tuple[Any, ...]:
    return (result.stream_id, result.status, result.documents, result.attempts, result.error, result.token,
            result.parked_documents, result.redelivered_documents)


def parked_summary(batch: ParkedBatch) -> tuple[Any, ...]:
    return batch.stream_id, batch.reason, batch.token, batch.error, batch.attempts, ids(batch.documents)


def _collect(value: Any, token: str, name: str) -> None:
    COLLECTED[token][name].append(value)


def split(outputs: list[Any]) -> tuple[list[DeliveryResult], list[ParkedBatch]]:
    results = [o for o in outputs if isinstance(o, DeliveryResult)]
    parked = [o.value for o in outputs if getattr(o, "tag", None) == "parked"]
    assert len(results) + len(parked) == len(outputs)
    return results, parked


# =========================================================================== values no request can carry


def test_streams_whose_secrets_no_header_can_carry_are_parked_and_the_others_get_everything(
        http_receiver, bad_secrets, caplog):
    """One pipeline, REST, REST bulk and DataDog: a stream whose auth secret is
    outside Latin-1, one whose secret holds a line break (a header injection), one
    whose configured header is outside Latin-1 (refused at load, so put in behind
    the loader's back here), a DataDog stream whose API key is outside Latin-1.
    Each is parked whole, without a request, as ``invalid_configuration``; the
    healthy streams beside them get every document."""
    url = http_receiver.url
    unicode_secret = rest_stream("bad-secret", f"{url}/bad-secret", bulk=True)
    unicode_secret["rest"]["auth_secret"] = {"env": "DATASTREAMER_TEST_TOKEN_UNICODE"}
    newline_secret = rest_stream("bad-newline", f"{url}/bad-newline")
    newline_secret["rest"]["auth_secret"] = {"env": "DATASTREAMER_TEST_TOKEN_NEWLINE"}
    dd_bad = datadog_stream("dd-bad", url, batching={"metrics_interval_seconds": 60})
    dd_bad["datadog"]["api_key"] = {"env": "DATASTREAMER_TEST_DD_KEY_UNICODE"}
    streams = [stream_from_dict(s) for s in (
        unicode_secret, newline_secret, rest_stream("bad-header", f"{url}/bad-header"), dd_bad,
        rest_stream("ok-bulk", f"{url}/ok-bulk", bulk=True), rest_stream("ok-one", f"{url}/ok-one"),
        datadog_stream("dd-ok", f"{url}/dd-ok", batching={"metrics_interval_seconds": 60}))]
    streams[2] = dataclasses.replace(streams[2], destination=dataclasses.replace(
        streams[2].destination, headers={"X-Customer": "東京"}))
    routed = {"bad-secret": events(100, 3), "ok-bulk": events(200, 3), "bad-newline": events(300, 2),
              "bad-header": events(400, 2), "ok-one": events(500, 2)}
    at = int(BASE.timestamp())
    usage_docs = {"dd-bad": [usage(600, 8_390_000, 1_000, 2_000, 0.5), usage(601, 8_390_001, 10, 20, 0.1)],
                  "dd-ok": [usage(700, 8_390_000, 1_000, 2_000, 0.5)]}
    token = uuid.uuid4().hex
    COLLECTED[token] = {"results": [], "parked": []}
    fast = unhurried(2, max_delay_seconds=0.02)

    with TestPipeline() as p:
        side = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([build_stream_config(streams)]))
        rest = (p | "Rest" >> beam.Create([(sid, item) for sid, items in routed.items() for item in items])
                | "StampRest" >> beam.Map(lambda e: TimestampedValue(e, at)))
        bulk = (rest | "BulkOnly" >> beam.Filter(lambda e: e[0] in ("bad-secret", "ok-bulk"))
                | "Bulk" >> WriteToRestApiBulk(side, policy=fast, allow_insecure=True, max_buffering_seconds=1))
        one = (rest | "OneOnly" >> beam.Filter(lambda e: e[0] not in ("bad-secret", "ok-bulk"))
               | "One" >> WriteToRestApi(side, policy=fast, allow_insecure=True, max_buffering_seconds=1))
        datadog = (p | "Usage" >> beam.Create([((sid, 60), d) for sid, docs in usage_docs.items() for d in docs])
                   | "StampUsage" >> beam.Map(lambda e: TimestampedValue(e, at))
                   | "DataDog" >> WriteToDataDog(side, policy=fast, allow_insecure=True))
        for label, outputs in (("bulk", bulk), ("one", one), ("dd", datadog)):
            _ = outputs.results | f"Results[{label}]" >> beam.Map(_collect, token, "results")
            _ = outputs.parked | f"Parked[{label}]" >> beam.Map(_collect, token, "parked")
    collected = COLLECTED.pop(token)
    results, parked = collected["results"], collected["parked"]

    header = ("failed", 0, "invalid_header_value", "invalid_configuration")
    assert sorted(outcome(r) for r in results) == sorted([
        ("bad-header", header[0], 2, *header[1:], 2, 0),
        ("bad-newline", header[0], 2, *header[1:], 2, 0),
        ("bad-secret", header[0], 3, *header[1:], 3, 0),
        ("dd-bad", header[0], 2, *header[1:], 2, 0),
        ("dd-ok", "delivered", 1, 1, None, None, 0, 0),
        ("ok-bulk", "delivered", 3, 1, None, None, 0, 0),
        ("ok-one", "delivered", 1, 1, None, None, 0, 0),
        ("ok-one", "delivered", 1, 1, None, None, 0, 0),
    ])
    reason = ("permanent_failure", "invalid_configuration", "invalid_header_value", 0)
    assert sorted(parked_summary(b) for b in parked) == [
        ("bad-header", *reason, [400, 401]), ("bad-newline", *reason, [300, 301]),
        ("bad-secret", *reason, [100, 101, 102]), ("dd-bad", *reason, [600, 601]),
    ]
    def documents(request: RecordedRequest) -> list[int]:
        if request.path.endswith(SERIES_PATH):
            return []
        body = request.json()
        return sorted(d["id"] for d in (body if isinstance(body, list) else [body]))

    received = sorted((r.path, documents(r)) for r in http_receiver.requests())
    assert received == [("/dd-ok" + SERIES_PATH, []), ("/ok-bulk", [200, 201, 202]), ("/ok-one", [500]),
                        ("/ok-one", [501])]
    assert ("stream bad-secret: its destination cannot be opened (header 'Authorization' cannot be sent: "
            "rest.auth_secret (environment variable DATASTREAMER_TEST_TOKEN_UNICODE) has characters outside "
            "Latin-1); nothing sent") in caplog.text
    assert ("header 'Authorization' cannot be sent: rest.auth_secret (environment variable "
            "DATASTREAMER_TEST_TOKEN_NEWLINE) has control characters (a line break?)") in caplog.text

    # The status shows why: each failing stream is deactivated with the token.
    by_stream: dict[str, list[DeliveryResult]] = {}
    for result in results:
        by_stream.setdefault(result.stream_id, []).append(result)
    status = {s.stream_id: (s.state, s.error) for s in merge_status(build_stream_config(streams), {}, by_stream, 3)}
    assert status == {
        "bad-header": ("deactivated", "invalid_configuration"), "bad-newline": ("deactivated", "invalid_configuration"),
        "bad-secret": ("deactivated", "invalid_configuration"), "dd-bad": ("deactivated", "invalid_configuration"),
        "dd-ok": ("active", None), "ok-bulk": ("active", None), "ok-one": ("active", None),
    }


def test_whatever_opening_an_aws_stream_raises_parks_it_and_deactivates_it(stream_secrets, monkeypatch):
    """An access key id with a line break is refused before a client is made; a
    client factory that raises anything at all is the stream's failure too. The
    stream's next batch is parked without trying again."""
    monkeypatch.setenv("DATASTREAMER_TEST_KEY_NEWLINE", "AKIAEXAMPLE\nX-Injected: yes")
    bad_key = kinesis_stream("k-key", "http://127.0.0.1:9", "st")
    bad_key["kinesis"]["access_key_id"] = {"env": "DATASTREAMER_TEST_KEY_NEWLINE"}
    streams = config(bad_key, kinesis_stream("k-factory", "http://127.0.0.1:9", "st"))
    made: list[str] = []

    def factory(service: str, *args: Any) -> Any:
        made.append(service)
        raise RuntimeError("no client today")

    fn = _KinesisWriteFn(factory, TWICE, allow_insecure=True)
    fn.setup()
    try:
        outputs = [o for stream_id, first in (("k-key", 1), ("k-factory", 11), ("k-factory", 21))
                   for o in fn.process((stream_id, events(first, 2)), streams)]
    finally:
        fn.teardown()
    results, parked = split(outputs)
    assert made == ["kinesis"]  # the bad key id never reached the factory; the second batch did not retry it
    assert [outcome(r) for r in results] == [
        ("k-key", "failed", 2, 0, "invalid_access_key_id", "invalid_configuration", 2, 0),
        ("k-factory", "failed", 2, 0, "RuntimeError", "invalid_configuration", 2, 0),
        ("k-factory", "parked", 2, 0, None, "invalid_configuration", 2, 0),
    ]
    assert [parked_summary(b) for b in parked] == [
        ("k-key", "permanent_failure", "invalid_configuration", "invalid_access_key_id", 0, [1, 2]),
        ("k-factory", "permanent_failure", "invalid_configuration", "RuntimeError", 0, [11, 12]),
        ("k-factory", "stream_deactivated", "invalid_configuration", None, 0, [21, 22]),
    ]


# =========================================================================== Kinesis: proof of delivery


def kinesis_ids(request: RecordedRequest) -> list[int]:
    return [orjson.loads(base64.b64decode(r["Data"]))["id"] for r in request.json()["Records"]]


def kinesis_answer(entries: Callable[[list[int], int], Any]) -> Callable[[RecordedRequest], Reply]:
    """A PutRecords answer from ``entries(ids sent, call number)``: the Records
    list (or a whole body when it returns a dict)."""
    calls: list[int] = []

    def respond(request: RecordedRequest) -> Reply:
        calls.append(1)
        made = entries(kinesis_ids(request), len(calls))
        body = made if isinstance(made, dict) else {"FailedRecordCount": 0, "Records": made}
        return Reply(200, orjson.dumps(body), {"Content-Type": "application/x-amz-json-1.1"})

    return respond


def stored(position: int) -> dict[str, str]:
    return {"SequenceNumber": f"4959{position:05d}", "ShardId": "shardId-000000000000"}


def run_kinesis(receiver: HttpReceiver, items: list[tuple[str, dict[str, Any]]],
                policy: RetryPolicy = TWICE) -> tuple[list[DeliveryResult], list[ParkedBatch]]:
    fn = _KinesisWriteFn(boto3_client, policy, allow_insecure=True)
    fn.setup()
    try:
        return split(list(fn.process(("k1", items), config(kinesis_stream("k1", receiver.url, "st")))))
    finally:
        fn.teardown()


@pytest.mark.parametrize("entries", [
    lambda sent, call: {},  # 200 {}
    lambda sent, call: {"FailedRecordCount": 0},  # no Records at all
    lambda sent, call: [stored(n) for n in range(len(sent) - 1)],  # one result short
    lambda sent, call: [stored(n) for n in range(len(sent) + 1)],  # one result too many
    lambda sent, call: [{"ShardId": "shardId-000000000000"} for _ in sent],  # no sequence numbers
    lambda sent, call: [{} for _ in sent],  # entries with neither a sequence number nor an error
], ids=["empty-object", "no-records", "fewer", "more", "no-sequence-numbers", "empty-entries"])
def test_kinesis_answers_that_do_not_prove_delivery_are_failed_attempts(http_receiver, stream_secrets, entries):
    http_receiver.responder = kinesis_answer(entries)
    items = events(1, 3)

    results, parked = run_kinesis(http_receiver, items)

    assert [kinesis_ids(r) for r in http_receiver.requests()] == [[1, 2, 3], [1, 2, 3]]
    assert [(*outcome(r), r.status_code) for r in results] == [
        ("k1", "failed", 3, 2, "unproven_response", "remote_error", 3, 0, 200)]
    assert [parked_summary(b) for b in parked] == [
        ("k1", "retries_exhausted", "remote_error", "unproven_response", 2, [1, 2, 3])]


def test_kinesis_delivers_what_each_entry_proves_and_retries_the_rest(http_receiver, stream_secrets):
    """First answer: stored, throttled, an entry that proves nothing. Only the
    last two are sent again; the one the first answer did not prove may be in the
    stream twice now, and is counted so."""
    def entries(sent: list[int], call: int) -> Any:
        if call == 1:
            return [stored(0), {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow"}, {}]
        return [stored(n + 1) for n in range(len(sent))]

    http_receiver.responder = kinesis_answer(entries)

    results, parked = run_kinesis(http_receiver, events(1, 3))

    assert [kinesis_ids(r) for r in http_receiver.requests()] == [[1, 2, 3], [2, 3]]
    assert [outcome(r) for r in results] == [("k1", "delivered", 3, 2, None, None, 0, 1)]
    assert parked == []


# =========================================================================== S3: parser errors and proof


class _Pane:
    index = 0


class _Window:
    start = Timestamp(dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC).timestamp())
    end = start + 300


def run_s3(receiver: HttpReceiver, documents: list[dict[str, Any]],
           policy: RetryPolicy = TWICE) -> tuple[list[DeliveryResult], list[ParkedBatch]]:
    streams = config(s3_stream("s1", receiver.url, "bucket", batching={"rotation_seconds": 300}))
    fn = _S3WriteFn(boto3_client, policy, allow_insecure=True)
    fn.setup()
    try:
        return split(list(fn.process((("s1", "event", 300), documents), streams, _Window(), _Pane())))
    finally:
        fn.teardown()


GARBAGE = Reply(201, b"<not xml", {"Content-Type": "application/xml"})
NO_ETAG = Reply(200, b"", {})
STORED = Reply(200, b"", {"ETag": '"9b2cf535f27731c974343645a3985328"'})


@pytest.mark.parametrize(("replies", "expected", "parked_as"), [
    ([GARBAGE], ("failed", 2, 2, "ResponseParserError", "remote_error", 2, 0), "retries_exhausted"),
    ([NO_ETAG], ("failed", 2, 2, "unproven_response", "remote_error", 2, 0), "retries_exhausted"),
    ([GARBAGE, STORED], ("delivered", 2, 2, None, None, 0, 2), None),
    ([NO_ETAG, STORED], ("delivered", 2, 2, None, None, 0, 2), None),
], ids=["garbage-xml", "no-etag", "garbage-then-stored", "no-etag-then-stored"])
def test_s3_answers_that_cannot_be_read_or_prove_nothing_are_failed_attempts(http_receiver, stream_secrets,
                                                                             replies, expected, parked_as):
    """A body botocore cannot parse (its ResponseParserError is not a
    BotoCoreError) and a 2xx without the object's ETag: failed attempts, retried;
    a file a retry then stores may have been stored by the first attempt too."""
    key = "/bucket/events_20261101_080000.csv"
    http_receiver.responder = Script({key: replies})
    documents = [d for _, d in events(1, 2)]

    results, parked = run_s3(http_receiver, documents)

    assert [(r.method, r.path) for r in http_receiver.requests()] == [("PUT", key)] * 2
    assert [outcome(r)[1:] for r in results] == [expected]
    assert [parked_summary(b) for b in parked] == ([] if parked_as is None else [
        ("s1", parked_as, expected[4], expected[3], 2, [1, 2])])


# =========================================================================== no hidden retries


@pytest.mark.parametrize("api", ["kinesis", "s3"])
def test_one_attempt_is_one_http_request(http_receiver, stream_secrets, api):
    """botocore's own retries are off: three attempts of the policy against an
    endpoint answering 500 are three requests, not six."""
    http_receiver.responder = lambda request: Reply(500, b"", {})
    thrice = unhurried(3, max_delay_seconds=0.02)
    if api == "kinesis":
        results, parked = run_kinesis(http_receiver, events(1, 2), thrice)
    else:
        results, parked = run_s3(http_receiver, [d for _, d in events(1, 2)], thrice)

    assert len(http_receiver.requests()) == 3
    assert [(r.status, r.attempts, r.status_code, r.error, r.token) for r in results] == [
        ("failed", 3, 500, "500", "remote_error")]
    assert [(b.reason, b.attempts, ids(b.documents)) for b in parked] == [("retries_exhausted", 3, [1, 2])]
