"""``kill -9`` of the local streaming job mid-stream: what is lost, and why.

The crash harness (``tools/crash``) runs the job as ``make run-local-streaming``
does, in its own process on the BundleBasedDirectRunner, against the real
Pub/Sub emulator and the local destinations; it publishes 4,000 known, valid
records at 100 a second, kills the job process with SIGKILL 15 s after the first
delivery, starts a new one on the same subscriptions and waits until Pub/Sub
has redelivered what the killed process held unacknowledged.

What is asserted is the documented behaviour (docs/crash-safety.md), checked
against the receiver's own log and the killed process's acknowledgement
journal rather than against the harness's counts:

- the counts reconcile: every published record is delivered or lost, every
  document at the receiver is a published record's first delivery or a
  duplicate, recounted here from the request bodies;
- the local runner acknowledges before it delivers: every record the killed
  process delivered had been acknowledged to Pub/Sub first;
- the lost records are exactly those the killed process had acknowledged and
  not delivered: none is lost for another reason, and none it acknowledged
  and did not deliver came back;
- what it had pulled without acknowledging was redelivered and delivered;
- a record delivered twice was delivered by the killed process and pulled
  again by the new one (its acknowledgement had not been sent);
- the new process lost nothing: its drain was clean, nothing was left unread.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

import pytest

from tools.crash import KINDS, record_key, run_crash
from tools.crash.direct import DirectRunnerTarget
from tools.local_destinations import RecordedRequest

# beside: a kill, then Pub/Sub's 60 s redelivery deadline: mostly waiting (make test's Flink lane).
pytestmark = pytest.mark.beside

RECORDS_PER_KIND = 2000  # 40 s of publishing: the kill comes mid-stream even when the job starts slowly
RATE = 50  # records a second and kind
KILL_AFTER_SECONDS = 15


def _documents_at_receiver(requests: Iterable[RecordedRequest]) -> Counter[str]:
    """Each document of each accepted request, by record: recounted from the
    raw bodies (a JSON array per bulk request), not with the harness's parser."""
    counts: Counter[str] = Counter()
    for request in requests:
        assert request.accepted, request
        for document in json.loads(request.body):
            kind = "usage" if "end_timestamp" in document else "event"
            counts[f"{kind}:{document['id']}"] += 1
    return counts


def test_kill_9_loses_exactly_what_the_killed_job_had_acknowledged_and_not_delivered(pubsub_emulator, tmp_path):
    target = DirectRunnerTarget()
    report = run_crash(target, tmp_path / "run", records_per_kind=RECORDS_PER_KIND, rate=RATE,
                       kill_after_seconds=KILL_AFTER_SECONDS, emulator=pubsub_emulator, name="crash-e2e", log=print)
    print(report.text())
    observed = report.observations
    assert observed is not None and observed.killed.acknowledged is not None

    # Published: every record, and the kill came mid-stream.
    assert report.published == len(observed.published_at) == 2 * RECORDS_PER_KIND
    assert report.delivered_before_kill > 0 and report.published_before_kill < report.published

    # The counts reconcile, recounted from the receiver's log.
    counts = _documents_at_receiver(observed.requests)
    published = set(observed.published_at)
    delivered = set(counts) & published
    assert set(counts) <= published, "the receiver got documents of records never published"
    assert report.delivered == len(delivered)
    assert report.lost == len(published - delivered) == report.published - report.delivered
    assert report.duplicates == sum(n - 1 for n in counts.values())
    assert report.deliveries == sum(counts.values()) == report.delivered + report.duplicates
    assert report.reconciled

    # Acknowledged on read: every record the killed process delivered had been
    # read, its acknowledgement asked for, before it reached the receiver. The
    # acknowledgement itself leaves from the prefetcher's thread after that
    # thread's current pull, so on a loaded machine a delivery can come first
    # (CI, 2026-12-05); killed in between, the record comes again: a duplicate.
    keys = observed.message_keys
    read = {keys[m]: moment for m, moment in observed.killed.acknowledged.read.items() if m in keys}
    acknowledged = {keys[m]: moment for m, moment in observed.killed.acknowledged.sent.items() if m in keys}
    assert set(acknowledged) <= set(read), "an acknowledgement left for a record the reader had not read"
    first_arrival: dict[str, float] = {}
    for request in sorted(observed.requests, key=lambda r: r.received_at):
        for document in json.loads(request.body):
            kind = "usage" if "end_timestamp" in document else "event"
            first_arrival.setdefault(record_key(kind, document["id"]), request.received_at)
    delivered_by_killed = {k for k, moment in first_arrival.items() if moment < observed.killed.at}
    assert delivered_by_killed and delivered_by_killed <= set(read), (
        "the killed process delivered records it had not read: it no longer acknowledges on read")
    early = sorted(k for k in delivered_by_killed if first_arrival[k] <= read[k])
    assert not early, f"delivered before the reader asked for their acknowledgement: {early[:10]}"

    # What is lost is exactly what it had acknowledged and not delivered.
    lost = published - delivered
    assert lost == set(acknowledged) - delivered, (
        f"lost but not acknowledged by the killed process: {sorted(lost - set(acknowledged))[:10]}; "
        f"acknowledged, undelivered and yet not lost: {sorted((set(acknowledged) - delivered) - lost)[:10]}")
    # (Sent and unanswered is possible too: killed while Pub/Sub was answering.)
    assert set(report.lost_because) <= {"acknowledged by the killed process",
                                        "acknowledgement sent by the killed process"}, report.lost_because
    # How many depends on where the kill lands: usually some are on their way
    # between acknowledgement and delivery, but on a loaded machine a kill found
    # none (2026-12-04: 0 of 4,000 lost). That the runner is not crash-safe is
    # the acknowledgement before delivery asserted above, not a count.

    # What it had pulled without acknowledging came again and was delivered.
    pulled = {keys[m] for m in observed.killed.acknowledged.pulled if m in keys}
    assert pulled - set(acknowledged) <= delivered

    # A duplicate is a record the killed process delivered, whose acknowledgement
    # Pub/Sub never answered, and which the new process pulled again.
    journals = target.journals()
    assert len(journals) == 2
    pulled_again = {keys[m] for m in journals[1].ids("pulled") if m in keys}
    confirmed = {keys[m] for m in observed.killed.acknowledged.confirmed if m in keys}
    for key in (k for k, n in counts.items() if n > 1):
        assert key in delivered_by_killed and key in pulled_again and key not in confirmed, key

    # The new process lost nothing it read: it drained cleanly, nothing was left unread.
    assert observed.left == frozenset()
    assert report.stopped["exit_status"] == 0, report.stopped
    assert report.stopped["drain"]["clean"] and report.stopped["reconciled"], report.stopped
    assert {key.split(":")[0] for key in delivered} == set(KINDS)
