"""Sealed credentials: a destination secret stored encrypted, opened on the worker.

Streams managed in the portal (``portal/``) hold the credentials a customer typed
(an AWS secret key, a DataDog API key): they cannot be environment variables or
files the customer never sees. The portal seals each value with a Fernet key
(AES-128-CBC with an HMAC-SHA256, from ``cryptography``, a library made for
this) and stores only the token; a stream configuration carries it as
``{"sealed": "<token>"}`` (:class:`schemas.streams.SecretRef`), so the database,
the pipeline graph, logs and outputs only ever hold ciphertext. The sinks open
it on the worker (``sinks/secrets.py``) with the same key.

The key comes from the environment variable :data:`KEY_ENV` or from the file
named by :data:`KEY_FILE_ENV`: a comma-separated list of Fernet keys, the first
sealing and all of them opening (``MultiFernet``), so a key is rotated by putting
the new one first and re-sealing (docs/portal-operations.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_ENV = "DATASTREAMER_SEALING_KEY"
KEY_FILE_ENV = "DATASTREAMER_SEALING_KEY_FILE"


class SealingError(RuntimeError):
    """No key, a bad key, or a token no key opens; never names a value."""


def new_key() -> str:
    """A fresh key, for ``python -m portal keygen`` and tests."""
    return Fernet.generate_key().decode("ascii")


def keys_from(environ: Mapping[str, str] | None = None) -> list[str]:
    """The keys of the environment (:data:`KEY_ENV`, else the file of
    :data:`KEY_FILE_ENV`); raises :class:`SealingError` when neither is set."""
    environ = os.environ if environ is None else environ
    text = environ.get(KEY_ENV)
    if not text and environ.get(KEY_FILE_ENV):
        try:
            with open(environ[KEY_FILE_ENV], encoding="ascii") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as err:
            raise SealingError(f"the sealing key file ({KEY_FILE_ENV}) cannot be read: "
                               f"{getattr(err, 'strerror', None) or type(err).__name__}") from None
    if not text or not text.strip():
        raise SealingError(f"no sealing key: set {KEY_ENV} (or {KEY_FILE_ENV}) to a key of "
                           "`python -m portal keygen`")
    return [key.strip() for key in text.split(",") if key.strip()]


class Sealer:
    """Seals with the first key, opens with any."""

    def __init__(self, keys: list[str]) -> None:
        try:
            self._fernet = MultiFernet([Fernet(key.encode("ascii")) for key in keys])
        except (ValueError, UnicodeEncodeError):
            raise SealingError("a sealing key is not a Fernet key (32 url-safe base64-encoded bytes)") from None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Sealer:
        return cls(keys_from(environ))

    def seal(self, value: str) -> str:
        return self._fernet.encrypt(value.encode("utf-8")).decode("ascii")

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError, ValueError):
            raise SealingError("a sealed secret cannot be opened with the sealing key (a wrong key, or the token "
                               "was changed)") from None

    def reseal(self, token: str) -> str:
        """The token sealed again with the first key (key rotation)."""
        return self._fernet.rotate(token.encode("ascii")).decode("ascii")
