"""The measurement behind the stream limits runs, and the limits it lifts are
the ones the job enforces."""

from __future__ import annotations

import re

import pytest

from schemas import streams
from tools import measure_stream_config


@pytest.mark.parametrize("argv", [["10", "20"], ["10", "--yaml"]])
def test_it_measures_each_count(argv, capsys, monkeypatch):
    monkeypatch.setattr(streams, "MAX_CONFIG_BYTES", streams.MAX_CONFIG_BYTES)  # the tool lifts it; put it back
    assert measure_stream_config.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    counts = [int(n) for n in argv if n.isdigit()]
    assert len(lines) == len(counts)
    for count, line in zip(counts, lines, strict=True):
        assert re.match(rf"\s+{count} (json|yaml)  file .* MiB  parse .* s  peak .* kept .* pickled .*", line)
        # Every fifth stream is a DataDog stream, which takes usage only: 4 of 5 want an event.
        assert f"one event -> {count * 4 // 5:,} streams" in line
