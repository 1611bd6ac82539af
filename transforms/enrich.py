"""Turn validated raw records into the guide's customer documents.

``enrich_event`` and ``enrich_usage`` are pure functions of (record, reference
snapshot): they build exactly the objects of the guide (sections 3 to 5), in the
key order of its samples, and raise :class:`RecordError` when a record names an
entity the reference data does not know or names entities that do not belong
together (an IMSI of another SIM, a SIM of another organisation). Data is never
invented: an unresolvable record is a dead letter, not a document with blanks.

Shape rules the samples imply (see tests/composite/test_conformance.py):

- ``endpoint``, ``imsi``, ``sim`` and ``user`` appear when the raw event names them
  (which event types must name which is :data:`schemas.catalogues.EVENT_REQUIRED_FIELDS`).
- ``detail`` is the visited operator with its country; location updates (types 1
  and 2) add its ``tapcode`` and ``mnc`` lists (sample 5.1.1), PDP context events add
  ``pdp_context`` and, when measured, ``volume`` (sample 5.1.2).
- ``sim.msisdn`` (table 3.5) appears when the SIM has one; the samples' SIMs have none.
- Volumes are MB (10^6 bytes) with 6 decimals; SMS volumes count messages.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from schemas import metrics
from schemas.catalogues import EVENT_TYPES, LOCATION_EVENT_TYPES
from schemas.records import Kind, RecordError, dead_letter
from schemas.snapshots import RefreshingSnapshot, current
from schemas.timestamps import format_event_time, format_tunnel_time, format_usage_time, parse_iso
from transforms.reference import ReferenceData, Row

_LOG = logging.getLogger(__name__)

DEAD_LETTERS = "dead_letters"
BYTES_PER_MB = 1_000_000

#: Keys of ``detail.pdp_context``, in the order of sample 5.1.2: table 3.3 plus the
#: tunnel endpoint ids and IMSI the sample also carries.
PDP_CONTEXT_KEYS = (
    "mcc", "tunnel_created", "ggsn_control_plane_ip_address", "pdp_context_id", "imeisv", "region",
    "lac", "sac", "rat_type", "gtp_version", "ue_ip_address", "mnc", "sgsn_data_plane_ip_address",
    "ci", "apn", "tx_teid_control_plane", "rx_teid", "rac", "imsi", "sgsn_control_plane_ip_address",
    "nsapi", "breakout_ip", "ggsn_data_plane_ip_address", "tx_teid_data_plane",
)


def _mismatch(what: str, detail: str) -> RecordError:
    return RecordError(f"reference_mismatch:{what}", detail)


def volume_mb(rx_bytes: int, tx_bytes: int) -> dict[str, float]:
    """``{"rx", "tx", "total"}`` in MB with 6 decimals; total from the exact byte sum."""
    return {
        "rx": round(rx_bytes / BYTES_PER_MB, 6),
        "tx": round(tx_bytes / BYTES_PER_MB, 6),
        "total": round((rx_bytes + tx_bytes) / BYTES_PER_MB, 6),
    }


def _organisation(ref: ReferenceData, organisation_id: int) -> dict[str, Any]:
    org = ref.get("organisation", organisation_id)
    return {"id": org["id"], "name": org["name"]}


def _sim(ref: ReferenceData, sim_id: int, organisation_id: int) -> Row:
    sim = ref.get("sim", sim_id)
    if sim["organisation_id"] != organisation_id:
        raise _mismatch("sim_organisation", f"SIM {sim_id} does not belong to organisation {organisation_id}")
    return sim


def _endpoint(ref: ReferenceData, endpoint_id: int, organisation_id: int, sim_id: int | None) -> Row:
    endpoint = ref.get("endpoint", endpoint_id)
    if endpoint["organisation_id"] != organisation_id:
        raise _mismatch(
            "endpoint_organisation", f"endpoint {endpoint_id} does not belong to organisation {organisation_id}"
        )
    if sim_id is not None and endpoint["sim_id"] != sim_id:
        raise _mismatch("endpoint_sim", f"SIM {sim_id} is not assigned to endpoint {endpoint_id}")
    return endpoint


def _imsi(ref: ReferenceData, value: str, sim_id: int | None) -> Row:
    imsi = ref.imsi(value)
    if sim_id is not None and imsi["sim_id"] != sim_id:
        raise _mismatch("imsi_sim", f"IMSI {value} is not provisioned on SIM {sim_id}")
    return imsi


def _catalogue(ref: ReferenceData, entity: str, entity_id: int) -> dict[str, Any]:
    row = ref.get(entity, entity_id)
    return {"id": row["id"], "description": row["description"]}


def _operator_detail(ref: ReferenceData, operator_id: int) -> dict[str, Any]:
    operator = ref.get("operator", operator_id)
    country = ref.get("country", operator["country_id"])
    return {
        "id": operator["id"],
        "name": operator["name"],
        "country": {
            "id": country["id"],
            "name": country["name"],
            "country_code": country["country_code"],
            "mcc": country["mcc"],
            "iso_code": country["iso_code"],
        },
    }


def render_pdp_context(pdp: dict[str, Any]) -> dict[str, Any]:
    context = {key: pdp[key] for key in PDP_CONTEXT_KEYS}
    context["tunnel_created"] = format_tunnel_time(parse_iso(pdp["tunnel_created"]))
    return context


def enrich_event(record: dict[str, Any], ref: ReferenceData) -> dict[str, Any]:
    """The customer document of a validated raw event (guide 3 and 5.1)."""
    org_id = record["organisation_id"]
    doc: dict[str, Any] = {
        "id": record["id"],
        "alert": record["alert"],
        "description": record["description"],
        "timestamp": format_event_time(parse_iso(record["timestamp"])),
        "event_type": _catalogue(ref, "event_type", record["event_type_id"]),
        "event_source": _catalogue(ref, "event_source", record["event_source_id"]),
        "event_severity": _catalogue(ref, "event_severity", record["event_severity_id"]),
        "organisation": _organisation(ref, org_id),
    }
    sim_id = record["sim_id"]
    sim = _sim(ref, sim_id, org_id) if sim_id is not None else None
    if record["endpoint_id"] is not None:
        endpoint = _endpoint(ref, record["endpoint_id"], org_id, sim_id)
        doc["endpoint"] = {
            "id": endpoint["id"],
            "name": endpoint["name"],
            "ip_address": endpoint["ip_address"],
            "tags": endpoint["tags"],
            "imei": endpoint["imei"],
        }
    if record["imsi"] is not None:
        imsi = _imsi(ref, record["imsi"], sim_id)
        doc["imsi"] = {"id": imsi["id"], "imsi": imsi["imsi"], "import_date": imsi["import_date"]}
    if sim is not None:
        doc["sim"] = {"id": sim["id"], "iccid": sim["iccid"]}
        if sim["msisdn"] is not None:
            doc["sim"]["msisdn"] = sim["msisdn"]
        doc["sim"]["production_date"] = sim["production_date"]
    if record["user_id"] is not None:
        user = ref.get("user", record["user_id"])
        # Support staff (type 13) act from the operator's own organisation.
        if record["event_type_id"] != 13 and user["organisation_id"] != org_id:
            raise _mismatch("user_organisation", f"user {user['id']} does not belong to organisation {org_id}")
        doc["user"] = {"id": user["id"], "username": user["username"], "name": user["name"]}
    if record["operator_id"] is not None:
        doc["detail"] = _event_detail(record, ref)
    return doc


def _event_detail(record: dict[str, Any], ref: ReferenceData) -> dict[str, Any]:
    """The visited operator; keys in the order of samples 5.1.1 and 5.1.2."""
    operator_id = record["operator_id"]
    operator = _operator_detail(ref, operator_id)
    country = operator.pop("country")
    detail = operator
    if record["event_type_id"] in LOCATION_EVENT_TYPES:
        detail["country"] = country
        detail["tapcode"] = [dict(row) for row in ref.tapcodes_by_operator.get(operator_id, ())]
        detail["mnc"] = [dict(row) for row in ref.mncs_by_operator.get(operator_id, ())]
        return detail
    if record["volume_rx_bytes"] is not None and record["volume_tx_bytes"] is not None:
        detail["volume"] = volume_mb(record["volume_rx_bytes"], record["volume_tx_bytes"])
    if record["pdp_context"] is not None:
        detail["pdp_context"] = render_pdp_context(record["pdp_context"])
    detail["country"] = country
    return detail


def enrich_usage(record: dict[str, Any], ref: ReferenceData) -> dict[str, Any]:
    """The customer document of a validated raw usage record (guide 4 and 5.2)."""
    org_id = record["organisation_id"]
    organisation = _organisation(ref, org_id)
    sim = _sim(ref, record["sim_id"], org_id)
    endpoint = _endpoint(ref, record["endpoint_id"], org_id, record["sim_id"])
    _imsi(ref, record["imsi"], record["sim_id"])
    operator = ref.get("operator", record["operator_id"])
    country = ref.get("country", operator["country_id"])
    tariff = ref.get("tariff", record["tariff_id"])
    ratezone = ref.get("ratezone", record["ratezone_id"])
    if ratezone["tariff_id"] != tariff["id"]:
        raise _mismatch("ratezone_tariff", f"rate zone {ratezone['id']} is not a zone of tariff {tariff['id']}")
    currency = ref.get("currency", tariff["currency_id"])
    traffic_type = ref.get("traffic_type", record["traffic_type_id"])
    if traffic_type["unit"] == "bytes":
        volume = volume_mb(record["volume_rx"], record["volume_tx"])
    else:
        rx, tx = record["volume_rx"], record["volume_tx"]
        volume = {"rx": float(rx), "tx": float(tx), "total": float(rx + tx)}
    return {
        "cost": record["cost"],
        "id": record["id"],
        "operator": {
            "id": operator["id"],
            "name": operator["name"],
            "country": {"id": country["id"], "name": country["name"]},
        },
        "organisation": organisation,
        "tariff": {
            "ratezone": {"id": ratezone["id"], "name": ratezone["name"]},
            "id": tariff["id"],
            "name": tariff["name"],
        },
        "traffic_type": {"id": traffic_type["id"], "name": traffic_type["name"]},
        "endpoint": {"id": endpoint["id"]},
        "imsi": record["imsi"],
        "volume": volume,
        "start_timestamp": _usage_time(record["start_timestamp"]),
        "sim": {"iccid": sim["iccid"], "id": sim["id"]},
        "currency": {"symbol": currency["symbol"], "code": currency["code"], "id": currency["id"]},
        "end_timestamp": _usage_time(record["end_timestamp"]),
    }


def _usage_time(value: str) -> str:
    moment: datetime = parse_iso(value)
    return format_usage_time(moment)


_ENRICHERS = {"event": enrich_event, "usage": enrich_usage}


class _EnrichFn(beam.DoFn):
    """Documents to the main output, unresolvable records to ``dead_letters`` with
    the validated record (raw field names and values) as payload."""

    def __init__(self, kind: Kind) -> None:
        self._kind = kind
        self._enrich = _ENRICHERS[kind]

    def setup(self) -> None:
        self._documents = Metrics.counter(metrics.NAMESPACE, metrics.documents(self._kind))
        self._by_type = {
            type_id: Metrics.counter(metrics.NAMESPACE, metrics.documents_of_type(type_id))
            for type_id in EVENT_TYPES
        }

    def process(self, record: dict[str, Any], ref: ReferenceData | RefreshingSnapshot) -> Iterator[Any]:
        doc = self._document(record, current(ref))
        if isinstance(doc, pvalue.TaggedOutput):
            yield doc
            return
        self._documents.inc()
        if self._kind == "event":
            self._by_type[doc["event_type"]["id"]].inc()
        yield doc

    def _document(self, record: dict[str, Any], ref: ReferenceData) -> dict[str, Any] | pvalue.TaggedOutput:
        """The record's document, or its dead letter."""
        try:
            return self._enrich(record, ref)
        except RecordError as err:
            return self._dead(record, err.reason, err.detail)
        except Exception as err:  # noqa: BLE001 - any bug becomes a counted dead letter
            _LOG.exception("unexpected error enriching %s record %s", self._kind, record.get("id"))
            return self._dead(record, "internal_error", f"{type(err).__name__} while enriching")

    def _dead(self, record: dict[str, Any], reason: str, detail: str) -> pvalue.TaggedOutput:
        metrics.count_dead_letter(self._kind, reason)
        letter = dead_letter(self._kind, "enrich", reason, detail, orjson.dumps(record), record["id"])
        return pvalue.TaggedOutput(DEAD_LETTERS, letter)


