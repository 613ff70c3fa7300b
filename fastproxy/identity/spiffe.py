"""SPIFFE ids (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md).

`parse_spiffe_id` accepts exactly the ids the SPIFFE-ID standard allows and names the first
rule an invalid one breaks; `id_allowed` evaluates authorization patterns ("*", exact ids,
"spiffe://TD/prefix/*").
"""
from __future__ import annotations

import re
from typing import Iterable, NamedTuple

__all__ = ["InvalidSpiffeId", "SpiffeId", "id_allowed", "parse_spiffe_id", "parse_trust_domain"]

MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

_TRUST_DOMAIN_CHARS = re.compile(r"[a-z0-9._-]+")
_SEGMENT_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_SCHEME = "spiffe://"


class InvalidSpiffeId(ValueError):
    """An invalid SPIFFE id; str() is the id and the reason, one line."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"invalid SPIFFE id {_quote(text)}: {reason}")
        self.text = text
        self.reason = reason


class SpiffeId(NamedTuple):
    """A parsed SPIFFE id. `path` is "" (trust-domain id) or starts with "/" ("/ns/web")."""

    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain}{self.path}"

    @property
    def is_trust_domain(self) -> bool:
        """True for the id of the trust domain itself ("spiffe://td"), which names no workload."""
        return not self.path


def _quote(text: str) -> str:
    shown = text if len(text) <= 120 else text[:117] + "..."
    return repr(shown)


def parse_spiffe_id(text: str) -> SpiffeId:
    """Parse "spiffe://TRUST_DOMAIN[/SEG/...]" or raise `InvalidSpiffeId` with the reason.

    Refused: another scheme (case-sensitive "spiffe"), userinfo, a port, a query, a fragment,
    percent-encoding, an empty or uppercase trust domain or one with other characters than
    a-z 0-9 . - _, empty / "." / ".." path segments, a trailing "/", path characters other
    than A-Z a-z 0-9 . - _, more than 2048 bytes (255 for the trust domain).
    """
    if not isinstance(text, str):
        raise InvalidSpiffeId(repr(text), "not a string")

    def bad(reason: str) -> InvalidSpiffeId:
        return InvalidSpiffeId(text, reason)

    if not text:
        raise bad("empty")
    if not text.startswith(_SCHEME):
        if text[: len(_SCHEME)].lower() == _SCHEME:
            raise bad('the scheme must be lowercase "spiffe"')
        raise bad('the scheme must be "spiffe://"')
    if len(text.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise bad(f"longer than {MAX_ID_BYTES} bytes")
    rest = text[len(_SCHEME):]
    if "#" in rest:
        raise bad("a fragment is not allowed")
    if "?" in rest:
        raise bad("a query is not allowed")
    if "%" in rest:
        raise bad("percent-encoding is not allowed")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        raise bad("userinfo is not allowed")
    if ":" in authority:
        raise bad("a port is not allowed")
    _check_trust_domain(authority, bad)
    if not slash:
        return SpiffeId(authority, "")
    if not path:
        raise bad('a trailing "/" is not allowed')
    segments = path.split("/")
    for index, segment in enumerate(segments):
        if not segment:
            if index == len(segments) - 1:
                raise bad('a trailing "/" is not allowed')
            raise bad("empty path segments are not allowed")
        if segment in (".", ".."):
            raise bad(f'the path segment "{segment}" is not allowed')
        if not _SEGMENT_CHARS.fullmatch(segment):
            raise bad(f"path segments may only contain A-Z a-z 0-9 . - _ (segment {segment!r})")
    return SpiffeId(authority, "/" + path)


def _check_trust_domain(trust_domain: str, bad) -> None:
    if not trust_domain:
        raise bad("the trust domain is empty")
    if len(trust_domain) > MAX_TRUST_DOMAIN_BYTES:
        raise bad(f"the trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
    if not _TRUST_DOMAIN_CHARS.fullmatch(trust_domain):
        if _TRUST_DOMAIN_CHARS.fullmatch(trust_domain.lower()):
            raise bad("the trust domain must be lowercase")
        raise bad("the trust domain may only contain a-z 0-9 . - _")


def parse_trust_domain(text: str) -> str:
    """A bare trust domain name ("mesh.local"), validated like the authority of an id.

    Also accepts "spiffe://mesh.local". Raises `InvalidSpiffeId`.
    """
    if isinstance(text, str) and text.startswith(_SCHEME):
        parsed = parse_spiffe_id(text)
        if parsed.path:
            raise InvalidSpiffeId(text, "a trust domain has no path")
        return parsed.trust_domain

    def bad(reason: str) -> InvalidSpiffeId:
        return InvalidSpiffeId(text, reason)

    if not isinstance(text, str):
        raise InvalidSpiffeId(repr(text), "not a string")
    for char, what in (("/", "a trust domain has no path"), ("@", "userinfo is not allowed"),
                       (":", "a port is not allowed"), ("?", "a query is not allowed"),
                       ("#", "a fragment is not allowed"), ("%", "percent-encoding is not allowed")):
        if char in text:
            raise bad(what)
    _check_trust_domain(text, bad)
    return text


def id_allowed(patterns: Iterable[str], spiffe_id: str) -> bool:
    """True when `spiffe_id` matches one of `patterns`.

    "*" matches any id; "spiffe://td/ns/ops/*" matches every id strictly under
    "spiffe://td/ns/ops/" (segment boundary: not "spiffe://td/ns/ops" itself, not
    "spiffe://td/ns/opsx"); anything else must be equal. Patterns are compared as given
    (they are validated when the configuration is loaded).
    """
    for pattern in patterns:
        if pattern == "*" or pattern == spiffe_id:
            return True
        if pattern.endswith("/*"):
            prefix = pattern[:-1]
            if len(spiffe_id) > len(prefix) and spiffe_id.startswith(prefix):
                return True
    return False
