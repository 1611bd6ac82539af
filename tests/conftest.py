"""Shared fixtures (reference directories written in each supported format, local
services) and the test tiers.

Tiers, by folder, each with its marker (``pytest.ini``): ``unit`` (functions and
DoFns called directly), ``composite`` (``TestPipeline``/``TestStream`` graphs),
``e2e`` (the job against real local services), ``tools`` (the bench, the sample
fleet, the emulator, the DirectRunner workarounds). ``make test-fast`` runs unit
and composite.

Property tests (hypothesis) run a few dozen examples each in the normal suite
(profile ``fast``, the default). ``HYPOTHESIS_PROFILE=long`` runs many more per
round, and ``HYPOTHESIS_SECONDS=<s>`` makes each property of
``tests/unit/test_hostile_input.py`` run rounds for ``s`` seconds and print how many
examples it ran: the long run, e.g. ``HYPOTHESIS_PROFILE=long
HYPOTHESIS_SECONDS=200 pytest -s tests/unit/test_hostile_input.py -k raises_nothing``.

Runners (``tools/runners.py``): a ``TestPipeline()`` without options runs on the
batch runner, Beam's FnApiRunner; tests of streaming graphs name the
BundleBasedDirectRunner, for which the session installs the workarounds of
``tools/direct_runner`` (the tests, like the local launchers, are where they
apply; the job never applies them).

Browser tests (``tools/browser.py``): ``browser`` is headless Chromium for a test
module, ``page`` a fresh context's page per test, ``screenshot_dir`` the test's
``out/screenshots/<test name>/``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from hypothesis import HealthCheck, settings

from schemas.arrow import arrow_schema
from schemas.fields import record_fields
from tests import guide_samples
from tools import runners
from tools.direct_runner import apply_direct_runner_fixes
from transforms.reference import ReferenceData, build_reference_data

TIERS = ("unit", "composite", "e2e", "tools")

TestPipeline.pytest_test_pipeline_options = runners.runner_flag(streaming=False)
apply_direct_runner_fixes()

_RELAXED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("fast", max_examples=40, deadline=None, suppress_health_check=_RELAXED)
settings.register_profile("long", max_examples=2_000, deadline=None, suppress_health_check=_RELAXED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with the tier of its folder; put the tests marked
    ``beside`` after the others (a stable sort: the order is otherwise kept),
    so that in make test's Flink lane they run once the alone tests are done."""
    for item in items:
        parts = item.path.parts
        tier = next((name for name in TIERS if name in parts[parts.index("tests") + 1:][:1]), None)
        if tier is None:
            raise pytest.UsageError(f"{item.nodeid}: a test belongs in tests/{{{','.join(TIERS)}}}/")
        item.add_marker(getattr(pytest.mark, tier))
    items.sort(key=lambda item: item.get_closest_marker("beside") is not None)


def write_reference(directory: Path, tables: dict[str, list[dict[str, Any]]], fmt: str = "json") -> Path:
    """Write one file per entity in ``fmt`` (json, jsonl, csv or parquet)."""
    directory.mkdir(parents=True, exist_ok=True)
    for entity, rows in tables.items():
        specs = record_fields(f"reference/{entity}")
        path = directory / f"{entity}.{fmt}"
        if fmt == "json":
            path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        elif fmt == "jsonl":
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        elif fmt == "csv":
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=[s.name for s in specs])
                writer.writeheader()
                for row in rows:
                    writer.writerow({k: "" if v is None else v for k, v in row.items()})
        elif fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema(f"reference/{entity}")), path)
        else:
            raise ValueError(fmt)
    return directory


def reference_from_tables(tables: dict[str, list[dict[str, Any]]]) -> ReferenceData:
    return build_reference_data({e: {r["id"]: dict(r) for r in rows} for e, rows in tables.items()})


@pytest.fixture
def sample_tables() -> dict[str, list[dict[str, Any]]]:
    return guide_samples.reference_tables()


@pytest.fixture
def sample_reference(sample_tables) -> ReferenceData:
    return reference_from_tables(sample_tables)


