"""SPEC §4: the responses the proxy makes itself (status, `fastproxy-error`, one-line
body), malformed upstream responses (502, connection discarded), extra responses, and
truncation once a response head went out (never a second status)."""

from __future__ import annotations

import time

import pytest

from support.checks import assert_proxy_error
from support.configs import simple_config
from support.procs import LOOPBACK, free_port, wait_until
from support.rawhttp import ConnectionClosed, RawConn, get

pytestmark = pytest.mark.timeout(60)


def test_connect_failed(fastproxy):
    dead = f"{LOOPBACK}:{free_port()}"  # nothing listens there
    proxy = fastproxy(simple_config(dead, cluster='connect_timeout = "1s"'))
    assert_proxy_error(get(proxy.port(), "/x"), 503, "connect_failed")
    # and the client connection is still usable
    with RawConn(proxy.port()) as c:
        for _ in range(2):
            c.send(b"GET /x HTTP/1.1\r\nHost: app\r\n\r\n")
            assert_proxy_error(c.read_response(), 503, "connect_failed")


@pytest.mark.parametrize("actions", [
    [{"close": True}],
    [{"reset": True}],
    [{"send": "HTTP/1.1 200 OK\r\nContent-Le"}, {"close": True}],
], ids=["close", "reset", "partial-head"])
def test_upstream_reset_before_response_head(fastproxy, raw_upstream, actions):
    up = raw_upstream({"default": actions})
    proxy = fastproxy(simple_config(up.addr))
    assert_proxy_error(get(proxy.port(), "/x"), 502, "upstream_reset")


