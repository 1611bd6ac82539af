"""The DirectRunner workarounds of ``tools/direct_runner`` that can be
checked apart from a job (the others are covered by the streaming tests)."""

from __future__ import annotations

import random
from typing import Any

import apache_beam as beam
from apache_beam.runners.direct.evaluation_context import DirectUnmergedState
from apache_beam.runners.direct.watermark_manager import _TransformWatermarks
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import GlobalWindow, IntervalWindow
from apache_beam.utils.timestamp import Timestamp

from tools.direct_runner import _indexed_extract_transform_timers, _NotingStates, _original_extract

T = 1_793_520_000


class _Clock:
    def __init__(self) -> None:
        self.now = float(T)

    def time(self) -> float:
        return self.now


def _firings(result: tuple[list[Any], bool]) -> tuple[list[tuple[Any, ...]], bool]:
    fired, realtime = result
    return sorted((f.encoded_key, repr(f.window), f.name, f.time_domain, f.timestamp.micros, f.dynamic_timer_tag)
                  for f in fired), realtime


def test_indexed_timer_scan_reports_exactly_what_the_full_scan_does():
    """Fix 5: over a long random history of states replaced as the executor
    commits them (timers set, moved and cleared in both time domains, windows,
    keys without timers), the watermark and the clock moving on, every scan of
    the index reports the same due timers and the same "any processing-time
    timer" flag as Beam's scan of every key, including timers still due because
    their key's state was not replaced yet."""
    rng = random.Random(7)
    clock = _Clock()
    plain: dict[Any, Any] = {}
    noting = _NotingStates()
    full = _TransformWatermarks(clock, plain, "full")
    indexed = _TransformWatermarks(clock, noting, "indexed")
    windows = [GlobalWindow(), IntervalWindow(Timestamp(T), Timestamp(T + 60))]
    watermark = Timestamp(T - 100)
    reports = 0
    for _step in range(3000):
        for _change in range(rng.randint(0, 3)):
            key = f"k{rng.randint(0, 60)}".encode()
            state = plain[key].copy() if key in plain else DirectUnmergedState()
            for _timer in range(rng.randint(0, 3)):
                window, name = rng.choice(windows), rng.choice(["expire", "flush"])
                domain = rng.choice([TimeDomain.WATERMARK, TimeDomain.REAL_TIME])
                if rng.random() < 0.3:
                    state.clear_timer(window, name, domain)
                else:
                    state.set_timer(window, name, domain, Timestamp(T + rng.randint(-50, 400)))
            plain[key] = state
            noting[key] = state
        watermark = Timestamp(micros=watermark.micros + rng.randint(0, 2_000_000))
        clock.now += rng.random() * 1.5
        full._input_watermark = indexed._input_watermark = watermark
        expected = _firings(_original_extract(full))
        assert _firings(_indexed_extract_transform_timers(indexed)) == expected
        reports += len(expected[0])
    assert reports > 1000  # the history did fire timers, many of them again and again


def test_noting_states_note_every_assignment():
    states = _NotingStates()
    states[b"a"] = 1
    states.setdefault(b"b", 2)
    states.update({b"c": 3})
    del states[b"a"]
    states.pop(b"b")
    assert states.assigned == {b"a", b"b", b"c"}
    assert dict(states) == {b"c": 3}


class _Fn:
    def process(self, element: Any, timestamp: Any = "ts-param", *rest: Any) -> None:
        """A method with a default, as DoFn.process methods have."""


def test_remembered_argument_lists_equal_beams_and_are_copies():
    """Fix 6: the remembered argument lists are what Beam computes, for plain
    functions, bound methods (without ``self``) and other callables, and callers
    get their own lists."""
    import functools

    from apache_beam.transforms import core

    from tools.direct_runner import _cached_args_defaults

    original = core.get_function_args_defaults
    cached = _cached_args_defaults(original)

    def plain(a: Any, b: int = 2) -> None:
        pass

    for f in (plain, _Fn().process, _Fn.process, functools.partial(plain, 1), lambda x, y=3: None):
        assert cached(f) == original(f)
        assert cached(f) == original(f)  # remembered
    first = cached(_Fn().process)
    first[0].append("changed")
    assert cached(_Fn().process) == (["element", "timestamp"], ["ts-param"])


