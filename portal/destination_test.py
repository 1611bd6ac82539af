""""Test destination": one sample document through the job's own sink code.

The stream's sink DoFn (``sinks.delivery.sinks_for``, the one the job runs) is
set up in this process and sends one document of the stream's type (the guide's
samples of section 5, with the stream's organisation and the current time)
with ``deliver_now``, the recovery step's way in: the same requests, signatures,
outbound rules, secrets and error tokens as a real delivery. One attempt, no
retries, a short budget: a person is waiting. Nothing is parked, counted or
written to the stream's status: the outputs are only read here.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from schemas.delivery import DELIVERED, DeliveryResult
from schemas.sealing import Sealer
from schemas.streams import DataStream, SecretPolicy, build_stream_config
from sinks.delivery import DeliverySettings, sinks_for
from sinks.recovery import RecoveredPane, sink_elements
from sinks.retry import RetryPolicy

SAMPLES = json.loads((Path(__file__).with_name("samples.json")).read_text(encoding="utf-8"))
#: One attempt within this budget: the answer comes back to a waiting page.
BUDGET_SECONDS = 10.0


def sample_document(kind: str, organisation_id: int, now: datetime | None = None) -> dict[str, Any]:
    """The guide's sample of ``kind`` ("event" or "usage") for the organisation, timed now."""
    now = now or datetime.now(UTC)
    document = copy.deepcopy(SAMPLES[kind])
    document["organisation"]["id"] = organisation_id
    if kind == "event":
        document["timestamp"] = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+0000"
    else:
        document["start_timestamp"] = now.strftime("%Y-%m-%d %H:%M:%S")
        document["end_timestamp"] = now.strftime("%Y-%m-%d %H:%M:%S")
    return document


def try_destination(stream: DataStream, rules: Any, sealer: Sealer | None = None) -> dict[str, Any]:
    """``{"ok", "remote_status", "error", "duration_ms"}`` of one sample sent to the stream's destination."""
    kind = "event" if stream.stream_type == "events" else "usage"
    stream = replace(stream, state="active")  # a paused stream's destination can be tested too
    settings = DeliverySettings(
        park_location="", status_location="", allow_insecure=rules.allow_insecure_destinations,
        secrets=SecretPolicy(env_prefix=rules.secret_env_prefix, secrets_dir=rules.secrets_dir),
        policy=RetryPolicy(max_attempts=1, deadline_seconds=BUDGET_SECONDS, stream_budget_seconds=BUDGET_SECONDS))
    fn = sinks_for(settings, None)[stream.api_type].fn  # type: ignore[arg-type]
    fn.sealer = sealer  # the portal's key opens what the portal sealed
    config = build_stream_config([stream])
    batch = SimpleNamespace(documents=[(kind, sample_document(kind, stream.organisation_id))])
    started = time.monotonic()
    results: list[DeliveryResult] = []
    fn.setup()
    try:
        for element, window in sink_elements(stream, batch):  # type: ignore[arg-type]
            for output in fn.deliver_now(element, config, window, RecoveredPane("test"), probe=True,
                                         single_attempt=True):
                if isinstance(output, DeliveryResult):
                    results.append(output)
    finally:
        fn.teardown()
    duration_ms = int((time.monotonic() - started) * 1000)
    if not results:
        return {"ok": False, "remote_status": None, "error": "not_sent", "duration_ms": duration_ms}
    last = results[-1]
    ok = all(result.status == DELIVERED for result in results)
    remote = last.remote_status
    return {"ok": ok, "remote_status": remote, "error": None if ok else (last.token or last.error or last.status),
            "duration_ms": duration_ms}
