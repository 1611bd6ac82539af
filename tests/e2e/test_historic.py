"""Historic data: a stream with ``historic_data: true`` gets its history of up to 7
days before any live document. Live documents are parked (``awaiting_history``)
until ``pipelines.historic`` has delivered the history and written the marker;
then they are released, and later live data goes straight through."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipelines import data_streamer, historic
from schemas.delivery import AWAITING_HISTORY
from schemas.records import RecordError
from schemas.streams import parse_stream_config
from sinks.ordering import document_time
from sinks.parking import ParkedBatch, ParkStore
from tests.streams import rest_stream
from tools.local_destinations import HttpReceiver, Reply, Script
from tools.sample_fleet import generate
from transforms.parse import parse_record
from transforms.routing import route
from transforms.status import LiveJob, history_marker, live_job_path, load_live_job, load_status, write_live_job

CREATED = "2026-11-01T12:00:00Z"  # the stream's created_at, inside the sample's day
C = datetime(2026, 11, 1, 12, tzinfo=UTC)
HISTORY_START = C - timedelta(days=1)
_KINDS = (("event", "events"), ("usage", "usage"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """The sample day archived (and its documents written) by a plain batch run,
    and the live input: the valid raw records from ``CREATED`` on."""
    fleet = tmp_path_factory.mktemp("fleet")
    generate(fleet, seed=9, days=1, endpoints=12, organisations=2, formats=("jsonl",))
    out = tmp_path_factory.mktemp("archived")
    assert data_streamer.main([
        f"--events_input={fleet / 'raw' / 'events.jsonl'}", f"--usage_input={fleet / 'raw' / 'usage.jsonl'}",
        f"--reference_dir={fleet / 'reference'}", f"--output_dir={out}", f"--archive_location={out / 'archive'}",
    ]) == 0
    live = tmp_path_factory.mktemp("live")
    for kind, prefix in _KINDS:
        lines = []
        for line in (fleet / "raw" / f"{prefix}.jsonl").read_bytes().splitlines():
            try:
                _, event_ms = parse_record(kind, line)
            except RecordError:
                continue
            if event_ms >= C.timestamp() * 1000:
                lines.append(line)
        (live / f"{prefix}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    orgs = sorted(o["id"] for o in json.loads((fleet / "reference" / "organisation.json").read_text()))
    return fleet, out, live, orgs


def _key(document: dict) -> tuple[int, str]:
    return document["id"], "usage" if "start_timestamp" in document else "event"


def _documents(directory: Path, config, stream_id: str, start: datetime, end: datetime) -> dict[tuple[int, str],
                                                                                                 tuple[str, dict]]:
    """``{key: (kind, document)}`` of the documents under ``directory``
    (events/, usage/) that routing sends to ``stream_id`` and whose time is in
    ``[start, end)``."""
    found = {}
    for kind, folder in _KINDS:
        for path in (directory / folder).glob("*.jsonl"):
            for doc in map(json.loads, path.read_text().splitlines()):
                targets = [e[0] for tag, e in route(kind, doc, config) if tag != "parked"]
                if stream_id in targets and start <= document_time(kind, doc) < end:
                    found[_key(doc)] = (kind, doc)
    return found


def _routed_to(directory: Path, config, stream_id: str, start: datetime, end: datetime) -> set[tuple[int, str]]:
    """Keys of the documents under ``directory`` (events/, usage/) that routing
    sends to ``stream_id`` and whose time is in ``[start, end)``."""
    return set(_documents(directory, config, stream_id, start, end))


def _arrivals(receiver: HttpReceiver, path: str, since: int = 0) -> list[tuple[int, tuple[int, str]]]:
    """(request index, document key) of every document sent to ``path``, in arrival order."""
    requests = receiver.requests(path)[since:]
    return [(since + i, _key(doc)) for i, request in enumerate(requests) for doc in request.json()]


class _Env:
    def __init__(self, root: Path, fleet, receiver: HttpReceiver) -> None:
        self.fleet, self.archived, self.live, orgs = fleet
        self.root, self.receiver = root, receiver
        self.park, self.status = root / "parked", root / "status"
        streams = [
            rest_stream("target", f"{receiver.url}/target", bulk=True, organisation_id=orgs[0],
                        historic_data=True, created_at=CREATED, filters={"event_type_ids": [1, 2, 3, 5]},
                        batching={"bulk_size": 5}),  # many requests, so their order means something
            rest_stream("other", f"{receiver.url}/other", bulk=True, organisation_id=orgs[0]),
        ]
        self.config_path = root / "streams.json"
        self.config_path.write_text(json.dumps(streams))
        self.config = parse_stream_config(self.config_path.read_text())
        self.common = [f"--streams_config={self.config_path}", f"--reference_dir={self.fleet / 'reference'}",
                       f"--park_location={self.park}", f"--status_location={self.status}",
                       "--allow_insecure_destinations"]

    def live_run(self, name: str, whole_day: bool = False) -> int:
        """A batch live run over the records from ``CREATED`` on, or with
        ``whole_day`` over the whole sample day (records of the history's
        range included, as a live run over a backlog or late data has them)."""
        live = self.fleet / "raw" if whole_day else self.live
        return data_streamer.main([
            f"--events_input={live / 'events.jsonl'}", f"--usage_input={live / 'usage.jsonl'}",
            f"--output_dir={self.root / name}", *self.common,
        ])

    def historic(self, *extra: str) -> int:
        return historic.main([
            "--stream_id=target", f"--archive_location={self.archived / 'archive'}",
            f"--output_dir={self.root / 'historic-out'}", "--settle_seconds=0", "--history_days=1",
            *self.common, *extra,
        ])

    def parked(self, stream_id: str = "target"):
        store = ParkStore(str(self.park))
        return [store.read(path) for path in store.list(stream_id)]

    def expected(self) -> tuple[set, set]:
        history = _routed_to(self.archived, self.config, "target", HISTORY_START, C)
        live = _routed_to(self.root / "live-1", self.config, "target", C, C + timedelta(days=2))
        return history, live


def test_history_is_delivered_before_live_data(fleet, tmp_path, stream_secrets, capsys):
    with HttpReceiver() as receiver:
        env = _Env(tmp_path, fleet, receiver)

        # (a) Live data of a stream whose history is not delivered yet is held.
        assert env.live_run("live-1") == 0
        assert receiver.requests("/target") == []
        assert receiver.requests("/other"), "a stream without the flag is not held"
        history, live = env.expected()
        assert len(history) > 20 and len(live) > 20 and not history & live
        held = env.parked()
        assert held and {b.reason for b in held} == {AWAITING_HISTORY}
        held_keys = [_key(doc) for b in held for _, doc in b.documents]
        assert sorted(held_keys) == sorted(live)
        other_requests = len(receiver.requests("/other"))
        other_status = load_status(str(env.status))["other"]
        assert other_status.last_success_at is not None
        capsys.readouterr()

        # (b) History first, then the held live documents, each once.
        assert env.historic() == 0
        report = capsys.readouterr().out
        arrivals = _arrivals(receiver, "/target")
        keys = [key for _, key in arrivals]
        assert len(keys) == len(set(keys)), "a document was delivered twice"
        assert {k for k in keys if k in history} == history
        assert {k for k in keys if k not in history} == live
        last_history = max(i for i, key in arrivals if key in history)
        first_live = min(i for i, key in arrivals if key in live)
        assert last_history < first_live
        assert len(receiver.requests("/other")) == other_requests, "only the stream with the flag gets history"
        marker = Path(history_marker(str(env.status), "target"))
        detail = json.loads(marker.read_text())
        assert detail["documents"] == len(history)
        assert (detail["from"], detail["to"]) == (HISTORY_START.isoformat(), C.isoformat())
        assert env.parked() == []
        assert f"history delivered: {len(history)} documents" in report
        assert f"live data released: {len(held)} held batches ({len(live)} documents)" in report
        # The backfill's status update covers its one stream only; the others are kept.
        after = load_status(str(env.status))
        assert set(after) == {"target", "other"}
        assert after["other"].last_success_at == other_status.last_success_at

        # (c) Idempotent: a second run finds the marker and sends nothing.
        sent = len(receiver.requests("/target"))
        assert env.historic() == 0
        assert "history was already delivered" in capsys.readouterr().out
        assert len(receiver.requests("/target")) == sent

        # (d) Live data now goes straight through.
        assert env.live_run("live-2") == 0
        again = sorted(key for _, key in _arrivals(receiver, "/target", since=sent))
        assert again == sorted(live)
        assert env.parked() == []


@pytest.mark.parametrize("before", ["batch run", "no live job", "stopped streaming job"])
def test_without_a_running_streaming_job_nothing_is_waited_for(fleet, tmp_path, stream_secrets, capsys, before):
    """The settle time bounds a wait for a streaming job that may still park
    the stream's live documents; with none running, historic does not wait."""
    with HttpReceiver() as receiver:
        env = _Env(tmp_path, fleet, receiver)
        assert env.live_run("live-1") == 0
        stamp = load_live_job(str(env.status))
        assert stamp is not None and not stamp.streaming, "a batch run says so beside its status"
        if before == "no live job":  # no status at all: the held batches came from elsewhere
            Path(live_job_path(str(env.status))).unlink()
            (env.status / "status.jsonl").unlink()
        elif before == "stopped streaming job":  # it wrote status last an hour ago
            write_live_job(str(env.status), LiveJob(True, 60, 10))
            stale = json.loads(Path(live_job_path(str(env.status))).read_text())
            stale["written_at"] = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="milliseconds")
            Path(live_job_path(str(env.status))).write_text(json.dumps(stale))
        history, live = env.expected()
        capsys.readouterr()

        started = time.monotonic()
        assert env.historic("--settle_seconds=120") == 0
        elapsed = time.monotonic() - started
        report = capsys.readouterr().out
        keys = [key for _, key in _arrivals(receiver, "/target")]
    expected = {
        "batch run": f"no wait: the last live job to write status to {env.status} was a batch run",
        "no live job": f"no wait: no live job has written status to {env.status}",
        "stopped streaming job": "no wait: no streaming job is running: the last one wrote status to",
    }[before]
    assert expected in report, report
    assert "waited " not in report and "waiting until" not in report
    assert sorted(keys) == sorted(history | live)
    # Not the settle limit: a command that waited it would also have said so.
    assert elapsed < 120, f"took {elapsed:.0f} s with nothing to wait for"


