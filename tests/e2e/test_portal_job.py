"""The batch job on the portal's stream store (``--streams_db``), SQLite and
PostgreSQL: streams made through the API are delivered to (their typed
credentials opened from the seal), a paused stream's documents are parked, a
deleted stream gets nothing, and the status, counts and recent deliveries the
API shows are what the job saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import data_streamer
from schemas.sealing import KEY_ENV
from sinks.outbound import SIGNATURE_HEADER, verify_signature
from tests.e2e.portal_fixtures import make_portal
from tools.sample_fleet import generate


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("fleet")
    generate(directory, seed=11, days=1, endpoints=20)
    return directory


def test_the_job_delivers_what_the_portal_holds_and_reports_back(database_url, fleet, tmp_path, http_receiver,
                                                                  monkeypatch):
    organisation = min(o["id"] for o in json.loads((fleet / "reference" / "organisation.json").read_text()))
    portal = make_portal(database_url)
    with portal.client.app.state.engine.begin() as connection:
        from portal.auth import ensure_organisation

        ensure_organisation(connection, organisation)
    body = lambda path, **extra: {"stream_type": "both", "api_type": "rest_api_bulk",  # noqa: E731
                                  "organisation_id": organisation, "rest": {"url": f"{http_receiver.url}/{path}"},
                                  **extra}
    live = portal.create("operator", body("live", rest={"url": f"{http_receiver.url}/live",
                                                        "signing_secret": "typed-signing-secret-0001"}))
    paused = portal.create("operator", body("paused"))
    gone = portal.create("operator", body("gone"))
    portal.client.post(f"/api/v1/data-streams/{paused['id']}/deactivate", headers=portal.headers("operator"))
    assert portal.client.delete(f"/api/v1/data-streams/{gone['id']}",
                                headers=portal.headers("operator")).status_code == 204

    monkeypatch.setenv(KEY_ENV, portal.sealing_key)
    out = tmp_path / "out"
    code = data_streamer.main([
        f"--events_input={fleet / 'raw' / 'events.jsonl'}", f"--usage_input={fleet / 'raw' / 'usage.jsonl'}",
        f"--reference_dir={fleet / 'reference'}", f"--streams_db={database_url}", f"--output_dir={out}",
        "--allow_insecure_destinations",
    ])
    assert code is None or code == 0

    received = http_receiver.requests("/live")
    documents = [doc for request in received for doc in request.json()]
    assert documents, "the live stream received its organisation's documents"
    assert {doc["organisation"]["id"] for doc in documents} == {organisation}
    for request in received:  # signed with the credential typed into the portal, opened from its seal
        assert verify_signature("typed-signing-secret-0001", request.header(SIGNATURE_HEADER), request.body)
    assert http_receiver.requests("/paused") == [] and http_receiver.requests("/gone") == []
    parked = [json.loads(path.read_text()) for path in (out / "parked" / paused["id"]).glob("*.json")]
    assert sum(len(batch["documents"]) for batch in parked) == len(documents), "the paused stream's are kept"

    # What the API shows is what the job saw.
    view = portal.client.get(f"/api/v1/data-streams/{live['id']}", headers=portal.headers("operator")).json()
    status = view["status"]
    assert (status["state"], status["remote_status"]) == ("Running", "202")
    assert status["last_data"] is not None
    assert status["delivered_last_day"] == len(documents) and status["parked_last_day"] == 0
    recent = portal.client.get(f"/api/v1/data-streams/{live['id']}/deliveries",
                               headers=portal.headers("operator")).json()
    assert sum(d["documents"] for d in recent) == len(documents) and {d["status"] for d in recent} == {"delivered"}
    paused_status = portal.client.get(f"/api/v1/data-streams/{paused['id']}/status",
                                      headers=portal.headers("operator")).json()
    assert paused_status["state"] == "Paused" and paused_status["parked_last_day"] == len(documents)
    assert portal.client.get(f"/api/v1/data-streams/{gone['id']}",
                             headers=portal.headers("operator")).status_code == 404
