"""Data stream configuration: the typed model, its validation and its loader.

A stream says what a customer receives (stream type, filters) and where (API type
and the destination settings of that type). The file format is
``schemas/avro/data_stream.avsc`` written as JSON or YAML: ``{"streams": [...]}``
or a bare list. Every problem is reported with the stream id and the field, at
load, so a bad config never reaches a worker.

Credentials are :class:`SecretRef` (an environment variable or a file), never
values: the config, the pipeline graph, logs and outputs only ever hold the
reference, and sinks resolve it on the worker (``sinks/secrets.py``).

The file is untrusted input (customers' settings, edited by hand or by a portal),
so whatever it holds the loader raises :class:`StreamConfigError` and nothing
else (the job exits 2 with its message). Limits: at most
:data:`MAX_CONFIG_BYTES`; nesting at most :data:`MAX_NESTING` levels; no YAML
anchors or aliases (a few lines of aliases expand to gigabytes: the "billion
laughs"); keys are exactly the fields of ``data_stream.avsc`` (an unknown key is a
typo, reported with the closest field name); patterns match whole values (a
``$`` would let a trailing newline through); messages quote at most a short
prefix of a bad value (:func:`schemas.records.quote`).
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from schemas import raw_schema
from schemas.catalogues import EVENT_TYPES
from schemas.fields import INT64
from schemas.records import nesting_depth, quote
from schemas.timestamps import parse_iso

STREAM_TYPES = ("usage", "events", "both")
API_TYPES = ("rest_api", "rest_api_bulk", "aws_kinesis", "aws_s3", "datadog")
STATES = ("active", "paused", "deactivated")

#: Which destination block each API type needs.
DESTINATION_OF = MappingProxyType({
    "rest_api": "rest",
    "rest_api_bulk": "rest",
    "aws_kinesis": "kinesis",
    "aws_s3": "s3",
    "datadog": "datadog",
})

#: emnify's ranges, and our defaults (the design brief's "Facts from the field", docs/delivery.md).
BULK_SIZE_RANGE, DEFAULT_BULK_SIZE = (1, 10_000), 3_000
ROTATION_RANGE, DEFAULT_ROTATION_SECONDS = (10, 900), 300
FLUSH_SIZE_RANGE, DEFAULT_FLUSH_SIZE = (10, 100_000), 10_000
METRICS_INTERVAL_RANGE, DEFAULT_METRICS_INTERVAL_SECONDS = (10, 3_600), 60

#: Header names that carry credentials; they belong in ``auth_header`` +
#: ``auth_secret`` so the value stays out of the config.
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "dd-api-key",
                                 "dd-application-key", "cookie"})
# Matched with fullmatch: ``$`` also matches before a trailing newline.
_STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
_AWS_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
_FERNET_TOKEN = re.compile(r"[A-Za-z0-9_-]+=*")
_DATADOG_SITE = re.compile(r"([a-z0-9-]+\.)*datadoghq\.(com|eu)|ddog-gov\.com")
#: C0 and C1 control characters and DEL: never part of a URL, a header value, a
#: bucket or a key prefix, and a way to smuggle a header or a log line in.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: A stream configuration file larger than this is not one (thousands of streams
#: take a few MB).
MAX_CONFIG_BYTES = 16 * 1024 * 1024
#: The deepest nesting of containers the format has is 5 (``{"streams": ...}``, the
#: list, a stream, ``rest``, ``auth_secret``); anything near this limit is not a
#: stream configuration.
MAX_NESTING = 32
MAX_URL_LENGTH = 2048
#: Defaults of ``--max_streams`` and ``--max_streams_per_organisation``: what a
#: worker holds comfortably (docs/configuration.md, "Stream limits", has the
#: measurements).
DEFAULT_MAX_STREAMS = 10_000
DEFAULT_MAX_STREAMS_PER_ORGANISATION = 100


class StreamConfigError(ValueError):
    """An invalid stream configuration; the message names the stream and field.

    ``field`` is the dotted path of the field at fault (``rest.url``) when one
    is (the portal answers 422 with it)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class StreamLimits:
    """How many streams a configuration may hold, in all and per organisation
    (``--max_streams``, ``--max_streams_per_organisation``).

    Every worker holds the whole configuration (a side input, loaded again at
    every refresh), and every document fans out to each stream of its
    organisation: a routed element, a serialisation and a request per stream. So
    the total bounds a worker's memory and load time, and the per-organisation
    count bounds what one document costs. Checked wherever a configuration is
    loaded, on the submitting machine and on every worker (the file may change
    after the job started), before the streams are built."""

    max_streams: int = DEFAULT_MAX_STREAMS
    max_streams_per_organisation: int = DEFAULT_MAX_STREAMS_PER_ORGANISATION


