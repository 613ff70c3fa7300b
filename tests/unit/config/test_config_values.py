"""Single-value syntax: durations, addresses, host names, SPIFFE ids (fastproxy.config.values)."""

import math

import pytest

from fastproxy.config import Address, InvalidValue, parse_address, parse_duration
from fastproxy.config.values import (
    DURATION_MESSAGE,
    check_hostname,
    check_spiffe_id,
    check_spiffe_pattern,
)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("1m", 60.0),
        ("24h", 86400.0),
        ("1m30s", 90.0),
        ("1h1m1s500ms", 3661.5),
        ("1.5h", 5400.0),
        ("0s", 0.0),
        ("0.5s", 0.5),
        (0, 0.0),
        (2, 2.0),
        (2.5, 2.5),
    ],
)
def test_durations(text, seconds):
    result = parse_duration(text)
    assert result == pytest.approx(seconds)
    assert type(result) is float


@pytest.mark.parametrize(
    "value",
    [
        "", "10", "10 s", " 10s", "10s ", "-1s", "1d", "s", "1.s", ".5s", "10S", "1m30",
        "1e3s", "inf", "nan", "+1s", "１s", "9" * 400 + "s",
        True, False, -1, -0.5, math.inf, -math.inf, math.nan, None, [], {}, 10**400,
    ],
)
def test_bad_durations(value):
    with pytest.raises(InvalidValue) as info:
        parse_duration(value)
    assert str(info.value) == 'must be a duration like "250ms", "10s", "1m"' == DURATION_MESSAGE
    assert isinstance(info.value, ValueError)  # callers may catch ValueError


@pytest.mark.parametrize(
    "text, host, port, is_ip, back",
    [
        ("127.0.0.1:80", "127.0.0.1", 80, True, "127.0.0.1:80"),
        ("0.0.0.0:15006", "0.0.0.0", 15006, True, "0.0.0.0:15006"),
        ("[::1]:15001", "::1", 15001, True, "[::1]:15001"),
        ("[::]:1", "::", 1, True, "[::]:1"),
        ("[fd00::6]:65535", "fd00::6", 65535, True, "[fd00::6]:65535"),
        ("localhost:8080", "localhost", 8080, False, "localhost:8080"),
        ("reviews-v1.default.svc:15006", "reviews-v1.default.svc", 15006, False, None),
        ("reviews.default.svc.cluster.local.:80", "reviews.default.svc.cluster.local.", 80, False, None),
        ("a1:80", "a1", 80, False, None),
        ("0xdead.example:80", "0xdead.example", 80, False, None),
    ],
)
def test_addresses(text, host, port, is_ip, back):
    address = parse_address(text)
    assert address == Address(host, port)
    assert address.is_ip is is_ip
    assert str(address) == (back or text)


@pytest.mark.parametrize(
    "value, message",
    [
        ("127.0.0.1", 'must be an address like "127.0.0.1:15001", "name:80" or "[::1]:15001" (the port is missing)'),
        (":80", 'must be an address like "127.0.0.1:15001", "name:80" or "[::1]:15001" (the host is missing)'),
        ("::1:80", 'IPv6 addresses need brackets, like "[::1]:15001"'),
        ("[::1]80", 'must be an address like "127.0.0.1:15001", "name:80" or "[::1]:15001"'),
        ("[::1", 'must be an address like "127.0.0.1:15001", "name:80" or "[::1]:15001"'),
        ("[zz]:80", '"zz" is not a valid IPv6 address'),
        ("[127.0.0.1]:80", '"127.0.0.1" is not a valid IPv6 address'),
        ("127.0.0.1:0", "port must be a number between 1 and 65535"),
        ("host:65536", "port must be a number between 1 and 65535"),
        ("host:+80", "port must be a number between 1 and 65535"),
        ("host:", "port must be a number between 1 and 65535"),
        ("host:٨٠", "port must be a number between 1 and 65535"),
        ("host:123456", "port must be a number between 1 and 65535"),
        ("10.0.0.256:80", '"10.0.0.256" is not a valid IPv4 address'),
        ("01.2.3.4:80", '"01.2.3.4" is not a valid IPv4 address'),
        ("-bad:80", '"-bad" is not a valid IP address or DNS name'),
        ("bad-:80", '"bad-" is not a valid IP address or DNS name'),
        ("a..b:80", '"a..b" is not a valid IP address or DNS name'),
        ("under_score:80", '"under_score" is not a valid IP address or DNS name'),
        ("sp ace:80", '"sp ace" is not a valid IP address or DNS name'),
        ("host.123:80", '"host.123" is not a valid IP address or DNS name'),
        ("ünï.example:80", '"ünï.example" is not a valid DNS name (use the ASCII/punycode form)'),
        ("a" * 64 + ":80", f'"{"a" * 64}" is not a valid IP address or DNS name'),
        (80, 'must be an address like "127.0.0.1:15001", "name:80" or "[::1]:15001"'),
        (None, 'must be an address like "127.0.0.1:15001", "name:80" or "[::1]:15001"'),
    ],
)
def test_bad_addresses(value, message):
    with pytest.raises(InvalidValue) as info:
        parse_address(value)
    assert str(info.value) == message


