"""Outbound safety: destinations that would reach into private networks or cloud
metadata are refused unless the development option allows them; HMAC signatures
verify; a refused stream config stops the job before it runs."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import requests
from apache_beam.pvalue import TaggedOutput
from hypothesis import example, given, settings
from hypothesis import strategies as st
from urllib3.util import parse_url

from pipelines.data_streamer import check_destinations, main
from schemas.streams import SecretPolicy, SecretRef, StreamConfigError
from sinks.kinesis import _KinesisWriteFn
from sinks.outbound import (
    DestinationRefusedError,
    OutboundGuard,
    _forbidden,
    check_url,
    sign,
    verify_signature,
)
from sinks.retry import RetryPolicy
from sinks.secrets import SecretError, SecretResolver
from tests.guide_samples import RAW_EVENTS
from tests.streams import config, kinesis_stream, rest_stream, s3_stream


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


# --------------------------------------------------------------------------- issue 15, outbound half

def public_resolver(host: str) -> list[str]:
    """Every name is a public address (the hosts of these tests do not resolve here)."""
    return ["93.184.216.34"]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("2002:7f00:1::", "a loopback address"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", "a cloud metadata address"),  # 6to4 of 169.254.169.254
        ("2002:a00:1::", "a private address"),  # 6to4 of 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "a Teredo address"),
        ("2001::5db8:d822", "a Teredo address"),  # Teredo carrying a public address: refused outright
        ("64:ff9b::7f00:1", "a loopback address"),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "a cloud metadata address"),
        ("64:ff9b:1::a00:1", "a private address"),  # local-use NAT64 of 10.0.0.1
        ("::127.0.0.1", "a loopback address"),  # IPv4-compatible
        ("::10.0.0.1", "a private address"),
        ("::169.254.169.254", "a cloud metadata address"),
        ("fec0::1", "a site-local address"),
        ("feff::1", "a site-local address"),
    ],
)
def test_ipv6_forms_are_judged_by_the_ipv4_address_they_carry(address, reason):
    assert _forbidden(ipaddress.ip_address(address)) == reason


def test_ipv6_forms_of_a_public_ipv4_address_pass():
    for address in ("64:ff9b::808:808", "2002:808:808::1"):
        assert _forbidden(ipaddress.ip_address(address)) is None, address


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1\\@hooks.example.com/",  # urlsplit: hooks.example.com; urllib3: 127.0.0.1
        "https://localhost\\.hooks.example.com/x",  # urlsplit: one odd name; urllib3: localhost
        "https://hooks.example.com\\x/",
        "https://user:pw@hooks.example.com/",
        "https://hooks.example.com@evil.example/",
        "https://hooks.example.com /x",
        "https://hooks.example.com\t/x",
        "https://hooks.example.com/\nHost: evil",
        "https://hooks.exa\x00mple.com/",
        "https://bücher.example/",  # a non-ASCII host: give it IDNA-encoded
        "https://hooks.example.com%2f@evil/",
        "https://hooks%2eexample.com/",
        "https://2130706433/",  # 127.0.0.1, decimal
        "https://0x7f.1/",  # 127.0.0.1, hex and short
        "https://127.1/",
        "https://[::ffff:127.0.0.1]/",
        "ftp://hooks.example.com/",
    ],
)
def test_ambiguous_urls_are_refused(url):
    """Whatever another parser might read out of these, no host is resolved or used."""
    asked: list[str] = []

    def resolver(host: str) -> list[str]:
        asked.append(host)
        return ["93.184.216.34"]

    with pytest.raises(DestinationRefusedError):
        check_url(url, resolver=resolver)
    assert asked == []


def test_an_idna_encoded_host_is_allowed():
    check_url("https://xn--bcher-kva.example/hook", resolver=public_resolver)


_URL_CHARACTERS = "ab.-_:/\\@?#%[] \t\n\x00é1270x"


@settings(max_examples=400, deadline=None)
@example("\\.evil.example/", "https://")  # urlsplit: 'hooks.example.com\\.evil.example'; urllib3: 'hooks.example.com'
@given(st.text(alphabet=_URL_CHARACTERS, max_size=30), st.sampled_from(["https://", "https:/", "https:\\\\", "https:"]))
def test_the_host_checked_is_the_host_the_http_client_connects_to(tail, scheme):
    """Property: whenever the guard accepts a URL, the one name it resolved (and
    checked) is the host urllib3, requests' and botocore's parser, connects to."""
    url = scheme + "hooks.example.com" + tail
    asked: list[str] = []

    def resolver(host: str) -> list[str]:
        asked.append(host)
        return ["93.184.216.34"]

    try:
        check_url(url, resolver=resolver)
    except DestinationRefusedError:
        return
    client_host = parse_url(url).host
    prepared = requests.Request("POST", url).prepare().url
    assert asked == [client_host.rstrip(".")] or asked == [client_host], (url, asked, client_host)
    assert parse_url(prepared).host == client_host


def test_messages_quote_a_bounded_prefix_of_the_url():
    url = "https://" + "a" * 5000 + ".example/\n"
    with pytest.raises(DestinationRefusedError) as caught:
        check_url(url, resolver=public_resolver)
    assert len(str(caught.value)) < 400
    assert "a" * 200 not in str(caught.value)


@pytest.mark.parametrize(
    ("api_type", "field"),
    [("aws_kinesis", "kinesis.endpoint_url"), ("aws_s3", "s3.endpoint_url")],
)
@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("http://127.0.0.1:4566", "destinations must use https"),
        ("https://169.254.169.254/", "a raw IP address is not allowed"),
        ("https://localhost:4566", "resolves to a loopback address"),
    ],
)
def test_an_aws_endpoint_override_is_a_checked_destination(api_type, field, endpoint, message):
    maker = kinesis_stream if api_type == "aws_kinesis" else s3_stream
    streams = config(maker("aws-override", endpoint, "target"))
    with pytest.raises(StreamConfigError, match=rf"stream 'aws-override': destination refused \({field}\)") as caught:
        check_destinations(streams, allow_insecure=False)
    assert message in str(caught.value)
    check_destinations(streams, allow_insecure=True)  # development: moto on loopback


def test_an_aws_endpoint_on_a_public_aws_host_is_allowed(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("52.119.188.1", 0))])
    check_destinations(config(kinesis_stream("k", "https://kinesis.eu-central-1.amazonaws.com", "t")), False)


def test_the_job_refuses_an_aws_endpoint_on_loopback_before_running(tmp_path, sample_reference_dir, capsys):
    (tmp_path / "events.jsonl").write_text(json.dumps(RAW_EVENTS["5.1.1"]) + "\n")
    (tmp_path / "streams.json").write_text(json.dumps([s3_stream("s3-metadata", "https://localhost:9000", "b")]))
    argv = [f"--events_input={tmp_path / 'events.jsonl'}", f"--reference_dir={sample_reference_dir}",
            f"--streams_config={tmp_path / 'streams.json'}", f"--output_dir={tmp_path / 'out'}"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "stream 's3-metadata': destination refused (s3.endpoint_url)" in error
    assert not (tmp_path / "out" / "events").exists()


def test_an_aws_sink_refuses_a_rebound_endpoint_when_it_opens_the_stream(stream_secrets):
    """Sink start: the endpoint is checked again on the worker; nothing is sent,
    no client is even made, the batch is parked and the stream deactivated."""
    made: list[Any] = []
    fn = _KinesisWriteFn(lambda *args: made.append(args), RetryPolicy(max_attempts=1))
    fn.resolver = lambda host: ["169.254.169.254"]  # type: ignore[method-assign]
    fn.setup()
    streams = config(kinesis_stream("k1", "https://kinesis.customer.example", "s"))
    outputs = list(fn.process(("k1", [("event", {"id": 1, "timestamp": "2026-11-01T00:00:00.000+0000",
                                                 "organisation": {"id": 1}, "endpoint": None})]), streams))
    results = [o for o in outputs if not isinstance(o, TaggedOutput)]
    assert [(r.status, r.token) for r in results] == [("failed", "destination_refused")]
    assert made == []
    fn.teardown()


# --------------------------------------------------------------------------- secret references


def _with_secret(stream: dict[str, Any], ref: dict[str, str]) -> dict[str, Any]:
    stream["rest"]["signing_secret"] = ref
    return stream


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ({"env": "AWS_SECRET_ACCESS_KEY"}, "does not start with the allowed prefix 'DATASTREAMER_'"),
        ({"env": "HOME"}, "does not start with the allowed prefix"),
        ({"env": "DATASTREAMER_"}, "does not start with the allowed prefix"),
        ({"file": "/etc/hostname"}, "file secrets are not allowed"),
    ],
)
def test_secret_references_outside_the_policy_are_refused_at_load(ref, message):
    streams = config(_with_secret(rest_stream("leaky", "https://hooks.example.com/x"), ref))
    with pytest.raises(StreamConfigError, match=r"stream 'leaky': rest\.signing_secret") as caught:
        check_destinations(streams, allow_insecure=True)
    assert message in str(caught.value)


def test_the_job_refuses_a_secret_outside_the_policy_with_exit_2(tmp_path, sample_reference_dir, capsys):
    (tmp_path / "events.jsonl").write_text(json.dumps(RAW_EVENTS["5.1.1"]) + "\n")
    stream = _with_secret(rest_stream("leaky", "http://127.0.0.1:9/x"), {"env": "AWS_SECRET_ACCESS_KEY"})
    (tmp_path / "streams.json").write_text(json.dumps([stream]))
    argv = [f"--events_input={tmp_path / 'events.jsonl'}", f"--reference_dir={sample_reference_dir}",
            f"--streams_config={tmp_path / 'streams.json'}", f"--output_dir={tmp_path / 'out'}",
            "--allow_insecure_destinations"]
    assert main(argv) == 2
    assert "stream 'leaky': rest.signing_secret environment variable 'AWS_SECRET_ACCESS_KEY'" in capsys.readouterr().err


def test_file_secrets_must_stay_inside_the_secrets_directory(tmp_path):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "token").write_text("inside\n")
    (tmp_path / "outside").write_text("outside\n")
    (secrets_dir / "escape").symlink_to(tmp_path / "outside")
    (secrets_dir / "sub").mkdir()
    (secrets_dir / "sub" / "ok").symlink_to(secrets_dir / "token")
    policy = SecretPolicy(secrets_dir=str(secrets_dir))
    resolver = SecretResolver(policy)
    assert resolver.resolve(SecretRef(file="token")) == "inside"
    assert resolver.resolve(SecretRef(file=str(secrets_dir / "sub" / "ok"))) == "inside"
    for name, message in (("../outside", "'..' is not allowed"), ("escape", "not inside the secrets directory"),
                          (str(tmp_path / "outside"), "not inside the secrets directory"),
                          (".", "not inside the secrets directory")):
        assert message in (policy.refusal(SecretRef(file=name)) or ""), name
        with pytest.raises(SecretError, match="secret refused"):
            SecretResolver(policy).resolve(SecretRef(file=name))


def test_the_worker_refuses_a_secret_outside_the_policy_too(monkeypatch):
    """A worker may get a config the submitting machine never checked (a
    refreshed one): the resolver applies the policy itself."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "worker-own-credential")
    with pytest.raises(SecretError) as caught:
        SecretResolver().resolve(SecretRef(env="AWS_SECRET_ACCESS_KEY"))
    assert "worker-own-credential" not in str(caught.value)
    monkeypatch.setenv("DATASTREAMER_X", "fine")
    assert SecretResolver().resolve(SecretRef(env="DATASTREAMER_X")) == "fine"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "..", ".", "", "link", "/"]), max_size=6))
