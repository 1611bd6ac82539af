"""Deterministic sample fleet: reference data and a week of raw events and usage.

``make run-local`` and the tests need input that looks like production: real
networks, customers with SIMs, multi-IMSI SIMs, data sessions with 45 s interim
usage records, a day and night rhythm, and the duplicates and malformed records an
at-least-once archive really contains. The generator writes that, and a manifest
with the exact counts the pipeline must report (valid unique records, duplicates,
dead letters by reason, events by type), so a run can be checked, not eyeballed.

The same seed and options give byte-identical files: every random draw comes from a
``random.Random`` seeded with the seed and a purpose (reference, one device, the
portal, defects, ...), nothing reads the clock, and all ordering is explicit.

Run::

    python -m tools.sample_fleet --output_dir data/sample --seed 7
    python -m tools.sample_fleet --output_dir /tmp/fleet --days 1 --reference_format csv \\
        --formats jsonl,parquet

Layout: ``reference/<entity>.<json|csv|parquet>``, ``raw/{events,usage}.{jsonl,avro,parquet}``
and ``manifest.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from schemas import REFERENCE_ENTITIES
from tools.sample_fleet.clock import MS_PER_DAY, parse_start
from tools.sample_fleet.defects import (
    DefectContext,
    Line,
    event_defects,
    line_stats,
    mix,
    schema_valid,
    usage_defects,
)
from tools.sample_fleet.files import (
    RAW_FORMATS,
    REFERENCE_FORMATS,
    remove_stale,
    write_raw,
    write_reference,
)
from tools.sample_fleet.plan import Period
from tools.sample_fleet.records import build_streams
from tools.sample_fleet.reference import Fleet, build_fleet, reference_rows

#: Sized so the default week is about 40,000 raw records: big enough to show the
#: rhythm and every defect kind, small enough for the DirectRunner in well under 2 min.
DEFAULT_ENDPOINTS = 180
RAW_FILES = (("events", "raw_event", "event"), ("usage", "raw_usage", "usage"))


@dataclass(frozen=True)
class FleetOptions:
    """Everything that shapes the output besides the output directory."""

    seed: int = 7
    start: str = "2026-11-01T00:00:00Z"
    days: int = 7
    organisations: int = 3
    endpoints: int = DEFAULT_ENDPOINTS
    duplicate_rate: float = 0.01
    malformed_rate: float = 0.005
    reference_format: str = "json"
    formats: tuple[str, ...] = RAW_FORMATS

    def validate(self) -> None:
        """Reject bad options before any file is written, naming the flag."""
        try:
            parse_start(self.start)
        except ValueError as error:
            raise ValueError(f"--start: not an ISO 8601 date or date-time: {self.start!r}") from error
        checks = (
            (self.days >= 1, "--days must be at least 1"),
            (self.organisations >= 1, "--organisations must be at least 1"),
            (self.endpoints >= max(8, self.organisations), "--endpoints must be at least 8 and at least "
                                                           "--organisations"),
            (0 <= self.duplicate_rate < 0.5, "--duplicate_rate must be in [0, 0.5)"),
            (0 <= self.malformed_rate < 0.5, "--malformed_rate must be in [0, 0.5)"),
            (self.reference_format in REFERENCE_FORMATS,
             f"--reference_format must be one of {', '.join(REFERENCE_FORMATS)}"),
            (bool(self.formats) and set(self.formats) <= set(RAW_FORMATS),
             f"--formats must be a comma list of {', '.join(RAW_FORMATS)}"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def manifest_options(self) -> dict[str, Any]:
        options = asdict(self)
        del options["seed"]
        options["formats"] = list(self.formats)
        return options


def _defect_context(fleet: Fleet) -> DefectContext:
    taken = frozenset(i for entity in REFERENCE_ENTITIES for i in fleet.ids(entity))
    owner = {sim.id: sim.organisation_id for sim in fleet.rows("sim")}
    imsis = tuple((row.imsi, row.sim_id, owner[row.sim_id]) for row in fleet.rows("imsi"))
    return DefectContext(taken, imsis)


def _write_reference(root: Path, fleet: Fleet, fmt: str) -> dict[str, int]:
    directory = root / "reference"
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale(directory, REFERENCE_ENTITIES, [f for f in REFERENCE_FORMATS if f != fmt])
    counts = {}
    for entity in REFERENCE_ENTITIES:
        rows = reference_rows(fleet, entity)
        write_reference(directory, entity, rows, fmt)
        counts[entity] = len(rows)
    return counts


def _write_raw(root: Path, options: FleetOptions, files: dict[str, list[Line]]) -> dict[str, Any]:
    directory = root / "raw"
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale(directory, files, [f for f in RAW_FORMATS if f not in options.formats])
    stats: dict[str, Any] = {}
    for fmt in options.formats:
        stats[fmt] = {}
        for name, schema_name, _ in RAW_FILES:
            lines = files[name] if fmt == "jsonl" else schema_valid(files[name])
            write_raw(directory, name, schema_name, lines, fmt, options.seed)
            stats[fmt][name] = line_stats(lines, with_event_types=name == "events")
    return stats


def build_lines(options: FleetOptions) -> tuple[Fleet, dict[str, list[Line]]]:
    """The fleet and the lines of both raw files (JSONL view), without writing anything."""
    fleet = build_fleet(options.seed, options.organisations, options.endpoints, options.start)
    start_ms = parse_start(options.start)
    streams = build_streams(options.seed, fleet, Period(start_ms, start_ms + options.days * MS_PER_DAY))
    ctx = _defect_context(fleet)
    files = {
        "events": mix(options.seed, "event", streams.events, event_defects(), ctx,
                      options.duplicate_rate, options.malformed_rate),
        "usage": mix(options.seed, "usage", streams.usage, usage_defects(), ctx,
                     options.duplicate_rate, options.malformed_rate),
    }
    return fleet, files


def generate_with(output_dir: str | Path, options: FleetOptions) -> dict[str, Any]:
    """Write the whole sample for validated options and return the manifest."""
    options.validate()
    root = Path(output_dir)
    fleet, files = build_lines(options)
    manifest: dict[str, Any] = {
        "seed": options.seed,
        "options": options.manifest_options(),
        "reference": _write_reference(root, fleet, options.reference_format),
        **_write_raw(root, options, files),
    }
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    (root / "manifest.json").write_text(text, encoding="utf-8")
    return manifest


def generate(output_dir: str | Path, *, seed: int = 7, start: str = FleetOptions.start,
             days: int = FleetOptions.days, organisations: int = FleetOptions.organisations,
             endpoints: int = DEFAULT_ENDPOINTS, duplicate_rate: float = FleetOptions.duplicate_rate,
             malformed_rate: float = FleetOptions.malformed_rate,
             reference_format: str = FleetOptions.reference_format,
             formats: Sequence[str] = RAW_FORMATS) -> dict[str, Any]:
    """Python entry point with the CLI's defaults; returns the manifest it wrote."""
    options = FleetOptions(seed, start, days, organisations, endpoints, duplicate_rate, malformed_rate,
                           reference_format, tuple(formats))
    return generate_with(output_dir, options)


