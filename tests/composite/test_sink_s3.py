"""The S3 sink and its CSV format: flattening against the guide's samples, the
file naming rule, the DoFn with an injected client, and end to end on moto's S3
(objects listed, read back and parsed, compared exactly to the documents sent).
Fault injection against moto is in tests/composite/test_faults_aws.py."""

from __future__ import annotations

import copy
import csv
import io
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import IntervalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PANE_INFO_UNKNOWN

from schemas.delivery import PERMANENT_FAILURE, DeliveryResult
from sinks.csv_format import (
    EVENT_COLUMNS,
    USAGE_COLUMNS,
    UnknownFieldError,
    flatten,
    leaves,
    render_csv,
    to_row,
)
from sinks.ordering import document_time
from sinks.parking import PARKED
from sinks.results import DEAD_LETTERS
from sinks.s3 import WriteToS3, _S3WriteFn, plan_files
from tests.conftest import reference_from_tables
from tests.documents import event_doc, usage_doc
from tests.guide_samples import EXPECTED_EVENTS, EXPECTED_USAGE, RAW_EVENTS, RAW_USAGE, reference_tables
from tests.policies import unhurried
from tests.streams import REGION, SECRETS, config, s3_stream
from transforms.enrich import PDP_CONTEXT_KEYS, enrich_event, enrich_usage
from transforms.parse import parse_record

BASE = datetime(2026, 11, 1, 8, 5, 0, tzinfo=UTC)
FAST = unhurried(3)

# --------------------------------------------------------------------------- documents


def routed(stream_id: str, rotation: int, kind: str, doc: dict[str, Any]) -> Any:
    return ((stream_id, kind, rotation), doc)


def stamp(element: Any) -> TimestampedValue:
    """Event time of a routed element: its document's time, as upstream sets it."""
    (_, kind, _), doc = element
    return TimestampedValue(element, document_time(kind, doc).timestamp())


def expected_row(kind: str, doc: dict[str, Any]) -> dict[str, str]:
    """The test's own reading of the CSV rules, to compare files against."""
    flat: dict[str, Any] = {}

    def walk(obj: dict[str, Any], prefix: str) -> None:
        for key, value in obj.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}_")
            else:
                flat[f"{prefix}{key}"] = value

    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return str(value).lower()
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    walk(doc, "")
    columns = EVENT_COLUMNS if kind == "event" else USAGE_COLUMNS
    assert set(flat) <= set(columns)
    return {column: text(flat.get(column)) for column in columns}


def sort_key(kind: str):
    return lambda doc: (document_time(kind, doc), doc["id"])


# --------------------------------------------------------------------------- moto helpers


def new_bucket(s3) -> str:
    name = f"ds-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    return name


def read_bucket(s3, bucket: str) -> dict[str, tuple[str, bytes]]:
    """key -> (content type, body) of every object in ``bucket``."""
    objects = {}
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        got = s3.get_object(Bucket=bucket, Key=item["Key"])
        objects[item["Key"]] = (got["ContentType"], got["Body"].read())
    return objects


def parse_csv(body: bytes) -> tuple[list[str], list[dict[str, str]]]:
    text = body.decode("utf-8")
    header = next(csv.reader(io.StringIO(text)))
    return header, list(csv.DictReader(io.StringIO(text, newline="")))


def run_s3(streams: Any, elements: list[Any]) -> None:
    with TestPipeline() as p:
        side = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([streams]))
        out = p | beam.Create(elements) | beam.Map(stamp) | WriteToS3(side, policy=FAST, allow_insecure=True)
        assert_that(out.results | beam.Map(lambda r: r.status), equal_to(["delivered"] * len(set(
            _expected_files(elements)))), label="CheckDelivered")
        assert_that(out.dead_letters, equal_to([]), label="CheckNoDeadLetters")
        assert_that(out.parked, equal_to([]), label="CheckNothingParked")


def _expected_files(elements: list[Any]) -> list[tuple[str, str, int]]:
    """(stream, kind, window start) of each element, for counting files when no
    window is split."""
    out = []
    for (stream_id, kind, rotation), doc in elements:
        seconds = int(document_time(kind, doc).timestamp())
        out.append((stream_id, kind, seconds - seconds % rotation))
    return out


# --------------------------------------------------------------------------- CSV format


