"""The Pub/Sub acknowledgement journal of a local streaming job: which messages
the job pulled, acknowledged and handed back, and when, written as it happens.

Why: after a ``kill -9`` the job leaves no summary and no state, so what it had
acknowledged can only be known from a record written before each acknowledgement
left. With it, a crash run can tell a lost record acknowledged by the killed
process (the runner's fault) from one still waiting in Pub/Sub (the run did not
settle) or dead-lettered by the job (the job's verdict), instead of only counting
what is missing.

The journal wraps the subscriber client that the DirectRunner's Pub/Sub
prefetchers (``tools/direct_runner/direct_pubsub.py``) pull, acknowledge and
hand back through; the job process installs it (:func:`install`,
``tools/crash/job.py``) before the job starts. It changes nothing the job does:
every call goes to the real client, in the same order, with the same arguments.
One line per call (``<unix time> <event> <subscription> <message id>...``) is
appended with one ``os.write`` on an ``O_APPEND`` descriptor: once the call
returns the line is the kernel's, so a SIGKILL right after it cannot take it
back (nothing is buffered in the process). Events:

- ``pulled``: a background pull returned these messages (queued, not yet read);
- ``read``: the runner's reader took them into a bundle and asked for their
  acknowledgement, before any step after the read saw them; the prefetcher's
  thread sends it after its current pull (up to a second, longer on a loaded
  machine), so a record can reach a destination before its acknowledgement leaves;
- ``ack-sent``: their acknowledgement is about to be sent;
- ``acked``: Pub/Sub answered the acknowledgement;
- ``ack-failed``: it raised (the messages come again);
- ``handed-back``: ack deadline set to 0 (queued, never read; redelivered now).

An ``ack-sent`` line without its ``acked`` line is an acknowledgement that may
or may not have reached Pub/Sub when the process died.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVENTS = ("pulled", "read", "ack-sent", "acked", "ack-failed", "handed-back")


class JournalWriter:
    """Appends one line per event to ``path``; each line leaves in one system call."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def write(self, event: str, subscription: str, message_ids: Iterable[str]) -> None:
        ids = " ".join(message_ids)
        if not ids:
            return
        line = f"{time.time():.6f} {event} {subscription} {ids}\n".encode()
        with self._lock:
            os.write(self._fd, line)

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


class JournalingSubscriber:
    """A subscriber client that journals ``pull``, ``acknowledge`` and
    ``modify_ack_deadline`` (keyword calls, as the prefetchers make them) and
    passes everything to ``client``."""

    def __init__(self, client: Any, journal: JournalWriter) -> None:
        self._client = client
        self._journal = journal
        self._lock = threading.Lock()
        #: ack id -> message id of what was pulled and not yet acknowledged or handed back.
        self._message_ids: dict[str, str] = {}

    def _take(self, ack_ids: Iterable[str]) -> list[str]:
        with self._lock:
            return [self._message_ids.pop(ack_id, "?") for ack_id in ack_ids]

    def read(self, *, subscription: str, ack_ids: list[str]) -> None:
        """Journal that the reader read these messages (their acknowledgement
        is queued, not sent): called by the prefetcher's ``acknowledge``."""
        with self._lock:
            message_ids = [self._message_ids.get(ack_id, "?") for ack_id in ack_ids]
        self._journal.write("read", subscription, message_ids)

    def pull(self, *, subscription: str, **kwargs: Any) -> Any:
        response = self._client.pull(subscription=subscription, **kwargs)
        received = type(response).pb(response).received_messages
        pairs = [(message.ack_id, message.message.message_id) for message in received]
        with self._lock:
            self._message_ids.update(pairs)
        self._journal.write("pulled", subscription, (message_id for _, message_id in pairs))
        return response

    def acknowledge(self, *, subscription: str, ack_ids: list[str], **kwargs: Any) -> Any:
        message_ids = self._take(ack_ids)
        self._journal.write("ack-sent", subscription, message_ids)
        try:
            answer = self._client.acknowledge(subscription=subscription, ack_ids=ack_ids, **kwargs)
        except BaseException:
            self._journal.write("ack-failed", subscription, message_ids)
            raise
        self._journal.write("acked", subscription, message_ids)
        return answer

    def modify_ack_deadline(self, *, subscription: str, ack_ids: list[str], ack_deadline_seconds: int,
                            **kwargs: Any) -> Any:
        message_ids = self._take(ack_ids) if ack_deadline_seconds == 0 else []
        self._journal.write("handed-back", subscription, message_ids)
        return self._client.modify_ack_deadline(subscription=subscription, ack_ids=ack_ids,
                                                ack_deadline_seconds=ack_deadline_seconds, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def install(path: str | os.PathLike[str]) -> JournalWriter:
    """Journal every Pub/Sub prefetcher this process starts from now on to
    ``path``. Call it once per process, before the job starts; the prefetchers
    are the DirectRunner workarounds' (fixes 3 and 9), so the job must run with
    them applied (``tools.local_job`` applies them)."""
    from tools.direct_runner import direct_pubsub

    journal = JournalWriter(path)
    original_init = direct_pubsub.Prefetcher.__init__
    original_acknowledge = direct_pubsub.Prefetcher.acknowledge

    def init(self: Any, client: Any, subscription: str, *args: Any, **kwargs: Any) -> None:
        self._journaling = JournalingSubscriber(client, journal)
        original_init(self, self._journaling, subscription, *args, **kwargs)

    def acknowledge(self: Any, subscription: str, ack_ids: list[str]) -> None:
        self._journaling.read(subscription=subscription, ack_ids=ack_ids)
        original_acknowledge(self, subscription, ack_ids)

    direct_pubsub.Prefetcher.__init__ = init  # type: ignore[method-assign]
    direct_pubsub.Prefetcher.acknowledge = acknowledge  # type: ignore[method-assign]
    return journal


@dataclass
class Journal:
    """What one job process's journal says, per event: message id -> the time of
    its first such event (a redelivered message is pulled again)."""

    events: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    #: Lines that could not be read (a line cut by the end of the file).
    unreadable: int = 0

    def ids(self, event: str) -> set[str]:
        return set(self.events.get(event, {}))

    @property
    def acknowledged(self) -> set[str]:
        """Messages whose acknowledgement Pub/Sub answered."""
        return self.ids("acked")

    @property
    def ack_sent(self) -> set[str]:
        """Messages whose acknowledgement left (answered or not): a superset of
        what Pub/Sub may have taken as acknowledged."""
        return self.ids("ack-sent")


def read_journal(path: str | os.PathLike[str]) -> Journal:
    """Parse a journal file (missing: empty)."""
    journal = Journal()
    path = Path(path)
    if not path.exists():
        return journal
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split(" ")
        if len(parts) < 4 or parts[1] not in EVENTS:
            journal.unreadable += 1
            continue
        try:
            moment = float(parts[0])
        except ValueError:
            journal.unreadable += 1
            continue
        first = journal.events[parts[1]]
        for message_id in parts[3:]:
            first.setdefault(message_id, moment)
    return journal
