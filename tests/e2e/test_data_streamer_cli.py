"""The job's command line: --help, the files it writes, the summary and exit codes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from pipelines.data_streamer import main
from tests.guide_samples import EXPECTED_EVENTS, EXPECTED_USAGE, RAW_EVENTS, RAW_USAGE
from tests.streams import rest_stream

ROOT = Path(__file__).resolve().parents[2]


def _read_jsonl(directory: Path, prefix: str) -> list[bytes]:
    lines = []
    for path in sorted(directory.glob(f"{prefix}-*-of-*.jsonl")):
        lines += [line for line in path.read_bytes().splitlines() if line]
    return lines


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    events = [orjson.dumps(r) for r in RAW_EVENTS.values()] + [b"not json at all"]
    usage = [orjson.dumps(RAW_USAGE["5.2"])] * 2
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(events) + b"\n")
    (tmp_path / "usage.jsonl").write_bytes(b"\n".join(usage) + b"\n")
    return tmp_path / "events.jsonl", tmp_path / "usage.jsonl"


def test_help_lists_the_job_flags():
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.data_streamer", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )
    for flag in ("--events_input", "--usage_input", "--input_format", "--reference_dir",
                 "--dedup_horizon_seconds", "--max_record_bytes", "--output_dir"):
        assert flag in result.stdout


def test_run_writes_documents_dead_letters_and_summary(tmp_path, sample_reference_dir, capsys):
    events, usage = _inputs(tmp_path)
    out = tmp_path / "out"
    # A stale shard of an earlier run must not survive next to this run's files.
    (out / "events").mkdir(parents=True)
    (out / "events" / "events-00007-of-00009.jsonl").write_text('{"stale": true}\n')

    code = main([f"--events_input={events}", f"--usage_input={usage}",
                 f"--reference_dir={sample_reference_dir}", f"--output_dir={out}"])

    assert code == 0
    documents = [json.loads(line) for line in _read_jsonl(out / "events", "events")]
    assert sorted(documents, key=lambda d: d["id"]) == sorted(EXPECTED_EVENTS.values(), key=lambda d: d["id"])
    assert [json.loads(line) for line in _read_jsonl(out / "usage", "usage")] == list(EXPECTED_USAGE.values())
    letters = [json.loads(line) for line in _read_jsonl(out / "dead_letters", "dead_letters")]
    assert [(d["kind"], d["stage"], d["reason"]) for d in letters] == [("event", "parse", "not_json")]
    assert base64.b64decode(letters[0]["payload"]) == b"not json at all"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["reconciled"] is True
    assert (summary["event"]["read"], summary["event"]["documents"], summary["event"]["duplicates"]) == (4, 3, 0)
    assert summary["event"]["dead_letters"] == {"not_json": 1}
    assert (summary["usage"]["read"], summary["usage"]["documents"], summary["usage"]["duplicates"]) == (2, 1, 1)
    assert summary["event"]["documents_by_type"] == {"1": 1, "5": 1, "6": 1}

    printed = capsys.readouterr().out
    assert "reconciled: read = documents + duplicates + dead letters: yes" in printed
    assert "not_json" in printed


def test_bad_flag_exits_2_naming_the_flag(tmp_path, sample_reference_dir, capsys):
    events, _ = _inputs(tmp_path)
    code = main([f"--events_input={events}", f"--reference_dir={sample_reference_dir}",
                 "--dedup_horizon_seconds=0"])
    assert code == 2
    assert "--dedup_horizon_seconds" in capsys.readouterr().err


def test_unknown_input_extension_exits_2(tmp_path, sample_reference_dir, capsys):
    code = main([f"--events_input={tmp_path}/events.txt", f"--reference_dir={sample_reference_dir}"])
    assert code == 2
    assert "--events_input" in capsys.readouterr().err


def test_bad_reference_data_exits_2_naming_the_file(tmp_path, sample_reference_dir, capsys):
    events, _ = _inputs(tmp_path)
    (sample_reference_dir / "currency.json").unlink()
    code = main([f"--events_input={events}", f"--reference_dir={sample_reference_dir}",
                 f"--output_dir={tmp_path / 'out'}"])
    assert code == 2
    assert "reference table 'currency' is missing" in capsys.readouterr().err


def test_a_stream_configuration_over_the_limits_exits_2_naming_file_and_field(tmp_path, sample_reference_dir):
    """The command itself, as operations run it: 101 streams of one organisation
    are over the default --max_streams_per_organisation; nothing runs."""
    events, _ = _inputs(tmp_path)
    config = tmp_path / "streams.json"
    config.write_text(json.dumps({"streams": [rest_stream(f"s{n}", "https://hooks.example.com/iot")
                                              for n in range(101)]}))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.data_streamer", f"--events_input={events}",
         f"--reference_dir={sample_reference_dir}", f"--streams_config={config}", f"--output_dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.endswith(f"error: {config}: stream 's100': organisation_id 80025 has more than the 100 "
                                  "streams an organisation may have (--max_streams_per_organisation)\n")
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_max_streams_is_a_flag_of_the_job(tmp_path, sample_reference_dir, capsys):
    events, _ = _inputs(tmp_path)
    config = tmp_path / "streams.json"
    config.write_text(json.dumps([rest_stream(f"s{n}", "https://hooks.example.com/iot", organisation_id=n)
                                  for n in range(3)]))
    argv = [f"--events_input={events}", f"--reference_dir={sample_reference_dir}", f"--streams_config={config}",
            f"--output_dir={tmp_path / 'out'}"]
    assert main([*argv, "--max_streams=2"]) == 2
    assert capsys.readouterr().err == (f"error: {config}: streams has 3 entries, more than the 2 streams a "
                                       "configuration may hold (--max_streams)\n")
    assert main([*argv, "--max_streams=0"]) == 2
    assert capsys.readouterr().err == "error: --max_streams must be between 1 and 1,000,000\n"


@pytest.mark.parametrize(("flag", "suggestion"), [
    ("--streams_confg=streams.json", "--streams_config"),  # the job's own flag, misspelled
    ("--runer=FnApiRunner", "--runner"),  # one of Beam's
    ("--no_such_thing", None),
])
def test_unknown_flag_exits_2_with_the_suggestion(tmp_path, sample_reference_dir, capsys, flag, suggestion):
    """Beam only logs "Discarding unparseable args" and runs on: a misspelled flag
    would run the job without it and exit 0."""
    events, _ = _inputs(tmp_path)
    code = main([f"--events_input={events}", f"--reference_dir={sample_reference_dir}",
                 f"--output_dir={tmp_path / 'out'}", flag])
    err = capsys.readouterr().err
    assert code == 2
    assert f"unknown flag {flag.split('=')[0]}" in err
    if suggestion:
        assert f"did you mean {suggestion}?" in err
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.parametrize(("module", "required"), [
    ("pipelines.redrive", []),
    ("pipelines.backfill", ["--from=2026-11-01T00:00:00Z", "--to=2026-11-01T01:00:00Z"]),
    ("pipelines.historic", []),
])
def test_the_other_commands_refuse_unknown_flags_too(module, required, capsys):
    import importlib

    code = importlib.import_module(module).main(["--stream_id=s1", *required, "--streams_confg=x.json"])
    assert code == 2
    assert "unknown flag --streams_confg; did you mean --streams_config?" in capsys.readouterr().err