GUIDE_ROWS: dict[str, dict[str, str]] = {
    "5.1.1": {
        "id": "201370711", "alert": "false",
        "description": "New location received from VLR for IMSI='901405300000171', "
                       "now attached to VLR=' 491700160000'.",
        "timestamp": "2019-07-17T16:28:00.000+0000",
        "event_type_id": "1", "event_type_description": "Update location",
        "event_source_id": "0", "event_source_description": "Network",
        "event_severity_id": "0", "event_severity_description": "Info",
        "organisation_id": "80025", "organisation_name": "WBV Tester",
        "endpoint_id": "8638726", "endpoint_name": "GPS Tracker", "endpoint_ip_address": "100.122.44.249",
        "endpoint_imei": "862789039891234",
        "imsi_id": "205672", "imsi_imsi": "901405300000171", "imsi_import_date": "2019-06-10T14:12:01.000+0000",
        "sim_id": "274887", "sim_iccid": "8988228066700001711", "sim_production_date": "2019-06-17T11:11:11.000+0000",
        "detail_id": "3", "detail_name": "Telekom",
        "detail_country_id": "74", "detail_country_name": "Germany", "detail_country_country_code": "49",
        "detail_country_mcc": "262", "detail_country_iso_code": "de",
        "detail_tapcode": '[{"id":2,"tapcode":"DEUD2"}]', "detail_mnc": '[{"id":3,"mnc":"02"}]',
    },
    "5.1.2": {
        "id": "201370712", "alert": "false", "description": "PDP Context deleted.",
        "timestamp": "2019-07-12T17:04:59.000+0000",
        "event_type_id": "5", "event_type_description": "Delete PDP Context",
        "event_source_id": "0", "event_source_description": "Network",
        "event_severity_id": "0", "event_severity_description": "Info",
        "organisation_id": "80025", "organisation_name": "WBV Tester",
        "endpoint_id": "8427408", "endpoint_name": "GPS Tracker", "endpoint_ip_address": "100.122.44.249",
        "endpoint_imei": "86278903989916123",
        "imsi_id": "372566", "imsi_imsi": "901405300000172", "imsi_import_date": "2019-06-10T14:12:01.000+0000",
        "sim_id": "319318", "sim_iccid": "8988228066700001722", "sim_production_date": "2019-06-17T11:11:11.000+0000",
        "detail_id": "48", "detail_name": "SFR Cegetel",
        "detail_volume_rx": "0.012671", "detail_volume_tx": "0.01148", "detail_volume_total": "0.024151",
        "detail_pdp_context_mcc": "310", "detail_pdp_context_tunnel_created": "2019-12-11T05:49:29",
        "detail_pdp_context_ggsn_control_plane_ip_address": "185.57.216.12",
        "detail_pdp_context_pdp_context_id": "162094787", "detail_pdp_context_imeisv": "8988303001234561234",
        "detail_pdp_context_region": "eu-west-1", "detail_pdp_context_lac": "40484",
        "detail_pdp_context_sac": "61142", "detail_pdp_context_rat_type": "1",
        "detail_pdp_context_gtp_version": "4", "detail_pdp_context_ue_ip_address": "100.105.197.34",
        "detail_pdp_context_mnc": "260", "detail_pdp_context_sgsn_data_plane_ip_address": "216.155.166.120",
        "detail_pdp_context_tx_teid_control_plane": "2667756875", "detail_pdp_context_rx_teid": "2720724",
        "detail_pdp_context_imsi": "901405300000172",
        "detail_pdp_context_sgsn_control_plane_ip_address": "216.155.165.120",
        "detail_pdp_context_nsapi": "6", "detail_pdp_context_ggsn_data_plane_ip_address": "185.57.216.13",
        "detail_pdp_context_tx_teid_data_plane": "3095978",
        "detail_country_id": "68", "detail_country_name": "France", "detail_country_country_code": "33",
        "detail_country_mcc": "208", "detail_country_iso_code": "fr",
    },
    "5.1.3": {
        "id": "201388127", "alert": "false",
        "description": "Failed authentication request from 'user@beispiel.com', "
                       "Reason: Invalid password from IP 9.9.9.9",
        "timestamp": "2019-05-10T05:42:00.000+0000",
        "event_type_id": "6", "event_type_description": "User authentication failed",
        "event_source_id": "2", "event_source_description": "API",
        "event_severity_id": "1", "event_severity_description": "Warn",
        "organisation_id": "839921", "organisation_name": "WBV Tester",
        "user_id": "84993", "user_username": "user@company.com", "user_name": "John Do",
    },
    "5.2": {
        "cost": "0.00558275", "id": "174321498",
        "operator_id": "4", "operator_name": "Telekom", "operator_country_id": "74", "operator_country_name": "Germany",
        "organisation_id": "80025", "organisation_name": "WBV Tester",
        "tariff_ratezone_id": "83", "tariff_ratezone_name": "Europe_I",
        "tariff_id": "64", "tariff_name": "Global Pro I",
        "traffic_type_id": "5", "traffic_type_name": "Data",
        "endpoint_id": "8392037", "imsi": "901405300000173",
        "volume_rx": "0.0138", "volume_tx": "0.008531", "volume_total": "0.022331",
        "start_timestamp": "2019-07-17 08:21:11",
        "sim_iccid": "8988228066700001733", "sim_id": "233746",
        "currency_symbol": "€", "currency_code": "EUR", "currency_id": "1",
        "end_timestamp": "2019-07-17 08:22:00",
    },
}


