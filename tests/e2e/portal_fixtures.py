"""What the portal's tests share: the app on a real database (an SQLite file, or a
fresh database of a PostgreSQL server the tests start: ``tests/conftest.py``'s
``postgres_url``), organisations, and their keys."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from portal.app import PortalSettings, create_app
from portal.auth import create_key, ensure_organisation
from portal.streams import PortalRules
from schemas.sealing import KEY_ENV, new_key
from tools.processes import PortService, free_port

ROOT = Path(__file__).resolve().parents[2]
ORG_A, ORG_B = 80025, 839921


@dataclass
class Portal:
    client: TestClient
    database_url: str
    sealing_key: str
    keys: dict[str, str]

    def headers(self, who: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[who]}

    def create(self, who: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = self.client.post("/api/v1/data-streams", json=body, headers=self.headers(who))
        assert answer.status_code == 201, answer.text
        return answer.json()


def make_portal(database_url: str, rules: PortalRules | None = None) -> Portal:
    key = new_key()
    app = create_app(PortalSettings(database_url=database_url, sealing_keys=[key],
                                    rules=rules or PortalRules(allow_insecure_destinations=True)))
    with app.state.engine.begin() as connection:
        ensure_organisation(connection, ORG_A, "WBV Tester")
        ensure_organisation(connection, ORG_B, "Other Org")
        keys = {"a": create_key(connection, ORG_A, "a"), "b": create_key(connection, ORG_B, "b"),
                "operator": create_key(connection, None, "operations")}
    return Portal(TestClient(app), database_url, key, keys)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """Each test against an SQLite file and a PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'portal.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def portal(database_url: str) -> Portal:
    return make_portal(database_url)


def rest_bulk(url: str = "http://127.0.0.1:9/hook", **extra: Any) -> dict[str, Any]:
    return {"stream_type": "both", "api_type": "rest_api_bulk", "rest": {"url": url}, **extra}


def kinesis(**extra: Any) -> dict[str, Any]:
    return {"stream_type": "usage", "api_type": "aws_kinesis",
            "kinesis": {"access_key_id": "AKIAEXAMPLEKEY0001", "secret_access_key": "s3cr3t-kinesis-value-xyz",
                        "region": "eu-central-1", "stream_name": "usage"}, **extra}


def serve_portal(database_url: str, sealing_key: str) -> PortService:
    """The portal as it runs (``python -m portal serve``, uvicorn) on a free
    port, not started yet (``with`` starts and stops it)."""
    port = free_port()
    env = {**os.environ, KEY_ENV: sealing_key, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "portal", "serve", "--database_url", database_url, "--port", str(port),
               "--allow_insecure_destinations"]
    service = PortService(command, port, env=env, startup_timeout=60.0)
    service.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return service
