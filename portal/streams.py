"""Data streams as the portal manages them: create, read, update, delete,
deactivate, activate, restart, and the status the job reported.

Every stream the portal stores passes the job's own checks first
(``schemas.streams.stream_from_dict``, the outbound rules of
``pipelines.data_streamer.check_destinations``, the stream limits), so the job
never meets a stream it would refuse; a problem is a :class:`FieldError` naming
the field, which the API answers with 422.

Tenancy: every operation takes the caller's :class:`~portal.auth.Principal`. A
stream of another organisation is answered exactly as a stream that does not
exist (:class:`StreamNotFoundError`), and stream ids are made here, never chosen by a
caller, so no request can learn whether another organisation's id exists.

Credentials: a value typed by the customer is sealed (``schemas/sealing.py``)
before it is stored; an ``{"env": ...}`` or ``{"file": ...}`` reference (an
operator's) is kept as is. Reads show a mask, never the value; a REST stream's
signing secret is made here and shown once, in the answer to its creation.
"""

from __future__ import annotations

import copy
import secrets as random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipelines.data_streamer import check_destinations
from schemas.sealing import Sealer
from schemas.stream_store import (
    data_streams,
    delivery_counts,
    history_delivered,
    hour_of,
    organisations,
    recent_deliveries,
    stream_dict,
    stream_status,
)
from schemas.streams import (
    DEFAULT_SECRET_ENV_PREFIX,
    DESTINATION_OF,
    DataStream,
    SecretPolicy,
    StreamConfigError,
    StreamLimits,
    build_stream_config,
    stream_from_dict,
)
from schemas.timestamps import now_iso

#: Secret fields of each destination block.
SECRET_FIELDS: Mapping[str, tuple[str, ...]] = {
    "rest": ("signing_secret", "auth_secret"),
    "kinesis": ("access_key_id", "secret_access_key"),
    "s3": ("access_key_id", "secret_access_key"),
    "datadog": ("api_key", "application_key"),
}
MASK = "********"
#: The API's states of a stream (emnify's): what the overview shows.
RUNNING, PAUSED, ERROR, PENDING = "Running", "Paused", "Error", "Pending"


class StreamNotFoundError(LookupError):
    """No such stream, or one the caller may not see (the same answer)."""


class FieldError(ValueError):
    """A stream the job would refuse; ``field`` is the dotted path at fault."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(message)
        self.field = field_path


class StateConflictError(RuntimeError):
    """The operation does not apply to the stream's current state."""


@dataclass(frozen=True)
class PortalRules:
    """What the job the portal feeds would allow: the same flags."""

    allow_insecure_destinations: bool = False
    secret_env_prefix: str = DEFAULT_SECRET_ENV_PREFIX
    secrets_dir: str | None = None
    limits: StreamLimits = field(default_factory=StreamLimits)
    #: AWS S3's region when the form (which has no region field) gives none.
    default_s3_region: str = "eu-central-1"


def new_stream_id() -> str:
    return "ds-" + random.token_hex(8)


