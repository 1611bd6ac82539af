"""The failing destinations of ``tools/faults.py`` against a real client (requests):
each fault is what a client meets on the wire (a read timeout, a reset, a protocol
error), the outage switch turns faults on and off between requests, every request
is recorded with its arrival times and the reply chosen, and ``tools/latency.py``
measures delivery latency from those records. Timeouts are short on purpose: these
test the tool, not the job."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import pytest
import requests

from schemas.timestamps import format_event_time, format_usage_time
from tools.faults import (
    FORBIDDEN,
    GARBAGE_RESPONSE,
    HANG,
    RESET,
    RESET_BEFORE_BODY,
    UNAUTHORIZED,
    drip,
    first,
    for_seconds,
    garbled_body,
    matching,
    on_path,
    slow,
    throttled,
    throttled_until,
    truncated_body,
    unavailable,
    wrong_content_length,
)
from tools.latency import documents, latencies, latency_report, timestamp_latencies
from tools.local_destinations import HttpReceiver, Reply, Script

pytestmark = pytest.mark.alone

SHORT = (1.0, 0.3)  # connect, read: a hang shows as a read timeout within 0.3 s


@pytest.fixture(scope="module")
def shared() -> Iterator[HttpReceiver]:
    with HttpReceiver() as server:
        yield server


@pytest.fixture
def receiver(shared: HttpReceiver) -> Iterator[HttpReceiver]:
    """The module's receiver, healthy, with an empty log; hung connections freed after each test."""
    shared.up()
    shared.clear()
    shared.responder = lambda request: Reply(200)
    yield shared
    shared.up()
    shared.release()


def post(receiver: HttpReceiver, path: str = "/s", body: object = None, **kwargs) -> requests.Response:
    payload = json.dumps(body if body is not None else [{"id": 1}]).encode()
    return requests.post(f"{receiver.url}{path}", data=payload, timeout=kwargs.pop("timeout", SHORT), **kwargs)


def statuses(receiver: HttpReceiver, n: int) -> list[int]:
    return [post(receiver).status_code for _ in range(n)]


# --------------------------------------------------------------------------- recording


def test_receiver_records_arrival_times_and_the_reply(receiver):
    wall, mono = time.time(), time.monotonic()
    assert post(receiver, body=[{"id": 7}]).status_code == 200

    [request] = receiver.requests("/s")
    assert wall <= request.received_at <= time.time()
    assert mono <= request.received_monotonic <= time.monotonic()
    assert request.json() == [{"id": 7}]
    assert request.reply == Reply(200)
    assert request.accepted


# --------------------------------------------------------------------------- hang


def test_receiver_hang_reads_the_request_and_times_out_the_client(receiver):
    receiver.down(HANG)
    began = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        post(receiver, body=[{"id": 1}])
    assert time.monotonic() - began < 2.0

    [request] = receiver.requests()
    assert request.json() == [{"id": 1}]  # the body was read before hanging
    assert request.reply == HANG
    assert not request.accepted


def test_receiver_release_closes_hung_connections_without_an_answer(receiver):
    receiver.down(HANG)
    outcome: list[BaseException] = []

    def client() -> None:
        try:
            post(receiver, timeout=(1.0, 10.0))
        except requests.RequestException as err:
            outcome.append(err)

    thread = threading.Thread(target=client)
    thread.start()
    _wait_for(lambda: len(receiver.requests()) == 1)
    receiver.release()
    thread.join(timeout=3.0)

    assert not thread.is_alive()
    assert isinstance(outcome[0], requests.ConnectionError)  # closed, no answer
    with pytest.raises(requests.ReadTimeout):  # a later request hangs again
        post(receiver)


def test_receiver_stop_is_prompt_while_handlers_hang():
    receiver = HttpReceiver().start()
    receiver.down(HANG)
    errors: list[BaseException] = []

    def client() -> None:
        try:
            requests.post(receiver.url, data=b"[]", timeout=(1.0, 10.0))
        except requests.RequestException as err:
            errors.append(err)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    _wait_for(lambda: len(receiver.requests()) == 3)
    began = time.monotonic()
    receiver.stop()
    for thread in threads:
        thread.join(timeout=3.0)

    assert time.monotonic() - began < 1.0
    assert len(errors) == 3 and all(isinstance(e, requests.ConnectionError) for e in errors)


