"""How a run of the job ends: failures named in one line, streaming runs drained.

A streaming run has no end of its own. When it is stopped (``--run_seconds``, or
SIGTERM, what Kubernetes, systemd and process supervisors send) cancelling the job
at once would cut short every record it had read and acknowledged: those would be
in no count and at no destination. So a stopped run first *stops reading*, then
*drains*: it waits, up to ``--drain_seconds``, until the counters show every record
read as delivered, filtered, a duplicate, dead-lettered or parked and the output
window holding the last dead letter has been written, and only then cancels. What
was still in flight at the cancel goes into the summary (:class:`DrainReport`).

Stopping the reads is the runner's business. The job's graph cannot do it (a step
after the read that dropped records would drop messages already acknowledged), so
a reader that can stop registers itself here (:func:`register_read_stopper`): the
local runner's Pub/Sub read does (``tools/direct_runner``), and then hands out no
further message and returns those it had pulled to Pub/Sub, which redelivers them
to the next run. Nothing registers for Flink or Dataflow, whose reads run on
workers: those are drained with the runner's own tools (Dataflow's drain, Flink's
``stop --drain`` with a savepoint; docs/streaming.md), and a stop of a launcher
waiting on them cancels at once and says so.

A job that *fails* (the runner reports FAILED, or its wait raises) is told apart
from one that was stopped: :class:`PipelineFailedError` carries the failing step and the
useful part of the error, which Beam wraps in the step's name and its own
traceback, for one line on stderr.
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from apache_beam.runners.runner import PipelineState

from pipelines.summary import DrainReport, RunSummary, summarize

_LOG = logging.getLogger(__name__)

#: How often a waiting run looks at the job's state, and a drain at its counters.
POLL_SECONDS = 0.5
#: How often the dead-letter count is sampled while the run streams, to know which
#: output window holds the last dead letter.
SAMPLE_SECONDS = 1.0
#: A drain ends once the counters showed nothing in flight and did not move for
#: this long: a record between the lateness gate and de-duplication looks like a
#: duplicate until it reaches de-duplication (:meth:`RunSummary.in_flight`).
QUIET_SECONDS = 1.0
#: After an output window ends, how long until its files are written: the window
#: fires when the watermark passes its end (at most a second behind the clock on
#: the local runner), then the file is written and renamed. Measured well under 2 s
#: on this 2-CPU machine under load.
OUTPUT_GRACE_SECONDS = 3.0
#: A dead letter is counted a moment before it is stamped into its output window:
#: counted up to this long before a window's start, it may still land in it.
STAMP_SLACK_SECONDS = 2.0


# --- failures --------------------------------------------------------------------------------------

class PipelineFailedError(Exception):
    """The job failed: its failing step (when the error names one) and the error."""

    def __init__(self, step: str | None, error: str) -> None:
        super().__init__(step, error)
        self.step = step
        self.error = error

    def __str__(self) -> str:
        where = f" in step '{self.step}'" if self.step else ""
        return f"the pipeline failed{where}: {self.error}"


_STEP = re.compile(r"\s*\[while running '(.+?)'\]")
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Exit|Interrupt)\b:")
#: Longest error text of the one line (a wrapped error can carry a whole traceback).
MAX_ERROR_CHARS = 500


def describe_failure(error: BaseException) -> PipelineFailedError:
    """The useful part of what a runner raised when the job failed.

    Beam re-raises an exception of a DoFn with `` [while running '<step>']``
    appended to its message, as the same type when it can and otherwise as a
    ``RuntimeError`` whose message starts with the original type; portable runners
    put the worker's whole traceback in the message. The step is the first one
    named (the innermost: Beam tags an error with one step only), the error is the
    exception line that named it, without the annotation."""
    if isinstance(error, PipelineFailedError):
        return error
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    step = None
    error_line = None
    for line in lines:
        match = _STEP.search(line)
        if match:
            step = match.group(1)
            error_line = _STEP.sub("", line).strip()
            break
    if error_line is None:
        error_line = lines[-1] if lines else ""
    if not _ERROR_LINE.match(error_line):
        error_line = f"{type(error).__name__}: {error_line}" if error_line else type(error).__name__
    if len(error_line) > MAX_ERROR_CHARS:
        error_line = error_line[:MAX_ERROR_CHARS] + " ..."
    return PipelineFailedError(step, error_line)


# --- stopping the reads ----------------------------------------------------------------------------

#: runner name -> callbacks that stop this process's reads of the given subscriptions
_READ_STOPPERS: dict[str, list[Callable[[frozenset[str]], None]]] = {}
_STOPPERS_LOCK = threading.Lock()


def register_read_stopper(runners: Iterable[str], stopper: Callable[[frozenset[str]], None]) -> None:
    """Register ``stopper(subscriptions)``: it makes the reads of those
    subscriptions, in this process, hand out no further message, for runs on any
    of ``runners``. Called by the local runner's workarounds (``tools/direct_runner``);
    the job itself registers nothing."""
    with _STOPPERS_LOCK:
        for runner in runners:
            if stopper not in _READ_STOPPERS.setdefault(runner, []):
                _READ_STOPPERS[runner].append(stopper)


def stop_reading(runner: str, subscriptions: Iterable[str]) -> bool:
    """Stop this process's reads of ``subscriptions`` on ``runner``; whether any
    reader could (False: the reads run elsewhere, or this runner's cannot stop)."""
    with _STOPPERS_LOCK:
        stoppers = list(_READ_STOPPERS.get(runner, ()))
    wanted = frozenset(subscriptions)
    for stopper in stoppers:
        stopper(wanted)
    return bool(stoppers)


#: runner name -> a wrapper of its results whose ``metrics()`` reach the job's counters
_RESULT_WRAPPERS: dict[str, Callable[[Any], Any]] = {}


def register_result_wrapper(runners: Iterable[str], wrapper: Callable[[Any], Any]) -> None:
    """Register ``wrapper(result)`` for runs on any of ``runners``: a result
    whose ``metrics()`` reads the job's counters where the runner's own result
    does not report them while the job runs (Flink's job server reports them only
    for a job that finishes; ``tools/flink/metrics.py`` reads Flink's REST API).
    The job itself registers nothing."""
    with _STOPPERS_LOCK:
        for runner in runners:
            _RESULT_WRAPPERS[runner] = wrapper


def wrap_result(runner: str, result: Any) -> Any:
    """``result``, wrapped if a wrapper is registered for ``runner``."""
    with _STOPPERS_LOCK:
        wrapper = _RESULT_WRAPPERS.get(runner)
    return result if wrapper is None else wrapper(result)


# --- waiting on a streaming run and draining it ------------------------------------------------------

class StreamingRun:
    """A running streaming job that :func:`pipelines.data_streamer.run` waits on.

    A waiter thread sits in the runner's ``wait_until_finish``: on the local
    runner that is the only way to learn that the job failed (its ``state`` stays
    RUNNING while a failed bundle's error waits to be raised there), and on other
    runners it returns or raises when the job ends."""

    def __init__(self, result: Any, output_window_seconds: int | None,
                 summarize_fn: Callable[[Any], RunSummary] = summarize,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self._result = result
        self._window = output_window_seconds
        self._summarize = summarize_fn
        self._clock, self._wall = clock, wall
        self._error: BaseException | None = None
        self._ended = threading.Event()
        #: (wall time, dead letters counted) whenever the count changed, and the first
        self._dead_letters: list[tuple[float, int]] = []
        self._last_sample = float("-inf")
        #: wall time of the cancel: no output window is written after it
        self._stopped_at: float | None = None
        self._waiter = threading.Thread(target=self._wait, name="pipeline-waiter", daemon=True)
        self._waiter.start()

    def _wait(self) -> None:
        try:
            self._result.wait_until_finish()
        except BaseException as error:  # noqa: BLE001 - what the runner raised is the job's failure
            self._error = error
        finally:
            self._ended.set()

    # --- the job's state ---

    def _state(self) -> Any:
        try:
            return self._result.state
        except Exception as error:  # noqa: BLE001 - a runner that cannot tell is asked again next poll
            _LOG.debug("could not read the job's state: %s", error)
            return None

    def _check_failed(self) -> None:
        if self._error is not None:
            raise describe_failure(self._error) from self._error
        if self._state() == PipelineState.FAILED:
            raise PipelineFailedError(None, "the runner reports the job FAILED (its log says why)")

    def _ended_by_runner(self) -> str | None:
        state = self._state()
        if self._ended.is_set() or (state is not None and PipelineState.is_terminal(state)):
            self._check_failed()
            return f"the runner ({state})"
        return None

    # --- the counters ---

    def _counts(self, attempts: int = 3) -> RunSummary | None:
        """The summary so far, or None when the runner could not say. The local
        runner's metrics are read while its worker thread adds to them, and a
        counter appearing meanwhile makes a read fail ("dictionary changed size"):
        read again."""
        for attempt in range(attempts):
            try:
                return self._summarize(self._result)
            except Exception as error:  # noqa: BLE001 - read again, or skipped for this poll
                _LOG.debug("could not read the job's counters (attempt %d): %s", attempt + 1, error)
                time.sleep(0.05)
        return None

    def _sample(self, force: bool = False) -> RunSummary | None:
        now = self._clock()
        if not force and now - self._last_sample < SAMPLE_SECONDS:
            return None
        self._last_sample = now
        counts = self._counts()
        if counts is not None:
            self._note_dead_letters(counts)
        return counts

    def _note_dead_letters(self, counts: RunSummary) -> None:
        total = counts.dead_letters
        if not self._dead_letters or self._dead_letters[-1][1] != total:
            self._dead_letters.append((self._wall(), total))

    def _dead_letters_unwritten(self, counts: RunSummary) -> int:
        """Dead letters counted in output windows whose files may not be written
        yet (the windows ending after now - grace), by the samples: erring on
        the side of "not yet"."""
        if not self._window:
            return 0
        written_until = (self._stopped_at or self._wall()) - OUTPUT_GRACE_SECONDS
        open_from = written_until - written_until % self._window - STAMP_SLACK_SECONDS
        times = [moment for moment, _ in self._dead_letters]
        index = bisect.bisect_right(times, open_from) - 1
        before = self._dead_letters[index][1] if index >= 0 else 0
        return max(0, counts.dead_letters - before)

    # --- waiting and draining ---

    def wait(self, run_seconds: int | None, stop: threading.Event) -> str:
        """Wait until ``stop`` is set ("SIGTERM"), ``run_seconds`` have passed
        ("--run_seconds") or the runner ended the job; return which. Raises
        :class:`PipelineFailedError` when the job failed."""
        deadline = None if run_seconds is None else self._clock() + run_seconds
        self._sample(force=True)
        while True:
            ended = self._ended_by_runner()
            if ended:
                return ended
            if stop.is_set():
                return "SIGTERM"
            if deadline is not None and self._clock() >= deadline:
                return "--run_seconds"
            self._sample()
            stop.wait(POLL_SECONDS)

    def drain(self, reads_stopped: bool, limit_seconds: float, stop_now: threading.Event | None = None) -> float:
        """After the reads stopped: wait up to ``limit_seconds`` (or until
        ``stop_now``) for nothing to be in flight (:meth:`RunSummary.in_flight`,
        and the dead letters' output window written) with the counts standing
        still; return the seconds it took. With reads that did not stop there is
        nothing to wait for. Raises :class:`PipelineFailedError` when the job fails
        meanwhile."""
        started = self._clock()
        deadline = started + (limit_seconds if reads_stopped else 0)
        previous: dict[str, Any] | None = None
        quiet_since = started
        while self._clock() < deadline and not (stop_now is not None and stop_now.is_set()):
            if self._ended_by_runner():
                break
            counts = self._sample(force=True)
            if counts is not None:
                # The refresh ticks count on while nothing else moves: not a record's progress.
                snapshot = {key: value for key, value in counts.to_dict().items() if key != "refreshes"}
                if snapshot != previous:
                    previous, quiet_since = snapshot, self._clock()
                in_flight = {**counts.in_flight(), "dead_letters_unwritten": self._dead_letters_unwritten(counts)}
                if not any(in_flight.values()) and self._clock() - quiet_since >= QUIET_SECONDS:
                    break
            time.sleep(POLL_SECONDS)
        return self._clock() - started

    def report(self, reason: str, reads_stopped: bool, limit_seconds: float, seconds: float) -> DrainReport:
        """The drain as the summary states it, from the counters after the cancel
        (the local runner finishes the bundle under way when it cancels, so these
        are the counts the summary shows): what was in flight when the job stopped."""
        counts = self._counts()
        if counts is None:
            counts = self._summarize(self._result)  # a failure to read them now is an error of its own
        in_flight = {**counts.in_flight(), "dead_letters_unwritten": self._dead_letters_unwritten(counts)}
        return DrainReport(reason=reason, limit_seconds=limit_seconds, seconds=seconds,
                           reads_stopped=reads_stopped, in_flight=in_flight)

    def cancel(self) -> None:
        """Cancel the job (unless it ended) and let the waiter go."""
        self._stopped_at = self._wall()
        if not PipelineState.is_terminal(self._state() or PipelineState.RUNNING):
            self._result.cancel()
        # The local runner's wait returns once the executor shut down (tools/direct_runner
        # wakes it); on other runners once the job service reports the cancel.
        self._waiter.join(timeout=5)
