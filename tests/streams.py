"""Stream configurations for tests: one builder per API type, pointing at the
local destinations, with credentials referenced by environment variables whose
values are the :data:`SECRETS` (tests search outputs and logs for them)."""

from __future__ import annotations

from typing import Any

from schemas.streams import StreamConfig, build_stream_config, stream_from_dict

#: env var -> value; set by the ``stream_secrets`` fixture. Distinctive strings so
#: a search for them cannot match anything by accident.
SECRETS = {
    "DATASTREAMER_TEST_AWS_KEY_ID": "AKIATESTKEYID7Q3X9Z",
    "DATASTREAMER_TEST_AWS_SECRET": "tEsTsEcReT/k9Zq+Wv2uXy8LmNoPq3RsTuVwXyZ01",
    "DATASTREAMER_TEST_REST_TOKEN": "Bearer rest-token-5f1e9c0b7a3d",
    "DATASTREAMER_TEST_DD_API_KEY": "ddapikey0123456789abcdef01234567",
    "DATASTREAMER_TEST_DD_APP_KEY": "ddappkey89abcdef0123456789abcdef01234567",
    "DATASTREAMER_TEST_SIGNING_SECRET": "whsec_9c2f4e1a7b3d5f6e8a0c2b4d6f8e0a1c",
}

REGION = "eu-central-1"
ORG = 80025
CREATED = "2026-10-01T00:00:00Z"


def _aws_refs() -> dict[str, Any]:
    return {"access_key_id": {"env": "DATASTREAMER_TEST_AWS_KEY_ID"},
            "secret_access_key": {"env": "DATASTREAMER_TEST_AWS_SECRET"}}


def rest_stream(stream_id: str, url: str, *, bulk: bool = False, stream_type: str = "both",
                organisation_id: int = ORG, **extra: Any) -> dict[str, Any]:
    return {
        "id": stream_id, "organisation_id": organisation_id, "stream_type": stream_type,
        "api_type": "rest_api_bulk" if bulk else "rest_api", "created_at": CREATED,
        "rest": {"url": url, "headers": {"X-Customer": "tests"}, "auth_header": "Authorization",
                 "auth_secret": {"env": "DATASTREAMER_TEST_REST_TOKEN"},
                 "signing_secret": {"env": "DATASTREAMER_TEST_SIGNING_SECRET"}},
        **extra,
    }


def kinesis_stream(stream_id: str, endpoint_url: str, stream_name: str, *, stream_type: str = "both",
                   organisation_id: int = ORG, **extra: Any) -> dict[str, Any]:
    return {
        "id": stream_id, "organisation_id": organisation_id, "stream_type": stream_type,
        "api_type": "aws_kinesis", "created_at": CREATED,
        "kinesis": {"region": REGION, "stream_name": stream_name, "endpoint_url": endpoint_url, **_aws_refs()},
        **extra,
    }


def s3_stream(stream_id: str, endpoint_url: str, bucket: str, *, prefix: str = "", stream_type: str = "both",
              organisation_id: int = ORG, **extra: Any) -> dict[str, Any]:
    return {
        "id": stream_id, "organisation_id": organisation_id, "stream_type": stream_type,
        "api_type": "aws_s3", "created_at": CREATED,
        "s3": {"region": REGION, "bucket": bucket, "prefix": prefix, "endpoint_url": endpoint_url, **_aws_refs()},
        **extra,
    }


def datadog_stream(stream_id: str, url: str, *, organisation_id: int = ORG, **extra: Any) -> dict[str, Any]:
    return {
        "id": stream_id, "organisation_id": organisation_id, "stream_type": "usage",
        "api_type": "datadog", "created_at": CREATED,
        "datadog": {"site": "datadoghq.eu", "url": url, "api_key": {"env": "DATASTREAMER_TEST_DD_API_KEY"},
                    "application_key": {"env": "DATASTREAMER_TEST_DD_APP_KEY"}},
        **extra,
    }


def config(*streams: dict[str, Any]) -> StreamConfig:
    return build_stream_config([stream_from_dict(s, i) for i, s in enumerate(streams)])