DEFAULT_LIMITS = StreamLimits()


@dataclass(frozen=True)
class SecretRef:
    """Where a credential is: an environment variable, a file, or sealed (the
    value encrypted with the deployment's sealing key, ``schemas/sealing.py``:
    what the portal stores for a credential a customer typed)."""

    env: str | None = None
    file: str | None = None
    sealed: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """Where the secret lives, for messages (at most 80 characters of the
        name); never the value."""
        if self.sealed is not None:
            return "sealed value"
        name = (self.env if self.env else self.file) or ""
        shown = name[:80] + ("..." if len(name) > 80 else "")
        return f"environment variable {shown}" if self.env else f"file {shown}"


#: The default ``--secret_env_prefix``: secrets come from variables named for
#: this job, never from whatever else the worker's environment holds.
DEFAULT_SECRET_ENV_PREFIX = "DATASTREAMER_"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


@dataclass(frozen=True)
class SecretPolicy:
    """Where stream secrets may come from (``--secret_env_prefix``,
    ``--secrets_dir``). A stream config is written by or for a customer; without
    limits a reference could name any variable of the worker (its own cloud
    credentials) or any readable file (a service account key) and have it sent
    to the customer's endpoint as a header. Checked at load and again by the
    worker's :class:`~sinks.secrets.SecretResolver`."""

    env_prefix: str = DEFAULT_SECRET_ENV_PREFIX
    #: None: file references are refused.
    secrets_dir: str | None = None

    def refusal(self, ref: SecretRef) -> str | None:
        """Why ``ref`` may not be read, or None; names at most a bounded prefix of the reference."""
        if ref.sealed is not None:
            return None  # ciphertext: only the deployment's sealing key opens it
        if ref.env is not None:
            if not _ENV_NAME.match(ref.env):
                return f"environment variable {quote(ref.env)} is not a valid variable name"
            if not self.env_prefix or not ref.env.startswith(self.env_prefix) or ref.env == self.env_prefix:
                return (f"environment variable {quote(ref.env)} does not start with the allowed prefix "
                        f"{self.env_prefix!r} (--secret_env_prefix)")
            return None
        try:
            self.file_path(ref)
        except ValueError as err:
            return str(err)
        return None

    def file_path(self, ref: SecretRef) -> str:
        """The real path of a file reference, inside :attr:`secrets_dir` after
        every symbolic link is followed; raises ValueError otherwise. A relative
        reference is relative to the directory."""
        name = ref.file or ""
        if self.secrets_dir is None:
            raise ValueError(f"file {quote(name)}: file secrets are not allowed (no --secrets_dir is configured)")
        if not name or "\x00" in name:
            raise ValueError("file secret: an empty or invalid path")
        if ".." in name.replace("\\", "/").split("/"):
            raise ValueError(f"file {quote(name)}: '..' is not allowed in a secret path")
        root = os.path.realpath(self.secrets_dir)
        path = os.path.realpath(os.path.join(root, name))
        if os.path.commonpath([root, path]) != root or path == root:
            raise ValueError(f"file {quote(name)} is not inside the secrets directory (--secrets_dir)")
        return path


