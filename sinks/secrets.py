"""Resolve credentials on the worker.

Stream configs only hold :class:`~schemas.streams.SecretRef` (an environment
variable or a file), so the pipeline graph, its display data and every output
carry references, never values. Each sink DoFn creates a :class:`SecretResolver`
in ``setup`` and resolves a reference the first time a stream needs it; values
stay in that worker's memory and are masked in its logs (``sinks/redaction.py``).
Messages name the reference, never the value.
"""

from __future__ import annotations

import os

from schemas.streams import SecretRef
from sinks.redaction import register_secret


class SecretError(RuntimeError):
    """A referenced secret cannot be read; the message names the reference only."""


class SecretResolver:
    """Reads and caches secrets for one DoFn instance."""

    def __init__(self) -> None:
        self._cache: dict[SecretRef, str] = {}

    def resolve(self, ref: SecretRef) -> str:
        value = self._cache.get(ref)
        if value is None:
            value = self._read(ref)
            register_secret(value)
            self._cache[ref] = value
        return value

    @staticmethod
    def _read(ref: SecretRef) -> str:
        if ref.env is not None:
            value = os.environ.get(ref.env)
            if not value:
                raise SecretError(f"secret {ref.describe()} is not set on this worker")
            return value
        try:
            with open(ref.file, encoding="utf-8") as handle:  # type: ignore[arg-type]
                value = handle.read().strip()
        except OSError as err:
            raise SecretError(f"secret {ref.describe()} cannot be read: {err.strerror}") from None
        if not value:
            raise SecretError(f"secret {ref.describe()} is empty")
        return value

    def clear(self) -> None:
        self._cache.clear()
