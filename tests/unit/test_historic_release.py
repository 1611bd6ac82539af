"""pipelines.historic after the marker: which parked documents it drops as
already delivered as history (``drop_delivered_history``)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from pipelines.historic import drop_delivered_history
from schemas.delivery import AWAITING_HISTORY, RETRIES_EXHAUSTED
from sinks.parking import ParkedBatch, ParkStore

# --- dropping what the history delivered ---------------------------------------------

def _doc(kind: str, doc_id: int, hour: int) -> tuple[str, dict]:
    if kind == "event":
        return kind, {"id": doc_id, "timestamp": f"2026-11-01T{hour:02d}:00:00.000+0000"}
    return kind, {"id": doc_id, "start_timestamp": f"2026-11-01 {hour:02d}:00:00", "end_timestamp":
                  f"2026-11-01 {hour:02d}:10:00"}


def _batch(reason: str, documents, parked_at: str = "2026-12-03T16:00:00.000+00:00") -> ParkedBatch:
    return ParkedBatch("s", "rest_api_bulk", reason, None, None, None, 0, parked_at, tuple(documents))


def _ids(path, keys) -> None:
    path.write_bytes(b"".join(orjson.dumps(list(key)) + b"\n" for key in keys))


START, END = datetime(2026, 11, 1, 0, tzinfo=UTC), datetime(2026, 11, 1, 12, tzinfo=UTC)


def test_documents_the_history_delivered_are_dropped_from_every_parked_batch(tmp_path):
    store = ParkStore(str(tmp_path / "parked"))
    mixed = store.write(_batch(AWAITING_HISTORY, [_doc("event", 1, 3), _doc("usage", 1, 4), _doc("event", 2, 13),
                                                  _doc("event", 3, 5), _doc("event", 9, 6)]))
    all_history = store.write(_batch(AWAITING_HISTORY, [_doc("event", 4, 7), _doc("event", 5, 8)]))
    live_only = store.write(_batch(AWAITING_HISTORY, [_doc("event", 6, 14)]))
    earlier = store.write(_batch(RETRIES_EXHAUSTED, [_doc("event", 4, 7), _doc("usage", 7, 9)]))
    ids = tmp_path / "ids"
    ids.mkdir()
    # event 1 and usage 1 are different documents; event 3 was routed but is not deliverable.
    _ids(ids / "delivered-00000-of-00002.jsonl", [("event", 1), ("event", 3), ("event", 4)])
    _ids(ids / "delivered-00001-of-00002.jsonl", [("event", 5), ("usage", 7), ("event", 99)])
    _ids(ids / "not_deliverable.jsonl", [("event", 3)])

    paths, counts = drop_delivered_history(store, sorted([mixed, all_history, live_only, earlier]), str(ids),
                                           START, END)

    assert (counts.held_batches, counts.held_documents, counts.dropped_held, counts.dropped_other) == (3, 8, 3, 2)
    # usage 1, event 3 (not deliverable) and event 9 are in the range but not delivered by the history.
    assert counts.in_range_kept == 3
    assert sorted(paths) == sorted(store.list("s"))
    left = {path: store.read(path) for path in paths}
    assert live_only in left and all_history not in left and earlier not in left and mixed not in left
    rewritten = [b for p, b in left.items() if p != live_only]
    assert len(rewritten) == 1
    assert [(k, d["id"]) for k, d in rewritten[0].documents] == [("usage", 1), ("event", 2), ("event", 3),
                                                                 ("event", 9)]
    assert (rewritten[0].reason, rewritten[0].parked_at) == (AWAITING_HISTORY, "2026-12-03T16:00:00.000+00:00")


@pytest.mark.parametrize("ids_dir", [None, "missing"])
def test_without_document_ids_nothing_is_dropped(tmp_path, ids_dir):
    store = ParkStore(str(tmp_path / "parked"))
    path = store.write(_batch(AWAITING_HISTORY, [_doc("event", 1, 3)]))
    paths, counts = drop_delivered_history(store, [path], ids_dir and str(tmp_path / ids_dir), START, END)
    assert paths == [path] and (counts.held_documents, counts.dropped_held, counts.in_range_kept) == (1, 0, 1)
