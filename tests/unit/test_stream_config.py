"""Stream configuration: loading JSON and YAML, and errors that name the stream
and the field."""

from __future__ import annotations

import copy
import json

import pytest

from schemas.streams import StreamConfigError, StreamLimits, parse_stream_config, stream_from_dict
from tests.streams import datadog_stream, kinesis_stream, rest_stream, s3_stream
from transforms.routing import load_stream_config

URL = "https://hooks.example.com/iot"


def _error(stream: dict) -> str:
    with pytest.raises(StreamConfigError) as caught:
        stream_from_dict(stream)
    return str(caught.value)


def test_json_and_yaml_give_the_same_config(tmp_path):
    streams = [rest_stream("rest-1", URL), s3_stream("s3-1", "http://127.0.0.1:5000", "bucket-a", prefix="iot/"),
               datadog_stream("dd-1", "http://127.0.0.1:9"), kinesis_stream("k-1", "http://127.0.0.1:5000", "st")]
    (tmp_path / "streams.json").write_text(json.dumps({"streams": streams}))
    yaml_text = "streams:\n" + "".join(
        "  - " + json.dumps(s) + "\n" for s in streams  # JSON objects are valid YAML flow mappings
    )
    (tmp_path / "streams.yaml").write_text(yaml_text)
    from_json = load_stream_config(str(tmp_path / "streams.json"))
    from_yaml = load_stream_config(str(tmp_path / "streams.yaml"))
    assert from_json == from_yaml
    assert sorted(from_json.streams) == ["dd-1", "k-1", "rest-1", "s3-1"]
    assert from_json["s3-1"].destination.prefix == "iot/"
    assert from_json["rest-1"].batching.bulk_size == 3000
    assert [s.id for s in from_json.by_organisation[80025]] == ["dd-1", "k-1", "rest-1", "s3-1"]


def test_a_bare_yaml_list_is_accepted():
    text = f"""
- id: bulk-eu
  organisation_id: 80025
  stream_type: events
  api_type: rest_api_bulk
  created_at: "2026-10-01T00:00:00Z"
  filters: {{event_type_ids: [1, 2], alert: true}}
  batching: {{bulk_size: 500}}
  rest: {{url: "{URL}", method: PUT, signing_secret: {{env: SIGNING}}}}
"""
    stream = parse_stream_config(text)["bulk-eu"]
    assert stream.filters.event_type_ids == frozenset({1, 2}) and stream.filters.alert is True
    assert stream.batching.bulk_size == 500 and stream.destination.method == "PUT"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("organisation_id"), "stream 'r': organisation_id is required"),
        (lambda s: s.update(organisation_id="80025"), "stream 'r': organisation_id must be an integer"),
        (lambda s: s.update(api_type="ftp"), "stream 'r': api_type must be one of rest_api, rest_api_bulk"),
        (lambda s: s.update(stream_type="all"), "stream 'r': stream_type must be one of usage, events, both"),
        (lambda s: s.update(state="running"), "stream 'r': state must be one of active, paused, deactivated"),
        (lambda s: s.update(created_at="yesterday"), "stream 'r': created_at must be ISO 8601"),
        (lambda s: s["rest"].update(url="ftp://x"), "stream 'r': rest.url must be an http(s) URL"),
        (lambda s: s["rest"].update(url="https://user:pw@x.example/"),
         "stream 'r': rest.url must not carry credentials"),
        (lambda s: s["rest"].update(method="DELETE"), "stream 'r': rest.method must be one of POST, PUT"),
        (lambda s: s["rest"]["headers"].update(Authorization="Bearer x"),
         "stream 'r': rest.headers must not carry the credential header 'Authorization'"),
        (lambda s: s["rest"]["headers"].update({"X-Customer": "東京"}),
         "stream 'r': rest.headers has a value for header 'X-Customer' that HTTP cannot carry (characters "
         "outside Latin-1, or leading whitespace)"),
        (lambda s: s["rest"]["headers"].update({"X-Customer": " acme"}),
         "stream 'r': rest.headers has a value for header 'X-Customer' that HTTP cannot carry"),
        (lambda s: s["rest"].update(auth_secret={"value": "literal"}),
         "stream 'r': rest.auth_secret must only name where the secret is"),
        (lambda s: s["rest"].update(auth_secret={"env": "A", "file": "/b"}),
         "stream 'r': rest.auth_secret must have exactly one of 'env', 'file' or 'sealed'"),
        (lambda s: s["rest"].pop("auth_secret"), "stream 'r': rest.auth_header and auth_secret go together"),
        (lambda s: s.pop("rest"), "stream 'r': rest is required for api_type rest_api"),
        (lambda s: s.update(s3={"bucket": "b"}), "stream 'r': s3 does not apply to api_type rest_api"),
        (lambda s: s.update(filters={"event_type_ids": [1, 16]}), "stream 'r': filters.event_type_ids must be"),
        (lambda s: s.update(filters={"alert": "yes"}), "stream 'r': filters.alert must be a boolean"),
        (lambda s: s.update(batching={"bulk_size": 10_001}),
         "stream 'r': batching.bulk_size must be between 1 and 10,000, got 10,001"),
        (lambda s: s.update(batching={"rotation_seconds": 5}),
         "stream 'r': batching.rotation_seconds must be between 10"),
        (lambda s: s.update(batching={"flush_size": 9}), "stream 'r': batching.flush_size must be between 10"),
        (lambda s: s.update(historic_data="no"), "stream 'r': historic_data must be a boolean"),
    ],
)
def test_invalid_rest_stream(change, message):
    stream = copy.deepcopy(rest_stream("r", URL))
    change(stream)
    assert message in _error(stream)


