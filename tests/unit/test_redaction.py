"""Resolved secrets are masked in every log record, whoever logs them."""

from __future__ import annotations

import logging

from schemas.streams import SecretPolicy, SecretRef
from sinks import redaction
from sinks.secrets import SecretError, SecretResolver


def test_resolved_secrets_are_masked_in_messages_args_and_tracebacks(monkeypatch, caplog):
    # The registry is per process: the secrets other tests of this process resolved
    # (moto's "test" key among them) would mask more than this test's three.
    monkeypatch.setattr(redaction, "_secrets", set())
    monkeypatch.setenv("DATASTREAMER_REDACTION_TEST", "s3cr3t-value-for-redaction")
    value = SecretResolver().resolve(SecretRef(env="DATASTREAMER_REDACTION_TEST"))
    assert value == "s3cr3t-value-for-redaction"
    log = logging.getLogger("botocore.endpoint")
    with caplog.at_level(logging.DEBUG):
        log.debug("headers: %s", {"Authorization": f"AWS4 Credential={value}/x"})
        log.warning(f"inline {value}")
        try:
            raise RuntimeError(f"failed with {value}")
        except RuntimeError:
            log.exception("boom")
    text = caplog.text
    assert "s3cr3t-value-for-redaction" not in text
    assert text.count("***") == 3  # the debug headers, the inline message, the exception text
    assert "Credential=***/x" in text


def test_missing_and_unreadable_secrets_name_the_reference_only(tmp_path, monkeypatch):
    monkeypatch.delenv("DATASTREAMER_NOT_SET", raising=False)
    resolver = SecretResolver()
    try:
        resolver.resolve(SecretRef(env="DATASTREAMER_NOT_SET"))
    except SecretError as err:
        assert "environment variable DATASTREAMER_NOT_SET is not set" in str(err)
    else:
        raise AssertionError("a missing secret must raise")
    (tmp_path / "key").write_text("  from-a-file \n")
    resolver = SecretResolver(SecretPolicy(secrets_dir=str(tmp_path)))  # file secrets need a secrets directory
    assert resolver.resolve(SecretRef(file=str(tmp_path / "key"))) == "from-a-file"
    (tmp_path / "empty").write_text("\n")
    try:
        resolver.resolve(SecretRef(file=str(tmp_path / "empty")))
    except SecretError as err:
        assert "is empty" in str(err)
    else:
        raise AssertionError("an empty secret must raise")
