"""Syntax of single configuration values: durations, addresses, host names, names,
HTTP tokens, URL paths and SPIFFE ids.

Each parser takes one raw value and returns it typed, or raises `InvalidValue` (a
`ValueError`) whose message completes the sentence "KEY.PATH: ...", e.g.
'must be a duration like "250ms", "10s", "1m"'. This module knows nothing about files,
key paths or error collection (that is `schema`), and nothing about what the values mean
to the proxy. The CLI may use `parse_duration` / `parse_address` directly (`--ttl 24h`).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re

from fastproxy.config.model import Address

__all__ = [
    "InvalidValue",
    "quote",
    "parse_duration",
    "parse_address",
    "check_hostname",
    "check_host",
    "check_name",
    "check_token",
    "check_spiffe_id",
    "check_spiffe_pattern",
    "DURATION_MESSAGE",
    "ADDRESS_MESSAGE",
    "NAME_MESSAGE",
]


class InvalidValue(ValueError):
    """A value that does not have the required syntax; str() is the user-facing reason."""


def quote(value: object) -> str:
    """A value as it would be written in TOML, for error messages (escapes control chars)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


# --- durations -------------------------------------------------------------------------

DURATION_MESSAGE = 'must be a duration like "250ms", "10s", "1m"'

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# "ms" must come before "m" and "s" in the alternation.
_DURATION_PART = r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)"
_DURATION = re.compile(f"(?:{_DURATION_PART})+")
_DURATION_PARTS = re.compile(_DURATION_PART)


def parse_duration(value: object) -> float:
    """Seconds (float) from "250ms", "10s", "1m", "24h", "1m30s", "1.5h", or a number of seconds.

    Negative, infinite and NaN values, booleans and any other syntax raise `InvalidValue`.
    """
    if isinstance(value, bool):
        raise InvalidValue(DURATION_MESSAGE)
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise InvalidValue(DURATION_MESSAGE) from None
    elif isinstance(value, str) and _DURATION.fullmatch(value):
        seconds = sum(
            float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PARTS.findall(value)
        )
    else:
        raise InvalidValue(DURATION_MESSAGE)
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidValue(DURATION_MESSAGE)
    return seconds


# --- host names and addresses ----------------------------------------------------------

ADDRESS_MESSAGE = 'must be an address like "127.0.0.1:15001", "name:80" or "[::1]:15001"'

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")


def check_hostname(name: str) -> None:
    """A DNS host name (RFC 1123: letters, digits, hyphens; one trailing dot allowed).

    A name whose last label is all digits is refused, so "10.0.0.256" is not taken for a name.
    """
    if not name.isascii():
        raise InvalidValue(f"{quote(name)} is not a valid DNS name (use the ASCII/punycode form)")
    bare = name[:-1] if name.endswith(".") else name
    labels = bare.split(".")
    if (
        not bare
        or len(bare) > 253
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise InvalidValue(f"{quote(name)} is not a valid IP address or DNS name")


def check_host(host: str) -> None:
    """An IPv4 address or a DNS name (IPv6 is handled by the bracket form)."""
    if host and all(c.isdigit() or c == "." for c in host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise InvalidValue(f"{quote(host)} is not a valid IPv4 address") from None
        return
    check_hostname(host)


def parse_address(value: object) -> Address:
    """`Address` from "host:port" (IPv4 or DNS name) or "[v6]:port"; port 1..65535."""
    if not isinstance(value, str):
        raise InvalidValue(ADDRESS_MESSAGE)
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1 : end + 2] != ":":
            raise InvalidValue(ADDRESS_MESSAGE)
        host, port_text = value[1:end], value[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidValue(f"{quote(host)} is not a valid IPv6 address") from None
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon:
            raise InvalidValue(f"{ADDRESS_MESSAGE} (the port is missing)")
        if ":" in host:
            raise InvalidValue('IPv6 addresses need brackets, like "[::1]:15001"')
        if not host:
            raise InvalidValue(f"{ADDRESS_MESSAGE} (the host is missing)")
        check_host(host)
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise InvalidValue("port must be a number between 1 and 65535")
    return Address(host, int(port_text))


DESTINATION_MESSAGE = ('must be an address or CIDR with an optional port, like "10.96.0.10:9080", '
                       '"10.96.0.0/12" or "[fd00::/8]:80"')


def parse_destination(value: object) -> tuple[str, int]:
    """A route's `destination` (SPEC §13): (the network as CIDR text, the port or 0 for
    any) from "10.96.0.10", "10.96.0.10:9080", "10.96.0.0/12", "10.96.0.0/12:9080",
    "fd00::1", "[fd00::/8]:80"."""
    if not isinstance(value, str) or not value:
        raise InvalidValue(DESTINATION_MESSAGE)
    network, port_text = value, ""
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1:] and value[end + 1] != ":"):
            raise InvalidValue(DESTINATION_MESSAGE)
        network, port_text = value[1:end], value[end + 2:]
    elif value.count(":") == 1:
        network, _, port_text = value.partition(":")
    try:
        net = ipaddress.ip_network(network, strict=False)
    except ValueError:
        raise InvalidValue(DESTINATION_MESSAGE) from None
    if port_text and (not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535):
        raise InvalidValue("port must be a number between 1 and 65535")
    return str(net), int(port_text) if port_text else 0


# --- names and HTTP syntax -------------------------------------------------------------

NAME_MESSAGE = "must be made of A-Z a-z 0-9 _ -"
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


MAX_NAME = 64   # names are metric labels and keys of the shared metric table


def check_name(value: str) -> None:
    """Listener, route and cluster names: [A-Za-z0-9_-]+, at most 64 characters."""
    if not _NAME.fullmatch(value):
        raise InvalidValue(NAME_MESSAGE)
    if len(value) > MAX_NAME:
        raise InvalidValue(f"must be at most {MAX_NAME} characters long")


def check_token(value: str) -> bool:
    """True when value is an RFC 9110 token (header names, methods)."""
    return bool(_TOKEN.fullmatch(value))


# --- SPIFFE ids ------------------------------------------------------------------------

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def check_spiffe_id(value: str, *, path_required: bool = True) -> None:
    """A SPIFFE id per the SPIFFE-ID spec: spiffe://TRUST_DOMAIN/SEG/SEG...

    Refused: other schemes, userinfo, port, query, fragment, percent-encoding, uppercase or
    empty trust domain, empty / "." / ".." segments, a trailing "/". Workload ids need a
    path (the bare trust-domain id names no workload) unless `path_required` is False.
    """

    def bad(reason: str) -> InvalidValue:
        return InvalidValue(f"{quote(value)} is not a valid SPIFFE id: {reason}")

    if not value.startswith("spiffe://"):
        raise bad('it must start with "spiffe://"')
    if len(value) > 2048:
        raise bad("it is longer than 2048 bytes")
    trust_domain, slash, path = value[len("spiffe://") :].partition("/")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise bad("the trust domain must be non-empty and made of a-z 0-9 . - _ (no port, no userinfo)")
    if not slash:
        if path_required:
            raise bad("it needs a path after the trust domain")
        return
    for segment in path.split("/"):
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise bad(
                'path segments must be non-empty, not "." or "..", and made of A-Z a-z 0-9 . - _'
            )


def check_spiffe_pattern(value: str, *, star: bool) -> None:
    """An exact SPIFFE id, "spiffe://TD/PREFIX/*" (any id under it), or (if `star`) "*"."""
    if star and value == "*":
        return
    if value.endswith("/*"):
        check_spiffe_id(value[:-2], path_required=False)
    else:
        check_spiffe_id(value)
