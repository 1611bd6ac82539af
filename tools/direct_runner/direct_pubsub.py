"""Pub/Sub reads for the DirectRunner that never stall its one worker thread
(``direct_runner`` fixes 3 and 9).

The DirectRunner's Pub/Sub reader pulls synchronously from its single worker
thread: every read of every subscription waits for the emulator's answer while no
other step runs. An idle subscription (the refresh ticks, one every interval)
answers only when its deadline passes, so each round of reads stalled the job
for that deadline (30 s as shipped, fix 3 cut it to 1 s), and even a busy
subscription costs a network round trip per read. In the streaming bench at 673
records/s the three reads held the worker for 18 of 45 seconds.

Here each subscription is pulled by a background thread into a bounded queue
(:class:`Prefetcher`); the reader's ``pull`` hands out what is queued without
waiting, and its ``acknowledge`` is sent by that thread too. A read waits only
when nothing is queued for any subscription and nothing was handed out just
before (so the steps after the reads have finished their work): then it waits,
briefly, until a message arrives on any subscription, so an idle job does not
spin.

Acknowledgement is Beam's reader's: a message is acknowledged when the reader
takes it into a bundle, before any step after the read has seen it; the
acknowledgement now leaves a moment later from the background thread (before
its next pull, which waits at most ``PULL_DEADLINE_SECONDS``). From then on the
record lives only in this process's memory (the DirectRunner keeps bundles,
state and timers nowhere else), so a process killed with SIGKILL loses every
record it read and had not delivered: at-most-once for those, not at-least-once
(docs/crash-safety.md measures it). A message whose acknowledgement had not
left yet comes again to the next process, which does not know its id (the
de-duplication state died with the killed process): if the killed process had
delivered it already (the acknowledgement waits for the thread's current pull,
so on a loaded machine a delivery can come first), it is delivered twice. Messages
pulled but never read are not acknowledged: still queued when the pipeline ends
they are handed back (ack deadline 0) for immediate redelivery; held by a killed
process they come again once their ack deadline has passed. The queue is
bounded, so a message waits in it far less than the ack deadline. A pull that
fails for a reason other than its deadline stops the thread and is raised by
the next read, so the job fails as it did.

A run that is stopped (SIGTERM, ``--run_seconds``: ``pipelines/drain.py``) asks
the reads of its data subscriptions to stop (:func:`stop_reading`): their
prefetchers hand out nothing more, pull nothing more, and hand back what they had
queued, so the job drains what it read while the unread messages wait in Pub/Sub
for the next run. Acknowledgements still owed for messages already read are sent.
Other subscriptions (the refresh ticks) keep being read: records wait for them.

Hand-written because the client library's streaming pull delivers one callback
per message on its own thread pool, which costs more per message than the
batch pull it replaces here, and the runner's reader expects a ``PullResponse``.
"""

from __future__ import annotations

import collections
import datetime
import logging
import threading
import time
import weakref
from typing import Any

_LOGGER = logging.getLogger(__name__)

#: Most messages one background pull asks for, and one read hands out.
PULL_MAX_MESSAGES = 500
#: Deadline of one background pull; a missed deadline means "no messages yet".
PULL_DEADLINE_SECONDS = 1.0
#: Most messages queued for one subscription; its thread pulls only for the room
#: left (backpressure: the rest wait in Pub/Sub, not in memory).
QUEUE_MAX_MESSAGES = 2 * PULL_MAX_MESSAGES
#: An empty read returns at once while any read handed out messages within this
#: many seconds (an earlier read of the same round, whose messages the steps after
#: the reads have still to process; a read's hand-out counts until the reader
#: acknowledges, right after it parsed them) ...
IDLE_AFTER_SECONDS = 0.005
#: ... and otherwise, with nothing queued anywhere, waits at most this long for
#: a message on any subscription.
IDLE_WAIT_SECONDS = 0.1
#: Pause before a background pull is retried after an error it survives.
_RETRY_PAUSE_SECONDS = 0.5
#: Longest a closing prefetcher waits for the acknowledgement or pull its thread
#: has under way (a pull waits at most PULL_DEADLINE_SECONDS; the rest is a loaded
#: machine's slack).
CLOSE_WAIT_SECONDS = 10.0