def test_an_accepted_secret_path_is_inside_the_directory(tmp_path_factory, parts):
    root = tmp_path_factory.getbasetemp() / "hyp-secrets"
    inner = root / "dir"
    if not inner.exists():
        (inner / "a").mkdir(parents=True)
        (inner / "link").symlink_to(root)  # a link out of the directory
    policy = SecretPolicy(secrets_dir=str(inner))
    name = "/".join(parts)
    try:
        path = policy.file_path(SecretRef(file=name))
    except ValueError:
        return
    real = os.path.realpath(inner)
    assert os.path.commonpath([real, path]) == real and path != real


def test_config_errors_quote_a_bounded_prefix_of_untrusted_values():
    stream = kinesis_stream("k", "https://kinesis.example", "s")
    stream["kinesis"]["region"] = "x" * 5000
    with pytest.raises(StreamConfigError) as caught:
        config(stream)
    assert "x" * 81 not in str(caught.value) and len(str(caught.value)) < 200


def test_an_aws_client_botocore_will_not_make_is_a_refused_destination_not_an_exception(stream_secrets):
    """Insecure mode lets any endpoint through the guard; a client botocore
    refuses to make for it parks the batch instead of raising out of process."""
    def factory(*args: Any) -> Any:
        raise ValueError("Invalid endpoint: http://bad")

    fn = _KinesisWriteFn(factory, RetryPolicy(max_attempts=1), allow_insecure=True)
    fn.setup()
    streams = config(kinesis_stream("k1", "http://127.0.0.1:9", "s"))
    outputs = list(fn.process(("k1", [("event", {"id": 1, "timestamp": "2026-11-01T00:00:00.000+0000",
                                                 "organisation": {"id": 1}, "endpoint": None})]), streams))
    results = [o for o in outputs if not isinstance(o, TaggedOutput)]
    assert [(r.status, r.token) for r in results] == [("failed", "destination_refused")]
    fn.teardown()


def test_the_secret_flags_reach_the_policy_and_an_empty_prefix_is_refused(tmp_path, sample_reference_dir, capsys):
    from pipelines.data_streamer import _parse_args, delivery_settings, secret_policy
    from pipelines.options import ReliabilityOptions

    options = _parse_args(["--events_input=x.jsonl", "--reference_dir=r", "--secret_env_prefix=ACME_DS_",
                           f"--secrets_dir={tmp_path}"])
    assert secret_policy(options) == SecretPolicy(env_prefix="ACME_DS_", secrets_dir=str(tmp_path))
    assert delivery_settings(options).secrets == secret_policy(options)
    assert _parse_args(["--events_input=x.jsonl"]).view_as(ReliabilityOptions).secret_env_prefix == "DATASTREAMER_"
    (tmp_path / "events.jsonl").write_text(json.dumps(RAW_EVENTS["5.1.1"]) + "\n")
    argv = [f"--events_input={tmp_path / 'events.jsonl'}", f"--reference_dir={sample_reference_dir}",
            f"--output_dir={tmp_path / 'out'}", "--secret_env_prefix="]
    assert main(argv) == 2
    assert "--secret_env_prefix must be a non-empty" in capsys.readouterr().err
