"""The streaming bench's trivial pipeline: the runner's own ceiling.

``ReadFromPubSub`` of both subscriptions -> orjson parse -> one POST per bundle
of its records, as a JSON array, to ``--url``; for ``--run_seconds`` or until
SIGTERM. Three steps and no state: what any streaming job on the runner pays at
least to read, parse and send a record.

    python -m tools.bench.trivial --events_subscription=... --usage_subscription=... --url=... --run_seconds=60

The flags it does not know are the runner's. With none it runs on the
BundleBasedDirectRunner with the job's fixes (``tools/direct_runner``), as the
job runs locally; on Flink ``tools/bench/runners.py`` adds the FlinkRunner's,
the expansion service's and ``--pubsub_endpoint``. Either way it reads with the
job's own source, ``pipelines.data_streamer.read_pubsub``: Beam's Python read
locally, the cross-language Java read on Flink.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import orjson
import requests
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState


class PostBundle(beam.DoFn):
    """POSTs the elements of each bundle as one JSON array to ``url``."""

    def __init__(self, url: str) -> None:
        self._url = url

    def setup(self) -> None:
        self._session = requests.Session()

    def start_bundle(self) -> None:
        self._documents: list[Any] = []

    def process(self, document: Any) -> None:
        self._documents.append(document)

    def finish_bundle(self) -> None:
        if self._documents:
            self._session.post(self._url, data=orjson.dumps(self._documents),
                               headers={"Content-Type": "application/json"}, timeout=30).raise_for_status()
            self._documents = []

    def teardown(self) -> None:
        self._session.close()


def build(pipeline: beam.Pipeline, subscriptions: dict[str, str], url: str,
          expansion_service: str | None) -> beam.PCollection:
    """Read each subscription, merge, parse, POST per bundle."""
    from pipelines.data_streamer import read_pubsub

    raw = [pipeline | f"Read[{name}]" >> read_pubsub(subscription, None, expansion_service)
           for name, subscription in subscriptions.items()]
    return (tuple(raw) | "Merge" >> beam.Flatten() | "Parse" >> beam.Map(orjson.loads)
            | "Post" >> beam.ParDo(PostBundle(url)))


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.options import InputOptions
    from tools.direct_runner import apply_direct_runner_fixes
    from tools.runners import runner_flag

    parser = argparse.ArgumentParser(prog="python -m tools.bench.trivial", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events_subscription", required=True)
    parser.add_argument("--usage_subscription", required=True)
    parser.add_argument("--url", required=True, help="Where each bundle is POSTed.")
    parser.add_argument("--run_seconds", type=int, required=True, help="Cancel the run after this long.")
    known, runner_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not any(arg.startswith("--runner") for arg in runner_args):
        apply_direct_runner_fixes()
        runner_args = [runner_flag(streaming=True), *runner_args]
    if "--streaming" not in runner_args:
        runner_args.append("--streaming")
    options = PipelineOptions(runner_args)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        # Stopped as the job is: the run is cancelled and, on Flink, the services
        # its launcher started are stopped (the default SIGTERM would skip both).
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pipeline = beam.Pipeline(options=options)
    build(pipeline, {"events": known.events_subscription, "usage": known.usage_subscription}, known.url,
          options.view_as(InputOptions).pubsub_expansion_service)
    result = pipeline.run()
    deadline = time.monotonic() + known.run_seconds
    while time.monotonic() < deadline and not stop.is_set() and not PipelineState.is_terminal(result.state):
        stop.wait(0.5)
    if not PipelineState.is_terminal(result.state):
        result.cancel()
    return 0


if __name__ == "__main__":
    # Import by its importable name, so what Beam pickles refers to this module.
    from tools.bench import trivial as _importable

    sys.exit(_importable.main())
