"""The DirectRunner's prefetching Pub/Sub reads (``tools/direct_runner/direct_pubsub.py``,
fixes 9 and 10), against the real emulator: every message handed out once, reads
that do not wait while the job is busy, messages never read handed back at the
end, a failing subscription failing the read, reads that stop for a drain, and a
cancel that ends a wait for the job."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions

from tools.direct_runner import direct_pubsub
from tools.direct_runner.direct_pubsub import (
    IDLE_AFTER_SECONDS,
    PULL_MAX_MESSAGES,
    QUEUE_MAX_MESSAGES,
    Prefetcher,
    _Activity,
)
from tools.pubsub_emulator import publish, publisher_client, subscriber_client


def _subscription(emulator: Any, name: str, ack_deadline_seconds: int = 60) -> str:
    publisher = publisher_client()
    topic = publisher.topic_path(emulator.project, name)
    publisher.create_topic(name=topic)
    with subscriber_client() as subscriber:
        path = subscriber.subscription_path(emulator.project, name)
        subscriber.create_subscription(name=path, topic=topic, ack_deadline_seconds=ack_deadline_seconds)
    return path


def _read_until(prefetcher: Prefetcher, subscription: str, count: int, timeout: float = 20.0) -> list[list[Any]]:
    """Reads (as the runner's reader does, acknowledging each) until ``count``
    messages came; returns each read's messages."""
    reads: list[list[Any]] = []
    deadline = time.monotonic() + timeout
    while sum(map(len, reads)) < count and time.monotonic() < deadline:
        received = list(prefetcher.pull(subscription, 10, 30).received_messages)
        if received:
            prefetcher.acknowledge(subscription, [m.ack_id for m in received])
            reads.append(received)
    return reads


class _CountingActivity(_Activity):
    """The activity record on a clock that moves only when told, counting the
    reads that waited."""

    def __init__(self) -> None:
        self.now = 1_000.0
        super().__init__(clock=lambda: self.now)
        self.waits = 0
        original = self.arrived.wait

        def wait(timeout: float | None = None) -> bool:
            self.waits += 1
            return original(timeout)

        self.arrived.wait = wait  # type: ignore[method-assign]


@contextlib.contextmanager
def _two_readers(emulator: Any, first: str, second: str) -> Iterator[tuple[_CountingActivity, Prefetcher, Prefetcher]]:
    """Prefetchers of two fresh subscriptions sharing one counting activity."""
    activity = _CountingActivity()
    paths = _subscription(emulator, first), _subscription(emulator, second)
    with subscriber_client() as client:
        readers = [Prefetcher(client, path, activity) for path in paths]
        try:
            yield activity, readers[0], readers[1]
        finally:
            for reader in readers:
                reader.close()


def test_every_message_is_handed_out_once_and_acknowledged(pubsub_emulator):
    subscription = _subscription(pubsub_emulator, "prefetch-all")
    payloads = [f"m{i}".encode() for i in range(1_234)]
    assert publish(pubsub_emulator.project, "prefetch-all", payloads) == len(payloads)
    with subscriber_client() as client:
        prefetcher = Prefetcher(client, subscription)
        try:
            deadline = time.monotonic() + 20
            while prefetcher.queued() < QUEUE_MAX_MESSAGES and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.5)  # time for more pulls, were the queue not bounded
            assert prefetcher.queued() == QUEUE_MAX_MESSAGES, "the rest stays in Pub/Sub until there is room"
            reads = _read_until(prefetcher, subscription, len(payloads))
            assert sorted(m.message.data for read in reads for m in read) == sorted(payloads)
            assert max(map(len, reads)) <= PULL_MAX_MESSAGES
        finally:
            prefetcher.close()  # sends the acknowledgements still owed
        # An acknowledged message stays acknowledged; any other would come again at once.
        client.modify_ack_deadline(subscription=subscription, ack_ids=[m.ack_id for read in reads for m in read],
                                   ack_deadline_seconds=0)
        again = Prefetcher(client, subscription)
        try:
            time.sleep(2)
            assert again.queued() == 0
        finally:
            again.close()


