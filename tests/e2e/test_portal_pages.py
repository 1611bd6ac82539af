"""The Data Streamer pages in headless Chromium (Debian's, driven by
Playwright), with the streaming job running on the portal's store.

A customer signs in, creates a REST bulk stream in the "New Data Stream" form,
and the job (DirectRunner, Pub/Sub emulator, ``--streams_db``) delivers to a
receiver on 127.0.0.1; the customer deactivates the stream (its documents are
kept), activates it (what was kept arrives first), and deletes it after the
confirmation dialog (nothing more arrives). Screenshots of each step are kept
under ``out/screenshots/`` (test artifacts, not committed).
"""

from __future__ import annotations

import math
import time

import sqlalchemy as sa

from portal.auth import create_key, ensure_organisation
from portal.db import migrate
from schemas.sealing import KEY_ENV, new_key
from schemas.stream_store import data_streams, engine_for
from tests.conftest import write_reference
from tests.e2e.portal_fixtures import ORG_A, serve_portal
from tests.e2e.streaming_run import run_streaming
from tools.local_destinations import HttpReceiver

RATE = 4  # events a second
#: The stream's page is looked at once the job has delivered, from 20 s on; the
#: page shows what the job reported, so it is reloaded until it does, for at most
#: a minute. The actions after it follow at these distances, however late it came.
LOOK_AT, LOOK_FOR = 20.0, 60.0
PAUSE_AFTER_LOOK, ACTIVATE_AFTER_PAUSE, DELETE_AFTER_ACTIVATION = 5.0, 25.0, 35.0
#: Publishing ends this long after the deletion (and at the latest after 300 s).
PUBLISH_AFTER_DELETION, PUBLISH_SECONDS = 25.0, 300
#: The job re-reads the store every 5 s here (the default is 300).
REFRESH = 5
#: A change in the portal reaches the job within one refresh interval; the rest
#: is the job's batching (5 s), the recovery step's tick (5 s) and a margin.
TAKES_EFFECT = REFRESH + 12
#: A document published this long before the deletion is delivered before it
#: can take effect (batched for at most 5 s).
BEFORE_DELETION = 10


def _sign_in(page, url: str, key: str, shots) -> None:
    page.goto(f"{url}/portal/data-streams")
    assert page.url.endswith("/portal/login"), "the overview needs a key"
    page.fill("#api_key", key)
    page.click("button[type=submit]")
    page.wait_for_url("**/portal/data-streams")
    shots("01-overview-empty")
    assert "No data streams yet." in page.inner_text("#streams")


def _create_rest_bulk(page, receiver_url: str, shots) -> str:
    page.click("#new-stream")
    page.wait_for_url("**/portal/data-streams/new")
    assert page.inner_text("#stream_type").startswith("Nothing selected")
    page.select_option("#stream_type", "events")
    page.select_option("#api_type", "rest_api_bulk")
    # Only the chosen API type's fields: the guide's section 6, a URL for REST.
    visible = [label.inner_text() for label in page.query_selector_all("fieldset.api-fields.chosen label")]
    assert visible == ["URL"], visible
    assert not page.is_visible("[id='aws_kinesis.secret_access_key']")
    page.fill("[id='rest_api_bulk.url']", f"{receiver_url}/customer")
    shots("02-new-data-stream")
    page.click("#store")
    page.wait_for_url("**/portal/data-streams")
    shots("03-stored")
    assert "stored and activated" in page.inner_text("#notice")
    row = page.query_selector("tr[data-stream-id]")
    assert row is not None
    assert row.query_selector(".api").inner_text() == "REST API (bulk)"
    assert row.query_selector(".url").inner_text() == f"{receiver_url}/customer"
    assert row.query_selector(".state").inner_text() == "Running"
    return row.get_attribute("data-stream-id")


def _click_in_row(page, stream_id: str, selector: str) -> None:
    page.goto(page.url.split("/portal/")[0] + "/portal/data-streams")
    page.click(f"tr[data-stream-id='{stream_id}'] {selector}")
    page.wait_for_url("**/portal/data-streams")