def test_invalid_aws_and_datadog_streams():
    kinesis = kinesis_stream("k", "http://127.0.0.1:1", "st")
    kinesis["kinesis"]["region"] = "Frankfurt"
    assert "stream 'k': kinesis.region is not an AWS region" in _error(kinesis)
    kinesis = kinesis_stream("k", "http://127.0.0.1:1", "st")
    del kinesis["kinesis"]["secret_access_key"]
    assert "stream 'k': kinesis.secret_access_key is required" in _error(kinesis)
    s3 = s3_stream("s", "http://127.0.0.1:1", "bucket-a", prefix="/abs")
    assert "stream 's': s3.prefix must not start with '/'" in _error(s3)
    datadog = datadog_stream("d", "http://127.0.0.1:1")
    datadog["datadog"]["site"] = "example.com"
    assert "stream 'd': datadog.site is not a DataDog site" in _error(datadog)
    datadog = datadog_stream("d", "http://127.0.0.1:1", stream_type="events")
    assert "stream 'd': stream_type must be usage for datadog streams" in _error(datadog)


def test_bad_ids_and_duplicates():
    assert "stream #1: id must be" in _error(rest_stream("has space", URL))
    text = json.dumps([rest_stream("same", URL), rest_stream("same", URL)])
    with pytest.raises(StreamConfigError, match="stream 'same': id is used by more than one stream"):
        parse_stream_config(text)


def test_two_s3_streams_may_not_share_bucket_and_prefix():
    text = json.dumps([s3_stream("a", "http://127.0.0.1:1", "bucket-a"),
                       s3_stream("b", "http://127.0.0.1:1", "bucket-a")])
    with pytest.raises(StreamConfigError, match=r"stream 'b': s3\.bucket and s3\.prefix are also used by stream 'a'"):
        parse_stream_config(text)
    ok = json.dumps([s3_stream("a", "http://127.0.0.1:1", "bucket-a"),
                     s3_stream("b", "http://127.0.0.1:1", "bucket-a", prefix="b/")])
    assert len(parse_stream_config(ok)) == 2


