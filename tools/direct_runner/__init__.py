"""Workarounds for problems of Beam 2.62's BundleBasedDirectRunner, the local
runner of streaming runs, ``TestStream`` tests and graphs with processing-time
timers (``tools/runners.py``).

Who applies them: :func:`apply_direct_runner_fixes` is called by the local
launchers (``tools/local_job.py``, for a run on the BundleBasedDirectRunner, and
the streaming bench) and by the tests (``tests/conftest.py``); never by the job,
which runs unpatched on every runner. They replace private Beam symbols, so they
refuse to apply on a Beam version they were not tested with
(:data:`TESTED_BEAM_VERSIONS`).

Upstream: the Pub/Sub read's 30 s pull deadline (3, 9) is apache/beam#25442
(open). For 1, 2 and 4 to 8 no upstream issue was found in Beam's tracker; the
closest, for 2, is apache/beam#18942 (BundleBasedDirectRunner and streaming
side inputs). Each is described below well enough to file.

Which apply: 1 and 2 (correctness), 3 and 9 (Pub/Sub reads: without them a
streaming run waits 30 s per idle pull) and 10 (stopping a run) always; 4 to 8 (speed only) with
``speed=True``, the default, because a local need was measured: ``make
run-local-streaming`` (150 records/s per kind, 90 s) read 27,689 of 28,154
published records with them and 8,100 of 28,996 without (99 % of its records
late), on this 2-CPU machine.

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
through in the end-to-end test). The fix (revised by fix 9) pulls each
subscription in a background thread, up to 500 messages with a one-second
deadline, treating a missed deadline as "no messages yet" (``direct_pubsub``).

4. Slow bundles. The executor inspects every DoFn's method signatures
(``userstate.get_dofn_specs``) at the start of every bundle, and a streaming graph
runs many bundles, most of them empty ones set off by timers. That inspection
took about three quarters of the job's time (py-spy, ``make bench``'s streaming
bench): the job kept up with 50 records/s only. The specs depend only on the
DoFn's class (and, for a DoFn wrapping a function, on that function's code), so
the fix computes them once per class and function.

5. Timer scans that grow with the state. After every bundle, and continuously
while any processing-time timer is set (which is always, in a streaming job), the
executor's monitor asks every key of every stateful step for its due timers
(``_TransformWatermarks.extract_transform_timers``), comparing each timer's
``Timestamp`` with the watermark and the clock. De-duplication keeps a key with
a timer per record id for its horizon, so each scan took longer the longer the
job ran: py-spy put 73 % of the streaming job's time there after ten minutes at
200 records/s. The fix keeps, per step, a heap of each key's earliest timer
per time domain, updated only for keys whose state was replaced (the executor
commits a bundle's state by assigning it to the step's key -> state dict, which
becomes a dict that notes the keys assigned). A scan looks only at the keys
whose earliest timer is due, and reports exactly what the full scan reported:
the same timers, due by the same comparison, again on every scan until the
key's state is replaced, and whether any processing-time timer is set at all. A
step without timers (most of them) answers at once, without reading the clock.

6. Per-bundle DoFn copies. For every bundle of every step the executor pickles
the step's DoFn and unpickles a copy (a "pickle test"), and the copy's method
signatures are inspected anew (``inspect.signature``): a quarter of the
streaming job's time once fix 5 was in, most bundles holding a record or none.
Flink and Dataflow deserialize a DoFn once per worker and reuse the instance for
bundle after bundle, so the job's DoFns are written for reuse already; the fix
reuses the graph's own instance on this single-threaded executor (which still
calls ``setup`` and ``teardown`` around each bundle), and remembers the argument
lists of plain functions and methods. Picklability is tested where it matters,
by the runner API and packaging tests and by every batch run on the FnApi runner.

7. Garbage collection. Both executors run the job in this process and hold every
element between stages in memory: the batch job has millions of live objects.
Python's cyclic collector runs a young collection every 700 allocations more than
frees and, every so often, a full one that walks every live object; py-spy put a
tenth of the batch job's time in it (``make bench``). The job's data (records,
documents, batches) are trees without reference cycles, freed by reference
counting alone, so the fix collects less often (:data:`GC_THRESHOLDS`). Workers of
other runners are separate processes this never touches.

8. Empty bundles scheduled downstream. Every bundle a step runs commits one output
bundle per output, with elements or not, and the executor's monitor schedules
every consumer of each: a step that turns a bundle into nothing (a filter, a
dead-letter output, a timer that fires and emits nothing) sets off a chain of
empty bundles through every step after it. The watermark manager already
ignores empty bundles ("they do not impact watermarks and should not trigger
downstream execution", ``WatermarkManager._update_pending``); the monitor did not.
In a 45 s bench step at 673 records/s the streaming job's dead-letter writer ran
2,211 bundles without a single element, and its delivery-status writer 1,189
bundles for 116 elements. The fix schedules only bundles with elements. Timers are delivered on their own
(``_fire_timers``) and side inputs are filled from the committed results before
scheduling, so neither depends on the empty bundles.

9. Reads that hold the worker. Even with fix 3, every read of every subscription
waited on the Pub/Sub answer on the executor's one worker thread while no other
step ran: 18 of 45 seconds at 673 records/s, most of it the idle refresh
subscription running to its deadline. The reads now take what a background
thread per subscription has already pulled, and wait only while the whole job
is idle (``direct_pubsub``); the executor's end stops those threads.

10. Reads that cannot stop, and a wait that cannot end. A stopped streaming run
drains what it read before it is cancelled (``pipelines/drain.py``), so its
reads must stop handing out messages first; the runner's reader has no such
switch, and a step after it cannot drop what the reader already acknowledged.
The prefetchers of fix 9 can: :func:`apply_direct_runner_fixes` registers
``direct_pubsub.stop_reading`` with the job as the reads' stopper on this runner
(the job registers none itself, so on any other runner it says it cannot drain).
And ``DirectPipelineResult.wait_until_finish``, which the job waits in to learn
of a failure (the result's ``state`` stays RUNNING on this runner until that
wait raises), blocked forever once the job was cancelled: nothing told it. The
executor's shutdown now wakes it (it then returns, and the result's state may
read DONE rather than CANCELLED).
"""

