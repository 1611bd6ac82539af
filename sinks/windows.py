"""Fixed windows whose size is chosen per element, for the sinks that write per
window, built from state and timers so that every runner can run them.

Each S3 stream has its own rotation and each DataDog stream its own aggregation
interval, so one ``FixedWindows(size)`` cannot serve all streams of a branch. The
windows are epoch-aligned ``[start, start + size)``, with ``size`` read from the
element's key, so a replay of the same data gets the same windows and the same
file names.

Why not a ``WindowFn``: a custom Python ``WindowFn`` is only understood by the
Python runners. Java runners (Flink, and so every production runner but
Dataflow) refuse the job: "Unknown or unsupported WindowFn:
beam:window_fn:pickled_python:v1" (Beam's portable Flink runner knows only the
standard window functions; apache/beam#20641 and #20365 track custom ones). So
:class:`GroupPerElementWindow` keeps the elements of one key and window in keyed
state in the global window and fires with timers, as Beam's own windowing would:

- the on-time pane when the watermark passes the window's end (pane index 0);
- a late pane for the elements that arrive after it, within the allowed
  lateness, a moment later (a processing-time timer: every bundle of late
  elements becomes one pane, as ``AfterWatermark(late=AfterCount(1))`` fired);
- the window's state is dropped once the watermark is past its end plus the
  lateness, with a margin: the job's lateness gate (``transforms/lateness.py``)
  lets nothing later through, and a window seen again after that would reuse
  pane index 0 and with it an S3 file name.

Panes discard what they fired, so every element is in exactly one pane. A pane
leaves as a :class:`WindowedGroup` stamped with its window's maximum timestamp
(what a ``GroupByKey``'s default timestamp combiner gives), and the sinks read the
window and the pane from it (``sinks/base.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindows, IntervalWindow, TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp
from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming

#: How long past its end plus the allowed lateness a window's state is kept (see above).
EXPIRY_MARGIN_SECONDS = 60


@dataclass(frozen=True)
class WindowedGroup:
    """One pane of one key's window: what a ``GroupByKey`` in that window gave."""

    key: Any
    values: list[Any]
    window: IntervalWindow
    pane: PaneInfo

    def pair(self) -> tuple[Any, list[Any]]:
        return self.key, self.values


def window_of(timestamp: Timestamp, size_seconds: int) -> IntervalWindow:
    """The epoch-aligned window of ``size_seconds`` holding ``timestamp``."""
    if size_seconds <= 0:
        raise ValueError(f"window size must be positive, got {size_seconds}")
    micros = timestamp.micros
    size_micros = size_seconds * 1_000_000
    start = micros - micros % size_micros
    return IntervalWindow(Timestamp(micros=start), Timestamp(micros=start + size_micros))


def size_from_key(element: tuple[tuple[Any, ...], Any]) -> int:
    """The window size when the element is ``(key, value)`` and the size is the
    key's last item."""
    return element[0][-1]


def _pane(index: int) -> PaneInfo:
    timing = PaneInfoTiming.ON_TIME if index == 0 else PaneInfoTiming.LATE
    return PaneInfo(is_first=index == 0, is_last=False, timing=timing, index=index, nonspeculative_index=index)


class _KeyByWindow(beam.DoFn):
    """``(key, value)`` -> ``((key, window start µs, window end µs), value)``."""

    def __init__(self, size_seconds: Callable[[Any], int]) -> None:
        self._size_seconds = size_seconds

    def process(self, element: tuple[Any, Any], timestamp: Any = beam.DoFn.TimestampParam) -> Iterator[Any]:
        window = window_of(timestamp, int(self._size_seconds(element)))
        yield (element[0], window.start.micros, window.end.micros), element[1]


