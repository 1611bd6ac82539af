"""The portal's API on a real database: SQLite and PostgreSQL (a server the
tests start). Every state transition of the contract, validation by the job's
rules, credentials that never come back, and what the job reports."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from portal.db import current_revision, head_revision
from schemas.sealing import Sealer
from schemas.stream_store import (
    data_streams,
    engine_for,
    load_stream_config_db,
    mark_history_delivered_db,
    record_deliveries_db,
    record_parked_db,
    stream_status,
    write_status_db,
)
from schemas.timestamps import now_iso
from tests.e2e.portal_fixtures import ORG_A, ORG_B, kinesis, rest_bulk


def _status_row(stream_id: str, **values) -> dict:
    return {"stream_id": stream_id, "state": "active", "error": None, "last_success_at": None,
            "last_remote_status": None, "consecutive_failures": 0, "circuit": "closed", "next_probe_at": None,
            "updated_at": now_iso(), **values}


def test_the_database_is_migrated_to_the_head_revision(portal):
    assert current_revision(portal.database_url) == head_revision() == "0001"


def test_a_request_without_a_valid_key_is_refused(portal):
    for headers in ({}, {"X-API-Key": "dsk_nothing-like-a-key"}, {"Authorization": "Bearer x"}):
        answer = portal.client.get("/api/v1/data-streams", headers=headers)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer", headers
    bearer = {"Authorization": f"Bearer {portal.keys['a']}"}
    assert portal.client.get("/api/v1/data-streams", headers=bearer).status_code == 200


def test_create_read_list_update_delete(portal):
    created = portal.create("a", rest_bulk(historic_data=False))
    stream_id = created["id"]
    assert stream_id.startswith("ds-") and created["organisation_id"] == ORG_A
    assert created["signing_secret"].startswith("whsec_"), "made by the portal, shown once"
    assert created["rest"]["signing_secret"] == {"kind": "value", "shown": "********"}
    assert created["status"]["state"] == "Running" and created["url"] == "http://127.0.0.1:9/hook"

    read = portal.client.get(f"/api/v1/data-streams/{stream_id}", headers=portal.headers("a")).json()
    assert "signing_secret" not in read and read["rest"] == created["rest"]
    listed = portal.client.get("/api/v1/data-streams", headers=portal.headers("a")).json()
    assert [s["id"] for s in listed] == [stream_id]

    updated = portal.client.patch(f"/api/v1/data-streams/{stream_id}", headers=portal.headers("a"),
                                  json={"stream_type": "usage", "rest": {"url": "http://127.0.0.1:9/other"}})
    assert updated.status_code == 200, updated.text
    assert (updated.json()["stream_type"], updated.json()["url"]) == ("usage", "http://127.0.0.1:9/other")
    # The signing secret was kept: the same sealed value opens to the one shown at creation.
    with engine_for(portal.database_url).connect() as connection:
        row = connection.execute(sa.select(data_streams).where(data_streams.c.id == stream_id)).mappings().one()
    assert Sealer([portal.sealing_key]).open(row["config"]["rest"]["signing_secret"]["sealed"]) == \
        created["signing_secret"]

    assert portal.client.delete(f"/api/v1/data-streams/{stream_id}", headers=portal.headers("a")).status_code == 204
    assert portal.client.get(f"/api/v1/data-streams/{stream_id}", headers=portal.headers("a")).status_code == 404
    assert portal.client.get("/api/v1/data-streams", headers=portal.headers("a")).json() == []


def test_credentials_are_sealed_masked_and_never_answered_or_logged(portal, caplog):
    caplog.set_level(logging.DEBUG)
    body = kinesis()
    created = portal.create("a", body)
    secret = body["kinesis"]["secret_access_key"]
    assert created["kinesis"]["secret_access_key"] == {"kind": "value", "shown": "********"}
    answers = [portal.client.get(f"/api/v1/data-streams/{created['id']}", headers=portal.headers("a")).text,
               portal.client.get("/api/v1/data-streams", headers=portal.headers("operator")).text]
    bad = portal.client.post("/api/v1/data-streams", headers=portal.headers("a"),
                             json=kinesis(kinesis={**body["kinesis"], "region": "not-a-region"}))
    assert bad.status_code == 422
    answers.append(bad.text)
    with engine_for(portal.database_url).connect() as connection:
        stored = str(connection.execute(sa.select(data_streams.c.config)).scalars().all())
    for text in [*answers, stored, caplog.text]:
        assert secret not in text and body["kinesis"]["access_key_id"] not in text
    # The job opens what the portal sealed, with the same key.
    config = load_stream_config_db(portal.database_url)
    ref = config[created["id"]].destination.secret_access_key
    assert ref.sealed and Sealer([portal.sealing_key]).open(ref.sealed) == secret


def test_an_update_without_a_credential_keeps_it_and_a_new_one_replaces_it(portal):
    stream_id = portal.create("a", kinesis())["id"]
    kept = portal.client.patch(f"/api/v1/data-streams/{stream_id}", headers=portal.headers("a"),
                               json={"kinesis": {"stream_name": "usage-2"}})
    assert kept.status_code == 200, kept.text
    stream = load_stream_config_db(portal.database_url)[stream_id]
    sealer = Sealer([portal.sealing_key])
    assert stream.destination.target == "usage-2"
    assert sealer.open(stream.destination.secret_access_key.sealed) == "s3cr3t-kinesis-value-xyz"
    portal.client.patch(f"/api/v1/data-streams/{stream_id}", headers=portal.headers("a"),
                        json={"kinesis": {"secret_access_key": "rotated-value"}})
    stream = load_stream_config_db(portal.database_url)[stream_id]
    assert sealer.open(stream.destination.secret_access_key.sealed) == "rotated-value"


@pytest.mark.parametrize(("body", "field", "words"), [
    (kinesis(kinesis={"access_key_id": "a", "secret_access_key": "b", "region": "nowhere", "stream_name": "s"}),
     ["kinesis", "region"], "not an AWS region"),
    (rest_bulk(url="ftp://example.com/x"), ["rest", "url"], "http(s) URL"),
    (rest_bulk(url="https://user:pw@example.com/x"), ["rest", "url"], "credentials"),
    (rest_bulk(rest={"url": "http://127.0.0.1:9/x", "headers": {"Authorization": "Bearer x"}}),
     ["rest", "headers"], "credential header"),
    ({"stream_type": "events", "api_type": "datadog", "datadog": {"api_key": "k"}}, ["stream_type"],
     "must be usage for datadog"),
    ({"stream_type": "usage", "api_type": "aws_s3"}, ["s3"], "is required"),
    (rest_bulk(kinesis={"access_key_id": "a", "secret_access_key": "b", "region": "eu-central-1",
                        "stream_name": "s"}), ["kinesis"], "does not apply"),
    (rest_bulk(batching={"bulk_size": 0}), ["batching", "bulk_size"], "between 1 and 10,000"),
    (rest_bulk(rest={"url": "http://127.0.0.1:9/x", "auth_header": "X-Token"}), ["rest", "auth_header"],
     "go together"),
], ids=["region", "scheme", "userinfo", "credential-header", "datadog-events", "missing-block", "other-block",
        "bulk-size", "auth-pair"])
def test_what_the_job_would_refuse_is_422_naming_the_field(portal, body, field, words):
    answer = portal.client.post("/api/v1/data-streams", json=body, headers=portal.headers("a"))
    assert answer.status_code == 422, answer.text
    (problem,) = answer.json()["detail"]
    assert problem["loc"] == ["body", *field] and words in problem["msg"], problem
    assert portal.client.get("/api/v1/data-streams", headers=portal.headers("a")).json() == []


def test_the_outbound_rules_apply_at_create_and_update(database_url):
    from portal.streams import PortalRules
    from tests.e2e.portal_fixtures import make_portal

    strict = make_portal(database_url, PortalRules(allow_insecure_destinations=False))
    for url, words in (("http://example.com/x", "https"), ("https://127.0.0.1/x", "raw IP"),
                       ("https://localhost/x", "resolves to"), ("https://169.254.169.254/latest", "raw IP")):
        answer = strict.client.post("/api/v1/data-streams", json=rest_bulk(url=url), headers=strict.headers("a"))
        assert answer.status_code == 422, (url, answer.text)
        assert answer.json()["detail"][0]["loc"] == ["body", "rest", "url"]
        assert words in answer.json()["detail"][0]["msg"], (url, answer.json())


def test_unknown_fields_are_refused_not_dropped(portal):
    answer = portal.client.post("/api/v1/data-streams", headers=portal.headers("a"),
                                json={**rest_bulk(), "histroic_data": True})
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "histroic_data"]


def test_deactivate_activate_restart_and_the_states_the_job_reports(portal):
    stream_id = portal.create("a", rest_bulk())["id"]
    status = lambda: portal.client.get(f"/api/v1/data-streams/{stream_id}/status",  # noqa: E731
                                       headers=portal.headers("a")).json()
    assert status()["state"] == "Running"
    paused = portal.client.post(f"/api/v1/data-streams/{stream_id}/deactivate", headers=portal.headers("a")).json()
    assert paused["status"]["state"] == "Paused"
    assert load_stream_config_db(portal.database_url)[stream_id].state == "paused", "the job parks its documents"
    restart = portal.client.post(f"/api/v1/data-streams/{stream_id}/restart", headers=portal.headers("a"))
    assert restart.status_code == 409 and "not in Error" in restart.json()["detail"]
    active = portal.client.post(f"/api/v1/data-streams/{stream_id}/activate", headers=portal.headers("a")).json()
    assert active["status"]["state"] == "Running"
    with engine_for(portal.database_url).connect() as connection:
        resumed = connection.execute(sa.select(data_streams.c.resumed_at)).scalar_one()
    assert resumed is not None, "the job delivers the kept backlog first from then on"

    # What the job writes back.
    write_status_db(portal.database_url, [_status_row(stream_id, state="deactivated", error="auth_failed",
                                                      last_remote_status="401", consecutive_failures=1)])
    assert (status()["state"], status()["reason"], status()["remote_status"]) == ("Error", "auth_failed", "401")
    restarted = portal.client.post(f"/api/v1/data-streams/{stream_id}/restart", headers=portal.headers("a"))
    assert restarted.status_code == 200 and restarted.json()["status"]["state"] == "Running"


def test_a_stream_with_historic_data_is_pending_until_its_history_is_delivered(portal):
    stream_id = portal.create("a", rest_bulk(historic_data=True))["id"]
    view = portal.client.get(f"/api/v1/data-streams/{stream_id}", headers=portal.headers("a")).json()
    assert (view["status"]["state"], view["status"]["reason"]) == ("Pending", "awaiting_history")
    mark_history_delivered_db(portal.database_url, stream_id, now_iso())
    view = portal.client.get(f"/api/v1/data-streams/{stream_id}", headers=portal.headers("a")).json()
    assert view["status"]["state"] == "Running"


def test_counts_last_hour_and_day_recent_deliveries_and_the_hourly_chart(portal):
    stream_id = portal.create("a", rest_bulk())["id"]
    now = now_iso()
    results = [
        {"stream_id": stream_id, "started_at": now, "status": "delivered", "documents": 40, "failed_documents": 0,
         "parked_documents": 0, "status_code": 202, "error": None, "attempts": 1},
        {"stream_id": stream_id, "started_at": now, "status": "parked", "documents": 7, "failed_documents": 7,
         "parked_documents": 7, "status_code": 503, "error": None, "attempts": 5},
        {"stream_id": stream_id, "started_at": "2020-01-01T00:00:00.000+00:00", "status": "delivered",
         "documents": 1000, "failed_documents": 0, "parked_documents": 0, "status_code": 202, "error": None,
         "attempts": 1},
        {"stream_id": "ds-gone", "started_at": now, "status": "delivered", "documents": 5, "failed_documents": 0,
         "parked_documents": 0, "status_code": 202, "error": None, "attempts": 1},
    ]
    record_deliveries_db(portal.database_url, results)
    record_deliveries_db(portal.database_url, results[:1])
    record_parked_db(portal.database_url, stream_id, now, 7)  # the failed batch, as the park store writes it
    status = portal.client.get(f"/api/v1/data-streams/{stream_id}/status", headers=portal.headers("a")).json()
    assert (status["delivered_last_hour"], status["delivered_last_day"]) == (80, 80)
    assert (status["parked_last_hour"], status["parked_last_day"]) == (7, 7)
    recent = portal.client.get(f"/api/v1/data-streams/{stream_id}/deliveries", headers=portal.headers("a")).json()
    assert [(d["status"], d["remote_status"], d["documents"]) for d in recent][:3] == [
        ("delivered", "202", 40), ("parked", "503", 7), ("delivered", "202", 40)]
    hourly = portal.client.get(f"/api/v1/data-streams/{stream_id}/hourly", headers=portal.headers("a")).json()
    assert len(hourly) == 24 and hourly[-1] == {"hour": now[:13] + ":00:00Z", "delivered": 80, "parked": 7}
    assert sum(hour["delivered"] for hour in hourly) == 80


def test_delete_removes_everything_the_job_kept(portal):
    stream_id = portal.create("a", rest_bulk(historic_data=True))["id"]
    mark_history_delivered_db(portal.database_url, stream_id, now_iso())
    write_status_db(portal.database_url, [_status_row(stream_id, last_success_at=now_iso())])
    portal.client.delete(f"/api/v1/data-streams/{stream_id}", headers=portal.headers("a"))
    with engine_for(portal.database_url).connect() as connection:
        for table in ("stream_status", "delivery_counts", "recent_deliveries", "history_delivered"):
            assert connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one() == 0, table
    # The job's write-back for a deleted stream adds nothing.
    write_status_db(portal.database_url, [_status_row(stream_id)])
    with engine_for(portal.database_url).connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(stream_status)).scalar_one() == 0
    assert stream_id not in load_stream_config_db(portal.database_url).streams


def test_lookups_are_the_guides(portal):
    get = lambda path: portal.client.get(f"/api/v1/{path}", headers=portal.headers("a")).json()  # noqa: E731
    assert [t["id"] for t in get("stream-types")] == ["usage", "events", "both"]
    fields = {t["id"]: [f["label"] for f in t["fields"]] for t in get("api-types")}
    assert fields == {
        "rest_api": ["URL"], "rest_api_bulk": ["URL"],
        "aws_kinesis": ["AWS Access Key", "AWS Secret Key", "AWS Region", "Stream Name"],
        "aws_s3": ["AWS Access Key", "AWS Secret Key", "S3 Bucket"],
        "datadog": ["Application Key", "API Key"],
    }
    events = get("event-types")
    assert len(events) == 16 and events[1] == {"id": 1, "description": "Update location"}


def test_an_operator_creates_for_an_organisation_that_exists(portal):
    missing = portal.client.post("/api/v1/data-streams", json=rest_bulk(), headers=portal.headers("operator"))
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "organisation_id"]
    unknown = portal.client.post("/api/v1/data-streams", json=rest_bulk(organisation_id=4242),
                                 headers=portal.headers("operator"))
    assert unknown.status_code == 422 and "does not exist" in unknown.json()["detail"][0]["msg"]
    created = portal.create("operator", rest_bulk(organisation_id=ORG_B))
    assert created["organisation_id"] == ORG_B


def test_reseal_rotates_every_sealed_credential_to_the_first_key(portal, monkeypatch, capsys):
    from portal.__main__ import main
    from schemas.sealing import new_key

    stream_id = portal.create("a", kinesis())["id"]
    newer = new_key()
    monkeypatch.setenv("DATASTREAMER_SEALING_KEY", f"{newer},{portal.sealing_key}")
    assert main(["reseal", "--database_url", portal.database_url]) == 0
    assert "2 sealed credentials" in capsys.readouterr().out
    ref = load_stream_config_db(portal.database_url)[stream_id].destination.secret_access_key
    assert Sealer([newer]).open(ref.sealed) == "s3cr3t-kinesis-value-xyz", "the old key is no longer needed"


@pytest.mark.parametrize("body", [
    rest_bulk(url="http://127.0.0.1:9/a\x00b"),
    rest_bulk(rest={"url": "http://127.0.0.1:9/a", "headers": {"X-Tag": "a\x00b"}}),
    rest_bulk(rest={"url": "http://127.0.0.1:9/a", "auth_header": "X-Token",
                    "auth_secret": {"env": "DATASTREAMER_\x00"}}),
    kinesis(kinesis={"access_key_id": "a", "secret_access_key": "b", "region": "eu-central-1",
                     "stream_name": "s\x00"}),
    {"stream_type": "usage", "api_type": "aws_s3", "s3": {"access_key_id": "a", "secret_access_key": "b",
                                                          "bucket": "b", "prefix": "p\x00/"}},
    {"stream_type": "usage", "api_type": "datadog", "datadog": {"api_key": "k", "site": "datadoghq.com\x00"}},
    rest_bulk(organisation_id=2**63),
], ids=["url", "header", "secret-ref", "stream-name", "prefix", "site", "int64"])
def test_what_a_database_would_refuse_is_422_not_a_server_error(portal, body):
    """NUL characters (PostgreSQL refuses them in text and JSON) and integers past
    64 bits never reach the database."""
    answer = portal.client.post("/api/v1/data-streams", json=body, headers=portal.headers("a"))
    assert answer.status_code == 422, answer.text