def test_a_message_reads_as_the_clients_own_wrapper_reads(pubsub_emulator):
    """The reader builds Beam's message from ours exactly as from the client's
    proto-plus ``ReceivedMessage``: data, attributes, id, publish time (to the
    microsecond, Beam's precision) and ordering key."""
    from apache_beam.io.gcp.pubsub import PubsubMessage

    subscription = _subscription(pubsub_emulator, "prefetch-fields")
    publish(pubsub_emulator.project, "prefetch-fields", [b"\x00payload\xff"], lambda data: {"ts": "1793520000123"})
    with subscriber_client() as client:
        prefetcher = Prefetcher(client, subscription)
        try:
            (received,) = _read_until(prefetcher, subscription, 1)[0]
        finally:
            prefetcher.close()
    ours = PubsubMessage._from_message(received.message)
    theirs = PubsubMessage._from_message(_wrapped(received).message)
    fields = ("data", "attributes", "message_id", "publish_time", "ordering_key")
    assert [getattr(ours, f) for f in fields] == [getattr(theirs, f) for f in fields]
    assert ours.attributes == {"ts": "1793520000123"} and ours.data == b"\x00payload\xff"
    assert ours.message_id and ours.publish_time.tzinfo is not None
    assert received.ack_id


def _wrapped(received: Any) -> Any:
    """The client's own proto-plus ``ReceivedMessage`` of the same protobuf."""
    from google.cloud.pubsub_v1.types import PubsubMessage, ReceivedMessage

    return ReceivedMessage(ack_id=received.ack_id, message=PubsubMessage.wrap(received.message._pb))


def test_an_empty_read_waits_only_while_the_job_is_idle(pubsub_emulator):
    with _two_readers(pubsub_emulator, "prefetch-busy", "prefetch-quiet") as (activity, busy, quiet):
        assert _empty_read(quiet)
        assert activity.waits == 1, "nothing handed out yet: the job is idle and the read waits"

        publish(pubsub_emulator.project, "prefetch-busy", [b"x"])
        assert len(_read_until(busy, busy.subscription, 1)) == 1  # (its empty reads before may wait)
        waits = activity.waits
        activity.now += IDLE_AFTER_SECONDS / 2
        assert _empty_read(quiet)
        assert activity.waits == waits, "a message was just handed out: the empty read returns at once"

        activity.now += IDLE_AFTER_SECONDS
        assert _empty_read(quiet)
        assert activity.waits == waits + 1


def test_an_empty_read_does_not_wait_while_another_subscription_has_messages(pubsub_emulator):
    with _two_readers(pubsub_emulator, "prefetch-waiting", "prefetch-empty") as (activity, waiting, empty):
        publish(pubsub_emulator.project, "prefetch-waiting", [b"y"])
        deadline = time.monotonic() + 20
        while not waiting.queued() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert activity.idle() is False
        assert _empty_read(empty)
        assert activity.waits == 0, "a message is queued for another read: this one returns at once"


def _empty_read(reader: Prefetcher) -> bool:
    return list(reader.pull(reader.subscription, 10, 30).received_messages) == []


def test_messages_never_read_are_handed_back_for_redelivery_now(pubsub_emulator):
    subscription = _subscription(pubsub_emulator, "prefetch-close", ack_deadline_seconds=600)
    payloads = [f"c{i}".encode() for i in range(7)]
    publish(pubsub_emulator.project, "prefetch-close", payloads)
    with subscriber_client() as client:
        prefetcher = Prefetcher(client, subscription)
        deadline = time.monotonic() + 20
        while prefetcher.queued() < len(payloads) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert prefetcher.queued() == len(payloads)
        prefetcher.close()
        prefetcher._thread.join(5)
        assert not prefetcher._thread.is_alive()
        # With a ten-minute ack deadline, only the hand-back makes them come again now.
        again = Prefetcher(client, subscription)
        try:
            reads = _read_until(again, subscription, len(payloads), timeout=15)
            assert sorted(m.message.data for read in reads for m in read) == sorted(payloads)
        finally:
            again.close()


