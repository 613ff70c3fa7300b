"""SPIFFE-ID syntax (parse_spiffe_id, parse_trust_domain) and authorization patterns (id_allowed)."""

import pytest

from fastproxy.identity.spiffe import (
    InvalidSpiffeId,
    SpiffeId,
    id_allowed,
    parse_spiffe_id,
    parse_trust_domain,
)


@pytest.mark.parametrize(
    "text, trust_domain, path",
    [
        ("spiffe://mesh.local/ns/default/sa/web", "mesh.local", "/ns/default/sa/web"),
        ("spiffe://mesh.local/web", "mesh.local", "/web"),
        ("spiffe://mesh.local", "mesh.local", ""),
        ("spiffe://a_b-c.9/x", "a_b-c.9", "/x"),
        ("spiffe://td/A.Z_a-z.0-9", "td", "/A.Z_a-z.0-9"),
        ("spiffe://td/...", "td", "/..."),
        ("spiffe://td/.hidden/x.", "td", "/.hidden/x."),
        ("spiffe://" + "a" * 255 + "/x", "a" * 255, "/x"),
    ],
)
def test_valid_ids(text, trust_domain, path):
    parsed = parse_spiffe_id(text)
    assert parsed == SpiffeId(trust_domain, path)
    assert str(parsed) == text
    assert parsed.is_trust_domain == (path == "")


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("https://mesh.local/web", 'scheme must be "spiffe://"'),
        ("spiffe:/mesh.local/web", 'scheme must be "spiffe://"'),
        ("mesh.local/web", 'scheme must be "spiffe://"'),
        ("SPIFFE://mesh.local/web", "scheme must be lowercase"),
        ("Spiffe://mesh.local/web", "scheme must be lowercase"),
        ("spiffe://mesh.local:8080/web", "port"),
        ("spiffe://mesh.local:/web", "port"),
        ("spiffe://user@mesh.local/web", "userinfo"),
        ("spiffe://user:pw@mesh.local/web", "userinfo"),
        ("spiffe://mesh.local/web?x=1", "query"),
        ("spiffe://mesh.local/web?", "query"),
        ("spiffe://mesh.local/web#frag", "fragment"),
        ("spiffe://mesh.local#frag", "fragment"),
        ("spiffe://mesh.local/w%65b", "percent-encoding"),
        ("spiffe://mesh%2elocal/web", "percent-encoding"),
        ("spiffe://", "trust domain is empty"),
        ("spiffe:///web", "trust domain is empty"),
        ("spiffe://Mesh.local/web", "trust domain must be lowercase"),
        ("spiffe://MESH.LOCAL/web", "trust domain must be lowercase"),
        ("spiffe://mesh local/web", "trust domain may only contain"),
        ("spiffe://mesh.lo*cal/web", "trust domain may only contain"),
        ("spiffe://[::1]/web", "port"),
        ("spiffe://" + "a" * 256 + "/x", "trust domain is longer than 255"),
        ("spiffe://mesh.local/", 'trailing "/"'),
        ("spiffe://mesh.local/web/", 'trailing "/"'),
        ("spiffe://mesh.local//web", "empty path segments"),
        ("spiffe://mesh.local/ns//web", "empty path segments"),
        ("spiffe://mesh.local/ns/../web", 'segment ".."'),
        ("spiffe://mesh.local/..", 'segment ".."'),
        ("spiffe://mesh.local/./web", 'segment "."'),
        ("spiffe://mesh.local/ns/.", 'segment "."'),
        ("spiffe://mesh.local/we b", "path segments may only contain"),
        ("spiffe://mesh.local/web*", "path segments may only contain"),
        ("spiffe://mesh.local/wéb", "path segments may only contain"),
        ("spiffe://mesh.local/a:b", "path segments may only contain"),
        ("spiffe://mesh.local/" + "a" * 2100, "longer than 2048 bytes"),
    ],
)
def test_invalid_ids_name_the_reason(text, reason):
    with pytest.raises(InvalidSpiffeId) as info:
        parse_spiffe_id(text)
    assert reason in str(info.value)
    assert info.value.reason and reason in info.value.reason
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_not_a_string():
    with pytest.raises(InvalidSpiffeId):
        parse_spiffe_id(None)  # type: ignore[arg-type]


