"""Schemathesis fuzzes the portal's API from its own OpenAPI description, over
HTTP, against the real service (``python -m portal serve``, uvicorn) on a real
PostgreSQL database (the production choice, and the stricter one: it refuses
NUL characters in text and integers past 64 bits that SQLite would take).

Every operation gets generated requests, valid and invalid, with an
organisation's key; the checks: never a 5xx, and every answer (status code,
content type, headers, body) is one the description declares."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from portal.auth import create_key, ensure_organisation
from portal.db import migrate
from schemas.sealing import KEY_ENV, new_key
from schemas.stream_store import engine_for
from tools.processes import PortService, free_port

ROOT = Path(__file__).resolve().parents[2]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
KEYS: dict[str, str] = {}


@pytest.fixture(scope="module")
def portal_server(postgres_server):
    database_url = postgres_server.create_database("fuzz")
    migrate(database_url)
    with engine_for(database_url).begin() as connection:
        ensure_organisation(connection, 80025, "WBV Tester")
        KEYS["a"] = create_key(connection, 80025, "fuzz")
    port = free_port()
    env = {**os.environ, KEY_ENV: new_key(), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "portal", "serve", "--database_url", database_url, "--port", str(port),
               "--allow_insecure_destinations"]
    with PortService(command, port, env=env, startup_timeout=60.0) as service:
        service.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        yield service


@pytest.fixture(scope="module")
def portal_schema(portal_server):
    return schemathesis.openapi.from_url(f"{portal_server.url}/api/v1/openapi.json")


def _streams(base: str) -> list[str]:
    """A few streams of every API type, for the generated requests to act on."""
    bodies = [
        {"stream_type": "both", "api_type": "rest_api", "rest": {"url": "http://127.0.0.1:9/a"}},
        {"stream_type": "events", "api_type": "rest_api_bulk", "rest": {"url": "http://127.0.0.1:9/b"},
         "historic_data": True},
        {"stream_type": "usage", "api_type": "aws_kinesis", "kinesis": {
            "access_key_id": "AK", "secret_access_key": "SK", "region": "eu-central-1", "stream_name": "s",
            "endpoint_url": "http://127.0.0.1:9"}},
        {"stream_type": "usage", "api_type": "aws_s3", "s3": {
            "access_key_id": "AK", "secret_access_key": "SK", "bucket": f"fuzz-{uuid.uuid4().hex[:12]}",
            "endpoint_url": "http://127.0.0.1:9"}},
        {"stream_type": "usage", "api_type": "datadog", "datadog": {"api_key": "k", "url": "http://127.0.0.1:9"}},
    ]
    ids = []
    for body in bodies:
        answer = requests.post(f"{base}/api/v1/data-streams", json=body, headers={"X-API-Key": KEYS["a"]},
                               timeout=30)
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    return ids


def test_no_server_error_and_every_answer_as_described(portal_server, portal_schema):
    """Each operation in turn (not schemathesis' pytest plugin, which reads
    ``item._nodeid``, gone in pytest 9: the same break as xdist's groups,
    docs/testing.md)."""
    operations = [result.ok() for result in portal_schema.get_all_operations()]
    assert len(operations) >= 14, [operation.label for operation in operations]
    for operation in operations:
        ids = _streams(portal_server.url)  # afresh: the last operation's requests may have deleted them

        @given(case=operation.as_strategy(), existing=st.sampled_from([None, *ids]))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case, existing):
            if existing and case.path_parameters and "stream_id" in case.path_parameters:
                case.path_parameters["stream_id"] = existing  # a stream that exists, half of the time
            case.call_and_validate(headers={"X-API-Key": KEYS["a"]}, checks=CHECKS)

        try:
            fuzz()
        except Exception as err:
            raise AssertionError(f"{operation.label}: {err}") from err