class _FirePanes(beam.DoFn):
    """Buffers a key-and-window's elements and fires its panes (module docstring)."""

    BUFFER = BagStateSpec("buffer", coders.FastPrimitivesCoder())
    PANES = ReadModifyWriteStateSpec("panes", coders.VarIntCoder())
    ON_TIME = TimerSpec("on_time", TimeDomain.WATERMARK)
    LATE = TimerSpec("late", TimeDomain.REAL_TIME)
    EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)
    _BUFFER_PARAM = beam.DoFn.StateParam(BUFFER)
    _PANES_PARAM = beam.DoFn.StateParam(PANES)
    _ON_TIME_PARAM = beam.DoFn.TimerParam(ON_TIME)
    _LATE_PARAM = beam.DoFn.TimerParam(LATE)
    _EXPIRY_PARAM = beam.DoFn.TimerParam(EXPIRY)

    def __init__(self, allowed_lateness_seconds: int) -> None:
        self._keep_seconds = allowed_lateness_seconds + EXPIRY_MARGIN_SECONDS

    def process(self, element: Any, buffer: Any = _BUFFER_PARAM, panes: Any = _PANES_PARAM,
                on_time: Any = _ON_TIME_PARAM, late: Any = _LATE_PARAM, expiry: Any = _EXPIRY_PARAM) -> None:
        (_, _start, end), value = element
        buffer.add(value)
        if not panes.read():
            window_end = Timestamp(micros=end)
            on_time.set(window_end - Duration(micros=1))
            expiry.set(window_end + Duration(seconds=self._keep_seconds))
        else:
            late.set(Timestamp.now())

    def _fire(self, key: Any, buffer: Any, panes: Any) -> Iterator[TimestampedValue]:
        values = list(buffer.read())
        if not values:
            return
        buffer.clear()
        index = panes.read() or 0
        panes.write(index + 1)
        original, start, end = key
        window = IntervalWindow(Timestamp(micros=start), Timestamp(micros=end))
        yield TimestampedValue(WindowedGroup(original, values, window, _pane(index)), window.max_timestamp())

    @on_timer(ON_TIME)
    def on_time_pane(self, key: Any = beam.DoFn.KeyParam, buffer: Any = _BUFFER_PARAM,
                     panes: Any = _PANES_PARAM) -> Iterator[TimestampedValue]:
        yield from self._fire(key, buffer, panes)

    @on_timer(LATE)
    def late_pane(self, key: Any = beam.DoFn.KeyParam, buffer: Any = _BUFFER_PARAM,
                  panes: Any = _PANES_PARAM) -> Iterator[TimestampedValue]:
        if panes.read():  # a late timer that fires before the on-time pane (it cannot; cheap to check)
            yield from self._fire(key, buffer, panes)

    @on_timer(EXPIRY)
    def expire(self, key: Any = beam.DoFn.KeyParam, buffer: Any = _BUFFER_PARAM,
               panes: Any = _PANES_PARAM) -> Iterator[TimestampedValue]:
        yield from self._fire(key, buffer, panes)
        buffer.clear()
        panes.clear()


class GroupPerElementWindow(beam.PTransform):
    """``(key, value)`` with event-time timestamps -> a :class:`WindowedGroup` per
    key, epoch-aligned window of ``size_seconds(element)`` and pane: the
    on-time pane when the watermark passes the window's end, then one per bundle
    of late elements up to ``allowed_lateness_seconds`` (streaming; a bounded run
    fires once per window), in the input's windows. Runs on every runner (module
    docstring)."""

    def __init__(self, size_seconds: Callable[[Any], int], allowed_lateness_seconds: int = 0) -> None:
        super().__init__()
        self._size_seconds = size_seconds
        self._lateness = allowed_lateness_seconds

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        # The panes go back into the input's windowing, by their timestamps, so
        # the steps after the sink see the windowing they gave it (the job's is
        # the global window).
        windowfn = pcoll.windowing.windowfn
        return (
            pcoll
            | "Unwindow" >> beam.WindowInto(GlobalWindows())
            | "KeyByWindow" >> beam.ParDo(_KeyByWindow(self._size_seconds))
            | "FirePanes" >> beam.ParDo(_FirePanes(self._lateness))
            | "Rewindow" >> beam.WindowInto(windowfn)
        )