# --------------------------------------------------------------------------- reset


def test_receiver_reset_after_reading_the_request_is_a_connection_reset(receiver):
    receiver.down(RESET)
    with pytest.raises(requests.ConnectionError) as raised:
        post(receiver, body=[{"id": 2}])

    assert "reset" in repr(raised.value).lower()
    [request] = receiver.requests()
    assert request.json() == [{"id": 2}]
    assert not request.accepted


def test_receiver_reset_before_body_cuts_a_client_still_sending(receiver):
    receiver.down(RESET_BEFORE_BODY)
    big = [{"id": i, "pad": "x" * 1000} for i in range(4000)]  # 4 MB: the client is still sending, as a rule
    with pytest.raises(requests.ConnectionError):
        post(receiver, body=big)

    [request] = receiver.requests()
    assert request.body == b""  # reset after the head, the body never read
    assert int(request.header("content-length") or 0) > 4_000_000


def test_receiver_script_can_answer_with_faults_in_turn(receiver):
    receiver.responder = Script({"/s": [RESET, Reply(200)]})
    with pytest.raises(requests.ConnectionError):
        post(receiver)
    assert post(receiver).status_code == 200
    assert [r.accepted for r in receiver.requests()] == [False, True]


# --------------------------------------------------------------------------- statuses for a while


def test_receiver_503_for_the_first_requests_then_healthy(receiver):
    receiver.down(first(2, unavailable(retry_after=3)))
    responses = [post(receiver) for _ in range(3)]

    assert [r.status_code for r in responses] == [503, 503, 200]
    assert [r.headers.get("Retry-After") for r in responses] == ["3", "3", None]
    assert [r.accepted for r in receiver.requests()] == [False, False, True]


def test_receiver_outage_for_seconds_ends(receiver):
    began = time.monotonic()
    receiver.down(for_seconds(1.0, unavailable()))
    assert statuses(receiver, 2) == [503, 503]
    time.sleep(max(0.0, began + 1.05 - time.monotonic()))
    assert statuses(receiver, 2) == [200, 200]


def test_receiver_outage_window_can_start_with_the_first_request(receiver):
    receiver.down(for_seconds(0.3, unavailable(), from_first_request=True))
    time.sleep(0.35)  # no request yet: the window has not started
    assert statuses(receiver, 1) == [503]
    time.sleep(0.35)
    assert statuses(receiver, 1) == [200]


def test_receiver_throttles_with_retry_after_in_seconds_and_as_a_date(receiver):
    receiver.down(throttled(2))
    response = post(receiver)
    assert (response.status_code, response.headers["Retry-After"]) == (429, "2")

    receiver.down(throttled_until(5))
    response = post(receiver)
    until = parsedate_to_datetime(response.headers["Retry-After"])
    assert response.status_code == 429
    assert timedelta(seconds=4) <= until - datetime.now(UTC) <= timedelta(seconds=6)


@pytest.mark.parametrize(("fault", "code"), [(UNAUTHORIZED, 401), (FORBIDDEN, 403)])
def test_receiver_refuses_credentials(receiver, fault, code):
    receiver.down(fault)
    response = post(receiver)
    assert response.status_code == code
    assert ("WWW-Authenticate" in response.headers) == (code == 401)


def test_receiver_down_and_up_switch_between_requests(receiver):
    receiver.responder = Script({"/s": [Reply(201)]})
    assert statuses(receiver, 1) == [201]
    receiver.down(unavailable())
    assert statuses(receiver, 2) == [503, 503]
    receiver.up()
    assert statuses(receiver, 1) == [201]
    assert [r.reply.status for r in receiver.requests() if r.reply] == [201, 503, 503, 201]


