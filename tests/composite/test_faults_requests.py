"""Every exception of a request is its stream's failure, and only a response that
proves delivery counts as delivered.

Against real loopback endpoints (:class:`~tools.local_destinations.HttpReceiver`)
standing in for an S3- or Kinesis-compatible endpoint. Each case asserts the
exact results (status, attempts, error, token, counts), the parked batches and
what the endpoint received: one HTTP request per attempt, no library retrying
behind the policy's back.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from apache_beam.utils.timestamp import Timestamp

from schemas.delivery import DeliveryResult
from sinks.aws import boto3_client
from sinks.kinesis import _KinesisWriteFn
from sinks.parking import ParkedBatch
from sinks.retry import RetryPolicy
from sinks.s3 import _S3WriteFn
from tests.documents import event_doc
from tests.streams import SECRETS, config, kinesis_stream, s3_stream
from tools.local_destinations import HttpReceiver, Reply, always_ok

BASE = dt.datetime(2026, 11, 1, 8, 0, 5, tzinfo=dt.UTC)
#: Two attempts, milliseconds of backoff.
TWICE = RetryPolicy(max_attempts=2, base_delay_seconds=0.01, max_delay_seconds=0.02)


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


@pytest.fixture(autouse=True)
def no_secret_logged(caplog):
    caplog.set_level(logging.DEBUG)
    yield
    for value in SECRETS.values():
        assert value not in caplog.text


def events(first_id: int, count: int) -> list[tuple[str, dict[str, Any]]]:
    return [("event", event_doc("5.1.1", first_id + n, BASE + dt.timedelta(seconds=n), 9_000 + n))
            for n in range(count)]


def ids(items: Any) -> list[int]:
    return sorted(document["id"] for _, document in items)


def split(outputs: list[Any]) -> tuple[list[DeliveryResult], list[ParkedBatch]]:
    results = [o for o in outputs if isinstance(o, DeliveryResult)]
    parked = [o.value for o in outputs if getattr(o, "tag", None) == "parked"]
    assert len(results) + len(parked) == len(outputs)
    return results, parked


def run_kinesis(receiver: HttpReceiver, items: list[tuple[str, dict[str, Any]]],
                policy: RetryPolicy = TWICE) -> tuple[list[DeliveryResult], list[ParkedBatch]]:
    fn = _KinesisWriteFn(boto3_client, policy, allow_insecure=True)
    fn.setup()
    try:
        return split(list(fn.process(("k1", items), config(kinesis_stream("k1", receiver.url, "st")))))
    finally:
        fn.teardown()


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


# =========================================================================== no hidden retries


@pytest.mark.parametrize("api", ["kinesis", "s3"])
def test_one_attempt_is_one_http_request(http_receiver, stream_secrets, api):
    """botocore's own retries are off: three attempts of the policy against an
    endpoint answering 500 are three requests, not six."""
    http_receiver.responder = lambda request: Reply(500, b"", {})
    thrice = RetryPolicy(max_attempts=3, base_delay_seconds=0.01, max_delay_seconds=0.02)
    if api == "kinesis":
        results, parked = run_kinesis(http_receiver, events(1, 2), thrice)
    else:
        results, parked = run_s3(http_receiver, [d for _, d in events(1, 2)], thrice)

    assert len(http_receiver.requests()) == 3
    assert [(r.status, r.attempts, r.status_code, r.error, r.token) for r in results] == [
        ("failed", 3, 500, "500", "remote_error")]
    assert [(b.reason, b.attempts, ids(b.documents)) for b in parked] == [("retries_exhausted", 3, [1, 2])]