def test_unreadable_files(tmp_path):
    with pytest.raises(StreamConfigError, match="cannot read the stream configuration"):
        load_stream_config(str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StreamConfigError, match="not valid JSON or YAML"):
        load_stream_config(str(tmp_path / "bad.json"))
    (tmp_path / "scalar.yaml").write_text("42\n")
    with pytest.raises(StreamConfigError, match="expected a list of streams"):
        load_stream_config(str(tmp_path / "scalar.yaml"))


def test_destination_description_has_no_secrets():
    stream = stream_from_dict(rest_stream("r", URL))
    assert stream.describe_destination() == f"POST {URL}"
    assert "DATASTREAMER_TEST" not in repr(stream.describe_destination())


def test_configs_the_model_accepts_match_the_avro_schema():
    """The typed model and schemas/avro/data_stream.avsc describe the same format."""
    from fastavro.validation import validate

    from schemas import load_schema

    schema = load_schema("data_stream")
    for stream in (
        rest_stream("r", URL, filters={"event_type_ids": [1, 2], "alert": True}, batching={"bulk_size": 5}),
        kinesis_stream("k", "http://127.0.0.1:1", "st"),
        s3_stream("s", "http://127.0.0.1:1", "bucket-a", prefix="p/", batching={"rotation_seconds": 60}),
        datadog_stream("d", "http://127.0.0.1:1", batching={"metrics_interval_seconds": 120}),
    ):
        stream_from_dict(stream)
        assert validate(stream, schema, raise_errors=True)
    assert not validate({**rest_stream("r", URL), "api_type": "ftp"}, schema, raise_errors=False)


# --------------------------------------------------------------------------- limits


def _org_streams(count: int, organisation_id: int = 80025, first: int = 0) -> list[dict]:
    return [rest_stream(f"s{first + n}", URL, organisation_id=organisation_id) for n in range(count)]


def test_defaults_of_the_limits():
    assert StreamLimits() == StreamLimits(max_streams=10_000, max_streams_per_organisation=100)


THREE = _org_streams(2, 1) + _org_streams(1, 2, 2)


@pytest.mark.parametrize(("name", "text"), [
    ("streams.json", json.dumps({"streams": THREE})),
    ("streams.yaml", "streams:\n" + "".join(f"  - {json.dumps(s)}\n" for s in THREE)),  # JSON objects are YAML
    ("list.yaml", "".join(f"- {json.dumps(s)}\n" for s in THREE)),
])
def test_a_configuration_over_the_total_is_refused_naming_file_and_field(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert len(load_stream_config(str(path), StreamLimits(max_streams=3))) == 3
    with pytest.raises(StreamConfigError) as caught:
        load_stream_config(str(path), StreamLimits(max_streams=2))
    # JSON is decoded whole, so it is counted; YAML stops composing at the first stream too many.
    held = "3 entries, more than" if name.endswith(".json") else "more than"
    assert str(caught.value) == (f"{path}: streams has {held} the 2 streams a configuration may hold "
                                 "(--max_streams)")


def test_an_organisation_over_its_limit_is_refused_naming_file_stream_and_field(tmp_path):
    path = tmp_path / "streams.json"
    path.write_text(json.dumps(_org_streams(2, 7) + _org_streams(3, 80025, 10)))
    assert len(load_stream_config(str(path), StreamLimits(max_streams_per_organisation=3))) == 5
    with pytest.raises(StreamConfigError) as caught:
        load_stream_config(str(path), StreamLimits(max_streams_per_organisation=2))
    assert str(caught.value) == (f"{path}: stream 's12': organisation_id 80025 has more than the 2 streams an "
                                 "organisation may have (--max_streams_per_organisation)")


def test_the_default_limits_apply_where_none_are_given():
    text = json.dumps(_org_streams(101))
    with pytest.raises(StreamConfigError, match=r"stream 's100': organisation_id 80025 has more than the 100 "):
        parse_stream_config(text, "x.json")
