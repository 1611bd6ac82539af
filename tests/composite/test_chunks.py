"""Chunks (transforms/chunks.py): a bounded run that carries records in chunks
produces exactly what one record at a time produces: the same documents with the
same event times, the same dead letters, the same counts, the same routing and
batches, wherever duplicates and bad records fall among the chunks."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from pipelines.summary import summarize
from schemas.packed import pack_pairs, unpack_pairs
from sinks.batching import (
    _chunk_size,
    _shard_by_endpoint,
    _shard_chunk_by_endpoint,
    _split_shard,
    _split_shard_slices,
)
from tests.composite.test_routing import STREAMS, _event, _usage
from tests.guide_samples import EXPECTED_EVENTS, EXPECTED_USAGE, RAW_EVENTS, RAW_USAGE
from transforms.chunks import document_lines
from transforms.dedup import _first_per_id, _slices_by_shard
from transforms.documents import RawToDocuments
from transforms.parse import parse_record
from transforms.reference import LoadReferenceData
from transforms.routing import CHUNKED_API_TYPES, _RouteChunkFn, _RouteFn


def test_pack_and_unpack_keep_pairs_values_and_key_order():
    pairs = [({"b": 1, "a": [1, 2], "f": 0.1 + 0.2, "n": None, "t": True, "s": "ü"}, 1_700_000_000_123),
             ("usage", {"id": 2**63 - 1, "nested": {"z": 1, "y": -2.5e-7}})]
    back = unpack_pairs(pack_pairs(pairs))
    assert back == pairs
    assert all(type(pair) is tuple for pair in back)
    assert list(back[0][0]) == ["b", "a", "f", "n", "t", "s"]


def test_document_lines_are_one_json_document_a_line():
    chunk = [({"id": 1, "x": "a"}, 5), ({"id": 2}, 6)]
    assert document_lines(chunk).split(b"\n") == [b'{"id":1,"x":"a"}', b'{"id":2}']


def _raw_lines() -> tuple[list[bytes], list[bytes]]:
    """Guide samples with repeats spread over the input and bad lines between."""
    good = [orjson.dumps(record) for record in RAW_EVENTS.values()]
    bad = [b"", b"[1]", orjson.dumps({**RAW_EVENTS["5.1.3"], "id": 9001, "organisation_id": 1})]
    events = [good[0], bad[0], good[1], good[0], good[2], bad[1], good[1], good[2], bad[2], good[0]]
    usage = [orjson.dumps(RAW_USAGE["5.2"]), b"{", orjson.dumps(RAW_USAGE["5.2"])]
    return events, usage


def _event_ms(kind: str, record: dict[str, Any]) -> int:
    return parse_record(kind, orjson.dumps(record))[1]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 1000])
def test_chunked_documents_dead_letters_and_counts_equal_per_record(chunk_size, sample_reference_dir):
    events, usage = _raw_lines()
    p = TestPipeline()
    reference = beam.pvalue.AsSingleton(p | "Reference" >> LoadReferenceData(str(sample_reference_dir)))
    results = {}
    for kind, lines in (("event", events), ("usage", usage)):
        results[kind] = (p | f"Create[{kind}]" >> beam.Create(lines)
                         | f"Docs[{kind}]" >> RawToDocuments(kind, reference, chunk_size=chunk_size, keep_valid=True))
        stamped = results[kind].documents | f"Stamp[{kind}]" >> beam.Map(
            lambda doc, ts=beam.DoFn.TimestampParam: (doc["id"], ts.micros // 1000))
        raw = RAW_EVENTS if kind == "event" else RAW_USAGE
        assert_that(stamped, equal_to([(r["id"], _event_ms(kind, r)) for r in raw.values()]),
                    label=f"EventTimes[{kind}]")
        assert_that(results[kind].valid | f"ValidIds[{kind}]" >> beam.Map(lambda r: r["id"]),
                    equal_to([orjson.loads(line)["id"] for line in lines if line.startswith(b'{"')]),
                    label=f"Valid[{kind}]")
    assert_that(results["event"].documents, equal_to(list(EXPECTED_EVENTS.values())), label="Events")
    assert_that(results["usage"].documents, equal_to(list(EXPECTED_USAGE.values())), label="Usage")
    letters = ((results["event"].dead_letters, results["usage"].dead_letters) | beam.Flatten()
               | beam.Map(lambda d: (d["kind"], d["stage"], d["reason"], d["payload"])))
    assert_that(letters, equal_to([
        ("event", "parse", "empty", b""), ("event", "parse", "not_an_object", b"[1]"),
        ("event", "enrich", "unknown_reference:organisation", orjson.dumps(parse_record("event", events[8])[0])),
        ("usage", "parse", "not_json", b"{"),
    ]), label="DeadLetters")
    result = p.run()
    result.wait_until_finish()
    summary = summarize(result)
    event, usage_summary = summary.kinds["event"], summary.kinds["usage"]
    assert (event.read, event.valid, event.unique, event.documents) == (10, 8, 4, 3)
    assert (usage_summary.read, usage_summary.valid, usage_summary.unique, usage_summary.documents) == (3, 2, 1, 1)
    assert summary.reconciled


def test_chunked_deduplication_keeps_one_copy_per_id_across_chunks_and_shards():
    chunks = [[({"id": i % 37, "copy": n}, i) for i in range(n * 50, n * 50 + 50)] for n in range(4)]
    slices: dict[int, list[bytes]] = {}
    for chunk in chunks:
        for shard, packed in _slices_by_shard(chunk):
            slices.setdefault(shard, []).append(packed)
    out = [chunk for shard in slices.items() for chunk in _first_per_id(shard, 5)]
    assert all(1 <= len(chunk) <= 5 for chunk in out)
    kept = Counter(record["id"] for chunk in out for record, _ in chunk)
    assert kept == Counter(range(37))


DOCS = [("event", _event(1, 1, alert=True)), ("event", _event(2, 5)), ("event", _event(3, 1, org=4242)),
        ("usage", _usage(4)), ("usage", _usage(5))]


def _route_each(kind: str, docs: list[tuple[dict[str, Any], int]]) -> list[tuple[str, Any, int]]:
    fn = _RouteFn(kind)
    fn.setup()
    return [(out.tag, out.value, ms) for doc, ms in docs for out in fn.process(doc, STREAMS, {})]


def test_chunked_routing_routes_every_document_as_single_routing_does():
    for kind in ("event", "usage"):
        docs = [(doc, 1_000 + doc["id"]) for k, doc in DOCS if k == kind]
        single = _route_each(kind, docs)
        fn = _RouteChunkFn(kind)
        fn.setup()
        chunked = []
        for out in fn.process(docs, STREAMS, {}):
            if out.tag in CHUNKED_API_TYPES:
                stream_id, (count, packed) = out.value
                values = unpack_pairs(packed)
                assert count == len(values)
                chunked += [(out.tag, (stream_id, value)) for value in values]
            else:
                assert isinstance(out.value, TimestampedValue)
                chunked.append((out.tag, out.value.value, out.value.timestamp.micros // 1000))
        expected = [(tag, value) if tag in CHUNKED_API_TYPES else (tag, value, ms) for tag, value, ms in single]
        assert sorted(map(repr, chunked)) == sorted(map(repr, expected))
        assert len(chunked) > len(docs)


def test_chunked_routing_counts_as_single_routing_does():
    docs = [(doc, 1_000) for kind, doc in DOCS if kind == "event"]
    p = TestPipeline()
    streams = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([STREAMS]))
    deactivated = beam.pvalue.AsSingleton(p | "Deactivated" >> beam.Create([{}]))
    from transforms.routing import RouteToStreams

    routed = p | beam.Create([docs[:2], docs[2:]]) | RouteToStreams("event", streams, deactivated, chunked=True)
    ids = routed.rest_api | beam.FlatMap(lambda e: [(e[0], v[1]["id"]) for v in unpack_pairs(e[1][1])])
    assert_that(ids, equal_to([("all-events", 1), ("location-alerts", 1), ("all-events", 2), ("no-alerts", 2)]))
    result = p.run()
    result.wait_until_finish()
    summary = summarize(result)
    assert summary.kinds["event"].routed == 12  # as test_routing's single-document run
    assert summary.kinds["event"].routed_documents == 2
    assert summary.kinds["event"].filtered == 1


def test_chunked_batching_shards_and_splits_as_single_values_do():
    values = [("usage", {"id": i, "endpoint": {"id": i % 23}}) for i in range(700)]
    chunks = [("s", (len(values[n:n + 100]), pack_pairs(values[n:n + 100]))) for n in range(0, 700, 100)]
    counts = {"s": sum(_chunk_size(chunk)[1] for chunk in chunks)}
    assert counts == {"s": 700}
    shards: dict[Any, list[bytes]] = {}
    for chunk in chunks:
        for key, packed in _shard_chunk_by_endpoint(chunk, counts, 120):
            shards.setdefault(key, []).append(packed)
    single: dict[Any, list[Any]] = {}
    for key, value in (_shard_by_endpoint(("s", value), counts, 120) for value in values):
        single.setdefault(key, []).append(value)
    assert {key: [v for packed in slices for v in unpack_pairs(packed)] for key, slices in shards.items()} == single
    batches = [batch for key_slices in shards.items() for batch in _split_shard_slices(key_slices, 30)]
    expected = [batch for key_values in single.items() for batch in _split_shard(key_values, 30)]
    assert batches == expected
    assert sorted(doc["id"] for _, batch in batches for _, doc in batch) == list(range(700))


def test_a_chunk_of_documents_is_not_changed_by_routing():
    doc = _event(1, 1, alert=True)
    before = copy.deepcopy(doc)
    fn = _RouteChunkFn("event")
    fn.setup()
    list(fn.process([(doc, 1)], STREAMS, {}))
    assert doc == before