def test_each_history_document_is_delivered_once_when_held_live_data_overlaps_it(fleet, tmp_path, stream_secrets,
                                                                                  capsys):
    """A live run over the whole day holds the stream's documents of the
    history's range too; the backfill delivers them from the archive, and the
    release drops them from the held batches instead of sending them again."""
    early = C - timedelta(days=30)
    with HttpReceiver() as receiver:
        env = _Env(tmp_path, fleet, receiver)
        assert env.live_run("live-1", whole_day=True) == 0
        assert receiver.requests("/target") == []
        history = _routed_to(env.archived, env.config, "target", HISTORY_START, C)
        held_docs = _documents(env.root / "live-1", env.config, "target", early, C + timedelta(days=2))
        live = {key for key, (kind, doc) in held_docs.items() if document_time(kind, doc) >= C}
        assert set(held_docs) - live == history, "the live run held every history document too"
        assert len(history) > 20 and len(live) > 20
        held = env.parked()
        assert sorted(_key(doc) for b in held for _, doc in b.documents) == sorted(held_docs)
        capsys.readouterr()

        assert env.historic() == 0
        report = capsys.readouterr().out
        arrivals = _arrivals(receiver, "/target")
        keys = [key for _, key in arrivals]
        assert len(keys) == len(set(keys)), f"{len(keys) - len(set(keys))} documents were delivered twice"
        assert set(keys) == history | live
        assert max(i for i, key in arrivals if key in history) < min(i for i, key in arrivals if key in live)
        assert f"history delivered: {len(history)} documents" in report
        assert (f"live data released: {len(held)} held batches ({len(held_docs)} documents): {len(history)} "
                f"dropped as already delivered as history, {len(live)} re-driven\n") in report, report
        assert env.parked() == []
        detail = json.loads(Path(history_marker(str(env.status), "target")).read_text())
        assert Path(detail["document_ids"]).is_dir()

        # A live run that read the holds before the marker parks after it: the
        # marker's document ids still keep the history's documents from a repeat.
        straggler = sorted(history)[:3] + sorted(live)[:2]
        sent = len(receiver.requests("/target"))
        ParkStore(str(env.park)).write(ParkedBatch("target", "rest_api_bulk", AWAITING_HISTORY, None, None, None, 0,
                                                   "2026-12-03T00:00:00.000+00:00",
                                                   tuple(held_docs[key] for key in straggler)))
        assert env.historic() == 0
        report = capsys.readouterr().out
        assert "history was already delivered" in report
        assert ("live data released: 1 held batches (5 documents): 3 dropped as already delivered as history, "
                "2 re-driven") in report, report
        assert sorted(key for _, key in _arrivals(receiver, "/target", since=sent)) == sorted(live)[:2]
        assert env.parked() == []