def test_create_deliver_deactivate_activate_delete_in_the_pages(
        page, screenshot_dir, pubsub_emulator, tmp_path, sample_tables, stream_secrets, monkeypatch):
    reference_dir = write_reference(tmp_path / "reference", sample_tables)
    database_url = f"sqlite:///{tmp_path / 'portal.db'}"
    sealing_key = new_key()
    migrate(database_url)
    with engine_for(database_url).begin() as connection:
        ensure_organisation(connection, ORG_A, "WBV Tester")
        key = create_key(connection, ORG_A, "browser")
    monkeypatch.setenv(KEY_ENV, sealing_key)  # the job opens the signing secret the portal sealed
    shot_count = iter(range(100))

    def shots(name: str) -> None:
        page.screenshot(path=str(screenshot_dir / f"{next(shot_count):02d}-{name}.png"), full_page=True)

    with serve_portal(database_url, sealing_key) as portal, HttpReceiver() as receiver:
        _sign_in(page, portal.url, key, shots)
        stream_id = _create_rest_bulk(page, receiver.url, shots)
        actions: dict[str, float] = {}
        looked: list[float] = []

        def due(action: str, previous: str, after: float) -> bool:
            return action not in actions and previous in actions and time.time() >= actions[previous] + after

        def during(elapsed: float) -> None:
            if "look" not in actions and elapsed >= LOOK_AT and receiver.requests("/customer"):
                # The stream's page: what the job reported so far, a bar per hour.
                page.goto(f"{portal.url}/portal/data-streams/{stream_id}")
                looked.append(elapsed)
                rows = page.query_selector_all("#recent tbody tr")
                if not rows and looked[-1] - looked[0] < LOOK_FOR:
                    return  # the job has not written status since its first delivery: look again
                actions["look"] = time.time()
                shots("04-stream-page")
                assert page.inner_text("#status .state") == "Running"
                assert rows and "delivered" in rows[0].inner_text(), "recent deliveries, newest first"
                heights = [float(bar.get_attribute("height")) for bar in page.query_selector_all("#hourly-chart rect")]
                # This hour's bar, or the last hour's when the hour has just turned.
                assert len(heights) == 24 and heights[-1] + heights[-2] > 0, "documents delivered this hour"
            elif due("pause", "look", PAUSE_AFTER_LOOK):
                _click_in_row(page, stream_id, "button.deactivate")
                actions["pause"] = time.time()
                shots("05-deactivated")
                assert page.inner_text(f"tr[data-stream-id='{stream_id}'] .state") == "Paused"
            elif due("activate", "pause", ACTIVATE_AFTER_PAUSE):
                _click_in_row(page, stream_id, "button.activate")
                actions["activate"] = time.time()
                shots("06-activated")
            elif due("delete", "activate", DELETE_AFTER_ACTIVATION):
                _click_in_row(page, stream_id, "a.delete")  # opens the dialog: nothing is deleted yet
                dialog = page.locator(f"#delete-{stream_id}")
                assert dialog.is_visible() and "really want to delete" in dialog.inner_text()
                shots("07-delete-dialog")
                dialog.locator("button.cancel").click()
                assert not dialog.is_visible()
                page.click(f"tr[data-stream-id='{stream_id}'] a.delete")
                dialog.locator("button.confirm-delete").click()
                page.wait_for_url("**/portal/data-streams")
                actions["delete"] = time.time()
                shots("08-deleted")
                assert page.query_selector(f"tr[data-stream-id='{stream_id}']") is None

        run = run_streaming(
            pubsub_emulator, _mkdir(tmp_path / "job"), [], {"customer": receiver}, reference_dir,
            rate=RATE, publish_seconds=PUBLISH_SECONDS, settled=lambda run: True, settle_seconds=15,
            first_id=9_000_000, during=during,
            flags=[f"--streams_db={database_url}", f"--refresh_interval_seconds={REFRESH}"],
            published_enough=lambda _: time.time() >= actions.get("delete", math.inf) + PUBLISH_AFTER_DELETION)

    arrivals = {}  # document id -> first arrival
    for request in receiver.requests("/customer"):
        for document in request.json():
            arrivals.setdefault(str(document["id"]), request.received_at)
    published = run.sent_at
    before_pause = [i for i, at in published.items() if at < actions["pause"]]
    while_paused = [i for i, at in published.items()
                    if actions["pause"] + TAKES_EFFECT <= at < actions["activate"]]
    after_activation = [i for i, at in published.items()
                        if actions["activate"] + TAKES_EFFECT <= at < actions["delete"] - BEFORE_DELETION]
    after_deletion = [i for i, at in published.items() if at >= actions["delete"] + TAKES_EFFECT]
    assert before_pause and while_paused and after_activation and after_deletion

    # Delivered while active; kept while paused, none lost.
    assert all(i in arrivals for i in before_pause), "delivered before the pause"
    kept = [i for i in while_paused if arrivals.get(i, 0) < actions["activate"]]
    assert kept == [], f"delivered while paused: {kept[:5]}"
    assert all(i in arrivals for i in while_paused), "what was kept is delivered after the activation"
    missing = [i for i in after_activation if i not in arrivals]
    assert not missing, f"published after the activation, not delivered: {missing[:5]} ({actions})"
    # The backlog first: every document kept while paused arrived before any published after the activation.
    assert max(arrivals[i] for i in while_paused) <= min(arrivals[i] for i in after_activation)
    # Deleted: nothing more.
    assert not [i for i in after_deletion if i in arrivals], "delivered after the deletion"
    with engine_for(database_url).connect() as connection:
        assert connection.execute(sa.select(data_streams.c.id)).scalars().all() == []


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path
