"""Malformed records and duplicates mixed into the valid streams, with their truth.

A sample that is all valid never exercises the dead-letter path, so the generator
injects what real archives contain: at-least-once duplicates (exact copies shortly
after the original) and malformed records, each with exactly one defect and the
dead-letter reason the pipeline must report for it. The generator knows what it
injected, so the manifest is ground truth the pipeline's counts are compared with.

Defects that only a text line can have (bad UTF-8, broken JSON, a field of the wrong
type, ...) exist in JSONL only; the others are schema-valid and so are written to
Avro and Parquet as well.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.catalogues import EVENT_TYPES
from tools.sample_fleet.records import Draft

MAX_LINE_BYTES = 65_536
EVENT_ID_START = 4_301_370_700
USAGE_ID_START = 174_321_498
DUPLICATE_MAX_LAG = 8

Record = dict[str, Any]


@dataclass(frozen=True)
class Line:
    """One line of a JSONL file, and the row it is in Avro and Parquet if it has one.

    ``record`` is None for JSONL-only defects, whose bytes are in ``raw``.
    ``reason`` is the expected dead-letter reason, None for a valid record.
    """

    record: Record | None
    raw: bytes | None = None
    reason: str | None = None
    duplicate: bool = False

    def jsonl(self) -> bytes:
        return self.raw if self.raw is not None else dumps(self.record)


@dataclass(frozen=True)
class DefectContext:
    """What defects need to know about the reference data."""

    taken_ids: frozenset[int]
    imsis: tuple[tuple[str, int, int], ...]

    def unknown_id(self, rng: random.Random) -> int:
        """An id that exists in no reference table."""
        while True:
            candidate = rng.randint(900_000_000, 999_999_999)
            if candidate not in self.taken_ids:
                return candidate

    def foreign_imsi(self, rng: random.Random, sim_id: int, organisation_id: int) -> str:
        """An existing IMSI of another SIM, of the same organisation where there is one,
        so that the IMSI-SIM pairing is the only thing wrong with the record."""
        others = [(imsi, org) for imsi, sim, org in self.imsis if sim != sim_id]
        same = [imsi for imsi, org in others if org == organisation_id]
        return rng.choice(same or [imsi for imsi, _ in others])


Make = Callable[[random.Random, Record, DefectContext], "Record | bytes"]


@dataclass(frozen=True)
class Defect:
    """One kind of malformed record: its reason, where it can be based, how it is made."""

    reason: str
    jsonl_only: bool
    applies: Callable[[Record], bool]
    make: Make


def dumps(record: Record | None) -> bytes:
    """A JSONL line without the newline; keys in schema order, UTF-8, compact."""
    return orjson.dumps(record)


def _any(_: Record) -> bool:
    return True


def _of_types(*types: int) -> Callable[[Record], bool]:
    return lambda r: r["event_type_id"] in types


def _organisation_only(r: Record) -> bool:
    """Events naming nothing but their organisation: a bad organisation id is their only defect."""
    return r["event_type_id"] in (0, 7, 12) and r["endpoint_id"] is None and r["user_id"] is None


def _data(r: Record) -> bool:
    return r["traffic_type_id"] == 5


def _without(field: str) -> Make:
    return lambda rng, r, ctx: {k: v for k, v in r.items() if k != field}


def _with(field: str, value: Any) -> Make:
    return lambda rng, r, ctx: {**r, field: value}


def _empty(rng: random.Random, r: Record, ctx: DefectContext) -> bytes:
    return b""


def _bad_bytes_in(field: str) -> Make:
    """Bytes that are not UTF-8 inside a string value; the rest of the line is fine."""
    def make(rng: random.Random, r: Record, ctx: DefectContext) -> bytes:
        line = dumps(r)
        marker = f'"{field}":"'.encode()
        cut = line.index(marker) + len(marker)
        return line[:cut] + b"\xff\xfe" + line[cut:]
    return make


def _truncated(rng: random.Random, r: Record, ctx: DefectContext) -> bytes:
    """A prefix of the object, cut before an ASCII byte so it stays valid UTF-8."""
    line = dumps(r)
    cut = rng.randint(len(line) // 3, len(line) - 2)
    while line[cut] >= 0x80:
        cut -= 1
    return line[:cut]


def _not_an_object(rng: random.Random, r: Record, ctx: DefectContext) -> bytes:
    return b"[" + dumps(r) + b"]" if rng.random() < 0.5 else str(r["id"]).encode()


def _oversized(rng: random.Random, r: Record, ctx: DefectContext) -> bytes:
    """A valid event whose description carries a diagnostic dump past the line limit."""
    dump = "".join(f"{rng.getrandbits(32):08x}" for _ in range(MAX_LINE_BYTES // 8 + 64))
    return dumps({**r, "description": f"{r['description']} Diagnostic trace: {dump}"})


def _bad_timestamp(field: str) -> Make:
    """Either an impossible date or the same wall time without an offset."""
    def make(rng: random.Random, r: Record, ctx: DefectContext) -> Record:
        value = "2026-13-45T99:00:00Z" if rng.random() < 0.5 else r[field][:19]
        return {**r, field: value}
    return make


def _imsi_with_letters(rng: random.Random, r: Record, ctx: DefectContext) -> Record:
    return {**r, "imsi": r["imsi"][:9] + "ABC" + r["imsi"][12:]}


def _negative_rx(rng: random.Random, r: Record, ctx: DefectContext) -> Record:
    return {**r, "volume_rx": -max(1, r["volume_rx"])}


def _end_before_start(rng: random.Random, r: Record, ctx: DefectContext) -> Record:
    return {**r, "start_timestamp": r["end_timestamp"], "end_timestamp": r["start_timestamp"]}


def _unknown(field: str, *clear: str) -> Make:
    """An id found in no reference table; ``clear`` drops optional references that
    could otherwise be checked against it (a second, different defect)."""
    def make(rng: random.Random, r: Record, ctx: DefectContext) -> Record:
        return {**r, field: ctx.unknown_id(rng), **dict.fromkeys(clear)}
    return make


def _foreign_imsi(rng: random.Random, r: Record, ctx: DefectContext) -> Record:
    return {**r, "imsi": ctx.foreign_imsi(rng, r["sim_id"], r["organisation_id"])}


def _common_jsonl_defects(text_field: str) -> tuple[Defect, ...]:
    return (
        Defect("empty", True, _any, _empty),
        Defect("not_utf8", True, _any, _bad_bytes_in(text_field)),
        Defect("not_json", True, _any, _truncated),
        Defect("not_an_object", True, _any, _not_an_object),
        Defect("missing_field:id", True, _any, _without("id")),
        Defect("wrong_type:id", True, _any, _with("id", "abc")),
    )


def event_defects() -> tuple[Defect, ...]:
    """Defect kinds of events; all reasons are tokens of the dead-letter contract."""
    location = _of_types(1, 2)
    return (
        *_common_jsonl_defects("description"),
        Defect("oversized", True, _any, _oversized),
        Defect("missing_field:timestamp", True, _any, _without("timestamp")),
        Defect("missing_field:imsi", True, location, _without("imsi")),
        Defect("missing_field:pdp_context", True, _of_types(3), _without("pdp_context")),
        Defect("missing_field:volume_rx_bytes", True, _of_types(5), _without("volume_rx_bytes")),
        Defect("missing_field:user_id", True, _of_types(6), _without("user_id")),
        Defect("wrong_type:alert", True, _any, _with("alert", "yes")),
        Defect("invalid_timestamp:timestamp", False, _any, _bad_timestamp("timestamp")),
        Defect("unknown_event_type", False, _organisation_only, _with("event_type_id", 42)),
        Defect("invalid_value:imsi", False, location, _imsi_with_letters),
        Defect("unknown_reference:sim", False, _of_types(8, 9, 10), _unknown("sim_id", "endpoint_id")),
        Defect("unknown_reference:organisation", False, _organisation_only, _unknown("organisation_id")),
        Defect("unknown_reference:endpoint", False, _of_types(11, 15), _unknown("endpoint_id")),
        Defect("unknown_reference:user", False, _of_types(6, 13, 14), _unknown("user_id")),
        Defect("unknown_reference:operator", False, location, _unknown("operator_id")),
        Defect("reference_mismatch:imsi_sim", False, location, _foreign_imsi),
    )


def usage_defects() -> tuple[Defect, ...]:
    """Defect kinds of usage records.

    Unknown SIM, organisation or endpoint ids are left to events: in a usage record
    they would also contradict the record's other references, two defects at once.
    """
    return (
        *_common_jsonl_defects("imsi"),
        Defect("missing_field:start_timestamp", True, _any, _without("start_timestamp")),
        Defect("missing_field:cost", True, _any, _without("cost")),
        Defect("missing_field:imsi", True, _any, _without("imsi")),
        Defect("wrong_type:volume_rx", True, _any, _with("volume_rx", 1.5)),
        Defect("wrong_type:final", True, _any, _with("final", "yes")),
        Defect("invalid_timestamp:start_timestamp", False, _any, _bad_timestamp("start_timestamp")),
        Defect("invalid_timestamp:end_timestamp", False, _any, _bad_timestamp("end_timestamp")),
        Defect("invalid_value:volume_rx", False, _data, _negative_rx),
        Defect("invalid_value:end_timestamp", False, _data, _end_before_start),
        Defect("invalid_value:imsi", False, _any, _imsi_with_letters),
        Defect("unknown_reference:operator", False, _any, _unknown("operator_id")),
        Defect("unknown_reference:tariff", False, _any, _unknown("tariff_id")),
        Defect("reference_mismatch:imsi_sim", False, _any, _foreign_imsi),
    )


def _defect_plan(rng: random.Random, drafts: Sequence[Draft], defects: Sequence[Defect],
                 count: int) -> dict[int, list[Defect]]:
    """Which defects go after which valid record.

    Kinds are dealt round-robin from a shuffled order so every kind appears once
    the count allows; each is based on a record it applies to, never the last one
    (a trailing blank line is something readers disagree about).
    """
    usable = [(d, [i for i, x in enumerate(drafts[:-1]) if d.applies(x.fields)]) for d in defects]
    usable = [(d, positions) for d, positions in usable if positions]
    if not usable:
        return {}
    rng.shuffle(usable)
    plan: dict[int, list[Defect]] = {}
    for k in range(count):
        defect, positions = usable[k % len(usable)]
        plan.setdefault(rng.choice(positions), []).append(defect)
    return plan


def mix(seed: int, kind: str, drafts: Sequence[Draft], defects: Sequence[Defect], ctx: DefectContext,
        duplicate_rate: float, malformed_rate: float) -> list[Line]:
    """The file's lines: valid records with ids, defects after their base, duplicates after those.

    Counts: ``round(duplicate_rate * valid)`` duplicates and malformed lines making
    ``malformed_rate`` of all lines.
    """
    rng = random.Random(f"{seed}:defects:{kind}")
    duplicates = round(duplicate_rate * len(drafts))
    malformed = round(malformed_rate * (len(drafts) + duplicates) / (1 - malformed_rate))
    plan = _defect_plan(rng, drafts, defects, malformed)
    ids = random.Random(f"{seed}:ids:{kind}")
    next_id = EVENT_ID_START if kind == "event" else USAGE_ID_START
    lines: list[Line] = []
    for index, draft in enumerate(drafts):
        for defect in (None, *plan.get(index, ())):
            record = {"id": next_id, **draft.fields}
            next_id += ids.randint(1, 7)
            if defect is None:
                lines.append(Line(record))
                continue
            made = defect.make(rng, record, ctx)
            if defect.jsonl_only:
                raw = made if isinstance(made, bytes) else dumps(made)
                lines.append(Line(None, raw, defect.reason))
            elif isinstance(made, dict):
                lines.append(Line(made, None, defect.reason))
            else:
                raise TypeError(f"defect {defect.reason} must make a record for Avro and Parquet")
    return _with_duplicates(rng, lines, duplicates)


def _with_duplicates(rng: random.Random, lines: list[Line], count: int) -> list[Line]:
    """Exact copies of distinct valid records, each a few lines after its original."""
    valid = [i for i, line in enumerate(lines) if line.reason is None]
    after: dict[int, list[Line]] = {}
    for original in sorted(rng.sample(valid, min(count, len(valid)))):
        target = min(len(lines) - 1, original + rng.randint(1, DUPLICATE_MAX_LAG))
        after.setdefault(target, []).append(Line(lines[original].record, duplicate=True))
    mixed = []
    for index, line in enumerate(lines):
        mixed.append(line)
        mixed.extend(after.get(index, ()))
    return mixed


def line_stats(lines: Sequence[Line], with_event_types: bool) -> dict[str, Any]:
    """Manifest statistics of one file: the counts the pipeline must report."""
    valid = [line for line in lines if line.reason is None and not line.duplicate]
    stats: dict[str, Any] = {
        "lines": len(lines),
        "valid_unique": len(valid),
        "duplicates": sum(line.duplicate for line in lines),
        "dead_letters": dict(sorted(Counter(line.reason for line in lines if line.reason).items())),
    }
    if with_event_types:
        counts = Counter(line.record["event_type_id"] for line in valid if line.record is not None)
        stats["event_types"] = {str(t): counts.get(t, 0) for t in EVENT_TYPES}
    return stats


def schema_valid(lines: Sequence[Line]) -> list[Line]:
    """The lines that are rows of the Avro and Parquet files (no JSONL-only defects)."""
    return [line for line in lines if line.record is not None]
