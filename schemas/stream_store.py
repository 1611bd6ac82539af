"""The stream store: data streams, their status and delivery counts in a database.

The portal (``portal/``) manages streams here; the job reads them with
``--streams_db <url>`` (instead of a ``--streams_config`` file) and writes back
what it saw: each stream's status, and documents delivered and parked per hour.
Both sides use these table definitions (SQLAlchemy Core), so the job needs no
part of the portal. The schema is created and migrated by the portal's Alembic
migrations (``portal/migrations``), never by the job.

Any database SQLAlchemy 2 speaks: an SQLite file is the embedded default, and
PostgreSQL (``postgresql+psycopg://...``) the production one. Timestamps are ISO
8601 strings in UTC, as everywhere in the job, so they sort as text on every
database.

A stream row holds the job's own stream configuration (the format of
``schemas/avro/data_stream.avsc``) split in columns for what the portal filters
on, and ``config`` for the rest (destination, filters, batching). Credentials in
it are references or sealed values (``schemas/sealing.py``), never plain text.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from schemas.streams import DEFAULT_LIMITS, StreamConfig, StreamConfigError, StreamLimits, parse_stream_config

metadata = sa.MetaData()

organisations = sa.Table(
    "organisations", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
)

api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    #: The key's first characters, shown in listings and used to find it.
    sa.Column("prefix", sa.String(16), nullable=False, unique=True),
    #: SHA-256 of the whole key (keys are 32 random bytes: no salt or slow hash needed).
    sa.Column("key_hash", sa.String(64), nullable=False),
    #: None: an operator key, which sees every organisation.
    sa.Column("organisation_id", sa.BigInteger, sa.ForeignKey("organisations.id", ondelete="CASCADE"),
              nullable=True, index=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("revoked_at", sa.String(40), nullable=True),
)

data_streams = sa.Table(
    "data_streams", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("organisation_id", sa.BigInteger, sa.ForeignKey("organisations.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("stream_type", sa.String(10), nullable=False),
    sa.Column("api_type", sa.String(20), nullable=False),
    #: The customer's choice: active or paused (the job's own states add deactivated).
    sa.Column("state", sa.String(12), nullable=False),
    sa.Column("historic_data", sa.Boolean, nullable=False),
    #: The rest of the job's stream configuration: the destination block, filters, batching.
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
    #: Set by activate (resume) and restart: the job re-sends what it kept parked for the stream.
    sa.Column("resumed_at", sa.String(40), nullable=True),
)

stream_status = sa.Table(
    "stream_status", metadata,
    sa.Column("stream_id", sa.String(128), sa.ForeignKey("data_streams.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("state", sa.String(12), nullable=False),
    sa.Column("error", sa.String(40), nullable=True),
    sa.Column("last_success_at", sa.String(40), nullable=True),
    sa.Column("last_remote_status", sa.String(64), nullable=True),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, default=0),
    sa.Column("circuit", sa.String(12), nullable=False, default="closed"),
    sa.Column("next_probe_at", sa.String(40), nullable=True),
    sa.Column("updated_at", sa.String(40), nullable=False),
)

#: Documents per stream and hour (UTC, ``YYYY-MM-DDTHH:00:00Z``): the overview's
#: last hour and day, and the stream page's chart.
delivery_counts = sa.Table(
    "delivery_counts", metadata,
    sa.Column("stream_id", sa.String(128), sa.ForeignKey("data_streams.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("hour", sa.String(40), primary_key=True),
    sa.Column("delivered", sa.BigInteger, nullable=False, default=0),
    sa.Column("parked", sa.BigInteger, nullable=False, default=0),
)

#: The stream page's recent deliveries: the last :data:`RECENT_DELIVERIES` batches of each stream.
recent_deliveries = sa.Table(
    "recent_deliveries", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("stream_id", sa.String(128), sa.ForeignKey("data_streams.id", ondelete="CASCADE"), nullable=False,
              index=True),
    sa.Column("started_at", sa.String(40), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("remote_status", sa.String(64), nullable=True),
    sa.Column("documents", sa.Integer, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
)

#: Streams with historic data whose history has been delivered (the file
#: location's ``history/<id>.json`` markers): a deleted stream's marker goes
#: with it.
history_delivered = sa.Table(
    "history_delivered", metadata,
    sa.Column("stream_id", sa.String(128), sa.ForeignKey("data_streams.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("delivered_at", sa.String(40), nullable=False),
)

RECENT_DELIVERIES = 50


def redacted(url: str) -> str:
    """The database URL for messages: its password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is shown as its scheme only
        return url.split(":", 1)[0] + ":..."


@functools.cache
def engine_for(url: str) -> Engine:
    """One engine (a connection pool) per database and process. SQLite gets
    foreign keys (its default is off, and deletes must cascade) and a busy
    timeout (the portal and the job write the same file)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def stream_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stream row as the job's configuration format (``data_stream.avsc``)."""
    return {
        "id": row["id"],
        "organisation_id": row["organisation_id"],
        "stream_type": row["stream_type"],
        "api_type": row["api_type"],
        "state": row["state"],
        "historic_data": bool(row["historic_data"]),
        "created_at": row["created_at"],
        **({"resumed_at": row["resumed_at"]} if row.get("resumed_at") else {}),
        **dict(row["config"] or {}),
    }


