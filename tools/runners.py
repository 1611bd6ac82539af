"""The local runners, named: every local launcher, make target and test tier runs
on one of these, never on whatever ``DirectRunner`` picks.

Beam's ``DirectRunner`` (2.62) is a switch: it first tries the Prism runner (a Go
binary it downloads from GitHub on first use), and only when that fails falls back
to the FnApiRunner (batch) or the BundleBasedDirectRunner (streaming,
``TestStream``, processing-time timers). On a machine that can reach GitHub the
same command would silently run on Prism. So the job's local runs say which one:

- :data:`BATCH`: Beam's FnApiRunner, the in-process portable runner that
  executes bounded graphs (what the switch falls back to here). ``make run-local``,
  the batch bench and the batch composite and end-to-end tests.
- :data:`STREAMING`: the BundleBasedDirectRunner, the only local runner of the
  Python SDK that reads Pub/Sub and runs ``TestStream``; it needs the workarounds
  of :mod:`tools.direct_runner`. ``make run-local-streaming``, the streaming bench
  and the streaming tests.

Prism is not used: on Beam 2.62 it refuses the batch job (the raw archive's
``AfterWatermark(late=AfterCount(1))`` trigger) and, with the archive off, loses
bag-state appends in ``GroupPerElementWindow`` (S3 and DataDog documents missing
in 3 of 5 runs). docs/prism.md has the errors, the runs and a repro.
"""

from __future__ import annotations

#: Beam 2.62 knows the FnApiRunner by its full name only (no short name).
BATCH = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
STREAMING = "BundleBasedDirectRunner"


def runner_flag(streaming: bool) -> str:
    """``--runner=...`` for a local run."""
    return f"--runner={STREAMING if streaming else BATCH}"
