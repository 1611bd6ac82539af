"""The product guide's JSON samples (section 5), corrected, and the raw records and
reference rows that must produce them.

The samples are printed from a PDF and are not all valid JSON. Corrections, each
the smallest that makes the sample a valid and self-consistent document:

- Masked digits (``X``) are replaced by digits: ids (``2013707XX``), IMEIs, ICCIDs,
  IMEISV and the last octets of IP addresses. The two samples that share the masked
  id ``2013707XX`` get different ids (201370711, 201370712).
- IMSIs: ``901405300000170XXXX`` has 19 characters, but an IMSI has at most 15
  digits (table 4: "15 digits numeric string"), so each sample gets its own
  15-digit IMSI with that prefix (..171, ..172, ..173). The 5.1.1 description
  names the same IMSI as its ``imsi`` object.
- 5.1.1: ``"import_date": ""2019-06-10...`` has a doubled quote; the ``detail``
  object is not closed (one ``}`` missing at the end).
- 5.1.2: the sample is split in two code blocks by a page break; the second block
  is the rest of ``pdp_context`` and ``detail.country``, joined back here. The
  organisation name ``" WBV Tester "`` and the IMSIs ``"...XXXX "`` carry stray
  spaces (the same organisation 80025 is ``"WBV Tester"`` in 5.1.1 and 5.2); they
  are removed. The ICCID ``8898822806670000XXXX`` has 20 characters (a doubled 8);
  an ICCID without check digit has 19 (table 4), so it starts ``8988228066...`` as
  the others do.
- 5.1.1 and 5.1.3: descriptions wrapped across lines by the PDF are joined with a
  single space.
- 5.2: the IMSI's trailing space is removed.

Kept as printed, because they are data rather than typos: the two operators named
Telekom (ids 3 and 4), ``gtp_version`` "4", the ``tunnel_created`` format without
milliseconds or offset, ``VLR=' 491700160000'`` inside a description, and the
organisation 839921 that is also named "WBV Tester".
"""

from __future__ import annotations

import json
from typing import Any

SAMPLE_5_1_1 = r"""
{
  "id": 201370711,
  "alert": false,
  "description": "New location received from VLR for IMSI='901405300000171', now attached to VLR=' 491700160000'.",
  "timestamp": "2019-07-17T16:28:00.000+0000",
  "event_type": {"id": 1, "description": "Update location"},
  "event_source": {"id": 0, "description": "Network"},
  "event_severity": {"id": 0, "description": "Info"},
  "organisation": {"id": 80025, "name": "WBV Tester"},
  "endpoint": {
    "id": 8638726,
    "name": "GPS Tracker",
    "ip_address": "100.122.44.249",
    "tags": null,
    "imei": "862789039891234"
  },
  "imsi": {"id": 205672, "imsi": "901405300000171", "import_date": "2019-06-10T14:12:01.000+0000"},
  "sim": {"id": 274887, "iccid": "8988228066700001711", "production_date": "2019-06-17T11:11:11.000+0000"},
  "detail": {
    "id": 3,
    "name": "Telekom",
    "country": {"id": 74, "name": "Germany", "country_code": "49", "mcc": "262", "iso_code": "de"},
    "tapcode": [{"id": 2, "tapcode": "DEUD2"}],
    "mnc": [{"id": 3, "mnc": "02"}]
  }
}
"""

SAMPLE_5_1_2 = r"""
{
  "id": 201370712,
  "alert": false,
  "description": "PDP Context deleted.",
  "timestamp": "2019-07-12T17:04:59.000+0000",
  "event_type": {"id": 5, "description": "Delete PDP Context"},
  "event_source": {"id": 0, "description": "Network"},
  "event_severity": {"id": 0, "description": "Info"},
  "organisation": {"id": 80025, "name": "WBV Tester"},
  "endpoint": {
    "id": 8427408,
    "name": "GPS Tracker",
    "ip_address": "100.122.44.249",
    "tags": null,
    "imei": "86278903989916123"
  },
  "imsi": {"id": 372566, "imsi": "901405300000172", "import_date": "2019-06-10T14:12:01.000+0000"},
  "sim": {"id": 319318, "iccid": "8988228066700001722", "production_date": "2019-06-17T11:11:11.000+0000"},
  "detail": {
    "id": 48,
    "name": "SFR Cegetel",
    "volume": {"rx": 0.012671, "tx": 0.01148, "total": 0.024151},
    "pdp_context": {
      "mcc": "310",
      "tunnel_created": "2019-12-11T05:49:29",
      "ggsn_control_plane_ip_address": "185.57.216.12",
      "pdp_context_id": "162094787",
      "imeisv": "8988303001234561234",
      "region": "eu-west-1",
      "lac": 40484,
      "sac": 61142,
      "rat_type": 1,
      "gtp_version": "4",
      "ue_ip_address": "100.105.197.34",
      "mnc": "260",
      "sgsn_data_plane_ip_address": "216.155.166.120",
      "ci": null,
      "apn": null,
      "tx_teid_control_plane": 2667756875,
      "rx_teid": 2720724,
      "rac": null,
      "imsi": "901405300000172",
      "sgsn_control_plane_ip_address": "216.155.165.120",
      "nsapi": 6,
      "breakout_ip": null,
      "ggsn_data_plane_ip_address": "185.57.216.13",
      "tx_teid_data_plane": 3095978
    },
    "country": {"id": 68, "name": "France", "country_code": "33", "mcc": "208", "iso_code": "fr"}
  }
}
"""

