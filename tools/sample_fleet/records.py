"""Valid raw events and usage records of the sample fleet, in archive (time) order.

Three sources feed the two streams: the devices' plans (location updates, PDP
contexts, usage records, SMS and their API callbacks), the SIM and endpoint life
cycle (activation, suspension, deletion, blocking, which also bound when a device is
active) and the customers' portal users (failed logins, MFA, support access, ...).
Records are kept without ids here: ids are handed out in file order once defects
are mixed in, as the platform's sequences would.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tools.sample_fleet import catalogue as cat
from tools.sample_fleet.clock import MS_PER_DAY, MS_PER_SECOND, TimeStyle, pick_style, render
from tools.sample_fleet.plan import (
    DevicePlan,
    Network,
    Period,
    Radio,
    Session,
    Sms,
    day_weighted_instant,
    plan_device,
    poisson,
)
from tools.sample_fleet.reference import Account, Device, Fleet, Sim, User, ratezone_id

BYTES_PER_MB = 1_000_000
NETWORK, POLICY_CONTROL, API = 0, 1, 2
INFO, WARN, CRITICAL = 0, 1, 2
MIN_PER_TYPE = 3

#: Portal event types and their rate per organisation per day.
_PORTAL_RATES: tuple[tuple[int, float], ...] = ((0, 1.5), (6, 1.2), (7, 0.4), (13, 0.25), (14, 0.8))
_LOCKOUT_RATE = 0.12
_LOCKOUT_ATTEMPTS = 5
_MFA_NOTICES: tuple[tuple[str, int], ...] = (
    ("Multi-factor authentication code verified for user '{}'.", INFO),
    ("Multi-factor authentication enabled by user '{}'.", INFO),
    ("Multi-factor authentication failed for user '{}': invalid code.", WARN),
)


@dataclass(frozen=True)
class Draft:
    """A valid record without its id; ``instant_ms`` orders the archive."""

    instant_ms: int
    seq: int
    fields: dict[str, Any]


@dataclass(frozen=True)
class LifecycleChange:
    """A SIM or endpoint state change that starts or ends a device's activity."""

    type_id: int
    at_ms: int
    account: Account
    sim: Sim
    device: Device | None


@dataclass(frozen=True)
class Streams:
    """The valid records of both kinds, each list in archive order."""

    events: tuple[Draft, ...]
    usage: tuple[Draft, ...]


class _Recorder:
    """Collects drafts of one generation run; renders each record in one time style."""

    def __init__(self, seed: int) -> None:
        self._styles = random.Random(f"{seed}:styles")
        self._seq = itertools.count()
        self.events: list[Draft] = []
        self.usage: list[Draft] = []

    def style(self) -> TimeStyle:
        return pick_style(self._styles)

    def event(self, at_ms: int, type_id: int, source: int, severity: int, account: Account,
              description: str, *, alert: bool = False, style: TimeStyle | None = None,
              **refs: Any) -> None:
        fields = {
            "timestamp": render(at_ms, style or self.style()),
            "event_type_id": type_id,
            "event_source_id": source,
            "event_severity_id": severity,
            "organisation_id": account.organisation.id,
            "alert": alert,
            "description": description,
        }
        for name in ("endpoint_id", "sim_id", "imsi", "user_id", "operator_id",
                     "volume_rx_bytes", "volume_tx_bytes", "pdp_context"):
            fields[name] = refs.pop(name, None)
        if refs:
            raise TypeError(f"unknown event fields {sorted(refs)}")
        self.events.append(Draft(at_ms, next(self._seq), fields))

    def record_usage(self, at_ms: int, fields: dict[str, Any]) -> None:
        self.usage.append(Draft(at_ms, next(self._seq), fields))


def _device_refs(device: Device) -> dict[str, Any]:
    return {"endpoint_id": device.endpoint.id, "sim_id": device.sim.id}


def _location_updates(rec: _Recorder, rng: random.Random, device: Device, network: Network,
                      imsi: str, at_ms: int) -> None:
    """Update location (VLR) then Update GPRS location (SGSN), just before the activity."""
    refs = {**_device_refs(device), "imsi": imsi, "operator_id": network.operator.id}
    vlr = f"New location received from VLR for IMSI='{imsi}', now attached to VLR='{network.vlr}'."
    sgsn = f"New GPRS location received from SGSN for IMSI='{imsi}', now attached to SGSN='{network.sgsn}'."
    rec.event(at_ms - rng.randint(2_500, 6_000), 1, NETWORK, INFO, device.account, vlr, **refs)
    rec.event(at_ms - rng.randint(300, 2_000), 2, NETWORK, INFO, device.account, sgsn, **refs)


