"""The portal's command line.

    python -m portal serve --database_url sqlite:///out/portal.db --port 8700
    python -m portal migrate --database_url postgresql+psycopg://portal@db/portal
    python -m portal keygen                      # a sealing key (DATASTREAMER_SEALING_KEY)
    python -m portal create-organisation --id 80025 --name "WBV Tester"
    python -m portal create-key --organisation 80025 --name "their portal"   # prints the key once
    python -m portal create-key --name "operations"                          # an operator key
    python -m portal import-streams --streams_config streams.json           # the job's file, as is
    python -m portal reseal                      # every sealed credential again, with the first key

Exit status 2 for a bad argument or stream configuration, naming it.
"""

from __future__ import annotations

import argparse
import json
import sys

import sqlalchemy as sa

from portal.auth import create_key, create_organisation, ensure_organisation
from portal.db import DEFAULT_DATABASE_URL, migrate
from portal.streams import PortalRules
from schemas.sealing import SealingError, new_key
from schemas.stream_store import data_streams, engine_for, redacted
from schemas.streams import DESTINATION_OF, StreamConfigError
from schemas.timestamps import now_iso

DEFAULT_PORT = 8700


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from portal.app import PortalSettings, create_app

    rules = PortalRules(allow_insecure_destinations=args.allow_insecure_destinations,
                        secret_env_prefix=args.secret_env_prefix, secrets_dir=args.secrets_dir)
    try:
        app = create_app(PortalSettings(database_url=args.database_url, rules=rules, https=args.https))
    except SealingError as err:
        print(f"portal: {err}", file=sys.stderr)
        return 2
    print(f"portal: serving http://{args.host}:{args.port}/portal/data-streams (API: "
          f"http://{args.host}:{args.port}/api/v1, database {redacted(args.database_url)})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def _import_streams(args: argparse.Namespace) -> int:
    """The job's stream configuration into the store, ids and references kept
    (an operator's migration from files; ``make run-local`` loads the sample
    streams this way). Streams already in the store are replaced."""
    from transforms.routing import load_stream_config

    try:
        config = load_stream_config(args.streams_config)
    except StreamConfigError as err:
        print(f"portal: {err}", file=sys.stderr)
        return 2
    migrate(args.database_url)
    raw = _raw_streams(args.streams_config)
    with engine_for(args.database_url).begin() as connection:
        for stream_id, stream in sorted(config.streams.items()):
            entry = raw[stream_id]
            ensure_organisation(connection, stream.organisation_id)
            block = DESTINATION_OF[stream.api_type]
            kept = {key: entry[key] for key in (block, "filters", "batching") if entry.get(key) is not None}
            connection.execute(sa.delete(data_streams).where(data_streams.c.id == stream_id))
            connection.execute(sa.insert(data_streams).values(
                id=stream_id, organisation_id=stream.organisation_id, stream_type=stream.stream_type,
                api_type=stream.api_type, state="paused" if stream.state == "paused" else "active",
                historic_data=stream.historic_data, config=kept, created_at=stream.created_at,
                updated_at=now_iso()))
    print(f"portal: imported {len(config)} streams into {redacted(args.database_url)}")
    return 0


def _reseal(args: argparse.Namespace) -> int:
    """Seal every sealed credential again with the first key of
    DATASTREAMER_SEALING_KEY (key rotation: put the new key first, reseal, then
    drop the old one)."""
    from portal.streams import SECRET_FIELDS
    from schemas.sealing import Sealer

    try:
        sealer = Sealer.from_environment()
        count = 0
        with engine_for(args.database_url).begin() as connection:
            for row in connection.execute(sa.select(data_streams)).mappings().all():
                block = DESTINATION_OF[row["api_type"]]
                config = json.loads(json.dumps(row["config"]))
                destination = config.get(block) or {}
                for name in SECRET_FIELDS[block]:
                    ref = destination.get(name)
                    if isinstance(ref, dict) and ref.get("sealed"):
                        ref["sealed"] = sealer.reseal(ref["sealed"])
                        count += 1
                connection.execute(sa.update(data_streams).where(data_streams.c.id == row["id"])
                                   .values(config=config))
    except SealingError as err:
        print(f"portal: {err}", file=sys.stderr)
        return 2
    print(f"portal: {count} sealed credentials sealed again with the first key")
    return 0


def _raw_streams(path: str) -> dict[str, dict]:
    import yaml
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as handle:
        text = handle.read().decode("utf-8")
    data = json.loads(text) if text.lstrip().startswith(("{", "[")) else yaml.safe_load(text)
    entries = data["streams"] if isinstance(data, dict) else data
    return {entry["id"]: entry for entry in entries}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m portal", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def with_database(command: argparse.ArgumentParser) -> argparse.ArgumentParser:
        command.add_argument("--database_url", default=DEFAULT_DATABASE_URL,
                             help=f"SQLAlchemy URL of the stream store (default {DEFAULT_DATABASE_URL})")
        return command

    serve = with_database(commands.add_parser("serve", help="Serve the API and the pages"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--allow_insecure_destinations", action="store_true",
                       help="Accept http and private destinations (local development only), as the job's flag")
    serve.add_argument("--secret_env_prefix", default=PortalRules().secret_env_prefix)
    serve.add_argument("--secrets_dir", default=None)
    serve.add_argument("--https", action="store_true", help="Served behind TLS: Secure cookies and HSTS")
    with_database(commands.add_parser("migrate", help="Upgrade the database to the head revision"))
    commands.add_parser("keygen", help="Print a new sealing key")
    organisation = with_database(commands.add_parser("create-organisation", help="Add an organisation"))
    organisation.add_argument("--id", type=int, required=True)
    organisation.add_argument("--name", required=True)
    key = with_database(commands.add_parser("create-key", help="Add an API key and print it (once)"))
    key.add_argument("--organisation", type=int, default=None, help="Its organisation; none: an operator key")
    key.add_argument("--name", required=True)
    imported = with_database(commands.add_parser("import-streams", help="Load a job stream configuration file"))
    imported.add_argument("--streams_config", required=True)
    with_database(commands.add_parser("reseal", help="Seal every credential again with the first sealing key"))
    args = parser.parse_args(argv)

    if args.command == "serve":
        return _serve(args)
    if args.command == "keygen":
        print(new_key())
        return 0
    if args.command == "import-streams":
        return _import_streams(args)
    revision = migrate(args.database_url)
    if args.command == "reseal":
        return _reseal(args)
    if args.command == "migrate":
        print(f"portal: {redacted(args.database_url)} is at revision {revision}")
        return 0
    with engine_for(args.database_url).begin() as connection:
        if args.command == "create-organisation":
            create_organisation(connection, args.id, args.name)
            print(f"portal: organisation {args.id} created")
            return 0
        if args.organisation is not None:
            ensure_organisation(connection, args.organisation)
        print(create_key(connection, args.organisation, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
