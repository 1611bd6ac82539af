"""The local destinations' streams: the stream configuration that covers every
API type and stream type for the sample fleet, the placeholder credentials it
references, the AWS resources it needs, and the read-back of what each
destination received. Shared by ``make run-local``, ``make run-local-streaming``,
``make run-portable``, ``make local-destinations`` and the local commands of
``tools.local_job``.

Credentials for the local destinations are placeholders set in the process's
environment (``DATASTREAMER_LOCAL_*``), referenced by the stream config like real
ones are; they are never printed.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3

from schemas.timestamps import parse_iso
from tools.local_destinations import HttpReceiver, MotoServer
from transforms.reference import load_table

REGION = "eu-central-1"
KINESIS_STREAM = "datastreamer-usage"
LOCAL_SECRETS = {
    "DATASTREAMER_LOCAL_AWS_KEY_ID": "local-access-key-id",
    "DATASTREAMER_LOCAL_AWS_SECRET": "local-secret-access-key",
    "DATASTREAMER_LOCAL_REST_TOKEN": "Bearer local-rest-token",
    "DATASTREAMER_LOCAL_DD_API_KEY": "local-datadog-api-key",
    "DATASTREAMER_LOCAL_SIGNING_SECRET": "local-signing-secret",
}
_AWS_REFS = {
    "access_key_id": {"env": "DATASTREAMER_LOCAL_AWS_KEY_ID"},
    "secret_access_key": {"env": "DATASTREAMER_LOCAL_AWS_SECRET"},
}


def local_streams(organisations: list[int], http_url: str, aws_url: str,
                  history_created_at: str | None = None) -> list[dict[str, Any]]:
    """Streams covering every API type and stream type: the first organisation
    has one stream of each API type, the second a filtered bulk stream and an S3
    stream of events, the others none (their documents are counted as filtered).
    With ``history_created_at``, the second also has a bulk stream with historic
    data created then: its live documents are held (parked ``awaiting_history``)
    until ``make historic`` delivers its history."""
    created = "2026-10-01T00:00:00Z"
    rest_auth = {"auth_header": "Authorization", "auth_secret": {"env": "DATASTREAMER_LOCAL_REST_TOKEN"},
                 "signing_secret": {"env": "DATASTREAMER_LOCAL_SIGNING_SECRET"}}
    first = organisations[0]
    streams: list[dict[str, Any]] = [
        {"id": f"rest-events-{first}", "organisation_id": first, "stream_type": "events", "api_type": "rest_api",
         "created_at": created, "rest": {"url": f"{http_url}/customers/{first}/events", **rest_auth}},
        {"id": f"rest-bulk-{first}", "organisation_id": first, "stream_type": "both", "api_type": "rest_api_bulk",
         "created_at": created, "batching": {"bulk_size": 3000},
         "rest": {"url": f"{http_url}/customers/{first}/bulk", **rest_auth}},
        {"id": f"kinesis-usage-{first}", "organisation_id": first, "stream_type": "usage",
         "api_type": "aws_kinesis", "created_at": created,
         "kinesis": {"region": REGION, "stream_name": KINESIS_STREAM, "endpoint_url": aws_url, **_AWS_REFS}},
        {"id": f"s3-both-{first}", "organisation_id": first, "stream_type": "both", "api_type": "aws_s3",
         "created_at": created, "batching": {"rotation_seconds": 900},
         "s3": {"region": REGION, "bucket": f"datastreamer-{first}", "prefix": "iot/", "endpoint_url": aws_url,
                **_AWS_REFS}},
        {"id": f"datadog-{first}", "organisation_id": first, "stream_type": "usage", "api_type": "datadog",
         "created_at": created, "batching": {"metrics_interval_seconds": 300},
         "datadog": {"site": "datadoghq.eu", "url": f"{http_url}/datadog",
                     "api_key": {"env": "DATASTREAMER_LOCAL_DD_API_KEY"}}},
    ]
    if len(organisations) > 1:
        second = organisations[1]
        streams += [
            {"id": f"rest-bulk-alerts-{second}", "organisation_id": second, "stream_type": "events",
             "api_type": "rest_api_bulk", "created_at": created,
             "filters": {"event_type_ids": [1, 2, 6, 11, 12], "alert": True},
             "rest": {"url": f"{http_url}/customers/{second}/alerts", "method": "PUT", **rest_auth}},
            {"id": f"s3-events-{second}", "organisation_id": second, "stream_type": "events", "api_type": "aws_s3",
             "created_at": created,
             "s3": {"region": REGION, "bucket": f"datastreamer-{second}", "endpoint_url": aws_url, **_AWS_REFS}},
        ]
        if history_created_at:
            streams.append(
                {"id": f"rest-history-{second}", "organisation_id": second, "stream_type": "events",
                 "api_type": "rest_api_bulk", "created_at": history_created_at, "historic_data": True,
                 "rest": {"url": f"{http_url}/customers/{second}/history", **rest_auth}})
    return streams


def history_created_at(sample_dir: Path) -> str | None:
    """The middle of the sample fleet's period (its manifest), as the history
    stream's creation: half the sample is its history, all of it its live data."""
    try:
        options = json.loads((sample_dir / "manifest.json").read_text())["options"]
        start = parse_iso(options["start"])
    except (OSError, KeyError, ValueError):
        return None
    middle: datetime = start + timedelta(days=options.get("days", 7) / 2)
    return middle.strftime("%Y-%m-%dT%H:%M:%SZ")