def load_stream_config_db(url: str, limits: StreamLimits = DEFAULT_LIMITS) -> StreamConfig:
    """Every stream of the store, checked by the job's own rules and limits (a
    row is untrusted as a file is); raises :class:`StreamConfigError` naming the
    database (password masked), the stream and the field."""
    source = redacted(url)
    try:
        with engine_for(url).connect() as connection:
            rows = connection.execute(
                sa.select(data_streams).order_by(data_streams.c.id).limit(limits.max_streams + 1)).mappings().all()
    except sa.exc.SQLAlchemyError as err:
        raise StreamConfigError(f"{source}: cannot read the data streams: {type(err).__name__}: "
                                f"{str(err).splitlines()[0][:200]}") from None
    return parse_stream_config(json.dumps({"streams": [stream_dict(row) for row in rows]}), source=source,
                               limits=limits)


def history_delivered_db(url: str) -> frozenset[str]:
    with engine_for(url).connect() as connection:
        return frozenset(connection.execute(sa.select(history_delivered.c.stream_id)).scalars())


def mark_history_delivered_db(url: str, stream_id: str, delivered_at: str) -> None:
    with engine_for(url).begin() as connection:
        exists = connection.execute(sa.select(data_streams.c.id).where(data_streams.c.id == stream_id)).first()
        if exists is None:
            return  # deleted meanwhile: nothing to mark
        connection.execute(sa.delete(history_delivered).where(history_delivered.c.stream_id == stream_id))
        connection.execute(sa.insert(history_delivered).values(stream_id=stream_id, delivered_at=delivered_at))


def last_status_update_db(url: str) -> str | None:
    """The latest ``updated_at`` of the ``stream_status`` rows; None when there is none."""
    with engine_for(url).connect() as connection:
        return connection.execute(sa.select(sa.func.max(stream_status.c.updated_at))).scalar()


def hour_of(timestamp: str) -> str:
    """The hour bucket of an ISO 8601 UTC timestamp."""
    return f"{timestamp[:13]}:00:00Z"


def write_status_db(url: str, records: Iterable[Mapping[str, Any]]) -> None:
    """Upsert the status rows of streams that still exist (a stream deleted in
    the portal while the job ran gets none)."""
    columns = {column.name for column in stream_status.columns}
    with engine_for(url).begin() as connection:
        existing = set(connection.execute(sa.select(data_streams.c.id)).scalars())
        for record in records:
            values = {key: value for key, value in record.items() if key in columns}
            if values["stream_id"] not in existing:
                continue
            updated = connection.execute(sa.update(stream_status)
                                         .where(stream_status.c.stream_id == values["stream_id"]).values(**values))
            if updated.rowcount == 0:
                connection.execute(sa.insert(stream_status).values(**values))


def _add_counts(connection: Any, existing: set[str], counts: Mapping[tuple[str, str], list[int]]) -> None:
    for (stream_id, hour), (delivered, parked) in sorted(counts.items()):
        if stream_id not in existing or not (delivered or parked):
            continue
        where = (delivery_counts.c.stream_id == stream_id) & (delivery_counts.c.hour == hour)
        updated = connection.execute(sa.update(delivery_counts).where(where).values(
            delivered=delivery_counts.c.delivered + delivered, parked=delivery_counts.c.parked + parked))
        if updated.rowcount == 0:
            connection.execute(sa.insert(delivery_counts).values(stream_id=stream_id, hour=hour,
                                                                 delivered=delivered, parked=parked))


def record_parked_db(url: str, stream_id: str, parked_at: str, documents: int) -> None:
    """Add a parked batch to its stream's hourly count of parked documents.
    Every parked document is counted here, when its batch is written to the
    park store (a failed batch, a paused stream's, a held history's), and
    nowhere else."""
    with engine_for(url).begin() as connection:
        existing = set(connection.execute(sa.select(data_streams.c.id).where(data_streams.c.id == stream_id))
                       .scalars())
        _add_counts(connection, existing, {(stream_id, hour_of(parked_at)): [0, documents]})


def record_deliveries_db(url: str, results: Iterable[Mapping[str, Any]]) -> None:
    """Add a batch of delivery results (``schemas.delivery.DeliveryResult`` as
    dicts) to the hourly counts of delivered documents and the recent
    deliveries of their streams (parked documents are counted where they are
    parked: :func:`record_parked_db`)."""
    counts: dict[tuple[str, str], list[int]] = {}
    recent: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        key = (result["stream_id"], hour_of(result["started_at"]))
        entry = counts.setdefault(key, [0, 0])
        documents = int(result.get("documents") or 0)
        if result["status"] in ("delivered", "partial"):
            entry[0] += documents - int(result.get("failed_documents") or 0)
        code = result.get("status_code")
        recent.setdefault(result["stream_id"], []).append({
            "stream_id": result["stream_id"], "started_at": result["started_at"], "status": result["status"],
            "remote_status": str(code) if code is not None else result.get("error"),
            "documents": documents, "attempts": int(result.get("attempts") or 0)})
    if not counts:
        return
    with engine_for(url).begin() as connection:
        existing = set(connection.execute(sa.select(data_streams.c.id)).scalars())
        _add_counts(connection, existing, counts)
        for stream_id, rows in sorted(recent.items()):
            if stream_id not in existing:
                continue
            connection.execute(sa.insert(recent_deliveries), rows[-RECENT_DELIVERIES:])
            keep = (sa.select(recent_deliveries.c.id).where(recent_deliveries.c.stream_id == stream_id)
                    .order_by(recent_deliveries.c.started_at.desc(), recent_deliveries.c.id.desc())
                    .limit(RECENT_DELIVERIES))
            connection.execute(sa.delete(recent_deliveries).where(
                (recent_deliveries.c.stream_id == stream_id) & recent_deliveries.c.id.not_in(keep)))