@dataclass(frozen=True)
class Filters:
    event_type_ids: frozenset[int] | None = None
    alert: bool | None = None


@dataclass(frozen=True)
class RestDestination:
    url: str
    signing_secret: SecretRef
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    auth_header: str | None = None
    auth_secret: SecretRef | None = None


@dataclass(frozen=True)
class AwsDestination:
    """Kinesis (``target`` is the stream name) or S3 (``target`` is the bucket).

    ``escape_formulas`` (S3 only): CSV text cells that a spreadsheet would run as a
    formula get a leading ``'`` (``sinks/csv_format.py``)."""

    region: str
    target: str
    access_key_id: SecretRef
    secret_access_key: SecretRef
    endpoint_url: str | None = None
    prefix: str = ""
    escape_formulas: bool = True


@dataclass(frozen=True)
class DataDogDestination:
    api_key: SecretRef
    site: str = "datadoghq.com"
    application_key: SecretRef | None = None
    url: str | None = None

    @property
    def base_url(self) -> str:
        return (self.url or f"https://api.{self.site}").rstrip("/")


@dataclass(frozen=True)
class Batching:
    bulk_size: int = DEFAULT_BULK_SIZE
    rotation_seconds: int = DEFAULT_ROTATION_SECONDS
    flush_size: int = DEFAULT_FLUSH_SIZE
    metrics_interval_seconds: int = DEFAULT_METRICS_INTERVAL_SECONDS


@dataclass(frozen=True)
class DataStream:
    id: str
    organisation_id: int
    stream_type: str
    api_type: str
    created_at: str
    destination: RestDestination | AwsDestination | DataDogDestination
    state: str = "active"
    historic_data: bool = False
    filters: Filters = Filters()
    batching: Batching = Batching()
    #: The last activation after a pause or restart after an error (the portal's):
    #: the recovery step delivers the stream's kept backlog first (``sinks/recovery.py``).
    resumed_at: str | None = None

    @property
    def active(self) -> bool:
        return self.state == "active"

    def wants(self, kind: str, document: Mapping[str, Any]) -> bool:
        """Whether a document of ``kind`` ("event" or "usage") matches this
        stream's type and filters (state is not considered here)."""
        if kind == "usage":
            return self.stream_type in ("usage", "both")
        if self.stream_type == "usage":
            return False
        ids = self.filters.event_type_ids
        if ids is not None and document["event_type"]["id"] not in ids:
            return False
        return self.filters.alert is None or document["alert"] is self.filters.alert

    def describe_destination(self) -> str:
        """The destination without credentials, for status tables and logs."""
        dest = self.destination
        if isinstance(dest, RestDestination):
            return f"{dest.method} {dest.url}"
        if isinstance(dest, AwsDestination):
            if self.api_type == "aws_s3":
                return f"s3://{dest.target}/{dest.prefix}"
            return f"kinesis://{dest.region}/{dest.target}"
        return f"datadog {dest.base_url}"


# --------------------------------------------------------------------------- parsing


