"""Reference data of the sample fleet: customers, SIMs, IMSIs, endpoints, networks.

Every row is a frozen dataclass whose fields are exactly those of
``schemas/avro/reference/<entity>.avsc``, so writing a table is a plain field dump
and a schema change that the generator does not follow fails the tests instead of
silently producing an incomplete table. Around the rows, :class:`Device` and
:class:`Account` keep what the activity simulation needs to stay consistent with
them (which IMSI a SIM uses where, which tariff an organisation pays, which users
it has) without putting anything into the tables that the contract does not have.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

from schemas import REFERENCE_ENTITIES
from schemas.catalogues import EVENT_SEVERITIES, EVENT_SOURCES, EVENT_TYPES, TRAFFIC_TYPES
from tools.sample_fleet import catalogue as cat
from tools.sample_fleet.clock import MS_PER_DAY, parse_start, render

MULTI_IMSI_SHARE = 0.25
MSISDN_SHARE = 0.65
TAGGED_SHARE = 0.6


@dataclass(frozen=True)
class Organisation:
    id: int
    name: str


@dataclass(frozen=True)
class Sim:
    id: int
    iccid: str
    msisdn: str | None
    production_date: str
    organisation_id: int


@dataclass(frozen=True)
class Imsi:
    id: int
    imsi: str
    import_date: str
    sim_id: int


@dataclass(frozen=True)
class Endpoint:
    id: int
    name: str
    ip_address: str | None
    tags: str | None
    imei: str | None
    organisation_id: int
    sim_id: int | None


@dataclass(frozen=True)
class Country:
    id: int
    name: str
    country_code: str
    mcc: str
    iso_code: str


@dataclass(frozen=True)
class Operator:
    id: int
    name: str
    country_id: int


@dataclass(frozen=True)
class OperatorTapcode:
    id: int
    operator_id: int
    tapcode: str


@dataclass(frozen=True)
class OperatorMnc:
    id: int
    operator_id: int
    mnc: str


@dataclass(frozen=True)
class Tariff:
    id: int
    name: str
    currency_id: int


@dataclass(frozen=True)
class Ratezone:
    id: int
    name: str
    tariff_id: int


@dataclass(frozen=True)
class TrafficType:
    id: int
    name: str
    unit: str


@dataclass(frozen=True)
class Currency:
    id: int
    code: str
    symbol: str


@dataclass(frozen=True)
class User:
    id: int
    username: str
    name: str
    organisation_id: int


@dataclass(frozen=True)
class CatalogueEntry:
    """A row of the event type, source or severity catalogue."""

    id: int
    description: str


@dataclass(frozen=True)
class Account:
    """An organisation with what the simulation needs: home, tariff, users, SIM stock."""

    organisation: Organisation
    spec: cat.OrganisationSpec
    tariff: cat.TariffSpec
    users: tuple[User, ...]
    spare_sims: tuple[Sim, ...]


@dataclass(frozen=True)
class Device:
    """An endpoint with its SIM, the SIM's IMSIs and how the device behaves.

    ``imsis[0]`` is the global IMSI used abroad; a second one, when present, is the
    local IMSI of ``account.spec.home_iso`` that a multi-IMSI applet switches to
    at home.
    """

    endpoint: Endpoint
    sim: Sim
    imsis: tuple[Imsi, ...]
    profile: cat.DeviceProfile
    account: Account
    imeisv: str
    apn: str

    def imsi_in(self, country_iso: str) -> Imsi:
        """The IMSI the SIM attaches with in a country."""
        if len(self.imsis) > 1 and country_iso == self.account.spec.home_iso:
            return self.imsis[1]
        return self.imsis[0]


@dataclass(frozen=True)
class Fleet:
    """All reference rows plus the accounts and devices they describe."""

    tables: dict[str, tuple[Any, ...]]
    accounts: tuple[Account, ...]
    devices: tuple[Device, ...]

    def rows(self, entity: str) -> tuple[Any, ...]:
        return self.tables[entity]

    def ids(self, entity: str) -> frozenset[int]:
        return frozenset(row.id for row in self.tables[entity])


def ratezone_id(tariff: cat.TariffSpec, zone: str) -> int:
    """Rate zone ids are laid out tariff by tariff, so they follow from the catalogue."""
    tariff_index = next(i for i, t in enumerate(cat.TARIFFS) if t.id == tariff.id)
    return cat.FIRST_RATEZONE_ID + tariff_index * len(cat.ZONES) + cat.ZONES.index(zone)


def luhn_digit(digits: str) -> str:
    """Check digit of an IMEI, so device identities pass a real validator."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return str((10 - total % 10) % 10)


class _IdSequence:
    """Increasing ids with small random gaps, as a shared platform database hands out."""

    def __init__(self, rng: random.Random, first: int, max_gap: int) -> None:
        self._rng = rng
        self._next = first
        self._max_gap = max_gap

    def take(self) -> int:
        value = self._next
        self._next += self._rng.randint(1, self._max_gap)
        return value


