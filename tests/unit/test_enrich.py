"""Direct unit tests of enrichment: resolution rules and every unresolvable case."""

from __future__ import annotations

import copy

import pytest

from schemas.records import RecordError
from tests.conftest import reference_from_tables
from tests.guide_samples import RAW_EVENTS, RAW_USAGE, reference_tables
from transforms.enrich import enrich_event, enrich_usage, volume_mb
from transforms.parse import parse_record


def _event(sample="5.1.1", **changes):
    return parse_record("event", copy.deepcopy(RAW_EVENTS[sample]) | changes)[0]


def _usage(**changes):
    return parse_record("usage", copy.deepcopy(RAW_USAGE["5.2"]) | changes)[0]


def _reason(fn, record, ref):
    with pytest.raises(RecordError) as caught:
        fn(record, ref)
    return caught.value.reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"organisation_id": 1}, "unknown_reference:organisation"),
        ({"sim_id": 1}, "unknown_reference:sim"),
        ({"endpoint_id": 1}, "unknown_reference:endpoint"),
        ({"imsi": "901405300009999"}, "unknown_reference:imsi"),
        ({"operator_id": 1}, "unknown_reference:operator"),
        ({"event_source_id": 9}, "unknown_reference:event_source"),
        ({"event_severity_id": 9}, "unknown_reference:event_severity"),
        ({"imsi": "901405300000172"}, "reference_mismatch:imsi_sim"),
        ({"organisation_id": 839921}, "reference_mismatch:sim_organisation"),
        ({"sim_id": 319318, "imsi": "901405300000172"}, "reference_mismatch:endpoint_sim"),
    ],
)
def test_unresolvable_events(changes, reason, sample_reference):
    assert _reason(enrich_event, _event(**changes), sample_reference) == reason


def test_user_of_another_organisation_is_refused_except_for_support_access(sample_reference):
    record = _event("5.1.3", organisation_id=80025)
    assert _reason(enrich_event, record, sample_reference) == "reference_mismatch:user_organisation"
    support = _event("5.1.3", organisation_id=80025, event_type_id=13)
    assert enrich_event(support, sample_reference)["user"]["id"] == 84993


def test_unknown_user(sample_reference):
    assert _reason(enrich_event, _event("5.1.3", user_id=5), sample_reference) == "unknown_reference:user"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"sim_id": 999}, "unknown_reference:sim"),
        ({"endpoint_id": 999}, "unknown_reference:endpoint"),
        ({"organisation_id": 999}, "unknown_reference:organisation"),
        ({"tariff_id": 999}, "unknown_reference:tariff"),
        ({"ratezone_id": 999}, "unknown_reference:ratezone"),
        ({"operator_id": 999}, "unknown_reference:operator"),
        ({"traffic_type_id": 7}, "unknown_reference:traffic_type"),
        ({"imsi": "901405300000171"}, "reference_mismatch:imsi_sim"),
        ({"endpoint_id": 8638726}, "reference_mismatch:endpoint_sim"),
        ({"organisation_id": 839921}, "reference_mismatch:sim_organisation"),
    ],
)
def test_unresolvable_usage(changes, reason, sample_reference):
    assert _reason(enrich_usage, _usage(**changes), sample_reference) == reason


def test_ratezone_of_another_tariff():
    tables = reference_tables()
    tables["tariff"].append({"id": 65, "name": "Global Pro II", "currency_id": 2})
    tables["ratezone"].append({"id": 90, "name": "North America", "tariff_id": 65})
    ref = reference_from_tables(tables)
    assert _reason(enrich_usage, _usage(ratezone_id=90), ref) == "reference_mismatch:ratezone_tariff"
    document = enrich_usage(_usage(tariff_id=65, ratezone_id=90), ref)
    assert document["currency"] == {"symbol": "$", "code": "USD", "id": 2}
    assert document["tariff"] == {"ratezone": {"id": 90, "name": "North America"}, "id": 65, "name": "Global Pro II"}


def test_sms_volumes_count_messages(sample_reference):
    document = enrich_usage(_usage(traffic_type_id=6, volume_rx=0, volume_tx=1, cost=0.05), sample_reference)
    assert document["traffic_type"] == {"id": 6, "name": "SMS"}
    assert document["volume"] == {"rx": 0.0, "tx": 1.0, "total": 1.0}


def test_msisdn_appears_when_the_sim_has_one(sample_reference):
    record = _event(
        "5.1.1", endpoint_id=8392037, sim_id=233746, imsi="901405300000173", event_type_id=8, operator_id=None
    )
    document = enrich_event(record, sample_reference)
    assert document["sim"] == {
        "id": 233746,
        "iccid": "8988228066700001733",
        "msisdn": "423663920123456",
        "production_date": "2019-06-17T11:11:11.000+0000",
    }
    assert "detail" not in document
    assert document["endpoint"]["tags"] == "fleet,berlin"


def test_optional_references_are_resolved_on_any_event_type(sample_reference):
    # A SIM activation (8) only has to name its SIM; when it names an endpoint
    # and IMSI too they are shown, and checked.
    document = enrich_event(_event("5.1.1", event_type_id=8, operator_id=None), sample_reference)
    assert set(document) >= {"endpoint", "imsi", "sim"}
    assert document["event_type"] == {"id": 8, "description": "SIM activation"}


def test_generic_event_has_only_the_common_properties(sample_reference):
    record = parse_record("event", {
        "id": 7, "timestamp": "2026-11-01T10:00:00Z", "event_type_id": 0, "event_source_id": 2,
        "event_severity_id": 0, "organisation_id": 80025, "alert": True, "description": "Hello",
    })[0]
    assert enrich_event(record, sample_reference) == {
        "id": 7, "alert": True, "description": "Hello", "timestamp": "2026-11-01T10:00:00.000+0000",
        "event_type": {"id": 0, "description": "Generic"},
        "event_source": {"id": 2, "description": "API"},
        "event_severity": {"id": 0, "description": "Info"},
        "organisation": {"id": 80025, "name": "WBV Tester"},
    }


@pytest.mark.parametrize(
    ("rx", "tx", "expected"),
    [
        (12671, 11480, {"rx": 0.012671, "tx": 0.01148, "total": 0.024151}),
        (0, 0, {"rx": 0.0, "tx": 0.0, "total": 0.0}),
        (1, 1, {"rx": 0.000001, "tx": 0.000001, "total": 0.000002}),
        (123_456_789, 1, {"rx": 123.456789, "tx": 0.000001, "total": 123.45679}),
    ],
)
def test_volume_in_megabytes_with_six_decimals(rx, tx, expected):
    assert volume_mb(rx, tx) == expected


def test_enrichment_does_not_mutate_reference_data(sample_reference):
    before = copy.deepcopy(dict(sample_reference.tables["operator_tapcode"]))
    document = enrich_event(_event(), sample_reference)
    document["detail"]["tapcode"][0]["tapcode"] = "CHANGED"
    assert enrich_event(_event(), sample_reference)["detail"]["tapcode"] == [{"id": 2, "tapcode": "DEUD2"}]
    assert dict(sample_reference.tables["operator_tapcode"]) == before