from __future__ import annotations

import gc
import heapq
import types
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from apache_beam.runners.direct import evaluation_context, executor, transform_evaluator, watermark_manager
from apache_beam.runners.worker import statesampler
from apache_beam.transforms import core, userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import IntervalWindow
from apache_beam.utils import counters
from apache_beam.utils.timestamp import Timestamp

from pipelines.drain import register_read_stopper
from tools import runners
from tools.direct_runner import direct_pubsub

_EMPTY_BUNDLE_WINDOW = IntervalWindow(Timestamp(0), Timestamp(micros=1))


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


class _NotingStates(dict):
    """A step's ``encoded key -> state`` dict that notes the keys assigned (fix 5).
    The DirectRunner only assigns and reads it; the other mutators note too."""

    def __init__(self) -> None:
        super().__init__()
        self.assigned: set[Any] = set()

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)  # first the value, then the note
        self.assigned.add(key)

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self.assigned.add(key)

    def pop(self, key: Any, *default: Any) -> Any:
        value = super().pop(key, *default)
        self.assigned.add(key)
        return value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value


def _micros(moment: Any) -> int:
    return Timestamp.of(moment).micros


class _TimerIndex:
    """Per step: each key's earliest event-time and processing-time timer in a
    heap (stale entries skipped), the keys found due (reported on every scan
    until their state is replaced), and the keys with processing-time timers."""

    def __init__(self) -> None:
        self._earliest: dict[Any, tuple[int | None, int | None]] = {}
        self._heaps: dict[str, list[tuple[int, int, Any]]] = {TimeDomain.WATERMARK: [], TimeDomain.REAL_TIME: []}
        self._order = 0  # ties in a heap never compare keys
        self.due: dict[Any, None] = {}
        self.realtime_keys: set[Any] = set()

    def note(self, states: _NotingStates) -> None:
        while states.assigned:
            key = states.assigned.pop()
            self.due.pop(key, None)
            state = states.get(key)
            earliest: dict[str, int | None] = {TimeDomain.WATERMARK: None, TimeDomain.REAL_TIME: None}
            for timers in getattr(state, "timers", {}).values():
                for (_name, domain, _tag), timestamp in timers.items():
                    if domain in earliest:
                        micros = _micros(timestamp)
                        if earliest[domain] is None or micros < earliest[domain]:
                            earliest[domain] = micros
            pair = (earliest[TimeDomain.WATERMARK], earliest[TimeDomain.REAL_TIME])
            self._earliest[key] = pair
            if pair[1] is None:
                self.realtime_keys.discard(key)
            else:
                self.realtime_keys.add(key)
            for domain, micros in earliest.items():
                if micros is not None:
                    self._order += 1
                    heapq.heappush(self._heaps[domain], (micros, self._order, key))

    @property
    def empty(self) -> bool:
        """No timer set and none found due: nothing a scan could report."""
        return not (self.due or self._heaps[TimeDomain.WATERMARK] or self._heaps[TimeDomain.REAL_TIME])

    def find_due(self, watermark: int, now: int) -> Iterable[Any]:
        for domain, marker, slot in ((TimeDomain.WATERMARK, watermark, 0), (TimeDomain.REAL_TIME, now, 1)):
            heap = self._heaps[domain]
            while heap and heap[0][0] <= marker:
                micros, _order, key = heapq.heappop(heap)
                if self._earliest.get(key, (None, None))[slot] == micros:
                    self.due[key] = None
        return list(self.due)


