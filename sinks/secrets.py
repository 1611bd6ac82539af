"""Resolve credentials on the worker.

Stream configs only hold :class:`~schemas.streams.SecretRef` (an environment
variable, a file, or a value sealed with the deployment's key:
``schemas/sealing.py``), so the pipeline graph, its display data and every output
carry references, never values. Each sink DoFn creates a :class:`SecretResolver`
in ``setup`` and resolves a reference the first time a stream needs it; values
stay in that worker's memory and are masked in its logs (``sinks/redaction.py``).
Messages name the reference, never the value.

Which references may be read is the job's :class:`~schemas.streams.SecretPolicy`
(``--secret_env_prefix``, ``--secrets_dir``): checked when the config is loaded
and again here, on the worker, right before reading, because a worker may
receive a config (a refreshed one, a re-drive's) that the submitting machine
never checked, and because a symbolic link may have changed since.
"""

from __future__ import annotations

import os

from schemas.sealing import Sealer, SealingError
from schemas.streams import SecretPolicy, SecretRef
from sinks.redaction import register_secret


class SecretError(RuntimeError):
    """A referenced secret cannot be read; the message names the reference only."""


class SecretResolver:
    """Reads and caches secrets for one DoFn instance, only where ``policy`` allows."""

    def __init__(self, policy: SecretPolicy | None = None, sealer: Sealer | None = None) -> None:
        """``sealer``: opens sealed secrets; by default one with the environment's
        key, made when the first sealed secret is read."""
        self._policy = policy or SecretPolicy()
        self._cache: dict[SecretRef, str] = {}
        self._sealer = sealer

    def resolve(self, ref: SecretRef) -> str:
        value = self._cache.get(ref)
        if value is None:
            value = self._read(ref)
            register_secret(value)
            self._cache[ref] = value
        return value

    def _read(self, ref: SecretRef) -> str:
        refusal = self._policy.refusal(ref)
        if refusal is not None:
            raise SecretError(f"secret refused: {refusal}")
        if ref.sealed is not None:
            try:
                if self._sealer is None:
                    self._sealer = Sealer.from_environment()
                return self._sealer.open(ref.sealed)
            except SealingError as err:
                raise SecretError(f"secret {ref.describe()}: {err}") from None
        if ref.env is not None:
            value = os.environ.get(ref.env)
            if not value:
                raise SecretError(f"secret {ref.describe()} is not set on this worker")
            return value
        try:
            # The real path the policy checked: every link already followed.
            with open(self._policy.file_path(ref), encoding="utf-8") as handle:
                value = handle.read().strip()
        except OSError as err:
            raise SecretError(f"secret {ref.describe()} cannot be read: {err.strerror}") from None
        except ValueError as err:  # the path left the directory since the check above
            raise SecretError(f"secret refused: {err}") from None
        if not value:
            raise SecretError(f"secret {ref.describe()} is empty")
        return value

    def clear(self) -> None:
        self._cache.clear()