def _network_tables() -> dict[str, tuple[Any, ...]]:
    """Countries, operators, their codes, tariffs and catalogues: fixed, not random."""
    countries = tuple(Country(c.id, c.name, c.country_code, c.mcc, c.iso_code) for c in cat.COUNTRIES)
    operators = tuple(Operator(o.id, o.name, cat.country_by_iso(o.country_iso).id) for o in cat.OPERATORS)
    codes = [(o.id, mnc, tap) for o in cat.OPERATORS for mnc, tap in zip(o.mncs, o.tapcodes, strict=True)]
    ratezones = tuple(
        Ratezone(ratezone_id(t, zone), zone, t.id) for t in cat.TARIFFS for zone in cat.ZONES
    )
    return {
        "country": countries,
        "operator": operators,
        "operator_tapcode": tuple(OperatorTapcode(i, op, tap) for i, (op, _, tap) in enumerate(codes, 1)),
        "operator_mnc": tuple(OperatorMnc(i, op, mnc) for i, (op, mnc, _) in enumerate(codes, 1)),
        "tariff": tuple(Tariff(t.id, t.name, t.currency_id) for t in cat.TARIFFS),
        "ratezone": ratezones,
        "traffic_type": tuple(TrafficType(i, name, unit) for i, (name, unit) in TRAFFIC_TYPES.items()),
        "currency": tuple(Currency(*c) for c in cat.CURRENCIES),
        "event_type": tuple(CatalogueEntry(i, d) for i, d in EVENT_TYPES.items()),
        "event_source": tuple(CatalogueEntry(i, d) for i, d in EVENT_SOURCES.items()),
        "event_severity": tuple(CatalogueEntry(i, d) for i, d in EVENT_SEVERITIES.items()),
    }


def _organisation_spec(index: int) -> cat.OrganisationSpec:
    """The catalogue's customers, cycled with a numbered name beyond the sixth."""
    spec = cat.ORGANISATIONS[index % len(cat.ORGANISATIONS)]
    round_ = index // len(cat.ORGANISATIONS)
    if round_ == 0:
        return spec
    host, tld = spec.domain.split(".", 1)
    return dataclasses.replace(spec, name=f"{spec.name} {round_ + 1}", domain=f"{host}-{round_ + 1}.{tld}")


def _tariff_for(spec: cat.OrganisationSpec, index: int) -> cat.TariffSpec:
    """US customers pay in dollars; European ones alternate between the two EUR tariffs."""
    if spec.home_iso == "us":
        return cat.TARIFFS[2]
    return cat.TARIFFS[index % 2]


def _users(rng: random.Random, ids: _IdSequence, org: Organisation, domain: str) -> tuple[User, ...]:
    names = rng.sample([(f, la) for f in cat.FIRST_NAMES for la in cat.LAST_NAMES], rng.randint(3, 5))
    return tuple(
        User(ids.take(), f"{first}.{last.replace(' ', '')}@{domain}".lower(), f"{first} {last}", org.id)
        for first, last in names
    )


class _SimFactory:
    """Makes SIMs and their IMSIs with unique ICCIDs, MSISDNs and IMSIs."""

    def __init__(self, rng: random.Random, start_ms: int) -> None:
        self._rng = rng
        self._start_ms = start_ms
        self._sim_ids = _IdSequence(rng, 274_887, 40)
        self._imsi_ids = _IdSequence(rng, 205_672, 30)
        self._iccid = _IdSequence(rng, rng.randint(100_000_000, 400_000_000), 3)
        self._msisdn = _IdSequence(rng, rng.randint(10_000_000, 40_000_000), 9)
        self._global_imsi = _IdSequence(rng, rng.randint(10_000_000, 30_000_000), 4)
        self._local_imsi = _IdSequence(rng, rng.randint(1_000_000, 9_000_000), 5)
        self.made: list[tuple[Sim, tuple[Imsi, ...]]] = []

    def make(self, org: Organisation, home_iso: str) -> tuple[Sim, tuple[Imsi, ...]]:
        rng = self._rng
        produced = self._start_ms - rng.randint(120, 900) * MS_PER_DAY + rng.randint(0, MS_PER_DAY - 1)
        msisdn = f"42366{self._msisdn.take():08d}" if rng.random() < MSISDN_SHARE else None
        sim = Sim(self._sim_ids.take(), f"8988228066{self._iccid.take():09d}", msisdn,
                  render(produced - produced % 1000), org.id)
        imported = produced + rng.randint(3, 100) * MS_PER_DAY + rng.randint(0, MS_PER_DAY - 1)
        imported_at = render(imported - imported % 1000)
        imsis = [Imsi(self._imsi_ids.take(), f"9014053{self._global_imsi.take():08d}", imported_at, sim.id)]
        if rng.random() < MULTI_IMSI_SHARE:
            home = cat.operators_in(home_iso)[0]
            prefix = cat.country_by_iso(home_iso).mcc + home.mncs[0]
            serial = f"{self._local_imsi.take():0{15 - len(prefix)}d}"
            imsis.append(Imsi(self._imsi_ids.take(), prefix + serial, imported_at, sim.id))
        self.made.append((sim, tuple(imsis)))
        return sim, tuple(imsis)