def test_id_length_limit_is_inclusive():
    prefix = "spiffe://td/"
    parse_spiffe_id(prefix + "a" * (2048 - len(prefix)))
    with pytest.raises(InvalidSpiffeId):
        parse_spiffe_id(prefix + "a" * (2049 - len(prefix)))


@pytest.mark.parametrize("text, expected", [("mesh.local", "mesh.local"), ("spiffe://td", "td"), ("a-b_c.d", "a-b_c.d")])
def test_trust_domains(text, expected):
    assert parse_trust_domain(text) == expected


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("Mesh.local", "lowercase"),
        ("mesh.local:80", "port"),
        ("u@mesh.local", "userinfo"),
        ("mesh.local/x", "no path"),
        ("spiffe://td/x", "no path"),
        ("mesh?x", "query"),
        ("mesh#x", "fragment"),
        ("mesh%41", "percent"),
        ("me sh", "may only contain"),
    ],
)
def test_invalid_trust_domains(text, reason):
    with pytest.raises(InvalidSpiffeId) as info:
        parse_trust_domain(text)
    assert reason in str(info.value)


WEB = "spiffe://mesh.local/ns/default/sa/web"
OPS = "spiffe://mesh.local/ns/ops/sa/backup"


@pytest.mark.parametrize(
    "patterns, spiffe_id, allowed",
    [
        (["*"], WEB, True),
        ([WEB], WEB, True),
        ([WEB], WEB + "2", False),
        ([WEB], WEB + "/x", False),
        ([], WEB, False),
        (["spiffe://mesh.local/ns/ops/*"], OPS, True),
        (["spiffe://mesh.local/ns/ops/*"], "spiffe://mesh.local/ns/ops/a/b/c", True),
        (["spiffe://mesh.local/ns/ops/*"], "spiffe://mesh.local/ns/ops", False),
        (["spiffe://mesh.local/ns/ops/*"], "spiffe://mesh.local/ns/opsx/sa/y", False),
        (["spiffe://mesh.local/ns/ops/*"], "spiffe://mesh.local/ns/ops/", False),
        (["spiffe://mesh.local/ns/ops/*"], "spiffe://other.local/ns/ops/sa/y", False),
        (["spiffe://mesh.local/*"], WEB, True),
        (["spiffe://mesh.local/*"], "spiffe://mesh.localx/web", False),
        (["spiffe://mesh.local/*"], "spiffe://mesh.local", False),
        (["spiffe://mesh.local/ns/ops/*", WEB], WEB, True),
        (["spiffe://mesh.local/ns/*/sa/web"], WEB, False),  # no wildcard inside
        (["spiffe://Mesh.local/ns/default/sa/web"], WEB, False),  # case-sensitive
    ],
)
def test_id_allowed(patterns, spiffe_id, allowed):
    assert id_allowed(patterns, spiffe_id) is allowed
    assert id_allowed(iter(patterns), spiffe_id) is allowed


# --- the configuration's validator and the runtime parser agree (hypothesis) -------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fastproxy.config import InvalidValue  # noqa: E402
from fastproxy.config.values import check_spiffe_id  # noqa: E402

_PIECES = st.sampled_from(
    ["spiffe://", "SPIFFE://", "https://", "/", "//", ".", "..", "mesh", "local", "A", "z", "9",
     "-", "_", ":", ":80", "@", "?", "#", "%", "%2F", " ", "é", "*", "[", "]", ""]
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_PIECES, max_size=10).map("".join))
def test_parser_agrees_with_the_config_validator(text):
    try:
        check_spiffe_id(text, path_required=False)
        config_ok = True
    except InvalidValue:
        config_ok = False
    try:
        parsed = parse_spiffe_id(text)
        ok = True
    except InvalidSpiffeId:
        ok = False
    assert ok == config_ok, text
    if ok:
        assert str(parsed) == text


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_PIECES, max_size=10).map(lambda parts: "spiffe://mesh.local/" + "".join(parts)))
def test_parser_agrees_with_the_config_validator_on_paths(text):
    try:
        check_spiffe_id(text)
        config_ok = True
    except InvalidValue:
        config_ok = False
    try:
        ok = not parse_spiffe_id(text).is_trust_domain
    except InvalidSpiffeId:
        ok = False
    assert ok == config_ok, text
