"""Fixed catalogues of the product guide and the shape of each event type.

The event types 0 to 15 and their descriptions are the guide's table in section 3;
they are part of the wire contract, so they are constants here as well as rows of
the ``event_type`` reference table (the table is what enrichment reads, so a
renamed description reaches customers without a release; these constants are what
the parser accepts and what the generator and tests build on).
"""

from __future__ import annotations

from types import MappingProxyType

EVENT_TYPES = MappingProxyType({
    0: "Generic",
    1: "Update location",
    2: "Update GPRS location",
    3: "Create PDP Context",
    4: "Update PDP Context",
    5: "Delete PDP Context",
    6: "User authentication failed",
    7: "Application authentication failed",
    8: "SIM activation",
    9: "SIM suspension",
    10: "SIM deletion",
    11: "Endpoint blocked",
    12: "Organisation blocked",
    13: "Support Access",
    14: "Multi-factor Authentication",
    15: "SMS API Callback",
})

EVENT_SOURCES = MappingProxyType({0: "Network", 1: "Policy Control", 2: "API"})
EVENT_SEVERITIES = MappingProxyType({0: "Info", 1: "Warn", 2: "Critical"})

#: Traffic types: (name, unit of the raw volumes).
TRAFFIC_TYPES = MappingProxyType({5: ("Data", "bytes"), 6: ("SMS", "messages")})

LOCATION_EVENT_TYPES = frozenset({1, 2})
PDP_EVENT_TYPES = frozenset({3, 4, 5})

_NETWORK = ("endpoint_id", "sim_id", "imsi", "operator_id")

#: Raw fields each event type must carry, beyond the fields every event has.
#: A record of that type without one of them is dead-lettered as
#: ``missing_field:<name>``: its document could not have the objects the guide
#: shows for that type. Optional references present on other types are still
#: resolved and rendered (a SIM activation may name its endpoint, for example).
EVENT_REQUIRED_FIELDS = MappingProxyType({
    0: (),
    1: _NETWORK,
    2: _NETWORK,
    3: (*_NETWORK, "pdp_context"),
    4: (*_NETWORK, "pdp_context"),
    5: (*_NETWORK, "pdp_context", "volume_rx_bytes", "volume_tx_bytes"),
    6: ("user_id",),
    7: (),
    8: ("sim_id",),
    9: ("sim_id",),
    10: ("sim_id",),
    11: ("endpoint_id",),
    12: (),
    13: ("user_id",),
    14: ("user_id",),
    15: ("endpoint_id", "sim_id"),
})
