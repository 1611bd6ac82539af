"""A fault-injecting HTTP proxy in front of moto's server, for Kinesis and S3.

moto speaks the AWS wire protocol but never throttles, slows down, hangs or drops
a connection. :func:`aws_fault_proxy` is an
:class:`~tools.local_destinations.HttpReceiver` whose responder forwards every
request to moto and hands back moto's answer, so all of the receiver's fault
machinery applies to AWS too: ``proxy.down(HANG)``, ``proxy.down(first(3,
matching(kinesis_call("PutRecords"), kinesis_throttled())))``, ``proxy.up()``; and
every call is recorded (``X-Amz-Target`` names the Kinesis operation, the path the
S3 bucket and key). Point boto3 (a stream's ``endpoint_url``) at ``proxy.url``.

The AWS error answers below are the wire format botocore parses: Kinesis is a
JSON protocol (HTTP 400 with ``{"__type": code}``), S3 a REST-XML one
(``<Error><Code>``). Standard library only.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from tools.local_destinations import HttpReceiver, RecordedRequest, Reply, Responder

#: Headers that describe one connection, not the message: never forwarded.
#: ``Expect`` is answered by our own server (100-continue) before the body is read;
#: ``Content-Length`` of an answer is set again from the body actually forwarded.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "expect", "proxy-authorization", "proxy-authenticate"}
_KINESIS_JSON = {"Content-Type": "application/x-amz-json-1.1"}


def forward_to(upstream: str, timeout_seconds: float = 30.0) -> Responder:
    """A responder that sends each request on to ``upstream`` (``http://host:port``)
    unchanged (same method, path, headers including ``Host`` and the SigV4
    signature, body) and answers with the upstream's status, headers and body.
    An unreachable upstream is a 502, as from a real proxy."""
    parts = urlsplit(upstream)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    def forward(request: RecordedRequest) -> Reply:
        connection = http.client.HTTPConnection(host, port, timeout=timeout_seconds)
        try:
            connection.putrequest(request.method, request.path, skip_host=True, skip_accept_encoding=True)
            for key, value in request.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    connection.putheader(key, value)
            connection.endheaders(request.body or None)
            response = connection.getresponse()
            body = response.read()
        except OSError as err:
            return Reply(502, f"proxy: upstream {upstream} failed: {err!r}".encode(), {"Content-Type": "text/plain"})
        finally:
            connection.close()
        # A HEAD answer keeps the upstream's Content-Length (the size of what a GET
        # would return); any other is re-measured, as the body was de-chunked.
        dropped = _HOP_BY_HOP | {"server", "date"} | ({"content-length"} if request.method != "HEAD" else set())
        return Reply(response.status, body, {k: v for k, v in response.getheaders() if k.lower() not in dropped})

    return forward


def aws_fault_proxy(upstream: str) -> HttpReceiver:
    """An :class:`HttpReceiver` forwarding to ``upstream`` (moto's ``url``): use it as
    a context manager, point clients at its ``url``, inject with ``down()``."""
    return HttpReceiver(forward_to(upstream))


# --------------------------------------------------------------------------- picking AWS calls


def kinesis_call(operation: str) -> Callable[[RecordedRequest], bool]:
    """A predicate for :func:`tools.faults.matching`: Kinesis calls of ``operation``
    (``PutRecords``, ``PutRecord``, ``DescribeStream``...), named by ``X-Amz-Target``."""
    return lambda request: (request.header("X-Amz-Target") or "").endswith(f".{operation}")


def kinesis_stream(request: RecordedRequest) -> str | None:
    """The stream a Kinesis call names (its JSON body's ``StreamName``), for counting
    attempts per stream; ``None`` when absent or unreadable."""
    try:
        body = json.loads(request.body)
    except ValueError:
        return None
    return body.get("StreamName") if isinstance(body, dict) else None


def s3_put(request: RecordedRequest) -> bool:
    """A predicate: S3 object uploads (``PUT /<bucket>/<key>``), not bucket calls."""
    return request.method == "PUT" and request.path.lstrip("/").count("/") >= 1


# --------------------------------------------------------------------------- AWS error answers


def kinesis_error(code: str, status: int = 400, message: str = "injected") -> Reply:
    """A Kinesis (JSON protocol) error: botocore raises ``ClientError`` with ``code``."""
    return Reply(status, json.dumps({"__type": code, "message": message}).encode(), dict(_KINESIS_JSON))


def kinesis_throttled() -> Reply:
    """What a hot shard answers: 400 ``ProvisionedThroughputExceededException``."""
    return kinesis_error("ProvisionedThroughputExceededException", message="Rate exceeded for shard")


#: A 200 with an empty JSON object: no ``FailedRecordCount``, no ``Records``, and
#: nothing reached moto. A sink must not take this for a delivery.
KINESIS_EMPTY_OK = Reply(200, b"{}", dict(_KINESIS_JSON))


def s3_error(code: str, status: int, message: str = "injected") -> Reply:
    """An S3 (REST-XML) error: botocore raises ``ClientError`` with ``code``."""
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{escape(code)}</Code>'
            f"<Message>{escape(message)}</Message><RequestId>INJECTED</RequestId></Error>")
    return Reply(status, body.encode(), {"Content-Type": "application/xml"})


def s3_slow_down() -> Reply:
    """What S3 answers over its request rate: 503 ``SlowDown``."""
    return s3_error("SlowDown", 503, "Please reduce your request rate.")
