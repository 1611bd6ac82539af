"""The Pub/Sub emulator tooling, against the real emulator: publishing and pulling
back, replaying raw records with their times moved to the present, the checks
that say what to install, and stopping without leaving a process behind."""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.timestamps import parse_iso, to_epoch_ms
from tools import pubsub_emulator as emulator_module
from tools.pubsub_emulator import (
    STARTUP_TIMEOUT_SECONDS,
    STOPPED_IN_FLIGHT_SECONDS,
    EmulatorStartError,
    EmulatorToolsError,
    PacedPublisher,
    PubSubEmulator,
    check_tools,
    create_topic_and_subscription,
    publish,
    shift_record,
    shift_timestamp,
    subscriber_client,
)


def pull(subscription: str, count: int, timeout: float = 10.0) -> list[Any]:
    """Pull and acknowledge until ``count`` messages have arrived (an empty pull
    on the emulator waits for the whole request timeout, so stop at ``count``)."""
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    with subscriber_client() as subscriber:
        while len(messages) < count and time.monotonic() < deadline:
            response = subscriber.pull(request={"subscription": subscription, "max_messages": 100}, timeout=5)
            if response.received_messages:
                subscriber.acknowledge(
                    request={"subscription": subscription, "ack_ids": [m.ack_id for m in response.received_messages]}
                )
            messages.extend(m.message for m in response.received_messages)
    return messages


def event(event_id: int, timestamp: str, tunnel_created: str | None = None) -> dict[str, Any]:
    pdp = None if tunnel_created is None else {"pdp_context_id": "162094787", "tunnel_created": tunnel_created}
    return {
        "id": event_id, "timestamp": timestamp, "event_type_id": 3 if pdp else 1, "event_source_id": 0,
        "event_severity_id": 0, "organisation_id": 80111, "alert": False, "description": "PDP Context created.",
        "endpoint_id": 8640184, "sim_id": 277059, "imsi": "234150002027018", "user_id": None, "operator_id": 84,
        "volume_rx_bytes": None, "volume_tx_bytes": None, "pdp_context": pdp,
    }


def test_publish_and_pull_back(pubsub_emulator):
    subscription = create_topic_and_subscription(pubsub_emulator.project, "plain-topic", "plain-sub")
    assert subscription == f"projects/{pubsub_emulator.project}/subscriptions/plain-sub"
    payloads = [b'{"id":1}', b'{"id":2}', b"not json \xff"]

    count = publish(pubsub_emulator.project, "plain-topic", payloads, lambda data: {"size": str(len(data))})

    assert count == 3
    received = pull(subscription, 3)
    assert sorted((m.data, dict(m.attributes)) for m in received) == sorted(
        (p, {"size": str(len(p))}) for p in payloads
    )


def test_paced_publisher_moves_record_times_to_now(pubsub_emulator):
    subscription = create_topic_and_subscription(pubsub_emulator.project, "paced-topic", "paced-sub")
    records = [  # 10 s apart, in the three offset notations the raw records use
        event(1, "2026-11-01T00:03:19.295Z"),
        event(2, "2026-11-01T02:03:29.295+02:00", tunnel_created="2026-11-01T00:03:20.000Z"),
        event(3, "2026-11-01T00:03:39.295+0000"),
    ]
    junk = b'{"id":4,"timestamp":"2026-11-01T00:03:49.295Z","event_type'
    first, second, third = (json.dumps(r).encode() for r in records)
    lines = [first + b"\n", second + b"\r\n", junk + b"\n", b"\n", third]  # the last without a newline

    publisher = PacedPublisher(
        pubsub_emulator.project, "paced-topic", lines, "event", rate=50, shift_to_now=True,
        timestamp_attribute="event_time",
    ).start()
    assert publisher.join(timeout=10)

    assert (publisher.published, publisher.skipped) == (4, 1)
    received = pull(subscription, 4)
    assert len(received) == 4
    by_id = {json.loads(m.data)["id"]: m for m in received if m.data != junk}
    shifted = {i: json.loads(m.data) for i, m in by_id.items()}
    times = {i: parse_iso(r["timestamp"]) for i, r in shifted.items()}
    assert abs(times[1] - publisher.started_at) <= timedelta(seconds=1)
    assert (times[2] - times[1], times[3] - times[1]) == (timedelta(seconds=10), timedelta(seconds=20))
    offset = times[1] - parse_iso(records[0]["timestamp"])
    assert offset == publisher.offset and offset % timedelta(seconds=1) == timedelta(0)
    # Same notation, same precision; every time field moved, nothing else changed.
    assert shifted[1]["timestamp"].endswith(".295Z")
    assert shifted[2]["timestamp"].endswith(".295+02:00")
    assert shifted[3]["timestamp"].endswith(".295+0000")
    tunnel = shifted[2]["pdp_context"]["tunnel_created"]
    assert tunnel.endswith(".000Z") and parse_iso(tunnel) == parse_iso("2026-11-01T00:03:20Z") + offset
    for original, moved in zip(records, (shifted[1], shifted[2], shifted[3]), strict=True):
        assert {k: v for k, v in moved.items() if k not in ("timestamp", "pdp_context")} == {
            k: v for k, v in original.items() if k not in ("timestamp", "pdp_context")
        }
    for i, message in by_id.items():
        assert message.attributes["event_time"] == str(to_epoch_ms(times[i]))
    [junk_message] = [m for m in received if m.data == junk]
    # No record time to give it: the attribute is the publish time.
    junk_time = int(junk_message.attributes["event_time"])
    assert abs(junk_time - to_epoch_ms(datetime.now(UTC))) < 60_000