@pytest.mark.parametrize("sample", ["5.1.1", "5.1.2", "5.1.3", "5.2"])
def test_guide_samples_flatten_to_exact_rows(sample):
    kind, doc, columns = (("usage", EXPECTED_USAGE[sample], USAGE_COLUMNS) if sample == "5.2"
                          else ("event", EXPECTED_EVENTS[sample], EVENT_COLUMNS))
    assert set(leaves(doc)) <= set(columns)  # every leaf of the sample is a column
    expected = dict.fromkeys(columns, "") | GUIDE_ROWS[sample]
    assert dict(zip(columns, to_row(kind, doc), strict=True)) == expected
    assert flatten(kind, doc) == expected and list(flatten(kind, doc)) == list(columns)
    header, rows = parse_csv(render_csv(kind, [to_row(kind, doc)]))
    assert header == list(columns)
    assert rows == [expected]


def test_usage_file_is_exact_text():
    body = render_csv("usage", [to_row("usage", EXPECTED_USAGE["5.2"])])
    assert body.decode("utf-8") == (
        ",".join(USAGE_COLUMNS) + "\r\n"
        "0.00558275,174321498,4,Telekom,74,Germany,80025,WBV Tester,83,Europe_I,64,Global Pro I,5,Data,8392037,"
        "901405300000173,0.0138,0.008531,0.022331,2019-07-17 08:21:11,8988228066700001733,233746,€,EUR,1,"
        "2019-07-17 08:22:00\r\n"
    )
    event = render_csv("event", [to_row("event", EXPECTED_EVENTS["5.1.1"])]).decode("utf-8")
    assert event.endswith(',"[{""id"":2,""tapcode"":""DEUD2""}]","[{""id"":3,""mnc"":""02""}]"\r\n')


def test_columns_cover_every_leaf_enrich_can_produce():
    """Every event type 0 to 15 with every optional object (endpoint, IMSI, a SIM
    with MSISDN, user, operator with PDP context and volume) and usage of each
    traffic type: the leaves are exactly the columns, none missing, none unused."""
    tables = reference_tables()
    tables["user"].append({"id": 84994, "username": "ops@company.com", "name": "Ops", "organisation_id": 80025})
    ref = reference_from_tables(tables)
    event_leaves: set[str] = set()
    for type_id in range(16):
        raw = copy.deepcopy(RAW_EVENTS["5.1.2"]) | {
            "event_type_id": type_id, "endpoint_id": 8392037, "sim_id": 233746, "imsi": "901405300000173",
            "user_id": 84993 if type_id == 13 else 84994,
        }
        document = enrich_event(parse_record("event", raw)[0], ref)
        to_row("event", document)  # raises on a leaf that is not a column
        event_leaves |= set(leaves(document))
    assert event_leaves == set(EVENT_COLUMNS)
    assert {"sim_msisdn", "user_username", "detail_tapcode", "detail_volume_total"} <= event_leaves
    assert [c.removeprefix("detail_pdp_context_") for c in EVENT_COLUMNS if c.startswith("detail_pdp_context_")] \
        == list(PDP_CONTEXT_KEYS)
    usage_leaves: set[str] = set()
    for traffic_type in (5, 6):
        raw = copy.deepcopy(RAW_USAGE["5.2"]) | {"traffic_type_id": traffic_type}
        usage_leaves |= set(leaves(enrich_usage(parse_record("usage", raw)[0], ref)))
    assert usage_leaves == set(USAGE_COLUMNS)
    assert len(set(EVENT_COLUMNS)) == len(EVENT_COLUMNS) and len(set(USAGE_COLUMNS)) == len(USAGE_COLUMNS)


