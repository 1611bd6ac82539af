"""The run summary: what was read and where every record ended up.

Computed from the job's Beam metrics (namespace ``datastreamer``), so it reads the
same on every runner that reports committed counters. The contract it checks is
the design brief's (docs/architecture.md): every record read is a document, a duplicate or a dead letter.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from schemas import metrics
from schemas.records import KINDS


@dataclass
class KindSummary:
    read: int = 0
    valid: int = 0
    late: int = 0  # streaming: delivered although behind the watermark
    unique: int = 0
    documents: int = 0
    routed: int = 0
    routed_documents: int = 0
    filtered: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    documents_by_type: dict[str, int] = field(default_factory=dict)

    parked_documents: int = 0

    @property
    def duplicates(self) -> int:
        # Too-late records are valid but stop at the lateness gate, before
        # de-duplication, as dead letters.
        return self.valid - self.dead_letters.get("too_late", 0) - self.unique

    @property
    def dead_letter_total(self) -> int:
        return sum(self.dead_letters.values())

    @property
    def reconciled(self) -> bool:
        return self.read == self.documents + self.duplicates + self.dead_letter_total


#: What can be in flight when a streaming run stops, in the order a record meets them.
IN_FLIGHT = ("records", "documents", "deliveries", "dead_letters_unwritten")


@dataclass
class DrainReport:
    """How a streaming run ended: why it stopped, how long its drain took and what
    was still in flight when it was cancelled (``pipelines/drain.py``).

    A streaming run has no natural end, so its counts only add up if it stops
    reading and lets what it read arrive first; this says whether that happened,
    so a summary of a cut-short run is never mistaken for a complete one."""

    #: "SIGTERM", "--run_seconds" or "the runner (<state>)" (a job that ended by itself)
    reason: str
    #: --drain_seconds
    limit_seconds: float
    #: from the stop request until the job was cancelled
    seconds: float
    #: whether the reads stopped handing out new messages (only the local runner's can)
    reads_stopped: bool
    #: IN_FLIGHT -> count when the job was cancelled: records read but not yet a
    #: document, duplicate or dead letter; documents neither routed nor filtered;
    #: stream deliveries (document x stream) neither delivered, parked nor not
    #: deliverable; dead letters counted in an output window whose file was not
    #: written yet
    in_flight: dict[str, int] = field(default_factory=dict)

    @property
    def in_flight_total(self) -> int:
        return sum(self.in_flight.values())

    @property
    def clean(self) -> bool:
        return self.in_flight_total == 0

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "limit_seconds": self.limit_seconds, "seconds": round(self.seconds, 1),
                "reads_stopped": self.reads_stopped, "in_flight": self.in_flight, "clean": self.clean}

    def render(self) -> list[str]:
        if self.reason.startswith("the runner"):
            lines = [f"  ended by {self.reason}"]
        elif self.reads_stopped:
            lines = [f"  stopped by {self.reason}: stopped reading, then drained for {self.seconds:.1f} s "
                     f"(--drain_seconds {self.limit_seconds:g})"]
        else:
            lines = [f"  stopped by {self.reason}: this process could not stop the reads, so it cancelled without "
                     "draining"]
        if self.clean:
            lines.append("  in flight when it stopped: nothing; every record read is accounted for")
        else:
            parts = [f"{self.in_flight[name]} {name.replace('_', ' ')}" for name in IN_FLIGHT
                     if self.in_flight.get(name)]
            lines.append(f"  in flight when it stopped: {', '.join(parts)}: read and acknowledged, but at no "
                         "destination (docs/streaming.md#stopping-a-streaming-run)")
        return lines


@dataclass
class RunSummary:
    kinds: dict[str, KindSummary]
    #: api type -> {"requests", "documents", "failed_documents", "bytes"}
    deliveries: dict[str, dict[str, int]] = field(default_factory=dict)
    #: routed documents no destination can take, "<kind>|<reason>" -> count
    delivery_dead_letters: dict[str, int] = field(default_factory=dict)
    #: stream id -> {"routed", "delivered", "parked", "not_deliverable", "redelivered",
    #: "recovered" (delivered from the park by the recovery step), "unparked" (of
    #: those, parked by this run)}
    streams: dict[str, dict[str, int]] = field(default_factory=dict)
    #: streaming: "reference" / "streams" / "holds" -> {"loaded", "failed"}
    refreshes: dict[str, dict[str, int]] = field(default_factory=dict)
    #: a stopped streaming run: in-flight records are in no count
    streaming: bool = False
    #: how a streaming run ended (None: a batch run)
    drain: DrainReport | None = None
    #: False when the runner reported no counter at all: Flink's job server
    #: reports metrics only for a job that finishes, so a cancelled streaming
    #: job on Flink has none, and zeros would claim a reconciliation never made
    counted: bool = True

    @property
    def uncounted(self) -> bool:
        """A stopped streaming run the runner reported no counter of (``counted``)."""
        return not self.counted and self.drain is not None

    @property
    def delivering(self) -> bool:
        return bool(self.streams) or any(k.routed or k.filtered for k in self.kinds.values())

    def stream_reconciled(self, counts: dict[str, int]) -> bool:
        """routed = delivered + parked + not deliverable. "delivered" counts live
        deliveries only; documents parked by this run and then delivered by the
        recovery step (``unparked``, ``sinks/recovery.py``) stay in "parked", of
        which ``parked - unparked`` are still in the park."""
        return counts.get("routed", 0) == (
            counts.get("delivered", 0) + counts.get("parked", 0) + counts.get("not_deliverable", 0)
        )

    @property
    def reconciled(self) -> bool:
        records = all(k.reconciled for k in self.kinds.values())
        if not self.delivering:
            return records
        documents = all(k.documents == k.routed_documents + k.filtered for k in self.kinds.values())
        return records and documents and all(self.stream_reconciled(c) for c in self.streams.values())

    def in_flight(self) -> dict[str, int]:
        """What the counts show between two stages (``IN_FLIGHT``, but for the
        dead-letter files, which counters cannot see): 0 everywhere once every
        record read is accounted for. Duplicates are inferred (valid - unique), so
        a record between the lateness gate and de-duplication counts as one for a
        moment: a drain also waits for the counts to stop moving."""
        records = sum(max(0, k.read - k.documents - k.duplicates - k.dead_letter_total) for k in self.kinds.values())
        documents = deliveries = 0
        if self.delivering:
            documents = sum(max(0, k.documents - k.routed_documents - k.filtered) for k in self.kinds.values())
            deliveries = sum(max(0, c.get("routed", 0) - c.get("delivered", 0) - c.get("parked", 0)
                                 - c.get("not_deliverable", 0)) for c in self.streams.values())
        return {"records": records, "documents": documents, "deliveries": deliveries}

    @property
    def dead_letters(self) -> int:
        """Every dead letter counted: of the records, and of routed documents no destination can take."""
        return sum(k.dead_letter_total for k in self.kinds.values()) + sum(self.delivery_dead_letters.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reconciled": None if self.uncounted else self.reconciled,
                               "counted": not self.uncounted}
        for kind, summary in self.kinds.items():
            out[kind] = asdict(summary) | {"duplicates": summary.duplicates}
        out["deliveries"] = self.deliveries
        out["delivery_dead_letters"] = self.delivery_dead_letters
        out["streams"] = self.streams
        out["refreshes"] = self.refreshes
        if self.drain is not None:
            out["drain"] = self.drain.to_dict()
        return out

    def render(self) -> str:
        ev, us = self.kinds["event"], self.kinds["usage"]
        rows = [
            ("records read", ev.read, us.read),
            ("documents", ev.documents, us.documents),
            ("duplicates", ev.duplicates, us.duplicates),
            ("dead letters", ev.dead_letter_total, us.dead_letter_total),
        ]
        if ev.late or us.late:
            rows.insert(2, ("late", ev.late, us.late))
        lines = ["", "Run summary"]
        if self.drain is not None:
            lines += self.drain.render()[:1] if self.uncounted else self.drain.render()
        if self.uncounted:
            lines.append("  counts: none; the runner reported no metrics (Flink's job server reports them only for "
                         "a job that finishes, not for a cancelled streaming job): nothing here is reconciled; "
                         "see the destinations and the outputs")
            return "\n".join(lines) + "\n"
        lines.append(f"  {'':<16}{'events':>10}{'usage':>10}{'total':>10}")
        if self.delivering:
            rows += [
                ("routed", ev.routed_documents, us.routed_documents),
                ("filtered", ev.filtered, us.filtered),
                ("parked", ev.parked_documents, us.parked_documents),
            ]
        lines += [f"  {name:<16}{e:>10}{u:>10}{e + u:>10}" for name, e, u in rows]
        verdict = "yes" if all(k.reconciled for k in self.kinds.values()) else "NO - records are unaccounted for"
        lines.append(f"  reconciled: read = documents + duplicates + dead letters: {verdict}")
        if self.delivering:
            ok = all(k.documents == k.routed_documents + k.filtered for k in self.kinds.values())
            lines.append(f"  reconciled: documents = routed + filtered: {'yes' if ok else 'NO'}")
            lines.append(f"  {'per stream':<28}{'routed':>9}{'delivered':>10}{'parked':>8}{'recovered':>10}"
                         f"{'not deliverable':>16}{'maybe twice':>12}  reconciled")
            for stream_id, counts in sorted(self.streams.items()):
                lines.append(
                    f"    {stream_id:<26}{counts.get('routed', 0):>9}{counts.get('delivered', 0):>10}"
                    f"{counts.get('parked', 0):>8}{counts.get('recovered', 0):>10}"
                    f"{counts.get('not_deliverable', 0):>16}"
                    f"{counts.get('redelivered', 0):>12}  {'yes' if self.stream_reconciled(counts) else 'NO'}"
                )
        if ev.documents_by_type:
            lines.append("  event documents by type:")
            for type_id, count in sorted(ev.documents_by_type.items(), key=lambda kv: int(kv[0])):
                lines.append(f"    {type_id:>3}  {count}")
        if self.deliveries:
            lines.append(f"  {'deliveries':<16}{'requests':>10}{'documents':>11}{'failed':>8}{'bytes':>14}")
            for api_type, counts in sorted(self.deliveries.items()):
                lines.append(
                    f"    {api_type:<14}{counts.get('requests', 0):>10}{counts.get('documents', 0):>11}"
                    f"{counts.get('failed_documents', 0):>8}{counts.get('bytes', 0):>14}"
                )
        for key, count in sorted(self.delivery_dead_letters.items()):
            lines.append(f"  not deliverable {key:<30}{count:>8}")
        for what, outcomes in sorted(self.refreshes.items()):
            lines.append(f"  refreshes of {what}: {outcomes.get('loaded', 0)} loaded, "
                         f"{outcomes.get('failed', 0)} failed (kept the previous)")
        for kind, summary in self.kinds.items():
            if summary.dead_letters:
                lines.append(f"  {kind} dead letters by reason:")
                for reason, count in sorted(summary.dead_letters.items()):
                    lines.append(f"    {reason:<40}{count:>8}")
        return "\n".join(lines) + "\n"


def _value(result: Any) -> int:
    committed = result.committed
    return int(committed if committed is not None else result.attempted or 0)


def summarize(result: PipelineResult) -> RunSummary:
    counters = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))["counters"]
    kinds: dict[str, KindSummary] = defaultdict(KindSummary)
    for kind in KINDS:
        kinds[kind] = KindSummary()
    deliveries: dict[str, dict[str, int]] = defaultdict(dict)
    delivery_dead: dict[str, int] = {}
    refreshes: dict[str, dict[str, int]] = {}
    streams: dict[str, dict[str, int]] = defaultdict(dict)
    for counter in counters:
        name, value = counter.key.metric.name, _value(counter)
        if name.startswith("stream|"):
            _, stream_id, measure = name.split("|", 2)
            streams[stream_id][measure] = streams[stream_id].get(measure, 0) + value
            continue
        if name.startswith("archive|"):
            continue
        if name.startswith("refresh|"):
            _, what, outcome = name.split("|", 2)
            refreshes.setdefault(what, {})[outcome] = value
            continue
        if name.startswith("deliver|"):
            _, api_type, measure = name.split("|", 2)
            deliveries[api_type][measure] = deliveries[api_type].get(measure, 0) + value
            continue
        if name.startswith("deliver_dead_letter|"):
            key = name.split("|", 1)[1]
            delivery_dead[key] = delivery_dead.get(key, 0) + value
            continue
        if name.startswith(metrics.DEAD_LETTER_PREFIX + "|"):
            _, kind, reason = name.split("|", 2)
            kinds[kind].dead_letters[reason] = kinds[kind].dead_letters.get(reason, 0) + value
            continue
        kind, _, measure = name.partition(".")
        if measure.startswith("documents|type|"):
            type_id = measure.rsplit("|", 1)[1]
            kinds[kind].documents_by_type[type_id] = kinds[kind].documents_by_type.get(type_id, 0) + value
        elif measure in ("read", "valid", "late", "unique", "documents", "routed", "routed_documents", "filtered"):
            setattr(kinds[kind], measure, getattr(kinds[kind], measure) + value)
        elif measure == "parked":
            kinds[kind].parked_documents += value
    return RunSummary(dict(kinds), dict(deliveries), delivery_dead, dict(streams), refreshes, counted=bool(counters))
