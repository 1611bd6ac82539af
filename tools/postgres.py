"""A throwaway PostgreSQL server, for the portal's tests and for developers.

Why a real server and not SQLite: the portal runs on PostgreSQL (SQLAlchemy 2,
psycopg 3, Alembic migrations), and its transactions, constraints, types and
migrations behave as PostgreSQL makes them behave; what passes here passes on
the real database for the same reasons.

- :func:`find_bin_dir` finds the server binaries: ``PG_BIN`` when set, else the
  newest ``/usr/lib/postgresql/<version>/bin`` of Debian's ``postgresql``
  package. Without them it raises :class:`PostgresToolsError` saying what to
  install (``apt-get install -y postgresql``, or ``make postgres``).
- :class:`PostgresServer` creates a fresh cluster with ``initdb`` in a private
  temporary directory, starts it with ``pg_ctl`` on ``127.0.0.1`` and a free
  port (TCP only, no Unix socket: nothing in a shared directory), trust
  authentication from 127.0.0.1 only, no fsync (the data is thrown away), and
  waits until ``pg_isready`` answers. :meth:`PostgresServer.stop` stops it
  (``pg_ctl stop -m fast``, then SIGKILL to whatever of the cluster is left)
  and removes the directory.

PostgreSQL refuses to run as root. When this process is root, ``initdb`` and
``pg_ctl`` run as the ``postgres`` system user (created by Debian's package)
through ``runuser``, and the directory is created where that user can reach it
(not under pytest's ``/tmp/pytest-of-root``, which is mode 0700) and given to
it. Otherwise they run as the current user.

``pg_ctl`` starts the postmaster in a session of its own (a Ctrl-C in the
terminal does not reach it), and every backend the postmaster forks starts
another session, so there is no single process group to stop. The processes of
a cluster are found by their working directory instead, which is the data
directory for all of them (:func:`server_processes`).

    python -m tools.postgres    # one server until Ctrl-C; prints its URL
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tools.processes import free_port, log_tail, signal_group

#: Where Debian's ``postgresql`` package puts each major version's binaries.
DEBIAN_ROOT = Path("/usr/lib/postgresql")
BIN_ENV = "PG_BIN"
#: What a binaries directory must hold.
BINARIES = ("initdb", "pg_ctl", "postgres", "pg_isready")
#: The system user that runs the server when this process is root.
SERVER_OS_USER = "postgres"
#: The cluster's superuser (a database role, trusted from 127.0.0.1 without a password).
SUPERUSER = "postgres"
DEFAULT_DATABASE = "postgres"
HOST = "127.0.0.1"
#: From initdb to accepting connections takes 1 to 2 s on an idle 2-CPU machine;
#: this allows for a machine loaded by the other tests.
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
#: Tries with a new free port when another process took the previous one first.
_PORT_ATTEMPTS = 3
_PORT_TAKEN = ("could not bind IPv4 address", "Address already in use")
#: Database names :meth:`PostgresServer.create_database` accepts: what needs no
#: quoting in SQL or in a URL, and keeps its case.
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

INSTALL_HINT = (
    "install Debian's PostgreSQL server: `apt-get install -y postgresql` (or `make postgres`, which runs "
    "it with sudo when not root), or point PG_BIN at a directory holding " + ", ".join(BINARIES)
)

#: Settings for a throwaway cluster, appended to its postgresql.conf. The port
#: is given on the command line (it changes when a start is retried).
_SETTINGS = """
# tools/postgres.py: a throwaway cluster for tests
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
"""
#: Trust from 127.0.0.1 only: the server listens nowhere else and has no Unix socket.
_HBA = """# tools/postgres.py: trust from 127.0.0.1 only
host all all 127.0.0.1/32 trust
"""


class PostgresToolsError(RuntimeError):
    """PostgreSQL's server binaries (or the user to run them as) are missing; the
    message says what to install."""


class PostgresStartError(RuntimeError):
    """The server did not come up; the message ends with the tail of its log."""


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    """``/usr/lib/postgresql/15/bin`` sorts as (15,), ``9.6`` as (9, 6)."""
    return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name)) or (0,)


def _missing(bin_dir: Path) -> list[str]:
    return [name for name in BINARIES if not os.access(bin_dir / name, os.X_OK)]


def find_bin_dir() -> Path:
    """The directory of ``initdb``, ``pg_ctl``, ``postgres`` and ``pg_isready``:
    ``PG_BIN`` if set, else the newest ``/usr/lib/postgresql/*/bin`` that has them
    all. Raises :class:`PostgresToolsError` saying what to install."""
    override = os.environ.get(BIN_ENV)
    if override:
        bin_dir = Path(override)
        missing = _missing(bin_dir)
        if missing:
            raise PostgresToolsError(
                f"{BIN_ENV}={override} has no {', '.join(missing)}: {INSTALL_HINT}"
            )
        return bin_dir
    candidates = sorted((d for d in DEBIAN_ROOT.glob("*/bin") if not _missing(d)), key=_version_key)
    if not candidates:
        raise PostgresToolsError(
            f"PostgreSQL's server binaries are not installed (no {DEBIAN_ROOT}/*/bin with "
            f"{', '.join(BINARIES)}): {INSTALL_HINT}"
        )
    return candidates[-1]