class _Activity:
    """The prefetchers of this process, when one last handed out messages, and a
    condition notified whenever one receives some."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.arrived = threading.Condition()
        self.last_handout = float("-inf")
        self.prefetchers: weakref.WeakSet[Prefetcher] = weakref.WeakSet()

    def idle(self) -> bool:
        """Nothing handed out lately and nothing queued for any subscription."""
        return (self.clock() - self.last_handout > IDLE_AFTER_SECONDS
                and not any(prefetcher.queued() for prefetcher in list(self.prefetchers)))


_ACTIVITY = _Activity()


class Prefetcher:
    """One subscription pulled by a background thread into a bounded queue."""

    def __init__(self, client: Any, subscription: str, activity: _Activity = _ACTIVITY) -> None:
        self._client = client
        self._subscription = subscription
        self._activity = activity
        self._queue: collections.deque[Any] = collections.deque()
        self._acks: list[str] = []
        self._lock = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        self._stopped = False
        activity.prefetchers.add(self)
        self._thread = threading.Thread(target=self._run, name=f"pubsub-prefetch:{subscription}", daemon=True)
        self._thread.start()

    @property
    def subscription(self) -> str:
        return self._subscription

    def queued(self) -> int:
        return len(self._queue)

    # --- the background thread -------------------------------------------------

    def _run(self) -> None:
        from google.api_core import exceptions

        while True:
            with self._lock:
                while ((self._stopped or len(self._queue) >= QUEUE_MAX_MESSAGES)
                       and not self._acks and not self._closed):
                    self._lock.wait()
                if self._closed:
                    return
            self._send_acks()
            if self._closed:
                return
            if self._stopped:
                continue
            room = min(PULL_MAX_MESSAGES, QUEUE_MAX_MESSAGES - len(self._queue))
            if room <= 0:
                continue
            try:
                response = self._client.pull(subscription=self._subscription, max_messages=room,
                                             timeout=PULL_DEADLINE_SECONDS)
            except exceptions.DeadlineExceeded:
                continue
            except (exceptions.ServiceUnavailable, exceptions.InternalServerError) as error:
                # Transient on the real service; the next pull retries.
                if self._closed:
                    return
                _LOGGER.warning("Pulling %s failed, retrying: %s", self._subscription, error)
                time.sleep(_RETRY_PAUSE_SECONDS)
                continue
            except BaseException as error:  # noqa: BLE001 - raised by the next read
                if not self._closed:
                    self._error = error
                with self._activity.arrived:
                    self._activity.arrived.notify_all()
                return
            # The raw protobuf, read field by field in _Message (see there).
            received = [_Received(pb) for pb in type(response).pb(response).received_messages]
            if not received:
                continue
            with self._lock:
                closed, stopped = self._closed, self._stopped
                if not (closed or stopped):
                    self._queue.extend(received)
            if closed or stopped:  # a pull that was under way when the reading stopped
                self._hand_back(received)
                if closed:
                    return
                continue
            with self._activity.arrived:
                self._activity.arrived.notify_all()

    def _send_acks(self) -> None:
        with self._lock:
            acks, self._acks = self._acks, []
        if acks:
            try:
                self._client.acknowledge(subscription=self._subscription, ack_ids=acks)
            except Exception as error:  # noqa: BLE001 - redelivered, then dropped as repeated ids
                _LOGGER.warning("Acknowledging %d messages of %s failed; they will come again: %s",
                                len(acks), self._subscription, error)

    # --- the reader's side -----------------------------------------------------

    def pull(self, subscription: str, max_messages: int, timeout: float) -> Any:
        """Queued messages of this subscription (at most ``PULL_MAX_MESSAGES``,
        each with what the reader reads of a ``ReceivedMessage``),
        waiting up to ``IDLE_WAIT_SECONDS`` for one only while the job is idle.
        The runner's ``max_messages`` (10) and ``timeout`` (30 s) are ignored."""
        self._check(subscription)
        if not self._queue and self._error is None and self._activity.idle():
            with self._activity.arrived:
                # Checked again under the lock the thread notifies under: no lost wake-up.
                if self._error is None and self._activity.idle():
                    self._activity.arrived.wait(IDLE_WAIT_SECONDS)
        if self._error is not None:
            raise self._error
        taken = []
        with self._lock:
            while self._queue and len(taken) < PULL_MAX_MESSAGES:
                taken.append(self._queue.popleft())
            self._lock.notify()
        if taken:
            self._activity.last_handout = self._activity.clock()
        return _Pulled(taken)

    def acknowledge(self, subscription: str, ack_ids: list[str]) -> None:
        """Queue the acknowledgement for the background thread to send."""
        self._check(subscription)
        self._activity.last_handout = self._activity.clock()
        with self._lock:
            self._acks.extend(ack_ids)
            self._lock.notify()

    def _check(self, subscription: str) -> None:
        if subscription != self._subscription:
            raise ValueError(f"this reader reads {self._subscription}, not {subscription}")

    # --- shutting down ---------------------------------------------------------

    def _hand_back(self, received: list[Any]) -> None:
        """Return messages pulled but never read to Pub/Sub for redelivery now."""
        if not received:
            return
        try:
            self._client.modify_ack_deadline(subscription=self._subscription,
                                             ack_ids=[message.ack_id for message in received],
                                             ack_deadline_seconds=0)
        except Exception as error:  # noqa: BLE001 - they are redelivered after the ack deadline anyway
            _LOGGER.warning("Could not hand back %d messages of %s: %s", len(received), self._subscription, error)

    def stop_reading(self) -> None:
        """Hand out and pull nothing more, and hand back what is queued; the
        acknowledgements of what was read are still sent (idempotent)."""
        with self._lock:
            if self._stopped or self._closed:
                return
            self._stopped = True
            left = list(self._queue)
            self._queue.clear()
            self._lock.notify_all()
        self._hand_back(left)

    def close(self, wait: bool = True) -> None:
        """Stop pulling, send the acknowledgements still owed and hand back what
        was never read (idempotent); with ``wait``, return once the thread has
        ended too (:meth:`join`)."""
        with self._lock:
            already = self._closed
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._lock.notify_all()
        if not already:
            self._send_acks()
            self._hand_back(left)
        if wait:
            self.join()

    def join(self, timeout: float = CLOSE_WAIT_SECONDS) -> None:
        """Wait for a closed prefetcher's thread to end. Why: the thread may have
        taken acknowledgements owed and be sending them, or be pulling (what it
        gets it hands back); returning before it ends would let the caller close
        the client under that call, and the acknowledged messages would come again."""
        if self._thread is threading.current_thread():
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            _LOGGER.warning("The Pub/Sub prefetcher of %s did not end within %.0f s of closing",
                            self._subscription, timeout)