def _seal_secrets(block: str, destination: dict[str, Any], sealer: Sealer,
                  previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """The destination with every typed secret sealed; a secret left out of an
    update keeps its stored value."""
    out = dict(destination)
    for name in SECRET_FIELDS[block]:
        value = out.get(name)
        if value is None:
            if previous is not None and previous.get(name) is not None:
                out[name] = previous[name]
            else:
                out.pop(name, None)
        elif isinstance(value, str):
            if not value or len(value) > 4096:
                raise FieldError(f"{block}.{name}", f"{block}.{name} must be 1 to 4,096 characters")
            out[name] = {"sealed": sealer.seal(value)}
        elif isinstance(value, Mapping):
            out[name] = dict(value)
    return out


def mask_destination(block: str, destination: Mapping[str, Any]) -> dict[str, Any]:
    """The destination as a read shows it: references named, sealed values masked."""
    out = copy.deepcopy(dict(destination))
    for name in SECRET_FIELDS[block]:
        ref = out.get(name)
        if ref is None:
            continue
        if ref.get("sealed") is not None:
            out[name] = {"kind": "value", "shown": MASK}
        elif ref.get("env") is not None:
            out[name] = {"kind": "env", "shown": ref["env"]}
        else:
            out[name] = {"kind": "file", "shown": ref.get("file")}
    return out


def _destination_input(block: str, destination: Mapping[str, Any], rules: PortalRules) -> dict[str, Any]:
    """The API's destination fields as the job's: Kinesis' and S3's ``stream_name``
    and ``bucket`` are the guide's names already; S3 gets a region when none is given."""
    out = {key: value for key, value in destination.items() if value is not None}
    if block == "s3" and "region" not in out:
        out["region"] = rules.default_s3_region
    return out


class StreamService:
    """The streams of one database, as one principal may see them."""

    def __init__(self, connection: Connection, sealer: Sealer, rules: PortalRules) -> None:
        self.connection = connection
        self.sealer = sealer
        self.rules = rules

    # ------------------------------------------------------------------ reads

    def _row(self, principal: Any, stream_id: str) -> Mapping[str, Any]:
        row = self.connection.execute(sa.select(data_streams).where(data_streams.c.id == stream_id)).mappings().first()
        if row is None or not principal.may_see(row["organisation_id"]):
            raise StreamNotFoundError(stream_id)
        return row

    def list(self, principal: Any) -> list[dict[str, Any]]:
        query = sa.select(data_streams).order_by(data_streams.c.created_at, data_streams.c.id)
        if not principal.operator:
            query = query.where(data_streams.c.organisation_id == principal.organisation_id)
        rows = self.connection.execute(query).mappings().all()
        statuses = self._statuses([row["id"] for row in rows])
        return [self._view(row, statuses.get(row["id"], {})) for row in rows]

    def get(self, principal: Any, stream_id: str) -> dict[str, Any]:
        row = self._row(principal, stream_id)
        return self._view(row, self._statuses([stream_id]).get(stream_id, {}))

    def job_stream(self, principal: Any, stream_id: str) -> DataStream:
        """The stream as the job builds it (sealed secrets and all)."""
        return stream_from_dict(stream_dict(self._row(principal, stream_id)))

    def status(self, principal: Any, stream_id: str) -> dict[str, Any]:
        return self.get(principal, stream_id)["status"]

    def recent(self, principal: Any, stream_id: str) -> list[dict[str, Any]]:
        self._row(principal, stream_id)
        rows = self.connection.execute(
            sa.select(recent_deliveries).where(recent_deliveries.c.stream_id == stream_id)
            .order_by(recent_deliveries.c.started_at.desc(), recent_deliveries.c.id.desc())).mappings().all()
        return [{key: row[key] for key in ("started_at", "status", "remote_status", "documents", "attempts")}
                for row in rows]

    def hourly(self, principal: Any, stream_id: str, now: datetime | None = None) -> list[dict[str, Any]]:
        """Documents delivered and parked in each of the last 24 hours (oldest first, empty hours included)."""
        self._row(principal, stream_id)
        now = now or datetime.now(UTC)
        hours = [hour_of((now - timedelta(hours=back)).isoformat()) for back in range(23, -1, -1)]
        rows = self.connection.execute(
            sa.select(delivery_counts).where(delivery_counts.c.stream_id == stream_id,
                                             delivery_counts.c.hour >= hours[0])).mappings().all()
        found = {row["hour"]: row for row in rows}
        return [{"hour": hour, "delivered": int(found[hour]["delivered"]) if hour in found else 0,
                 "parked": int(found[hour]["parked"]) if hour in found else 0} for hour in hours]

    def _statuses(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        out: dict[str, dict[str, Any]] = {stream_id: {} for stream_id in ids}
        for row in self.connection.execute(sa.select(stream_status).where(stream_status.c.stream_id.in_(ids))
                                           ).mappings():
            out[row["stream_id"]]["job"] = dict(row)
        for stream_id in self.connection.execute(
                sa.select(history_delivered.c.stream_id).where(history_delivered.c.stream_id.in_(ids))).scalars():
            out[stream_id]["history_delivered"] = True
        now = datetime.now(UTC)
        hour_ago = hour_of((now - timedelta(hours=1)).isoformat())
        day_ago = hour_of((now - timedelta(days=1)).isoformat())
        counts = self.connection.execute(
            sa.select(delivery_counts).where(delivery_counts.c.stream_id.in_(ids), delivery_counts.c.hour >= day_ago)
        ).mappings()
        for row in counts:
            entry = out[row["stream_id"]].setdefault("counts", {"dh": 0, "dd": 0, "ph": 0, "pd": 0})
            entry["dd"] += int(row["delivered"])
            entry["pd"] += int(row["parked"])
            if row["hour"] >= hour_ago:
                entry["dh"] += int(row["delivered"])
                entry["ph"] += int(row["parked"])
        return out

    def _view(self, row: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
        block = DESTINATION_OF[row["api_type"]]
        job = status.get("job") or {}
        counts = status.get("counts") or {"dh": 0, "dd": 0, "ph": 0, "pd": 0}
        if row["state"] == "paused":
            state, reason = PAUSED, None
        elif job.get("state") == "deactivated":
            state, reason = ERROR, job.get("error") or "remote_error"
        elif row["historic_data"] and not status.get("history_delivered"):
            state, reason = PENDING, "awaiting_history"
        else:
            state, reason = RUNNING, None
        destination = dict(row["config"].get(block) or {})
        return {
            "id": row["id"],
            "organisation_id": row["organisation_id"],
            "stream_type": row["stream_type"],
            "api_type": row["api_type"],
            "historic_data": bool(row["historic_data"]),
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            block: mask_destination(block, destination),
            "filters": row["config"].get("filters"),
            "batching": row["config"].get("batching"),
            "url": destination.get("url") if block == "rest" else None,
            "status": {
                "state": state,
                "reason": reason,
                "last_data": job.get("last_success_at"),
                "remote_status": job.get("last_remote_status"),
                "circuit": job.get("circuit"),
                "next_probe_at": job.get("next_probe_at"),
                "reported_at": job.get("updated_at"),
                "delivered_last_hour": counts["dh"],
                "delivered_last_day": counts["dd"],
                "parked_last_hour": counts["ph"],
                "parked_last_day": counts["pd"],
            },
        }

    # ------------------------------------------------------------------ writes

    def _check(self, job_stream: dict[str, Any], organisation_id: int, stream_id: str) -> None:
        """The job's checks, with messages that never name another organisation's stream."""
        try:
            stream = stream_from_dict(job_stream)
            check_destinations(build_stream_config([stream]), self.rules.allow_insecure_destinations,
                               SecretPolicy(env_prefix=self.rules.secret_env_prefix,
                                            secrets_dir=self.rules.secrets_dir))
        except StreamConfigError as err:
            message = str(err).split(": ", 1)[1] if str(err).startswith("stream ") else str(err)
            raise FieldError(err.field or "body", message) from None
        if stream.api_type == "aws_s3":
            dest = stream.destination
            for other in self.connection.execute(
                    sa.select(data_streams).where(data_streams.c.api_type == "aws_s3", data_streams.c.id != stream_id)
            ).mappings():
                theirs = other["config"].get("s3") or {}
                if ((theirs.get("endpoint_url"), theirs.get("bucket"), theirs.get("prefix", ""))
                        == (dest.endpoint_url, dest.target, dest.prefix)):
                    raise FieldError("s3.bucket", "s3.bucket and s3.prefix are already used by another stream "
                                                  "(its files would overwrite this one's)")

    def _check_limits(self, organisation_id: int) -> None:
        total = self.connection.execute(sa.select(sa.func.count()).select_from(data_streams)).scalar_one()
        if total >= self.rules.limits.max_streams:
            raise FieldError("body", f"the deployment holds the {self.rules.limits.max_streams:,} streams it may "
                                     "(--max_streams)")
        mine = self.connection.execute(sa.select(sa.func.count()).select_from(data_streams)
                                       .where(data_streams.c.organisation_id == organisation_id)).scalar_one()
        if mine >= self.rules.limits.max_streams_per_organisation:
            most = self.rules.limits.max_streams_per_organisation
            raise FieldError("organisation_id", f"the organisation has the {most:,} streams an organisation may have")

    def _organisation_of(self, principal: Any, requested: int | None) -> int:
        if principal.operator:
            if requested is None:
                raise FieldError("organisation_id", "organisation_id is required with an operator key")
            exists = self.connection.execute(sa.select(organisations.c.id).where(organisations.c.id == requested)
                                             ).first()
            if exists is None:
                raise FieldError("organisation_id", f"organisation {requested} does not exist")
            return requested
        if requested is not None and requested != principal.organisation_id:
            raise FieldError("organisation_id", "organisation_id must be your own organisation's")
        return principal.organisation_id

    def create(self, principal: Any, body: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The new stream's view, and the REST signing secret (shown this once) when one was made."""
        organisation_id = self._organisation_of(principal, body.get("organisation_id"))
        api_type = body["api_type"]
        block = DESTINATION_OF[api_type]
        destination = body.get(block)
        if destination is None:
            raise FieldError(block, f"{block} is required for api_type {api_type}")
        for other in set(DESTINATION_OF.values()) - {block}:
            if body.get(other) is not None:
                raise FieldError(other, f"{other} does not apply to api_type {api_type}")
        destination = _destination_input(block, destination, self.rules)
        signing_secret = None
        if block == "rest" and destination.get("signing_secret") is None:
            signing_secret = "whsec_" + random.token_urlsafe(32)
            destination["signing_secret"] = signing_secret
        stream_id = new_stream_id()
        now = now_iso()
        config = {block: _seal_secrets(block, destination, self.sealer, None)}
        for name in ("filters", "batching"):
            if body.get(name) is not None:
                config[name] = {key: value for key, value in body[name].items() if value is not None}
        row = {"id": stream_id, "organisation_id": organisation_id, "stream_type": body["stream_type"],
               "api_type": api_type, "state": "active", "historic_data": bool(body.get("historic_data")),
               "config": config, "created_at": now, "updated_at": now}
        self._check(stream_dict(row), organisation_id, stream_id)
        self._check_limits(organisation_id)
        self.connection.execute(sa.insert(data_streams).values(**row))
        return self.get(principal, stream_id), signing_secret

    def update(self, principal: Any, stream_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Change what the body gives (stream type, historic data, the
        destination's fields, filters, batching); secrets left out keep their value."""
        row = dict(self._row(principal, stream_id))
        config = copy.deepcopy(dict(row["config"]))
        api_type = body.get("api_type") or row["api_type"]
        block, old_block = DESTINATION_OF[api_type], DESTINATION_OF[row["api_type"]]
        for other in set(DESTINATION_OF.values()) - {block}:
            if body.get(other) is not None:
                raise FieldError(other, f"{other} does not apply to api_type {api_type}")
        if block != old_block:
            if body.get(block) is None:
                raise FieldError(block, f"{block} is required to change api_type to {api_type}")
            previous: dict[str, Any] = {}
            config.pop(old_block, None)
        else:
            previous = dict(config.get(block) or {})
        if body.get(block) is not None:
            merged = {**previous, **_destination_input(block, body[block], self.rules)}
            for name in SECRET_FIELDS[block]:
                if name in body[block] and body[block][name] is None:
                    merged[name] = previous.get(name)  # left out: keep
            config[block] = _seal_secrets(block, merged, self.sealer, previous)
        if block == "rest" and not config[block].get("signing_secret"):
            config[block]["signing_secret"] = {"sealed": self.sealer.seal("whsec_" + random.token_urlsafe(32))}
        for name in ("filters", "batching"):
            if name in body and body[name] is not None:
                config[name] = {key: value for key, value in body[name].items() if value is not None}
        row.update(config=config, api_type=api_type, updated_at=now_iso())
        for name in ("stream_type", "historic_data"):
            if body.get(name) is not None:
                row[name] = body[name]
        self._check(stream_dict(row), row["organisation_id"], stream_id)
        self.connection.execute(sa.update(data_streams).where(data_streams.c.id == stream_id).values(
            config=row["config"], api_type=row["api_type"], stream_type=row["stream_type"],
            historic_data=bool(row["historic_data"]), updated_at=row["updated_at"]))
        return self.get(principal, stream_id)

    def delete(self, principal: Any, stream_id: str) -> None:
        """The stream and all the job kept about it (status, counts, history
        marker): a new stream never inherits any of it."""
        self._row(principal, stream_id)
        for table in (stream_status, delivery_counts, recent_deliveries, history_delivered):
            self.connection.execute(sa.delete(table).where(table.c.stream_id == stream_id))
        self.connection.execute(sa.delete(data_streams).where(data_streams.c.id == stream_id))

    def deactivate(self, principal: Any, stream_id: str) -> dict[str, Any]:
        """Pause: the job parks the stream's documents from its next refresh on."""
        self._row(principal, stream_id)
        self.connection.execute(sa.update(data_streams).where(data_streams.c.id == stream_id)
                                .values(state="paused", updated_at=now_iso()))
        return self.get(principal, stream_id)

    def activate(self, principal: Any, stream_id: str) -> dict[str, Any]:
        """Resume: the job delivers what it parked while the stream was paused,
        first, then live documents."""
        row = self._row(principal, stream_id)
        now = now_iso()
        values: dict[str, Any] = {"state": "active", "updated_at": now}
        if row["state"] == "paused":
            values["resumed_at"] = now
        self.connection.execute(sa.update(data_streams).where(data_streams.c.id == stream_id).values(**values))
        return self.get(principal, stream_id)

    def restart(self, principal: Any, stream_id: str) -> dict[str, Any]:
        """A stream in Error tried again now: the job probes its destination at
        its next refresh and, when it answers, delivers the parked backlog first."""
        view = self.get(principal, stream_id)
        if view["status"]["state"] != ERROR:
            raise StateConflictError(f"the stream is {view['status']['state']}, not in Error: nothing to restart")
        now = now_iso()
        self.connection.execute(sa.update(data_streams).where(data_streams.c.id == stream_id)
                                .values(resumed_at=now, updated_at=now))
        self.connection.execute(sa.update(stream_status).where(stream_status.c.stream_id == stream_id)
                                .values(state="active", error=None, consecutive_failures=0, updated_at=now))
        return self.get(principal, stream_id)
