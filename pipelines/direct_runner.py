"""Workarounds for four problems of the Python DirectRunner's bundle-based executor
(Beam 2.77), the one streaming runs and graphs with processing-time timers run
on. Applied by :func:`apply_direct_runner_fixes` when a graph is built for the
DirectRunner; other runners never see them.

1. Lost metrics. Each worker thread keeps one ``StateSampler``, whose
``scoped_state`` caches the state of a step by name together with the metrics
container of the *first* bundle it ran. Later bundles of that step count into that
first container, which was already committed, so their counts never reach the
pipeline result (a ``TestStream`` of four elements in two bundles through a
counting ``Map`` reports 2). The fix gives each bundle a fresh sampler, so its
scoped states carry its own container.

2. Windowed side inputs and empty bundles. The executor looks up a step's side
inputs through the window of the bundle's last element. A bundle without elements
has no window, and stateful steps with timers (``DeduplicatePerKey``,
``GroupIntoBatches``, the lateness gate) emit such bundles whenever a timer fires
and produces nothing; they travel downstream, and the first step with a windowed
(non-global) side input fails with ``AttributeError: 'NoneType' object has no
attribute 'max_timestamp'`` in ``sideinputs.map_via_end``. Global side inputs are
not affected, which is why batch runs never see it.

The patch gives an empty bundle the window ``[epoch, epoch + 1 µs)``. The bundle has
nothing to look up, so which window it maps to does not matter; this one maps to
the earliest side-input window, which is ready as soon as the side input has
produced anything.

3. Slow Pub/Sub reads. The DirectRunner's Pub/Sub reader pulls at most 10
messages with a 30-second deadline, and the executor has a single worker thread:
an idle subscription (the usage topic when only events flow) answers only at the
deadline, stalling every other step for 30 s per pull (records took 100 s to get
through in the end-to-end test). The fix pulls up to ``PULL_MAX_MESSAGES`` with
a one-second deadline, treating a missed deadline as "no messages yet".

4. Slow bundles. The executor inspects every DoFn's method signatures
(``userstate.get_dofn_specs``) at the start of every bundle, and a streaming graph
runs many bundles, most of them empty ones set off by timers. That inspection
took about three quarters of the job's time (py-spy, ``make bench``'s streaming
bench): the job kept up with 50 records/s only. The specs depend only on the
DoFn's class (and, for a DoFn wrapping a function, on that function's code), so
the fix computes them once per class and function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apache_beam.runners.direct import executor, transform_evaluator
from apache_beam.runners.worker import statesampler
from apache_beam.transforms import userstate
from apache_beam.transforms.window import IntervalWindow
from apache_beam.utils import counters
from apache_beam.utils.timestamp import Timestamp

_EMPTY_BUNDLE_WINDOW = IntervalWindow(Timestamp(0), Timestamp(micros=1))
PULL_MAX_MESSAGES = 500
PULL_DEADLINE_SECONDS = 1.0


class _QuickPull:
    """The DirectRunner's subscriber client, pulling more with a short deadline."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def pull(self, subscription: str, max_messages: int, timeout: float) -> Any:
        from google.api_core import exceptions
        from google.cloud.pubsub_v1.types import PullResponse

        try:
            return self._client.pull(subscription=subscription, max_messages=max(max_messages, PULL_MAX_MESSAGES),
                                     timeout=min(timeout, PULL_DEADLINE_SECONDS))
        except exceptions.DeadlineExceeded:
            return PullResponse()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _specs_key(dofn: Any) -> Any:
    """What a DoFn's state and timer specs depend on: its class, and for a DoFn
    wrapping a callable (``beam.Map``, ...) the callable's code. None when that
    cannot be told (the specs are then computed as before)."""
    wrapped = getattr(dofn, "_fn", None)
    if wrapped is None:
        return type(dofn)
    code = getattr(wrapped, "__code__", None)  # a partial or callable object: not cached
    return None if code is None else (type(dofn), code)


def _cached_dofn_specs(original: Callable[[Any], tuple[set, set]]) -> Callable[[Any], tuple[set, set]]:
    cache: dict[Any, tuple[frozenset, frozenset]] = {}

    def get_dofn_specs(dofn: Any) -> tuple[set, set]:
        key = _specs_key(dofn)
        if key is None:
            return original(dofn)
        specs = cache.get(key)
        if specs is None:
            state, timers = original(dofn)
            specs = cache[key] = (frozenset(state), frozenset(timers))
        return set(specs[0]), set(specs[1])

    return get_dofn_specs


_applied = False


def apply_direct_runner_fixes() -> None:
    """Idempotently install the workarounds (module docstring)."""
    global _applied
    if _applied:
        return
    original_init = executor.TransformExecutor.__init__
    original_call = executor.TransformExecutor.call

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if self._latest_main_input_window is None:
            self._latest_main_input_window = _EMPTY_BUNDLE_WINDOW

    def call(self: Any, state_sampler: Any) -> None:
        fresh = statesampler.StateSampler("", counters.CounterFactory())
        statesampler.set_current_tracker(fresh)
        try:
            original_call(self, fresh)
        finally:
            statesampler.set_current_tracker(state_sampler)

    reader = transform_evaluator._PubSubReadEvaluator
    original_client = reader._get_subscriber_client.__func__

    def quick_client(cls: Any, transform: Any) -> Any:
        return _QuickPull(original_client(cls, transform))

    executor.TransformExecutor.__init__ = init
    executor.TransformExecutor.call = call
    reader._get_subscriber_client = classmethod(quick_client)
    # is_stateful_dofn and the direct runner's state look the function up in
    # userstate; transform_evaluator imported its own reference.
    cached = _cached_dofn_specs(userstate.get_dofn_specs)
    userstate.get_dofn_specs = cached
    transform_evaluator.get_dofn_specs = cached
    _applied = True
