"""Static world of the sample fleet: real networks, tariffs, device profiles, names.

The networks are real (MCC, MNC and TADIG codes as the GSMA assigns them) so that
documents built from the sample look like production ones and a reviewer can
check an operator against its country at a glance. Everything here is immutable;
the random parts of the fleet are drawn in :mod:`tools.sample_fleet.reference`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CountrySpec:
    """A country as the reference table shows it, plus the rate zone it is rated in."""

    id: int
    name: str
    country_code: str
    mcc: str
    iso_code: str
    zone: str


@dataclass(frozen=True)
class OperatorSpec:
    """A mobile network operator with its codes and the addresses of its core nodes.

    ``mncs`` and ``tapcodes`` pair up (Telefonica Germany runs the former E-Plus
    network as 03/DEUE1 and O2 as 07/DEUE2). ``gt_prefix`` starts the global titles
    of its VLRs and SGSNs; ``sgsn_net`` is the /24 its SGSN/SGW answer from.
    """

    id: int
    name: str
    country_iso: str
    mncs: tuple[str, ...]
    tapcodes: tuple[str, ...]
    gt_prefix: str
    sgsn_net: str


@dataclass(frozen=True)
class TariffSpec:
    """A tariff and, per rate zone, its price of one MB and of one SMS."""

    id: int
    name: str
    currency_id: int
    mb_prices: tuple[tuple[str, float], ...]
    sms_prices: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class DeviceProfile:
    """How one kind of device uses the network.

    Rates are per day; ``median_session_s`` is the median of a log-normal session
    length; byte ranges are per 45 s usage interval; ``mobile`` devices roam.
    """

    kind: str
    sessions_per_day: float
    median_session_s: float
    rx_per_interval: tuple[int, int]
    tx_per_interval: tuple[int, int]
    mobile: bool
    sms_per_day: float
    tag: str


COUNTRIES: tuple[CountrySpec, ...] = (
    CountrySpec(74, "Germany", "49", "262", "de", "Europe_I"),
    CountrySpec(68, "France", "33", "208", "fr", "Europe_I"),
    CountrySpec(150, "Netherlands", "31", "204", "nl", "Europe_I"),
    CountrySpec(222, "United Kingdom", "44", "234", "gb", "Europe_II"),
    CountrySpec(195, "Spain", "34", "214", "es", "Europe_II"),
    CountrySpec(225, "United States", "1", "310", "us", "North America"),
)

OPERATORS: tuple[OperatorSpec, ...] = (
    OperatorSpec(4, "Telekom", "de", ("01",), ("DEUD1",), "4917001", "62.156.172"),
    OperatorSpec(5, "Vodafone", "de", ("02",), ("DEUD2",), "4917200", "139.7.31"),
    OperatorSpec(6, "Telefonica", "de", ("03", "07"), ("DEUE1", "DEUE2"), "4917600", "82.113.96"),
    OperatorSpec(47, "Orange", "fr", ("01",), ("FRAF1",), "3368900", "193.252.40"),
    OperatorSpec(48, "SFR", "fr", ("10",), ("FRAF2",), "3360900", "109.22.12"),
    OperatorSpec(49, "Bouygues Telecom", "fr", ("20",), ("FRAF3",), "3366000", "62.201.130"),
    OperatorSpec(140, "KPN", "nl", ("08",), ("NLDPT",), "3165300", "145.7.5"),
    OperatorSpec(141, "Vodafone", "nl", ("04",), ("NLDLT",), "3165400", "84.241.224"),
    OperatorSpec(82, "Vodafone", "gb", ("15",), ("GBRVF",), "4477850", "212.183.140"),
    OperatorSpec(83, "O2", "gb", ("10",), ("GBRCN",), "4478020", "82.132.210"),
    OperatorSpec(84, "EE", "gb", ("30",), ("GBRME",), "4479530", "31.94.60"),
    OperatorSpec(101, "Vodafone", "es", ("01",), ("ESPAT",), "3460700", "212.166.210"),
    OperatorSpec(102, "Movistar", "es", ("07",), ("ESPTE",), "3460900", "80.58.61"),
    OperatorSpec(120, "T-Mobile", "us", ("260",), ("USAW6",), "1206000", "216.155.166"),
    OperatorSpec(121, "AT&T", "us", ("410",), ("USACG",), "1313000", "166.216.147"),
)

#: Currencies: (id, ISO 4217 code, symbol).
CURRENCIES: tuple[tuple[int, str, str], ...] = ((1, "EUR", "€"), (2, "USD", "$"))

ZONES: tuple[str, ...] = ("Europe_I", "Europe_II", "North America")

TARIFFS: tuple[TariffSpec, ...] = (
    TariffSpec(64, "Global Pro I", 1,
               (("Europe_I", 0.0125), ("Europe_II", 0.0185), ("North America", 0.0425)),
               (("Europe_I", 0.06), ("Europe_II", 0.08), ("North America", 0.12))),
    TariffSpec(65, "Europe Basic", 1,
               (("Europe_I", 0.0095), ("Europe_II", 0.0150), ("North America", 0.0650)),
               (("Europe_I", 0.05), ("Europe_II", 0.07), ("North America", 0.15))),
    TariffSpec(66, "Americas Flex", 2,
               (("Europe_I", 0.0300), ("Europe_II", 0.0350), ("North America", 0.0110)),
               (("Europe_I", 0.10), ("Europe_II", 0.11), ("North America", 0.04))),
)

#: Rate zone ids start here and run tariff by tariff in ``ZONES`` order (83 is
#: Europe_I of Global Pro I, as in the guide's usage sample).
FIRST_RATEZONE_ID = 83

DEVICE_PROFILES: tuple[DeviceProfile, ...] = (
    DeviceProfile("GPS Tracker", 7.0, 70.0, (800, 6_000), (3_000, 18_000), True, 0.6, "fleet"),
    DeviceProfile("Cold Chain Sensor", 5.0, 55.0, (500, 3_000), (2_000, 9_000), True, 0.4, "cold-chain"),
    DeviceProfile("Fleet Gateway", 4.0, 300.0, (20_000, 160_000), (8_000, 60_000), True, 0.5, "fleet"),
    DeviceProfile("Smart Meter", 2.5, 45.0, (400, 2_000), (1_000, 5_000), False, 0.3, "metering"),
    DeviceProfile("Parking Sensor", 3.0, 30.0, (200, 900), (300, 1_500), False, 0.2, "parking"),
    DeviceProfile("EV Charger", 5.0, 110.0, (4_000, 20_000), (5_000, 30_000), False, 0.3, "charging"),
)

@dataclass(frozen=True)
class OrganisationSpec:
    """A customer: its name, e-mail domain, home country, city tag and device kinds."""

    name: str
    domain: str
    home_iso: str
    city: str
    kinds: tuple[str, ...]


ORGANISATIONS: tuple[OrganisationSpec, ...] = (
    OrganisationSpec("Nordlicht Logistik GmbH", "nordlicht-logistik.de", "de", "berlin",
                     ("GPS Tracker", "Fleet Gateway", "Cold Chain Sensor")),
    OrganisationSpec("Atlantic Cold Chain Ltd", "atlantic-coldchain.co.uk", "gb", "london",
                     ("Cold Chain Sensor", "GPS Tracker")),
    OrganisationSpec("Lumiere Mobilite SAS", "lumiere-mobilite.fr", "fr", "lyon",
                     ("EV Charger", "Parking Sensor", "GPS Tracker")),
    OrganisationSpec("Polder Energie B.V.", "polder-energie.nl", "nl", "utrecht",
                     ("Smart Meter", "EV Charger")),
    OrganisationSpec("Ciudad Aparcamiento SL", "ciudad-aparcamiento.es", "es", "madrid",
                     ("Parking Sensor", "Smart Meter")),
    OrganisationSpec("Lone Star Telematics Inc.", "lonestar-telematics.com", "us", "austin",
                     ("GPS Tracker", "Fleet Gateway")),
)

FIRST_NAMES: tuple[str, ...] = (
    "Anna", "Jonas", "Claire", "Oliver", "Lucia", "Daan", "Sophie", "Mateo", "Emma", "Noah",
    "Lea", "Hugo", "Amelia", "Pablo", "Fleur", "Liam",
)
LAST_NAMES: tuple[str, ...] = (
    "Schneider", "Dupont", "Smith", "Garcia", "de Vries", "Johnson", "Weber", "Martin", "Brown",
    "Lopez", "Jansen", "Miller", "Fischer", "Bernard", "Taylor", "Bakker",
)

#: Data-plane regions of the platform's packet gateways and their /24 networks.
EUROPE_REGIONS: tuple[tuple[str, str], ...] = (("eu-west-1", "185.57.216"), ("eu-central-1", "185.57.217"))
AMERICA_REGIONS: tuple[tuple[str, str], ...] = (("us-east-1", "185.57.218"),)

#: 8-digit type allocation codes of common IoT modules, to build valid IMEIs.
MODULE_TACS: tuple[str, ...] = ("86278903", "35473610", "35925406", "86450004", "35284711")

APNS: tuple[str, ...] = ("em", "iot.example", "em")

#: Radio access types of the guide (1=3G, 2=2G, 5=HSPA+, 6=4G), with their weights.
RAT_WEIGHTS: tuple[tuple[int, int], ...] = ((6, 60), (1, 18), (5, 12), (2, 10))

#: Public addresses that failed logins come from (documentation and resolver ranges).
LOGIN_IPS: tuple[str, ...] = ("9.9.9.9", "203.0.113.57", "198.51.100.23", "192.0.2.141", "185.199.110.7")

#: Relative activity per UTC hour: much more from 06:00 to 22:00 than at night.
HOURLY_WEIGHTS: tuple[float, ...] = (
    0.12, 0.10, 0.10, 0.10, 0.12, 0.25,
    0.70, 1.00, 1.10, 1.10, 1.05, 1.00, 1.00, 1.00, 1.05, 1.10, 1.10, 1.05, 1.00, 0.95, 0.90, 0.80,
    0.45, 0.20,
)


def country_by_iso(iso: str) -> CountrySpec:
    """The country with that ISO code; the catalogue is small, a scan is enough."""
    return next(c for c in COUNTRIES if c.iso_code == iso)


def operators_in(iso: str) -> tuple[OperatorSpec, ...]:
    """Operators of one country, in catalogue order (the first is the incumbent)."""
    return tuple(o for o in OPERATORS if o.country_iso == iso)


def profile_of(kind: str) -> DeviceProfile:
    """The device profile of a kind named in :data:`ORGANISATIONS`."""
    return next(p for p in DEVICE_PROFILES if p.kind == kind)
