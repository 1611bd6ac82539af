"""Reference data and stream configurations that change while a streaming job runs.

A streaming run re-reads the reference files, the stream configuration and the
stream holds every ``interval`` seconds, on each worker process, and every step
that needs them reads the process's current snapshot (:class:`RefreshingSnapshot`).
A new SIM, a renamed organisation or a new, paused or deleted stream therefore
takes effect on every worker within one interval (plus the load time), without a
restart.

Why not Beam's slowly-updating side inputs, which this job used before: they only
work where the runner maps a record's window to a side-input window the way the
pattern needs. The windowed pattern delays every record until its interval's
snapshot window is complete on the DirectRunner (half an interval on average), so
it needed two custom ``WindowFn``s and a custom window mapping; Flink's portable
runner refuses custom ``WindowFn``s ("Unknown or unsupported WindowFn",
apache/beam#20641) and ignores custom mappings (apache/beam#18993). The
global-window pattern (a repeatedly triggered side input) accumulates the panes
on some runners and breaks ``AsSingleton`` (apache/beam#26465). A snapshot held
per worker process runs the same on every runner, never holds a record back for
a side input, and keeps one snapshot per process instead of one per window.

What it changes: a record is enriched and routed with the snapshot current when
it is processed, not the one of its event-time interval. A backlog read after a
restart, or a late record, therefore gets today's reference data and stream
configuration, which is what an operator who renamed an organisation or paused a
stream expects of the records still to be delivered.

Refreshes follow the clock: the snapshot is reloaded in the first use after each
interval start (intervals aligned to the epoch, so all workers reload in the same
interval). The reload runs on a background thread while records keep the previous
snapshot, so a slow load (a large fleet's files on an object store) costs no
record any latency. A reload that fails (a missing file, a bad row: the loaders
raise naming the file, row and field) keeps the last good snapshot until the next
interval, logs the loader's message and counts ``refresh|<what>|failed``; a good
one counts ``refresh|<what>|loaded``. The first load of a process is made on the
thread that needs it; if it fails there is no good snapshot to keep, so the
bundle fails with :class:`RefreshError` and the runner retries it.

Snapshots are only ever loaded on workers, never pickled into the job graph: a
fleet's reference data can be far larger than a runner accepts for a graph
(Dataflow's request limit is 10 MB). The submitting machine loads the files once
to fail fast on bad data.

The refresh ticks (``transforms.refresh.Ticks``, ``PeriodicImpulse``; Pub/Sub ticks on the
DirectRunner) no longer carry the snapshots: they are the lateness gate's
heartbeats and the recovery step's clock.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from apache_beam.metrics import Metrics

from schemas import metrics

_LOG = logging.getLogger(__name__)

T = TypeVar("T")


def clock() -> float:
    """Now, in epoch seconds; tests replace it to step through intervals."""
    return time.time()


class RefreshError(RuntimeError):
    """The first snapshot of a worker process could not be loaded."""


@dataclass
class _Cache:
    """One snapshot of one process, and what its reloads left to count."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    snapshot: Any = None
    loaded: bool = False
    #: the interval (``clock() // interval``) of the last load attempt
    interval: int = -1
    reloading: threading.Thread | None = None
    #: counts made on the reload thread, added to Beam's counters by the next
    #: ``get`` (Beam's counters belong to the thread of a bundle)
    pending: dict[str, int] = field(default_factory=lambda: {"loaded": 0, "failed": 0})


#: Every snapshot of this process, by the key of its :class:`RefreshingSnapshot`:
#: all DoFn instances and bundles of a process share it.
_CACHES: dict[str, _Cache] = {}
_CACHES_LOCK = threading.Lock()


class RefreshingSnapshot:
    """``load()``'s result, re-read every ``interval_seconds`` on each worker
    process (module docstring). Give it to a ``ParDo`` as an ordinary argument
    and call :func:`current` on it in ``process``: it pickles as ``what``, the
    loader and the interval, never as the data."""

    def __init__(self, what: str, load: Callable[[], Any], interval_seconds: int) -> None:
        if interval_seconds <= 0:
            raise ValueError("the refresh interval must be positive")
        self.what = what
        self._load = load
        self._interval = interval_seconds
        #: shared by the copies every unpickling makes, unique to this snapshot
        self._key = f"{what}:{uuid.uuid4().hex}"

    def get(self) -> Any:
        """The process's current snapshot: loaded now if this process has none,
        reloaded in the background if an interval started since the last load."""
        cache = self._cache()
        interval = int(clock() // self._interval)
        with cache.lock:
            if not cache.loaded:
                self._first_load(cache, interval)
            elif interval > cache.interval and cache.reloading is None:
                cache.interval = interval
                cache.reloading = threading.Thread(target=self._reload, args=(cache,), daemon=True,
                                                   name=f"refresh:{self.what}")
                cache.reloading.start()
            pending = dict(cache.pending)
            cache.pending.update(loaded=0, failed=0)
            snapshot = cache.snapshot
        for outcome, count in pending.items():
            if count:
                Metrics.counter(metrics.NAMESPACE, metrics.refresh(self.what, outcome)).inc(count)
        return snapshot

    def wait_for_reload(self, timeout: float | None = None) -> None:
        """Block until a reload running in this process has finished (tests)."""
        reloading = self._cache().reloading
        if reloading is not None:
            reloading.join(timeout)

    def _cache(self) -> _Cache:
        with _CACHES_LOCK:
            return _CACHES.setdefault(self._key, _Cache())

    def _first_load(self, cache: _Cache, interval: int) -> None:
        cache.interval = interval
        try:
            cache.snapshot = self._load()
        except Exception as err:
            Metrics.counter(metrics.NAMESPACE, metrics.refresh(self.what, "failed")).inc()
            raise RefreshError(f"loading {self.what} failed and there is no earlier snapshot to keep "
                               f"(the runner retries): {err}") from err
        cache.loaded = True
        cache.pending["loaded"] += 1

    def _reload(self, cache: _Cache) -> None:
        try:
            snapshot = self._load()
        except Exception as err:  # noqa: BLE001 - any failure keeps the last good snapshot
            _LOG.error("refreshing %s failed, keeping the previous snapshot: %s", self.what, err)
            with cache.lock:
                cache.pending["failed"] += 1
                cache.reloading = None
            return
        with cache.lock:
            cache.snapshot = snapshot
            cache.pending["loaded"] += 1
            cache.reloading = None


def current(value: T | RefreshingSnapshot) -> T:
    """``value``'s current snapshot if it refreshes (a streaming run), else
    ``value`` itself (a batch run's side input)."""
    return value.get() if isinstance(value, RefreshingSnapshot) else value  # type: ignore[return-value]