def test_hostname_length_limit():
    check_hostname(".".join(["a" * 63] * 3) + "." + "a" * 61)  # 253 characters
    with pytest.raises(InvalidValue):
        check_hostname(".".join(["a" * 63] * 4))  # 255 characters


@pytest.mark.parametrize(
    "value",
    [
        "spiffe://mesh.local/ns/default/sa/web",
        "spiffe://mesh.local/a",
        "spiffe://example-1_x.org/A.b-c_D/..x/x..",
    ],
)
def test_valid_spiffe_ids(value):
    check_spiffe_id(value)


@pytest.mark.parametrize(
    "value, reason",
    [
        ("http://mesh.local/x", 'it must start with "spiffe://"'),
        ("SPIFFE://mesh.local/x", 'it must start with "spiffe://"'),
        ("spiffe://Mesh.local/x", "the trust domain must be non-empty and made of a-z 0-9 . - _ (no port, no userinfo)"),
        ("spiffe:///x", "the trust domain must be non-empty and made of a-z 0-9 . - _ (no port, no userinfo)"),
        ("spiffe://mesh.local:8080/x", "the trust domain must be non-empty and made of a-z 0-9 . - _ (no port, no userinfo)"),
        ("spiffe://user@mesh.local/x", "the trust domain must be non-empty and made of a-z 0-9 . - _ (no port, no userinfo)"),
        ("spiffe://mesh.local", "it needs a path after the trust domain"),
        ("spiffe://mesh.local/", 'path segments must be non-empty, not "." or "..", and made of A-Z a-z 0-9 . - _'),
        ("spiffe://mesh.local/a/", 'path segments must be non-empty, not "." or "..", and made of A-Z a-z 0-9 . - _'),
        ("spiffe://mesh.local/a//b", 'path segments must be non-empty, not "." or "..", and made of A-Z a-z 0-9 . - _'),
        ("spiffe://mesh.local/a/./b", 'path segments must be non-empty, not "." or "..", and made of A-Z a-z 0-9 . - _'),
        ("spiffe://mesh.local/a/..", 'path segments must be non-empty, not "." or "..", and made of A-Z a-z 0-9 . - _'),
        ("spiffe://mesh.local/a%20b", 'path segments must be non-empty, not "." or "..", and made of A-Z a-z 0-9 . - _'),
        ("spiffe://mesh.local/a?x=1", 'path segments must be non-empty, not "." or "..", and made of A-Z a-z 0-9 . - _'),
        ("spiffe://mesh.local/a#f", 'path segments must be non-empty, not "." or "..", and made of A-Z a-z 0-9 . - _'),
        ("spiffe://mesh.local/" + "a" * 2048, "it is longer than 2048 bytes"),
    ],
)
def test_invalid_spiffe_ids(value, reason):
    with pytest.raises(InvalidValue) as info:
        check_spiffe_id(value)
    assert str(info.value).endswith(f"is not a valid SPIFFE id: {reason}")


def test_spiffe_patterns():
    for value in ("*", "spiffe://mesh.local/ns/ops/*", "spiffe://mesh.local/*", "spiffe://mesh.local/x"):
        check_spiffe_pattern(value, star=True)
    with pytest.raises(InvalidValue):
        check_spiffe_pattern("*", star=False)  # a peer must be named
    for value in ("spiffe://mesh.local/ns/*/x", "spiffe://mesh.local/ns*", "spiffe://*", "frontend"):
        with pytest.raises(InvalidValue):
            check_spiffe_pattern(value, star=True)