def _pdp_context(session: Session, session_id: str, radio: Radio, style: TimeStyle) -> dict[str, Any]:
    core, network = session.core, session.network
    return {
        "pdp_context_id": session_id,
        "tunnel_created": render(session.start_ms, style),
        "gtp_version": "2" if radio.rat_type == 6 else "1",
        "ggsn_control_plane_ip_address": core.ggsn_control,
        "ggsn_data_plane_ip_address": core.ggsn_data,
        "sgsn_control_plane_ip_address": core.sgsn_control,
        "sgsn_data_plane_ip_address": core.sgsn_data,
        "region": core.region,
        "breakout_ip": core.breakout_ip,
        "apn": session.device.apn,
        "nsapi": core.nsapi,
        "ue_ip_address": session.device.endpoint.ip_address,
        "imeisv": session.device.imeisv,
        "mcc": network.country.mcc,
        "mnc": network.mnc,
        "lac": radio.lac,
        "sac": radio.sac,
        "rac": radio.rac,
        "ci": radio.ci,
        "rat_type": radio.rat_type,
        "tx_teid_control_plane": core.tx_teid_control,
        "tx_teid_data_plane": core.tx_teid_data,
        "rx_teid": core.rx_teid,
        "imsi": session.imsi.imsi,
    }


def _usage_fields(device: Device, network: Network, imsi: str, traffic_type: int, start: str, end: str,
                  rx: int, tx: int, cost: float, session_id: str | None, final: bool) -> dict[str, Any]:
    tariff = device.account.tariff
    return {
        "imsi": imsi,
        "sim_id": device.sim.id,
        "endpoint_id": device.endpoint.id,
        "organisation_id": device.account.organisation.id,
        "operator_id": network.operator.id,
        "tariff_id": tariff.id,
        "ratezone_id": ratezone_id(tariff, network.country.zone),
        "traffic_type_id": traffic_type,
        "start_timestamp": start,
        "end_timestamp": end,
        "volume_rx": rx,
        "volume_tx": tx,
        "cost": cost,
        "session_id": session_id,
        "final": final,
    }


def _render_session(rec: _Recorder, session: Session, session_id: str) -> None:
    """Create, maybe Update, Delete PDP Context and one usage record per interval."""
    device, network = session.device, session.network
    refs = {**_device_refs(device), "imsi": session.imsi.imsi, "operator_id": network.operator.id}
    style = rec.style()
    rec.event(session.start_ms, 3, NETWORK, INFO, device.account, "PDP Context created.", style=style,
              pdp_context=_pdp_context(session, session_id, session.radio, style), **refs)
    radio = session.radio
    if session.update_ms is not None and session.update_radio is not None:
        radio = session.update_radio
        done = [i for i in session.intervals if i.end_ms <= session.update_ms]
        style = rec.style()
        rec.event(session.update_ms, 4, NETWORK, INFO, device.account, "PDP Context updated.", style=style,
                  pdp_context=_pdp_context(session, session_id, radio, style),
                  volume_rx_bytes=sum(i.rx for i in done), volume_tx_bytes=sum(i.tx for i in done), **refs)
    price = dict(device.account.tariff.mb_prices)[network.country.zone]
    for interval in session.intervals:
        style = rec.style()
        cost = round((interval.rx + interval.tx) / BYTES_PER_MB * price, 8)
        rec.record_usage(interval.end_ms, _usage_fields(
            device, network, session.imsi.imsi, 5, render(interval.start_ms, style),
            render(interval.end_ms, style), interval.rx, interval.tx, cost, session_id, interval.final))
    style = rec.style()
    rec.event(session.end_ms, 5, NETWORK, INFO, device.account, "PDP Context deleted.", style=style,
              pdp_context=_pdp_context(session, session_id, radio, style),
              volume_rx_bytes=sum(i.rx for i in session.intervals),
              volume_tx_bytes=sum(i.tx for i in session.intervals), **refs)


def _render_sms(rec: _Recorder, rng: random.Random, sms: Sms) -> None:
    """One usage record per message; a delivered MO SMS also raises an API callback event."""
    device = sms.device
    style = rec.style()
    at = render(sms.at_ms, style)
    price = dict(device.account.tariff.sms_prices)[sms.network.country.zone]
    rx, tx = (0, 1) if sms.mobile_originated else (1, 0)
    rec.record_usage(sms.at_ms, _usage_fields(device, sms.network, sms.imsi.imsi, 6, at, at, rx, tx, price,
                                              None, False))
    if sms.callback:
        url = f"https://api.{device.account.spec.domain}/sms"
        rec.event(sms.at_ms + rng.randint(300, 3_000), 15, API, INFO, device.account,
                  f"SMS from endpoint '{device.endpoint.name}' forwarded to API callback '{url}', "
                  "HTTP status 200.", **_device_refs(device))


