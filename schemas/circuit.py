"""Each stream's circuit: whether its destination is tried, and when it is tried again.

A circuit is the stream's, not a DoFn instance's. The DirectRunner's streaming
executor calls ``setup`` and ``teardown`` around every bundle, and Flink and
Dataflow run several instances side by side: a failure count kept in an
instance would start again at every bundle, or be split between workers, and a
dead destination would never be cut off. So the state lives in a
:class:`CircuitStore`:

- with a location (the job's status location, ``<status>/circuits/<stream>.json``,
  local, ``gs://`` or ``s3://`` through Beam's ``FileSystems``), one small file
  per stream that every worker, every bundle and ``pipelines.redrive`` read and
  write: the store is the truth;
- in front of it, one cache per process (module level, so every instance and
  bundle of this process shares it), re-read from the file when older than
  ``sync_seconds``; every change re-reads the file first (read, modify, write).

Writes are rare: a healthy stream with no failures reads its cached state and
writes nothing. Two workers changing one stream's file in the same instant can
lose one update (object stores have no cheap compare-and-set here); the effect
is at most one failure more or less counted, never a lost document: the sinks
park whatever they do not deliver.

The states (docs/delivery.md, "Circuit"):

``closed``
    The destination is tried. A failed batch counts; ``deactivate_after``
    consecutive failed batches, or one permanent failure, open the circuit. A
    failure (or a success after failures) also sets ``drain_until``: what the
    failed batches parked is delivered by the recovery step beside live data,
    even when the circuit never opens: at once after a success, and after a
    failure once it is ``probe_initial_seconds`` old (:meth:`CircuitState.draining`).
``open``
    Nothing is sent: the sinks park the stream's documents without a request
    (``stream_deactivated`` with the token of the failure). At ``next_probe_at``
    the job's recovery step (``sinks/recovery.py``) probes the destination with
    the oldest parked batch. Probes are spaced exponentially, from
    ``probe_initial_seconds`` doubling up to ``probe_max_seconds``.
``half_open``
    A probe is under way, under a lease (``lease_owner``, ``lease_until``) so two
    workers, or the job and a manual re-drive, never drain one stream at once.
``recovering``
    The probe succeeded: the backlog is delivered in order while live documents
    are still parked behind it, so the backlog goes first. When the backlog is
    empty the circuit closes; for ``drain_seconds`` after that the recovery step
    still delivers batches parked by workers that had not seen the change yet.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson
from apache_beam.io.filesystems import FileSystems

from schemas.delivery import PERMANENT_TOKENS, REMOTE_ERROR

CLOSED, OPEN, HALF_OPEN, RECOVERING = "closed", "open", "half_open", "recovering"
#: The token of a circuit recovering because its stream was resumed, not because it failed.
RESUMING = "resuming"
CIRCUITS_DIR = "circuits"

#: The process-wide cache: (scope, stream id) -> (monotonic time read, state).
_CACHE: dict[tuple[str, str], tuple[float, CircuitState]] = {}
#: Per location scope: (monotonic time listed, stream id -> (size, mtime) of its file).
_LISTED: dict[str, tuple[float, dict[str, tuple[Any, ...]]]] = {}
_LOCK = threading.RLock()


@dataclass(frozen=True)
class CircuitState:
    """One stream's circuit, as stored (times in epoch seconds)."""

    stream_id: str
    state: str = CLOSED
    failures: int = 0  # consecutive failed batches
    token: str | None = None  # why it opened: unreachable, auth_failed, ...
    opened_at: float | None = None
    next_probe_at: float | None = None
    probe_delay_seconds: float = 0.0
    probes: int = 0  # failed probes since it opened
    lease_owner: str | None = None
    lease_until: float | None = None
    drain_until: float | None = None  # after closing: stragglers still delivered
    failed_at: float | None = None  # when the last failed batch was recorded
    #: the stream's ``resumed_at`` (activation or restart in the portal) this circuit has acted on
    resumed_at: str | None = None
    updated_at: float = 0.0

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def draining(self, now: float, settle_seconds: float) -> bool:
        """Closed with parked stragglers to deliver now: not while its last batch
        failed less than ``settle_seconds`` ago. Re-sending a parked batch right
        after a live one failed would try a failing destination once more at
        once, and hold every step of a one-threaded runner for up to a stream
        budget per tick; live batches tell first (a success clears the failures,
        more failures open the circuit, which is probed, spaced out), and a
        quiet stream's batch is re-sent once the failure is that old."""
        if self.state != CLOSED or (self.drain_until or 0) <= now:
            return False
        return self.failures == 0 or now - (self.failed_at or 0) >= settle_seconds

    def leased_by_other(self, owner: str, now: float) -> bool:
        return (self.lease_owner is not None and self.lease_owner != owner
                and self.lease_until is not None and now < self.lease_until)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> CircuitState:
        raw = orjson.loads(data)
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in raw.items() if key in known})


