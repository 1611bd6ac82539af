"""The browser tooling (``tools/browser.py`` and the ``browser``, ``page`` and
``screenshot_dir`` fixtures) against a real headless Chromium and a real HTTP
server on 127.0.0.1: a form filled and posted, a ``confirm()`` dialog accepted
and dismissed, screenshots written, what to install when Chromium is missing, and
no Chromium process left once a browser is closed."""

from __future__ import annotations

import concurrent.futures
import html
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from tools.browser import (
    CHROMIUM_ENV,
    CHROMIUM_FLAGS,
    ChromiumMissingError,
    chromium_processes,
    find_chromium,
    headless_chromium,
    save_screenshot,
)

ROOT = Path(__file__).resolve().parents[2]
STREAM_PATH = "/streams/rest-bulk-80025"

FORM_PAGE = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Stream rest-bulk-80025</title></head>
<body>
<h1>Stream rest-bulk-80025</h1>
<form id="settings" method="post" action="{STREAM_PATH}">
  <label>Name <input name="name" required></label>
  <label>Batch size <input name="batch_size" type="number"></label>
  <label>Format <select name="format"><option value="json">JSON</option>
    <option value="csv">CSV</option></select></label>
  <label><input type="checkbox" name="enabled" value="yes"> Enabled</label>
  <button type="submit" id="save">Save</button>
</form>
<p id="status"></p>
<script>
document.getElementById("settings").addEventListener("submit", (event) => {{
  if (!confirm("Save stream " + event.target.elements.name.value + "?")) {{
    event.preventDefault();
    document.getElementById("status").textContent = "Not saved";
  }}
}});
</script>
</body></html>
"""


@dataclass
class FormServer:
    """A real HTTP server on 127.0.0.1 serving :data:`FORM_PAGE` at ``/`` and
    recording every POST as ``(path, fields)``."""

    url: str = ""
    posts: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)


@pytest.fixture
def form_server() -> Iterator[FormServer]:
    state = FormServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/":
                self._reply(404, "<p>not found</p>")
            else:
                self._reply(200, FORM_PAGE)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode("utf-8")
            fields = parse_qs(body, keep_blank_values=True)
            state.posts.append((self.path, fields))
            name = html.escape(fields.get("name", [""])[0])
            self._reply(200, f'<!doctype html><meta charset="utf-8"><p id="saved">Saved {name}</p>')

        def _reply(self, status: int, text: str) -> None:
            payload = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="form-server", daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header (its signature checked)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def fill_form(page) -> None:
    page.fill("input[name=name]", "Zoë's <bulk> stream")
    page.fill("input[name=batch_size]", "500")
    page.select_option("select[name=format]", "csv")
    page.check("input[name=enabled]")


def test_accepted_confirm_posts_the_form(page, form_server, screenshot_dir):
    dialogs: list[tuple[str, str]] = []

    def on_dialog(dialog) -> None:
        dialogs.append((dialog.type, dialog.message))
        dialog.accept()

    page.on("dialog", on_dialog)
    page.goto(form_server.url)
    fill_form(page)
    filled = save_screenshot(page, screenshot_dir, "filled")
    page.click("#save")
    page.wait_for_selector("#saved")

    assert dialogs == [("confirm", "Save stream Zoë's <bulk> stream?")]
    assert page.text_content("#saved") == "Saved Zoë's <bulk> stream"
    assert form_server.posts == [(STREAM_PATH, {"name": ["Zoë's <bulk> stream"], "batch_size": ["500"],
                                                "format": ["csv"], "enabled": ["yes"]})]
    saved = save_screenshot(page, screenshot_dir, "saved")
    assert screenshot_dir == ROOT / "out" / "screenshots" / "test_accepted_confirm_posts_the_form"
    assert sorted(screenshot_dir.iterdir()) == [filled, saved]
    for shot in (filled, saved):
        assert shot.stat().st_size > 0
        width, height = png_size(shot)
        assert width > 0 and height > 0


def test_dismissed_confirm_posts_nothing(page, form_server, screenshot_dir):
    dialogs: list[str] = []

    def on_dialog(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(form_server.url)
    fill_form(page)
    page.click("#save")
    page.wait_for_function("document.getElementById('status').textContent === 'Not saved'")

    assert dialogs == ["Save stream Zoë's <bulk> stream?"]
    assert page.url == form_server.url
    assert page.input_value("input[name=batch_size]") == "500"  # still on the filled form
    # The submit was cancelled inside the click's own event handler: no request can be on its way.
    assert form_server.posts == []
    shot = save_screenshot(page, screenshot_dir, "not saved")
    assert shot == screenshot_dir / "not_saved.png" and shot.stat().st_size > 0


def in_thread(function):
    """``function()``'s result, run in a thread of its own (Playwright's sync API
    runs one driver per thread: the session's ``browser`` may hold this one's)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="own-browser") as pool:
        return pool.submit(function).result(timeout=300)