def _indexed_extract_transform_timers(self: Any) -> tuple[list[Any], bool]:
    """``_TransformWatermarks.extract_transform_timers`` through the index (fix 5)."""
    states = self._keyed_states
    if not isinstance(states, _NotingStates):
        return _original_extract(self)
    with self._lock:
        index = self.__dict__.get("_timer_index")
        if index is None:
            index = self._timer_index = _TimerIndex()
        index.note(states)
        if index.empty:
            # Most steps keep no timers; converting the watermark and the clock to
            # micros for them was 7% of the streaming job's time (py-spy, 450/s).
            return [], bool(index.realtime_keys)
        watermark, now = self._input_watermark, self._clock.time()
        fired = []
        for encoded_key in index.find_due(_micros(watermark), _micros(now)):
            timers, _ = states[encoded_key].get_timers(watermark=watermark, processing_time=now)
            for window, (name, time_domain, timestamp, dynamic_timer_tag) in timers:
                fired.append(watermark_manager.TimerFiring(encoded_key, window, name, time_domain, timestamp,
                                                           dynamic_timer_tag=dynamic_timer_tag))
        self._fired_timers.update(fired)
        return fired, bool(index.realtime_keys)


def _noting_keyed_states(self: Any, root_transforms: Any, value_to_consumers: Any) -> dict[Any, _NotingStates]:
    """``EvaluationContext._initialize_keyed_states`` with noting dicts (fix 5)."""
    states = {transform: _NotingStates() for transform in root_transforms}
    for consumers in value_to_consumers.values():
        for consumer in consumers:
            states[consumer] = _NotingStates()
    return states


def _cached_args_defaults(original: Callable[[Any], tuple[list[str], list[Any]]]
                          ) -> Callable[[Any], tuple[list[str], list[Any]]]:
    """``core.get_function_args_defaults`` remembered per plain function, and per
    function of a bound method (whose signature leaves out ``self``) (fix 6)."""
    cache: weakref.WeakKeyDictionary[types.FunctionType, dict[bool, tuple[list[str], list[Any]]]] = (
        weakref.WeakKeyDictionary())

    def get_function_args_defaults(f: Any) -> tuple[list[str], list[Any]]:
        bound = isinstance(f, types.MethodType)
        function = f.__func__ if bound else f
        if not isinstance(function, types.FunctionType):
            return original(f)
        per_function = cache.setdefault(function, {})
        found = per_function.get(bound)
        if found is None:
            found = per_function[bound] = original(f)
        return list(found[0]), list(found[1])

    return get_function_args_defaults


def _reusing_pardo_init(original: Callable[..., None]) -> Callable[..., None]:
    """``_ParDoEvaluator.__init__`` without the per-bundle pickle test (fix 6)."""

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._perform_dofn_pickle_test = False

    return init


_original_extract = watermark_manager._TransformWatermarks.extract_transform_timers
_applied = False
_applied_speed = False


