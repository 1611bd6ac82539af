"""``python -m tools.local_job [ENTRY] [flags]``: one of the job's commands run
locally, against the local destinations.

``ENTRY`` is ``pipelines.data_streamer`` (the default), ``pipelines.redrive``,
``pipelines.backfill`` or ``pipelines.historic``. The command runs with:

- ``--runner`` set (unless given) to the local runner for the run's kind
  (:mod:`tools.runners`), and for a streaming run on the BundleBasedDirectRunner
  the workarounds of :mod:`tools.direct_runner` applied first: the job itself
  never patches Beam;
- the local destinations' placeholder credentials in the environment
  (:func:`tools.local_streams.set_local_secrets`) and
  ``--allow_insecure_destinations``: the local destinations are
  ``http://127.0.0.1``, which the outbound rules refuse otherwise.

The local launchers (``make run-local``, ``make run-local-streaming``), the local
make targets (``redrive``, ``backfill``, ``historic``) and the bench run the job
through here.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from tools import runners
from tools.direct_runner import apply_direct_runner_fixes
from tools.local_streams import set_local_secrets

ENTRIES = ("pipelines.data_streamer", "pipelines.redrive", "pipelines.backfill", "pipelines.historic")
INSECURE = "--allow_insecure_destinations"


def _names(argv: Sequence[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(f"{flag}=") for arg in argv)


def local_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the local runner named (when it names none) and insecure
    destinations allowed."""
    argv = list(argv)
    if not _names(argv, "--runner"):
        argv.insert(0, runners.runner_flag(streaming="--streaming" in argv))
    if INSECURE not in argv:
        argv.append(INSECURE)
    return argv


def runner_of(argv: Sequence[str]) -> str:
    """The runner a local run of ``argv`` uses."""
    argv = local_argv(argv)
    for index, arg in enumerate(argv):
        if arg.startswith("--runner="):
            return arg.split("=", 1)[1]
        if arg == "--runner" and index + 1 < len(argv):
            return argv[index + 1]
    return runners.BATCH


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    entry = argv.pop(0) if argv and argv[0] in ENTRIES else ENTRIES[0]
    argv = local_argv(argv)
    set_local_secrets()
    if runner_of(argv) == runners.STREAMING:
        apply_direct_runner_fixes()
    return importlib.import_module(entry).main(argv)


if __name__ == "__main__":
    sys.exit(main())