def process_group(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2:].split()[2])


def group_members(group: int) -> set[int]:
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if process_group(int(entry.name)) == group:
                    members.add(int(entry.name))
            except (OSError, IndexError, ValueError):  # ended while we looked
                continue
    return members


def test_closing_leaves_no_chromium_process(form_server):
    """Every process of a launch names its work directory (the profile, the
    ``--user-data-dir`` Playwright creates, is in it); once the browser is closed,
    none is left, without the kill of leftovers being needed, and the profile is gone."""
    # Not under tmp_path: Chromium's temporary directory is in the work directory, and its
    # singleton socket's path must fit 107 bytes (tools.browser.MAX_WORKDIR_BYTES).
    work = Path(tempfile.mkdtemp(prefix="chromium-test-"))

    def launch_and_close() -> dict[str, object]:
        seen: dict[str, object] = {}
        started = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with headless_chromium(workdir=work) as browser:
                seen["launch"] = time.monotonic() - started
                page = browser.new_page()
                page.goto(form_server.url)
                seen["title"] = page.title()
                pids = chromium_processes(work)
                seen["command_lines"] = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                                         for pid in pids}
                main = next(pid for pid, args in seen["command_lines"].items()
                            if not any(arg.startswith(b"--type=") for arg in args)
                            and any(arg.startswith(b"--user-data-dir=") for arg in args))
                seen["main"] = main
                seen["group"] = group_members(process_group(main))
                closing = time.monotonic()
        seen["close"] = time.monotonic() - closing
        seen["warnings"] = [str(w.message) for w in caught if "Chromium processes" in str(w.message)]
        return seen

    try:
        seen = in_thread(launch_and_close)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command_lines: dict[int, list[bytes]] = seen["command_lines"]
    print(f"launch {seen['launch']:.2f} s, close {seen['close']:.2f} s, {len(command_lines)} Chromium processes")

    assert seen["title"] == "Stream rest-bulk-80025"
    # the browser, its zygotes, GPU and network processes, a renderer, the crash handlers
    assert len(command_lines) >= 4, command_lines
    assert seen["group"] <= set(command_lines), "a process of Chromium's group does not name the work directory"
    assert any(b"chrome_crashpad_handler" in args[0] for args in command_lines.values()), command_lines
    profiles = {arg.split(b"=", 1)[1].decode() for args in command_lines.values() for arg in args
                if arg.startswith(b"--user-data-dir=")}
    assert len(profiles) == 1, profiles
    profile = Path(profiles.pop())
    assert profile.parent == work and profile.name.startswith("playwright_chromiumdev_profile-")
    for flag in CHROMIUM_FLAGS:
        assert flag.encode() in command_lines[seen["main"]], flag

    assert chromium_processes(work) == []
    assert chromium_processes(profile) == []
    assert not profile.exists()
    assert seen["warnings"] == []


def test_long_workdir_is_refused(tmp_path):
    long_dir = tmp_path / ("x" * 60)
    with pytest.raises(ValueError, match="singleton socket"), headless_chromium(workdir=long_dir):
        pass
    assert not long_dir.exists()


def test_one_browser_per_thread_says_so(browser):
    """While the session's browser holds this thread's Playwright, a second launch
    here says what to do instead of Playwright's advice to use asyncio."""
    with pytest.raises(RuntimeError, match="another thread"), headless_chromium():
        pass


def test_find_chromium_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.delenv(CHROMIUM_ENV, raising=False)
    with pytest.raises(ChromiumMissingError) as missing:
        find_chromium([tmp_path / "chromium", tmp_path / "chromium-browser"])
    assert "make chromium" in str(missing.value)
    assert "apt-get install -y chromium" in str(missing.value)

    not_executable = tmp_path / "chromium"
    not_executable.write_text("")
    with pytest.raises(ChromiumMissingError):
        find_chromium([not_executable])

    monkeypatch.setenv(CHROMIUM_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ChromiumMissingError) as wrong:
        find_chromium()
    assert f"CHROMIUM={tmp_path / 'nowhere'}" in str(wrong.value) and "make chromium" in str(wrong.value)

    monkeypatch.setenv(CHROMIUM_ENV, sys.executable)  # any executable will do for the lookup
    assert find_chromium() == Path(sys.executable)


def test_fixture_fails_without_chromium(tmp_path):
    """With no Chromium the ``browser`` fixture fails the test with what to install:
    an error in the summary, never a skip."""
    env = {**os.environ, CHROMIUM_ENV: str(tmp_path / "no-chromium"), "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          f"{Path(__file__).relative_to(ROOT)}::test_dismissed_confirm_posts_nothing"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 error" in run.stdout and "skipped" not in run.stdout, run.stdout
    assert "make chromium" in run.stdout and "apt-get install -y chromium" in run.stdout, run.stdout
