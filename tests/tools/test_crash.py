"""The crash harness's parts that need no job (``tools/crash``): the
acknowledgement journal against the real emulator and a real prefetcher, and
the way a report explains losses."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from tools.crash import Acknowledgements, acknowledgement_evidence, crash_fleet, explain_losses, fleet_records
from tools.crash.journal import install, read_journal
from tools.direct_runner import direct_pubsub
from tools.direct_runner.direct_pubsub import Prefetcher, _Activity
from tools.pubsub_emulator import create_topic_and_subscription, publish, subscriber_client


def _wait_queued(prefetcher: Prefetcher, count: int) -> None:
    deadline = time.monotonic() + 20
    while prefetcher.queued() < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert prefetcher.queued() == count


def test_the_journal_records_pulls_acknowledgements_and_hand_backs_in_order(pubsub_emulator, tmp_path, monkeypatch):
    for name in ("__init__", "acknowledge"):  # restored after the test
        monkeypatch.setattr(direct_pubsub.Prefetcher, name, getattr(direct_pubsub.Prefetcher, name))
    subscription = create_topic_and_subscription(pubsub_emulator.project, "journal", "journal")
    journal_path = tmp_path / "acks"
    writer = install(journal_path)
    with subscriber_client() as client:
        prefetcher = Prefetcher(client, subscription, _Activity())
        publish(pubsub_emulator.project, "journal", [b"read-1", b"read-2", b"read-3"])
        _wait_queued(prefetcher, 3)
        read = list(prefetcher.pull(subscription, 10, 30).received_messages)
        prefetcher.acknowledge(subscription, [m.ack_id for m in read])  # as the runner's reader does
        publish(pubsub_emulator.project, "journal", [b"queued-1", b"queued-2"])
        _wait_queued(prefetcher, 2)
        prefetcher.close()  # sends the acknowledgements owed, hands back what is queued
    writer.close()
    journal = read_journal(journal_path)
    ids = {m.message.message_id for m in read}
    assert len(ids) == 3 and len(journal.ids("pulled")) == 5 and journal.unreadable == 0
    assert journal.ids("read") == journal.ack_sent == journal.acknowledged == ids
    assert journal.ids("handed-back") == journal.ids("pulled") - ids
    for message_id in ids:
        events = [journal.events[event][message_id] for event in ("pulled", "read", "ack-sent", "acked")]
        assert events == sorted(events)


def test_a_journal_cut_by_a_kill_is_read_up_to_its_last_whole_line(tmp_path):
    path = tmp_path / "acks"
    path.write_text("1.5 pulled s a b c\n1.6 ack-sent s a b\n1.7 acked s a b\n1.8 ack-se")
    journal = read_journal(path)
    assert journal.ids("pulled") == {"a", "b", "c"} and journal.acknowledged == {"a", "b"}
    assert journal.unreadable == 1
    assert read_journal(tmp_path / "missing").ids("acked") == set()


def test_losses_are_explained_first_by_what_is_left_then_dead_letters_then_acknowledgements():
    acknowledged = Acknowledgements(pulled={"m1": 1.0, "m2": 1.0, "m3": 1.0, "m4": 1.0, "m5": 1.0},
                                    sent={"m1": 2.0, "m2": 2.0, "m3": 2.0}, confirmed={"m1": 2.1})
    keys = {f"m{i}": f"event:{i}" for i in range(1, 7)}
    why = explain_losses({"event:1", "event:2", "event:3", "event:5", "event:6"}, left={"event:3"},
                         dead={"event:6": "too_late"}, acknowledged=acknowledged, message_keys=keys)
    assert why == {"event:1": "acknowledged by the killed process",
                   "event:2": "acknowledgement sent by the killed process", "event:3": "left in subscription",
                   "event:5": "unexplained", "event:6": "dead letter: too_late"}
    assert explain_losses({"event:1"}, left=set(), dead={}, acknowledged=None, message_keys=keys) == {
        "event:1": "unexplained"}


def test_the_evidence_tells_acknowledging_before_delivery_from_after():
    acknowledged = Acknowledgements(pulled={"m1": 1.0, "m2": 1.0, "m3": 1.0, "m4": 1.0, "m5": 1.0},
                                    sent={"m1": 2.0, "m2": 2.0, "m3": 2.0}, confirmed={"m1": 2.0, "m2": 2.0},
                                    read={"m1": 1.2, "m2": 1.2, "m3": 1.2, "m5": 9.0})
    keys = {f"m{i}": f"usage:{i}" for i in range(1, 6)}
    # usage:1 arrived after its acknowledgement, usage:2 before it, usage:3 never; usage:4 came after
    # the kill; usage:5 was read and delivered, and the kill came before its acknowledgement left.
    evidence = acknowledgement_evidence(acknowledged, keys,
                                        {"usage:1": 3.0, "usage:2": 1.5, "usage:4": 20.0, "usage:5": 9.5},
                                        killed_at=10.0, lost={"usage:3"})
    assert evidence["acknowledged"] == 3 and evidence["acknowledged_confirmed"] == 2
    assert evidence["acknowledged_delivered_before_kill"] == 2
    assert evidence["delivered_before_acknowledged"] == 1
    assert evidence["acknowledged_not_delivered"] == 1
    assert evidence["lost_acknowledged_before_kill_seconds"]["max"] == 8.0
    assert evidence["delivered_not_acknowledged"] == 1
    assert (evidence["pulled_not_acknowledged"], evidence["pulled_not_acknowledged_delivered"]) == (2, 2)


def test_the_crash_fleet_has_enough_valid_unique_records_of_each_kind(tmp_path: Path):
    fleet = crash_fleet(tmp_path / "fleet", 700)
    records = fleet_records(fleet, 700)
    for kind in ("event", "usage"):
        assert len(records[kind]) == len({r["id"] for r in records[kind]}) == 700
        assert {r["organisation_id"] for r in records[kind]} == {records["event"][0]["organisation_id"]}


class _Published:
    """What ``_settle`` asks of a publisher: done, with these message ids."""

    def __init__(self, message_keys: dict[str, str]) -> None:
        self.message_keys = message_keys

    def done(self) -> bool:
        return True


class _Running:
    def problem(self) -> None:
        return None


def test_a_quiet_ends_the_wait_only_once_every_record_not_acknowledged_by_the_killed_process_arrived(tmp_path):
    """A starved job delivers nothing for a while without having lost anything:
    a quiet must not settle a run while records the killed process never
    acknowledged (Pub/Sub sends them again) have still to arrive."""
    from tools.crash import Killed, _owed, _settle
    from tools.local_destinations import HttpReceiver

    keys = {"m1": "event:1", "m2": "event:2", "m3": "event:3", "m4": "event:4"}
    published = set(keys.values())
    publisher = _Published(keys)
    # m3 acknowledged by the killed process (maybe lost); m4 dead-lettered by the job.
    killed = Killed("job", 1, 0.0, Acknowledgements(pulled={}, sent={"m3": 1.0}, confirmed={}))
    (tmp_path / "out" / "dead_letters").mkdir(parents=True)
    (tmp_path / "out" / "dead_letters" / "a.jsonl").write_text(
        '{"kind": "event", "record_id": 4, "reason": "too_late"}\n')
    owed = _owed(killed, publisher, published, tmp_path / "out")
    assert owed is not None and owed() == {"event:1", "event:2"}
    with HttpReceiver() as receiver:
        requests.post(f"{receiver.url}/in", json=[{"id": 1}], timeout=10)
        waiting = _settle(receiver, "/in", published, _Running(), publisher, redelivered_by=0.0,
                          quiet_seconds=1.0, timeout=4.0, owed=owed)
        assert waiting.startswith("not settled after 4 s: 1 of 4 records arrived"), waiting
        requests.post(f"{receiver.url}/in", json=[{"id": 2}], timeout=10)
        settled = _settle(receiver, "/in", published, _Running(), publisher, redelivered_by=0.0,
                          quiet_seconds=1.0, timeout=30.0, owed=owed)
        assert settled.startswith("settled: nothing new for 1 s"), settled
    # A target that cannot tell what it acknowledged owes nothing: the quiet alone settles.
    assert _owed(Killed("taskmanager", 2, 0.0), publisher, published, tmp_path / "out") is None
