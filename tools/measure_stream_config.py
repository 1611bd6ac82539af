"""``python -m tools.measure_stream_config [N ...] [--yaml]``: what a stream
configuration of N streams, all of one organisation, costs a worker.

The measurement behind the defaults of ``--max_streams`` and
``--max_streams_per_organisation`` (docs/configuration.md, "Stream limits"). For
each N it prints the JSON (or YAML) file's size, how long parsing took and the
peak of Python memory while it ran (``tracemalloc``), the memory the parsed
configuration keeps, its pickled size (what a runner stores for the side input),
and what routing one event costs when every one of the N streams wants it (the
per-document fan-out: a chunked batch run holds the routed elements of 1,000
events at once, ``transforms/chunks.py``). The streams cycle through the five API types with their
usual settings. The limits and the 16 MiB file limit are lifted for the
measurement only.
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import time
import tracemalloc
from typing import Any

import yaml

from schemas import streams as stream_schema
from schemas.streams import StreamLimits, parse_stream_config
from transforms.routing import route

ORGANISATION = 80025


def _aws() -> dict[str, Any]:
    """New objects per stream: YAML would write shared ones as anchors, which the loader refuses."""
    return {"access_key_id": {"env": "DATASTREAMER_KEY_ID"}, "secret_access_key": {"env": "DATASTREAMER_SECRET"}}


def stream(n: int) -> dict[str, Any]:
    """The n-th stream: REST, REST bulk, Kinesis, S3, DataDog in turn."""
    base = {"id": f"stream-{n:07d}", "organisation_id": ORGANISATION, "stream_type": "both",
            "created_at": "2026-10-01T00:00:00Z"}
    kind = n % 5
    if kind == 0:
        return {**base, "api_type": "rest_api", "rest": {
            "url": f"https://hooks.example.com/iot/{n}", "headers": {"X-Customer": "acme"},
            "auth_header": "Authorization", "auth_secret": {"env": "DATASTREAMER_TOKEN"},
            "signing_secret": {"env": "DATASTREAMER_SIGNING"}}}
    if kind == 1:
        return {**base, "api_type": "rest_api_bulk", "batching": {"bulk_size": 500},
                "rest": {"url": f"https://hooks.example.com/bulk/{n}", "signing_secret": {"env": "DATASTREAMER_S"}}}
    if kind == 2:
        return {**base, "api_type": "aws_kinesis",
                "kinesis": {"region": "eu-central-1", "stream_name": f"fleet-{n}", **_aws()}}
    if kind == 3:
        return {**base, "api_type": "aws_s3",
                "s3": {"region": "eu-central-1", "bucket": "fleet", "prefix": f"stream-{n}/", **_aws()}}
    return {**base, "stream_type": "usage", "api_type": "datadog",
            "datadog": {"api_key": {"env": "DATASTREAMER_DD_KEY"}}}


def measure(count: int, as_yaml: bool) -> str:
    data = {"streams": [stream(n) for n in range(count)]}
    text = yaml.safe_dump(data) if as_yaml else json.dumps(data, separators=(",", ":"))
    del data
    unlimited = StreamLimits(max_streams=count, max_streams_per_organisation=count)
    started = time.perf_counter()
    parse_stream_config(text, "measured", unlimited)
    parse_seconds = time.perf_counter() - started  # untraced: tracemalloc slows parsing severalfold
    gc.collect()
    tracemalloc.start()
    config = parse_stream_config(text, "measured", unlimited)
    gc.collect()
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    pickled = len(pickle.dumps(config))
    # What routing reads of an event: its organisation, type and alert flag.
    document = {"id": 1, "organisation": {"id": ORGANISATION}, "event_type": {"id": 1}, "alert": False}
    tracemalloc.start()
    started = time.perf_counter()
    routed = route("event", document, config)
    route_ms = (time.perf_counter() - started) * 1000
    route_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    mb = 1024 * 1024
    return (f"{count:>8,} {'yaml' if as_yaml else 'json'}  file {len(text) / mb:6.1f} MiB  parse {parse_seconds:6.2f} s"
            f"  peak {peak / mb:7.1f} MiB  kept {kept / mb:6.1f} MiB  pickled {pickled / mb:5.1f} MiB"
            f"  | one event -> {len(routed):,} streams: {route_ms:7.1f} ms, {route_peak / mb:5.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.measure_stream_config", description=__doc__)
    parser.add_argument("counts", nargs="*", type=int, default=[1_000, 10_000, 100_000])
    parser.add_argument("--yaml", action="store_true", help="YAML files instead of JSON (far slower to parse)")
    args = parser.parse_args(argv)
    stream_schema.MAX_CONFIG_BYTES = 1 << 40  # lifted: the measurement is of the streams, not the file limit
    for count in args.counts:
        print(measure(count, args.yaml), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