def _ip_addresses(rng: random.Random, count: int) -> list[str]:
    """Distinct host addresses in 100.64.0.0/10 (carrier-grade NAT), never .0 or .255."""
    hosts_per_24 = 254
    picks = rng.sample(range((2**22 // 256) * hosts_per_24), count)
    addresses = []
    for pick in picks:
        net, host = divmod(pick, hosts_per_24)
        value = (100 << 24) + (64 << 16) + net * 256 + host + 1
        addresses.append(".".join(str((value >> shift) & 255) for shift in (24, 16, 8, 0)))
    return addresses


def _accounts(rng: random.Random, organisations: int, sims: _SimFactory,
              spare_per_org: int) -> tuple[Account, ...]:
    """Organisations with their users, tariff and a few SIMs in stock (no endpoint yet)."""
    org_ids = _IdSequence(rng, 80_025, 900)
    user_ids = _IdSequence(rng, 84_993, 60)
    accounts = []
    for index in range(organisations):
        spec = _organisation_spec(index)
        org = Organisation(org_ids.take(), spec.name)
        spares = tuple(sims.make(org, spec.home_iso)[0] for _ in range(spare_per_org))
        users = _users(rng, user_ids, org, spec.domain)
        accounts.append(Account(org, spec, _tariff_for(spec, index), users, spares))
    return tuple(accounts)


def _owner_indices(rng: random.Random, organisations: int, endpoints: int) -> list[int]:
    """Every organisation gets an endpoint; the rest go mostly to the first (larger) ones."""
    weights = [organisations - i + 1 for i in range(organisations)]
    extra = rng.choices(range(organisations), weights, k=endpoints - organisations)
    return sorted([*range(organisations), *extra])


def _devices(rng: random.Random, accounts: tuple[Account, ...], endpoints: int,
             sims: _SimFactory) -> tuple[Device, ...]:
    endpoint_ids = _IdSequence(rng, 8_638_726, 25)
    addresses = _ip_addresses(rng, endpoints)
    serials = rng.sample(range(1_000_000), endpoints)
    counters: dict[tuple[int, str], int] = {}
    devices = []
    for number, owner in enumerate(_owner_indices(rng, len(accounts), endpoints)):
        account = accounts[owner]
        profile = cat.profile_of(rng.choice(account.spec.kinds))
        key = (account.organisation.id, profile.kind)
        counters[key] = counters.get(key, 0) + 1
        sim, imsis = sims.make(account.organisation, account.spec.home_iso)
        imei14 = f"{rng.choice(cat.MODULE_TACS)}{serials[number]:06d}"
        tags = f"{profile.tag},{account.spec.city}" if rng.random() < TAGGED_SHARE else None
        endpoint = Endpoint(endpoint_ids.take(), f"{profile.kind} {counters[key]:04d}", addresses[number],
                            tags, imei14 + luhn_digit(imei14), account.organisation.id, sim.id)
        devices.append(Device(endpoint, sim, imsis, profile, account,
                              imei14 + f"{rng.randint(1, 99):02d}", rng.choice(cat.APNS)))
    return tuple(devices)


def build_fleet(seed: int, organisations: int, endpoints: int, start: str) -> Fleet:
    """The reference world of one seed; independent of the period's length.

    It has its own random stream, so changing ``--days`` or the defect rates keeps
    the same customers, SIMs and endpoints.
    """
    rng = random.Random(f"{seed}:reference")
    sims = _SimFactory(rng, parse_start(start))
    spare_per_org = max(1, endpoints // (25 * organisations))
    accounts = _accounts(rng, organisations, sims, spare_per_org)
    devices = _devices(rng, accounts, endpoints, sims)
    tables = _network_tables()
    tables["organisation"] = tuple(a.organisation for a in accounts)
    tables["user"] = tuple(u for a in accounts for u in a.users)
    tables["sim"] = tuple(sim for sim, _ in sims.made)
    tables["imsi"] = tuple(imsi for _, imsis in sims.made for imsi in imsis)
    tables["endpoint"] = tuple(d.endpoint for d in devices)
    return Fleet({entity: tables[entity] for entity in REFERENCE_ENTITIES}, accounts, devices)


def reference_rows(fleet: Fleet, entity: str) -> list[dict[str, Any]]:
    """Rows of one table as plain dicts in schema field order."""
    return [dataclasses.asdict(row) for row in fleet.rows(entity)]
