"""Timestamp parsing and the output formats of the product guide.

Raw records carry ISO 8601 timestamps with an explicit offset; a timestamp without
one is ambiguous (network elements run in local time more often than one would
like) and is rejected rather than guessed. Output formats are the guide's samples:

- events and entity dates: ``2019-07-17T16:28:00.000+0000`` (UTC, milliseconds)
- PDP context ``tunnel_created``: ``2019-12-11T05:49:29`` (UTC, as in sample 5.1.2)
- usage records: ``2019-07-17 08:21:11`` (UTC, sample 5.2)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def parse_iso(value: str) -> datetime:
    """Parse an ISO 8601 date-time with offset into an aware UTC datetime.

    Raises ``ValueError`` for anything else, including date-only values and
    date-times without an offset.
    """
    if len(value) < 20 or value[10] not in "Tt ":
        raise ValueError(f"not an ISO 8601 date-time with offset: {value!r}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp has no UTC offset: {value!r}")
    return parsed.astimezone(UTC)


def to_epoch_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _ONE_MS


def from_epoch_ms(millis: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=millis)


def format_event_time(moment: datetime) -> str:
    """``2019-07-17T16:28:00.000+0000``: the events' and entity dates' format."""
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}+0000"


def format_tunnel_time(moment: datetime) -> str:
    """``2019-12-11T05:49:29``: the PDP context's ``tunnel_created`` format."""
    return f"{moment:%Y-%m-%dT%H:%M:%S}"


def format_usage_time(moment: datetime) -> str:
    """``2019-07-17 08:21:11``: the usage records' format."""
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds: when a batch was parked,
    a request started, a status was updated. One format for all of them, so they
    sort and compare as text."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")
