"""README's commands, as a new user types them: every ``make`` command of
README.md's code blocks, in order, on one fresh clone of this repository, each
checked for what README says it does.

The clone is ``git clone`` of the committed tree (what CI checks out). It uses
this checkout's ``.venv`` (``VENV=``) instead of installing a second copy of the
pinned dependencies: the clone's install inputs are dated back so make finds the
venv up to date, and ``python -m`` puts the clone first on ``sys.path``, so the
clone's own modules run. ``make local-destinations &`` is started in the
background, as README shows it, and stopped after the last command.

Not run here, and why: ``make test`` and ``make test-fast`` are this suite (it
would run itself).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The suite itself.
NOT_RUN = {"make test", "make test-fast"}

#: What each command must print (regular expressions), by its target.
EXPECTED = {
    "run-local": [
        r"portal: http://127\.0\.0\.1:\d+/portal/data-streams \(sign in with the operator key in "
        r"out/portal/operator\.key",
        r"running the batch job \(FnApiRunner\)",
        r"\[ +\d+ s\] job running",
        r"reconciled: read = documents \+ duplicates \+ dead letters: yes",
        r"reconciled: documents = routed \+ filtered: yes",
        r"rest-history-80111 +5261 +0 +5261",
        r"rest_api +rest-events-80025 +7742 requests +7742 documents",
        r"rest_api_bulk rest-bulk-80025 +9 requests +22848 documents",
        r"aws_kinesis +kinesis-usage-80025 +15106 records",
        r"aws_s3 +s3-both-80025 +1208 files +22848 rows",
        r"datadog +datadog-80025 +1560 payloads +19324 series",
        r"rest_api_bulk rest-history-80111 +0 requests +0 documents",
    ],
    "status": [r"Stream status", r"rest-history-80111 .* - +active"]
    + [rf"\n  {stream} " for stream in ("datadog-80025", "kinesis-usage-80025", "rest-bulk-80025",
                                         "rest-bulk-alerts-80111", "rest-events-80025", "s3-both-80025",
                                         "s3-events-80111")],
    "local-destinations": [r"local destinations up: HTTP receiver http://127\.0\.0\.1:\d+",
                           r"out/portal\.db: 8 streams of make run-local's portal store point at them now"],
    "backfill": [r"rest-bulk-80025 +171 +171 +0 +0 +0 +0 +yes", r"rest_api_bulk +1 +171 +0"],
    "redrive": [r"re-driving 0 parked batches of stream rest-bulk-80025"],
    "historic": [r"history delivered: 2636 documents", r"re-driving 4 parked batches of stream rest-history-80111",
                 r"delivered 2625 documents", r"no wait: the last live job to write status to \S+ was a batch run",
                 r"live data released: 6 held batches \(5261 documents\): 2636 dropped as already delivered as "
                 r"history, 2625 re-driven"],
}


def readme_commands() -> list[tuple[str, bool]]:
    """``(command, in the background)`` of every ``make`` line in README's code
    blocks, in order, comments stripped."""
    commands, in_block = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        command = line.split("#", 1)[0].strip()
        if in_block and command.startswith("make "):
            background = command.endswith("&")
            commands.append((command.rstrip("&").strip(), background))
    return commands


def test_readme_shows_the_commands_this_test_checks():
    targets = [command.split()[1] for command, _ in readme_commands() if command not in NOT_RUN]
    assert targets[0] == "run-local"
    assert set(targets) == set(EXPECTED), "a README command without expectations here, or the reverse"


def _target(command: str) -> str:
    return command.split()[1]


def _check(command: str, output: str) -> None:
    missing = [pattern for pattern in EXPECTED[_target(command)] if not re.search(pattern, output)]
    assert missing == [], f"{command}: missing {missing} in:\n{output[-4000:]}"


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    venv = ROOT / ".venv"
    if not (venv / "bin" / "python").exists():
        pytest.fail(f"{venv} is missing: run the suite through make test", pytrace=False)
    path = tmp_path_factory.mktemp("readme") / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(path)], check=True, timeout=120)
    for name in ("setup.py", "requirements-dev.txt", "requirements-portal.txt", "constraints.txt"):
        os.utime(path / name, (0, 0))  # older than the venv's stamp: make installs nothing
    env = {**os.environ, "VENV": str(venv), "PYTHONUNBUFFERED": "1"}
    env.pop("MAKEFLAGS", None)
    return path, env


#: (state, remote status, has last data) of each sample stream in the portal after make run-local.
AFTER_RUN_LOCAL = {
    "datadog-80025": ("Running", "202", True), "kinesis-usage-80025": ("Running", "200", True),
    "rest-bulk-80025": ("Running", "202", True), "rest-bulk-alerts-80111": ("Running", "202", True),
    "rest-events-80025": ("Running", "202", True), "s3-both-80025": ("Running", "200", True),
    "s3-events-80111": ("Running", "200", True), "rest-history-80111": ("Pending", None, False),
}


def _portal_streams(path: Path) -> dict[str, dict]:
    """The portal's view of the store make run-local left (make run-portal
    serves it), by stream id."""
    from fastapi.testclient import TestClient

    from portal.app import PortalSettings, create_app
    from portal.auth import KEY_HEADER

    key = (path / "out" / "portal" / "operator.key").read_text().strip()
    sealing = (path / "out" / "portal" / "sealing.key").read_text().strip()
    app = create_app(PortalSettings(database_url=f"sqlite:///{path / 'out' / 'portal.db'}", sealing_keys=[sealing]))
    streams = TestClient(app).get("/api/v1/data-streams", headers={KEY_HEADER: key}).json()
    return {s["id"]: s for s in streams}


def _check_portal_overview(path: Path, expected: dict[str, tuple[str, str | None, bool]]) -> dict[str, dict]:
    """Every sample stream in the portal's overview, with its state, last data
    and remote status."""
    streams = _portal_streams(path)
    seen = {stream_id: (s["status"]["state"], s["status"]["remote_status"], bool(s["status"]["last_data"]))
            for stream_id, s in streams.items()}
    assert seen == expected, seen
    return streams


def test_every_readme_command_does_what_readme_says(clone):
    path, env = clone
    background: subprocess.Popen | None = None
    background_log = path / "background.log"
    try:
        for command, in_background in readme_commands():
            if command in NOT_RUN:
                continue
            if in_background:
                log = background_log.open("w")
                background = subprocess.Popen(command.split(), cwd=path, env=env, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True)
                deadline = time.monotonic() + 120
                while "local destinations up" not in background_log.read_text():
                    assert background.poll() is None, background_log.read_text()
                    assert time.monotonic() < deadline, f"{command} did not come up:\n{background_log.read_text()}"
                    time.sleep(0.5)
                _check(command, background_log.read_text())
                continue
            result = subprocess.run(command.split(), cwd=path, env=env, capture_output=True, text=True,
                                    timeout=900)
            output = result.stdout + result.stderr
            assert result.returncode == 0, f"{command} exited {result.returncode}:\n{output[-4000:]}"
            _check(command, output)
            if command == "make run-local":
                _check_portal_overview(path, AFTER_RUN_LOCAL)
            if _target(command) == "historic":
                # make historic worked on the portal's store (make local-destinations
                # pointed its streams at the new ports): the stream runs now, and its
                # history and the live data it released count as delivered.
                running = ("Running", "202", True)
                after = _check_portal_overview(path, {**AFTER_RUN_LOCAL, "rest-history-80111": running})
                assert after["rest-history-80111"]["status"]["delivered_last_day"] == 2636 + 2625
    finally:
        if background is not None:
            os.killpg(background.pid, signal.SIGINT)  # Ctrl-C, as README says
            try:
                background.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(background.pid, signal.SIGKILL)
                raise
    assert background is not None, "README shows no background command"
    # make itself ends by the signal; what matters is that the destinations stopped cleanly.
    assert "stopped the local destinations" in background_log.read_text(), background_log.read_text()
