"""The record-level error type and dead-letter records shared by every stage.

Per-record code (parse, validate, enrich) is plain functions that either return a
value or raise :class:`RecordError`. The DoFns around them turn the error into a
dead letter, so the functions stay pure and can later run over batches, and a
reason is always a stable machine-readable token (``missing_field:id``,
``unknown_reference:sim``) with a human explanation beside it.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import orjson

Kind = Literal["event", "usage"]
KINDS: tuple[Kind, ...] = ("event", "usage")


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


def payload_bytes(element: bytes | dict[str, Any]) -> bytes:
    """The original payload of an input element: raw bytes as received, or the
    JSON of a file row (rows from Avro and Parquet have no bytes of their own)."""
    if isinstance(element, bytes):
        return element
    return orjson.dumps(element, default=str)