SAMPLE_5_1_3 = r"""
{
  "id": 201388127,
  "alert": false,
  "description": "Failed authentication request from 'user@beispiel.com', Reason: Invalid password from IP 9.9.9.9",
  "timestamp": "2019-05-10T05:42:00.000+0000",
  "event_type": {"id": 6, "description": "User authentication failed"},
  "event_source": {"id": 2, "description": "API"},
  "event_severity": {"id": 1, "description": "Warn"},
  "organisation": {"id": 839921, "name": "WBV Tester"},
  "user": {"id": 84993, "username": "user@company.com", "name": "John Do"}
}
"""

SAMPLE_5_2 = r"""
{
  "cost": 0.00558275,
  "id": 174321498,
  "operator": {"id": 4, "name": "Telekom", "country": {"id": 74, "name": "Germany"}},
  "organisation": {"id": 80025, "name": "WBV Tester"},
  "tariff": {"ratezone": {"id": 83, "name": "Europe_I"}, "id": 64, "name": "Global Pro I"},
  "traffic_type": {"id": 5, "name": "Data"},
  "endpoint": {"id": 8392037},
  "imsi": "901405300000173",
  "volume": {"rx": 0.0138, "tx": 0.008531, "total": 0.022331},
  "start_timestamp": "2019-07-17 08:21:11",
  "sim": {"iccid": "8988228066700001733", "id": 233746},
  "currency": {"symbol": "€", "code": "EUR", "id": 1},
  "end_timestamp": "2019-07-17 08:22:00"
}
"""

EXPECTED_EVENTS: dict[str, dict[str, Any]] = {
    "5.1.1": json.loads(SAMPLE_5_1_1),
    "5.1.2": json.loads(SAMPLE_5_1_2),
    "5.1.3": json.loads(SAMPLE_5_1_3),
}
EXPECTED_USAGE: dict[str, dict[str, Any]] = {"5.2": json.loads(SAMPLE_5_2)}

_NULL_PDP = dict.fromkeys(
    ("gtp_version", "ggsn_control_plane_ip_address", "ggsn_data_plane_ip_address",
     "sgsn_control_plane_ip_address", "sgsn_data_plane_ip_address", "region", "breakout_ip", "apn",
     "nsapi", "ue_ip_address", "imeisv", "mcc", "mnc", "lac", "sac", "rac", "ci", "rat_type",
     "tx_teid_control_plane", "tx_teid_data_plane", "rx_teid", "imsi")
)

#: Raw records as the network and platform emit them: ids, values, no names.
#: Timestamps use several offsets on purpose; the documents show UTC.
RAW_EVENTS: dict[str, dict[str, Any]] = {
    "5.1.1": {
        "id": 201370711,
        "timestamp": "2019-07-17T18:28:00.000+02:00",
        "event_type_id": 1,
        "event_source_id": 0,
        "event_severity_id": 0,
        "organisation_id": 80025,
        "alert": False,
        "description": "New location received from VLR for IMSI='901405300000171', "
        "now attached to VLR=' 491700160000'.",
        "endpoint_id": 8638726,
        "sim_id": 274887,
        "imsi": "901405300000171",
        "operator_id": 3,
    },
    "5.1.2": {
        "id": 201370712,
        "timestamp": "2019-07-12T17:04:59Z",
        "event_type_id": 5,
        "event_source_id": 0,
        "event_severity_id": 0,
        "organisation_id": 80025,
        "alert": False,
        "description": "PDP Context deleted.",
        "endpoint_id": 8427408,
        "sim_id": 319318,
        "imsi": "901405300000172",
        "operator_id": 48,
        "volume_rx_bytes": 12671,
        "volume_tx_bytes": 11480,
        "pdp_context": _NULL_PDP | {
            "pdp_context_id": "162094787",
            "tunnel_created": "2019-12-11T05:49:29.000Z",
            "gtp_version": "4",
            "ggsn_control_plane_ip_address": "185.57.216.12",
            "ggsn_data_plane_ip_address": "185.57.216.13",
            "sgsn_control_plane_ip_address": "216.155.165.120",
            "sgsn_data_plane_ip_address": "216.155.166.120",
            "region": "eu-west-1",
            "nsapi": 6,
            "ue_ip_address": "100.105.197.34",
            "imeisv": "8988303001234561234",
            "mcc": "310",
            "mnc": "260",
            "lac": 40484,
            "sac": 61142,
            "rat_type": 1,
            "tx_teid_control_plane": 2667756875,
            "tx_teid_data_plane": 3095978,
            "rx_teid": 2720724,
            "imsi": "901405300000172",
        },
    },
    "5.1.3": {
        "id": 201388127,
        "timestamp": "2019-05-10T05:42:00.000+0000",
        "event_type_id": 6,
        "event_source_id": 2,
        "event_severity_id": 1,
        "organisation_id": 839921,
        "alert": False,
        "description": "Failed authentication request from 'user@beispiel.com', "
        "Reason: Invalid password from IP 9.9.9.9",
        "user_id": 84993,
    },
}

