"""The time and delivery order of customer documents.

Sinks send each stream's documents in time order (per endpoint, as far as the
destination allows), and S3 names files by time. Events print their time as
``2019-07-17T16:28:00.000+0000`` and usage records as ``2019-07-17 08:21:11`` (both
UTC, guide section 5), so one "both" stream needs one time line for the two: the
usage record's time is the end of its interval, when the network emitted it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

TIME_FIELD = {"event": "timestamp", "usage": "end_timestamp"}
_TIME_FORMAT = {"event": "%Y-%m-%dT%H:%M:%S.%f%z", "usage": "%Y-%m-%d %H:%M:%S"}


def document_time(kind: str, document: Mapping[str, Any]) -> datetime:
    """The document's time as an aware UTC datetime."""
    moment = datetime.strptime(document[TIME_FIELD[kind]], _TIME_FORMAT[kind])
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def order_key(kind: str, document: Mapping[str, Any]) -> tuple[str, int]:
    """Sort key: time, then id. Both formats are brought to
    ``2019-07-17 16:28:00.000`` by slicing, which is exact for the two fixed UTC
    formats and much cheaper than parsing (it runs once per document per sink);
    comparing the raw strings instead would put a day's usage before its events."""
    stamp = document[TIME_FIELD[kind]]
    moment = f"{stamp}.000" if kind == "usage" else f"{stamp[:10]} {stamp[11:23]}"
    return moment, document["id"]