def test_a_failing_subscription_fails_the_read(pubsub_emulator):
    missing = f"projects/{pubsub_emulator.project}/subscriptions/prefetch-missing"
    with subscriber_client() as client:
        prefetcher = Prefetcher(client, missing)
        try:
            prefetcher._thread.join(10)
            with pytest.raises(exceptions.NotFound):
                prefetcher.pull(missing, 10, 30)
        finally:
            prefetcher.close()


def test_prefetchers_stop_with_the_transforms_they_read_for(pubsub_emulator):
    subscription = _subscription(pubsub_emulator, "prefetch-stop")

    class Transform:  # stands for an applied read transform (weakly referenced)
        pass

    with subscriber_client() as client:
        transform = Transform()
        prefetcher = direct_pubsub.prefetcher_for(transform, client, subscription)
        assert direct_pubsub.prefetcher_for(transform, client, subscription) is prefetcher
        direct_pubsub.close_prefetchers([transform])
        prefetcher._thread.join(5)
        assert not prefetcher._thread.is_alive()
        assert not [t for t in threading.enumerate() if t.name == f"pubsub-prefetch:{subscription}"]


def test_a_stopped_read_hands_out_nothing_more_and_hands_back_what_it_held(pubsub_emulator):
    """Fix 10: a stopped run's reads stop (``direct_pubsub.stop_reading``); what
    was queued comes again at once (the ack deadline is ten minutes), and what is
    published afterwards is left in Pub/Sub, for the next run."""
    subscription = _subscription(pubsub_emulator, "prefetch-drain", ack_deadline_seconds=600)

    class Transform:  # stands for an applied read transform (weakly referenced)
        pass

    transform = Transform()
    with subscriber_client() as client:
        prefetcher = direct_pubsub.prefetcher_for(transform, client, subscription)
        try:
            publish(pubsub_emulator.project, "prefetch-drain", [b"read-1", b"read-2"])
            assert sorted(m.message.data for read in _read_until(prefetcher, subscription, 2) for m in read) == [
                b"read-1", b"read-2"]
            held = [f"held-{i}".encode() for i in range(5)]
            publish(pubsub_emulator.project, "prefetch-drain", held)
            deadline = time.monotonic() + 20
            while prefetcher.queued() < len(held) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert prefetcher.queued() == len(held)
            direct_pubsub.stop_reading(frozenset({subscription}))
            publish(pubsub_emulator.project, "prefetch-drain", [b"later"])
            time.sleep(1.5)  # a pull would have taken it by now
            assert prefetcher.queued() == 0
            assert list(prefetcher.pull(subscription, 10, 30).received_messages) == []
            # A prefetcher started for the subscription during the same run starts stopped.
            assert direct_pubsub.prefetcher_for(Transform(), client, subscription).queued() == 0
        finally:
            direct_pubsub.close_prefetchers([transform])
        again = Prefetcher(client, subscription)
        try:
            reads = _read_until(again, subscription, len(held) + 1, timeout=15)
            assert sorted(m.message.data for read in reads for m in read) == sorted([*held, b"later"])
        finally:
            again.close()


def test_a_cancel_ends_a_wait_for_the_job(pubsub_emulator):
    """Fix 10: the job waits in ``wait_until_finish`` (on a thread) to learn of a
    failure; a cancel ends that wait instead of leaving the thread blocked."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from tools.direct_runner import apply_direct_runner_fixes

    apply_direct_runner_fixes()
    subscription = _subscription(pubsub_emulator, "prefetch-wait")
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    pipeline = beam.Pipeline(runner="BundleBasedDirectRunner", options=options)
    _ = pipeline | beam.io.ReadFromPubSub(subscription=subscription) | beam.Map(len)
    result = pipeline.run()
    waiter = threading.Thread(target=result.wait_until_finish, daemon=True)
    waiter.start()
    time.sleep(1)
    assert waiter.is_alive()  # a streaming job runs on
    result.cancel()
    waiter.join(10)
    assert not waiter.is_alive()