def _render_device(rec: _Recorder, seed: int, plan: DevicePlan,
                   session_ids: dict[tuple[int, int], str]) -> None:
    """A device's activities in time order, with location updates on every new network."""
    rng = random.Random(f"{seed}:render:{plan.device.endpoint.id}")
    activities: list[tuple[int, Session | Sms]] = [(s.start_ms, s) for s in plan.sessions]
    activities += [(m.at_ms, m) for m in plan.sms]
    attached: Network | None = None
    for at_ms, activity in sorted(activities, key=lambda pair: pair[0]):
        if activity.network != attached:
            _location_updates(rec, rng, plan.device, activity.network, activity.imsi.imsi, at_ms)
            attached = activity.network
        if isinstance(activity, Session):
            _render_session(rec, activity, session_ids[(plan.device.endpoint.id, activity.start_ms)])
        else:
            _render_sms(rec, rng, activity)


def _session_ids(seed: int, plans: Iterable[DevicePlan]) -> dict[tuple[int, int], str]:
    """PDP context ids in the order the tunnels were created, with the platform's gaps."""
    rng = random.Random(f"{seed}:sessions")
    sessions = sorted((s for p in plans for s in p.sessions),
                      key=lambda s: (s.start_ms, s.device.endpoint.id))
    ids, next_id = {}, 162_094_787
    for session in sessions:
        ids[(session.device.endpoint.id, session.start_ms)] = str(next_id)
        next_id += rng.randint(1, 9)
    return ids