def test_a_leaf_outside_the_columns_raises():
    doc = copy.deepcopy(EXPECTED_EVENTS["5.1.1"])
    doc["detail"]["roaming"] = {"zone": 2}
    with pytest.raises(UnknownFieldError, match="detail_roaming_zone"):
        to_row("event", doc)
    with pytest.raises(UnknownFieldError):
        to_row("usage", EXPECTED_EVENTS["5.1.3"])


# --------------------------------------------------------------------------- file names


def test_file_names_follow_the_window_start_and_the_split_rule():
    start, end = BASE, BASE + timedelta(seconds=300)
    at = lambda seconds: BASE + timedelta(seconds=seconds)  # noqa: E731
    assert plan_files("event", start, end, [at(12.5)], 10) == [("events_20261101_080500.csv", slice(0, 10))]
    assert plan_files("usage", start, end, [at(1)], 10)[0][0] == "cdr_20261101_080500.csv"
    times = [at(3)] * 10 + [at(7.5)] * 10 + [at(7.9)] * 10 + [at(200)] * 3
    assert [name for name, _ in plan_files("event", start, end, times, 10)] == [
        "events_20261101_080500.csv",  # window start
        "events_20261101_080507.csv",  # its first document's second
        "events_20261101_080508.csv",  # 08:05:07 again: previous + 1 s
        "events_20261101_080820.csv",
    ]
    assert [c for _, c in plan_files("event", start, end, times, 10)][-1] == slice(30, 40)
    # More files than the window has seconds: never a name of the next window.
    short_end = BASE + timedelta(seconds=10)
    names = [name for name, _ in plan_files("event", start, short_end, [at(9)] * 120, 10)]
    assert names == [
        "events_20261101_080500.csv",
        "events_20261101_080509.csv",
        *(f"events_20261101_080509_{n}.csv" for n in range(1, 11)),
    ]


# --------------------------------------------------------------------------- the DoFn


class RecordingS3:
    def __init__(self) -> None:
        self.puts: list[dict[str, Any]] = []

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self.puts.append(kwargs)
        return {"ETag": '"0"', "ResponseMetadata": {"HTTPStatusCode": 200}}

    def close(self) -> None:
        pass


def test_fn_dead_letters_a_document_with_an_unknown_field_and_writes_the_rest(stream_secrets):
    client = RecordingS3()
    streams = config(s3_stream("s1", "http://127.0.0.1:9", "bucket", prefix="p/"))
    odd = event_doc("5.1.1", 2, BASE + timedelta(seconds=2))
    odd["detail"]["roaming"] = True
    docs = [event_doc("5.1.1", 1, BASE + timedelta(seconds=1)), odd, event_doc("5.1.3", 3, BASE)]
    fn = _S3WriteFn(lambda *args: client, allow_insecure=True)
    fn.setup()
    window = IntervalWindow(Timestamp.of(BASE.timestamp()), Timestamp.of(BASE.timestamp() + 300))
    outputs = list(fn.process((("s1", "event", 300), docs), streams, window=window, pane=PANE_INFO_UNKNOWN))
    fn.teardown()
    letters = [o.value for o in outputs if getattr(o, "tag", None) == DEAD_LETTERS]
    results = [o for o in outputs if isinstance(o, DeliveryResult)]
    assert len(letters) + len(results) == len(outputs)  # nothing parked
    assert [(d["stage"], d["reason"], d["record_id"]) for d in letters] == [("deliver", "internal_error", 2)]
    assert "detail_roaming" in letters[0]["detail"]
    assert [(r.status, r.documents, r.target) for r in results] == [
        ("delivered", 2, "s3://bucket/p/events_20261101_080500.csv")
    ]
    assert [(p["Bucket"], p["Key"], p["ContentType"]) for p in client.puts] == [
        ("bucket", "p/events_20261101_080500.csv", "text/csv; charset=utf-8")
    ]
    _, rows = parse_csv(client.puts[0]["Body"])
    assert [row["id"] for row in rows] == ["3", "1"]  # by time


