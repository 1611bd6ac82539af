"""Ctrl-C stops a local run within seconds, cleanly, with one line.

The launchers run as a user runs them, in their own process group, and get
SIGINT the way a terminal sends it (to the whole group) while the job is busy.
What must hold: the process ends within :data:`STOP_SECONDS` with status 130,
prints one ``interrupted:`` line and no traceback, and leaves no process (the
Pub/Sub emulator, its Java server) and no temporary folder behind, nor a
summary that could pass for the stopped run's.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.sample_fleet import generate

pytestmark = pytest.mark.alone

ROOT = Path(__file__).resolve().parents[2]
#: "Within a few seconds": the job is cancelled, the services are stopped.
STOP_SECONDS = 20


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sample")
    generate(path, seed=3, days=2, endpoints=40, organisations=2, formats=("jsonl",))
    return path


def _start(module: str, *args: str) -> tuple[subprocess.Popen, Path]:
    log = Path(args[args.index("--output_dir") + 1]).parent / f"{module.rsplit('.', 1)[1]}.log"
    process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=log.open("w"),
                               stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return process, log


def _wait_for(process: subprocess.Popen, log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{log.read_text()}"
        time.sleep(0.2)


def _interrupt(process: subprocess.Popen, log: Path) -> tuple[float, str]:
    """SIGINT to the group, as Ctrl-C sends it; seconds until the process ended, and its output."""
    sent = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return time.monotonic() - sent, log.read_text()


def _alive(pid: int) -> bool:
    """Running: not gone and not a zombie (a dead child this sandbox's init has
    not reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _processes_mentioning(path: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in command and _alive(int(proc.name)):
            found.append(f"{proc.name}: {command[:200]}")
    return found


def test_ctrl_c_stops_run_local_cleanly(sample, tmp_path):
    out = tmp_path / "out"
    process, log = _start("tools.run_local", "--sample_dir", str(sample), "--output_dir", str(out))
    _wait_for(process, log, "running the batch job", timeout=120)
    time.sleep(4)  # into the job
    took, output = _interrupt(process, log)
    assert process.returncode == 130, output
    assert took < STOP_SECONDS, f"took {took:.1f} s:\n{output}"
    assert "Traceback" not in output, output
    assert [line for line in output.splitlines() if line.startswith("interrupted:")] != [], output
    assert len([line for line in output.splitlines() if "interrupted" in line]) == 1, output
    assert not (out / "summary.json").exists()
    assert sorted(str(p.relative_to(out)) for p in out.rglob("beam-temp-*")) == []


@pytest.mark.usefixtures("pubsub_emulator")  # fails loudly without gcloud and Java
def test_ctrl_c_stops_run_local_streaming_cleanly(sample, tmp_path):
    out = tmp_path / "streaming"
    process, log = _start("tools.run_local_streaming", "--sample_dir", str(sample), "--output_dir", str(out),
                          "--run_seconds", "600", "--rate", "50")
    _wait_for(process, log, "streaming for", timeout=180)
    _wait_for(process, log, "job running", timeout=60)  # records are flowing
    took, output = _interrupt(process, log)
    assert process.returncode == 130, output
    assert took < STOP_SECONDS, f"took {took:.1f} s:\n{output}"
    assert "Traceback" not in output, output
    assert output.rstrip().splitlines()[-1].startswith("interrupted:"), output
    time.sleep(1)
    assert _processes_mentioning(out) == []  # the emulator and its Java server are gone


@pytest.fixture(scope="module")
def larger_sample(tmp_path_factory) -> Path:
    """The default sample fleet's size: the portable job is still running when Ctrl-C comes."""
    path = tmp_path_factory.mktemp("larger_sample")
    generate(path, seed=7, formats=("jsonl",))
    return path


def test_ctrl_c_stops_run_portable_cleanly(larger_sample, tmp_path):
    """On the portable runner the job runs in a job service and a worker pool,
    each its own process: both must be gone too."""
    out = tmp_path / "portable"
    process, log = _start("tools.run_portable", "--sample_dir", str(larger_sample), "--output_dir", str(out))
    _wait_for(process, log, "running the batch job", timeout=120)
    time.sleep(8)
    took, output = _interrupt(process, log)
    assert process.returncode == 130, output
    assert took < STOP_SECONDS, f"took {took:.1f} s:\n{output}"
    assert "Traceback" not in output, output
    assert len([line for line in output.splitlines() if "interrupted" in line]) == 1, output
    services = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", output)]
    assert len(services) == 2, output  # the job service and the worker pool
    time.sleep(1)
    assert [pid for pid in services if _alive(pid)] == []
    assert sorted(str(p.relative_to(out)) for p in out.rglob("beam-temp-*")) == []