def _formats(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in RAW_FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(RAW_FORMATS)}, got {text!r}")
    return tuple(dict.fromkeys(names))


def parse_args(argv: Sequence[str] | None = None) -> tuple[Path, FleetOptions]:
    defaults = FleetOptions()
    parser = argparse.ArgumentParser(
        prog="python -m tools.sample_fleet",
        description="Write a deterministic sample fleet: reference data, raw events and usage records "
                    "(JSONL, Avro, Parquet) with injected duplicates and malformed records, and a "
                    "manifest of the exact counts a pipeline run must report.")
    parser.add_argument("--output_dir", required=True, type=Path,
                        help="Directory to write reference/, raw/ and manifest.json into (created).")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help=f"Random seed; same seed and options give identical files (default {defaults.seed}).")
    parser.add_argument("--start", default=defaults.start,
                        help=f"Start of the period, ISO 8601 date or date-time, UTC if no offset "
                             f"(default {defaults.start}).")
    parser.add_argument("--days", type=int, default=defaults.days,
                        help=f"Length of the period in days (default {defaults.days}).")
    parser.add_argument("--organisations", type=int, default=defaults.organisations,
                        help=f"Number of customer organisations (default {defaults.organisations}).")
    parser.add_argument("--endpoints", type=int, default=defaults.endpoints,
                        help=f"Number of endpoints, each with one SIM (default {defaults.endpoints}: "
                             "about 40,000 raw records over 7 days).")
    parser.add_argument("--duplicate_rate", type=float, default=defaults.duplicate_rate,
                        help=f"Share of valid records repeated as exact duplicates "
                             f"(default {defaults.duplicate_rate}).")
    parser.add_argument("--malformed_rate", type=float, default=defaults.malformed_rate,
                        help=f"Share of all lines that are malformed (default {defaults.malformed_rate}).")
    parser.add_argument("--reference_format", choices=REFERENCE_FORMATS, default=defaults.reference_format,
                        help=f"Format of the reference tables (default {defaults.reference_format}).")
    parser.add_argument("--formats", type=_formats, default=defaults.formats,
                        help="Comma list of raw formats to write: jsonl, avro, parquet (default all three).")
    args = parser.parse_args(argv)
    options = FleetOptions(args.seed, args.start, args.days, args.organisations, args.endpoints,
                           args.duplicate_rate, args.malformed_rate, args.reference_format, args.formats)
    try:
        options.validate()
    except ValueError as error:
        parser.error(str(error))
    return args.output_dir, options


def main(argv: Sequence[str] | None = None) -> int:
    output_dir, options = parse_args(argv)
    manifest = generate_with(output_dir, options)
    for fmt in options.formats:
        for name in ("events", "usage"):
            stats = manifest[fmt][name]
            print(f"{fmt:8} {name:7} lines={stats['lines']} valid_unique={stats['valid_unique']} "
                  f"duplicates={stats['duplicates']} dead_letters={sum(stats['dead_letters'].values())}")
    print(f"wrote {output_dir}")
    return 0
