"""The DataDog sink: per-window endpoint metrics, checked three ways.

(a) the aggregation, tag and payload functions and the DoFn called directly with an
injected session; (b) ``WriteToDataDog`` under ``TestPipeline`` with ``assert_that``
on its results; (c) end to end against a real HTTP server standing in for
DataDog's intake, where every payload received must parse with the official
``datadog_api_client`` model and its points must add up exactly to the usage
documents of each window.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections import Counter, defaultdict
from typing import Any

import apache_beam as beam
import orjson
import pytest
import requests
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import IntervalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PANE_INFO_UNKNOWN
from datadog_api_client import Configuration
from datadog_api_client.model_utils import model_to_dict, validate_and_convert_types
from datadog_api_client.v2.model.metric_payload import MetricPayload

from sinks.datadog import WriteToDataDog, _DataDogWriteFn
from sinks.datadog_series import (
    COST,
    VOLUME,
    VOLUME_RX,
    VOLUME_TX,
    UsageTotalsFn,
    aggregate_usage,
    build_payloads,
    series_groups,
    tag,
)
from sinks.http import Timeouts
from sinks.parking import PARKED
from sinks.results import DEAD_LETTERS
from tests.guide_samples import EXPECTED_USAGE
from tests.policies import unhurried
from tests.streams import SECRETS, config, datadog_stream
from tools.local_destinations import RecordedRequest, Reply
from transforms.enrich import volume_mb

STREAM = "dd-usage"
INTERVAL = 60
#: 2019-07-17 08:21:00 UTC, a multiple of 60: the start of a window.
T0 = 1_563_351_660
API_KEY, APP_KEY = SECRETS["DATASTREAMER_TEST_DD_API_KEY"], SECRETS["DATASTREAMER_TEST_DD_APP_KEY"]
#: Fast retries: the failure policy itself is exercised in test_faults_datadog.py.
POLICY = unhurried(2)


# --------------------------------------------------------------------------- documents


def usage(doc_id: int, endpoint: int, *, rx: int = 13_800, tx: int = 8_531, cost: float = 0.00558275,
          sms: bool = False, operator: tuple[int, str, str] | None = None) -> dict[str, Any]:
    """The guide's usage sample (5.2) for another record and endpoint: each endpoint
    has its own SIM, ICCID and IMSI; ``rx``/``tx`` are bytes (messages for SMS)."""
    document = copy.deepcopy(EXPECTED_USAGE["5.2"])
    document["id"] = doc_id
    document["cost"] = cost
    document["endpoint"] = {"id": endpoint}
    document["sim"] = {"iccid": f"89882280667{endpoint:08d}", "id": 200_000 + endpoint}
    document["imsi"] = f"9014053{endpoint:08d}"
    if sms:
        document["traffic_type"] = {"id": 6, "name": "SMS"}
        document["volume"] = {"rx": float(rx), "tx": float(tx), "total": float(rx + tx)}
    else:
        document["volume"] = volume_mb(rx, tx)
    if operator is not None:
        op_id, op_name, country = operator
        document["operator"] = {"id": op_id, "name": op_name, "country": {"id": 1, "name": country}}
    return document


def fleet(seed: int = 7) -> list[tuple[int, dict[str, Any]]]:
    """(epoch seconds, document): three endpoints over two windows, data and SMS,
    one endpoint roaming in Türkiye on an operator with an awkward name, and one
    endpoint with only SMS in the second window."""
    rng = random.Random(seed)
    out = []
    doc_id = 174_321_498
    for window in range(2):
        for endpoint in (8392037, 8392038, 8392039):
            for _ in range(3):
                doc_id += 1
                at = T0 + window * INTERVAL + rng.randrange(INTERVAL)
                sms = endpoint == 8392039 and (window == 1 or rng.random() < 0.3)
                operator = (23, "Türk Telekom A.Ş.", "Türkiye") if endpoint == 8392038 else None
                out.append((at, usage(doc_id, endpoint, rx=rng.randrange(1, 5_000_000), tx=rng.randrange(0, 900_000),
                                      cost=round(rng.uniform(0, 0.2), 8), sms=sms, operator=operator)))
    return out


def expected_sums(timed: list[tuple[int, dict[str, Any]]]) -> dict[tuple[int, int, str], float]:
    """(endpoint id, window start, metric) -> the sum the points must carry."""
    values: dict[tuple[int, int, str], list[float]] = defaultdict(list)
    for at, document in timed:
        key = (document["endpoint"]["id"], at - at % INTERVAL)
        data = document["traffic_type"]["name"] == "Data"
        values[(*key, COST)].append(document["cost"])
        for metric, field in ((VOLUME, "total"), (VOLUME_RX, "rx"), (VOLUME_TX, "tx")):
            values[(*key, metric)].append(document["volume"][field] if data else 0.0)
    return {key: math.fsum(vs) for key, vs in values.items()}


def aggregate(documents: list[dict[str, Any]]) -> list[Any]:
    """What the DoFn makes of a (stream, window) group: per endpoint key, the
    totals and the documents."""
    return aggregate_usage(documents)


# --------------------------------------------------------------------------- DataDog's model


def parse_payload(body: bytes) -> MetricPayload:
    """Deserialize a request body the way ``datadog_api_client`` deserializes data
    (``ApiClient.deserialize``: ``validate_and_convert_types`` with type checks).
    The client does not raise on a wrong type inside a model: it marks the model
    ``_unparsed``. A payload counts as valid only if nothing is unparsed and the
    model gives back exactly the JSON that was sent (nothing dropped or coerced)."""
    data = orjson.loads(body)
    payload = validate_and_convert_types(data, (MetricPayload,), ["received_data"], True, True,
                                         configuration=Configuration())
    if not isinstance(payload, MetricPayload) or payload._unparsed:
        raise ValueError("not a valid MetricPayload")
    if model_to_dict(payload) != data:
        raise ValueError("MetricPayload does not round-trip")
    return payload


def points(requests_: list[RecordedRequest]) -> list[dict[str, Any]]:
    """Every point received, flattened with its series' fields; each body parsed
    with the official model first."""
    out = []
    for request in requests_:
        for series in parse_payload(request.body).series:
            tags = dict(t.split(":", 1) for t in series.tags)
            for point in series.points:
                out.append({"metric": series.metric, "tags": tags, "type": series.type.value,
                            "interval": series.interval, "unit": series.get("unit"),
                            "timestamp": point.timestamp, "value": point.value})
    return out


# --------------------------------------------------------------------------- (a) functions


def test_official_model_parse_rejects_wrong_types():
    good = {"series": [{"metric": VOLUME, "type": 1, "interval": 60, "unit": "megabyte",
                        "points": [{"timestamp": T0, "value": 0.022331}], "tags": ["endpoint_id:8392037"]}]}
    assert parse_payload(orjson.dumps(good)).series[0].points[0].value == 0.022331
    for path, wrong in ((("points", 0, "value"), "0.02"), (("points", 0, "timestamp"), "now"), (("type",), 7),
                        (("tags",), "endpoint_id:1"), (("interval",), 1.5)):
        bad = copy.deepcopy(good)
        target = bad["series"][0]
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = wrong
        with pytest.raises((ValueError, TypeError)):  # ours, or the client's ApiTypeError
            parse_payload(orjson.dumps(bad))
    missing = copy.deepcopy(good)
    del missing["series"][0]["metric"]
    with pytest.raises(ValueError):
        parse_payload(orjson.dumps(missing))


def test_tags_follow_datadog_rules():
    assert tag("organisation", "WBV Tester") == "organisation:wbv_tester"
    assert tag("operator", "Türk Telekom A.Ş.") == "operator:t_rk_telekom_a._."
    assert tag("country", "Bosnia & Herzegovina") == "country:bosnia___herzegovina"
    assert tag("operator", "a.b/c-d_e:f") == "operator:a.b/c-d_e:f"
    assert tag("operator", "Ends with:") == "operator:ends_with_"
    assert tag("endpoint_id", 8392037) == "endpoint_id:8392037"
    assert tag("organisation", "") is None
    long = tag("organisation", "x" * 500)
    assert long is not None and len(long) == 200 and long.startswith("organisation:xxx")


def test_totals_are_exact_data_only_and_independent_of_order():
    documents = [d for _, d in fleet()] * 3
    documents = [d for d in documents if d["endpoint"]["id"] == 8392039]  # data and SMS
    assert {d["traffic_type"]["name"] for d in documents} == {"Data", "SMS"}
    fn = UsageTotalsFn()
    outputs = set()
    for seed in range(5):
        shuffled = documents[:]
        random.Random(seed).shuffle(shuffled)
        cut = len(shuffled) // 3
        parts = [shuffled[:cut], shuffled[cut:2 * cut], shuffled[2 * cut:]]
        accs = []
        for part in parts:
            acc = fn.create_accumulator()
            for document in part:
                acc = fn.add_input(acc, document)
            accs.append(acc)
        outputs.add(fn.extract_output(fn.merge_accumulators(accs)))
    assert len(outputs) == 1  # bit-identical whatever the order and the split
    totals = outputs.pop()
    data = [d for d in documents if d["traffic_type"]["name"] == "Data"]
    assert totals.volume == math.fsum(d["volume"]["total"] for d in data)
    assert totals.volume_rx == math.fsum(d["volume"]["rx"] for d in data)
    assert totals.volume_tx == math.fsum(d["volume"]["tx"] for d in data)
    assert totals.cost == math.fsum(d["cost"] for d in documents)
    assert totals.documents == len(documents)


def test_payloads_respect_the_limit_keep_endpoints_whole_and_are_sorted():
    documents = [usage(i, 9_000_000 + i) for i in range(120)]
    groups = series_groups(aggregate(documents), T0, INTERVAL)
    payloads, too_large = build_payloads(groups, 6_000)
    assert not too_large and len(payloads) > 3
    seen = []
    for payload in payloads:
        assert len(payload.body) <= 6_000
        series = orjson.loads(payload.body)["series"]
        assert series == sorted(series, key=lambda s: (s["metric"], s["tags"]))
        endpoints = Counter(tuple(s["tags"]) for s in series)
        assert set(endpoints.values()) == {4}  # all four metrics of an endpoint in one payload
        assert payload.documents == len(endpoints)
        seen.extend((s["metric"], tuple(s["tags"])) for s in series)
    assert len(seen) == len(set(seen)) == 4 * 120
    shuffled = aggregate(documents)
    random.Random(3).shuffle(shuffled)
    assert build_payloads(series_groups(shuffled, T0, INTERVAL), 6_000)[0] == payloads  # any input order


class FakeResponse:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        self.headers: dict[str, str] = {}

    def close(self) -> None:
        pass


class FakeSession:
    """What ``session_factory`` returns in the DoFn tests: records the requests and
    answers ``status`` or raises ``error``."""

    def __init__(self, status: int = 202, error: Exception | None = None) -> None:
        self.status, self.error = status, error
        self.posts: list[dict[str, Any]] = []
        self.closed = False

    def request(self, method: str, url: str, **kwargs: Any) -> FakeResponse:
        assert method == "POST"
        self.posts.append({"url": url, **kwargs})
        if self.error is not None:
            raise self.error
        return FakeResponse(self.status)

    def close(self) -> None:
        self.closed = True


def run_fn(session: FakeSession, documents: list[dict[str, Any]], *, streams=None, max_payload_bytes: int = 500_000,
           stream_id: str = STREAM) -> tuple[list[Any], list[Any], list[Any]]:
    """Results, dead letters and parked batches of one (stream, window) group."""
    fn = _DataDogWriteFn(lambda: session, Timeouts(), max_payload_bytes, POLICY, allow_insecure=True)
    fn.setup()
    window = IntervalWindow(Timestamp(T0), Timestamp(T0 + INTERVAL))
    streams = streams or config(datadog_stream(STREAM, "http://127.0.0.1:9"))
    out = list(fn.process((stream_id, documents), streams, window=window, pane=PANE_INFO_UNKNOWN))
    fn.teardown()
    assert session.closed
    results = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    letters = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput) and o.tag == DEAD_LETTERS]
    parked = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput) and o.tag == PARKED]
    assert len(results) + len(letters) + len(parked) == len(out)
    return results, letters, parked


def test_fn_sends_headers_and_is_deterministic(stream_secrets):
    documents = [usage(i, 9_000_000 + i % 40) for i in range(200)]
    first, second = FakeSession(), FakeSession()
    results, _, parked = run_fn(first, documents, max_payload_bytes=20_000)
    run_fn(second, list(reversed(documents)), max_payload_bytes=20_000)
    assert not parked
    assert [p["data"] for p in first.posts] == [p["data"] for p in second.posts]
    assert len(first.posts) == len(results) > 1
    for post, result in zip(first.posts, results, strict=True):
        assert post["url"] == "http://127.0.0.1:9/api/v2/series" == result.target
        assert post["headers"] == {"Content-Type": "application/json", "DD-API-KEY": API_KEY,
                                   "DD-APPLICATION-KEY": APP_KEY}
        assert post["allow_redirects"] is False
        assert result.status == "delivered" and result.bytes == len(post["data"])
        assert (result.status_code, result.attempts, result.token, result.redelivered_documents) == (202, 1, None, 0)
    assert sum(r.documents for r in results) == 200


def test_fn_connection_error_is_a_failed_result_and_parks_the_documents(stream_secrets):
    session = FakeSession(error=requests.ConnectionError("refused"))
    documents = [usage(1, 1), usage(2, 2)]
    results, letters, parked = run_fn(session, documents)
    assert len(session.posts) == POLICY.max_attempts  # retried: a connection error is transient
    assert [(r.status, r.status_code, r.error, r.token, r.attempts, r.documents, r.failed_documents,
             r.parked_documents) for r in results] == [("failed", None, "ConnectionError", "unreachable", 2, 2, 2, 2)]
    assert not letters
    assert [(b.stream_id, b.api_type, b.reason, b.error, b.token, b.attempts, b.documents) for b in parked] == [
        (STREAM, "datadog", "retries_exhausted", "ConnectionError", "unreachable", 2,
         (("usage", documents[0]), ("usage", documents[1])))]


def test_fn_missing_secret_sends_nothing(stream_secrets, monkeypatch):
    monkeypatch.delenv("DATASTREAMER_TEST_DD_API_KEY")
    session = FakeSession()
    results, _, parked = run_fn(session, [usage(1, 1)])
    assert not session.posts
    assert [(r.status, r.error, r.token, r.attempts, r.failed_documents, r.parked_documents) for r in results] == [
        ("failed", "secret_unavailable", "credentials_unavailable", 0, 1, 1)]
    assert [(b.reason, b.token, [d["id"] for _, d in b.documents]) for b in parked] == [
        ("permanent_failure", "credentials_unavailable", [1])]


def test_fn_unknown_stream_is_a_failed_result(stream_secrets):
    session = FakeSession()
    results, _, parked = run_fn(session, [usage(1, 1)], stream_id="gone")
    assert not session.posts
    assert [(r.stream_id, r.status, r.error, r.parked_documents) for r in results] == [
        ("gone", "failed", "unknown_stream", 1)]
    assert [(b.stream_id, b.reason, b.error, [d["id"] for _, d in b.documents]) for b in parked] == [
        ("gone", "permanent_failure", "unknown_stream", [1])]


def test_fn_endpoint_larger_than_any_payload_is_a_dead_letter(stream_secrets):
    session = FakeSession()
    documents = [usage(1, 1), usage(2, 1)]  # one endpoint: one group of four series
    results, letters, parked = run_fn(session, documents, max_payload_bytes=1_000)
    assert not results and not parked and not session.posts
    # Each document of the endpoint is a dead letter, with the document as payload.
    assert [(d["kind"], d["stage"], d["reason"], d["record_id"]) for d in letters] == [
        ("usage", "deliver", "record_too_large", 1), ("usage", "deliver", "record_too_large", 2)]
    assert [orjson.loads(d["payload"]) for d in letters] == documents
    assert {d["stream_id"] for d in letters} == {STREAM}


def test_payload_limit_is_checked_at_construction():
    with pytest.raises(ValueError, match="max_payload_bytes"):
        WriteToDataDog(None, max_payload_bytes=600_000)


# --------------------------------------------------------------------------- (b) and (c) pipelines


def parked_summary(batch) -> tuple[Any, ...]:
    return (batch.stream_id, batch.api_type, batch.reason, batch.error, batch.token, batch.status_code,
            batch.attempts, tuple(sorted((kind, d["id"]) for kind, d in batch.documents)))


def run_pipeline(receiver_url: str, timed: list[tuple[int, dict[str, Any]]], *, max_payload_bytes: int = 500_000,
                 check=None, parked: list[tuple[Any, ...]] | None = None) -> bytes:
    """Run the sink over ``timed`` documents; returns the pipeline proto (to search
    for secrets). ``check(results)`` adds asserts on the results PCollection;
    ``parked`` is what must be parked (:func:`parked_summary`), nothing by default."""
    streams_config = config(datadog_stream(STREAM, receiver_url, batching={"metrics_interval_seconds": INTERVAL}))
    p = TestPipeline()
    streams = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([streams_config]))
    outputs = (
        p
        | "Usage" >> beam.Create([(at, ((STREAM, INTERVAL), doc)) for at, doc in timed])
        | "Stamp" >> beam.Map(lambda item: TimestampedValue(item[1], item[0]))
        | "WriteToDataDog" >> WriteToDataDog(streams, max_payload_bytes=max_payload_bytes, policy=POLICY,
                                             allow_insecure=True)
    )
    assert_that(outputs.dead_letters, equal_to([]), label="NoDeadLetters")
    assert_that(outputs.parked | beam.Map(parked_summary), equal_to(parked or []), label="CheckParked")
    if check is not None:
        check(outputs.results)
    proto = p.to_runner_api().SerializeToString()
    p.run().wait_until_finish()
    return proto


def result_summary(result) -> tuple[Any, ...]:
    return (result.stream_id, result.api_type, result.status, result.status_code, result.error, result.documents,
            result.failed_documents, result.target)


def test_pipeline_results_one_per_window(http_receiver, stream_secrets):
    timed = fleet()
    target = f"{http_receiver.url}/api/v2/series"

    def check(results):
        assert_that(results | beam.Map(result_summary), equal_to([
            (STREAM, "datadog", "delivered", 202, None, 9, 0, target),
            (STREAM, "datadog", "delivered", 202, None, 9, 0, target),
        ]), label="CheckResults")

    run_pipeline(http_receiver.url, timed, check=check)
    assert len(http_receiver.requests("/api/v2/series")) == 2


def test_end_to_end_points_add_up_to_the_documents(http_receiver, stream_secrets, caplog):
    caplog.set_level(logging.DEBUG)
    timed = fleet()
    proto = run_pipeline(http_receiver.url, timed)

    received = http_receiver.requests()
    assert received and all(r.method == "POST" and r.path == "/api/v2/series" for r in received)
    for request in received:
        assert request.headers["DD-API-KEY"] == API_KEY
        assert request.headers["DD-APPLICATION-KEY"] == APP_KEY
        assert request.headers["Content-Type"] == "application/json"

    got = points(received)
    sums: dict[tuple[int, int, str], float] = {}
    for point in got:
        key = (int(point["tags"]["endpoint_id"]), point["timestamp"], point["metric"])
        assert key not in sums  # one point per endpoint, window and metric
        sums[key] = point["value"]
        assert (point["type"], point["interval"]) == (1, INTERVAL)
        assert point["unit"] == ("euro" if point["metric"] == COST else "megabyte")
    expected = expected_sums(timed)
    assert sums.keys() == expected.keys()
    for key, value in expected.items():
        assert sums[key] == pytest.approx(value, abs=1e-9), key
    # The SMS-only window of 8392039 has cost but no MB.
    assert sums[(8392039, T0 + INTERVAL, VOLUME)] == 0.0 < sums[(8392039, T0 + INTERVAL, COST)]

    sample = next(p for p in got if p["tags"]["endpoint_id"] == "8392037")
    assert sample["tags"] == {"endpoint_id": "8392037", "sim_id": "8592037", "iccid": "8988228066708392037",
                              "imsi": "901405308392037", "organisation_id": "80025", "organisation": "wbv_tester",
                              "operator_id": "4", "operator": "telekom", "country": "germany", "currency": "eur"}
    roaming = next(p for p in got if p["tags"]["endpoint_id"] == "8392038")
    assert (roaming["tags"]["operator"], roaming["tags"]["country"]) == ("t_rk_telekom_a._.", "t_rkiye")

    for secret in SECRETS.values():
        assert secret not in caplog.text
        assert secret.encode() not in proto


def test_payload_limit_gives_several_requests_holding_all_series(http_receiver, stream_secrets):
    documents = [usage(1000 + i, 7_000_000 + i) for i in range(150)]
    limit = 8_000
    # What must arrive: the payloads the sink's own functions make of these documents.
    expected, too_large = build_payloads(series_groups(aggregate(documents), T0, INTERVAL), limit)
    assert not too_large and len(expected) > 1

    def check(results):
        assert_that(results | beam.Map(lambda r: (r.status, r.documents, r.bytes)),
                    equal_to([("delivered", p.documents, len(p.body)) for p in expected]), label="CheckResults")

    run_pipeline(http_receiver.url, [(T0 + 5, d) for d in documents], max_payload_bytes=limit, check=check)
    received = http_receiver.requests("/api/v2/series")
    assert sorted(r.body for r in received) == sorted(p.body for p in expected)
    assert all(len(r.body) <= limit for r in received)
    got = points(received)
    assert len(got) == len({(p["metric"], tuple(sorted(p["tags"].items()))) for p in got}) == 4 * 150
    assert {int(p["tags"]["endpoint_id"]) for p in got} == {7_000_000 + i for i in range(150)}
    assert sum(p.documents for p in expected) == 150


def test_forbidden_is_a_failed_result_parks_and_nothing_raises(http_receiver, stream_secrets, caplog):
    caplog.set_level(logging.DEBUG)
    http_receiver.responder = lambda request: Reply(403, b'{"errors":["Forbidden"]}')
    timed = [(T0 + 1, usage(1, 8392037)), (T0 + 2, usage(2, 8392038))]
    target = f"{http_receiver.url}/api/v2/series"

    def check(results):
        assert_that(results | beam.Map(result_summary), equal_to([
            (STREAM, "datadog", "failed", 403, "http_403", 2, 2, target)]), label="CheckFailed")
        assert_that(results | beam.Map(lambda r: (r.token, r.attempts, r.parked_documents)),
                    equal_to([("auth_failed", 1, 2)]), label="CheckFailedFields")
        assert_that(results | beam.Map(repr), _no_secret, label="NoSecretInResults")

    run_pipeline(http_receiver.url, timed, check=check, parked=[
        (STREAM, "datadog", "permanent_failure", "http_403", "auth_failed", 403, 1, (("usage", 1), ("usage", 2)))])
    assert len(http_receiver.requests()) == 1  # a 403 is permanent: not retried
    assert "403" in caplog.text
    for secret in SECRETS.values():
        assert secret not in caplog.text


def _no_secret(reprs: list[str]) -> None:
    for text in reprs:
        for secret in SECRETS.values():
            if secret in text:
                raise AssertionError("a secret is in a delivery result")
