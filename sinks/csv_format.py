"""The S3 sink's CSV format: flattened documents under a fixed header.

The design brief: nested fields become ``object_field`` columns (``sim_iccid``,
``endpoint_name``, ``operator_country_name``, ...). The rules, chosen so that a
customer can load every file of a stream into one table:

- Columns are the constants :data:`EVENT_COLUMNS` and :data:`USAGE_COLUMNS`: every
  leaf any document built by ``transforms/enrich.py`` can have (all event types 0 to
  15, the 24 ``pdp_context`` keys, ``sim.msisdn``, ``user``, ``detail.volume``), in
  the key order of the guide's samples. The header never depends on which
  documents happen to be in a file, so files of one stream always line up.
- A leaf that is not a column raises :class:`UnknownFieldError`: it means enrich
  grew a field and this table was not updated, which is a bug, not bad input.
- Lists (``detail.tapcode``, ``detail.mnc``) are one cell holding their compact
  JSON text; ``null`` and absent fields are empty cells; booleans are ``true`` /
  ``false`` (as in the JSON documents); numbers are written as orjson writes them
  in the JSON documents, so a cell and the Kinesis/REST value are the same text.
- Text cells that begin with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
  return get a leading ``'`` (:data:`FORMULA_PREFIXES`): a spreadsheet opening the
  file would otherwise run them as formulas (CSV injection; OWASP's advice is this
  prefix). Documents carry text from devices and customers (endpoint names and
  tags, descriptions, APNs), so any of them may start that way. Only text is
  escaped: a number the job writes as a number (``-1.5``) stays a number. A stream
  whose consumer needs the raw text sets ``s3.escape_formulas: false``.
- Python's ``csv`` module with its default dialect (``,`` delimiter, ``"`` quoting
  only where needed) and ``\\r\\n`` line ends, RFC 4180's choice and what
  spreadsheet tools and most CSV readers expect. Files are UTF-8 without a BOM.

It also holds the documents' time, which both AWS sinks order by and the S3 sink
names files by (see :func:`sinks.ordering.document_time`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

#: The line end of every row, header included (RFC 4180).
LINE_TERMINATOR = "\r\n"
#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

_PDP_CONTEXT_COLUMNS = tuple(
    f"detail_pdp_context_{key}"
    for key in (
        "mcc", "tunnel_created", "ggsn_control_plane_ip_address", "pdp_context_id", "imeisv", "region",
        "lac", "sac", "rat_type", "gtp_version", "ue_ip_address", "mnc", "sgsn_data_plane_ip_address",
        "ci", "apn", "tx_teid_control_plane", "rx_teid", "rac", "imsi", "sgsn_control_plane_ip_address",
        "nsapi", "breakout_ip", "ggsn_data_plane_ip_address", "tx_teid_data_plane",
    )
)

#: Event files' header: samples 5.1.1 to 5.1.3 in their key order, ``sim_msisdn``
#: where table 3.5 puts it, ``detail`` as in 5.1.2 with 5.1.1's lists last.
EVENT_COLUMNS: tuple[str, ...] = (
    "id", "alert", "description", "timestamp",
    "event_type_id", "event_type_description",
    "event_source_id", "event_source_description",
    "event_severity_id", "event_severity_description",
    "organisation_id", "organisation_name",
    "endpoint_id", "endpoint_name", "endpoint_ip_address", "endpoint_tags", "endpoint_imei",
    "imsi_id", "imsi_imsi", "imsi_import_date",
    "sim_id", "sim_iccid", "sim_msisdn", "sim_production_date",
    "user_id", "user_username", "user_name",
    "detail_id", "detail_name",
    "detail_volume_rx", "detail_volume_tx", "detail_volume_total",
    *_PDP_CONTEXT_COLUMNS,
    "detail_country_id", "detail_country_name", "detail_country_country_code", "detail_country_mcc",
    "detail_country_iso_code",
    "detail_tapcode", "detail_mnc",
)

#: Usage (CDR) files' header: sample 5.2 in its key order.
USAGE_COLUMNS: tuple[str, ...] = (
    "cost", "id",
    "operator_id", "operator_name", "operator_country_id", "operator_country_name",
    "organisation_id", "organisation_name",
    "tariff_ratezone_id", "tariff_ratezone_name", "tariff_id", "tariff_name",
    "traffic_type_id", "traffic_type_name",
    "endpoint_id", "imsi",
    "volume_rx", "volume_tx", "volume_total",
    "start_timestamp",
    "sim_iccid", "sim_id",
    "currency_symbol", "currency_code", "currency_id",
    "end_timestamp",
)

COLUMNS: Mapping[str, tuple[str, ...]] = {"event": EVENT_COLUMNS, "usage": USAGE_COLUMNS}
_COLUMN_SETS = {kind: frozenset(columns) for kind, columns in COLUMNS.items()}

#: The field each kind is ordered and filed by: when the event happened, when
#: the usage record's session slice ended (both UTC, as the guide prints them).


class UnknownFieldError(ValueError):
    """A document has a leaf that is not a column of its kind: a bug (enrich and
    this table disagree). The message names the fields, never their values."""


def leaves(document: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Leaf values of ``document`` keyed by column name (``object_field``); lists
    are leaves."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            nested = leaves(value, f"{name}_")
            clash = flat.keys() & nested.keys()
            if clash:
                raise UnknownFieldError(f"fields flatten to the same column: {sorted(clash)}")
            flat.update(nested)
        else:
            if name in flat:
                raise UnknownFieldError(f"fields flatten to the same column: [{name!r}]")
            flat[name] = value
    return flat


def cell(value: Any, escape_formulas: bool = True) -> str:
    """The text of one CSV cell; with ``escape_formulas``, text that a
    spreadsheet would run as a formula gets a leading ``'`` (module docstring)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if escape_formulas and value.startswith(FORMULA_PREFIXES):
            return f"'{value}"
        return value
    return orjson.dumps(value).decode("utf-8")  # numbers and lists: their JSON text


def flatten(kind: str, document: Mapping[str, Any], escape_formulas: bool = True) -> dict[str, str]:
    """Every column of ``kind``, in order, with its cell text for ``document``."""
    flat = leaves(document)
    unknown = flat.keys() - _COLUMN_SETS[kind]
    if unknown:
        raise UnknownFieldError(f"{kind} document has fields that are not CSV columns: {sorted(unknown)}")
    return {column: cell(flat.get(column), escape_formulas) for column in COLUMNS[kind]}


def to_row(kind: str, document: Mapping[str, Any], escape_formulas: bool = True) -> list[str]:
    """One CSV row of ``document`` in the column order of ``kind``."""
    return list(flatten(kind, document, escape_formulas).values())


def render_csv(kind: str, rows: Iterable[Sequence[str]]) -> bytes:
    """A whole file: the header of ``kind``, then ``rows`` (from :func:`to_row`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=LINE_TERMINATOR)
    writer.writerow(COLUMNS[kind])
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")
