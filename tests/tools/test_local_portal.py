"""``tools.local_portal.repoint_store``: ``make local-destinations`` points the
streams of the portal's store that ``make run-local`` left at its new ports, so
``make redrive``, ``backfill`` and ``historic`` can work on that store."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from portal import __main__ as portal_cli
from schemas.stream_store import data_streams, engine_for
from tools.local_portal import repoint_store
from tools.local_streams import local_streams

OLD_HTTP, OLD_AWS = "http://127.0.0.1:40001", "http://127.0.0.1:40002"
NEW_HTTP, NEW_AWS = "http://127.0.0.1:50001", "http://127.0.0.1:50002"


def _store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'portal.db'}"
    config = tmp_path / "streams.json"
    config.write_text(json.dumps({"streams": local_streams([1, 2], OLD_HTTP, OLD_AWS, "2026-11-04T00:00:00Z")}))
    assert portal_cli.main(["import-streams", "--database_url", url, "--streams_config", str(config)]) == 0
    with engine_for(url).begin() as connection:
        # Made in the portal: a stream to the old receiver, paused, and one to a real endpoint.
        connection.execute(sa.insert(data_streams).values(
            id="made-in-portal", organisation_id=1, stream_type="events", api_type="rest_api", state="paused",
            historic_data=False, config={"rest": {"url": f"{OLD_HTTP}/mine?x=1"}},
            created_at="2026-12-01T00:00:00Z", updated_at="2026-12-01T00:00:00Z"))
        connection.execute(sa.insert(data_streams).values(
            id="elsewhere", organisation_id=1, stream_type="events", api_type="rest_api", state="active",
            historic_data=False, config={"rest": {"url": "https://example.com:40001/in"}},
            created_at="2026-12-01T00:00:00Z", updated_at="2026-12-01T00:00:00Z"))
    return url


def _rows(url: str) -> dict[str, tuple[str, dict]]:
    with engine_for(url).connect() as connection:
        return {row.id: (row.state, row.config)
                for row in connection.execute(sa.select(data_streams.c.id, data_streams.c.state,
                                                        data_streams.c.config))}


def test_every_stream_to_the_old_local_destinations_follows_them_and_nothing_else_changes(tmp_path):
    url = _store(tmp_path)
    before = _rows(url)

    changed = repoint_store(url, local_streams([1, 2], NEW_HTTP, NEW_AWS, "2026-11-04T00:00:00Z"))

    after = _rows(url)
    assert changed == 9  # the 8 sample streams and the portal's stream to the old receiver
    assert after["rest-bulk-1"][1]["rest"]["url"] == f"{NEW_HTTP}/customers/1/bulk"
    assert after["datadog-1"][1]["datadog"]["url"] == f"{NEW_HTTP}/datadog"
    assert after["kinesis-usage-1"][1]["kinesis"]["endpoint_url"] == NEW_AWS
    assert after["s3-events-2"][1]["s3"]["endpoint_url"] == NEW_AWS
    assert after["made-in-portal"] == ("paused", {"rest": {"url": f"{NEW_HTTP}/mine?x=1"}})
    assert after["elsewhere"] == before["elsewhere"]
    # Only the addresses moved: credentials references, filters, batching and states are kept.
    for stream_id, (state, config) in before.items():
        assert after[stream_id][0] == state
        assert json.dumps(after[stream_id][1]).replace(NEW_HTTP, OLD_HTTP).replace(NEW_AWS, OLD_AWS) == \
            json.dumps(config), stream_id


def test_a_second_start_on_the_same_ports_changes_nothing(tmp_path):
    url = _store(tmp_path)
    assert repoint_store(url, local_streams([1, 2], OLD_HTTP, OLD_AWS, "2026-11-04T00:00:00Z")) == 0
