"""SPEC §3/§11 header handling, observed byte for byte by the recording upstream:
hop-by-hop removal both ways, x-forwarded-for/-proto, x-request-id, x-forwarded-client-cert
removal, and everything else passed unchanged (name case, order, value bytes)."""

from __future__ import annotations

import pytest

from support.configs import simple_config
from support.rawhttp import RawConn, Response
from support.upstreams import RecordedRequest, parse_recorded

pytestmark = pytest.mark.timeout(60)

HOP_RESPONSE = (
    "HTTP/1.1 200 OK\r\n"
    "Connection: X-Hop-Resp\r\n"
    "X-Hop-Resp: 1\r\n"
    "Keep-Alive: timeout=5\r\n"
    "Proxy-Connection: keep-alive\r\n"
    "Upgrade: foo\r\n"
    "TE: trailers\r\n"
    "X-Keep-Resp: Yes\r\n"
    "Transfer-Encoding: chunked\r\n"
    "\r\n"
    "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)
ORDER_RESPONSE_HEADERS = [
    (b"X-B", b"1"),
    (b"x-a", b"Two  spaces"),
    (b"Set-Cookie", b"a=1"),
    (b"Set-Cookie", b"b=2"),
    (b"X-Obs-Text", b"caf\xc3\xa9"),
    (b"X-Tab", b"a\tb"),
    (b"ETag", b'"xyz"'),
]
ORDER_RESPONSE = (b"HTTP/1.1 200 OK\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in ORDER_RESPONSE_HEADERS)
                  + b"Content-Length: 2\r\n\r\nok").decode("latin-1")


@pytest.fixture(scope="module")
def env(module_fastproxy, module_upstreams):
    up = module_upstreams.raw({"rules": [
        {"prefix": "/hop-response", "actions": [{"send": HOP_RESPONSE}]},
        {"prefix": "/order-response", "actions": [{"send": ORDER_RESPONSE}]},
    ]})
    proxy = module_fastproxy(simple_config(up.addr))
    return proxy, up


def exchange(env, raw_request: bytes) -> tuple[Response, RecordedRequest]:
    """Send one request on a fresh connection; return the client's response and the one
    request the upstream recorded for it."""
    proxy, up = env
    snap = up.snapshot()
    with RawConn(proxy.port()) as c:
        c.send(raw_request)
        resp = c.read_response()
    recorded = parse_recorded(up.bytes_since(snap))
    assert len(recorded) == 1, f"upstream recorded {len(recorded)} requests: {recorded!r}"
    return resp, recorded[0]


# the proxy adds/owns these; everything else must arrive exactly as sent
PROXY_OWNED = {b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id", b"connection",
               b"content-length", b"transfer-encoding",
               # trace context (SPEC §7), propagated by default
               b"traceparent", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-sampled"}


def test_other_request_headers_pass_unchanged_in_order(env):
    sent = [
        (b"Host", b"app"),
        (b"X-Custom-B", b"1"),
        (b"x-custom-a", b"Two  spaces inside"),
        (b"ACCEPT", b"*/*"),
        (b"X-Empty", b""),
        (b"X-Tab", b"a\tb"),
        (b"X-Obs-Text", b"caf\xc3\xa9"),
        (b"X-Dup", b"1"),
        (b"Cookie", b"a=1; b=2"),
        (b"X-Dup", b"2"),
        (b"User-Agent", b"test/1.0 (x; y)"),
    ]
    head = b"GET /p/a%20b?x=1&y=%2F HTTP/1.1\r\n" + b"".join(
        k + b": " + v + b"\r\n" for k, v in sent) + b"\r\n"
    resp, rec = exchange(env, head)
    assert resp.status == 200
    assert rec.method == "GET" and rec.target == "/p/a%20b?x=1&y=%2F"
    forwarded = [(k, v) for k, v in rec.headers if k.lower() not in PROXY_OWNED]
    assert forwarded == sent
    for k, v in sent:
        if v:
            assert b"\r\n" + k + b": " + v + b"\r\n" in rec.raw_head


def test_hop_by_hop_request_headers_removed(env):
    resp, rec = exchange(env, (
        b"GET /hop HTTP/1.1\r\n"
        b"Host: app\r\n"
        b"Connection: keep-alive, X-Hop-A\r\n"
        b"X-Hop-A: 1\r\n"
        b"Connection: x-hop-b\r\n"
        b"X-Hop-B: 2\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"TE: trailers\r\n"
        b"Upgrade: h2c\r\n"          # no `Connection: upgrade`: not an upgrade
        b"X-Keep: yes\r\n"
        b"\r\n"))
    assert resp.status == 200
    names = [k.lower() for k, _ in rec.headers]
    for hop in (b"x-hop-a", b"x-hop-b", b"keep-alive", b"proxy-connection", b"te", b"upgrade"):
        assert hop not in names, f"{hop!r} reached the upstream: {rec.headers!r}"
    for value in rec.header_all("connection"):
        assert "hop" not in value.lower() and "upgrade" not in value.lower(), value
    assert rec.header_all("x-keep") == ["yes"]


def test_request_transfer_encoding_is_reframed(env):
    resp, rec = exchange(env, (
        b"POST /te HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"))
    assert resp.status == 200
    assert rec.body == b"hello world"
    te = rec.header_all("transfer-encoding")
    cl = rec.header_all("content-length")
    if te:
        assert te == ["chunked"] and not cl
    else:
        assert cl == ["11"]


def test_hop_by_hop_response_headers_removed(env):
    proxy, _ = env
    with RawConn(proxy.port()) as c:
        c.send(b"GET /hop-response HTTP/1.1\r\nHost: app\r\n\r\n")
        resp = c.read_response()
    assert resp.status == 200 and resp.body == b"hello world"
    names = resp.header_names()
    for hop in ("x-hop-resp", "keep-alive", "proxy-connection", "upgrade", "te"):
        assert hop not in names, f"{hop} reached the client: {resp.headers!r}"
    for value in resp.header_all("connection"):
        assert "hop" not in value.lower(), value
    assert resp.header_all("transfer-encoding") in ([], ["chunked"])
    assert resp.header_all("x-keep-resp") == ["Yes"]


def test_other_response_headers_pass_unchanged_in_order(env):
    proxy, _ = env
    with RawConn(proxy.port()) as c:
        c.send(b"GET /order-response HTTP/1.1\r\nHost: app\r\n\r\n")
        resp = c.read_response()
    assert resp.status == 200 and resp.body == b"ok"
    ours = {k.lower() for k, _ in ORDER_RESPONSE_HEADERS}
    assert [(k, v) for k, v in resp.headers if k.lower() in ours] == ORDER_RESPONSE_HEADERS


def test_x_forwarded_for_appended(env):
    _, rec = exchange(env, b"GET /xff HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n")
    assert rec.header_all("x-forwarded-for") == ["10.0.0.1, 127.0.0.1"]
    _, rec = exchange(env, b"GET /xff HTTP/1.1\r\nHost: app\r\n\r\n")
    assert rec.header_all("x-forwarded-for") == ["127.0.0.1"]


def test_x_forwarded_proto_set(env):
    _, rec = exchange(env, b"GET /xfp HTTP/1.1\r\nHost: app\r\n\r\n")
    assert rec.header_all("x-forwarded-proto") == ["http"]
    # a client's claim is replaced, not forwarded (plain listener: http)
    _, rec = exchange(env, b"GET /xfp HTTP/1.1\r\nHost: app\r\nX-Forwarded-Proto: https\r\n\r\n")
    assert rec.header_all("x-forwarded-proto") == ["http"]


def test_x_request_id_generated_and_echoed(env):
    ids = set()
    for _ in range(2):
        resp, rec = exchange(env, b"GET /rid HTTP/1.1\r\nHost: app\r\n\r\n")
        sent_up = rec.header_all("x-request-id")
        assert len(sent_up) == 1 and sent_up[0].strip(), rec.headers
        assert resp.header_all("x-request-id") == sent_up
        ids.add(sent_up[0])
    assert len(ids) == 2, "the same x-request-id was generated twice"


def test_x_request_id_from_client_kept(env):
    resp, rec = exchange(env, b"GET /rid HTTP/1.1\r\nHost: app\r\nX-Request-Id: abc-123_XYZ\r\n\r\n")
    assert rec.header_all("x-request-id") == ["abc-123_XYZ"]
    assert resp.header_all("x-request-id") == ["abc-123_XYZ"]


def test_client_sent_xfcc_removed(env):
    _, rec = exchange(env, (b"GET /xfcc HTTP/1.1\r\nHost: app\r\n"
                            b"X-Forwarded-Client-Cert: By=spiffe://evil/x;URI=spiffe://evil/y\r\n\r\n"))
    assert rec.header_all("x-forwarded-client-cert") == []


def test_x_request_id_on_errors_before_any_exchange(env):
    """Every error the proxy makes carries an x-request-id, also a 400 for a request it
    could not even parse (and a 408 for a head that never came)."""
    proxy, up = env
    snap = up.snapshot()
    ids = set()
    for garbage in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: app\r\nBad Header: x\r\n\r\n"):
        with RawConn(proxy.port()) as c:
            c.send(garbage)
            resp = c.read_response()
        assert resp.status == 400, resp
        rid = resp.header_all("x-request-id")
        assert len(rid) == 1 and len(rid[0]) == 36, resp
        ids.add(rid[0])
    assert len(ids) == 2
    assert up.bytes_since(snap) == b""
