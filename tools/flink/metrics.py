"""The job's counters while it runs on Flink, from Flink's REST API.

Beam's Flink job server answers a job's metrics only once the job has finished
(``JobInvocation`` keeps the ``PipelineResult``'s metrics, set at the end), so a
streaming job's drain and summary (``pipelines/drain.py``) would see no counter
at all, and a cancelled job never finishes. Flink itself has them: Beam's Flink
runner reports every user counter of a step to the Flink metric group of the
operator that runs the step, named ``<namespace>_<name>``, and Flink's REST API
serves them per job vertex, summed over its subtasks
(``/jobs/<job>/vertices/<vertex>/subtasks/metrics?get=...&agg=sum``). Flink
turns every ``.`` of a metric name into ``_`` (a dot separates its scopes):
:func:`beam_name` puts back the dot of the job's ``<kind>.<measure>`` names
(``schemas/metrics.py``); a stream id with a dot in it shows with ``_`` here.

:class:`FlinkCountersResult` wraps the runner's ``PipelineResult``: its
``metrics()`` are the runner's when it has any (a finished job), else the job's
counters read from Flink's REST endpoint (a mini-cluster's, given a REST port by
the harness; a standalone cluster's). Once the job is gone (cancelled) Flink
serves no metric of it any more, so the last counters read are kept and
returned: the drain samples them every second while the job runs.

Development tooling only: the local Flink harnesses register it
(``pipelines.drain.register_result_wrapper``); in production the job is
submitted detached and its counters are Flink's metrics, in whatever metrics
backend the cluster reports to.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from apache_beam.metrics.execution import MetricKey, MetricResult
from apache_beam.metrics.metric import MetricResults
from apache_beam.metrics.metricbase import MetricName

from schemas.metrics import NAMESPACE

_LOG = logging.getLogger(__name__)

#: Counters read at most this often (the drain asks every second; a read is
#: two REST calls per job vertex).
CACHE_SECONDS = 2.0
REQUEST_TIMEOUT_SECONDS = 10.0


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_SECONDS) as response:
        return json.loads(response.read())


#: The kinds whose counters are named ``<kind>.<measure>`` (schemas/metrics.py).
_KIND_PREFIXES = ("event_", "usage_")


def beam_name(flink_name: str) -> str:
    """The job's counter name of a Flink metric name (module docstring)."""
    if flink_name.startswith(_KIND_PREFIXES):
        kind, measure = flink_name.split("_", 1)
        return f"{kind}.{measure}"
    return flink_name


def read_counters(rest_url: str, namespace: str = NAMESPACE) -> dict[str, int] | None:
    """``{counter name: value}`` of ``namespace`` summed over the running job's
    vertices and subtasks, or None when no job runs."""
    base = rest_url.rstrip("/")
    jobs = [job for job in _get(f"{base}/jobs/overview")["jobs"] if job["state"] == "RUNNING"]
    if not jobs:
        return None
    job = max(jobs, key=lambda j: j["start-time"])["jid"]
    marker = f".{namespace}_"
    totals: dict[str, int] = {}
    for vertex in _get(f"{base}/jobs/{job}")["vertices"]:
        metrics_url = f"{base}/jobs/{job}/vertices/{vertex['id']}/subtasks/metrics"
        ids = [m["id"] for m in _get(metrics_url) if marker in m["id"]]
        if not ids:
            continue
        query = urllib.parse.urlencode({"get": ",".join(ids), "agg": "sum"})
        for metric in _get(f"{metrics_url}?{query}"):
            name = beam_name(metric["id"].split(marker, 1)[1])
            totals[name] = totals.get(name, 0) + int(float(metric.get("sum", 0)))
    return totals


def job_running(rest_url: str) -> bool:
    """Whether a job runs on the cluster with every task running (it can read)."""
    try:
        jobs = _get(f"{rest_url.rstrip('/')}/jobs/overview")["jobs"]
    except (OSError, ValueError, KeyError):
        return False
    return any(job["state"] == "RUNNING" and job["tasks"]["running"] == job["tasks"]["total"] for job in jobs)


def start_when_running(rest_url: str, start: Callable[[], None], timeout_seconds: float = 600.0) -> threading.Thread:
    """Call ``start`` (on a thread of its own) once a job runs on the cluster,
    or after ``timeout_seconds`` (the job then reads a backlog)."""

    def wait() -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline and not job_running(rest_url):
            time.sleep(1.0)
        start()

    thread = threading.Thread(target=wait, name="start-when-flink-runs", daemon=True)
    thread.start()
    return thread


class _Counters(MetricResults):
    """Counters as Beam's ``MetricResults`` give them to ``summarize``."""

    def __init__(self, counters: dict[str, int], namespace: str) -> None:
        self._results = [MetricResult(MetricKey("flink", MetricName(namespace, name)), value, value)
                         for name, value in sorted(counters.items())]

    def query(self, filter: Any = None) -> dict[str, list[MetricResult]]:
        counters = [r for r in self._results if MetricResults.matches(filter, r.key)]
        return {self.COUNTERS: counters, self.DISTRIBUTIONS: [], self.GAUGES: [], self.STRINGSETS: [],
                self.BOUNDED_TRIES: []}


class FlinkCountersResult:
    """A ``PipelineResult`` whose ``metrics()`` fall back to Flink's REST API
    (module docstring); everything else is the runner's result."""

    def __init__(self, result: Any, rest_url: str, namespace: str = NAMESPACE) -> None:
        self._result = result
        self._rest_url = rest_url
        self._namespace = namespace
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}
        self._read_at = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._result, name)

    def metrics(self) -> MetricResults:
        own = self._result.metrics()
        if own.query()[MetricResults.COUNTERS]:
            return own
        with self._lock:
            if time.monotonic() - self._read_at >= CACHE_SECONDS:
                self._read_at = time.monotonic()
                try:
                    counters = read_counters(self._rest_url, self._namespace)
                except (OSError, ValueError, KeyError) as err:
                    _LOG.debug("Flink REST %s: %s", self._rest_url, err)
                    counters = None
                if counters:
                    self._last = counters
            return _Counters(self._last, self._namespace)
