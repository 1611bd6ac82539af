"""What every process of one bench run uses: the peak of their summed RSS, and
where their CPU went.

A run on Flink is not one process: the submitting Python process, Beam's Flink
job server (a JVM that runs the Flink mini-cluster), Beam's SDK worker pool and
the Python SDK workers it starts. ``ru_maxrss`` of a wait is the largest single
process, not what the run holds at once, so :class:`TreeSampler` reads
``/proc`` every ``interval`` seconds, sums the RSS of every descendant of the
run's root process and keeps the highest sum (and how it split by role at that
moment). A sum of RSS counts shared pages (libraries) once per process; the SDK
workers are started as new interpreters, not forked, so little is shared.

CPU: the exact total comes from the kernel (the bench's launcher reaps every
process of the run, ``tools/bench/batch.py``); the sampler adds the split by
role (JVM, SDK workers, the submitting process, the worker pool) from each
process's last reading, and, for JVMs, by thread name (``GC Thread``,
``C2 CompilerThre``, Flink's task threads ...): a profile that costs the run
nothing, where a Java profiler would need an agent in the job server. Processes
that end between two readings lose their last ``interval`` of CPU in the split
(not in the total).

A long-running (streaming) run has no end to wait for: :func:`read_tree_cpu`
reads the CPU of a tree's processes (and of its JVMs' threads) at one moment,
and :func:`cpu_between` what they used between two readings, by role and by JVM
thread group: the CPU of one measured window of the streaming bench, and where
it went. A process that ended between the two readings is not in it, one that
started is, whole.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_KIB = (os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096) // 1024

#: Roles of a run's processes, as the bench reports them.
JVM = "jvm"
SDK_WORKER = "sdk_workers"
WORKER_POOL = "worker_pool"
#: Beam's Java expansion service (the cross-language Pub/Sub read of a streaming
#: run on Flink): busy while the job is submitted, idle after.
EXPANSION_SERVICE = "expansion_service"
JOB = "job"  # the process the bench started: the whole job on a local runner, the submitter on Flink
OTHER = "other"
#: JVM CPU of threads that started and ended between two thread readings.
UNSEEN_THREADS = "(threads ended between readings)"


@dataclass(frozen=True)
class Stat:
    """The fields of ``/proc/<pid>/stat`` the sampler uses."""

    pid: int
    ppid: int
    comm: str
    cpu_seconds: float
    rss_kib: int
    start_ticks: int  # tells a reused pid from the process that had it before


def read_stat(path: Path) -> Stat | None:
    """One ``/proc/<pid>/stat`` (or ``.../task/<tid>/stat``); None once it has gone."""
    try:
        text = path.read_text()
    except OSError:
        return None
    left, right = text.find("("), text.rfind(")")
    fields = text[right + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, starttime 22, rss 24.
    return Stat(pid=int(text[:left]), ppid=int(fields[1]), comm=text[left + 1:right],
                cpu_seconds=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
                rss_kib=int(fields[21]) * PAGE_KIB, start_ticks=int(fields[19]))


def role_of(comm: str, cmdline: str) -> str:
    """Which part of the run a process is, from its name and command line."""
    if comm == "java":
        return EXPANSION_SERVICE if "ExpansionService.jar" in cmdline else JVM
    # The pool first: its command line names the boot script too (--container_executable).
    if "worker_pool_main" in cmdline:
        return WORKER_POOL
    # A pool worker starts as the boot script (tools/sdk_boot.py) and execs
    # sdk_worker_main: same process, so it is recognised by its first command line.
    if any(mark in cmdline for mark in ("SdkHarness", "sdk_worker_main", "tools.sdk_boot", "beam-sdk-boot")):
        return SDK_WORKER
    if comm.startswith("python"):
        return JOB
    return OTHER


def thread_group(name: str) -> str:
    """A JVM thread's name without its number (``GC Thread#1`` -> ``GC Thread``),
    so threads of one kind add up. Linux keeps 15 characters of a name."""
    return re.sub(r"[\s#_-]*\d+$", "", name).strip() or name


@dataclass
class TreeUsage:
    """What :class:`TreeSampler` saw of one run."""

    samples: int = 0
    interval_seconds: float = 0.0
    #: the highest sum of RSS over the run's processes (the launcher excluded)
    peak_rss_kib: int = 0
    #: that sum split by role, at the moment of the peak
    peak_rss_kib_by_role: dict[str, int] = field(default_factory=dict)
    #: CPU seconds by role, each process's last reading
    cpu_seconds_by_role: dict[str, float] = field(default_factory=dict)
    #: processes seen per role
    processes_by_role: dict[str, int] = field(default_factory=dict)
    #: JVM CPU seconds by thread group, each thread's last reading
    jvm_threads: dict[str, float] = field(default_factory=dict)

    def to_dict(self, top_threads: int = 12) -> dict[str, Any]:
        threads = sorted(self.jvm_threads.items(), key=lambda item: -item[1])
        shown = dict(threads[:top_threads])
        rest = sum(seconds for _, seconds in threads[top_threads:])
        if rest:
            shown["(other threads)"] = rest
        return {
            "samples": self.samples, "interval_seconds": self.interval_seconds,
            "peak_rss_mib": round(self.peak_rss_kib / 1024, 1),
            "peak_rss_mib_by_role": {k: round(v / 1024, 1) for k, v in sorted(self.peak_rss_kib_by_role.items())},
            "cpu_seconds_by_role": {k: round(v, 2) for k, v in sorted(self.cpu_seconds_by_role.items())},
            "processes_by_role": dict(sorted(self.processes_by_role.items())),
            "jvm_thread_cpu_seconds": {k: round(v, 2) for k, v in shown.items()},
        }


class TreeSampler:
    """Samples the descendants of ``root`` (not ``root`` itself: the bench's
    launcher) on a thread until :meth:`stop`.

    ``interval`` is short enough that RSS, which grows and shrinks over seconds,
    is seen near its peak, and long enough that reading ``/proc`` (a few
    milliseconds for the ~200 processes of this machine) does not take a
    noticeable share of the two cores the run is using. JVM threads are read
    every ``thread_interval`` (a JVM has hundreds of them)."""

    def __init__(self, root: int, interval: float = 0.25, thread_interval: float = 2.0) -> None:
        self.root = root
        self.interval = interval
        self.thread_interval = thread_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"tree-sampler-{root}", daemon=True)
        self._usage = TreeUsage(interval_seconds=interval)
        #: (pid, start) -> (role, last CPU seconds)
        self._processes: dict[tuple[int, int], tuple[str, float]] = {}
        #: (pid, tid, start) -> (thread group, last CPU seconds)
        self._threads: dict[tuple[int, int, int], tuple[str, float]] = {}
        self._last_threads = 0.0

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> TreeUsage:
        """Stop sampling; what was seen."""
        self._stop.set()
        self._thread.join()
        usage = self._usage
        usage.cpu_seconds_by_role, usage.processes_by_role = {}, {}
        for role, seconds in self._processes.values():
            usage.cpu_seconds_by_role[role] = usage.cpu_seconds_by_role.get(role, 0.0) + seconds
            usage.processes_by_role[role] = usage.processes_by_role.get(role, 0) + 1
        usage.jvm_threads = {}
        for group, seconds in self._threads.values():
            usage.jvm_threads[group] = usage.jvm_threads.get(group, 0.0) + seconds
        if usage.jvm_threads:
            # A JVM's own reading counts the threads that have ended; the thread
            # readings (every thread_interval) miss those that ended in between.
            unseen = usage.cpu_seconds_by_role.get(JVM, 0.0) - sum(usage.jvm_threads.values())
            if unseen > 0:
                usage.jvm_threads[UNSEEN_THREADS] = unseen
        return usage

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def descendants(self) -> list[Stat]:
        """Every process below ``root`` right now."""
        return descendants(self.root)

    def sample(self) -> None:
        processes = self.descendants()
        if not processes:
            return
        self._usage.samples += 1
        by_role: dict[str, int] = {}
        jvms = []
        for stat in processes:
            # Classified at every sample, not once: a child between its fork and
            # its exec shows its parent's command line (the worker pool was once
            # counted as the job). But not from an empty command line: a process
            # that has exited and is not yet reaped (a zombie) has none, and
            # would become a "job" at its last sample.
            key = (stat.pid, stat.start_ticks)
            known = self._processes.get(key)
            cmdline = _cmdline(stat.pid)
            role = known[0] if known and not cmdline else role_of(stat.comm, cmdline)
            self._processes[key] = (role, stat.cpu_seconds)
            by_role[role] = by_role.get(role, 0) + stat.rss_kib
            if role == JVM:
                jvms.append(stat)
        total = sum(by_role.values())
        if total > self._usage.peak_rss_kib:
            self._usage.peak_rss_kib, self._usage.peak_rss_kib_by_role = total, by_role
        now = time.monotonic()
        if jvms and now - self._last_threads >= self.thread_interval:
            self._last_threads = now
            for jvm in jvms:
                for path in (PROC / str(jvm.pid) / "task").glob("[0-9]*"):
                    thread = read_stat(path / "stat")
                    if thread is not None:
                        self._threads[(jvm.pid, thread.pid, jvm.start_ticks)] = (thread_group(thread.comm),
                                                                                  thread.cpu_seconds)


def descendants(root: int) -> list[Stat]:
    """Every process below ``root`` right now."""
    stats = [stat for stat in (read_stat(path / "stat") for path in PROC.glob("[0-9]*")) if stat is not None]
    children: dict[int, list[Stat]] = {}
    for stat in stats:
        children.setdefault(stat.ppid, []).append(stat)
    found, queue = [], [root]
    while queue:
        for stat in children.get(queue.pop(), []):
            found.append(stat)
            queue.append(stat.pid)
    return found


@dataclass(frozen=True)
class CpuReading:
    """CPU seconds of each process of a tree, and of each thread of its JVMs, at one moment."""

    #: (pid, start) -> (role, CPU seconds)
    processes: dict[tuple[int, int], tuple[str, float]]
    #: (pid, tid, thread start) -> (thread group, CPU seconds)
    threads: dict[tuple[int, int, int], tuple[str, float]]


def read_tree_cpu(root: int, threads: bool = True) -> CpuReading:
    """The CPU so far of ``root`` and every process below it (with ``threads``,
    of each thread of their JVMs too)."""
    top = read_stat(PROC / str(root) / "stat")
    processes: dict[tuple[int, int], tuple[str, float]] = {}
    jvm_threads: dict[tuple[int, int, int], tuple[str, float]] = {}
    for stat in ([top] if top is not None else []) + descendants(root):
        role = role_of(stat.comm, _cmdline(stat.pid))
        processes[(stat.pid, stat.start_ticks)] = (role, stat.cpu_seconds)
        if threads and role == JVM:
            for path in (PROC / str(stat.pid) / "task").glob("[0-9]*"):
                thread = read_stat(path / "stat")
                if thread is not None:
                    jvm_threads[(stat.pid, thread.pid, thread.start_ticks)] = (thread_group(thread.comm),
                                                                               thread.cpu_seconds)
    return CpuReading(processes, jvm_threads)


def cpu_between(before: CpuReading, after: CpuReading, top_threads: int = 12) -> dict[str, Any]:
    """What the tree's processes used from ``before`` to ``after``: in all, by
    role, and the JVMs' busiest thread groups (a process or thread first seen in
    ``after`` counts whole)."""
    by_role: dict[str, float] = {}
    for key, (role, seconds) in after.processes.items():
        used = seconds - before.processes.get(key, (role, 0.0))[1]
        by_role[role] = by_role.get(role, 0.0) + max(used, 0.0)
    groups: dict[str, float] = {}
    for key, (group, seconds) in after.threads.items():
        used = seconds - before.threads.get(key, (group, 0.0))[1]
        groups[group] = groups.get(group, 0.0) + max(used, 0.0)
    ranked = sorted(groups.items(), key=lambda item: -item[1])
    shown = {name: round(seconds, 2) for name, seconds in ranked[:top_threads] if seconds > 0}
    rest = sum(seconds for _, seconds in ranked[top_threads:])
    if rest > 0:
        shown["(other threads)"] = round(rest, 2)
    return {"cpu_seconds": round(sum(by_role.values()), 2),
            "cpu_seconds_by_role": {role: round(seconds, 2) for role, seconds in sorted(by_role.items())},
            "jvm_thread_cpu_seconds": shown}


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
