"""What each device does over the period: data sessions, SMS and network changes.

Planning is separate from rendering records so that a session is decided once (its
network, IMSI, radio, 45 s usage intervals and volumes) and every record about it,
the PDP context events and the usage records, is rendered from that one decision:
the Delete PDP Context volume then equals the usage of the session by construction.
Each device draws from its own random stream, so adding an endpoint does not change
what the others do.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from tools.sample_fleet import catalogue as cat
from tools.sample_fleet.clock import MS_PER_DAY, MS_PER_SECOND, hour_of_day
from tools.sample_fleet.reference import Device, Imsi

INTERVAL_MS = 45 * MS_PER_SECOND
MIN_FINAL_MS = MS_PER_SECOND
MAX_SESSION_MS = 3_600 * MS_PER_SECOND
EUROPE = ("de", "fr", "nl", "gb", "es")


@dataclass(frozen=True)
class Period:
    """The simulated time range, half open: [start_ms, end_ms)."""

    start_ms: int
    end_ms: int

    @property
    def days(self) -> int:
        return (self.end_ms - self.start_ms) // MS_PER_DAY


@dataclass(frozen=True)
class Network:
    """A visited network as one attach sees it: operator, MNC and core node titles."""

    operator: cat.OperatorSpec
    country: cat.CountrySpec
    mnc: str
    vlr: str
    sgsn: str


@dataclass(frozen=True)
class Radio:
    """Radio access of a PDP context; which area codes exist depends on the RAT."""

    rat_type: int
    lac: int | None
    sac: int | None
    rac: int | None
    ci: int | None


@dataclass(frozen=True)
class Core:
    """Core network side of a PDP context: gateways, region, tunnel ids."""

    region: str
    ggsn_control: str
    ggsn_data: str
    sgsn_control: str
    sgsn_data: str
    breakout_ip: str | None
    nsapi: int
    tx_teid_control: int
    tx_teid_data: int
    rx_teid: int


@dataclass(frozen=True)
class Interval:
    """One charged interval of a session: 45 s, or the remainder at its close."""

    start_ms: int
    end_ms: int
    rx: int
    tx: int
    final: bool


@dataclass(frozen=True)
class Session:
    """One data session (PDP context) of a device."""

    device: Device
    network: Network
    imsi: Imsi
    start_ms: int
    end_ms: int
    intervals: tuple[Interval, ...]
    radio: Radio
    core: Core
    update_ms: int | None
    update_radio: Radio | None


@dataclass(frozen=True)
class Sms:
    """One SMS: mobile originated (to the customer's API) or terminated (a command)."""

    device: Device
    network: Network
    imsi: Imsi
    at_ms: int
    mobile_originated: bool
    callback: bool


@dataclass(frozen=True)
class DevicePlan:
    """Everything one device does in the period, in time order per kind."""

    device: Device
    sessions: tuple[Session, ...]
    sms: tuple[Sms, ...]


def poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: the means here are small, so it is exact and cheap."""
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def day_weighted_instant(rng: random.Random, start_ms: int, end_ms: int) -> int:
    """An instant in [start_ms, end_ms) drawn with the hourly activity rhythm."""
    top = max(cat.HOURLY_WEIGHTS)
    while True:
        instant = rng.randrange(start_ms, end_ms)
        if rng.random() * top < cat.HOURLY_WEIGHTS[hour_of_day(instant)]:
            return instant


def _gt(rng: random.Random, operator: cat.OperatorSpec) -> str:
    """A 12-digit global title of one of the operator's core nodes."""
    width = 12 - len(operator.gt_prefix)
    return operator.gt_prefix + f"{rng.randint(0, 10**width - 1):0{width}d}"


def _network(rng: random.Random, country_iso: str, avoid: cat.OperatorSpec | None = None) -> Network:
    """Attach to an operator of a country, preferring the incumbent, never ``avoid``."""
    everyone = cat.operators_in(country_iso)
    candidates = [o for o in everyone if o != avoid] or list(everyone)
    weights = [3 if i == 0 else 2 for i in range(len(candidates))]
    operator = rng.choices(candidates, weights)[0]
    return Network(operator, cat.country_by_iso(country_iso), rng.choice(operator.mncs),
                   _gt(rng, operator), _gt(rng, operator))


def _next_network(rng: random.Random, device: Device, current: Network) -> Network:
    """Devices mostly stay; mobile ones cross borders now and then and come home again."""
    home = device.account.spec.home_iso
    here = current.country.iso_code
    if device.profile.mobile and here != home and rng.random() < 0.25:
        return _network(rng, home)
    if device.profile.mobile and home in EUROPE and rng.random() < 0.04:
        return _network(rng, rng.choice([c for c in EUROPE if c != here]))
    if rng.random() < (0.07 if device.profile.mobile else 0.02):
        return _network(rng, here, avoid=current.operator)
    return current


def _radio(rng: random.Random) -> Radio:
    """Area codes as the guide's sample shows them: 3G has LAC/SAC/RAC, 4G only a cell id."""
    rats, weights = zip(*cat.RAT_WEIGHTS, strict=True)
    rat = rng.choices(rats, weights)[0]
    if rat == 6:
        return Radio(rat, None, None, None, rng.randint(1, 2**28 - 1))
    if rat == 2:
        return Radio(rat, rng.randint(1, 65_533), None, rng.randint(1, 255), rng.randint(1, 65_535))
    rac = rng.randint(1, 255) if rng.random() < 0.5 else None
    return Radio(rat, rng.randint(1, 65_533), rng.randint(1, 65_535), rac, None)


def _core(rng: random.Random, network: Network) -> Core:
    regions = cat.AMERICA_REGIONS if network.country.iso_code == "us" else cat.EUROPE_REGIONS
    region, net = rng.choice(regions)
    sgsn = network.operator.sgsn_net
    nsapi = rng.choices(range(5, 16), [8, 4] + [1] * 9)[0]
    breakout = f"{net}.{rng.randint(200, 220)}" if rng.random() < 0.5 else None
    return Core(region, f"{net}.{rng.randint(10, 40)}", f"{net}.{rng.randint(41, 90)}",
                f"{sgsn}.{rng.randint(1, 120)}", f"{sgsn}.{rng.randint(121, 254)}", breakout, nsapi,
                rng.randint(1, 2**32 - 1), rng.randint(1, 2**32 - 1), rng.randint(1, 2**32 - 1))


def _intervals(rng: random.Random, profile: cat.DeviceProfile, start_ms: int,
               duration_ms: int) -> tuple[Interval, ...]:
    """Interim intervals of exactly 45 s, then the final remainder (never empty)."""
    full, remainder = divmod(duration_ms, INTERVAL_MS)
    intervals = []
    for k in range(full):
        begin = start_ms + k * INTERVAL_MS
        intervals.append(Interval(begin, begin + INTERVAL_MS, rng.randint(*profile.rx_per_interval),
                                  rng.randint(*profile.tx_per_interval), False))
    share = remainder / INTERVAL_MS
    begin = start_ms + full * INTERVAL_MS
    rx = max(40, int(rng.randint(*profile.rx_per_interval) * share))
    tx = max(40, int(rng.randint(*profile.tx_per_interval) * share))
    intervals.append(Interval(begin, begin + remainder, rx, tx, True))
    return tuple(intervals)


def _duration(rng: random.Random, profile: cat.DeviceProfile) -> int:
    """Log-normal session length; the final interval is kept at least a second long."""
    seconds = rng.lognormvariate(math.log(profile.median_session_s), 0.8)
    duration = min(MAX_SESSION_MS, max(5 * MS_PER_SECOND, int(seconds * MS_PER_SECOND)))
    if duration % INTERVAL_MS < MIN_FINAL_MS:
        duration += MIN_FINAL_MS
    return duration


def _session_starts(rng: random.Random, device: Device, start_ms: int, end_ms: int) -> list[int]:
    """Day-weighted session starts: a per-device level around the profile's daily rate."""
    level = device.profile.sessions_per_day * rng.uniform(0.6, 1.4)
    count = poisson(rng, level * (end_ms - start_ms) / MS_PER_DAY)
    return sorted(day_weighted_instant(rng, start_ms, end_ms) for _ in range(count))


def _session(rng: random.Random, device: Device, network: Network, start_ms: int,
             duration_ms: int) -> Session:
    intervals = _intervals(rng, device.profile, start_ms, duration_ms)
    update_ms = update_radio = None
    if duration_ms > 90 * MS_PER_SECOND and rng.random() < 0.3:
        update_ms = start_ms + rng.randint(20 * MS_PER_SECOND, duration_ms - 5 * MS_PER_SECOND)
        update_radio = _radio(rng)
    imsi = device.imsi_in(network.country.iso_code)
    return Session(device, network, imsi, start_ms, start_ms + duration_ms, intervals,
                   _radio(rng), _core(rng, network), update_ms, update_radio)


def plan_device(seed: int, device: Device, period: Period, window: tuple[int, int]) -> DevicePlan:
    """Sessions and SMS of one device inside its active window (clipped to the period).

    Sessions never overlap and all end inside the window, so the archive holds
    complete sessions only. The network may change between sessions; an SMS uses the
    network of the session before it (or of the first one).
    """
    rng = random.Random(f"{seed}:device:{device.endpoint.id}")
    begin, end = max(window[0], period.start_ms), min(window[1], period.end_ms)
    network = _network(rng, device.account.spec.home_iso)
    begin += 10 * MS_PER_SECOND
    sms_count = poisson(rng, device.profile.sms_per_day * (end - begin) / MS_PER_DAY)
    sms_times = sorted(day_weighted_instant(rng, begin, end) for _ in range(sms_count))
    sessions: list[Session] = []
    free_from = begin
    for start in _session_starts(rng, device, begin, end):
        duration = _duration(rng, device.profile)
        if start < free_from or start + duration >= end - MS_PER_SECOND:
            continue
        network = _next_network(rng, device, network) if sessions else network
        sessions.append(_session(rng, device, network, start, duration))
        free_from = start + duration + 10 * MS_PER_SECOND
    return DevicePlan(device, tuple(sessions), _sms(rng, device, sessions, sms_times, network))


def _sms(rng: random.Random, device: Device, sessions: list[Session], times: list[int],
         fallback: Network) -> tuple[Sms, ...]:
    """SMS ride on the network of the latest session (or the first one, before any)."""
    messages = []
    for at in times:
        previous = [s for s in sessions if s.start_ms <= at]
        network = previous[-1].network if previous else (sessions[0].network if sessions else fallback)
        originated = rng.random() < 0.6
        messages.append(Sms(device, network, device.imsi_in(network.country.iso_code), at,
                            originated, originated and rng.random() < 0.7))
    return tuple(messages)
