"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by
Playwright's sync API.

Playwright's own browser download (``playwright install``) needs the internet, so
the tests run the distribution's Chromium (``make chromium`` installs it) through
``executable_path``; the driver Playwright talks to (node) ships inside its wheel
and needs no network.

- :func:`find_chromium`: the binary: ``$CHROMIUM`` if set, else
  ``/usr/bin/chromium`` or ``/usr/bin/chromium-browser``; when there is none,
  :class:`ChromiumMissingError` says what to install.
- :func:`headless_chromium`: a context manager yielding a Playwright ``Browser``
  launched with :data:`CHROMIUM_FLAGS`; at exit the browser and the driver are
  closed and no Chromium process of this launch is left (any left after a grace
  period is killed, with a warning).
- :func:`save_screenshot`: a page's PNG under a given directory.
- :func:`chromium_processes`: the live processes whose command line names a
  directory (a launch's work directory or its ``--user-data-dir``), from ``/proc``.

One Playwright sync API runs per thread at a time: while the session's ``browser``
fixture is open, a test that wants a browser of its own calls
:func:`headless_chromium` from another thread.

Each launch gets a new, empty profile: Playwright creates its
``--user-data-dir`` (it refuses one in ``args``) with ``mkdtemp`` in the driver's
temporary directory, and deletes it when the browser closes. This module points
that temporary directory (the driver's ``TMPDIR``) at a
work directory of its own. Chromium's home, XDG directories and temporary
directory are in it too (:func:`_chromium_env`), so nothing is written to the
user's home and every process of a launch, its crash handlers included, names that
directory on its command line and can be found in ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

#: Environment variable naming the Chromium binary to run instead of the system's.
CHROMIUM_ENV = "CHROMIUM"
#: Where Debian's ``chromium`` package (and Ubuntu's older ``chromium-browser``) put it.
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
INSTALL_HINT = "install Debian's Chromium: `make chromium` (or, as root, `apt-get install -y chromium`)"

#: The flags every launch passes. Playwright adds its own defaults (some the same).
CHROMIUM_FLAGS = (
    "--headless",
    # Chromium's sandbox cannot run as root (tests here do); Playwright passes it too by default.
    "--no-sandbox",
    "--disable-gpu",  # no GPU on the test machines; software rendering
    # No network beyond what a test asks for: this machine's closed network refuses every
    # other connection, and Chromium's background fetches (component and variation updates,
    # sync, QUIC probes, first-run pages) would fail or stall a launch.
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

#: Seconds for Chromium to start and answer Playwright (a loaded 2-core machine is slow).
LAUNCH_TIMEOUT_SECONDS = 60.0
#: The longest work directory: Chromium's temporary directory is in it, where its singleton
#: socket (``<dir>/org.chromium.Chromium.XXXXXX/SingletonSocket``, 46 more bytes) must fit a
#: Unix socket path (107 bytes); a longer one and Chromium exits at start.
MAX_WORKDIR_BYTES = 61
#: Seconds for a launch's processes to exit after the browser closed, before SIGKILL:
#: well under one when the machine keeps up; the rest is for one at nice 19 beside
#: Flink's JVMs, where a slow exit is not a leftover.
EXIT_GRACE_SECONDS = 20.0


class ChromiumMissingError(RuntimeError):
    """No Chromium to run (or no Playwright); the message says what to install."""


def find_chromium(paths: Sequence[str | os.PathLike[str]] = CHROMIUM_PATHS) -> Path:
    """The Chromium binary to run: ``$CHROMIUM`` if set (a path or a name on
    ``PATH``; it must be executable), else the first executable of ``paths``."""
    override = os.environ.get(CHROMIUM_ENV)
    if override:
        found = shutil.which(override)  # a path, or a name on PATH
        if found is not None:
            return Path(found)
        raise ChromiumMissingError(f"{CHROMIUM_ENV}={override} is not an executable: point it at a Chromium "
                                   f"binary, or unset it and {INSTALL_HINT}")
    for candidate in map(Path, paths):
        if _executable(candidate):
            return candidate
    raise ChromiumMissingError(f"no Chromium at {' or '.join(map(str, paths))}: {INSTALL_HINT}, "
                               f"or set {CHROMIUM_ENV}=/path/to/chromium")


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def check_browser_tools() -> Path:
    """The Chromium binary (:func:`find_chromium`), once Playwright is known to be
    importable; :class:`ChromiumMissingError` says what to install otherwise."""
    executable = find_chromium()
    _require_playwright()
    return executable


def _require_playwright() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        raise ChromiumMissingError(f"the `playwright` package is not installed in this Python ({err}): "
                                   "install it into the venv (not its browsers: `playwright install` "
                                   "needs the internet; the tests run Debian's Chromium)") from err


@contextlib.contextmanager
def headless_chromium(executable: str | os.PathLike[str] | None = None, *,
                      workdir: str | os.PathLike[str] | None = None,
                      extra_args: Sequence[str] = ()) -> Iterator[Browser]:
    """Launch headless Chromium (``executable``, else :func:`find_chromium`) with
    :data:`CHROMIUM_FLAGS` and ``extra_args``; yield the Playwright ``Browser``.

    The profile and Chromium's temporary files go under ``workdir`` if given (it
    is kept; at most :data:`MAX_WORKDIR_BYTES` long), else under a new temporary
    directory (removed at exit). At exit the
    browser and Playwright's driver are closed, then any process still naming that
    directory is given :data:`EXIT_GRACE_SECONDS` to go and killed after that, with
    a warning. Uses Playwright's sync API: not inside a running asyncio loop."""
    binary = Path(executable) if executable is not None else find_chromium()
    _require_playwright()
    from playwright.sync_api import sync_playwright

    own_workdir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="headless-chromium-")) if own_workdir else Path(workdir).absolute()
    if len(os.fsencode(str(work))) > MAX_WORKDIR_BYTES:
        if own_workdir:
            work.rmdir()
        raise ValueError(f"{work} is too long for Chromium's temporary directory: its singleton socket "
                         f"(<dir>/org.chromium.Chromium.XXXXXX/SingletonSocket) must fit a Unix socket path "
                         f"(107 bytes); use a directory of at most {MAX_WORKDIR_BYTES} bytes"
                         f"{'' if workdir is not None else ' (a shorter TMPDIR)'}")
    work.mkdir(parents=True, exist_ok=True)
    try:
        playwright = _start_driver(sync_playwright, work)
        try:
            browser = playwright.chromium.launch(executable_path=str(binary), headless=True,
                                                 args=[*CHROMIUM_FLAGS, *extra_args], env=_chromium_env(work),
                                                 timeout=LAUNCH_TIMEOUT_SECONDS * 1000)
            try:
                yield browser
            finally:
                browser.close()
        finally:
            playwright.stop()
    finally:
        try:
            _stop_leftovers(work)
        finally:
            if own_workdir:
                shutil.rmtree(work, ignore_errors=True)


def _chromium_env(work: Path) -> dict[str, str]:
    """Chromium's environment: ours, with its home, XDG directories and temporary
    directory in ``work``. Besides the profile, Chromium writes its crash handler's
    database (``$XDG_CONFIG_HOME/chromium/Crash Reports``) and GTK's dconf cache
    (``$XDG_CACHE_HOME/dconf``): kept in ``work``, neither lands in the user's home,
    and every process of the launch names ``work`` on its command line, the crash
    handlers too (they leave Chromium's process group; their ``--database`` names it)."""
    home = work / "home"
    return {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"), "XDG_DATA_HOME": str(home / ".local" / "share"),
            "TMPDIR": str(work)}


def _start_driver(sync_playwright, tmpdir: Path):
    """Start Playwright's driver with ``TMPDIR=tmpdir``: it creates the browser's
    profile there. ``os.environ`` is restored once the driver runs (it copies the
    environment when it starts)."""
    from playwright.sync_api import Error

    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmpdir)
    try:
        return sync_playwright().start()
    except Error as err:
        if "inside the asyncio loop" not in str(err):
            raise
        # Playwright's sync API runs one driver per thread at a time; its message suggests asyncio.
        raise RuntimeError("a Playwright sync API already runs in this thread (the session's `browser` "
                           "fixture, or another headless_chromium()): use that browser (a new context "
                           "per test), or call headless_chromium() from another thread") from err
    finally:
        if saved is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = saved


