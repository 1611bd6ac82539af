"""The record-level error type and dead-letter records shared by every stage.

Per-record code (parse, validate, enrich) is plain functions that either return a
value or raise :class:`RecordError`. The DoFns around them turn the error into a
dead letter, so the functions stay pure and can later run over batches, and a
reason is always a stable machine-readable token (``missing_field:id``,
``unknown_reference:sim``) with a human explanation beside it.
"""

from __future__ import annotations

import base64
from typing import Any, Literal, NamedTuple

import orjson

Kind = Literal["event", "usage"]
KINDS: tuple[Kind, ...] = ("event", "usage")

#: The most characters of an untrusted value any error message quotes: enough to
#: recognise it, never enough to flood a log or a terminal.
QUOTE_LIMIT = 60


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr`` of an untrusted value for an error message, cut to ``limit``
    characters (``...`` and the full length appended when cut).

    Never raises: an integer too long for ``repr`` (Python refuses more than 4,300
    digits) is described by its size instead, and a container is cut before it
    is rendered whole, so a YAML alias bomb or a 1 GB cell costs nothing to quote.
    """
    if isinstance(value, (str, bytes)):
        text = repr(value[: limit + 1])
        if len(value) > limit:
            return f"{text[:limit]}... ({len(value):,} {'characters' if isinstance(value, str) else 'bytes'})"
        return text
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length():,} bits"
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return f"a {type(value).__name__} of {len(value):,} items"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still described
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else f"{text[:limit]}..."


class RecordError(ValueError):
    """A record cannot become a customer document.

    ``reason`` is a stable token used for counting and routing; ``detail`` is for
    people and never contains secrets (records carry none).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def dead_letter(
    kind: Kind, stage: str, reason: str, detail: str, payload: bytes, record_id: int | None = None
) -> dict[str, Any]:
    """A dead-letter record (``schemas/avro/dead_letter.avsc``)."""
    return {
        "kind": kind,
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "record_id": record_id,
        "payload": payload,
    }


def dead_letter_json(letter: dict[str, Any]) -> bytes:
    """JSON line of a dead letter; the payload is base64 so any bytes survive."""
    out = dict(letter)
    out["payload"] = base64.b64encode(letter["payload"]).decode("ascii")
    return orjson.dumps(out)


def nesting_depth(value: Any, limit: int) -> int:
    """How deep lists and dicts nest in ``value`` (a scalar is 0), looking no
    further than ``limit + 1`` levels. Iterative: a recursive walk would itself
    fail on the documents this guards against."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, (list, tuple)):
            deepest = max(deepest, depth)
            if depth <= limit:
                stack.extend((child, depth + 1) for child in item)
    return deepest


class Unreadable(NamedTuple):
    """The part of an input file a reader could not decode (a truncated Avro
    file, invalid UTF-8 in an Avro string, a damaged Parquet row group).

    Readers emit it in the place of the rows they could not read, so the parser
    turns it into a dead letter like any other bad record (``reason`` and
    ``detail``, which names the file and the row or byte offset) and the run's
    counts still reconcile. ``payload`` is a bounded prefix of the unreadable bytes.
    """

    reason: str
    detail: str
    payload: bytes


def payload_bytes(element: bytes | dict[str, Any] | Unreadable) -> bytes:
    """The original payload of an input element: raw bytes as received, the JSON
    of a file row (rows from Avro and Parquet have no bytes of their own), or the
    bytes a reader could not decode.

    Never raises, because it builds dead letters: a row JSON cannot hold (an
    integer beyond 64 bits, a string with lone surrogates) falls back to its
    ``repr``.
    """
    if isinstance(element, bytes):
        return element
    if isinstance(element, Unreadable):
        return element.payload
    try:
        return orjson.dumps(element, default=str, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return repr(element).encode("utf-8", "backslashreplace")
    except ValueError:  # an integer too long for repr
        return f"<a {type(element).__name__} that cannot be shown>".encode()