RAW_USAGE: dict[str, dict[str, Any]] = {
    "5.2": {
        "id": 174321498,
        "imsi": "901405300000173",
        "sim_id": 233746,
        "endpoint_id": 8392037,
        "organisation_id": 80025,
        "operator_id": 4,
        "tariff_id": 64,
        "ratezone_id": 83,
        "traffic_type_id": 5,
        "start_timestamp": "2019-07-17T10:21:11+02:00",
        "end_timestamp": "2019-07-17T08:22:00.000Z",
        "volume_rx": 13800,
        "volume_tx": 8531,
        "cost": 0.00558275,
        "session_id": "162094790",
        "final": False,
    }
}


def _catalogue(entries: dict[int, str]) -> list[dict[str, Any]]:
    return [{"id": key, "description": value} for key, value in entries.items()]


def reference_tables() -> dict[str, list[dict[str, Any]]]:
    """Reference rows behind the samples, one list per entity."""
    from schemas.catalogues import EVENT_SEVERITIES, EVENT_SOURCES, EVENT_TYPES

    return {
        "organisation": [{"id": 80025, "name": "WBV Tester"}, {"id": 839921, "name": "WBV Tester"}],
        "sim": [
            {"id": 274887, "iccid": "8988228066700001711", "msisdn": None,
             "production_date": "2019-06-17T11:11:11.000Z", "organisation_id": 80025},
            {"id": 319318, "iccid": "8988228066700001722", "msisdn": None,
             "production_date": "2019-06-17T13:11:11+02:00", "organisation_id": 80025},
            {"id": 233746, "iccid": "8988228066700001733", "msisdn": "423663920123456",
             "production_date": "2019-06-17T11:11:11.000Z", "organisation_id": 80025},
        ],
        "imsi": [
            {"id": 205672, "imsi": "901405300000171", "import_date": "2019-06-10T14:12:01.000Z", "sim_id": 274887},
            {"id": 372566, "imsi": "901405300000172", "import_date": "2019-06-10T14:12:01.000Z", "sim_id": 319318},
            {"id": 372567, "imsi": "262019900000172", "import_date": "2019-06-11T09:00:00.000Z", "sim_id": 319318},
            {"id": 300001, "imsi": "901405300000173", "import_date": "2019-06-10T14:12:01.000Z", "sim_id": 233746},
        ],
        "endpoint": [
            {"id": 8638726, "name": "GPS Tracker", "ip_address": "100.122.44.249", "tags": None,
             "imei": "862789039891234", "organisation_id": 80025, "sim_id": 274887},
            {"id": 8427408, "name": "GPS Tracker", "ip_address": "100.122.44.249", "tags": None,
             "imei": "86278903989916123", "organisation_id": 80025, "sim_id": 319318},
            {"id": 8392037, "name": "Cold chain sensor", "ip_address": "100.122.44.250", "tags": "fleet,berlin",
             "imei": "862789039890001", "organisation_id": 80025, "sim_id": 233746},
        ],
        "country": [
            {"id": 74, "name": "Germany", "country_code": "49", "mcc": "262", "iso_code": "de"},
            {"id": 68, "name": "France", "country_code": "33", "mcc": "208", "iso_code": "fr"},
        ],
        "operator": [
            {"id": 3, "name": "Telekom", "country_id": 74},
            {"id": 4, "name": "Telekom", "country_id": 74},
            {"id": 48, "name": "SFR Cegetel", "country_id": 68},
        ],
        "operator_tapcode": [
            {"id": 2, "operator_id": 3, "tapcode": "DEUD2"},
            {"id": 7, "operator_id": 48, "tapcode": "FRAF2"},
        ],
        "operator_mnc": [
            {"id": 3, "operator_id": 3, "mnc": "02"},
            {"id": 9, "operator_id": 48, "mnc": "10"},
        ],
        "tariff": [{"id": 64, "name": "Global Pro I", "currency_id": 1}],
        "ratezone": [
            {"id": 83, "name": "Europe_I", "tariff_id": 64},
            {"id": 84, "name": "Europe_II", "tariff_id": 64},
        ],
        "traffic_type": [{"id": 5, "name": "Data", "unit": "bytes"}, {"id": 6, "name": "SMS", "unit": "messages"}],
        "currency": [{"id": 1, "code": "EUR", "symbol": "€"}, {"id": 2, "code": "USD", "symbol": "$"}],
        "user": [{"id": 84993, "username": "user@company.com", "name": "John Do", "organisation_id": 839921}],
        "event_type": _catalogue(dict(EVENT_TYPES)),
        "event_source": _catalogue(dict(EVENT_SOURCES)),
        "event_severity": _catalogue(dict(EVENT_SEVERITIES)),
    }