def _skipping_empty(original: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """``schedule_consumers`` for bundles with elements only (fix 8)."""

    def schedule_consumers(self: Any, committed_bundle: Any) -> None:
        if committed_bundle.has_elements():
            original(self, committed_bundle)

    return schedule_consumers


def _waking_waiters(original: Callable[[Any], None]) -> Callable[[Any], None]:
    """An executor shutdown (a cancel) that also ends a wait in
    ``await_completion`` (fix 10): only a finished or failed job offered it
    anything to take."""

    def request_shutdown(self: Any) -> None:
        try:
            original(self)
        finally:
            self.visible_updates.offer(executor._ExecutorServiceParallelExecutor._VisibleExecutorUpdate())

    return request_shutdown


def _closing_prefetchers(original: Callable[[Any], None]) -> Callable[[Any], None]:
    """An executor's end (finished or cancelled) that also stops its Pub/Sub
    prefetchers (fix 9), so no thread keeps pulling for a pipeline that is done."""

    def end(self: Any) -> None:
        try:
            original(self)
        finally:
            direct_pubsub.close_prefetchers(self.evaluation_context._root_transforms)

    return end


#: ``gc.set_threshold`` of fix 7: a young collection every 100,000 net
#: allocations instead of 700 (batch job 33 -> 29.6 s on make bench's 200,000
#: records; with the collector off entirely, 28.6 s).
GC_THRESHOLDS = (100_000, 50, 1000)


#: Beam versions these workarounds were tested with (``tests/tools/test_direct_runner.py``,
#: the streaming tests and ``make bench``). They replace private Beam symbols, so
#: on any other version they refuse to apply rather than patch code they were not
#: written for.
TESTED_BEAM_VERSIONS = frozenset({"2.62.0"})


class UntestedBeamVersionError(RuntimeError):
    """The installed Beam is not one the workarounds were tested with."""


def check_beam_version(version: str | None = None) -> None:
    """Raise :class:`UntestedBeamVersionError` unless ``version`` (the installed
    Beam's by default) is in :data:`TESTED_BEAM_VERSIONS`."""
    import apache_beam

    version = version or apache_beam.__version__
    if version not in TESTED_BEAM_VERSIONS:
        raise UntestedBeamVersionError(
            f"tools/direct_runner: the DirectRunner workarounds were tested with Beam "
            f"{', '.join(sorted(TESTED_BEAM_VERSIONS))}, not {version}. Run tests/tools/test_direct_runner.py and "
            "the streaming tests against it, then add it to TESTED_BEAM_VERSIONS (or drop a workaround that "
            "Beam fixed upstream).")


def apply_direct_runner_fixes(*, speed: bool = True) -> None:
    """Idempotently install the workarounds (module docstring): fixes 1 and 2
    (correctness), 3 and 9 (Pub/Sub reads) and 10 (stopping a run) always, the speed fixes 4 to 8
    with ``speed``. Refuses an untested Beam version before patching anything."""
    global _applied
    check_beam_version()
    if _applied:
        if speed and not _applied_speed:
            _apply_speed_fixes()
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

    executor.TransformExecutor.__init__ = init
    executor.TransformExecutor.call = call
    transform_evaluator._PubSubReadEvaluator._read_from_pubsub = direct_pubsub.read_from_pubsub
    parallel = executor._ExecutorServiceParallelExecutor
    parallel.await_completion = _closing_prefetchers(parallel.await_completion)
    parallel.request_shutdown = _waking_waiters(_closing_prefetchers(parallel.request_shutdown))
    register_read_stopper([runners.STREAMING], direct_pubsub.stop_reading)
    _applied = True
    if speed:
        _apply_speed_fixes()


def _apply_speed_fixes() -> None:
    """Fixes 4 to 8: speed only (module docstring)."""
    global _applied_speed
    gc.set_threshold(*GC_THRESHOLDS)
    # is_stateful_dofn and the direct runner's state look the function up in
    # userstate; transform_evaluator imported its own reference.
    cached = _cached_dofn_specs(userstate.get_dofn_specs)
    userstate.get_dofn_specs = cached
    transform_evaluator.get_dofn_specs = cached
    evaluation_context.EvaluationContext._initialize_keyed_states = _noting_keyed_states
    watermark_manager._TransformWatermarks.extract_transform_timers = _indexed_extract_transform_timers
    transform_evaluator._ParDoEvaluator.__init__ = _reusing_pardo_init(transform_evaluator._ParDoEvaluator.__init__)
    core.get_function_args_defaults = _cached_args_defaults(core.get_function_args_defaults)
    parallel = executor._ExecutorServiceParallelExecutor
    parallel.schedule_consumers = _skipping_empty(parallel.schedule_consumers)
    _applied_speed = True
