"""Tenancy: one organisation's key can neither read nor change another's
stream, nor learn that it exists; an operator's key sees all."""

from __future__ import annotations

from tests.e2e.portal_fixtures import ORG_A, ORG_B, rest_bulk

ACTIONS = ("deactivate", "activate", "restart", "test")


def _every_request(portal, who: str, stream_id: str) -> list[tuple[str, int, str]]:
    """(what, status, body) of every request naming ``stream_id``."""
    headers = portal.headers(who)
    client = portal.client
    answers = [
        ("read", client.get(f"/api/v1/data-streams/{stream_id}", headers=headers)),
        ("status", client.get(f"/api/v1/data-streams/{stream_id}/status", headers=headers)),
        ("deliveries", client.get(f"/api/v1/data-streams/{stream_id}/deliveries", headers=headers)),
        ("hourly", client.get(f"/api/v1/data-streams/{stream_id}/hourly", headers=headers)),
        ("update", client.patch(f"/api/v1/data-streams/{stream_id}", headers=headers,
                                json={"rest": {"url": "http://127.0.0.1:9/stolen"}})),
        *[(action, client.post(f"/api/v1/data-streams/{stream_id}/{action}", headers=headers))
          for action in ACTIONS],
        ("delete", client.delete(f"/api/v1/data-streams/{stream_id}", headers=headers)),
    ]
    return [(what, answer.status_code, answer.text) for what, answer in answers]


def test_another_organisations_stream_is_answered_as_one_that_does_not_exist(portal):
    theirs = portal.create("b", rest_bulk(url="http://127.0.0.1:9/theirs"))["id"]
    before = portal.client.get(f"/api/v1/data-streams/{theirs}", headers=portal.headers("b")).json()

    foreign = _every_request(portal, "a", theirs)
    nonexistent = _every_request(portal, "a", "ds-0000000000000000")
    assert [(what, status) for what, status, _ in foreign] == [(what, 404) for what, _, _ in foreign]
    # Byte for byte the answer for an id that does not exist: nothing tells the two apart.
    assert [(what, status, body) for what, status, body in foreign] == nonexistent
    assert all("theirs" not in body and str(ORG_B) not in body for _, _, body in foreign)

    after = portal.client.get(f"/api/v1/data-streams/{theirs}", headers=portal.headers("b")).json()
    assert after == before, "nothing changed"
    assert portal.client.get("/api/v1/data-streams", headers=portal.headers("a")).json() == []


def test_an_organisation_cannot_create_for_another(portal):
    answer = portal.client.post("/api/v1/data-streams", headers=portal.headers("a"),
                                json=rest_bulk(organisation_id=ORG_B))
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "organisation_id"]
    own = portal.create("a", rest_bulk(organisation_id=ORG_A))
    assert own["organisation_id"] == ORG_A


def test_ids_are_made_by_the_portal_so_none_can_be_probed(portal):
    answer = portal.client.post("/api/v1/data-streams", headers=portal.headers("a"), json={**rest_bulk(), "id": "x"})
    assert answer.status_code == 422, "an id is not a field a caller gives"
    ids = {portal.create("a", rest_bulk())["id"] for _ in range(3)}
    assert len(ids) == 3


def test_an_operator_sees_and_changes_every_organisations_streams(portal):
    mine = portal.create("a", rest_bulk())["id"]
    theirs = portal.create("b", rest_bulk())["id"]
    listed = portal.client.get("/api/v1/data-streams", headers=portal.headers("operator")).json()
    assert {(s["id"], s["organisation_id"]) for s in listed} == {(mine, ORG_A), (theirs, ORG_B)}
    paused = portal.client.post(f"/api/v1/data-streams/{theirs}/deactivate", headers=portal.headers("operator"))
    assert paused.json()["status"]["state"] == "Paused"
    assert [s["id"] for s in portal.client.get("/api/v1/data-streams", headers=portal.headers("b")).json()] == [theirs]


def test_a_revoked_key_is_refused(portal):
    from portal.auth import revoke_key

    with portal.client.app.state.engine.begin() as connection:
        assert revoke_key(connection, portal.keys["a"][:12])
    assert portal.client.get("/api/v1/data-streams", headers=portal.headers("a")).status_code == 401
