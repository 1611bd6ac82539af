"""The portal on this machine: ``make run-portal``, and beside ``make run-local``.

:class:`LocalPortal` prepares an SQLite stream store under the output directory
(``out/portal.db``), a sealing key (``out/portal/sealing.key``, made once, mode
0600) and an operator API key (``out/portal/operator.key``, made once, mode
0600; only its hash is in the database), optionally loads a stream
configuration file into the store (``python -m portal import-streams``), and
serves the portal (``python -m portal serve``, uvicorn) on 127.0.0.1 in its own
process group until stopped. Local destinations are http on 127.0.0.1, so the
portal runs with ``--allow_insecure_destinations``, as the local job does.

    .venv/bin/python -m tools.local_portal --output_dir out [--port 8700]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from portal import __main__ as portal_cli
from portal.auth import create_key
from portal.db import migrate
from schemas.sealing import KEY_ENV, new_key
from schemas.stream_store import api_keys, data_streams, engine_for
from schemas.streams import DESTINATION_OF
from tools.local_streams import LOCAL_SECRETS
from tools.processes import PortService, free_port, port_open

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PORT = 8700


def _secret_file(path: Path, make: callable) -> str:  # type: ignore[valid-type]
    """The content of a 0600 file, made with ``make()`` the first time."""
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(value + "\n")
    return value


class LocalPortal(PortService):
    """The portal serving ``<output_dir>/portal.db`` on 127.0.0.1."""

    name = "portal"

    def __init__(self, output_dir: Path, port: int | None = None, streams_config: Path | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.database_url = f"sqlite:///{(self.output_dir / 'portal.db').resolve()}"
        secrets_dir = self.output_dir / "portal"
        self.sealing_key = _secret_file(secrets_dir / "sealing.key", new_key)
        migrate(self.database_url)
        self.operator_key = self._operator_key(secrets_dir / "operator.key")
        if streams_config is not None:
            code = portal_cli.main(["import-streams", "--database_url", self.database_url,
                                    "--streams_config", str(streams_config)])
            if code != 0:
                raise RuntimeError(f"importing {streams_config} into the portal failed (exit {code})")
        if port is None:
            port = DEFAULT_PORT if not port_open("127.0.0.1", DEFAULT_PORT) else free_port()
        env = {**os.environ, **LOCAL_SECRETS, KEY_ENV: self.sealing_key, "PYTHONPATH": str(ROOT)}
        super().__init__([sys.executable, "-m", "portal", "serve", "--database_url", self.database_url,
                          "--port", str(port), "--allow_insecure_destinations"], port, env=env,
                         log_path=self.output_dir / "portal.log", startup_timeout=60.0)

    def _operator_key(self, path: Path) -> str:
        """The local operator key: the file's, while the database knows it; a new one otherwise."""
        if path.exists():
            key = path.read_text(encoding="ascii").strip()
            with engine_for(self.database_url).connect() as connection:
                known = connection.execute(sa.select(api_keys.c.id).where(api_keys.c.prefix == key[:12])).first()
            if known is not None:
                return key
            path.unlink()
        with engine_for(self.database_url).begin() as connection:
            return _secret_file(path, lambda: create_key(connection, None, "local operator (tools.local_portal)"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def describe(self) -> str:
        return (f"portal: {self.url}/portal/data-streams (sign in with the operator key in "
                f"{self.output_dir / 'portal' / 'operator.key'}; API {self.url}/api/v1, database {self.database_url})")


#: The fields of a stream's destination block that hold where it delivers.
_ADDRESS_FIELDS = ("url", "endpoint_url")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def repoint_store(database_url: str, streams: list[dict[str, Any]]) -> int:
    """Point the store's streams at the local destinations that ``streams`` (a
    local stream configuration just written for them) deliver to; returns how
    many streams changed.

    Each start of the local destinations takes free ports, so the streams
    ``make run-local`` left in ``out/portal.db`` point at its destinations,
    gone since. What moved is learnt from the streams of both with the same id
    (old origin -> new origin, 127.0.0.1 only) and applied to every stream of
    the store, those made in the portal included; state, history marker and
    status are kept, so ``make historic`` on the store shows in the portal."""
    moves: dict[str, str] = {}
    with engine_for(database_url).begin() as connection:
        rows = connection.execute(sa.select(data_streams.c.id, data_streams.c.config)).all()
        stored = {row.id: row.config for row in rows}
        for stream in streams:
            block = DESTINATION_OF[stream["api_type"]]
            old_block = (stored.get(stream["id"]) or {}).get(block) or {}
            for name in _ADDRESS_FIELDS:
                old, new = old_block.get(name), stream[block].get(name)
                if old and new and urlsplit(old).hostname == "127.0.0.1":
                    moves[_origin(old)] = _origin(new)
        changed = 0
        for row in rows:
            config = copy.deepcopy(row.config)
            for block in config.values():
                if not isinstance(block, dict):
                    continue
                for name in _ADDRESS_FIELDS:
                    value = block.get(name)
                    origin = _origin(value) if isinstance(value, str) else None
                    if origin in moves:
                        block[name] = moves[origin] + value[len(origin):]
            if config != row.config:
                connection.execute(sa.update(data_streams).where(data_streams.c.id == row.id).values(config=config))
                changed += 1
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.local_portal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="out", help="Where portal.db and the keys are. Default: out.")
    parser.add_argument("--port", type=int, default=None, help=f"Default: {DEFAULT_PORT}, or a free one.")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalPortal(Path(args.output_dir), args.port) as portal:
        sys.stdout.write(portal.describe() + "\nCtrl-C stops it.\n")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