class LocalDestinations:
    """The local destinations on 127.0.0.1 (an HTTP receiver for the REST and
    DataDog streams, moto's server for S3 and Kinesis) with their stream
    configuration written to ``<output_dir>/streams.local.json``, the buckets and
    the Kinesis stream created and the placeholder credentials set. ``adjust``
    may change the streams before they are written."""

    def __init__(self, sample_dir: Path, output_dir: Path,
                 adjust: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self.sample_dir = sample_dir
        self.config_path = output_dir / "streams.local.json"
        self._adjust = adjust
        self.receiver = HttpReceiver()
        self.moto = MotoServer()
        self.streams: list[dict[str, Any]] = []
        self._moto_started = False

    def __enter__(self) -> LocalDestinations:
        set_local_secrets()
        organisations = sorted(load_table(str(self.sample_dir / "reference"), "organisation"))
        self.receiver.start()
        try:
            self.moto.start()
            self._moto_started = True
            self.streams = local_streams(organisations, self.receiver.url, self.moto.url,
                                         history_created_at(self.sample_dir))
            if self._adjust is not None:
                self._adjust(self.streams)
            prepare_aws(self.moto.url, self.streams)
            self.config_path.parent.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(json.dumps({"streams": self.streams}, indent=2))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._moto_started:  # moto's stop fails if it never started
                self.moto.stop()
        finally:
            self.receiver.stop()

    def report(self) -> str:
        """What each destination received, per stream."""
        return report(self.receiver, self.moto.url, self.streams)


def _aws(service: str, url: str) -> Any:
    return boto3.client(service, endpoint_url=url, region_name=REGION, aws_access_key_id="local",
                        aws_secret_access_key="local")


def prepare_aws(url: str, streams: list[dict[str, Any]]) -> None:
    s3 = _aws("s3", url)
    for stream in streams:
        if stream["api_type"] == "aws_s3":
            s3.create_bucket(Bucket=stream["s3"]["bucket"],
                             CreateBucketConfiguration={"LocationConstraint": REGION})
    kinesis = _aws("kinesis", url)
    kinesis.create_stream(StreamName=KINESIS_STREAM, ShardCount=2)
    kinesis.get_waiter("stream_exists").wait(StreamName=KINESIS_STREAM, WaiterConfig={"Delay": 0.2})


def _kinesis_records(url: str) -> Counter[str]:
    kinesis = _aws("kinesis", url)
    per_shard: Counter[str] = Counter()
    for shard in kinesis.list_shards(StreamName=KINESIS_STREAM)["Shards"]:
        iterator = kinesis.get_shard_iterator(StreamName=KINESIS_STREAM, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            response = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            per_shard[shard["ShardId"]] += len(response["Records"])
            if not response["Records"]:
                break
            iterator = response.get("NextShardIterator")
    return per_shard


def _s3_files(url: str, bucket: str) -> list[tuple[str, int]]:
    s3 = _aws("s3", url)
    files = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            files.append((obj["Key"], max(body.count(b"\n") - 1, 0)))
    return files


def report(receiver: HttpReceiver, aws_url: str, streams: list[dict[str, Any]]) -> str:
    """What each destination received, per stream."""
    by_path: dict[str, list] = defaultdict(list)
    for request in receiver.requests():
        by_path[request.path].append(request)
    lines = ["", "Local destinations received"]
    for stream in streams:
        api, sid = stream["api_type"], stream["id"]
        if api in ("rest_api", "rest_api_bulk"):
            path = "/" + stream["rest"]["url"].split("/", 3)[3]
            requests = by_path.get(path, [])
            documents = sum(len(r.json()) if api == "rest_api_bulk" else 1 for r in requests)
            detail = f"{len(requests):>6} requests {documents:>8} documents  {path}"
        elif api == "datadog":
            requests = by_path.get("/datadog/api/v2/series", [])
            series = [s for r in requests for s in r.json()["series"]]
            metrics = Counter(s["metric"] for s in series)
            detail = (f"{len(requests):>6} payloads {len(series):>8} series  "
                      + ", ".join(f"{m} {n}" for m, n in sorted(metrics.items())))
        elif api == "aws_kinesis":
            shards = _kinesis_records(aws_url)
            detail = (f"{sum(shards.values()):>6} records in {len(shards)} shards of {KINESIS_STREAM}: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(shards.items())))
        else:
            files = _s3_files(aws_url, stream["s3"]["bucket"])
            names = sorted(key for key, _ in files)
            sample = f"{names[0]} .. {names[-1]}" if names else "no files"
            detail = (f"{len(files):>6} files {sum(rows for _, rows in files):>11} rows  "
                      f"s3://{stream['s3']['bucket']}/ ({sample})")
        lines.append(f"  {api:<14}{sid:<26}{detail}")
    return "\n".join(lines) + "\n"


def set_local_secrets() -> None:
    """Put the local destinations' placeholder credentials into this process's
    environment, where the stream config's ``{"env": ...}`` references find them
    (real values set by the caller win)."""
    for name, value in LOCAL_SECRETS.items():
        os.environ.setdefault(name, value)


#: The exit status of a local run stopped by Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130

#: Seconds between two progress lines while a local job runs.
PROGRESS_SECONDS = 10


class Progress:
    """A line every ``every`` seconds while the job runs: the time so far and
    what the local HTTP receiver has received (REST and DataDog requests)."""

    def __init__(self, local: LocalDestinations, every: float = PROGRESS_SECONDS) -> None:
        self._local, self._every = local, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="run-local-progress", daemon=True)
        self._started = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            requests = len(self._local.receiver.requests())
            sys.stdout.write(f"  [{time.monotonic() - self._started:4.0f} s] job running; "
                             f"the HTTP receiver has had {requests} requests so far\n")
            sys.stdout.flush()

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def serve(argv: list[str] | None = None) -> int:
    """``make local-destinations``: the local destinations alone, until Ctrl-C,
    for the commands that deliver to them after ``make run-local`` has stopped
    its own (``make redrive``, ``make backfill``, ``make historic``)."""
    import argparse
    import signal
    import sys
    import threading

    parser = argparse.ArgumentParser(prog="python -m tools.local_streams", description=serve.__doc__.split("\n")[0])
    parser.add_argument("--sample_dir", default="data/sample", help="Sample fleet directory. Default: data/sample.")
    parser.add_argument("--output_dir", default="out", help="Where streams.local.json goes. Default: out.")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C stops it even when started in the background (where SIGINT is inherited ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with LocalDestinations(Path(args.sample_dir), Path(args.output_dir)) as local:
        store, repointed = Path(args.output_dir) / "portal.db", ""
        if store.exists():
            # Imported here: tools.local_portal imports this module.
            from tools.local_portal import repoint_store

            changed = repoint_store(f"sqlite:///{store.resolve()}", local.streams)
            repointed = (f"  {store}: {changed} streams of make run-local's portal store point at them now "
                         "(make redrive, backfill and historic use that store)\n")
        # One write: what waits for the "up" line sees the rest with it.
        sys.stdout.write(f"local destinations up: HTTP receiver {local.receiver.url} (REST, DataDog), "
                         f"moto {local.moto.url} (S3, Kinesis)\n"
                         f"  wrote {local.config_path} for them; Ctrl-C stops them\n{repointed}")
        sys.stdout.flush()
        try:
            while not stop.wait(3600):
                pass
        except KeyboardInterrupt:
            pass
        sys.stdout.write(local.report())
    sys.stdout.write("  stopped the local destinations\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(serve())
