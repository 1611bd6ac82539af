"""The fault proxy of ``tools/aws_proxy.py`` in front of moto's server, with boto3:
calls pass through to moto unchanged (read back from moto directly), and the
outage modes reach botocore as AWS's own errors or as broken connections."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from tests.documents import kinesis_documents
from tests.streams import REGION
from tools.aws_proxy import (
    KINESIS_EMPTY_OK,
    aws_fault_proxy,
    kinesis_call,
    kinesis_stream,
    kinesis_throttled,
    s3_put,
    s3_slow_down,
)
from tools.faults import GARBAGE_RESPONSE, HANG, RESET, first, matching, status
from tools.latency import documents
from tools.local_destinations import HttpReceiver


@pytest.fixture(scope="module")
def proxy(moto_server) -> Iterator[HttpReceiver]:
    with aws_fault_proxy(moto_server.url) as server:
        yield server


@pytest.fixture
def via_proxy(proxy):
    """boto3 clients through the proxy: one attempt, short timeouts, so each fault
    shows as it is; the proxy healthy and its log empty at the start."""
    proxy.up()
    proxy.clear()

    def client(service: str, read_timeout: float = 5.0):
        config = Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=read_timeout)
        return boto3.client(service, endpoint_url=proxy.url, region_name=REGION, aws_access_key_id="test",
                            aws_secret_access_key="test", config=config)

    yield client
    proxy.up()
    proxy.release()


def new_stream(kinesis) -> str:
    name = f"fault-{uuid.uuid4().hex[:12]}"
    kinesis.create_stream(StreamName=name, ShardCount=1)
    return name


def new_bucket(s3) -> str:
    name = f"fault-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    return name


def put(kinesis, stream: str, *ids: int) -> dict:
    records = [{"Data": json.dumps({"id": i}).encode(), "PartitionKey": "k"} for i in ids]
    return kinesis.put_records(StreamName=stream, Records=records)


def test_receiver_proxy_forwards_kinesis_and_s3_to_moto(proxy, via_proxy, aws_session):
    kinesis, s3 = via_proxy("kinesis"), via_proxy("s3")
    stream, bucket = new_stream(kinesis), new_bucket(s3)
    assert put(kinesis, stream, 1, 2)["FailedRecordCount"] == 0
    s3.put_object(Bucket=bucket, Key="a/b.csv", Body=b"id\r\n1\r\n")

    assert kinesis_documents(aws_session("kinesis"), stream) == [{"id": 1}, {"id": 2}]
    assert aws_session("s3").get_object(Bucket=bucket, Key="a/b.csv")["Body"].read() == b"id\r\n1\r\n"
    assert s3.head_object(Bucket=bucket, Key="a/b.csv")["ContentLength"] == 7  # HEAD keeps the length
    [call] = [r for r in proxy.requests() if kinesis_call("PutRecords")(r)]
    assert (kinesis_stream(call), documents(call), call.accepted) == (stream, [{"id": 1}, {"id": 2}], True)
    assert [r.path for r in proxy.requests() if s3_put(r)] == [f"/{bucket}/a/b.csv"]


def test_receiver_proxy_throttles_kinesis_then_forwards(proxy, via_proxy, aws_session):
    kinesis = via_proxy("kinesis")
    stream = new_stream(kinesis)
    proxy.down(first(1, matching(kinesis_call("PutRecords"), kinesis_throttled())))
    with pytest.raises(ClientError) as raised:
        put(kinesis, stream, 1)
    assert raised.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    put(kinesis, stream, 1)  # the retry reaches moto
    assert kinesis_documents(aws_session("kinesis"), stream) == [{"id": 1}]
    attempts = [r for r in proxy.requests() if kinesis_stream(r) == stream and kinesis_call("PutRecords")(r)]
    assert [r.accepted for r in attempts] == [False, True]


def test_receiver_proxy_kinesis_empty_200_reaches_nothing(proxy, via_proxy, aws_session):
    kinesis = via_proxy("kinesis")
    stream = new_stream(kinesis)
    proxy.down(matching(kinesis_call("PutRecords"), KINESIS_EMPTY_OK))
    answer = put(kinesis, stream, 1)

    assert "FailedRecordCount" not in answer and "Records" not in answer
    assert kinesis_documents(aws_session("kinesis"), stream) == []


def test_receiver_proxy_s3_slow_down(proxy, via_proxy, aws_session):
    s3 = via_proxy("s3")
    bucket = new_bucket(s3)
    proxy.down(matching(s3_put, s3_slow_down()))
    with pytest.raises(ClientError) as raised:
        s3.put_object(Bucket=bucket, Key="x.csv", Body=b"x")

    assert raised.value.response["Error"]["Code"] == "SlowDown"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert "Contents" not in aws_session("s3").list_objects_v2(Bucket=bucket)


def test_receiver_proxy_server_errors_are_client_errors(proxy, via_proxy):
    kinesis = via_proxy("kinesis")
    proxy.down(status(500, b'{"__type":"InternalFailure"}'))
    with pytest.raises(ClientError) as raised:
        kinesis.describe_stream(StreamName="any")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


def test_receiver_proxy_breaks_connections(proxy, via_proxy):
    kinesis = via_proxy("kinesis", read_timeout=0.3)
    proxy.down(HANG)
    with pytest.raises(ReadTimeoutError):
        kinesis.list_streams()
    proxy.down(RESET)
    with pytest.raises(ConnectionClosedError):
        kinesis.list_streams()
    proxy.down(GARBAGE_RESPONSE)
    with pytest.raises(ConnectionClosedError):
        kinesis.list_streams()
    assert len(proxy.requests()) == 3 and not any(r.accepted for r in proxy.requests())
