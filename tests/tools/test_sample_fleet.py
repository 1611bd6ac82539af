"""Behaviour of the sample fleet generator.

The manifest is ground truth for pipeline runs, so these tests check it against an
independent reading of the files: a small validator here classifies every line with
the dead-letter reasons of the contract and must arrive at the manifest's counts.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import REFERENCE_ENTITIES, raw_schema
from schemas.catalogues import (
    EVENT_REQUIRED_FIELDS,
    EVENT_SEVERITIES,
    EVENT_SOURCES,
    EVENT_TYPES,
    TRAFFIC_TYPES,
)
from schemas.fields import FieldSpec, record_fields
from tools.sample_fleet import generate

REPO = Path(__file__).resolve().parents[2]
SMALL = {"seed": 11, "days": 2, "organisations": 2, "endpoints": 40,
         "duplicate_rate": 0.03, "malformed_rate": 0.03}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?(Z|[+-]\d{2}:?\d{2})$")
REFERENCES = (("organisation_id", "organisation"), ("sim_id", "sim"), ("endpoint_id", "endpoint"),
              ("user_id", "user"), ("operator_id", "operator"), ("tariff_id", "tariff"))
JSONL_ONLY = ("empty", "not_utf8", "not_json", "not_an_object", "oversized", "missing_field:", "wrong_type:")
Record = dict[str, Any]


# ---------------------------------------------------------------- fixtures and readers

@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("fleet")
    return root, generate(root, **SMALL)


@pytest.fixture(scope="module")
def root(fleet: tuple[Path, dict[str, Any]]) -> Path:
    return fleet[0]


@pytest.fixture(scope="module")
def manifest(fleet: tuple[Path, dict[str, Any]]) -> dict[str, Any]:
    return fleet[1]


@pytest.fixture(scope="module")
def reference(root: Path) -> dict[str, list[Record]]:
    return {e: json.loads((root / "reference" / f"{e}.json").read_text("utf-8")) for e in REFERENCE_ENTITIES}


def jsonl_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Validator:
    """An independent reading of the dead-letter contract, for checking the manifest."""

    def __init__(self, reference: dict[str, list[Record]]) -> None:
        self.ids = {e: {row["id"] for row in rows} for e, rows in reference.items()}
        self.imsi_sim = {row["imsi"]: row["sim_id"] for row in reference["imsi"]}

    def line(self, raw: bytes, kind: str) -> tuple[str | None, Any]:
        if not raw.strip():
            return "empty", None
        if len(raw) > 65_536:
            return "oversized", None
        try:
            value = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return "not_utf8", None
        except json.JSONDecodeError:
            return "not_json", None
        if not isinstance(value, dict):
            return "not_an_object", None
        return self.record(value, kind), value

    def record(self, r: Record, kind: str) -> str | None:
        specs = record_fields("raw_event" if kind == "event" else "raw_usage")
        for spec in specs:
            if spec.required and spec.name not in r:
                return f"missing_field:{spec.name}"
        if kind == "event" and r["event_type_id"] in EVENT_REQUIRED_FIELDS:
            for name in EVENT_REQUIRED_FIELDS[r["event_type_id"]]:
                if r.get(name) is None:
                    return f"missing_field:{name}"
        for spec in specs:
            if not _type_ok(spec, r.get(name := spec.name, spec.default_value)):
                return f"wrong_type:{name}"
        return self._values(r, kind) or self._references(r)

    def _values(self, r: Record, kind: str) -> str | None:
        fields = ("timestamp",) if kind == "event" else ("start_timestamp", "end_timestamp")
        for name in fields:
            try:
                if not TIMESTAMP.match(r[name]):
                    return f"invalid_timestamp:{name}"
                instant(r[name])
            except ValueError:
                return f"invalid_timestamp:{name}"
        if kind == "event" and r["event_type_id"] not in EVENT_TYPES:
            return "unknown_event_type"
        if r.get("imsi") is not None and not (r["imsi"].isdigit() and len(r["imsi"]) <= 15):
            return "invalid_value:imsi"
        if kind == "usage":
            for name in ("volume_rx", "volume_tx"):
                if r[name] < 0:
                    return f"invalid_value:{name}"
            if instant(r["end_timestamp"]) < instant(r["start_timestamp"]):
                return "invalid_value:end_timestamp"
        return None

    def _references(self, r: Record) -> str | None:
        for field, entity in REFERENCES:
            if r.get(field) is not None and r[field] not in self.ids[entity]:
                return f"unknown_reference:{entity}"
        if r.get("imsi") is not None and r.get("sim_id") is not None and self.imsi_sim.get(r["imsi"]) != r["sim_id"]:
            return "reference_mismatch:imsi_sim"
        return None


def _type_ok(spec: FieldSpec, value: Any) -> bool:
    if value is None:
        return spec.nullable
    if spec.kind in ("long", "int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if spec.kind == "boolean":
        return isinstance(value, bool)
    if spec.kind == "double":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if spec.kind == "string":
        return isinstance(value, str)
    return isinstance(value, dict) and all(_type_ok(f, value.get(f.name)) for f in spec.fields)


def tally(entries: list[tuple[str | None, Any]], kind: str) -> dict[str, Any]:
    """Manifest-style statistics of classified entries: first valid id wins, repeats are duplicates."""
    seen: set[int] = set()
    reasons: Counter[str] = Counter()
    types: Counter[str] = Counter()
    duplicates = 0
    for reason, record in entries:
        if reason is not None:
            reasons[reason] += 1
        elif record["id"] in seen:
            duplicates += 1
        else:
            seen.add(record["id"])
            if kind == "event":
                types[str(record["event_type_id"])] += 1
    stats = {"lines": len(entries), "valid_unique": len(seen), "duplicates": duplicates,
             "dead_letters": dict(reasons)}
    if kind == "event":
        stats["event_types"] = {str(t): types.get(str(t), 0) for t in EVENT_TYPES}
    return stats


@pytest.fixture(scope="module")
def classified(root: Path, reference: dict[str, list[Record]]) -> dict[str, list[tuple[str | None, Any]]]:
    validator = Validator(reference)
    return {name: [validator.line(raw, kind) for raw in jsonl_lines(root / "raw" / f"{name}.jsonl")]
            for name, kind in (("events", "event"), ("usage", "usage"))}


def unique_valid(entries: list[tuple[str | None, Any]]) -> dict[int, Record]:
    valid: dict[int, Record] = {}
    for reason, record in entries:
        if reason is None:
            valid.setdefault(record["id"], record)
    return valid


@pytest.fixture(scope="module")
def events(classified: dict[str, list[tuple[str | None, Any]]]) -> list[Record]:
    return list(unique_valid(classified["events"]).values())


@pytest.fixture(scope="module")
def usage(classified: dict[str, list[tuple[str | None, Any]]]) -> list[Record]:
    return list(unique_valid(classified["usage"]).values())


# ---------------------------------------------------------------- determinism and CLI

def _file_bytes(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(root: Path, tmp_path: Path) -> None:
    generate(tmp_path / "again", **SMALL)
    assert _file_bytes(tmp_path / "again") == _file_bytes(root)
    generate(tmp_path / "other", **{**SMALL, "seed": 12})
    other = _file_bytes(tmp_path / "other")
    for name in ("raw/events.jsonl", "raw/usage.jsonl", "raw/events.avro", "raw/usage.parquet",
                 "reference/sim.json", "reference/endpoint.json"):
        assert other[name] != _file_bytes(root)[name], name


def test_help_runs_as_a_module() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "tools.sample_fleet", "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    for flag in ("--output_dir", "--seed", "--start", "--days", "--organisations", "--endpoints",
                 "--duplicate_rate", "--malformed_rate", "--reference_format", "--formats"):
        assert flag in done.stdout


def test_cli_writes_csv_reference_and_only_the_chosen_formats(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["--output_dir", str(tmp_path), "--days", "1", "--endpoints", "12", "--organisations", "1",
            "--reference_format", "csv", "--formats", "jsonl,parquet"]
    done = subprocess.run([sys.executable, "-m", "tools.sample_fleet", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [
        "events.jsonl", "events.parquet", "usage.jsonl", "usage.parquet"]
    manifest = json.loads((tmp_path / "manifest.json").read_text("utf-8"))
    assert set(manifest) == {"seed", "options", "reference", "jsonl", "parquet"}
    for entity in REFERENCE_ENTITIES:
        header, *rows = (tmp_path / "reference" / f"{entity}.csv").read_text("utf-8").splitlines()
        assert header.split(",") == [f.name for f in record_fields(f"reference/{entity}")]
        assert len(rows) == manifest["reference"][entity]
    with (tmp_path / "reference" / "sim.csv").open(encoding="utf-8", newline="") as handle:
        msisdns = [row["msisdn"] for row in csv.DictReader(handle)]
    assert "" in msisdns and any(msisdns), "null is an empty cell, other cells keep their value"


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--days"):
        generate(tmp_path, days=0)
    done = subprocess.run([sys.executable, "-m", "tools.sample_fleet", "--output_dir", str(tmp_path),
                           "--formats", "jsonl,xml"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "--formats" in done.stderr


def test_parquet_reference_has_schema_columns_and_types(tmp_path: Path) -> None:
    generate(tmp_path, days=1, endpoints=10, organisations=1, reference_format="parquet", formats=["jsonl"])
    sim = pq.read_table(tmp_path / "reference" / "sim.parquet")
    assert sim.column_names == [f.name for f in record_fields("reference/sim")]
    assert sim.schema.field("id").type == pa.int64()
    assert sim.schema.field("msisdn").type == pa.string()
    for entity in REFERENCE_ENTITIES:
        table = pq.read_table(tmp_path / "reference" / f"{entity}.parquet")
        assert table.column_names == [f.name for f in record_fields(f"reference/{entity}")]


# ---------------------------------------------------------------- manifest truth

def test_manifest_counts_equal_an_independent_reading_of_jsonl(
        manifest: dict[str, Any], classified: dict[str, list[tuple[str | None, Any]]]) -> None:
    for name, kind in (("events", "event"), ("usage", "usage")):
        assert tally(classified[name], kind) == manifest["jsonl"][name], name


@pytest.mark.parametrize("fmt", ["avro", "parquet"])
def test_avro_and_parquet_hold_the_schema_valid_lines(
        fmt: str, root: Path, manifest: dict[str, Any], reference: dict[str, list[Record]],
        classified: dict[str, list[tuple[str | None, Any]]]) -> None:
    validator = Validator(reference)
    for name, kind in (("events", "event"), ("usage", "usage")):
        path = root / "raw" / f"{name}.{fmt}"
        if fmt == "avro":
            with path.open("rb") as handle:
                rows = list(fastavro.reader(handle))
        else:
            rows = pq.read_table(path).to_pylist()
        entries = [(validator.record(row, kind), row) for row in rows]
        assert tally(entries, kind) == manifest[fmt][name]
        assert unique_valid(entries) == unique_valid(classified[name])
        assert not any(r.startswith(JSONL_ONLY) for r in manifest[fmt][name]["dead_letters"])


def test_manifest_arithmetic_and_line_counts(root: Path, manifest: dict[str, Any]) -> None:
    assert manifest["seed"] == SMALL["seed"]
    assert manifest["options"]["formats"] == ["jsonl", "avro", "parquet"]
    for fmt in ("jsonl", "avro", "parquet"):
        for name in ("events", "usage"):
            stats = manifest[fmt][name]
            assert stats["lines"] == stats["valid_unique"] + stats["duplicates"] + sum(
                stats["dead_letters"].values())
    assert manifest["jsonl"]["events"]["lines"] == len(jsonl_lines(root / "raw" / "events.jsonl"))
    assert sum(manifest["jsonl"]["events"]["event_types"].values()) == manifest["jsonl"]["events"]["valid_unique"]
    text = (root / "manifest.json").read_text("utf-8")
    assert text == json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_defects_are_varied_and_rates_hold(manifest: dict[str, Any]) -> None:
    reasons = set(manifest["jsonl"]["events"]["dead_letters"]) | set(manifest["jsonl"]["usage"]["dead_letters"])
    assert len(reasons) >= 14
    for family in ("empty", "not_utf8", "not_json", "not_an_object", "oversized", "missing_field:",
                   "wrong_type:", "invalid_timestamp:", "unknown_event_type", "invalid_value:",
                   "unknown_reference:", "reference_mismatch:imsi_sim"):
        assert any(r.startswith(family) for r in reasons), family
    for name in ("events", "usage"):
        stats = manifest["jsonl"][name]
        share = sum(stats["dead_letters"].values()) / stats["lines"]
        assert share == pytest.approx(SMALL["malformed_rate"], abs=0.005)
        assert stats["duplicates"] == round(SMALL["duplicate_rate"] * stats["valid_unique"])


def test_defaults_cover_every_event_type_and_many_reasons(tmp_path: Path) -> None:
    stats = generate(tmp_path, formats=["jsonl"])["jsonl"]
    total = stats["events"]["lines"] + stats["usage"]["lines"]
    assert 30_000 <= total <= 50_000
    assert all(count >= 3 for count in stats["events"]["event_types"].values())
    assert len(set(stats["events"]["dead_letters"]) | set(stats["usage"]["dead_letters"])) >= 14


def test_duplicates_are_exact_copies_shortly_after_a_valid_original(
        root: Path, classified: dict[str, list[tuple[str | None, Any]]]) -> None:
    for name in ("events", "usage"):
        lines = jsonl_lines(root / "raw" / f"{name}.jsonl")
        first: dict[int, int] = {}
        copies = 0
        for index, (reason, record) in enumerate(classified[name]):
            if reason is not None:
                continue
            if record["id"] in first:
                copies += 1
                assert lines[index] == lines[first[record["id"]]]
                assert 0 < index - first[record["id"]] <= 20
            else:
                first[record["id"]] = index
        assert copies > 0
        malformed_ids = [r["id"] for reason, r in classified[name]
                         if reason and isinstance(r, dict) and isinstance(r.get("id"), int)]
        assert len(malformed_ids) == len(set(malformed_ids))
        assert not set(malformed_ids) & set(first)


# ---------------------------------------------------------------- reference data

def test_reference_rows_have_exactly_the_schema_fields(reference: dict[str, list[Record]],
                                                       manifest: dict[str, Any]) -> None:
    for entity, rows in reference.items():
        fields = [f.name for f in record_fields(f"reference/{entity}")]
        assert rows and all(list(row) == fields for row in rows), entity
        assert len({row["id"] for row in rows}) == len(rows) == manifest["reference"][entity]


def test_reference_foreign_keys_resolve(reference: dict[str, list[Record]]) -> None:
    ids = {e: {row["id"]: row for row in rows} for e, rows in reference.items()}
    for imsi in reference["imsi"]:
        assert imsi["sim_id"] in ids["sim"]
    for sim in reference["sim"]:
        assert sim["organisation_id"] in ids["organisation"]
    for endpoint in reference["endpoint"]:
        assert ids["sim"][endpoint["sim_id"]]["organisation_id"] == endpoint["organisation_id"]
    assert len({e["sim_id"] for e in reference["endpoint"]}) == len(reference["endpoint"])
    for user in reference["user"]:
        assert user["organisation_id"] in ids["organisation"]
    for zone in reference["ratezone"]:
        assert zone["tariff_id"] in ids["tariff"]
    for tariff in reference["tariff"]:
        assert tariff["currency_id"] in ids["currency"]
    for operator in reference["operator"]:
        assert operator["country_id"] in ids["country"]
    for entity in ("operator_tapcode", "operator_mnc"):
        assert all(row["operator_id"] in ids["operator"] for row in reference[entity])


def test_catalogues_and_networks_are_the_real_ones(reference: dict[str, list[Record]]) -> None:
    assert {r["id"]: r["description"] for r in reference["event_type"]} == dict(EVENT_TYPES)
    assert {r["id"]: r["description"] for r in reference["event_source"]} == dict(EVENT_SOURCES)
    assert {r["id"]: r["description"] for r in reference["event_severity"]} == dict(EVENT_SEVERITIES)
    assert {r["id"]: (r["name"], r["unit"]) for r in reference["traffic_type"]} == dict(TRAFFIC_TYPES)
    assert {(r["code"], r["symbol"]) for r in reference["currency"]} == {("EUR", "€"), ("USD", "$")}
    countries = {r["iso_code"]: r for r in reference["country"]}
    assert countries["de"]["mcc"] == "262" and countries["de"]["country_code"] == "49"
    operators = {r["id"]: r for r in reference["operator"]}
    codes = {(operators[m["operator_id"]]["name"], operators[m["operator_id"]]["country_id"], m["mnc"])
             for m in reference["operator_mnc"]}
    assert ("Telefonica", countries["de"]["id"], "07") in codes
    assert ("T-Mobile", countries["us"]["id"], "260") in codes
    assert {"DEUD1", "FRAF2", "GBRME", "USACG", "ESPTE", "NLDPT"} <= {
        t["tapcode"] for t in reference["operator_tapcode"]}


def test_sims_imsis_and_endpoints_look_real(reference: dict[str, list[Record]]) -> None:
    per_sim = Counter(imsi["sim_id"] for imsi in reference["imsi"])
    assert 0.1 <= sum(1 for n in per_sim.values() if n == 2) / len(reference["sim"]) <= 0.45
    assert max(per_sim.values()) == 2 and len(per_sim) == len(reference["sim"])
    assert all(re.fullmatch(r"8988228\d{12}", s["iccid"]) for s in reference["sim"])
    assert {s["msisdn"] is None for s in reference["sim"]} == {True, False}
    assert all(re.fullmatch(r"\d{15}", i["imsi"]) for i in reference["imsi"])
    assert any(i["imsi"].startswith("901405") for i in reference["imsi"])
    assert all(re.fullmatch(r"\d{15}", e["imei"]) for e in reference["endpoint"])
    for endpoint in reference["endpoint"]:
        first, second = (int(part) for part in endpoint["ip_address"].split(".")[:2])
        assert first == 100 and 64 <= second <= 127
        assert re.fullmatch(r"[A-Za-z ]+ \d{4}", endpoint["name"])
    assert all("@" in u["username"] for u in reference["user"])


# ---------------------------------------------------------------- events and usage

def test_every_event_type_present_with_its_required_fields(events: list[Record]) -> None:
    by_type = Counter(e["event_type_id"] for e in events)
    assert set(by_type) == set(EVENT_TYPES)
    for event in events:
        for name in EVENT_REQUIRED_FIELDS[event["event_type_id"]]:
            assert event[name] is not None, (event["event_type_id"], name)


def test_valid_records_agree_with_the_reference(events: list[Record], usage: list[Record],
                                                reference: dict[str, list[Record]]) -> None:
    ids = {e: {row["id"]: row for row in rows} for e, rows in reference.items()}
    imsis = defaultdict(set)
    for row in reference["imsi"]:
        imsis[row["sim_id"]].add(row["imsi"])
    endpoint_of_sim = {e["sim_id"]: e for e in reference["endpoint"]}
    for record in [*events, *usage]:
        org = record["organisation_id"]
        if record.get("sim_id") is not None:
            assert ids["sim"][record["sim_id"]]["organisation_id"] == org
            if record.get("imsi") is not None:
                assert record["imsi"] in imsis[record["sim_id"]]
        if record.get("endpoint_id") is not None:
            endpoint = ids["endpoint"][record["endpoint_id"]]
            assert endpoint["organisation_id"] == org
            assert endpoint_of_sim[endpoint["sim_id"]]["id"] == record["endpoint_id"]
            assert record.get("sim_id") in (None, endpoint["sim_id"])
        if record.get("user_id") is not None:
            assert ids["user"][record["user_id"]]["organisation_id"] == org
        if "ratezone_id" in record:
            assert ids["ratezone"][record["ratezone_id"]]["tariff_id"] == record["tariff_id"]
        context = record.get("pdp_context")
        if context:
            endpoint = ids["endpoint"][record["endpoint_id"]]
            assert context["ue_ip_address"] == endpoint["ip_address"]
            assert context["imsi"] == record["imsi"] and 5 <= context["nsapi"] <= 15
            assert context["gtp_version"] in ("1", "2") and context["rat_type"] in (1, 2, 5, 6)
            operator = ids["operator"][record["operator_id"]]
            assert ids["country"][operator["country_id"]]["mcc"] == context["mcc"]
            assert {"operator_id": operator["id"], "mnc": context["mnc"]} in [
                {"operator_id": m["operator_id"], "mnc": m["mnc"]} for m in reference["operator_mnc"]]
            assert TIMESTAMP.match(context["tunnel_created"]) and len(context["imeisv"]) == 16


def test_sessions_have_45_second_interims_one_final_and_matching_delete_volume(
        events: list[Record], usage: list[Record]) -> None:
    sessions: dict[str, list[Record]] = defaultdict(list)
    for record in usage:
        if record["traffic_type_id"] == 5:
            sessions[record["session_id"]].append(record)
    deletes = {e["pdp_context"]["pdp_context_id"]: e for e in events if e["event_type_id"] == 5}
    creates = {e["pdp_context"]["pdp_context_id"] for e in events if e["event_type_id"] == 3}
    assert sessions and set(sessions) == set(deletes) == creates
    for session_id, records in sessions.items():
        records.sort(key=lambda r: instant(r["start_timestamp"]))
        assert [r["final"] for r in records] == [False] * (len(records) - 1) + [True]
        for earlier, later in itertools.pairwise(records):
            assert (instant(later["start_timestamp"]) - instant(earlier["start_timestamp"])).total_seconds() == 45
            assert (instant(earlier["end_timestamp"]) - instant(earlier["start_timestamp"])).total_seconds() == 45
        last = (instant(records[-1]["end_timestamp"]) - instant(records[-1]["start_timestamp"])).total_seconds()
        assert 0 < last <= 45
        delete = deletes[session_id]
        assert delete["volume_rx_bytes"] == sum(r["volume_rx"] for r in records)
        assert delete["volume_tx_bytes"] == sum(r["volume_tx"] for r in records)
        assert instant(delete["timestamp"]) == instant(records[-1]["end_timestamp"])
        assert instant(delete["pdp_context"]["tunnel_created"]) == instant(records[0]["start_timestamp"])


def test_sms_records_and_callbacks(events: list[Record], usage: list[Record]) -> None:
    sms = [r for r in usage if r["traffic_type_id"] == 6]
    assert sms
    for record in sms:
        assert record["session_id"] is None and not record["final"] and record["cost"] > 0
        assert record["start_timestamp"] == record["end_timestamp"]
        assert (record["volume_rx"], record["volume_tx"]) in ((0, 1), (1, 0))
    mo_endpoints = {r["endpoint_id"] for r in sms if r["volume_tx"] == 1}
    callbacks = [e for e in events if e["event_type_id"] == 15]
    assert callbacks and {e["endpoint_id"] for e in callbacks} <= mo_endpoints


def test_location_updates_precede_sessions_on_a_new_network(events: list[Record]) -> None:
    by_endpoint: dict[int, list[Record]] = defaultdict(list)
    for event in sorted(events, key=lambda e: instant(e["timestamp"])):
        if event["event_type_id"] in (1, 2, 3):
            by_endpoint[event["endpoint_id"]].append(event)
    for sequence in by_endpoint.values():
        attached = None
        for event in sequence:
            if event["event_type_id"] in (1, 2):
                attached = event["operator_id"]
                assert event["imsi"] in event["description"]
            else:
                assert event["operator_id"] == attached


def test_day_and_night_rhythm(events: list[Record]) -> None:
    hours = Counter(instant(e["timestamp"]).astimezone(UTC).hour for e in events)
    day = sum(n for h, n in hours.items() if 6 <= h < 22) / 16
    night = sum(n for h, n in hours.items() if not 6 <= h < 22) / 8
    assert day > 2.5 * night


def test_timestamps_have_offsets_and_files_are_in_time_order(
        classified: dict[str, list[tuple[str | None, Any]]]) -> None:
    for name, field in (("events", "timestamp"), ("usage", "end_timestamp")):
        stamps = [r[field] for r in unique_valid(classified[name]).values()]
        assert all(TIMESTAMP.match(s) for s in stamps)
        assert {s[-1] == "Z" for s in stamps} == {True, False}
        assert any(s.endswith(("+02:00", "+01:00", "-05:00")) for s in stamps)
        instants = [instant(s) for s in stamps]
        assert instants == sorted(instants)


def test_ids_are_unique_positive_and_in_separate_ranges(events: list[Record], usage: list[Record]) -> None:
    event_ids, usage_ids = [e["id"] for e in events], [u["id"] for u in usage]
    assert min(event_ids) > 0 and min(usage_ids) > 0
    assert max(event_ids + usage_ids) < 2**63
    assert max(usage_ids) < min(event_ids) or max(event_ids) < min(usage_ids)


def test_raw_parquet_has_a_struct_pdp_context(root: Path) -> None:
    schema = pq.read_schema(root / "raw" / "events.parquet")
    assert pa.types.is_struct(schema.field("pdp_context").type)
    assert schema.names == [f["name"] for f in raw_schema("raw_event")["fields"]]
    assert pq.read_schema(root / "raw" / "usage.parquet").names == [
        f["name"] for f in raw_schema("raw_usage")["fields"]]
