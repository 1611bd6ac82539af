"""The real Google Cloud Pub/Sub emulator, for the streaming tests and local runs.

Why the emulator and not a fake: the streaming job reads Pub/Sub through Beam's
``ReadFromPubSub``, which talks gRPC to Pub/Sub with the official client. A fake
would only prove that the job agrees with the fake; the emulator that ``gcloud``
ships speaks the real wire protocol (topics, subscriptions, attributes, acks,
ack deadlines), so what passes here passes against the service for the same
reasons. It costs a JVM start (about 1.5 s) per emulator, so the tests share one
per module.

- :class:`PubSubEmulator` runs ``gcloud beta emulators pubsub start`` on a free
  loopback port, in its own process group (gcloud starts a Java child: stopping
  gcloud alone would orphan the JVM that holds the port), with its data directory
  and log in a private directory (gcloud's default data directory is shared by
  every emulator of the user, and gcloud rewrites its ``env.yaml`` on each start).
- :func:`check_tools` says what to install when the emulator cannot run. It
  checks files and ``java -version`` only: ``gcloud components list`` is slow and
  needs the network, and ``gcloud beta emulators pubsub env-init`` only works
  once an emulator has been started.
- :func:`create_topic_and_subscription` and :func:`publish` set up and feed a
  topic; :class:`PacedPublisher` replays raw JSONL lines at a fixed rate, moving
  the records' times to the present so that a streaming job sees live data.

The client helpers only ever talk to an emulator: they take its ``host`` or read
``PUBSUB_EMULATOR_HOST``, and refuse to run without either rather than fall back
to the real service with whatever credentials the machine has.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import http.client
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import orjson
from google.api_core.exceptions import AlreadyExists
from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from schemas.records import Kind
from schemas.timestamps import parse_iso, to_epoch_ms
from tools.processes import free_port, log_tail, stop_group

#: Project ids should look like real ones (6 to 30 lowercase letters, digits and
#: hyphens), so that names which work here work against the service too.
DEFAULT_PROJECT = "demo-project"
STARTUP_TIMEOUT_SECONDS = 60.0
#: How long a stopped paced publisher waits for its publishes in flight: a live
#: emulator answers within milliseconds.
STOPPED_IN_FLIGHT_SECONDS = 5.0
#: The emulator jar (0.8.20) is Java 8 bytecode; gcloud's help says "Java JRE 7 or higher".
MIN_JAVA_VERSION = 8
EMULATOR_HOST_ENV = "PUBSUB_EMULATOR_HOST"
PROJECT_ENV = "PUBSUB_PROJECT_ID"
#: Tries with a new free port when another process took the previous one first.
_PORT_ATTEMPTS = 3
#: The emulator's main thread died (its server threads keep the JVM alive).
_FATAL = 'Exception in thread "main"'

#: The field holding a raw record's event time, as the pipeline reads it
#: (``transforms/parse.py``): when the event happened, when the usage interval ended.
TIME_FIELD: dict[Kind, str] = {"event": "timestamp", "usage": "end_timestamp"}
#: Every time field of a raw record (paths into the JSON object); a shift moves them all.
TIME_FIELDS: dict[Kind, tuple[tuple[str, ...], ...]] = {
    "event": (("timestamp",), ("pdp_context", "tunnel_created")),
    "usage": (("start_timestamp",), ("end_timestamp",)),
}

_INSTALL_CLI = (
    "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) with its emulator, "
    "`gcloud components install pubsub-emulator beta`, or on Debian/Ubuntu "
    "`apt install google-cloud-cli google-cloud-cli-pubsub-emulator`; `gcloud` must be on PATH"
)
_INSTALL_COMPONENTS = (
    "`gcloud components install pubsub-emulator beta` (for a CLI installed with apt: "
    "`apt install google-cloud-cli-pubsub-emulator`)"
)
_INSTALL_JAVA = "apt install openjdk-17-jre-headless"


class EmulatorToolsError(RuntimeError):
    """Something the emulator needs is not installed; the message says what to install."""


class EmulatorStartError(RuntimeError):
    """The emulator did not come up; the message ends with the tail of its log."""


class _PortTakenError(EmulatorStartError):
    """The emulator could not bind its port."""


@dataclass(frozen=True)
class EmulatorTools:
    """What :func:`check_tools` found."""

    gcloud: str
    java: str
    java_version: int
    sdk_root: Path
    emulator: Path


def check_tools() -> EmulatorTools:
    """Check that ``gcloud``, Java and the CLI's ``beta`` and ``pubsub-emulator``
    components are installed; raise :class:`EmulatorToolsError` naming what to
    install otherwise. Works offline in about 0.1 s (one ``java -version``)."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise EmulatorToolsError(f"the Pub/Sub emulator needs `gcloud`, which is not on PATH: {_INSTALL_CLI}")
    java = shutil.which("java")
    if java is None:
        raise EmulatorToolsError(
            f"the Pub/Sub emulator needs Java {MIN_JAVA_VERSION}+ and `java` is not on PATH ({_INSTALL_JAVA})"
        )
    java_version = _java_version(java)
    if java_version < MIN_JAVA_VERSION:
        raise EmulatorToolsError(
            f"the Pub/Sub emulator needs Java {MIN_JAVA_VERSION}+, {java} is Java {java_version} ({_INSTALL_JAVA})"
        )
    sdk_root = _sdk_root(gcloud)
    if not (sdk_root / "lib" / "surface" / "beta" / "__init__.py").is_file():
        raise EmulatorToolsError(f"`gcloud beta` is not installed in {sdk_root}: {_INSTALL_COMPONENTS}")
    emulator = sdk_root / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    if not emulator.is_file():
        raise EmulatorToolsError(
            f"the Pub/Sub emulator component is not installed in {sdk_root}: {_INSTALL_COMPONENTS}"
        )
    return EmulatorTools(gcloud, java, java_version, sdk_root, emulator)


