"""Every exception of a request is classified (``sinks/retry.py``), and values no
header can carry are found when a stream is opened (``sinks/wire.py``)."""

from __future__ import annotations

import http.client

import pytest
import requests
from botocore.exceptions import ParamValidationError
from botocore.parsers import ResponseParserError

from sinks.outbound import DestinationRefusedError
from sinks.retry import Attempt, classify_exception, classify_open_failure, unproven
from sinks.wire import (
    InvalidConfigurationError,
    check_access_key_id,
    check_header_values,
    check_signing_secret,
    header_value_problem,
)


def _unicode_encode_error() -> UnicodeEncodeError:
    try:
        "東京".encode("latin-1")
    except UnicodeEncodeError as err:
        return err
    raise AssertionError("encodable")


@pytest.mark.parametrize(("err", "expected"), [
    # The stream's settings make a request no library will send: permanent.
    (_unicode_encode_error(), (False, "UnicodeEncodeError", "invalid_configuration", False)),
    (requests.exceptions.InvalidHeader("bad"), (False, "InvalidHeader", "invalid_configuration", False)),
    (requests.exceptions.InvalidURL("bad"), (False, "InvalidURL", "invalid_configuration", False)),
    (ParamValidationError(report="bad bucket"), (False, "ParamValidationError", "invalid_configuration", False)),
    (InvalidConfigurationError("header 'X'", "invalid_header_value"),
     (False, "invalid_header_value", "invalid_configuration", False)),
    # An answer that cannot be read: it came, so the request may have been processed.
    (ResponseParserError("bad xml"), (True, "ResponseParserError", "remote_error", True)),
    (requests.exceptions.ContentDecodingError("bad gzip"), (True, "ContentDecodingError", "remote_error", True)),
    (http.client.BadStatusLine("HTTP/1.1 abc"), (True, "BadStatusLine", "remote_error", True)),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), (True, "UnicodeDecodeError", "remote_error", True)),
    # A socket error no library wrapped.
    (ConnectionResetError(104, "reset"), (True, "ConnectionResetError", "unreachable", True)),
    # Whatever else a client library raises (botocore reading a list where it
    # expects an object raises AttributeError): the request's failure, retried.
    (AttributeError("'list' object has no attribute 'get'"), (True, "AttributeError", "remote_error", True)),
    (KeyError("x"), (True, "KeyError", "remote_error", True)),
], ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None)
def test_every_exception_of_a_request_is_classified(err, expected):
    attempt = classify_exception(err)
    assert not attempt.ok
    assert (attempt.retryable, attempt.error, attempt.token, attempt.maybe_received) == expected


def test_a_failure_to_open_a_stream_is_permanent():
    assert classify_open_failure(RuntimeError("no client")) == Attempt(
        False, False, None, "RuntimeError", "invalid_configuration")
    assert classify_open_failure(DestinationRefusedError("x")).token == "destination_refused"
    assert classify_open_failure(InvalidConfigurationError("m", "invalid_access_key_id")).error == \
        "invalid_access_key_id"


def test_an_answer_that_proves_nothing_is_a_retryable_failure():
    assert unproven(200) == Attempt(False, True, 200, "unproven_response", "remote_error", maybe_received=True)


@pytest.mark.parametrize(("value", "problem"), [
    ("Bearer abc", None),
    ("Müller; tab\tok", None),  # Latin-1 and tabs are what http.client sends
    ("Bearer 東京", "has characters outside Latin-1"),
    ("Bearer abc\r\nX-Injected: yes", "has control characters (a line break?)"),
    ("Bearer abc\n", "has control characters (a line break?)"),
    (" Bearer abc", "starts with whitespace"),
])
def test_header_values(value, problem):
    assert header_value_problem(value) == problem


def test_messages_name_the_setting_never_the_value():
    secret = "Bearer 東京-s3cr3t"
    with pytest.raises(InvalidConfigurationError) as caught:
        check_header_values({"Content-Type": "application/json", "Authorization": secret},
                            {"authorization": "rest.auth_secret (environment variable DATASTREAMER_T)"})
    assert str(caught.value) == ("header 'Authorization' cannot be sent: rest.auth_secret (environment variable "
                                 "DATASTREAMER_T) has characters outside Latin-1")
    assert caught.value.error == "invalid_header_value"
    with pytest.raises(InvalidConfigurationError) as caught:
        check_access_key_id("AKIA s3cr3t", "access_key_id (environment variable K)")
    assert "s3cr3t" not in str(caught.value) and caught.value.error == "invalid_access_key_id"
    check_access_key_id("AKIAIOSFODNN7EXAMPLE", "access_key_id")
    with pytest.raises(InvalidConfigurationError) as caught:
        check_signing_secret("whsec_\udcff", "rest.signing_secret")
    assert caught.value.error == "invalid_signing_secret"
    check_signing_secret("whsec_東京", "rest.signing_secret")  # any text keys an HMAC of its UTF-8