def plan_lifecycle(seed: int, fleet: Fleet, period: Period) -> tuple[dict[int, tuple[int, int]],
                                                                      tuple[LifecycleChange, ...]]:
    """Pick devices activated, suspended or blocked during the period and spare SIMs deleted.

    Returns each device's active window and the changes. An activated device is
    silent before its activation; a suspended or blocked one after the change.
    """
    rng = random.Random(f"{seed}:lifecycle")
    devices = fleet.devices
    per_kind = max(1, min(max(2, round(len(devices) * period.days / 350)), len(devices) // 8))
    chosen = rng.sample(devices, 3 * per_kind)
    span = period.end_ms - period.start_ms
    early = (period.start_ms + span // 20, period.start_ms + span // 2)
    late = (period.start_ms + span * 2 // 5, period.end_ms - span // 50)
    windows = {d.endpoint.id: (period.start_ms, period.end_ms) for d in devices}
    changes = []
    for number, device in enumerate(chosen):
        type_id = (8, 9, 11)[number // per_kind]
        at = day_weighted_instant(rng, *(early if type_id == 8 else late))
        windows[device.endpoint.id] = ((at + rng.randint(2, 30) * 60_000, period.end_ms) if type_id == 8
                                       else (period.start_ms, at))
        changes.append(LifecycleChange(type_id, at, device.account, device.sim, device))
    spares = [(a, s) for a in fleet.accounts for s in a.spare_sims]
    for account, sim in rng.sample(spares, min(len(spares), max(per_kind, 1))):
        changes.append(LifecycleChange(10, day_weighted_instant(rng, period.start_ms, period.end_ms),
                                       account, sim, None))
    return windows, tuple(changes)


def _render_lifecycle(rec: _Recorder, change: LifecycleChange) -> None:
    iccid = change.sim.iccid
    refs: dict[str, Any] = {"sim_id": change.sim.id}
    if change.device is not None:
        refs["endpoint_id"] = change.device.endpoint.id
    if change.type_id == 8:
        rec.event(change.at_ms, 8, API, INFO, change.account, f"SIM with ICCID '{iccid}' activated.", **refs)
    elif change.type_id == 9:
        rec.event(change.at_ms, 9, API, WARN, change.account, f"SIM with ICCID '{iccid}' suspended.",
                  alert=True, **refs)
    elif change.type_id == 10:
        rec.event(change.at_ms, 10, API, INFO, change.account, f"SIM with ICCID '{iccid}' deleted.", **refs)
    elif change.device is not None:
        rec.event(change.at_ms, 11, POLICY_CONTROL, CRITICAL, change.account,
                  f"Endpoint '{change.device.endpoint.name}' blocked: monthly data limit of 50 MB exceeded.",
                  alert=True, **refs)


def _previous_month(period: Period) -> str:
    first = datetime.fromtimestamp(period.start_ms / MS_PER_SECOND, UTC).replace(day=1)
    return datetime.fromtimestamp(first.timestamp() - 86_400, UTC).strftime("%B %Y")


def _generic(rec: _Recorder, rng: random.Random, fleet: Fleet, account: Account, at: int,
             period: Period) -> None:
    """Generic platform notices; some name an endpoint or a user of the organisation."""
    user = rng.choice(account.users)
    own = [d for d in fleet.devices if d.account is account]
    choice = rng.randrange(3)
    if choice == 0 and own:
        device = rng.choice(own)
        rec.event(at, 0, API, INFO, account,
                  f"Endpoint '{device.endpoint.name}' updated by user '{user.username}'.",
                  user_id=user.id, **_device_refs(device))
    elif choice == 1:
        rec.event(at, 0, API, INFO, account, f"Data stream configuration changed by user '{user.username}'.",
                  user_id=user.id)
    else:
        rec.event(at, 0, API, INFO, account, f"Invoice for {_previous_month(period)} is available.")


def _portal_event(rec: _Recorder, rng: random.Random, fleet: Fleet, type_id: int, account: Account,
                  at: int, period: Period) -> None:
    user: User = rng.choice(account.users)
    if type_id == 0:
        _generic(rec, rng, fleet, account, at, period)
    elif type_id == 6:
        rec.event(at, 6, API, WARN, account, f"Failed authentication request from '{user.username}', "
                  f"Reason: Invalid password from IP {rng.choice(cat.LOGIN_IPS)}", user_id=user.id)
    elif type_id == 7:
        token = f"{rng.getrandbits(16):04x}"
        rec.event(at, 7, API, WARN, account, f"Failed authentication request with application token "
                  f"'...{token}', Reason: Token expired from IP {rng.choice(cat.LOGIN_IPS)}")
    elif type_id == 13:
        rec.event(at, 13, API, INFO, account,
                  f"Support access granted by user '{user.username}' for 24 hours.", user_id=user.id)
    else:
        text, severity = rng.choice(_MFA_NOTICES)
        rec.event(at, 14, API, severity, account, text.format(user.username), user_id=user.id)


def _lockout(rec: _Recorder, rng: random.Random, account: Account, at: int) -> None:
    """Repeated failed logins from one address, then the organisation's API access is blocked."""
    user, ip = rng.choice(account.users), rng.choice(cat.LOGIN_IPS)
    for _ in range(_LOCKOUT_ATTEMPTS):
        rec.event(at, 6, API, WARN, account, f"Failed authentication request from '{user.username}', "
                  f"Reason: Invalid password from IP {ip}", user_id=user.id)
        at += rng.randint(4, 30) * MS_PER_SECOND
    rec.event(at, 12, POLICY_CONTROL, CRITICAL, account,
              f"Organisation '{account.organisation.name}' blocked for API access for 15 minutes: "
              "too many failed authentication requests.", alert=True)


def _render_portal(rec: _Recorder, seed: int, fleet: Fleet, period: Period) -> None:
    """Users' actions over the period: at least a few of each type, mostly in office hours."""
    rng = random.Random(f"{seed}:portal")
    org_days = len(fleet.accounts) * (period.end_ms - period.start_ms) / MS_PER_DAY
    last = period.end_ms - 10 * 60_000
    for type_id, rate in _PORTAL_RATES:
        for _ in range(max(MIN_PER_TYPE, poisson(rng, rate * org_days))):
            at = day_weighted_instant(rng, period.start_ms, last)
            _portal_event(rec, rng, fleet, type_id, rng.choice(fleet.accounts), at, period)
    for _ in range(max(MIN_PER_TYPE, poisson(rng, _LOCKOUT_RATE * org_days))):
        _lockout(rec, rng, rng.choice(fleet.accounts), day_weighted_instant(rng, period.start_ms, last))


def build_streams(seed: int, fleet: Fleet, period: Period) -> Streams:
    """All valid records of the period, each stream sorted by instant (ties: creation order)."""
    rec = _Recorder(seed)
    windows, changes = plan_lifecycle(seed, fleet, period)
    plans = [plan_device(seed, d, period, windows[d.endpoint.id]) for d in fleet.devices]
    session_ids = _session_ids(seed, plans)
    for plan in plans:
        _render_device(rec, seed, plan, session_ids)
    for change in changes:
        _render_lifecycle(rec, change)
    _render_portal(rec, seed, fleet, period)

    def ordered(drafts: list[Draft]) -> tuple[Draft, ...]:
        return tuple(sorted(drafts, key=lambda d: (d.instant_ms, d.seq)))

    return Streams(ordered(rec.events), ordered(rec.usage))