def test_fn_unreadable_secret_is_a_failed_result(monkeypatch):
    monkeypatch.setenv("DATASTREAMER_TEST_AWS_KEY_ID", SECRETS["DATASTREAMER_TEST_AWS_KEY_ID"])
    monkeypatch.delenv("DATASTREAMER_TEST_AWS_SECRET", raising=False)
    streams = config(s3_stream("s1", "http://127.0.0.1:9", "bucket"))
    client = RecordingS3()
    fn = _S3WriteFn(lambda *args: client, FAST, allow_insecure=True)
    fn.setup()
    window = IntervalWindow(Timestamp.of(BASE.timestamp()), Timestamp.of(BASE.timestamp() + 300))
    doc = usage_doc(1, BASE)
    outputs = list(fn.process((("s1", "usage", 300), [doc]), streams, window=window, pane=PANE_INFO_UNKNOWN))
    fn.teardown()
    results = [o for o in outputs if isinstance(o, DeliveryResult)]
    parked = [o.value for o in outputs if getattr(o, "tag", None) == PARKED]
    assert [(r.status, r.error, r.token, r.failed_documents, r.parked_documents, r.attempts) for r in results] == [
        ("failed", "secret_unavailable", "credentials_unavailable", 1, 1, 0)
    ]
    assert [(b.stream_id, b.reason, b.token, b.documents) for b in parked] == [
        ("s1", PERMANENT_FAILURE, "credentials_unavailable", (("usage", doc),))
    ]
    assert client.puts == []
    assert SECRETS["DATASTREAMER_TEST_AWS_KEY_ID"] not in repr(outputs)


# --------------------------------------------------------------------------- end to end on moto


def test_one_file_per_stream_kind_and_window_on_moto(stream_secrets, moto_server, aws_session):
    s3 = aws_session("s3")
    bucket = new_bucket(s3)
    streams = config(s3_stream("s1", moto_server.url, bucket, prefix="fleet/", batching={"rotation_seconds": 60}))
    at = lambda seconds: BASE + timedelta(seconds=seconds)  # noqa: E731
    events = [event_doc(sample, 100 + i, at(offset), 9_000 + i % 3) if sample != "5.1.3"
              else event_doc(sample, 100 + i, at(offset))
              for i, (sample, offset) in enumerate([
                  ("5.1.1", 0), ("5.1.2", 59.999), ("5.1.3", 30), ("5.1.1", 30),  # window 08:05
                  ("5.1.2", 60), ("5.1.1", 61), ("5.1.3", 119.5),  # window 08:06 (60 s is its start)
                  ("5.1.1", 185), ("5.1.2", 180.001),  # window 08:08; none in 08:07
              ])]
    usage = [usage_doc(200 + i, at(offset), 9_000 + i % 2) for i, offset in enumerate([5, 5, 44, 190, 239])]
    elements = [routed("s1", 60, "event", d) for d in events] + [routed("s1", 60, "usage", d) for d in usage]
    random.Random(3).shuffle(elements)

    expected = {
        "fleet/events_20261101_080500.csv": ("event", events[0:4]),
        "fleet/events_20261101_080600.csv": ("event", events[4:7]),
        "fleet/events_20261101_080800.csv": ("event", events[7:9]),
        "fleet/cdr_20261101_080500.csv": ("usage", usage[0:3]),
        "fleet/cdr_20261101_080800.csv": ("usage", usage[3:5]),
    }
    for attempt in range(2):  # the second run is a retry: it must overwrite, not add
        run_s3(streams, elements)
        objects = read_bucket(s3, bucket)
        assert set(objects) == set(expected), f"attempt {attempt}"
        for key, (kind, docs) in expected.items():
            content_type, body = objects[key]
            assert content_type == "text/csv; charset=utf-8"
            header, rows = parse_csv(body)
            assert header == list(EVENT_COLUMNS if kind == "event" else USAGE_COLUMNS)
            assert rows == [expected_row(kind, d) for d in sorted(docs, key=sort_key(kind))], key
            assert body.count(b"\r\n") == len(docs) + 1