def test_receiver_plans_pick_paths_and_requests(receiver):
    receiver.down(on_path("/a", matching(lambda r: r.method == "PUT", FORBIDDEN)))
    assert requests.put(f"{receiver.url}/a", data=b"{}", timeout=SHORT).status_code == 403
    assert requests.post(f"{receiver.url}/a", data=b"{}", timeout=SHORT).status_code == 200
    assert requests.put(f"{receiver.url}/b", data=b"{}", timeout=SHORT).status_code == 200


# --------------------------------------------------------------------------- slow


def test_receiver_slow_answers_after_its_delay(receiver):
    receiver.down(slow(0.4))
    began = time.monotonic()
    assert post(receiver, timeout=(1.0, 2.0)).status_code == 200
    assert time.monotonic() - began >= 0.4
    with pytest.raises(requests.ReadTimeout):
        post(receiver, timeout=(1.0, 0.2))


def test_receiver_drip_takes_its_time_without_tripping_a_read_timeout(receiver):
    body = b'{"errors":[],"padding":"0123456789abcdef"}'  # 42 bytes: 11 pieces of 4, 10 pauses
    receiver.down(drip(Reply(200, body), chunk_bytes=4, interval_seconds=0.05))
    began = time.monotonic()
    response = post(receiver, timeout=(1.0, 0.3))  # each read waits 0.05 s, the whole answer 0.5 s

    assert time.monotonic() - began >= 0.5
    assert response.content == body
    assert receiver.requests()[0].accepted


# --------------------------------------------------------------------------- malformed


def test_receiver_truncated_body_is_an_incomplete_read(receiver):
    receiver.down(truncated_body(Reply(200, b'{"errors":[],"ok":true}')))
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        post(receiver)


def test_receiver_garbled_body_is_a_200_that_does_not_parse(receiver):
    receiver.down(garbled_body())
    response = post(receiver)
    assert response.status_code == 200
    with pytest.raises(requests.JSONDecodeError):
        response.json()


def test_receiver_overlong_content_length_leaves_the_client_short(receiver):
    receiver.down(wrong_content_length(+10, Reply(200, b'{"ok":true}')))
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        post(receiver)


def test_receiver_short_content_length_cuts_the_body_without_an_error(receiver):
    receiver.down(wrong_content_length(-4, Reply(200, b'{"ok":true}')))
    response = post(receiver)
    assert (response.status_code, response.content) == (200, b'{"ok":t')  # taken as complete


def test_receiver_garbage_status_line_is_a_protocol_error(receiver):
    receiver.down(GARBAGE_RESPONSE)
    with pytest.raises(requests.ConnectionError, match="BadStatusLine"):
        post(receiver)


# --------------------------------------------------------------------------- latency


def test_receiver_latencies_count_only_accepted_arrivals(receiver):
    receiver.down(first(1, unavailable()))
    sent = time.monotonic()
    sent_at = {"1": sent, "2": sent, "3": sent, "4": sent}  # 4 is never sent
    assert post(receiver, body=[{"id": 1}, {"id": 2}]).status_code == 503
    time.sleep(0.2)
    assert post(receiver, body=[{"id": 1}, {"id": 2}]).status_code == 200  # the retry
    assert post(receiver, body={"id": 3}).status_code == 200  # rest_api: one object

    measured = latencies(receiver, sent_at, clock="monotonic")
    assert len(measured) == 3
    assert all(0.2 <= value < 2.0 for value in measured[:2])  # from the accepted retry, not the 503
    report = latency_report(receiver, sent_at, clock="monotonic")
    assert (report["delivered"], report["lost"], report["p99"]) == (3, 1, float("inf"))
    assert report["p50"] == sorted(measured)[1]


def test_receiver_latencies_from_document_timestamps(receiver):
    moment = datetime.now(UTC) - timedelta(seconds=2)
    event = {"id": 1, "timestamp": format_event_time(moment)}
    usage = {"id": 2, "start_timestamp": format_usage_time(moment), "end_timestamp": format_usage_time(moment)}
    post(receiver, body=[event, usage])

    measured = timestamp_latencies(receiver)
    assert len(measured) == 2
    assert all(1.9 <= value < 4.0 for value in measured)  # usage times have whole seconds
    assert documents(receiver.requests()[0]) == [event, usage]


def _wait_for(condition, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