class _EnrichChunkFn(_EnrichFn):
    """A chunk of ``(record, event time in ms)`` pairs -> one chunk of ``(document,
    event time in ms)`` pairs and a dead letter per unresolvable record, exactly
    as :class:`_EnrichFn` would have for each record."""

    def process(self, chunk: list[tuple[dict[str, Any], int]], ref: ReferenceData) -> Iterator[Any]:
        ref = current(ref)
        documents: list[tuple[dict[str, Any], int]] = []
        for record, event_ms in chunk:
            doc = self._document(record, ref)
            if isinstance(doc, pvalue.TaggedOutput):
                yield doc
            else:
                documents.append((doc, event_ms))
        if not documents:
            return
        self._documents.inc(len(documents))
        if self._kind == "event":
            for type_id, count in Counter(doc["event_type"]["id"] for doc, _ in documents).items():
                self._by_type[type_id].inc(count)
        yield documents


class Enrich(beam.PTransform):
    """Validated records of one kind + the reference snapshot -> documents and
    dead letters (``result[None]``, ``result.dead_letters``). With ``chunked``,
    records and documents travel in chunks of ``(value, event time in ms)``
    pairs (``transforms/chunks.py``)."""

    def __init__(self, kind: Kind, reference: pvalue.AsSideInput | RefreshingSnapshot,
                 chunked: bool = False) -> None:
        super().__init__()
        self._kind = kind
        self._reference = reference
        self._chunked = chunked

    def expand(self, records: beam.PCollection) -> pvalue.DoOutputsTuple:
        fn = (_EnrichChunkFn if self._chunked else _EnrichFn)(self._kind)
        return records | "Enrich" >> beam.ParDo(fn, self._reference).with_outputs(DEAD_LETTERS, main="documents")