def _stop_leftovers(work: Path) -> None:
    deadline = time.monotonic() + EXIT_GRACE_SECONDS
    while (left := chromium_processes(work)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not left:
        return
    warnings.warn(f"Chromium processes still running {EXIT_GRACE_SECONDS:.0f} s after the browser closed, "
                  f"killed: {', '.join(map(str, left))}", RuntimeWarning, stacklevel=3)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + EXIT_GRACE_SECONDS
    while chromium_processes(work) and time.monotonic() < deadline:
        time.sleep(0.05)


def chromium_processes(directory: str | os.PathLike[str]) -> list[int]:
    """The pids of the live processes (zombies do not count) whose command line
    contains ``directory``, this process excepted."""
    needle = os.fsencode(str(directory))
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "cmdline").read_bytes():
                continue
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        if stat[stat.rfind(")") + 2:].split()[0] != "Z":  # the state, after "pid (comm) "
            pids.append(int(entry.name))
    return sorted(pids)


def save_screenshot(page: Page, directory: str | os.PathLike[str], name: str = "page", *,
                    full_page: bool = True) -> Path:
    """Save a PNG of ``page`` as ``directory/<name>.png`` (``directory`` created;
    characters other than letters, digits, ``.``, ``_`` and ``-`` in ``name``
    become ``_``) and return its path."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{safe_file_name(name)}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def safe_file_name(name: str) -> str:
    """``name`` usable as one path component (a test's name has ``[``, ``/``, ``:``...)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "_"