#: Sizes of the bundles ``_SeeBundles`` ran (the graph's DoFn instance is
#: reused by fix 6, so the record is kept outside it).
_BUNDLES: list[int] = []


class _SeeBundles(beam.DoFn):
    """Notes the size of each bundle it runs (module level, so the copy the
    runner unpickles appends to this module's list)."""

    def start_bundle(self) -> None:
        self._size = 0

    def process(self, element: Any):
        self._size += 1
        yield element

    def finish_bundle(self) -> None:
        _BUNDLES.append(self._size)


def test_steps_run_only_bundles_with_elements():
    """Fix 8: a step that turns a bundle into nothing sets off no empty bundle
    downstream; the output and its windows are unchanged."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.testing.util import assert_that, equal_to
    from apache_beam.transforms.window import FixedWindows, TimestampedValue

    from tools.direct_runner import apply_direct_runner_fixes

    apply_direct_runner_fixes()
    _BUNDLES.clear()
    stream = (TestStream()
              .add_elements([TimestampedValue(1, T), TimestampedValue(2, T)]).advance_watermark_to(T + 10)
              .add_elements([TimestampedValue(3, T + 10)]).advance_watermark_to(T + 20)
              .add_elements([TimestampedValue(5, T + 20)]).advance_watermark_to(T + 30)
              .add_elements([TimestampedValue(4, T + 30), TimestampedValue(6, T + 31)])
              .advance_watermark_to_infinity())
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(runner="DirectRunner", options=options) as pipeline:
        evens = (pipeline
                 | stream
                 | "Even" >> beam.Filter(lambda n: n % 2 == 0)
                 | "See" >> beam.ParDo(_SeeBundles())
                 | beam.WindowInto(FixedWindows(10))
                 | beam.Map(lambda n, w=beam.DoFn.WindowParam: (n, int(w.start))))
        assert_that(evens, equal_to([(2, T), (4, T + 30), (6, T + 30)]))
    assert sorted(_BUNDLES) == [1, 2], f"bundle sizes {_BUNDLES}: empty bundles ran"


def test_the_workarounds_refuse_an_untested_beam_version(monkeypatch):
    """They replace private Beam symbols: on any other Beam version they stop
    with a message naming both versions, and patch nothing."""
    import apache_beam
    from apache_beam.runners.direct import executor

    from tools import direct_runner

    monkeypatch.setattr(apache_beam, "__version__", "2.78.0")
    monkeypatch.setattr(direct_runner, "_applied", False)
    monkeypatch.setattr(direct_runner, "_applied_speed", False)
    before = executor.TransformExecutor.__init__
    try:
        direct_runner.apply_direct_runner_fixes()
    except direct_runner.UntestedBeamVersionError as err:
        assert "2.62.0" in str(err) and "2.78.0" in str(err)
    else:
        raise AssertionError("applied on an untested Beam version")
    assert executor.TransformExecutor.__init__ is before
    assert "2.62.0" in direct_runner.TESTED_BEAM_VERSIONS


def test_the_job_applies_no_workaround(tmp_path):
    """The job's graph, built for the DirectRunner as a user would, patches
    nothing and imports nothing of tools/ (in a fresh interpreter: this session
    has the workarounds installed)."""
    import subprocess
    import sys
    import textwrap

    (tmp_path / "events.jsonl").write_text("")
    code = textwrap.dedent(f"""
        import sys
        from apache_beam.options.pipeline_options import PipelineOptions
        from apache_beam.runners.direct import executor, transform_evaluator
        before = (executor.TransformExecutor.__init__, transform_evaluator._ParDoEvaluator.__init__)
        from pipelines import data_streamer
        data_streamer.job_graph(PipelineOptions(["--runner=DirectRunner", "--events_input={tmp_path}/events.jsonl",
                                                 "--reference_dir={tmp_path}", "--output_dir={tmp_path}/out"]))
        assert (executor.TransformExecutor.__init__, transform_evaluator._ParDoEvaluator.__init__) == before
        print(sorted(name for name in sys.modules if name.split(".")[0] == "tools"))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