class _Message:
    """A pulled message as the runner's reader reads it (``data``, ``attributes``,
    ``message_id``, ``ordering_key`` and ``publish_time``), straight from the
    protobuf: the client's proto-plus wrapper converted each field on access,
    33 µs a message against 2 here. Only the publish time needs converting (to
    the ``datetime`` the wrapper gives)."""

    __slots__ = ("_pb",)

    def __init__(self, pb: Any) -> None:
        self._pb = pb

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pb, name)

    @property
    def publish_time(self) -> datetime.datetime | None:
        if not self._pb.HasField("publish_time"):
            return None
        return self._pb.publish_time.ToDatetime(tzinfo=datetime.UTC)


class _Received:
    """A pulled message and its ack id (``ReceivedMessage``, unwrapped)."""

    __slots__ = ("ack_id", "message")

    def __init__(self, pb: Any) -> None:
        self.ack_id = pb.ack_id
        self.message = _Message(pb.message)


class _Pulled:
    """A pull's answer as the runner's reader reads it (``received_messages``),
    without copying each message into a new ``PullResponse``."""

    __slots__ = ("received_messages",)

    def __init__(self, received_messages: list[Any]) -> None:
        self.received_messages = received_messages


#: The prefetcher of each applied read transform (weakly keyed, as the runner's
#: own client cache, so a finished pipeline is not kept alive).
_PREFETCHERS: weakref.WeakKeyDictionary[Any, Prefetcher] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


#: Subscriptions whose reads were stopped, until the executor of a run ends
#: (a prefetcher started after the stop starts stopped).
_STOPPED: set[str] = set()


