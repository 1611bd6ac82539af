"""The look-ups of the guide: stream types, API types with the fields each
needs (section 6), and event types (section 3). The API serves them and the
"New Data Stream" form is built from them, so the two cannot disagree."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from schemas.catalogues import EVENT_TYPES
from schemas.streams import DESTINATION_OF

#: Section 2.2: usage data, event data, or both.
STREAM_TYPES = (("usage", "Usage Data"), ("events", "Event Data"), ("both", "Usage & Event Data"))


@dataclass(frozen=True)
class FormField:
    name: str  # the field of the destination block (the job's name)
    label: str  # the guide's label
    secret: bool = False
    required: bool = True


#: Section 6, field for field, in the guide's order: what the form shows per API type.
API_TYPES: tuple[tuple[str, str, tuple[FormField, ...]], ...] = (
    ("rest_api", "REST API", (FormField("url", "URL"),)),
    ("rest_api_bulk", "REST API (bulk)", (FormField("url", "URL"),)),
    ("aws_kinesis", "AWS Kinesis", (
        FormField("access_key_id", "AWS Access Key", secret=True),
        FormField("secret_access_key", "AWS Secret Key", secret=True),
        FormField("region", "AWS Region"),
        FormField("stream_name", "Stream Name"),
    )),
    ("aws_s3", "AWS S3", (
        FormField("access_key_id", "AWS Access Key", secret=True),
        FormField("secret_access_key", "AWS Secret Key", secret=True),
        FormField("bucket", "S3 Bucket"),
    )),
    ("datadog", "DataDog", (
        FormField("application_key", "Application Key", secret=True),
        FormField("api_key", "API Key", secret=True),
    )),
)

API_TYPE_NAMES = {api_type: name for api_type, name, _ in API_TYPES}
#: The form's fields of each API type.
FIELDS_OF = {api_type: fields for api_type, _, fields in API_TYPES}
STREAM_TYPE_NAMES = dict(STREAM_TYPES)


def stream_types() -> list[dict[str, str]]:
    return [{"id": key, "name": name} for key, name in STREAM_TYPES]


def api_types() -> list[dict[str, object]]:
    return [{"id": api_type, "name": name, "block": DESTINATION_OF[api_type],
             "stream_types": ["usage"] if api_type == "datadog" else [key for key, _ in STREAM_TYPES],
             "fields": [asdict(field) for field in fields]} for api_type, name, fields in API_TYPES]


def event_types() -> list[dict[str, object]]:
    return [{"id": key, "description": value} for key, value in sorted(EVENT_TYPES.items())]
