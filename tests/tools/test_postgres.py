"""The throwaway PostgreSQL server (``tools/postgres.py``) and its fixtures, against
the real server: writing and reading through SQLAlchemy and psycopg, separate
databases, stopping without leaving a process or a file behind (also when
``pg_ctl stop`` cannot), a start that fails quoting the server's log, and missing
binaries that fail, never skip, with what to install."""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import OperationalError

from tools.postgres import (
    PostgresServer,
    PostgresStartError,
    PostgresToolsError,
    find_bin_dir,
    server_processes,
)

REPO = Path(__file__).resolve().parents[2]


def processes_naming(path: Path) -> list[int]:
    """Processes whose command line names ``path`` (the postmaster's has ``-D <data dir>``)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in command and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def owners(pids: list[int]) -> set[int]:
    """The real user ids of those of the processes still there (the startup
    process may end just after the server is ready)."""
    found = set()
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        found.update(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))
    return found


def test_write_and_read_a_row(postgres_url):
    assert postgres_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            tables = inspect(connection).get_table_names()
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE sims (id bigint PRIMARY KEY, iccid text NOT NULL UNIQUE, "
                                    "label text, created timestamptz NOT NULL DEFAULT now())"))
            connection.execute(text("INSERT INTO sims (id, iccid, label) VALUES (:id, :iccid, :label)"),
                               {"id": 277059, "iccid": "8944500102198304826", "label": "Zähler Süd"})
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT id, iccid, label, created IS NOT NULL FROM sims")).all()
            settings = {name: connection.execute(text(f"SHOW {name}")).scalar_one()
                        for name in ("server_encoding", "fsync", "listen_addresses", "unix_socket_directories")}
            address = connection.execute(text("SELECT host(inet_server_addr())")).scalar_one()
    finally:
        engine.dispose()
    assert tables == []  # a new, empty database
    assert rows == [(277059, "8944500102198304826", "Zähler Süd", True)]
    assert settings == {"server_encoding": "UTF8", "fsync": "off", "listen_addresses": "127.0.0.1",
                        "unix_socket_directories": ""}
    assert address == "127.0.0.1"


def test_databases_are_separate(postgres_server):
    suffix = uuid.uuid4().hex[:12]
    names = [f"first_{suffix}", f"second_{suffix}"]
    engines = [create_engine(postgres_server.create_database(name)) for name in names]
    try:
        for engine, label in zip(engines, ("one", "two"), strict=True):
            with engine.begin() as connection:
                assert inspect(connection).get_table_names() == []  # not even the other one's table
                connection.execute(text("CREATE TABLE streams (id text PRIMARY KEY)"))
                connection.execute(text("INSERT INTO streams VALUES (:id)"), {"id": label})
        read = []
        for engine in engines:
            with engine.connect() as connection:
                read.append(connection.execute(text("SELECT id FROM streams")).scalars().all())
    finally:
        for engine in engines:
            engine.dispose()
    assert read == [["one"], ["two"]]
    assert engines[0].url.database == names[0] and engines[1].url.database == names[1]

    postgres_server.drop_database(names[0])
    with pytest.raises(OperationalError, match="does not exist"), engines[0].connect():
        pass


def test_database_names_are_checked(postgres_server):
    for name in ("Mixed", "has-dash", "1starts_with_digit", "x" * 64, 'quote"d', ""):
        with pytest.raises(ValueError, match="database name"):
            postgres_server.create_database(name)


def test_stop_leaves_no_process_and_no_directory():
    server = PostgresServer()
    with server:
        directory, data_dir, postmaster = server.directory, server.data_dir, server.pid
        assert directory is not None and data_dir is not None and postmaster is not None
        running = server_processes(data_dir)
        assert postmaster in running
        assert len(running) >= 3, running  # the postmaster, checkpointer, background writer, WAL writer...
        assert processes_naming(data_dir) == [postmaster]
        if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as the postgres system user
            server_user = pwd.getpwnam("postgres").pw_uid
            assert directory.stat().st_uid == server_user
            assert owners(running) == {server_user}
        # A client still connected: the fast shutdown disconnects it rather than wait.
        client = psycopg.connect(server.url.replace("postgresql+psycopg", "postgresql"), autocommit=True)
        assert client.execute("SELECT 1").fetchone() == (1,)
    try:
        assert server_processes(data_dir) == []
        assert processes_naming(data_dir) == []
        assert not directory.exists()
        assert server.directory is None and server.pid is None
        with pytest.raises(psycopg.OperationalError):
            client.execute("SELECT 1")
    finally:
        client.close()
    server.stop()  # again: nothing to do


def test_stop_kills_a_server_that_does_not_shut_down():
    with PostgresServer() as server:
        data_dir, directory = server.data_dir, server.directory
        assert data_dir is not None and directory is not None and server.pid is not None
        # A stopped postmaster cannot act on pg_ctl's shutdown request: stop() must kill the cluster.
        os.kill(server.pid, signal.SIGSTOP)
        server.stop(grace_seconds=1)
        assert server_processes(data_dir) == []
        assert processes_naming(data_dir) == []
        assert not directory.exists()


def test_a_failed_start_says_why_and_cleans_up():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PostgresStartError) as failure:
            PostgresServer(port=port).start()
    message = str(failure.value)
    assert f"did not start on 127.0.0.1:{port}" in message
    assert "could not bind IPv4 address" in message  # from the tail of the server's log
    log = re.search(r"end of (/\S+/server\.log):", message)
    assert log is not None, message
    assert not Path(log.group(1)).parent.exists()  # the cluster's directory is gone with it
    assert processes_naming(Path(log.group(1)).parent) == []


def test_missing_binaries_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PG_BIN", str(tmp_path))
    server = PostgresServer()
    with pytest.raises(PostgresToolsError) as failure:
        server.start()
    message = str(failure.value)
    assert f"PG_BIN={tmp_path} has no initdb, pg_ctl, postgres, pg_isready" in message
    assert "apt-get install -y postgresql" in message and "make postgres" in message
    assert server.directory is None  # it stopped before creating anything


def test_pg_bin_chooses_the_binaries(monkeypatch):
    monkeypatch.delenv("PG_BIN", raising=False)
    found = find_bin_dir()  # the newest /usr/lib/postgresql/*/bin
    assert all(os.access(found / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres", "pg_isready"))
    monkeypatch.setenv("PG_BIN", str(found))
    assert find_bin_dir() == found


def test_missing_binaries_fail_the_fixture_rather_than_skip(tmp_path):
    """CI must not pass by skipping the database tests on a machine without PostgreSQL."""
    env = {**os.environ, "PG_BIN": str(tmp_path), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", f"{Path(__file__).relative_to(REPO)}::test_write_and_read_a_row",
         "-p", "no:cacheprovider", "-q"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 error" in output and "skipped" not in output, output
    assert "apt-get install -y postgresql" in output, output
