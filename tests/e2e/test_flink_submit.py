"""``make submit-flink`` on a real cluster: the streaming job submitted, detached,
to a Flink standalone cluster (a JobManager and a TaskManager, each its own JVM:
``tools.flink.services.StandaloneCluster``) and delivering.

What a deployment has, stood in for by local parts:

- shared locations every worker reaches: moto's S3 (``s3://``) holds the
  reference data and the streams file, and receives the job's outputs (dead
  letters, results, status); the command refuses local paths;
- Pub/Sub: the emulator, read by the cross-language read (Java's PubsubIO,
  ``EMBEDDED`` in the TaskManager's JVM) through the expansion service of
  ``tools/flink``;
- the TaskManager's SDK worker sidecar: Beam's worker pool (``EXTERNAL``);
- the customer's destination: a REST receiver on 127.0.0.1.

``make submit-flink`` returns once the cluster has the job (an uber jar sent
through Flink's REST API); the test then publishes records and follows them to
the receiver and to the job's outputs in S3, and cancels the job.

Needs Java 17 and Maven (jars fetched into ~/.m2 on first use) and gcloud's
Pub/Sub emulator.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_reference
from tests.e2e.test_flink_streaming import _rest_docs, _Trickle
from tests.e2e.test_streaming_e2e import EVENTS, USAGE, _records
from tests.streams import REGION, rest_stream
from tools.flink.jars import launcher_jar
from tools.flink.services import ExpansionService, StandaloneCluster
from tools.portable import WorkerPool
from tools.pubsub_emulator import PubSubEmulator, create_topic_and_subscription, publish

pytestmark = pytest.mark.flink

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "deployment"
#: ``make submit-flink``: the job server builds the uber jar, the graph is
#: expanded (the Java expansion service) and the jar uploaded to the cluster.
SUBMIT_SECONDS = 300
#: The job's tasks and SDK workers start on the TaskManager.
START_SECONDS = 300
#: On Flink the watermark follows Java PubsubIO's estimate (docs/flink.md): about
#: a minute after a burst on an idle machine; 241 s and more beside the rest of
#: make test on a loaded day (2026-12-04). The wait ends once everything arrived.
DEADLINE_SECONDS = 600


def _upload(s3: Any, directory: Path, prefix: str) -> None:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(directory).as_posix()}")


def _keys(s3: Any, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _body(s3: Any, key: str) -> str:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode("utf-8")


def _written(s3: Any, prefix: str) -> list[str]:
    """The finished files under ``prefix``: not Beam's temporary ones, which it
    renames and deletes while the job runs."""
    return [key for key in _keys(s3, prefix)
            if not any(part.startswith(("_temp", "beam-temp")) for part in key.split("/"))]


def _junk_dead_letters(s3: Any) -> list[dict[str, Any]]:
    """The dead letters in the job's outputs whose payload is the junk line."""
    letters = [json.loads(line) for key in _written(s3, "out/dead_letters/") for line in _body(s3, key).splitlines()]
    return [letter for letter in letters if base64.b64decode(letter.get("payload") or "") == b"{not json"]


def _status(s3: Any) -> dict[str, Any]:
    """The stream's status record in the job's shared status location, if written."""
    if "out/status/status.jsonl" not in _keys(s3, "out/status/"):
        return {}
    records = [json.loads(line) for line in _body(s3, "out/status/status.jsonl").splitlines()]
    return next((r for r in records if r["stream_id"] == "rest-live"), {})


def _cancel(cluster: StandaloneCluster, job_id: str) -> None:
    request = urllib.request.Request(f"http://{cluster.master}/jobs/{job_id}?mode=cancel", method="PATCH")
    with urllib.request.urlopen(request, timeout=10):
        pass


