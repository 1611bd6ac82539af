"""Archive and backfill: a day of records is archived in hourly files; a backfill
of part of that day for one stream delivers exactly the documents of that range
that match the stream, and no other stream receives anything."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import pytest

from pipelines import backfill, data_streamer
from schemas.records import RecordError
from schemas.streams import parse_stream_config
from sinks.ordering import document_time
from tests.streams import rest_stream
from tools.local_destinations import HttpReceiver
from tools.sample_fleet import generate
from transforms.parse import parse_record
from transforms.routing import route

START, END = "2026-11-01T06:00:00Z", "2026-11-01T12:00:00Z"


@pytest.fixture(scope="module")
def archived(tmp_path_factory):
    fleet = tmp_path_factory.mktemp("fleet")
    generate(fleet, seed=9, days=1, endpoints=24, organisations=2, formats=("jsonl",))
    out = tmp_path_factory.mktemp("out")
    argv = [f"--events_input={fleet / 'raw' / 'events.jsonl'}", f"--usage_input={fleet / 'raw' / 'usage.jsonl'}",
            f"--reference_dir={fleet / 'reference'}", f"--output_dir={out}", f"--archive_location={out / 'archive'}"]
    assert data_streamer.main(argv) == 0
    return fleet, out, argv


def _valid_per_hour(path: Path, kind: str) -> Counter:
    hours: Counter = Counter()
    for line in path.read_bytes().splitlines():
        try:
            _, event_ms = parse_record(kind, line)
        except RecordError:
            continue
        hours[datetime.fromtimestamp(event_ms / 1000, tz=UTC).strftime("%Y%m%dT%H")] += 1
    return hours


def _archived_per_hour(archive: Path, prefix: str) -> Counter:
    counts: Counter = Counter()
    for path in archive.glob(f"{prefix}-*.avro"):
        # <prefix>-<hour>-<digest of the ids>.avro; a batch run writes one file an hour.
        hour = path.stem.split("-")[1]
        assert hour not in counts, f"two archive files for {prefix} {hour}"
        with path.open("rb") as handle:
            counts[hour] = sum(1 for _ in fastavro.reader(handle))
    return counts


def test_every_valid_record_is_archived_in_its_hour(archived):
    fleet, out, argv = archived
    for kind, prefix in (("event", "events"), ("usage", "usage")):
        expected = _valid_per_hour(fleet / "raw" / f"{prefix}.jsonl", kind)
        assert _archived_per_hour(out / "archive", prefix) == expected
        assert len(expected) > 12
    # A replay rewrites the same hourly files instead of adding copies.
    before = sorted(p.name for p in (out / "archive").glob("*.avro"))
    assert data_streamer.main(argv) == 0
    assert sorted(p.name for p in (out / "archive").glob("*.avro")) == before
    assert _archived_per_hour(out / "archive", "usage") == _valid_per_hour(fleet / "raw" / "usage.jsonl", "usage")


def test_backfill_delivers_the_range_to_one_stream_only(archived, tmp_path, stream_secrets):
    fleet, out, _ = archived
    orgs = sorted(o["id"] for o in json.loads((fleet / "reference" / "organisation.json").read_text()))
    with HttpReceiver() as receiver:
        streams = [
            rest_stream("target", f"{receiver.url}/target", bulk=True, organisation_id=orgs[0],
                        filters={"event_type_ids": [1, 2, 3, 5]}),
            rest_stream("other", f"{receiver.url}/other", bulk=True, organisation_id=orgs[0]),
            rest_stream("other-org", f"{receiver.url}/other-org", bulk=True, organisation_id=orgs[1]),
        ]
        (tmp_path / "streams.json").write_text(json.dumps(streams))
        code = backfill.main([
            "--stream_id=target", f"--from={START}", f"--to={END}", f"--archive_location={out / 'archive'}",
            f"--reference_dir={fleet / 'reference'}", f"--streams_config={tmp_path / 'streams.json'}",
            f"--output_dir={tmp_path / 'backfill-out'}", "--allow_insecure_destinations",
        ])
        received = [doc for r in receiver.requests("/target") for doc in r.json()]
        others = receiver.requests("/other") + receiver.requests("/other-org")
    assert code == 0
    assert others == []
    config = parse_stream_config((tmp_path / "streams.json").read_text())
    start, end = datetime(2026, 11, 1, 6, tzinfo=UTC), datetime(2026, 11, 1, 12, tzinfo=UTC)
    expected = []
    for kind, folder in (("event", "events"), ("usage", "usage")):
        for path in (out / folder).glob("*.jsonl"):
            for doc in map(json.loads, path.read_text().splitlines()):
                targets = [e[0] for tag, e in route(kind, doc, config) if tag != "parked"]
                if "target" in targets and start <= document_time(kind, doc) < end:
                    expected.append(doc)
    assert expected and len({d["id"] for d in expected if "timestamp" in d}) > 10
    key = lambda d: (d["id"], "start_timestamp" in d)  # noqa: E731
    assert sorted(received, key=key) == sorted(expected, key=key)
    assert {d["event_type"]["id"] for d in received if "event_type" in d} <= {1, 2, 3, 5}


def test_backfill_rejects_bad_ranges(archived, tmp_path, capsys):
    _, out, _ = archived
    base = ["--stream_id=x", f"--archive_location={out / 'archive'}", "--reference_dir=r", "--streams_config=s"]
    assert backfill.main([*base, f"--from={END}", f"--to={START}"]) == 2
    assert "--from must be before --to" in capsys.readouterr().err
    assert backfill.main([*base, "--from=2026-11-01T00:00:00Z", "--to=2026-11-09T00:00:00Z"]) == 2
    assert "longer than --max_backfill_days (7)" in capsys.readouterr().err
    assert backfill.main([*base, "--from=yesterday", f"--to={END}"]) == 2
