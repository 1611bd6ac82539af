"""Stream status from delivery results: the rule for every kind of failure."""

from __future__ import annotations

import pytest

from schemas.delivery import DeliveryResult
from tests.streams import config, kinesis_stream, rest_stream
from transforms.status import StreamStatus, advance, load_status, merge_status, write_status

STREAMS = config(
    rest_stream("r", "https://hooks.example.com/a"),
    rest_stream("p", "https://hooks.example.com/b", state="paused"),
    kinesis_stream("k", "http://127.0.0.1:1", "st"),
)


def _result(status="delivered", code=202, error=None, token=None, at="2026-11-01T00:00:0", n=0, parked=0, attempts=1):
    return DeliveryResult("r", "rest_api", 10, 100, status, code, error, parked, f"{at}{n}.000+00:00", 5,
                          "https://hooks.example.com/a", attempts, token, 0, parked)


def _fresh() -> StreamStatus:
    return next(s for s in merge_status(STREAMS, {}, {}, 3) if s.stream_id == "r")


@pytest.mark.parametrize(
    ("code", "error", "token"),
    [
        (401, "http_401", "auth_failed"),
        (403, "http_403", "auth_failed"),
        (404, "http_404", "not_found"),
        (301, "http_301", "redirected"),
        (400, "http_400", "payload_rejected"),
        (None, "NoSuchBucket", "not_found"),
        (None, "secret_unavailable", "credentials_unavailable"),
        (None, None, "destination_refused"),
    ],
)
def test_a_permanent_failure_deactivates_at_once(code, error, token):
    status = advance(_fresh(), [_result("failed", code, error, token, parked=10)], deactivate_after=3)
    assert (status.state, status.error, status.consecutive_failures) == ("deactivated", token, 1)
    assert status.last_remote_status == (str(code) if code else error or "failed")


@pytest.mark.parametrize(
    ("code", "error", "token"),
    [(503, "http_503", "remote_error"), (429, "http_429", "throttled"), (None, "ReadTimeout", "unreachable"),
     (None, "ConnectionError", "unreachable"), (None, "ProvisionedThroughputExceededException", "throttled")],
)
def test_transient_failures_deactivate_after_the_threshold(code, error, token):
    failures = [_result("failed", code, error, token, n=i, parked=10) for i in range(2)]
    assert advance(_fresh(), failures, deactivate_after=3).state == "active"
    status = advance(_fresh(), [*failures, _result("failed", code, error, token, n=2, parked=10)], 3)
    assert (status.state, status.error, status.consecutive_failures) == ("deactivated", token, 3)


def test_success_resets_failures_and_records_last_data():
    results = [_result("failed", 503, "http_503", "remote_error", n=0), _result(n=1),
               _result("failed", 503, "http_503", "remote_error", n=2)]
    status = advance(_fresh(), results, deactivate_after=2)
    assert (status.state, status.consecutive_failures) == ("active", 1)
    assert status.last_success_at == "2026-11-01T00:00:01.000+00:00"
    assert status.last_remote_status == "503"


def test_partial_kinesis_delivery_counts_as_a_failed_batch():
    result = _result("partial", None, "ProvisionedThroughputExceededException", "throttled", parked=3)
    status = advance(_fresh(), [result], deactivate_after=1)
    assert (status.state, status.error) == ("deactivated", "throttled")


def test_paused_in_config_wins_and_status_survives_runs(tmp_path):
    first = merge_status(STREAMS, {}, {"r": [_result("failed", 404, "http_404", "not_found")]}, 3)
    by_id = {s.stream_id: s for s in first}
    assert by_id["p"].state == "paused" and by_id["k"].state == "active"
    assert by_id["r"].destination == "POST https://hooks.example.com/a"
    write_status(str(tmp_path), first)
    previous = load_status(str(tmp_path))
    assert (previous["r"].state, previous["r"].error) == ("deactivated", "not_found")
    second = {s.stream_id: s for s in merge_status(STREAMS, previous, {}, 3)}
    assert second["r"].state == "deactivated" and second["r"].last_remote_status == "404"


@pytest.mark.parametrize(("api_type", "code", "error", "shown"), [
    ("aws_kinesis", 400, "ResourceNotFoundException", "ResourceNotFoundException"),
    ("aws_s3", 403, "AccessDenied", "AccessDenied"),
    ("aws_s3", None, "NoSuchBucket", "NoSuchBucket"),
    ("aws_kinesis", 500, "http_500", "500"),
    ("rest_api", 404, "http_404", "404"),
    ("datadog", None, "timeout", "timeout"),
])
def test_the_remote_status_is_awss_error_code_or_the_http_status(api_type, code, error, shown):
    result = DeliveryResult("r", api_type, 1, 10, "failed", code, error, 1, "2026-11-01T00:00:00.000+00:00", 5,
                            "target", 1, "not_found", 0, 1)
    assert result.remote_status == shown
