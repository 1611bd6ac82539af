"""``kill -9`` of Flink's TaskManager mid-stream: nothing is lost.

The crash harness (``tools/crash``) submits the streaming job to a standalone
Flink cluster (a JobManager and a TaskManager, each its own JVM;
``tools/crash/flink.py``), publishes known, valid records to the Pub/Sub
emulator, kills the TaskManager JVM with SIGKILL mid-stream, starts a new one
and lets Flink restart the job from its last completed checkpoint. Java's
PubsubIO acknowledges a message when the checkpoint holding it completes, so
what the killed TaskManager had read after that checkpoint is read again:
duplicates, counted exactly, and no loss. The run settles only when every
published record reached the receiver, or fails after ``SETTLE_SECONDS``: no
quiet ends it early, since a TaskManager waiting for a core (make test runs
this at nice 19, beside the tests that assert timings) delivers nothing for
minutes without having lost anything (CI, 2026-12-03: a 90 s quiet ended a
starved run early and its undelivered records were counted as lost).
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tools.crash import run_crash
from tools.crash.flink import FlinkClusterTarget

pytestmark = pytest.mark.flink

RECORDS_PER_KIND = 1500  # 60 s of publishing: the kill comes mid-stream
RATE = 25  # records a second and kind: what Flink keeps up with here beside everything else
KILL_AFTER_SECONDS = 20
#: How long after the job ran again every record must have arrived: the restart
#: replays what the restored checkpoint had not acknowledged once Pub/Sub's ack
#: deadline (60 s) passed; this much again for a CPU-starved cluster.
SETTLE_SECONDS = 600


def test_kill_9_of_the_taskmanager_loses_nothing(pubsub_emulator, tmp_path):
    target = FlinkClusterTarget()
    report = run_crash(target, tmp_path / "run", records_per_kind=RECORDS_PER_KIND, rate=RATE,
                       kill_after_seconds=KILL_AFTER_SECONDS, quiet_seconds=None, settle_timeout=SETTLE_SECONDS,
                       emulator=pubsub_emulator, name="crash-flink", log=print)
    print(report.text())
    observed = report.observations
    assert observed is not None
    # The report first, so that a failure shows why (how it settled, the phases,
    # what explains each lost record), not a diff of thousands of ids.
    assert report.lost == 0, report.text()
    assert report.published == 2 * RECORDS_PER_KIND
    assert report.delivered_before_kill > 0 and report.published_before_kill < report.published, "mid-stream"
    assert target.checkpoints_before_kill >= 1 and target.restored_checkpoint is not None, (
        "Flink restarted the job from a checkpoint")

    # Nothing lost, recounted from the receiver's request bodies.
    counts: Counter[str] = Counter()
    for request in observed.requests:
        assert request.accepted, request
        for document in json.loads(request.body):
            kind = "usage" if "end_timestamp" in document else "event"
            counts[f"{kind}:{document['id']}"] += 1
    published = set(observed.published_at)
    lost, unknown = published - set(counts), set(counts) - published
    assert not lost and not unknown, f"lost {len(lost)}: {sorted(lost)[:10]}; never published {len(unknown)}"
    assert report.lost == 0 and report.delivered == report.published
    # Duplicates: what was read again after the restart, counted exactly.
    assert report.duplicates == sum(n - 1 for n in counts.values())
    assert report.reconciled
