"""Instants and their ISO 8601 renderings for the sample fleet.

The generator keeps every instant as integer milliseconds since the epoch (UTC), so
ordering and interval arithmetic are exact, and renders it only when a record is
written. Producers in the field do not agree on one rendering, so a few records use
``+00:00``, ``+0000`` or a local offset: the parser must accept all of them as the
same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MS_PER_SECOND = 1_000
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000


@dataclass(frozen=True)
class TimeStyle:
    """How an instant is rendered: its offset in minutes and the offset notation.

    ``notation`` is ``"Z"`` (only for offset 0), ``"colon"`` (``+02:00``) or
    ``"compact"`` (``+0200``, as in the guide's samples).
    """

    offset_minutes: int
    notation: str


ZULU = TimeStyle(0, "Z")

#: Renderings of raw timestamps with their weights: mostly ``Z``.
_STYLE_WEIGHTS: tuple[tuple[TimeStyle, int], ...] = (
    (ZULU, 900),
    (TimeStyle(0, "colon"), 40),
    (TimeStyle(0, "compact"), 20),
    (TimeStyle(120, "colon"), 15),
    (TimeStyle(60, "colon"), 15),
    (TimeStyle(-300, "colon"), 10),
)


def pick_style(rng: random.Random) -> TimeStyle:
    """A rendering for one raw record, drawn with the field's typical mix."""
    styles, weights = zip(*_STYLE_WEIGHTS, strict=True)
    return rng.choices(styles, weights=weights)[0]


def parse_start(text: str) -> int:
    """Milliseconds of an ISO date or date-time; a naive value is taken as UTC."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * MS_PER_SECOND)


def render(ms: int, style: TimeStyle = ZULU) -> str:
    """``YYYY-MM-DDTHH:MM:SS.fff`` in the style's offset, followed by that offset."""
    local = datetime(1970, 1, 1) + timedelta(milliseconds=ms + style.offset_minutes * 60_000)
    text = local.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % MS_PER_SECOND:03d}"
    if style.notation == "Z":
        return text + "Z"
    sign = "+" if style.offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(style.offset_minutes), 60)
    separator = ":" if style.notation == "colon" else ""
    return f"{text}{sign}{hours:02d}{separator}{minutes:02d}"


def render_naive(ms: int) -> str:
    """The UTC wall time without any offset: a defect the parser must reject."""
    return render(ms)[:19]


def hour_of_day(ms: int) -> int:
    """UTC hour of an instant, for the day and night rhythm."""
    return (ms % MS_PER_DAY) // MS_PER_HOUR
