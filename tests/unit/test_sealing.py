"""Sealed credentials: sealed by the portal, opened by the sinks with the same key."""

from __future__ import annotations

import pytest

from schemas.sealing import KEY_ENV, KEY_FILE_ENV, Sealer, SealingError, keys_from, new_key
from schemas.streams import SecretPolicy, StreamConfigError, stream_from_dict
from sinks.secrets import SecretError, SecretResolver


def _stream(secret: dict) -> dict:
    return {"id": "k", "organisation_id": 1, "stream_type": "usage", "api_type": "aws_kinesis",
            "created_at": "2026-10-01T00:00:00Z",
            "kinesis": {"region": "eu-central-1", "stream_name": "s", "access_key_id": {"env": "DATASTREAMER_K"},
                        "secret_access_key": secret}}


def test_sealed_values_open_with_any_key_of_the_list_and_seal_with_the_first():
    old, new = new_key(), new_key()
    token = Sealer([old]).seal("value")
    rotated = Sealer([new, old])
    assert rotated.open(token) == "value"
    assert Sealer([new]).open(rotated.reseal(token)) == "value"
    with pytest.raises(SealingError, match="cannot be opened") as caught:
        Sealer([new]).open(token)
    assert "value" not in str(caught.value)


def test_the_key_comes_from_the_environment_or_a_file(tmp_path):
    key = new_key()
    assert keys_from({KEY_ENV: f" {key} , {new_key()}"})[0] == key
    path = tmp_path / "key"
    path.write_text(key + "\n")
    assert keys_from({KEY_FILE_ENV: str(path)}) == [key]
    with pytest.raises(SealingError, match=KEY_ENV):
        keys_from({})
    with pytest.raises(SealingError, match="cannot be read"):
        keys_from({KEY_FILE_ENV: str(tmp_path / "missing")})
    with pytest.raises(SealingError, match="not a Fernet key"):
        Sealer(["short"])


def test_a_stream_may_carry_a_sealed_secret_and_the_resolver_opens_it(monkeypatch):
    key = new_key()
    token = Sealer([key]).seal("the-secret")
    stream = stream_from_dict(_stream({"sealed": token}))
    ref = stream.destination.secret_access_key
    assert ref.sealed == token and ref.describe() == "sealed value" and token not in repr(ref)
    assert SecretPolicy().refusal(ref) is None
    monkeypatch.setenv(KEY_ENV, key)
    assert SecretResolver().resolve(ref) == "the-secret"
    monkeypatch.setenv(KEY_ENV, new_key())
    with pytest.raises(SecretError, match="sealed value: a sealed secret cannot be opened"):
        SecretResolver().resolve(ref)


@pytest.mark.parametrize("secret", [{"sealed": "not base64!"}, {"sealed": "abc", "env": "DATASTREAMER_X"},
                                    {"value": "plain"}])
def test_a_sealed_reference_is_checked_like_the_others(secret):
    with pytest.raises(StreamConfigError) as caught:
        stream_from_dict(_stream(secret))
    assert caught.value.field == "kinesis.secret_access_key"
