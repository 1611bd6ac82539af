"""Keep resolved secrets out of every log line in the worker process.

Libraries log what they send: botocore, at DEBUG, logs request headers, which
hold the AWS access key id. Configuring each library's logger is whack-a-mole and
a handler-level filter misses handlers added later, so redaction happens where
records are born: a log record factory that replaces every registered secret by
``***`` in the formatted message and in the traceback text, before any handler
sees the record. :class:`~sinks.secrets.SecretResolver` registers each secret it
resolves. The registry is per process, like logging itself.
"""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Any

MASK = "***"
_MIN_LENGTH = 4  # shorter values would mask ordinary text

_lock = threading.Lock()
_secrets: set[str] = set()
_installed = False


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def register_secret(value: str) -> None:
    """Mask ``value`` in every log record created from now on in this process."""
    if len(value) < _MIN_LENGTH:
        return
    with _lock:
        _secrets.add(value)
        _install()


def _install() -> None:
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not _secrets:
            return record
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the logger's problem, not ours
            return record
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