def prefetcher_for(transform: Any, client: Any, subscription: str) -> Prefetcher:
    """The prefetcher of ``transform``'s subscription, started on first use."""
    with _LOCK:
        prefetcher = _PREFETCHERS.get(transform)
        if prefetcher is None:
            prefetcher = Prefetcher(client, subscription)
            _PREFETCHERS[transform] = prefetcher
            weakref.finalize(transform, prefetcher.close)
            if subscription in _STOPPED:
                prefetcher.stop_reading()
        return prefetcher


def stop_reading(subscriptions: frozenset[str]) -> None:
    """Stop this process's reads of ``subscriptions`` (the drain of a stopped
    run, ``pipelines/drain.py``); other subscriptions are still read."""
    with _LOCK:
        _STOPPED.update(subscriptions)
        prefetchers = [p for p in _PREFETCHERS.values() if p.subscription in subscriptions]
    for prefetcher in prefetchers:
        prefetcher.stop_reading()


class PrefetchingClient:
    """What the DirectRunner's reader of ``transform`` gets as its subscriber
    client: ``pull`` and ``acknowledge`` through the transform's prefetcher,
    anything else from the runner's own client."""

    def __init__(self, transform: Any, client: Any) -> None:
        self._transform = transform
        self._client = client

    def pull(self, subscription: str, max_messages: int, timeout: float) -> Any:
        return prefetcher_for(self._transform, self._client, subscription).pull(subscription, max_messages, timeout)

    def acknowledge(self, subscription: str, ack_ids: list[str]) -> None:
        prefetcher_for(self._transform, self._client, subscription).acknowledge(subscription, ack_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def close_prefetchers(transforms: Any) -> None:
    """Stop the prefetchers of these applied transforms (a pipeline's roots)."""
    with _LOCK:
        prefetchers = [_PREFETCHERS.pop(transform) for transform in transforms if transform in _PREFETCHERS]
        _STOPPED.clear()  # one streaming run at a time in a process: its stop ends with it
    for prefetcher in prefetchers:  # all closed first, so their threads end side by side
        prefetcher.close(wait=False)
    for prefetcher in prefetchers:
        prefetcher.join()


_CLIENTS: weakref.WeakKeyDictionary[Any, PrefetchingClient] = weakref.WeakKeyDictionary()


def _client_for(transform: Any) -> PrefetchingClient:
    """One subscriber client per read transform, behind its prefetcher; closed
    with the transform (Beam 2.62's reader opened and closed a client per pull)."""
    with _LOCK:
        client = _CLIENTS.get(transform)
        if client is None:
            from google.cloud import pubsub

            raw = pubsub.SubscriberClient()
            client = PrefetchingClient(transform, raw)
            _CLIENTS[transform] = client
            weakref.finalize(transform, raw.close)
        return client


def _timestamped(message: Any, timestamp_attribute: str | None) -> tuple[Any, Any]:
    """``(element timestamp, PubsubMessage)`` as Beam's reader makes them: the
    attribute (milliseconds or RFC 3339) when given and present, else the publish
    time."""
    from apache_beam.io.gcp.pubsub import PubsubMessage
    from apache_beam.utils.timestamp import Timestamp

    parsed = PubsubMessage._from_message(message)
    if timestamp_attribute and timestamp_attribute in parsed.attributes:
        value = parsed.attributes[timestamp_attribute]
        try:
            timestamp = Timestamp(micros=int(value) * 1000)
        except ValueError:
            try:
                timestamp = Timestamp.from_rfc3339(value)
            except ValueError as err:
                raise ValueError(f"Bad timestamp value: {err}") from err
    else:
        if message.publish_time is None:
            raise ValueError(f"No publish time present in message: {message}")
        timestamp = Timestamp.from_utc_datetime(message.publish_time)
    return timestamp, parsed


def read_from_pubsub(self: Any, timestamp_attribute: str | None) -> list[tuple[Any, Any]]:
    """``_PubSubReadEvaluator._read_from_pubsub`` of Beam 2.62 (fixes 3 and 9):
    the same pull, parse and acknowledge, through the transform's prefetching
    client instead of a new client per read that waits up to 30 s."""
    client = _client_for(self._applied_ptransform)
    response = client.pull(subscription=self._sub_name, max_messages=10, timeout=30)
    results = [_timestamped(received.message, timestamp_attribute) for received in response.received_messages]
    ack_ids = [received.ack_id for received in response.received_messages]
    if ack_ids:
        client.acknowledge(subscription=self._sub_name, ack_ids=ack_ids)
    return results
