"""Outbound safety: destinations that would reach into private networks or cloud
metadata are refused unless the development option allows them; HMAC signatures
verify; a refused stream config stops the job before it runs."""

from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path

import pytest

from pipelines.data_streamer import main
from sinks.outbound import (
    DestinationRefusedError,
    OutboundGuard,
    _forbidden,
    check_url,
    sign,
    verify_signature,
)
from tests.guide_samples import RAW_EVENTS
from tests.streams import rest_stream


def _loopback_name() -> str:
    """A host name other than 'localhost' that this machine resolves to 127.x
    through /etc/hosts (every machine here maps its own name there)."""
    for line in Path("/etc/hosts").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields and fields[0].startswith("127."):
            for name in fields[1:]:
                if name != "localhost" and socket.gethostbyname(name).startswith("127."):
                    return name
    pytest.fail("no loopback alias besides localhost in /etc/hosts: add one (e.g. '127.0.0.1 loopback-alias')")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://203.0.113.7/hook", "a raw IP address is not allowed"),
        ("https://10.1.2.3/hook", "a raw IP address is not allowed"),
        ("https://169.254.169.254/latest/meta-data/", "a raw IP address is not allowed"),
        ("https://[::1]:8443/hook", "a raw IP address is not allowed"),
        ("https://localhost/hook", "localhost resolves to a loopback address (127.0.0.1)"),
        ("http://hooks.example.com/hook", "destinations must use https"),
        ("https://does-not-exist.invalid/hook", "does not resolve"),
    ],
)
def test_refused_destinations(url, message):
    with pytest.raises(DestinationRefusedError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_url(url)


def test_a_name_that_resolves_to_loopback_is_refused():
    name = _loopback_name()
    with pytest.raises(DestinationRefusedError, match=f"{name} resolves to a loopback address"):
        check_url(f"https://{name}/hook")


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.0.0.5", "a private address"),
        ("172.16.4.1", "a private address"),
        ("192.168.1.10", "a private address"),
        ("127.0.0.1", "a loopback address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("169.254.10.1", "a link-local address"),
        ("224.0.0.1", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),
        ("::ffff:10.0.0.1", "a private address"),
        ("100.64.0.1", "not a public address"),
    ],
)
def test_address_classification(address, reason):
    assert _forbidden(ipaddress.ip_address(address)) == reason


def test_public_addresses_pass():
    assert _forbidden(ipaddress.ip_address("8.8.8.8")) is None
    assert _forbidden(ipaddress.ip_address("2a00:1450:4001:80b::200e")) is None


def test_development_option_allows_local_destinations():
    check_url("http://127.0.0.1:8080/hook", allow_insecure=True)
    assert OutboundGuard(allow_insecure=True).refusal("http://localhost/x") is None
    assert "loopback" in OutboundGuard().refusal("https://localhost/x")


def test_guard_rechecks_a_name_after_its_interval():
    answers = iter([["93.184.216.34"], ["10.0.0.7"]])
    now = [0.0]
    guard = OutboundGuard(resolver=lambda host: next(answers), clock=lambda: now[0])
    assert guard.refusal("https://hooks.example.com/a") is None
    assert guard.refusal("https://hooks.example.com/b") is None  # cached: same host
    now[0] = 301.0
    assert "private address" in guard.refusal("https://hooks.example.com/a")


def test_signature_round_trip_and_tampering():
    header = sign("whsec_test", b'[{"id":1}]', timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert verify_signature("whsec_test", header, b'[{"id":1}]', now=1_700_000_060)
    assert not verify_signature("whsec_test", header, b'[{"id":2}]', now=1_700_000_060)
    assert not verify_signature("other", header, b'[{"id":1}]', now=1_700_000_060)
    assert not verify_signature("whsec_test", header, b'[{"id":1}]', now=1_700_000_000 + 301)
    assert not verify_signature("whsec_test", "garbage", b"[]")


def test_job_refuses_an_unsafe_destination_before_running(tmp_path, sample_reference_dir, capsys):
    (tmp_path / "events.jsonl").write_text(json.dumps(RAW_EVENTS["5.1.1"]) + "\n")
    (tmp_path / "streams.json").write_text(json.dumps([rest_stream("internal", "https://10.0.0.8/hook")]))
    argv = [f"--events_input={tmp_path / 'events.jsonl'}", f"--reference_dir={sample_reference_dir}",
            f"--streams_config={tmp_path / 'streams.json'}", f"--output_dir={tmp_path / 'out'}"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "stream 'internal': destination refused" in error and "raw IP address" in error
    assert not (tmp_path / "out" / "events").exists()