def test_make_submit_flink_runs_the_streaming_job_on_a_standalone_cluster_and_delivers(
        tmp_path, stream_secrets, http_receiver, aws_session, moto_server, sample_tables):
    s3 = aws_session("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    _upload(s3, write_reference(tmp_path / "reference", sample_tables), "reference")
    s3.put_object(Bucket=BUCKET, Key="streams.json", Body=json.dumps({"streams": [
        rest_stream("rest-live", f"{http_receiver.url}/live")]}).encode())

    with (PubSubEmulator(work_dir=tmp_path / "emulator") as emulator,
          StandaloneCluster(tmp_path / "cluster") as cluster,
          WorkerPool(env=os.environ, log_path=tmp_path / "worker_pool.log") as pool,
          ExpansionService(log_path=tmp_path / "expansion_service.log") as expansion):
        project = emulator.project
        subscriptions = {kind: create_topic_and_subscription(project, f"raw-{kind}", f"datastreamer-{kind}")
                         for kind in ("events", "usage")}
        submit_args = [
            f"--environment_config={pool.address}", f"--pubsub_expansion_service={expansion.address}",
            f"--flink_job_server_jar={launcher_jar()}", "--parallelism=1", "--checkpointing_interval_ms=5000",
            # Beam's S3 file system, on moto, for the shared locations.
            f"--s3_endpoint_url={moto_server.url}", "--s3_access_key_id=test", "--s3_secret_access_key=test",
            f"--s3_region_name={REGION}",
            f"--pubsub_endpoint={emulator.url}",
            "--allow_insecure_destinations", "--output_window_seconds=5", "--max_buffering_seconds=1",
        ]
        command = ["make", "-s", "submit-flink", f"FLINK_MASTER={cluster.master}", "JOB_NAME=submit-e2e",
                   f"EVENTS_SUBSCRIPTION={subscriptions['events']}", f"USAGE_SUBSCRIPTION={subscriptions['usage']}",
                   f"REFERENCE_LOCATION=s3://{BUCKET}/reference", f"STREAMS_LOCATION=s3://{BUCKET}/streams.json",
                   f"OUTPUT_LOCATION=s3://{BUCKET}/out", f"SUBMIT_ARGS={' '.join(submit_args)}"]
        started = time.monotonic()
        submitted = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=SUBMIT_SECONDS,
                                   check=False)
        print(f"make submit-flink: exit {submitted.returncode} after {time.monotonic() - started:.0f} s")
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        # Detached: the command has returned, and the cluster has the job.
        jobs = cluster.jobs()
        assert [j["name"] for j in jobs] == ["submit-e2e"], jobs
        job_id = jobs[0]["jid"]
        try:
            while not ((job := cluster.jobs()[0])["state"] == "RUNNING"
                       and job["tasks"]["running"] == job["tasks"]["total"]):
                assert job["state"] not in ("FAILED", "CANCELED", "FINISHED"), (job, cluster.log_dir)
                assert time.monotonic() - started < SUBMIT_SECONDS + START_SECONDS, (job, cluster.log_dir)
                time.sleep(1)
            with _Trickle(project):
                events, usage = _records(datetime.now(tz=UTC))
                assert publish(project, "raw-events", events) == EVENTS + 2
                assert publish(project, "raw-usage", usage) == USAGE
                expected = {7_000_000 + i for i in range(EVENTS)} | {8_000_000 + i for i in range(USAGE)}
                published = time.monotonic()
                while time.monotonic() - published < DEADLINE_SECONDS:
                    ids = {d["id"] for d in _rest_docs(http_receiver, "/live")}
                    dead = _junk_dead_letters(s3)
                    status = _status(s3)
                    if ids >= expected and dead and status.get("last_success_at"):
                        break
                    time.sleep(1)
                print(f"delivered {time.monotonic() - published:.1f} s after publishing")
                time.sleep(2)  # a duplicate delivery would show up
            rest_ids = [d["id"] for d in _rest_docs(http_receiver, "/live") if d["id"] in expected]
        finally:
            _cancel(cluster, job_id)
        missing = expected - set(rest_ids)
        assert not missing, f"{len(missing)} of {len(expected)} documents not delivered in {DEADLINE_SECONDS} s"
        assert sorted(rest_ids) == sorted(expected), "each document once, from the cluster"
        assert [letter["stage"] for letter in dead] == ["parse"], f"the junk line, once, in s3://{BUCKET}/out: {dead}"
        # The portal's overview reads this: written by the workers, to the shared location.
        assert status, f"no status record of rest-live in s3://{BUCKET}/out/status/ in {DEADLINE_SECONDS} s"
        assert (status["state"], status["last_remote_status"], status["consecutive_failures"]) == (
            "active", "202", 0), status