def test_shift_keeps_each_usage_time_format():
    record = {
        "id": 174321498, "start_timestamp": "2026-11-01T02:03:23.143+02:00",
        "end_timestamp": "2026-11-01 00:04:08Z", "volume_rx": 5062,
    }
    assert shift_record(record, "usage", timedelta(days=30, seconds=5))
    assert record == {
        "id": 174321498, "start_timestamp": "2026-12-01T02:03:28.143+02:00",
        "end_timestamp": "2026-12-01 00:04:13Z", "volume_rx": 5062,
    }
    # Invalid times are the sample fleet's deliberate defects: they stay as they are.
    assert shift_timestamp("2026-11-01T00:04:08", timedelta(seconds=5)) is None
    assert shift_timestamp("2026-11-01T23:59:59.5-05:00", timedelta(seconds=1)) == "2026-11-02T00:00:00.5-05:00"
    with pytest.raises(ValueError, match="whole seconds"):
        shift_timestamp("2026-11-01T00:04:08Z", timedelta(milliseconds=1))


def test_check_tools_names_the_cli_when_gcloud_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(EmulatorToolsError) as raised:
        check_tools()

    message = str(raised.value)
    assert "gcloud" in message and "Google Cloud CLI" in message
    assert "apt install google-cloud-cli google-cloud-cli-pubsub-emulator" in message


def test_check_tools_names_java_when_it_is_missing(tmp_path, monkeypatch):
    gcloud = tmp_path / "gcloud"
    gcloud.write_text("#!/bin/sh\nexit 1\n")
    gcloud.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(EmulatorToolsError, match=r"needs Java 8\+.*apt install openjdk-17-jre-headless"):
        check_tools()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_stop_leaves_no_emulator_process(monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    with PubSubEmulator() as emulator:
        assert os.environ["PUBSUB_EMULATOR_HOST"] == emulator.host
        group, port = emulator.pid, emulator.port
        assert group is not None and _port_open(port)
    assert os.environ["PUBSUB_EMULATOR_HOST"] == "127.0.0.1:1"

    assert not _port_open(port)
    emulator.stop()  # again: nothing to do
    # The JVM's exit status may wait a moment for init to collect it; then the group is empty.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"process group {group} still exists after stop()")


def test_start_fails_fast_with_the_log_when_the_port_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        emulator = PubSubEmulator(port=taken.getsockname()[1])
        began = time.monotonic()

        with pytest.raises(EmulatorStartError, match="BindException: Address already in use") as raised:
            emulator.start()

    # Fails as soon as the emulator's JVM says so, not at the start-up timeout.
    assert time.monotonic() - began < STARTUP_TIMEOUT_SECONDS / 2
    assert "end of" in str(raised.value) and "cloud-pubsub-emulator" in str(raised.value)
    assert emulator.pid is None


def test_start_moves_to_another_port_when_its_free_port_was_taken(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setattr(emulator_module, "free_port", lambda: taken.getsockname()[1])
        emulator = PubSubEmulator()
        monkeypatch.undo()

        with emulator:
            assert emulator.port != taken.getsockname()[1] and _port_open(emulator.port)


def test_a_stopped_publisher_does_not_wait_long_for_an_emulator_that_is_gone():
    """Ctrl-C reaches the emulator's process group too: the publishes in flight
    then never get an answer. A stopped publisher waits for them a few seconds
    (STOPPED_IN_FLIGHT_SECONDS), not the minute a live run's end allows (a Ctrl-C
    of make run-local-streaming took 62 s with two publishers, 2026-12-04)."""
    lines = [json.dumps(event(i, "2026-11-01T00:03:19.295Z")).encode() + b"\n" for i in range(1, 100_000)]
    with PubSubEmulator() as emulator:
        create_topic_and_subscription(emulator.project, "gone-topic", "gone-sub", host=emulator.host)
        publisher = PacedPublisher(emulator.project, "gone-topic", lines, "event", rate=200,
                                   host=emulator.host).start()
        deadline = time.monotonic() + 30
        while publisher.published < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert publisher.published >= 20
        emulator.stop()
        time.sleep(1)  # publishing goes on into the void meanwhile: publishes in flight
        began = time.monotonic()
        publisher.stop()  # joins for up to 30 s
        took = time.monotonic() - began
    assert not publisher._thread.is_alive()
    # Seconds, not the minute a live run's end allows (the rest of the bound is a loaded machine's).
    assert took < STOPPED_IN_FLIGHT_SECONDS + 20, took