def _java_version(java: str) -> int:
    """The major version of ``java -version`` (``1.8.0_392`` is 8, ``17.0.15`` is 17)."""
    try:
        result = subprocess.run(
            [java, "-version"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise EmulatorToolsError(f"cannot run {java} -version ({err}): {_INSTALL_JAVA}") from err
    output = result.stderr + result.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    if result.returncode != 0 or match is None:
        raise EmulatorToolsError(
            f"{java} -version failed or printed no version ({output.strip()!r}): {_INSTALL_JAVA}"
        )
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def _sdk_root(gcloud: str) -> Path:
    """The Cloud SDK's installation directory. ``gcloud`` is normally a link to
    ``<sdk root>/bin/gcloud``; when it is not (a wrapper script, a snap), ask
    ``gcloud info``, which takes about 0.6 s and works offline."""
    candidate = Path(os.path.realpath(gcloud)).parent.parent
    if (candidate / "lib" / "gcloud.py").is_file():
        return candidate
    try:
        result = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise EmulatorToolsError(f"cannot run `gcloud info` ({err}): {_INSTALL_CLI}") from err
    root = result.stdout.strip()
    if result.returncode != 0 or not root:
        raise EmulatorToolsError(
            f"`gcloud info` did not name the SDK's installation directory ({result.stderr.strip()!r}): {_INSTALL_CLI}"
        )
    return Path(root)


class PubSubEmulator:
    """``with PubSubEmulator() as emulator: ... emulator.host ...``

    Starts the emulator on ``127.0.0.1`` and a free port, waits until it answers
    and, as a context manager, points ``PUBSUB_EMULATOR_HOST`` at it until the
    block ends. ``work_dir`` keeps the log (``emulator.log``) and data directory;
    by default a temporary directory is used and removed by :meth:`stop`.
    """

    def __init__(
        self,
        project: str = DEFAULT_PROJECT,
        *,
        port: int | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
    ) -> None:
        self.project = project
        self._port_given = port is not None
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self._work_dir = Path(work_dir) if work_dir is not None else None
        self._own_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._saved_env: str | None = None
        self.log_path: Path | None = None
        #: Seconds from launching gcloud until the emulator answered.
        self.startup_seconds: float | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the value of ``PUBSUB_EMULATOR_HOST``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        """gcloud's process id, which is also the emulator's process group id."""
        return self._process.pid if self._process is not None else None

    def env(self) -> dict[str, str]:
        """The environment variables clients use to find the emulator."""
        return {EMULATOR_HOST_ENV: self.host, PROJECT_ENV: self.project}

    def start(self) -> PubSubEmulator:
        if self._process is not None:
            raise RuntimeError(f"the Pub/Sub emulator on {self.host} is already started")
        tools = check_tools()
        if self._work_dir is None:
            self._own_dir = Path(tempfile.mkdtemp(prefix="pubsub-emulator-"))
        work_dir = self._work_dir or self._own_dir
        assert work_dir is not None
        data_dir = work_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)  # gcloud fails if it is missing
        self.log_path = work_dir / "emulator.log"
        attempt = 1
        try:
            while True:
                try:
                    self._launch(tools.gcloud, data_dir)
                    return self
                except _PortTakenError:
                    # Another process took the free port before the emulator bound it.
                    if self._port_given or attempt == _PORT_ATTEMPTS:
                        raise
                    attempt += 1
                    self.port = free_port()
        except BaseException:
            self.stop()
            raise

    def _launch(self, gcloud: str, data_dir: Path) -> None:
        assert self.log_path is not None
        command = [
            gcloud, "beta", "emulators", "pubsub", "start",
            f"--host-port={self.host}", f"--project={self.project}", f"--data-dir={data_dir}", "--quiet",
        ]
        env = {
            **os.environ,
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
        }
        launched = time.monotonic()
        with self.log_path.open("wb") as log:
            # A new session is a new process group, so stop() can signal gcloud and
            # its Java child together, and a Ctrl+C in the terminal reaches only us.
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )
        atexit.register(self.stop)
        try:
            self._wait_until_ready()
        except BaseException:
            self._terminate()
            raise
        self.startup_seconds = time.monotonic() - launched

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        while True:
            status = self._process.poll()
            if status is not None:
                raise EmulatorStartError(
                    f"the Pub/Sub emulator exited with status {status} before answering on {self.url}; "
                    f"end of {self.log_path}:\n{self.log_tail()}"
                )
            # When its main thread dies (the port is taken, say), the JVM lives on
            # in its server threads and would only be noticed at the deadline.
            fatal = next((line for line in self.log_tail(200).splitlines() if _FATAL in line), None)
            if fatal is not None:
                error = _PortTakenError if "BindException" in fatal else EmulatorStartError
                raise error(
                    f"the Pub/Sub emulator failed to start on {self.host}: {fatal.strip()}; "
                    f"end of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with opener.open(f"{self.url}/", timeout=2) as response:
                    if response.status == 200:  # the emulator answers "Ok"
                        return
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() >= deadline:
                raise EmulatorStartError(
                    f"the Pub/Sub emulator did not answer on {self.url} within {self.startup_timeout:.0f} s; "
                    f"end of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the emulator's log (gcloud's and the emulator's output)."""
        return log_tail(self.log_path, lines)

    def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop gcloud and the emulator's JVM: SIGTERM to the process group, SIGKILL
        to whatever is left after ``grace_seconds``. Safe to call more than once."""
        self._terminate(grace_seconds)
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    def _terminate(self, grace_seconds: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        stop_group(process, grace_seconds)  # gcloud and its JVM: one process group

    def __enter__(self) -> PubSubEmulator:
        self.start()
        self._saved_env = os.environ.get(EMULATOR_HOST_ENV)
        os.environ[EMULATOR_HOST_ENV] = self.host
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved_env is None:
            os.environ.pop(EMULATOR_HOST_ENV, None)
        else:
            os.environ[EMULATOR_HOST_ENV] = self._saved_env
        self.stop()


# --- Clients -----------------------------------------------------------------


def emulator_host(host: str | None = None) -> str:
    """``host``, else ``PUBSUB_EMULATOR_HOST``; there is no fallback to the real service."""
    resolved = host or os.environ.get(EMULATOR_HOST_ENV)
    if not resolved:
        raise RuntimeError(
            f"no Pub/Sub emulator to talk to: pass host= or set {EMULATOR_HOST_ENV} "
            "(these helpers never publish to the real Pub/Sub service)"
        )
    return resolved


def _channel(host: str) -> grpc.Channel:
    # Plain-text gRPC to loopback; an http_proxy in the environment must not apply.
    return grpc.insecure_channel(host, options=[("grpc.enable_http_proxy", 0)])


def publisher_client(host: str | None = None) -> pubsub_v1.PublisherClient:
    """A publisher on the emulator at ``host`` (default: ``PUBSUB_EMULATOR_HOST``)."""
    return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=_channel(emulator_host(host))))


def subscriber_client(host: str | None = None) -> pubsub_v1.SubscriberClient:
    """A subscriber on the emulator at ``host`` (default: ``PUBSUB_EMULATOR_HOST``)."""
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=_channel(emulator_host(host))))


def _close_publisher(client: pubsub_v1.PublisherClient) -> None:
    client.stop()  # sends what is still batched
    client.transport.close()


def create_topic_and_subscription(
    project: str, topic: str, subscription: str, ack_deadline_seconds: int = 60, *, host: str | None = None
) -> str:
    """Create the topic and a pull subscription to it (either may already exist)
    and return the subscription's path, ``projects/P/subscriptions/S``."""
    publisher = publisher_client(host)
    topic_path = publisher.topic_path(project, topic)
    try:
        publisher.create_topic(name=topic_path)
    except AlreadyExists:
        pass
    finally:
        _close_publisher(publisher)
    with subscriber_client(host) as subscriber:
        subscription_path = subscriber.subscription_path(project, subscription)
        with contextlib.suppress(AlreadyExists):
            subscriber.create_subscription(
                name=subscription_path, topic=topic_path, ack_deadline_seconds=ack_deadline_seconds
            )
    return subscription_path


def publish(
    project: str,
    topic: str,
    messages: Iterable[bytes],
    attributes_fn: Callable[[bytes], Mapping[str, str] | None] | None = None,
    *,
    host: str | None = None,
    timeout: float = 60.0,
) -> int:
    """Publish every message (with ``attributes_fn(message)`` as its attributes),
    wait until the emulator has accepted all of them and return how many there
    were. Raises the first publish error."""
    publisher = publisher_client(host)
    topic_path = publisher.topic_path(project, topic)
    try:
        futures = []
        for data in messages:
            attributes = (attributes_fn(data) if attributes_fn else None) or {}
            futures.append(publisher.publish(topic_path, data, **attributes))
        for future in futures:
            future.result(timeout=timeout)
    finally:
        _close_publisher(publisher)
    return len(futures)


# --- Replaying raw records ---------------------------------------------------

_SECOND = timedelta(seconds=1)
_ISO_PARTS = re.compile(r"(\d{4}-\d{2}-\d{2})([Tt ])(\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})")


def shift_timestamp(value: str, offset: timedelta) -> str | None:
    """``value`` moved by ``offset`` and written the way it was: same offset and
    offset notation (``Z``, ``+02:00``, ``+0000``), same fraction digits, same
    separator. None when ``value`` is not a timestamp the pipeline accepts
    (:func:`schemas.timestamps.parse_iso`): such defects stay as they are.

    ``offset`` must be whole seconds, so that the fraction is kept verbatim."""
    if offset % _SECOND:
        raise ValueError(f"the offset must be whole seconds, not {offset}")
    try:
        parse_iso(value)
    except ValueError:
        return None
    parts = _ISO_PARTS.fullmatch(value)
    if parts is None:  # another spelling parse_iso accepts: write the extended format, same offset
        return (datetime.fromisoformat(value) + offset).isoformat()
    date, separator, clock, fraction, zone = parts.groups()
    # The offset of the value is fixed, so shifting its wall-clock time is exact.
    wall = datetime.fromisoformat(f"{date}T{clock}") + offset
    return f"{wall:%Y-%m-%d}{separator}{wall:%H:%M:%S}{fraction or ''}{zone}"


def _get(record: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def record_time(record: Mapping[str, Any], kind: Kind) -> datetime | None:
    """The record's event time (:data:`TIME_FIELD`) as aware UTC, None if invalid or missing."""
    value = record.get(TIME_FIELD[kind])
    if not isinstance(value, str):
        return None
    try:
        return parse_iso(value)
    except ValueError:
        return None


def shift_record(record: dict[str, Any], kind: Kind, offset: timedelta) -> bool:
    """Move every valid time field of the record (:data:`TIME_FIELDS`) by ``offset``
    in place; return whether anything changed."""
    changed = False
    for path in TIME_FIELDS[kind]:
        parent = _get(record, path[:-1])
        if not isinstance(parent, dict) or not isinstance(parent.get(path[-1]), str):
            continue
        shifted = shift_timestamp(parent[path[-1]], offset)
        if shifted is not None:
            parent[path[-1]] = shifted
            changed = True
    return changed


class PacedPublisher:
    """Publish raw JSONL lines to a topic at ``rate`` lines per second, in a
    background thread.

    ``kind`` says which raw records the lines are (``"event"`` or ``"usage"``),
    hence which fields carry their times (:data:`TIME_FIELDS`). With
    ``shift_to_now``, every valid time field of every record moves by the same
    whole number of seconds, chosen so that the first record's time
    (:data:`TIME_FIELD`) is the moment publishing starts (within half a second):
    the spacing between records is kept exactly, and each value keeps its offset
    and notation. Lines that are not JSON objects (the sample fleet has such
    defects on purpose) and invalid timestamps are published unchanged; empty
    lines cannot be Pub/Sub messages and are skipped (counted in ``skipped``).

    ``timestamp_attribute`` names a message attribute set to the record's (shifted)
    time in epoch milliseconds, for ``--pubsub_timestamp_attribute``. Messages
    without a valid record time get the publish time instead: Beam's Java-based
    Pub/Sub readers reject a message without the attribute, and the job dead-
    letters those records anyway.

    The pacing is by line count, not by the records' own spacing: with
    ``shift_to_now``, record times drift from the wall clock by however much the
    two differ.
    """

    def __init__(
        self,
        project: str,
        topic: str,
        lines: Iterable[bytes],
        kind: Kind,
        *,
        rate: float,
        shift_to_now: bool = False,
        restamp: bool = False,
        timestamp_attribute: str | None = None,
        host: str | None = None,
    ) -> None:
        if kind not in TIME_FIELDS:
            raise ValueError(f"kind must be one of {sorted(TIME_FIELDS)}, not {kind!r}")
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.project, self.topic, self.kind, self.rate = project, topic, kind, rate
        self.shift_to_now = shift_to_now
        #: Move each record's times so its own time is the moment it is published
        #: (a live replay at any rate); a usage record keeps its duration.
        self.restamp = restamp
        self.timestamp_attribute = timestamp_attribute
        self._lines = lines
        self._host = emulator_host(host)
        #: When publishing started (aware UTC); the first record's new time.
        self.started_at: datetime | None = None
        #: The shift applied to the records' times, once the first valid record was seen.
        self.offset: timedelta | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._published = 0
        self._skipped = 0
        self._error: BaseException | None = None
        self._in_flight: set[concurrent.futures.Future[str]] = set()
        self._thread = threading.Thread(target=self._run, name=f"paced-publisher-{topic}", daemon=True)

    @property
    def published(self) -> int:
        """Messages the emulator has accepted so far."""
        with self._lock:
            return self._published

    @property
    def skipped(self) -> int:
        """Empty lines, which were not published."""
        with self._lock:
            return self._skipped

    @property
    def error(self) -> BaseException | None:
        with self._lock:
            return self._error

    def start(self) -> PacedPublisher:
        self.started_at = datetime.now(UTC)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every line is published (or :meth:`stop` took effect); return
        False if ``timeout`` expired first. Raises the error that ended publishing."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        if self.error is not None:
            raise self.error
        return True

    def stop(self, timeout: float | None = 30.0) -> None:
        """Publish no further lines and wait for those in flight."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> PacedPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def prepare(self, line: bytes) -> tuple[bytes, datetime | None]:
        """The message for one line (shifted when asked) and its record time."""
        try:
            record = orjson.loads(line)  # the pipeline's JSON parser, so "valid" means the same
        except orjson.JSONDecodeError:
            return line, None
        if not isinstance(record, dict):
            return line, None
        moment = record_time(record, self.kind)
        if self.restamp and moment is not None:
            # Every record at the moment it is published: event time keeps pace
            # with the wall clock whatever the publishing rate.
            offset = round((datetime.now(tz=UTC) - moment) / _SECOND) * _SECOND
            if shift_record(record, self.kind, offset):
                return orjson.dumps(record), moment + offset
            return line, moment
        if not self.shift_to_now:
            return line, moment
        if self.offset is None:
            if moment is None:  # nothing to anchor the shift to yet
                return line, None
            assert self.started_at is not None
            self.offset = round((self.started_at - moment) / _SECOND) * _SECOND
        if not shift_record(record, self.kind, self.offset):
            return line, moment
        return orjson.dumps(record), (moment + self.offset if moment is not None else None)

    def _run(self) -> None:
        client: pubsub_v1.PublisherClient | None = None
        try:
            client = publisher_client(self._host)
            topic_path = client.topic_path(self.project, self.topic)
            began = time.monotonic()
            sent = 0
            for raw in self._lines:
                if self._stop.is_set():
                    break
                line = raw[:-1] if raw.endswith(b"\n") else raw
                line = line[:-1] if line.endswith(b"\r") else line
                if not line:
                    with self._lock:
                        self._skipped += 1
                    continue
                delay = began + sent / self.rate - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                data, moment = self.prepare(line)
                attributes: dict[str, str] = {}
                if self.timestamp_attribute:
                    attributes[self.timestamp_attribute] = str(to_epoch_ms(moment or datetime.now(UTC)))
                future = client.publish(topic_path, data, **attributes)
                with self._lock:
                    self._in_flight.add(future)
                future.add_done_callback(self._done)  # runs at once if already done
                sent += 1
        except BaseException as err:  # noqa: BLE001 - handed to join()
            self._fail(err)
        finally:
            with self._lock:
                in_flight = set(self._in_flight)
            # Stopped, it waits briefly: after a Ctrl-C, which reaches the emulator's
            # process group too, what is in flight never gets an answer (two
            # publishers waiting 30 s each made a Ctrl-C take 62 s, 2026-12-04).
            concurrent.futures.wait(in_flight, timeout=STOPPED_IN_FLIGHT_SECONDS if self._stop.is_set() else 60)
            if client is not None:
                _close_publisher(client)

    def _done(self, future: concurrent.futures.Future[str]) -> None:
        error = future.exception()
        with self._lock:
            self._in_flight.discard(future)
            if error is None:
                self._published += 1
        if error is not None:
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = error
        self._stop.set()


class Ticker:
    """Publishes a tick message to a topic every ``interval_seconds`` in a
    background thread: the refresh signal of a streaming run on the DirectRunner
    (``--refresh_subscription``), where PeriodicImpulse cannot run beside
    ReadFromPubSub."""

    def __init__(self, project: str, topic: str, interval_seconds: float, *, host: str | None = None) -> None:
        self._project, self._topic, self._interval, self._host = project, topic, interval_seconds, host
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ticker-{topic}", daemon=True)
        self.ticks = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            publish(self._project, self._topic, [b"tick"], host=self._host)
            self.ticks += 1
            self._stop.wait(self._interval)

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def __enter__(self) -> Ticker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
