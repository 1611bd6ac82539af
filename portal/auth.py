"""API keys: who is asking, and which organisation's streams they may see.

A key is ``dsk_`` and 43 url-safe characters (32 random bytes). Only its SHA-256
is stored: the key carries 256 bits of entropy, so a fast hash cannot be
brute-forced and needs no salt (a password hash such as bcrypt is for guessable
secrets). The first :data:`PREFIX_LENGTH` characters are kept in clear to find
the row and to tell keys apart in listings; the comparison is constant-time.

A key belongs to an organisation (it sees and changes only that organisation's
streams) or to no organisation: an operator key, which sees all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from schemas.stream_store import api_keys, organisations
from schemas.timestamps import now_iso

KEY_PREFIX = "dsk_"
PREFIX_LENGTH = 12
#: The header a request carries its key in (``Authorization: Bearer <key>`` works too).
KEY_HEADER = "X-API-Key"


@dataclass(frozen=True)
class Principal:
    """The owner of a valid key."""

    key_prefix: str
    #: None: an operator.
    organisation_id: int | None

    @property
    def operator(self) -> bool:
        return self.organisation_id is None

    def may_see(self, organisation_id: int) -> bool:
        return self.operator or self.organisation_id == organisation_id


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def authenticate(connection: Connection, key: str | None) -> Principal | None:
    """The principal of ``key``, or None for a missing, unknown or revoked key."""
    if not key or not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    row = connection.execute(sa.select(api_keys).where(api_keys.c.prefix == key[:PREFIX_LENGTH])).mappings().first()
    if row is None or row["revoked_at"] is not None:
        return None
    if not hmac.compare_digest(row["key_hash"], hash_key(key)):
        return None
    return Principal(key_prefix=row["prefix"], organisation_id=row["organisation_id"])


def create_organisation(connection: Connection, organisation_id: int, name: str) -> None:
    connection.execute(sa.insert(organisations).values(id=organisation_id, name=name, created_at=now_iso()))


def ensure_organisation(connection: Connection, organisation_id: int, name: str | None = None) -> None:
    exists = connection.execute(sa.select(organisations.c.id).where(organisations.c.id == organisation_id)).first()
    if exists is None:
        create_organisation(connection, organisation_id, name or f"Organisation {organisation_id}")


def create_key(connection: Connection, organisation_id: int | None, name: str) -> str:
    """A new key (returned once: only its hash is kept)."""
    while True:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        taken = connection.execute(sa.select(api_keys.c.id).where(api_keys.c.prefix == key[:PREFIX_LENGTH])).first()
        if taken is None:
            break
    connection.execute(sa.insert(api_keys).values(prefix=key[:PREFIX_LENGTH], key_hash=hash_key(key),
                                                  organisation_id=organisation_id, name=name, created_at=now_iso()))
    return key


def revoke_key(connection: Connection, prefix: str) -> bool:
    updated = connection.execute(sa.update(api_keys).where(api_keys.c.prefix == prefix, api_keys.c.revoked_at.is_(None))
                                 .values(revoked_at=now_iso()))
    return updated.rowcount > 0