class _Reader:
    """Typed access to one mapping of the config, with errors naming the stream
    and the dotted field path."""

    def __init__(self, stream_id: str, data: Mapping[str, Any], path: str = "") -> None:
        if not isinstance(data, Mapping):
            raise StreamConfigError(f"stream {stream_id!r}: {path.rstrip('.') or 'entry'} must be an object")
        self.stream_id, self.data, self.path = stream_id, data, path

    def error(self, name: str, problem: str) -> StreamConfigError:
        return StreamConfigError(f"stream {self.stream_id!r}: {self.path}{name} {problem}", field=f"{self.path}{name}")

    def check_keys(self, record: str) -> None:
        """Refuse keys that are not fields of the Avro record ``record`` of
        ``data_stream.avsc``, naming the closest field: a misspelt optional
        field would otherwise silently take its default."""
        allowed = _record_fields()[record]
        for key in self.data:
            if not isinstance(key, str):
                raise StreamConfigError(f"stream {self.stream_id!r}: {self.path.rstrip('.') or 'stream'} has a key "
                                        f"that is not a string: {quote(key)}")
            if key not in allowed:
                close = difflib.get_close_matches(key[:64], sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                name = key if _STREAM_ID.fullmatch(key) and len(key) <= 64 else quote(key)
                raise self.error(name, f"is not a known field{hint}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ..., choices: tuple = ()) -> Any:
        value = self.data.get(name)
        if value is None:
            if default is ...:
                raise self.error(name, "is required")
            return default
        if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else ()):
            raise self.error(name, f"must be {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.error(name, f"must be {_kind_name(kind)}, got {type(value).__name__}")
        if choices and value not in choices:
            raise self.error(name, f"must be one of {', '.join(map(str, choices))}, got {quote(value)}")
        return value

    def int_in(self, name: str, bounds: tuple[int, int], default: int) -> int:
        value = self.get(name, int, default)
        if not bounds[0] <= value <= bounds[1]:
            shown = f"{value:,}" if value.bit_length() <= 64 else quote(value)
            raise self.error(name, f"must be between {bounds[0]:,} and {bounds[1]:,}, got {shown}")
        return value

    def text(self, name: str, default: Any = ..., max_length: int = 1024) -> Any:
        """A string field without control characters, at most ``max_length`` long."""
        value = self.get(name, str, default)
        if isinstance(value, str):
            if len(value) > max_length:
                raise self.error(name, f"must be at most {max_length:,} characters, got {len(value):,}")
            if _CONTROL.search(value):
                raise self.error(name, f"must not contain control characters: {quote(value)}")
        return value

    def nested(self, name: str) -> _Reader | None:
        value = self.data.get(name)
        return None if value is None else _Reader(self.stream_id, value, f"{self.path}{name}.")

    def secret(self, name: str, required: bool = True) -> SecretRef | None:
        reader = self.nested(name)
        if reader is None:
            if required:
                raise self.error(name, "is required (an object with 'env' or 'file')")
            return None
        unknown = set(reader.data) - {"env", "file", "sealed"}
        if unknown:
            # A literal key here would put the secret itself into the config.
            shown = ", ".join(sorted(quote(key, 32) for key in unknown)[:5])
            raise self.error(name, f"must only name where the secret is ('env', 'file' or 'sealed'), not [{shown}]")
        env, path = reader.text("env", None), reader.text("file", None)
        sealed = reader.get("sealed", str, None)
        if sealed is not None and (len(sealed) > 8192 or not _FERNET_TOKEN.fullmatch(sealed)):
            raise self.error(name, "sealed must be a token of the sealing key (url-safe base64)")
        if sum(value is not None for value in (env, path, sealed)) != 1:
            raise self.error(name, "must have exactly one of 'env', 'file' or 'sealed'")
        return SecretRef(env=env, file=path, sealed=sealed)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", str: "a string", bool: "a boolean", list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _check_url(reader: _Reader, name: str, url: str) -> str:
    """An http(s) URL with a host, a port that exists, no credentials, no
    whitespace or control characters (``urlsplit`` silently drops tabs and
    newlines, so what is checked would not be what is sent)."""
    if len(url) > MAX_URL_LENGTH:
        raise reader.error(name, f"must be at most {MAX_URL_LENGTH:,} characters, got {len(url):,}")
    if _CONTROL.search(url) or any(ch.isspace() for ch in url):
        raise reader.error(name, f"must not contain whitespace or control characters: {quote(url)}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port beyond 65535 or not a number
    except ValueError as err:
        raise reader.error(name, f"is not a valid URL ({err}): {quote(url)}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise reader.error(name, f"must be an http(s) URL, got {quote(url)}")
    if parts.username or parts.password:
        raise reader.error(name, "must not carry credentials; use auth_header and auth_secret")
    return url


def _sendable_header_value(value: str) -> bool:
    """What http.client and requests send as a header value: Latin-1, not
    starting with whitespace. Refused here, a value fails the config at load
    instead of failing every request of its stream (the sinks check secrets, read
    only on the worker, the same way: ``sinks/wire.py``)."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return not value[:1].isspace()


def _rest(reader: _Reader) -> RestDestination:
    reader.check_keys("RestDestination")
    url = _check_url(reader, "url", reader.get("url", str))
    headers_value = reader.get("headers", dict, {})
    headers: dict[str, str] = {}
    for key, value in headers_value.items():
        if not isinstance(key, str) or not _HEADER_NAME.fullmatch(key) or not isinstance(value, str):
            raise reader.error("headers", f"has an invalid header {quote(key)}")
        if _CONTROL.search(value) or len(value) > 8192:
            raise reader.error("headers", f"has an invalid value for header {key!r} (control characters or "
                                          "longer than 8,192 characters)")
        if not _sendable_header_value(value):
            raise reader.error("headers", f"has a value for header {key!r} that HTTP cannot carry (characters "
                                          "outside Latin-1, or leading whitespace)")
        if key.lower() in _CREDENTIAL_HEADERS:
            raise reader.error(
                "headers", f"must not carry the credential header {quote(key)}; use auth_header and auth_secret"
            )
        headers[key] = value
    auth_header = reader.get("auth_header", str, None)
    auth_secret = reader.secret("auth_secret", required=False)
    if (auth_header is None) != (auth_secret is None):
        raise reader.error("auth_header", "and auth_secret go together")
    if auth_header is not None and not _HEADER_NAME.fullmatch(auth_header):
        raise reader.error("auth_header", f"is not a valid header name: {quote(auth_header)}")
    return RestDestination(
        url=url,
        signing_secret=reader.secret("signing_secret"),
        method=reader.get("method", str, "POST", choices=("POST", "PUT")),
        headers=headers,
        auth_header=auth_header,
        auth_secret=auth_secret,
    )


def _aws(reader: _Reader, target_field: str) -> AwsDestination:
    s3 = target_field == "bucket"
    reader.check_keys("S3Destination" if s3 else "KinesisDestination")
    region = reader.get("region", str)
    if not _AWS_REGION.fullmatch(region):
        raise reader.error("region", f"is not an AWS region: {quote(region)}")
    endpoint = reader.get("endpoint_url", str, None)
    if endpoint is not None:
        _check_url(reader, "endpoint_url", endpoint)
    target = reader.text(target_field, max_length=256)
    if not target.strip():
        raise reader.error(target_field, "must not be empty")
    prefix = reader.text("prefix", "") if s3 else ""
    if prefix.startswith("/"):
        raise reader.error("prefix", "must not start with '/'")
    if any(segment in (".", "..") for segment in prefix.split("/")):
        # A key with a '..' segment means another folder to every tool that
        # normalises paths (and to a local or proxy store, another file).
        raise reader.error("prefix", f"must not have '.' or '..' segments: {quote(prefix)}")
    return AwsDestination(
        region=region,
        target=target,
        access_key_id=reader.secret("access_key_id"),
        secret_access_key=reader.secret("secret_access_key"),
        endpoint_url=endpoint,
        prefix=prefix,
        escape_formulas=reader.get("escape_formulas", bool, True) if s3 else True,
    )


def _datadog(reader: _Reader) -> DataDogDestination:
    reader.check_keys("DataDogDestination")
    site = reader.get("site", str, "datadoghq.com")
    if len(site) > 253 or not _DATADOG_SITE.fullmatch(site):
        raise reader.error("site", f"is not a DataDog site: {quote(site)}")
    url = reader.get("url", str, None)
    if url is not None:
        _check_url(reader, "url", url)
    return DataDogDestination(
        api_key=reader.secret("api_key"),
        site=site,
        application_key=reader.secret("application_key", required=False),
        url=url,
    )


def _filters(reader: _Reader | None) -> Filters:
    if reader is None:
        return Filters()
    reader.check_keys("Filters")
    ids = reader.get("event_type_ids", list, None)
    if ids is not None:
        if not ids or any(type(i) is not int or i not in EVENT_TYPES for i in ids):
            raise reader.error("event_type_ids", "must be a non-empty list of event type ids 0 to 15")
        ids = frozenset(ids)
    return Filters(event_type_ids=ids, alert=reader.get("alert", bool, None))


def _batching(reader: _Reader | None) -> Batching:
    if reader is None:
        return Batching()
    reader.check_keys("Batching")
    return Batching(
        bulk_size=reader.int_in("bulk_size", BULK_SIZE_RANGE, DEFAULT_BULK_SIZE),
        rotation_seconds=reader.int_in("rotation_seconds", ROTATION_RANGE, DEFAULT_ROTATION_SECONDS),
        flush_size=reader.int_in("flush_size", FLUSH_SIZE_RANGE, DEFAULT_FLUSH_SIZE),
        metrics_interval_seconds=reader.int_in(
            "metrics_interval_seconds", METRICS_INTERVAL_RANGE, DEFAULT_METRICS_INTERVAL_SECONDS
        ),
    )


def _timestamp(reader: _Reader, name: str, default: Any = ...) -> Any:
    value = reader.get(name, str, default)
    if value is None:
        return None
    try:
        parse_iso(value)
    except ValueError:
        raise reader.error(name, f"must be ISO 8601 with an offset, from 1970 to 9998, got {quote(value)}") from None
    return value


def stream_from_dict(data: Mapping[str, Any], position: int = 0) -> DataStream:
    """Build and check one stream; :class:`StreamConfigError` names what is wrong."""
    if not isinstance(data, Mapping):
        raise StreamConfigError(f"stream #{position + 1}: must be an object")
    stream_id = data.get("id")
    if not isinstance(stream_id, str) or not _STREAM_ID.fullmatch(stream_id):
        raise StreamConfigError(
            f"stream #{position + 1}: id must be 1 to 128 letters, digits, '-', '_' or '.', got {quote(stream_id)}",
            field="id",
        )
    reader = _Reader(stream_id, data)
    reader.check_keys("DataStream")
    api_type = reader.get("api_type", str, choices=API_TYPES)
    stream_type = reader.get("stream_type", str, choices=STREAM_TYPES)
    if api_type == "datadog" and stream_type != "usage":
        raise reader.error("stream_type", "must be usage for datadog streams (they carry usage metrics)")
    created_at = _timestamp(reader, "created_at")
    block = DESTINATION_OF[api_type]
    for other in set(DESTINATION_OF.values()) - {block}:
        if data.get(other) is not None:
            raise reader.error(other, f"does not apply to api_type {api_type}")
    dest_reader = reader.nested(block)
    if dest_reader is None:
        raise reader.error(block, f"is required for api_type {api_type}")
    if block == "rest":
        destination: RestDestination | AwsDestination | DataDogDestination = _rest(dest_reader)
    elif block == "kinesis":
        destination = _aws(dest_reader, "stream_name")
    elif block == "s3":
        destination = _aws(dest_reader, "bucket")
    else:
        destination = _datadog(dest_reader)
    organisation_id = reader.get("organisation_id", int)
    if not INT64[0] <= organisation_id <= INT64[1]:
        raise reader.error("organisation_id", f"is out of the long range: {quote(organisation_id)}")
    return DataStream(
        id=stream_id,
        organisation_id=organisation_id,
        stream_type=stream_type,
        api_type=api_type,
        created_at=created_at,
        destination=destination,
        state=reader.get("state", str, "active", choices=STATES),
        historic_data=reader.get("historic_data", bool, False),
        resumed_at=_timestamp(reader, "resumed_at", None),
        filters=_filters(reader.nested("filters")),
        batching=_batching(reader.nested("batching")),
    )


@dataclass(frozen=True)
class StreamConfig:
    """All configured streams, indexed for routing."""

    streams: Mapping[str, DataStream]
    by_organisation: Mapping[int, tuple[DataStream, ...]]

    def __getitem__(self, stream_id: str) -> DataStream:
        return self.streams[stream_id]

    def __len__(self) -> int:
        return len(self.streams)


def build_stream_config(streams: list[DataStream]) -> StreamConfig:
    by_id: dict[str, DataStream] = {}
    s3_targets: dict[tuple[str | None, str, str], str] = {}
    for stream in streams:
        if stream.id in by_id:
            raise StreamConfigError(f"stream {stream.id!r}: id is used by more than one stream")
        by_id[stream.id] = stream
        if stream.api_type == "aws_s3":
            dest = stream.destination
            target = (dest.endpoint_url, dest.target, dest.prefix)
            if target in s3_targets:
                # Both would write events_<window>.csv to the same keys and overwrite each other.
                raise StreamConfigError(
                    f"stream {stream.id!r}: s3.bucket and s3.prefix are also used by stream {s3_targets[target]!r}"
                )
            s3_targets[target] = stream.id
    grouped: dict[int, list[DataStream]] = {}
    for stream in sorted(by_id.values(), key=lambda s: s.id):
        grouped.setdefault(stream.organisation_id, []).append(stream)
    # Plain dicts: the config travels to workers pickled, and mappingproxy is not picklable.
    return StreamConfig(streams=by_id, by_organisation={org: tuple(items) for org, items in grouped.items()})


_SECRET_FIELDS = {
    "rest": (("signing_secret", "signing_secret"), ("auth_secret", "auth_secret")),
    "kinesis": (("access_key_id", "access_key_id"), ("secret_access_key", "secret_access_key")),
    "s3": (("access_key_id", "access_key_id"), ("secret_access_key", "secret_access_key")),
    "datadog": (("api_key", "api_key"), ("application_key", "application_key")),
}


def check_secret_refs(config: StreamConfig, policy: SecretPolicy) -> None:
    """Raise :class:`StreamConfigError`, naming the stream and field, for the
    first secret reference ``policy`` does not allow (a job refuses such a
    config at start; workers check again when they read)."""
    for stream in config.streams.values():
        block = DESTINATION_OF[stream.api_type]
        for name, attribute in _SECRET_FIELDS[block]:
            ref = getattr(stream.destination, attribute, None)
            if ref is None:
                continue
            reason = policy.refusal(ref)
            if reason is not None:
                raise StreamConfigError(f"stream {stream.id!r}: {block}.{name} {reason}", field=f"{block}.{name}")


class _TooManyStreamsError(Exception):
    """Raised by :class:`_BoundedLoader` past ``max_items`` streams."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader without anchors and aliases, with nesting
    bounded by :data:`MAX_NESTING` and the list of streams by ``max_items``.

    Aliases are how a few hundred bytes of YAML expand to gigabytes (and any
    message that shows the value expands them too); a stream configuration has
    no use for them. The nesting bound stops a deep document before PyYAML's
    recursive composer would hit Python's recursion limit."""

    def __init__(self, stream: str, max_items: int | None = None) -> None:
        super().__init__(stream)
        self._depth = 0
        self._max_items = max_items

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed", event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "YAML anchors (&name) are not allowed", event.start_mark)
        if (self._max_items is not None and self._depth <= 2 and isinstance(parent, yaml.SequenceNode)
                and index >= self._max_items):
            # The list of streams (the document, or its "streams"), one entry
            # too many: stop before composing the rest, which pure-Python YAML
            # does at some 15 KB and 1 ms a stream.
            raise _TooManyStreamsError()
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_NESTING} levels deep",
                                                  event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _decode(text: str, source: str, limits: StreamLimits) -> Any:
    """The JSON or YAML document of ``text``, within the module's limits."""
    if len(text) > MAX_CONFIG_BYTES:
        raise StreamConfigError(f"{source}: larger than the {MAX_CONFIG_BYTES:,} bytes a stream configuration "
                                "may have")
    try:
        if text.lstrip().startswith(("{", "[")):
            data = json.loads(text)
        else:
            # yaml.load with a SafeLoader subclass: safe_load, stricter still.
            data = yaml.load(text, Loader=functools.partial(_BoundedLoader, max_items=limits.max_streams))
    except _TooManyStreamsError:
        raise _too_many(source, limits) from None
    except RecursionError:
        raise StreamConfigError(f"{source}: nested more than {MAX_NESTING} levels deep") from None
    except (ValueError, yaml.YAMLError) as err:
        raise StreamConfigError(f"{source}: not valid JSON or YAML: {quote(str(err), 300)}") from None
    if nesting_depth(data, MAX_NESTING) > MAX_NESTING:
        raise StreamConfigError(f"{source}: nested more than {MAX_NESTING} levels deep")
    return data


def _too_many(source: str, limits: StreamLimits, count: int | None = None) -> StreamConfigError:
    held = f"{count:,} entries, more than" if count is not None else "more than"
    return StreamConfigError(f"{source}: streams has {held} the {limits.max_streams:,} streams a configuration "
                             "may hold (--max_streams)")


def parse_stream_config(text: str, source: str = "streams config",
                        limits: StreamLimits = DEFAULT_LIMITS) -> StreamConfig:
    """Parse JSON or YAML text (``{"streams": [...]}`` or a list) of at most
    ``limits`` streams. The total is checked before any stream is built; an
    organisation's count as its streams are built, naming the one too many."""
    data = _decode(text, source, limits)
    if isinstance(data, Mapping):
        unknown = [key for key in data if key != "streams"]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0])[:64], ["streams"], n=1)
            hint = " (did you mean 'streams'?)" if close else ""
            raise StreamConfigError(f"{source}: {quote(unknown[0])} is not a known key; the file is "
                                    f"{{'streams': [...]}} or a list{hint}")
        data = data.get("streams")
    if not isinstance(data, list):
        raise StreamConfigError(f"{source}: expected a list of streams or {{'streams': [...]}}")
    if len(data) > limits.max_streams:
        raise _too_many(source, limits, len(data))
    streams = []
    per_organisation: dict[int, int] = {}
    for position, item in enumerate(data):
        stream = stream_from_dict(item, position)
        count = per_organisation.get(stream.organisation_id, 0) + 1
        if count > limits.max_streams_per_organisation:
            raise StreamConfigError(
                f"{source}: stream {stream.id!r}: organisation_id {stream.organisation_id} has more than the "
                f"{limits.max_streams_per_organisation:,} streams an organisation may have "
                "(--max_streams_per_organisation)")
        per_organisation[stream.organisation_id] = count
        streams.append(stream)
    return build_stream_config(streams)


@functools.cache
def _record_fields() -> dict[str, frozenset[str]]:
    """Field names of every named record of ``data_stream.avsc``: the keys a
    stream configuration may have at each level."""
    found: dict[str, frozenset[str]] = {}

    def visit(schema: Any) -> None:
        if isinstance(schema, list):
            for branch in schema:
                visit(branch)
        elif isinstance(schema, dict):
            if schema.get("type") == "record":
                found[schema["name"]] = frozenset(f["name"] for f in schema["fields"])
                for item in schema["fields"]:
                    visit(item["type"])
            elif schema.get("type") in ("array", "map"):
                visit(schema.get("items", schema.get("values")))

    visit(raw_schema("data_stream"))
    return found
