"""Local helper processes: free ports, process groups, and services that are
ready once they listen on a port.

The Pub/Sub emulator, Beam's job service and Beam's worker pool all run as child
processes of a test or a ``make`` target. Each runs in its own process group (a
new session), so that stopping it also stops the processes it started (gcloud's
JVM, the worker pool's SDK workers) and a Ctrl+C in the terminal reaches only us.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def signal_group(group: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has gone already
        os.killpg(group, signum)


def group_alive(group: int) -> bool:
    """Whether a process of the group still runs. A zombie does not count: once
    the leader has gone, a child's exit status waits for init to collect it (over
    a second on some machines), but it holds no port any more."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: trust the signal probe
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        state, _ppid, pgrp = text[text.rfind(")") + 2 :].split()[:3]  # after "pid (comm) "
        if int(pgrp) == group and state != "Z":
            return True
    return False


def wait_group_gone(process: subprocess.Popen[bytes], group: int, timeout: float) -> bool:
    """Wait until no process of the group is left; True if none is. Reaps the
    leader on the way (its children are reaped by init once it has gone)."""
    deadline = time.monotonic() + timeout
    while True:
        process.poll()
        if not group_alive(group):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop_group(process: subprocess.Popen[bytes], grace_seconds: float = 5.0) -> None:
    """SIGTERM to the process's group, SIGKILL to whatever is left after
    ``grace_seconds``. The process must have been started with
    ``start_new_session=True`` (its pid is then the group id)."""
    group = process.pid
    signal_group(group, signal.SIGTERM)
    if not wait_group_gone(process, group, grace_seconds):
        signal_group(group, signal.SIGKILL)
        wait_group_gone(process, group, grace_seconds)


def log_tail(path: Path | None, lines: int = 30) -> str:
    """The last lines of a service's log, for error messages."""
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_bytes().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


class ServiceStartError(RuntimeError):
    """A local service exited or did not listen in time; the message has its log."""


class PortService:
    """A command run in its own process group, ready once it listens on
    ``127.0.0.1:port``; ``with`` starts and stops it. Output goes to
    ``log_path`` (a temporary file unless given), whose end is quoted when the
    service fails to start."""

    #: Name used in messages.
    name = "service"

    def __init__(self, command: Sequence[str], port: int, *, env: Mapping[str, str] | None = None,
                 log_path: str | os.PathLike[str] | None = None, startup_timeout: float = 60.0) -> None:
        self.command = list(command)
        self.port = port
        self.env = dict(os.environ if env is None else env)
        self.startup_timeout = startup_timeout
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path is not None else None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``localhost:PORT``, what Beam's ``--job_endpoint`` and
        ``--environment_config`` take."""
        return f"localhost:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> PortService:
        if self._process is not None:
            raise RuntimeError(f"the {self.name} on {self.address} is already started")
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix=f"{self.name.replace(' ', '-')}-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        atexit.register(self.stop)
        try:
            self._wait_until_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_listening(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while not port_open("127.0.0.1", self.port):
            status = self._process.poll()
            if status is not None:
                raise ServiceStartError(f"the {self.name} exited with status {status} before listening on "
                                        f"{self.address}; end of {self.log_path}:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise ServiceStartError(f"the {self.name} did not listen on {self.address} within "
                                        f"{self.startup_timeout:.0f} s; end of {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop the service and everything it started. Safe to call more than once;
        a temporary log is removed."""
        process, self._process = self._process, None
        if process is not None:
            atexit.unregister(self.stop)
            stop_group(process, grace_seconds)
        if self._own_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def __enter__(self) -> PortService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