@dataclass(frozen=True)
class CircuitSettings:
    """The rules every circuit of a job follows (flags in pipelines/options.py)."""

    deactivate_after: int = 3
    probe_initial_seconds: float = 10.0
    probe_max_seconds: float = 300.0
    #: How stale a worker's cached view of a circuit may be.
    sync_seconds: float = 2.0
    #: How long a probe or a drain holds a stream before another may take it.
    lease_seconds: float = 120.0
    #: After closing, how long parked stragglers are still looked for.
    drain_seconds: float = 30.0


class CircuitStore:
    """The circuits of one job: a location's files behind a per-process cache,
    or (no location: sink tests, a run without a status location) the cache of
    one scope alone, shared by every instance unpickled from the same sink."""

    def __init__(self, location: str | None, settings: CircuitSettings | None = None,
                 scope: str | None = None) -> None:
        self.location = location.rstrip("/") if location else None
        self.settings = settings or CircuitSettings()
        self._scope = self.location or scope or f"memory:{uuid.uuid4().hex}"

    # ----------------------------------------------------------------- reading

    def path(self, stream_id: str) -> str:
        return f"{self.location}/{CIRCUITS_DIR}/{stream_id}.json"

    def get(self, stream_id: str, fresh: bool = False) -> CircuitState:
        """The stream's circuit, at most ``sync_seconds`` old unless ``fresh``.

        Not one read per stream: once per ``sync_seconds`` the process lists the
        circuit files (only streams that failed have one) and re-reads those that
        changed; a stream without a file is closed. A job with 10,000 healthy
        streams costs one listing every two seconds, not 5,000 reads a second."""
        key = (self._scope, stream_id)
        if fresh and self.location is not None:
            state = self._read(stream_id)
            with _LOCK:
                _CACHE[key] = (time.monotonic(), state)
            return state
        with _LOCK:
            cached = _CACHE.get(key)
            if cached is not None and (self.location is None or
                                       time.monotonic() - cached[0] < self.settings.sync_seconds):
                return cached[1]
        if self.location is None:
            return CircuitState(stream_id)
        self._sync()
        with _LOCK:
            cached = _CACHE.get(key)
            if cached is not None:
                return cached[1]
            state = CircuitState(stream_id)
            _CACHE[key] = (time.monotonic(), state)
            return state

    def _sync(self) -> None:
        """Refresh this process's view of every circuit of the location."""
        now = time.monotonic()
        with _LOCK:
            listed = _LISTED.get(self._scope)
            if listed is not None and now - listed[0] < self.settings.sync_seconds:
                return  # listed recently (by another instance): the cache is that listing
        pattern = f"{self.location}/{CIRCUITS_DIR}/*.json"
        try:
            found = FileSystems.match([pattern])[0].metadata_list
        except Exception:  # noqa: BLE001 - a store that cannot be listed: keep the last view
            return
        seen: dict[str, tuple[Any, ...]] = {}
        for metadata in found:
            stream_id = metadata.path.rsplit("/", 1)[-1].removesuffix(".json")
            seen[stream_id] = (metadata.size_in_bytes, getattr(metadata, "last_updated_in_seconds", None))
        previous = _LISTED.get(self._scope, (0.0, {}))[1]
        changed = [sid for sid, version in seen.items() if previous.get(sid) != version]
        read = {sid: self._read(sid) for sid in changed}
        stamp = time.monotonic()
        with _LOCK:
            for (scope, stream_id) in [k for k in _CACHE if k[0] == self._scope]:
                if stream_id in read:
                    continue
                if stream_id in seen:
                    _CACHE[(scope, stream_id)] = (stamp, _CACHE[(scope, stream_id)][1])
                else:
                    _CACHE[(scope, stream_id)] = (stamp, CircuitState(stream_id))  # no file: closed
            for stream_id, state in read.items():
                _CACHE[(self._scope, stream_id)] = (stamp, state)
            _LISTED[self._scope] = (stamp, seen)

    def _read(self, stream_id: str) -> CircuitState:
        if self.location is None:
            return CircuitState(stream_id)
        path = self.path(stream_id)
        try:
            with FileSystems.open(path) as handle:
                return CircuitState.from_json(handle.read())
        except Exception:  # noqa: BLE001 - no file (the usual case) or a torn one: closed
            return CircuitState(stream_id)

    def streams_needing_attention(self, now: float | None = None) -> list[CircuitState]:
        """Circuits not closed, or closed but still draining stragglers."""
        now = time.time() if now is None else now
        if self.location is None:
            with _LOCK:
                states = [state for (scope, _), (_, state) in _CACHE.items() if scope == self._scope]
        else:
            pattern = f"{self.location}/{CIRCUITS_DIR}/*.json"
            paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
            states = [self.get(path.rsplit("/", 1)[-1].removesuffix(".json"), fresh=True) for path in paths]
        return sorted((s for s in states if not s.closed or (s.drain_until or 0) > now), key=lambda s: s.stream_id)

    # ----------------------------------------------------------------- changing

    def _update(self, stream_id: str, change: Any) -> CircuitState:
        """Read the newest state, apply ``change`` (state -> state or None for
        no change), write it if it changed."""
        with _LOCK:
            before = self.get(stream_id, fresh=True)
            after = change(before)
            if after is None or after == before:
                return before
            after = replace(after, updated_at=time.time())
            if self.location is not None:
                with FileSystems.create(self.path(stream_id)) as handle:
                    handle.write(after.to_json())
            _CACHE[(self._scope, stream_id)] = (time.monotonic(), after)
            return after

    def _opened(self, state: CircuitState, token: str, now: float, delay: float | None = None) -> CircuitState:
        delay = self.settings.probe_initial_seconds if delay is None else delay
        jitter = random.uniform(0, 0.1 * delay)
        return replace(state, state=OPEN, token=token, opened_at=state.opened_at if state.state != CLOSED else now,
                       next_probe_at=now + delay + jitter, probe_delay_seconds=delay, lease_owner=None,
                       lease_until=None, drain_until=None)

    def record(self, stream_id: str, ok: bool, token: str | None = None, retryable: bool = True) -> CircuitState:
        """A batch's outcome while the circuit is closed. A success costs no
        write unless failures were counted."""
        now = time.time()
        drain_until = now + self.settings.drain_seconds
        if ok:
            current = self.get(stream_id)
            if current.failures == 0:
                return current
            return self._update(stream_id, lambda s: replace(
                s, failures=0, drain_until=max(s.drain_until or 0, drain_until)) if s.state == CLOSED else None)
        token = token or REMOTE_ERROR

        def fail(state: CircuitState) -> CircuitState | None:
            if state.state != CLOSED:
                return None  # already open: a straggling failure changes nothing
            # What the failed batch parked is delivered by the recovery step soon
            # (a closed circuit that is draining), even if the circuit never opens.
            failed = replace(state, failures=state.failures + 1, drain_until=drain_until, failed_at=now)
            permanent = not retryable or token in PERMANENT_TOKENS
            if permanent or failed.failures >= self.settings.deactivate_after:
                return self._opened(failed, token, now)
            return failed

        return self._update(stream_id, fail)

    def open(self, stream_id: str, token: str) -> CircuitState:
        """Open at once (a refused destination, an unreadable secret)."""
        now = time.time()
        return self._update(stream_id, lambda s: self._opened(replace(s, failures=s.failures + 1), token, now)
                            if s.state == CLOSED else None)

    def begin_probe(self, stream_id: str, owner: str, force: bool = False) -> bool:
        """Take the stream for a probe if one is due (or ``force``) and nobody
        else holds it; True if taken."""
        now = time.time()
        taken = False

        def begin(state: CircuitState) -> CircuitState | None:
            nonlocal taken
            if state.state == CLOSED or state.leased_by_other(owner, now):
                return None
            if state.state == OPEN and not force and (state.next_probe_at or 0) > now:
                return None
            taken = True
            next_state = HALF_OPEN if state.state in (OPEN, HALF_OPEN) else state.state
            return replace(state, state=next_state, lease_owner=owner, lease_until=now + self.settings.lease_seconds)

        self._update(stream_id, begin)
        return taken

    def take_drain(self, stream_id: str, owner: str) -> bool:
        """Take a recovering or draining stream to deliver its backlog."""
        now = time.time()
        taken = False

        def take(state: CircuitState) -> CircuitState | None:
            nonlocal taken
            if state.leased_by_other(owner, now):
                return None
            if state.state == RECOVERING or (state.state == CLOSED and (state.drain_until or 0) > now):
                taken = True
                return replace(state, lease_owner=owner, lease_until=now + self.settings.lease_seconds)
            return None

        self._update(stream_id, take)
        return taken

    def probe_failed(self, stream_id: str, owner: str, token: str | None) -> CircuitState:
        """Open again, the next probe twice as far away (up to the maximum)."""
        now = time.time()

        def reopen(state: CircuitState) -> CircuitState | None:
            if state.leased_by_other(owner, now):
                return None
            delay = min(self.settings.probe_max_seconds, max(state.probe_delay_seconds * 2,
                                                             self.settings.probe_initial_seconds))
            opened = self._opened(replace(state, failures=state.failures + 1, probes=state.probes + 1),
                                  token or state.token or REMOTE_ERROR, now, delay)
            return replace(opened, state=OPEN)

        return self._update(stream_id, reopen)

    def recovering(self, stream_id: str, owner: str) -> CircuitState:
        """The probe got through: deliver the backlog before live data."""
        now = time.time()
        return self._update(stream_id, lambda s: None if s.leased_by_other(owner, now) else replace(
            s, state=RECOVERING, lease_owner=owner, lease_until=now + self.settings.lease_seconds))

    def close(self, stream_id: str, owner: str | None = None) -> CircuitState:
        """The backlog is delivered (or a re-drive reactivated the stream): live
        data flows again; stragglers are drained for ``drain_seconds``."""
        now = time.time()

        def close(state: CircuitState) -> CircuitState | None:
            if owner is not None and state.leased_by_other(owner, now):
                return None
            return CircuitState(stream_id, CLOSED, drain_until=now + self.settings.drain_seconds,
                                resumed_at=state.resumed_at)

        return self._update(stream_id, close)

    def resume(self, stream_id: str, resumed_at: str) -> CircuitState:
        """The stream was activated after a pause, or restarted after an error,
        at ``resumed_at`` (once per value): an open circuit is probed at once; a
        closed one goes ``recovering``, so the sinks park live documents behind
        the kept backlog and the recovery step delivers the backlog first."""
        now = time.time()

        def resume(state: CircuitState) -> CircuitState | None:
            if state.resumed_at == resumed_at:
                return None
            if state.state in (OPEN, HALF_OPEN):
                return replace(state, resumed_at=resumed_at, next_probe_at=now, lease_owner=None, lease_until=None)
            if state.state == RECOVERING:
                return replace(state, resumed_at=resumed_at)
            return replace(state, state=RECOVERING, token=RESUMING, resumed_at=resumed_at, lease_owner=None,
                           lease_until=None)

        return self._update(stream_id, resume)

    def release(self, stream_id: str, owner: str) -> None:
        """Give the lease back (a drain that stopped for now, a re-drive that
        ended); a closed circuit keeps draining for ``drain_seconds`` more, so
        what was parked meanwhile is delivered."""
        drain_until = time.time() + self.settings.drain_seconds
        self._update(stream_id, lambda s: replace(
            s, lease_owner=None, lease_until=None,
            drain_until=max(s.drain_until or 0, drain_until) if s.state == CLOSED else s.drain_until)
            if s.lease_owner == owner else None)

    def forget(self, stream_id: str, now: float | None = None) -> None:
        """Remove a closed circuit whose drain time is over (keeps listings
        short); one that acted on a resume is kept, as the record of it."""
        now = time.time() if now is None else now
        with _LOCK:
            state = self.get(stream_id, fresh=True)
            if not state.closed or (state.drain_until or 0) > now or state.resumed_at:
                return
            if self.location is not None and FileSystems.exists(self.path(stream_id)):
                FileSystems.delete([self.path(stream_id)])
            _CACHE.pop((self._scope, stream_id), None)


def parked_token(state: CircuitState) -> str | None:
    """The token a stream's live documents are parked with, None if they are sent."""
    if state.closed:
        return None
    return state.token or REMOTE_ERROR