def server_processes(data_dir: str | os.PathLike[str]) -> list[int]:
    """The live processes of the cluster in ``data_dir`` (the postmaster and its
    children): every one of them has the data directory as its working directory.
    Zombies do not count. Linux only (``/proc``); seen as root, every user's
    processes, otherwise this user's."""
    target = os.path.realpath(data_dir)
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cwd = os.readlink(entry / "cwd")
            text = (entry / "stat").read_text()
        except OSError:  # gone, or another user's
            continue
        if cwd.removesuffix(" (deleted)") != target:
            continue
        if text[text.rfind(")") + 2 :].split()[0] != "Z":  # the state, after "pid (comm) "
            found.append(int(entry.name))
    return found


def _reachable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` can traverse every directory from / down to ``path``."""
    for directory in (path, *path.parents):
        try:
            info = directory.stat()
        except OSError:
            return False
        if info.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid == user.pw_gid or info.st_gid in os.getgrouplist(user.pw_name, user.pw_gid):
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


class PostgresServer:
    """``with PostgresServer() as server: engine = create_engine(server.url) ...``

    A fresh PostgreSQL cluster in a temporary directory (``directory``: the data
    directory ``data`` and the server's log ``server.log``), listening on
    ``127.0.0.1:port`` (a free port unless ``port`` is given), with the superuser
    ``postgres`` trusted from 127.0.0.1. :meth:`stop` (or the end of the ``with``
    block) stops it and removes the directory.
    """

    def __init__(self, *, port: int | None = None, startup_timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
        self._port_given = port is not None
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.user = SUPERUSER
        self.bin_dir: Path | None = None
        #: The private directory holding ``data`` and ``server.log``; None once stopped.
        self.directory: Path | None = None
        #: The postmaster's process id, once started.
        self.pid: int | None = None
        #: Seconds from initdb until the server accepted connections.
        self.startup_seconds: float | None = None
        self._os_user: pwd.struct_passwd | None = None
        self._runuser: str | None = None

    @property
    def data_dir(self) -> Path | None:
        return self.directory / "data" if self.directory is not None else None

    @property
    def log_path(self) -> Path | None:
        return self.directory / "server.log" if self.directory is not None else None

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the default database, ``postgres``."""
        return self.database_url(DEFAULT_DATABASE)

    def database_url(self, name: str) -> str:
        """``postgresql+psycopg://postgres@127.0.0.1:PORT/name``."""
        return f"postgresql+psycopg://{self.user}@{HOST}:{self.port}/{name}"

    # --- Starting ------------------------------------------------------------

    def start(self) -> PostgresServer:
        if self.directory is not None:
            raise RuntimeError(f"the PostgreSQL server on {HOST}:{self.port} is already started")
        self.bin_dir = find_bin_dir()
        self._choose_os_user()
        started = time.monotonic()
        self.directory = self._make_directory()
        atexit.register(self.stop)
        try:
            self._initdb()
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                try:
                    self._start_server(started + self.startup_timeout)
                    break
                except PostgresStartError as err:
                    if self._port_given or attempt == _PORT_ATTEMPTS or not any(s in str(err) for s in _PORT_TAKEN):
                        raise
                    self.port = free_port()  # another process took it between free_port() and the bind
            self._wait_ready(started + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _choose_os_user(self) -> None:
        if os.geteuid() != 0:
            return
        try:
            self._os_user = pwd.getpwnam(SERVER_OS_USER)
        except KeyError:
            raise PostgresToolsError(
                f"PostgreSQL refuses to run as root and there is no `{SERVER_OS_USER}` system user to run it as "
                f"(Debian's package creates it): {INSTALL_HINT}"
            ) from None
        self._runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
        if self._runuser is None:
            raise PostgresToolsError(
                f"running PostgreSQL as `{SERVER_OS_USER}` from root needs `runuser` (util-linux), not found"
            )

    def _make_directory(self) -> Path:
        """A new private directory the server's user owns. As root, in the first
        temporary directory that user can reach."""
        if self._os_user is None:
            return Path(tempfile.mkdtemp(prefix="postgres-"))
        user = self._os_user
        bases = dict.fromkeys([tempfile.gettempdir(), "/tmp", "/var/tmp"])
        base = next((b for b in bases if _reachable_by(Path(b).resolve(), user)), None)
        if base is None:
            raise PostgresStartError(f"none of {', '.join(bases)} is reachable by the `{user.pw_name}` user")
        directory = Path(tempfile.mkdtemp(prefix="postgres-", dir=base))
        os.chown(directory, user.pw_uid, user.pw_gid)
        return directory

    def _command(self, name: str, *args: str) -> list[str]:
        assert self.bin_dir is not None
        command = [str(self.bin_dir / name), *args]
        if self._os_user is not None and name != "pg_isready":
            assert self._runuser is not None
            command = [self._runuser, "-u", self._os_user.pw_name, "--", *command]
        return command

    def _run(self, command: Sequence[str], timeout: float) -> tuple[int, str]:
        """Run a PostgreSQL program in the cluster's directory and return its exit
        status and output. It runs in a session of its own (a Ctrl-C in the
        terminal is for us), with an environment that no ``PG*`` variable of the
        caller's redirects, and messages in English. After ``timeout`` its whole
        group is killed (runuser, initdb and initdb's own children: killing
        runuser alone would leave them holding the output pipe) and
        :class:`subprocess.TimeoutExpired` raised."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_"))}
        env.update(LC_ALL="C", LANG="C")
        process = subprocess.Popen(list(command), cwd=self.directory, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        try:
            output, _ = process.communicate(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            signal_group(process.pid, signal.SIGKILL)
            process.communicate()
            raise
        return process.returncode, output.strip()

    def _initdb(self) -> None:
        assert self.data_dir is not None
        command = self._command("initdb", "-D", str(self.data_dir), "-U", self.user, "--auth=trust",
                                "--encoding=UTF8", "--locale=C", "--no-sync")
        try:
            status, output = self._run(command, self.startup_timeout)
        except subprocess.TimeoutExpired as err:
            raise PostgresStartError(f"initdb did not finish within {self.startup_timeout:.0f} s") from err
        if status != 0:
            raise PostgresStartError(f"initdb failed with status {status} ({' '.join(command)}):\n{output}")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(_SETTINGS)
        (self.data_dir / "pg_hba.conf").write_text(_HBA)  # as root, the file keeps its owner

    def _start_server(self, deadline: float) -> None:
        assert self.data_dir is not None and self.log_path is not None
        seconds = max(int(deadline - time.monotonic()), 1)
        command = self._command("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path),
                                "-o", f"-p {self.port}", "-w", "-t", str(seconds))
        try:
            status, output = self._run(command, seconds + 10)
        except subprocess.TimeoutExpired:
            status, output = -1, f"pg_ctl start did not return within {seconds + 10} s"
        if status != 0:
            message = (f"PostgreSQL did not start on {HOST}:{self.port}: {output}\n"
                       f"end of {self.log_path}:\n{self.log_tail()}")
            self._kill_cluster()  # pg_ctl gave up waiting, but the postmaster may be running
            raise PostgresStartError(message)
        self.pid = self._postmaster_pid()

    def _wait_ready(self, deadline: float) -> None:
        """pg_ctl waits for the postmaster to report itself ready; pg_isready then
        checks that it accepts connections on its TCP port."""
        while True:
            try:
                status, output = self._run(self._command("pg_isready", "-h", HOST, "-p", str(self.port),
                                                         "-U", self.user, "-d", DEFAULT_DATABASE, "-t", "2"), 10)
            except subprocess.TimeoutExpired:
                status, output = -1, "no answer within 10 s"
            if status == 0:
                return
            assert self.data_dir is not None
            if not server_processes(self.data_dir):
                raise PostgresStartError(f"PostgreSQL on {HOST}:{self.port} exited while starting; "
                                         f"end of {self.log_path}:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise PostgresStartError(
                    f"PostgreSQL on {HOST}:{self.port} did not accept connections within "
                    f"{self.startup_timeout:.0f} s (pg_isready: {output}); "
                    f"end of {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.1)

    def _postmaster_pid(self) -> int | None:
        assert self.data_dir is not None
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        return None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log."""
        return log_tail(self.log_path, lines)

    # --- Databases -----------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL. ``name``: lowercase
        letters, digits and ``_``, at most 63, not starting with a digit."""
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(f"database name {name!r}: use lowercase letters, digits and _ (at most 63, "
                             "not starting with a digit)")
        self._execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, closing the connections still open to it."""
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(f"database name {name!r}")
        self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _execute(self, statement: str) -> None:
        import psycopg  # here, not at the top: starting a server does not need the client

        if self.directory is None:
            raise RuntimeError("the PostgreSQL server is not started")
        with psycopg.connect(host=HOST, port=self.port, user=self.user, dbname=DEFAULT_DATABASE,
                             autocommit=True, connect_timeout=10) as connection:
            connection.execute(statement)

    # --- Stopping ------------------------------------------------------------

    def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """``pg_ctl stop -m fast`` (disconnects the clients, then shuts down
        cleanly), SIGKILL to any process of the cluster still there after
        ``grace_seconds``, then remove the directory. Safe to call more than once."""
        directory = self.directory
        if directory is None:
            return
        atexit.unregister(self.stop)
        assert self.data_dir is not None
        if server_processes(self.data_dir):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._run(self._command("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w",
                                        "-t", str(max(int(grace_seconds), 1))), grace_seconds + 10)
        self._kill_cluster()
        shutil.rmtree(directory, ignore_errors=True)
        self.directory = None
        self.pid = None

    def _kill_cluster(self, timeout: float = 10.0) -> None:
        """SIGKILL to every process of the cluster, and wait until they are gone."""
        assert self.data_dir is not None
        deadline = time.monotonic() + timeout
        while pids := server_processes(self.data_dir):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"PostgreSQL processes {pids} of {self.data_dir} outlived SIGKILL")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m tools.postgres",
                                     description="A throwaway PostgreSQL server on 127.0.0.1 until Ctrl-C.")
    parser.add_argument("--port", type=int, default=None, help="Default: a free port.")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Ctrl-C stops it even when started in the background (where SIGINT is inherited ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with PostgresServer(port=args.port) as server:
            sys.stdout.write(f"PostgreSQL up in {server.startup_seconds:.1f} s: {server.url}\n"
                             f"  {server.bin_dir}/psql -h {HOST} -p {server.port} -U {server.user}; data and log in "
                             f"{server.directory}. Ctrl-C stops it and removes them.\n")
            sys.stdout.flush()
            while True:
                time.sleep(3600)
    except (PostgresToolsError, PostgresStartError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    except KeyboardInterrupt:
        sys.stdout.write("stopped the PostgreSQL server\n")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
