"""The batch job on Apache Flink: Beam's ``FlinkRunner`` with
``--flink_master=[local]`` (``make run-flink``); Beam's Flink job server from the
Maven class path of ``tools/flink``, the Python SDK workers in a worker pool
process. It must deliver exactly what the FnApiRunner delivers on the same input,
compared as ``test_portable_runner.py`` compares (document by document, S3 files by
name and rows, DataDog by points).

The standalone cluster runs the streaming job in ``test_flink_submit.py`` and
``test_crash_flink.py``. The batch job on it delivered the same as well, but took
four minutes of the suite's 25 (2026-12-03), so it is run by hand:
``python -m tools.run_flink --flink_master=<host:port>`` (docs/flink.md).

Needs Java 17 and Maven (the jars are fetched into ~/.m2 on first use).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_portable_runner import _run, fleet, secrets_in_env  # noqa: F401 (fixtures)
from tools import runners
from tools.portable import WorkerPool
from tools.processes import group_alive
from tools.run_flink import flink_flags

pytestmark = pytest.mark.flink

STREAMS = ("rest-events", "bulk-both", "bulk-other", "kinesis-usage", "s3-both", "dd")


@pytest.fixture(scope="module")
def direct(fleet, tmp_path_factory, moto_server, secrets_in_env) -> dict[str, Any]:  # noqa: F811
    """The same input on the FnApiRunner (its own buckets and Kinesis stream)."""
    return _run(fleet, tmp_path_factory.mktemp("fnapi"), moto_server.url, "fnapi-for-flink",
                [runners.runner_flag(streaming=False)])


@pytest.fixture(scope="module")
def flink(fleet, tmp_path_factory, moto_server, secrets_in_env) -> dict[str, Any]:  # noqa: F811
    logs: Path = tmp_path_factory.mktemp("flink-services")
    with WorkerPool(env=os.environ, log_path=logs / "worker_pool.log") as pool:
        result = _run(fleet, tmp_path_factory.mktemp("flink"), moto_server.url, "flink",
                      flink_flags("[local]", pool))
        result["pool_pid"] = pool.pid
        result["worker_log"] = (logs / "worker_pool.log").read_text()
    return result


def test_the_flink_run_succeeds_reconciles_and_used_the_worker_pool(flink, direct):
    assert (direct["code"], flink["code"]) == (0, 0)
    assert flink["summary"]["reconciled"] is True
    assert "Starting worker with command" in flink["worker_log"]
    assert not group_alive(flink["pool_pid"])
    for key in STREAMS:
        assert direct[key], key


@pytest.mark.parametrize("output", ["events", "usage", "dead_letters"])
def test_the_same_documents_and_dead_letters_as_the_fnapi_runner(direct, flink, output):
    assert direct[output] and flink[output] == direct[output]


@pytest.mark.parametrize("stream", STREAMS)
def test_each_destination_receives_the_same_as_on_the_fnapi_runner(direct, flink, stream):
    assert flink[stream] == direct[stream]


def test_the_same_counts_as_on_the_fnapi_runner(direct, flink):
    for key in ("event", "usage", "streams", "delivery_dead_letters"):
        assert flink["summary"][key] == direct["summary"][key], key
    documents = {api: counts["documents"] for api, counts in direct["summary"]["deliveries"].items()}
    assert {api: counts["documents"] for api, counts in flink["summary"]["deliveries"].items()} == documents
