"""The portal's pages over HTTP, without a browser: sign-in, CSRF, the
security headers of every answer, the form's errors, and "test destination"
through the job's sinks to real receivers."""

from __future__ import annotations

import re
import uuid

import pytest

from portal.app import SECURITY_HEADERS
from schemas.stream_store import load_stream_config_db
from sinks.outbound import SIGNATURE_HEADER, verify_signature
from tests.e2e.portal_fixtures import kinesis, rest_bulk

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _signed_in(portal, who: str = "a") -> str:
    token = CSRF.search(portal.client.get("/portal/login").text).group(1)
    answer = portal.client.post("/portal/login", data={"csrf_token": token, "api_key": portal.keys[who]},
                                follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return CSRF.search(portal.client.get("/portal/data-streams").text).group(1)


@pytest.mark.parametrize("path", ["/portal/login", "/portal/data-streams", "/api/v1/data-streams",
                                  "/api/v1/openapi.json", "/portal/static/portal.css"])
def test_every_answer_carries_the_security_headers(portal, path):
    answer = portal.client.get(path, follow_redirects=False)
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers.get(name) == value, (path, name)


def test_pages_need_a_session_and_a_wrong_key_is_refused(portal):
    for path in ("/portal/data-streams", "/portal/data-streams/new", "/portal/data-streams/ds-x"):
        answer = portal.client.get(path, follow_redirects=False)
        assert (answer.status_code, answer.headers["location"]) == (303, "/portal/login"), path
    token = CSRF.search(portal.client.get("/portal/login").text).group(1)
    answer = portal.client.post("/portal/login", data={"csrf_token": token, "api_key": "dsk_wrong"})
    assert answer.status_code == 401 and "not valid" in answer.text
    cookie = portal.client.cookies.get("portal_session")
    assert cookie and portal.keys["a"] not in cookie


def test_a_form_without_the_sessions_csrf_token_changes_nothing(portal):
    stream_id = portal.create("a", rest_bulk())["id"]
    token = _signed_in(portal)
    for action in ("deactivate", "delete"):
        for sent in ({}, {"csrf_token": "forged"}):
            answer = portal.client.post(f"/portal/data-streams/{stream_id}/{action}", data=sent)
            assert answer.status_code == 403, (action, sent)
    answer = portal.client.post("/portal/data-streams/new", data={
        "csrf_token": "forged", "stream_type": "both", "api_type": "rest_api_bulk",
        "rest_api_bulk.url": "http://127.0.0.1:9/x"})
    assert answer.status_code == 403
    streams = portal.client.get("/api/v1/data-streams", headers=portal.headers("a")).json()
    assert [(s["id"], s["status"]["state"]) for s in streams] == [(stream_id, "Running")]
    cookie = next(c for c in portal.client.cookies.jar if c.name == "portal_session")
    assert cookie.has_nonstandard_attr("HttpOnly") or "httponly" in str(cookie._rest).lower()
    assert token


def test_the_form_names_the_field_and_never_sends_a_credential_back(portal):
    token = _signed_in(portal)
    answer = portal.client.post("/portal/data-streams/new", data={
        "csrf_token": token, "stream_type": "usage", "api_type": "aws_kinesis",
        "aws_kinesis.access_key_id": "AKIAEXAMPLE0001", "aws_kinesis.secret_access_key": "typed-secret-value-99",
        "aws_kinesis.region": "moon-1", "aws_kinesis.stream_name": "usage"})
    assert answer.status_code == 422
    assert 'data-field="kinesis.region"' in answer.text and "not an AWS region" in answer.text
    assert "typed-secret-value-99" not in answer.text and "AKIAEXAMPLE0001" not in answer.text
    assert 'value="usage"' in answer.text, "the other fields are kept"
    missing = portal.client.post("/portal/data-streams/new", data={
        "csrf_token": token, "stream_type": "usage", "api_type": "aws_s3", "aws_s3.bucket": "b"})
    assert missing.status_code == 422 and "AWS Access Key is required." in missing.text


def test_the_form_stores_a_stream_with_the_guides_fields_only(portal):
    token = _signed_in(portal)
    page = portal.client.get("/portal/data-streams/new").text
    labels = re.findall(r'<label for="aws_s3\.[a-z_]+">([^<]+)</label>', page)
    assert labels == ["AWS Access Key", "AWS Secret Key", "S3 Bucket"]
    answer = portal.client.post("/portal/data-streams/new", follow_redirects=True, data={
        "csrf_token": token, "stream_type": "usage", "api_type": "aws_s3", "aws_s3.access_key_id": "AKIA1",
        "aws_s3.secret_access_key": "s3-secret", "aws_s3.bucket": "customer-bucket", "historic_data": "on",
        "rest_api.url": "http://ignored.example/"})
    assert answer.status_code == 200 and "stored and activated" in answer.text
    (stream,) = load_stream_config_db(portal.database_url).streams.values()
    assert (stream.api_type, stream.destination.target, stream.historic_data) == ("aws_s3", "customer-bucket", True)
    assert stream.destination.region == "eu-central-1", "the form has no region: the portal's default"
    assert "Pending" in answer.text, "awaiting its history"


def test_delete_has_a_confirmation_page_without_javascript(portal):
    stream_id = portal.create("a", rest_bulk())["id"]
    token = _signed_in(portal)
    page = portal.client.get(f"/portal/data-streams/{stream_id}/delete").text
    assert "Do you really want to delete this data stream" in page and ">Cancel<" in page
    assert portal.client.get("/api/v1/data-streams", headers=portal.headers("a")).json(), "not deleted yet"
    portal.client.post(f"/portal/data-streams/{stream_id}/delete", data={"csrf_token": token})
    assert portal.client.get("/api/v1/data-streams", headers=portal.headers("a")).json() == []


def test_test_destination_sends_one_signed_sample_and_touches_no_count(portal, http_receiver):
    created = portal.create("a", rest_bulk(url=f"{http_receiver.url}/hook", stream_type="events"))
    answer = portal.client.post(f"/api/v1/data-streams/{created['id']}/test", headers=portal.headers("a")).json()
    assert (answer["ok"], answer["remote_status"], answer["error"]) == (True, "202", None)
    (request,) = http_receiver.requests("/hook")
    (document,) = request.json()
    assert document["organisation"]["id"] == created["organisation_id"] and "event_type" in document
    assert verify_signature(created["signing_secret"], request.header(SIGNATURE_HEADER), request.body)
    status = portal.client.get(f"/api/v1/data-streams/{created['id']}/status", headers=portal.headers("a")).json()
    assert (status["last_data"], status["delivered_last_hour"], status["remote_status"]) == (None, 0, None)

    from tools.local_destinations import Reply

    http_receiver.responder = lambda request: Reply(status=503)
    failed = portal.client.post(f"/api/v1/data-streams/{created['id']}/test", headers=portal.headers("a")).json()
    assert (failed["ok"], failed["remote_status"]) == (False, "503") and failed["error"]
    assert len(http_receiver.requests("/hook")) == 2, "one attempt, no retries"


def test_test_destination_reaches_kinesis_through_the_aws_sink(portal, aws_session, moto_server):
    kinesis_client = aws_session("kinesis")
    name = f"usage-{uuid.uuid4().hex[:8]}"  # moto's server is shared by the session
    kinesis_client.create_stream(StreamName=name, ShardCount=1)
    kinesis_client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2})
    body = kinesis()
    body["kinesis"].update(stream_name=name, endpoint_url=moto_server.url, access_key_id="test",
                           secret_access_key="test")
    created = portal.create("a", body)
    answer = portal.client.post(f"/api/v1/data-streams/{created['id']}/test", headers=portal.headers("a")).json()
    assert answer["ok"] is True and answer["remote_status"] == "200", answer
    missing = portal.client.patch(f"/api/v1/data-streams/{created['id']}", headers=portal.headers("a"),
                                  json={"kinesis": {"stream_name": "no-such-stream"}})
    assert missing.status_code == 200
    failed = portal.client.post(f"/api/v1/data-streams/{created['id']}/test", headers=portal.headers("a")).json()
    assert failed["ok"] is False and failed["remote_status"] == "ResourceNotFoundException", failed