MALFORMED = {
    "obs-fold": "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    "space-before-colon": "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    "bad-content-length": "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok",
    "conflicting-content-length": "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    "cl-and-te": "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "bad-status-code": "HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
    "not-http": "HELLO THERE\r\nContent-Length: 2\r\n\r\nok",
    "nul-in-value": "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "bad-name": "HTTP/1.1 200 OK\r\nX A: b\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_upstream_response_is_502_and_connection_discarded(fastproxy, raw_upstream, name):
    # the upstream keeps its side open after the bad response: the proxy must close it
    up = raw_upstream({"rules": [{"prefix": "/bad", "actions": [{"send": MALFORMED[name]}]}]})
    proxy = fastproxy(simple_config(up.addr))
    assert_proxy_error(get(proxy.port(), "/bad"), 502, "bad_gateway")
    wait_until(lambda: up.connection_count() >= 1 and up.closed_by_peer(0), deadline_s=10,
               what="proxy closes the upstream connection that sent a malformed response")
    r = get(proxy.port(), "/after")
    assert (r.status, r.body) == (200, b"raw:/after")


def test_extra_upstream_response_is_not_delivered_and_connection_closed(fastproxy, raw_upstream):
    extra = ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
             "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSECOND")
    up = raw_upstream({"rules": [{"prefix": "/extra", "actions": [{"send": extra}]}]})
    proxy = fastproxy(simple_config(up.addr))
    with RawConn(proxy.port()) as c:
        c.send(b"GET /extra HTTP/1.1\r\nHost: app\r\n\r\n")
        assert c.read_response().body == b"first"
        for i in range(3):
            c.send(f"GET /after{i} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
            r = c.read_response()
            assert (r.status, r.body) == (200, f"raw:/after{i}".encode())
    wait_until(lambda: up.closed_by_peer(0), deadline_s=10,
               what="proxy closes the upstream connection that sent an extra response")


def test_upstream_timeout(fastproxy, raw_upstream):
    up = raw_upstream({"rules": [{"prefix": "/hang", "actions": [{"hang": True}]}]})
    proxy = fastproxy(simple_config(up.addr, route='  timeout = "500ms"'))
    assert_proxy_error(get(proxy.port(), "/hang", timeout=15), 504, "upstream_timeout")
    assert get(proxy.port(), "/fine").status == 200


def test_route_timeout_truncates_a_stalled_body(fastproxy, shared_app):
    """SPEC §11: the route timeout covers the whole exchange; a body that stalls past it
    is truncated (the head already went out: no 504)."""
    proxy = fastproxy(simple_config(shared_app.addr(), route='  timeout = "1s"'))
    with RawConn(proxy.port(), timeout=15) as c:
        c.send(b"GET /drip?n=100&delay=0.1 HTTP/1.1\r\nHost: app\r\n\r\n")
        r = c.read_response(allow_truncated=True)
        assert r.status == 200 and r.truncated, r
        assert b"HTTP/1." not in r.body
        assert c.wait_closed(5) == b""


def test_request_timeout_partial_head(fastproxy, shared_app):
    proxy = fastproxy(simple_config(shared_app.addr(), limits='header_timeout = "300ms"'))
    with RawConn(proxy.port(), timeout=10) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: app\r\nX-Half: ")
        assert_proxy_error(c.read_response(), 408, "request_timeout")
        assert c.wait_closed(5) == b""


class TestHeaderTooLarge:
    CONFIG_LIMITS = "max_header_bytes = 1024\nmax_headers = 10"

    @pytest.fixture
    def proxy_up(self, fastproxy, raw_upstream):
        up = raw_upstream()
        return fastproxy(simple_config(up.addr, limits=self.CONFIG_LIMITS)), up

    def test_header_bytes(self, proxy_up):
        proxy, up = proxy_up
        r = get(proxy.port(), "/big", headers=[("X-Big", "a" * 2000)])
        assert_proxy_error(r, 431, "header_too_large")
        assert up.total_bytes() == b""

    def test_request_line_alone(self, proxy_up):
        proxy, up = proxy_up
        r = get(proxy.port(), "/" + "a" * 2000)
        assert_proxy_error(r, 431, "header_too_large")
        assert up.total_bytes() == b""

    def test_header_count_includes_host(self, proxy_up):
        proxy, up = proxy_up
        nine = [(f"X-H{i}", "1") for i in range(9)]  # + Host = 10: at the limit
        assert get(proxy.port(), "/ten", headers=nine).status == 200
        r = get(proxy.port(), "/eleven", headers=nine + [("X-H9", "1")])
        assert_proxy_error(r, 431, "header_too_large")
        assert [r.target for r in up.requests()] == ["/ten"]

    def test_under_limit_is_fine(self, proxy_up):
        proxy, _ = proxy_up
        assert get(proxy.port(), "/small", headers=[("X-Small", "a" * 500)]).status == 200


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("ending", ["close", "reset"])
def test_upstream_dies_mid_body_truncates(fastproxy, raw_upstream, framing, ending):
    part = "x" * 1000
    if framing == "content-length":
        response = f"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{part}"
    else:
        response = f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n{part}\r\n"
    up = raw_upstream({"rules": [{"prefix": "/die", "actions": [
        {"send": response}, {"sleep": 0.2}, {ending: True}]}]})
    proxy = fastproxy(simple_config(up.addr))
    with RawConn(proxy.port()) as c:
        c.send(b"GET /die HTTP/1.1\r\nHost: app\r\n\r\n")
        r = c.read_response(allow_truncated=True)
        assert r.status == 200
        assert r.truncated, f"a truncated upstream body was delivered as complete: {r!r}"
        assert r.body == part.encode()[: len(r.body)], "unexpected bytes in the body"
        assert b"HTTP/1." not in r.body, "a second status line was sent"
        assert c.wait_closed(5) == b""
    # the proxy itself is fine
    assert get(proxy.port(), "/after").status == 200


@pytest.mark.parametrize("second_chunk", ["zz\r\n", "5;\r\nworld\r\n0\r\n\r\n"],
                         ids=["bad-size", "empty-extension"])
def test_malformed_chunked_upstream_body_never_completes(fastproxy, raw_upstream, second_chunk):
    """A valid head with a broken chunked body: either 502 (if detected before the head
    went out) or a truncated 200 and a closed connection — never a complete response."""
    bad = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n" + second_chunk
    up = raw_upstream({"rules": [{"prefix": "/badchunk", "actions": [{"send": bad}]}]})
    proxy = fastproxy(simple_config(up.addr))
    with RawConn(proxy.port()) as c:
        c.send(b"GET /badchunk HTTP/1.1\r\nHost: app\r\n\r\n")
        try:
            r = c.read_response(allow_truncated=True)
        except ConnectionClosed as e:
            pytest.fail(f"closed before any response: {e}")
        if r.status == 502:
            assert_proxy_error(r, 502, "bad_gateway")
        else:
            assert r.status == 200 and r.truncated, r
            assert c.wait_closed(5) == b""


# ---------------------------------------------------------------- client goes away

def test_client_abort_mid_response_closes_the_upstream_connection(fastproxy, raw_upstream):
    """An upstream connection with an unfinished response cannot be pooled: when the
    client leaves, the proxy closes it (and keeps serving)."""
    up = raw_upstream({"rules": [{"prefix": "/huge", "actions": [
        {"send": "HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n" + "x" * 1000},
        {"hang": True}]}]})
    proxy = fastproxy(simple_config(up.addr))
    with RawConn(proxy.port()) as c:
        c.send(b"GET /huge HTTP/1.1\r\nHost: app\r\n\r\n")
        assert c.read_head(deadline=time.monotonic() + 10).status == 200
    wait_until(lambda: up.closed_by_peer(0), deadline_s=10,
               what="proxy closes the upstream connection after the client left")
    assert get(proxy.port(), "/after").body == b"raw:/after"


def test_client_abort_mid_request_body_closes_the_upstream_connection(fastproxy, raw_upstream):
    up = raw_upstream()
    proxy = fastproxy(simple_config(up.addr))
    with RawConn(proxy.port()) as c:
        c.send(b"POST /partial HTTP/1.1\r\nHost: app\r\nContent-Length: 1000000\r\n\r\n" + b"y" * 1000)
        wait_until(lambda: up.connection_count() >= 1 and b"/partial" in up.total_bytes(),
                   deadline_s=10, what="request head reached the upstream")
    wait_until(lambda: up.closed_by_peer(0), deadline_s=10,
               what="proxy closes the upstream connection after the client left mid-body")
    r = get(proxy.port(), "/after")
    assert r.body == b"raw:/after"
    # the half-sent body was not completed with anything else
    assert [q.target for q in up.requests()][-1] == "/after"