def test_a_window_over_flush_size_is_split_into_files_on_moto(stream_secrets, moto_server, aws_session):
    s3 = aws_session("s3")
    bucket = new_bucket(s3)
    streams = config(s3_stream("s1", moto_server.url, bucket, batching={"flush_size": 10, "rotation_seconds": 300}))
    at = lambda seconds: BASE + timedelta(seconds=seconds)  # noqa: E731
    times = [at(3 + i // 2 * 0.1) for i in range(10)] + [at(7.5 + i * 0.01) for i in range(10)] \
        + [at(7.9 + i * 0.01) for i in range(5)]
    # Ids fall as time rises and come in pairs with one time: order is (time, id).
    docs = [event_doc("5.1.1", 1_000 - i, moment) for i, moment in enumerate(times)]
    elements = [routed("s1", 300, "event", d) for d in docs]
    random.Random(9).shuffle(elements)
    with TestPipeline() as p:
        side = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([streams]))
        out = p | beam.Create(elements) | beam.Map(stamp) | WriteToS3(side, policy=FAST, allow_insecure=True)
        assert_that(out.results | beam.Map(lambda r: (r.target, r.status, r.documents)), equal_to([
            (f"s3://{bucket}/events_20261101_080500.csv", "delivered", 10),
            (f"s3://{bucket}/events_20261101_080507.csv", "delivered", 10),
            (f"s3://{bucket}/events_20261101_080508.csv", "delivered", 5),
        ]))
    ordered = sorted(docs, key=sort_key("event"))
    assert [d["id"] for d in ordered[:4]] == [999, 1000, 997, 998]
    objects = read_bucket(s3, bucket)
    assert {key: parse_csv(body)[1] for key, (_, body) in objects.items()} == {
        "events_20261101_080500.csv": [expected_row("event", d) for d in ordered[0:10]],
        "events_20261101_080507.csv": [expected_row("event", d) for d in ordered[10:20]],
        "events_20261101_080508.csv": [expected_row("event", d) for d in ordered[20:25]],
    }


def test_streams_get_only_their_own_files_on_moto(stream_secrets, moto_server, aws_session):
    s3 = aws_session("s3")
    shared, other = new_bucket(s3), new_bucket(s3)
    streams = config(
        s3_stream("a", moto_server.url, shared, prefix="a/"),
        s3_stream("b", moto_server.url, shared, prefix="b/"),
        s3_stream("c", moto_server.url, other),
    )
    a_docs = [event_doc("5.1.1", 1, BASE), event_doc("5.1.2", 2, BASE + timedelta(seconds=1))]
    b_docs = [usage_doc(3, BASE + timedelta(seconds=2))]
    c_docs = [event_doc("5.1.3", 4, BASE + timedelta(seconds=3))]
    elements = ([routed("a", 300, "event", d) for d in a_docs] + [routed("b", 300, "usage", d) for d in b_docs]
                + [routed("c", 300, "event", d) for d in c_docs])
    run_s3(streams, elements)
    shared_files = {key: parse_csv(body)[1] for key, (_, body) in read_bucket(s3, shared).items()}
    other_files = {key: parse_csv(body)[1] for key, (_, body) in read_bucket(s3, other).items()}
    assert shared_files == {
        "a/events_20261101_080500.csv": [expected_row("event", d) for d in a_docs],
        "b/cdr_20261101_080500.csv": [expected_row("usage", d) for d in b_docs],
    }
    assert other_files == {"events_20261101_080500.csv": [expected_row("event", d) for d in c_docs]}


def test_a_missing_bucket_gives_a_failed_result(stream_secrets, moto_server):
    streams = config(s3_stream("s1", moto_server.url, f"missing-{uuid.uuid4().hex[:8]}"))
    elements = [routed("s1", 300, "usage", usage_doc(i, BASE + timedelta(seconds=i))) for i in range(3)]
    with TestPipeline() as p:
        side = beam.pvalue.AsSingleton(p | "Streams" >> beam.Create([streams]))
        out = p | beam.Create(elements) | beam.Map(stamp) | WriteToS3(side, policy=FAST, allow_insecure=True)
        assert_that(out.results | beam.Map(lambda r: (r.status, r.error, r.status_code, r.documents,
                                                       r.failed_documents, r.token, r.attempts)),
                    equal_to([("failed", "NoSuchBucket", 404, 3, 3, "not_found", 1)]), label="CheckResults")
        assert_that(out.parked | beam.Map(lambda b: (b.reason, b.token, b.attempts,
                                                      [(kind, d["id"]) for kind, d in b.documents])),
                    equal_to([(PERMANENT_FAILURE, "not_found", 1, [("usage", 0), ("usage", 1), ("usage", 2)])]),
                    label="CheckParked")