@pytest.fixture
def sample_reference_dir(tmp_path, sample_tables) -> Path:
    return write_reference(tmp_path / "reference", sample_tables)


@pytest.fixture
def stream_secrets(monkeypatch) -> dict[str, str]:
    """Set the test streams' credentials in the environment, as a worker has them."""
    from tests.streams import SECRETS

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return SECRETS


@pytest.fixture(scope="session")
def moto_server():
    """moto's server on loopback for S3 and Kinesis, shared by the session."""
    from tools.local_destinations import MotoServer

    with MotoServer() as server:
        yield server


@pytest.fixture
def http_receiver():
    """A real HTTP server on 127.0.0.1 that records requests; ``.responder`` can be
    replaced to answer differently."""
    from tools.local_destinations import HttpReceiver

    with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture
def aws_session(moto_server):
    """boto3 clients on the moto server, for tests to create and read back
    buckets and streams."""
    import boto3

    from tests.streams import REGION

    def client(service: str):
        return boto3.client(service, endpoint_url=moto_server.url, region_name=REGION,
                            aws_access_key_id="test", aws_secret_access_key="test")

    return client


@pytest.fixture(scope="module")
def pubsub_emulator():
    """The real Pub/Sub emulator (``gcloud beta emulators pubsub start``) on a free
    loopback port, shared by a test module; ``PUBSUB_EMULATOR_HOST`` points at it
    meanwhile. Missing tools fail the test with what to install: the streaming
    tests are not optional."""
    from tools.pubsub_emulator import EmulatorToolsError, PubSubEmulator, check_tools

    try:
        check_tools()
    except EmulatorToolsError as err:
        pytest.fail(str(err), pytrace=False)
    with PubSubEmulator() as emulator:
        yield emulator


#: Browser tests keep their screenshots here, one folder per test (artifacts, never committed).
SCREENSHOTS = Path(__file__).resolve().parents[1] / "out" / "screenshots"


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's, ``tools/browser.py``) as a Playwright ``Browser``,
    shared by a test module and closed at its end with every Chromium process of it.
    No Chromium (or no Playwright) fails the test with what to install: the browser
    tests are not optional. Module scope (a launch is about a second): while it is
    open, the main thread has Playwright's running asyncio loop, and
    ``asyncio.run()`` fails there (docs/testing.md, Browser tests); other modules
    never see it."""
    from tools.browser import ChromiumMissingError, check_browser_tools, headless_chromium

    try:
        executable, missing = check_browser_tools(), None
    except ChromiumMissingError as err:
        executable, missing = None, str(err)
    if missing is not None:  # failed outside the except: pytest would print the message twice
        pytest.fail(missing, pytrace=False)
    with headless_chromium(executable) as launched:
        yield launched


@pytest.fixture
def page(browser):
    """A fresh browser context (no cookies or storage from another test) and a page
    in it; both closed after the test."""
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def screenshot_dir(request) -> Path:
    """``out/screenshots/<test name>/``, emptied and created for this test
    (``tools.browser.save_screenshot(page, screenshot_dir, name)`` writes there)."""
    from tools.browser import safe_file_name

    directory = SCREENSHOTS / safe_file_name(request.node.name)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (``tools/postgres.py``: initdb, pg_ctl) on a free
    loopback port, shared by the session and removed at its end. Missing server
    binaries fail the test with what to install (``make postgres``): the portal's
    database tests are not optional."""
    from tools.postgres import PostgresServer, PostgresToolsError

    server, missing = PostgresServer(), None
    try:
        server.start()
    except PostgresToolsError as err:
        missing = str(err)
    if missing is not None:  # outside the except: the message once, not twice
        pytest.fail(missing, pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> Iterator[str]:
    """The SQLAlchemy URL (``postgresql+psycopg://...``) of a new, empty database
    for this test alone, on the session's server; dropped afterwards, with any
    connection the test left open."""
    name = f"test_{uuid.uuid4().hex}"
    yield postgres_server.create_database(name)
    postgres_server.drop_database(name)
