"""Fixed windows whose size is chosen per element.

Each S3 stream has its own rotation and each DataDog stream its own aggregation
interval, so one ``FixedWindows(size)`` cannot serve all streams of a branch. This
WindowFn reads the size from the element (the routing step puts it in the key)
and otherwise behaves exactly like ``FixedWindows``: windows aligned to the epoch,
so a replay of the same data gets the same windows and the same file names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apache_beam.coders import coders
from apache_beam.transforms.window import IntervalWindow, NonMergingWindowFn
from apache_beam.utils.timestamp import Timestamp


class PerElementFixedWindows(NonMergingWindowFn):
    """``FixedWindows`` with ``size_seconds(element)`` as the size."""

    def __init__(self, size_seconds: Callable[[Any], int]) -> None:
        self._size_seconds = size_seconds

    def assign(self, context: NonMergingWindowFn.AssignContext) -> list[IntervalWindow]:
        size = int(self._size_seconds(context.element))
        if size <= 0:
            raise ValueError(f"window size must be positive, got {size}")
        micros = context.timestamp.micros
        size_micros = size * 1_000_000
        start = micros - micros % size_micros
        return [IntervalWindow(Timestamp(micros=start), Timestamp(micros=start + size_micros))]

    def get_window_coder(self) -> coders.Coder:
        return coders.IntervalWindowCoder()


def size_from_key(element: tuple[tuple[Any, ...], Any]) -> int:
    """The window size when the element is ``(key, value)`` and the size is the
    key's last item."""
    return element[0][-1]
