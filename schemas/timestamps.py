"""Timestamp parsing and the output formats of the product guide.

Raw records carry ISO 8601 timestamps with an explicit offset; a timestamp without
one is ambiguous (network elements run in local time more often than one would
like) and is rejected rather than guessed. Output formats are the guide's samples:

- events and entity dates: ``2019-07-17T16:28:00.000+0000`` (UTC, milliseconds)
- PDP context ``tunnel_created``: ``2019-12-11T05:49:29`` (UTC, as in sample 5.1.2)
- usage records: ``2019-07-17 08:21:11`` (UTC, sample 5.2)

Accepted range: from :data:`EARLIEST` (1970-01-01T00:00:00Z) up to, not including,
:data:`LATEST` (9999-01-01T00:00:00Z), in UTC. Nothing the platform records predates
the Unix epoch, and a timestamp before it is a producer's zeroed or garbled clock;
the last year is kept free so that everything the job derives from a timestamp
(windows, de-duplication horizons, the 7 days of history before a stream's
``created_at``, S3 file names) stays inside what ``datetime`` can represent. Within
the range every output format has a four-digit year; the formatters pad anyway,
since ``%Y`` does not on every platform.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.records import RecordError, quote

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
#: The first accepted instant (inclusive).
EARLIEST = _EPOCH
#: The end of the accepted range (exclusive).
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
#: The shortest and longest text that can be an ISO 8601 date-time with offset
#: (``2019-07-17T16:28:00Z`` to nanoseconds and ``+02:00:00.000000``); longer
#: text is refused before the parser sees it.
_MIN_LENGTH, _MAX_LENGTH = 20, 48
#: The reason of every refused timestamp; callers add the field (``invalid_timestamp:timestamp``).
INVALID_TIMESTAMP = "invalid_timestamp"


def parse_iso(value: Any) -> datetime:
    """Parse an ISO 8601 date-time with offset into an aware UTC datetime.

    Raises :class:`~schemas.records.RecordError` (``invalid_timestamp``, a
    ``ValueError``) for anything else: not a string, date-only values, date-times
    without an offset, and instants outside [:data:`EARLIEST`, :data:`LATEST`),
    including those whose offset would carry them past year 1 or 9999 (where
    ``datetime`` itself overflows). The message quotes a bounded prefix of the value.
    """
    if not isinstance(value, str):
        raise RecordError(INVALID_TIMESTAMP, f"not an ISO 8601 date-time with offset: a {type(value).__name__}")
    if not _MIN_LENGTH <= len(value) <= _MAX_LENGTH or value[10] not in "Tt " or not value.isascii():
        raise RecordError(INVALID_TIMESTAMP, f"not an ISO 8601 date-time with offset: {quote(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RecordError(INVALID_TIMESTAMP, f"not an ISO 8601 date-time with offset: {quote(value)}") from None
    if parsed.tzinfo is None:
        raise RecordError(INVALID_TIMESTAMP, f"timestamp has no UTC offset: {quote(value)}")
    try:
        moment = parsed.astimezone(UTC)
    except OverflowError:
        moment = None
    if moment is None or not EARLIEST <= moment < LATEST:
        raise RecordError(INVALID_TIMESTAMP, f"timestamp is outside 1970-01-01T00:00:00Z to 9998-12-31T23:59:59Z "
                                             f"(UTC): {quote(value)}")
    return moment


def to_epoch_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _ONE_MS


def from_epoch_ms(millis: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=millis)


def _date_time(moment: datetime, separator: str) -> str:
    """``YYYY-MM-DD<separator>HH:MM:SS`` with a four-digit year on every platform."""
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}{separator}"
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}")


def format_event_time(moment: datetime) -> str:
    """``2019-07-17T16:28:00.000+0000``: the events' and entity dates' format."""
    return f"{_date_time(moment, 'T')}.{moment.microsecond // 1000:03d}+0000"


def format_tunnel_time(moment: datetime) -> str:
    """``2019-12-11T05:49:29``: the PDP context's ``tunnel_created`` format."""
    return _date_time(moment, "T")


def format_usage_time(moment: datetime) -> str:
    """``2019-07-17 08:21:11``: the usage records' format."""
    return _date_time(moment, " ")


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds: when a batch was parked,
    a request started, a status was updated. One format for all of them, so they
    sort and compare as text."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")