def test_failed_history_keeps_live_data_held_until_a_retry_delivers_it(fleet, tmp_path, stream_secrets, capsys):
    down = Script({"/target": [Reply(503, b"down")]})
    with HttpReceiver(responder=down) as receiver:
        env = _Env(tmp_path, fleet, receiver)
        assert env.live_run("live-1") == 0
        history, live = env.expected()
        capsys.readouterr()

        fast = ["--max_attempts=1", "--retry_base_delay_seconds=0.01", "--retry_max_delay_seconds=0.01"]
        assert env.historic(*fast, "--deactivate_after_failures=1") == 1
        out = capsys.readouterr().out
        assert "history NOT delivered" in out and "no marker written" in out
        assert not Path(history_marker(str(env.status), "target")).exists()
        assert not any(k in live for _, k in _arrivals(receiver, "/target")), "no live document before the history"
        assert sum(len(b.documents) for b in env.parked() if b.reason == AWAITING_HISTORY) == len(live)
        assert load_status(str(env.status))["target"].state == "deactivated"
        failed_requests = len(receiver.requests("/target"))

        # The destination is fixed: the retry reactivates the stream and delivers.
        receiver.responder = Script({})
        assert env.historic(*fast) == 0
        report = capsys.readouterr().out
        assert "reactivated for the history" in report
        arrivals = _arrivals(receiver, "/target", since=failed_requests)
        keys = [key for _, key in arrivals]
        # The batches the failed attempt parked hold history documents the
        # retry has just delivered: dropped, not sent again.
        assert len(keys) == len(set(keys)), "a document was delivered twice"
        assert set(keys) == history | live
        assert max(i for i, key in arrivals if key in history) < min(i for i, key in arrivals if key in live)
        assert "documents of batches parked by earlier attempts were dropped as already delivered as history" in report
        assert env.parked() == []
        assert load_status(str(env.status))["target"].state == "active"


@pytest.mark.parametrize(
    ("change", "args", "message"),
    [
        ({"historic_data": False}, [], "does not have historic_data: true"),
        ({"state": "paused"}, [], "is paused in its configuration"),
        ({}, ["--stream_id=nope"], "'nope' is not in the stream configuration"),
        ({}, ["--history_days=8"], "--history_days must be more than 0 and at most 7"),
        ({}, ["--settle_seconds=-1"], "--settle_seconds must not be negative"),
    ],
)
def test_bad_options_exit_2(tmp_path, change, args, message, capsys):
    stream = {**rest_stream("target", "https://example.com/in", historic_data=True, created_at=CREATED), **change}
    (tmp_path / "streams.json").write_text(json.dumps([stream]))
    code = historic.main(["--stream_id=target", f"--streams_config={tmp_path / 'streams.json'}",
                          f"--archive_location={tmp_path}", f"--reference_dir={tmp_path}",
                          f"--output_dir={tmp_path / 'out'}", *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        historic.main(["--help"])
    assert exit_info.value.code == 0
    assert "--settle_seconds" in capsys.readouterr().out
