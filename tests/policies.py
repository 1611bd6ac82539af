"""Retry policies for the sink tests whose destinations answer.

The production policy gives a request 5 s (``stream_budget_seconds``) and a batch
30 s (``deadline_seconds``) before what is left is parked. ``make test`` runs the
unit and composite tiers at nice 19 beside the ``alone`` tests, where a process
can wait seconds for a core: on CI (cf8f201) a ``PutRecords`` to moto and a
boto3 client's creation overran the 5 s, and batches that the tests expected
retried or delivered were parked for their budget instead.

A test whose destination answers is not about time, so its policy gives it a
budget and a deadline that no starved machine reaches; retries stay milliseconds
apart. The tests about budgets and deadlines (receivers that hang, drip, or a
batch sharing one deadline) set their own, and bound their waits by what the
fault tells apart (``tests/composite/test_faults_rest.py``,
``tests/composite/test_dispatch_recovery.py``).
"""

from __future__ import annotations

from typing import Any

from sinks.retry import RetryPolicy

#: Longer than any answer of a local destination on a starved machine, shorter
#: than a test's patience (the composite tier's whole run takes minutes).
UNHURRIED_SECONDS = 120.0


def unhurried(max_attempts: int, **values: Any) -> RetryPolicy:
    """``max_attempts`` requests a batch, milliseconds of backoff between them, and
    :data:`UNHURRIED_SECONDS` of budget a request and of deadline a batch;
    ``values`` overrides any field."""
    fields = {"max_attempts": max_attempts, "base_delay_seconds": 0.01, "max_delay_seconds": 0.05,
              "stream_budget_seconds": UNHURRIED_SECONDS, "deadline_seconds": UNHURRIED_SECONDS}
    return RetryPolicy(**(fields | values))
