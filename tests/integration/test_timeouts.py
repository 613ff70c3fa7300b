"""SPEC §2/§11 client-side timeouts.

`header_timeout` runs from accept for the first request and from the first byte for
later ones; on expiry 408 request_timeout and close. The gap between keep-alive requests
is governed by `idle_timeout` (the connection is closed, silently). Waits are bounded
deadlines, not timing assertions: a test only fails if the proxy never acts."""

from __future__ import annotations

import select
import time

import pytest

from support.checks import assert_proxy_error
from support.configs import simple_config
from support.rawhttp import RawConn

pytestmark = pytest.mark.timeout(60)

REQ = b"GET /echo HTTP/1.1\r\nHost: app\r\n\r\n"


def test_idle_timeout_closes_idle_keepalive_connection(fastproxy, shared_app):
    proxy = fastproxy(simple_config(shared_app.addr(), limits='idle_timeout = "500ms"'))
    with RawConn(proxy.port()) as c:
        c.send(REQ)
        assert c.read_response().status == 200
        try:
            leftover = c.wait_closed(timeout=10)
        except TimeoutError:
            pytest.fail("idle keep-alive connection still open 10 s after idle_timeout=500ms")
        assert leftover == b"", f"bytes sent on an idle close: {leftover!r}"


def test_gap_between_requests_is_not_header_timeout(fastproxy, shared_app):
    """header_timeout=300ms, idle_timeout=10s: a 1 s pause between two requests on one
    connection is idle time, not a slow head."""
    proxy = fastproxy(simple_config(shared_app.addr(),
                                    limits='header_timeout = "300ms"\nidle_timeout = "10s"'))
    with RawConn(proxy.port()) as c:
        c.send(REQ)
        assert c.read_response().status == 200
        time.sleep(1.0)
        c.send(REQ)
        assert c.read_response().status == 200


def test_header_timeout_from_accept(fastproxy, shared_app):
    """A connection that never sends a byte gets 408 once header_timeout passed."""
    proxy = fastproxy(simple_config(shared_app.addr(), limits='header_timeout = "300ms"'))
    with RawConn(proxy.port(), timeout=10) as c:
        assert_proxy_error(c.read_response(), 408, "request_timeout")
        assert c.wait_closed(5) == b""


def test_header_timeout_covers_the_whole_head_not_each_byte(fastproxy, shared_app):
    """Trickling the head (slowloris) does not extend header_timeout."""
    proxy = fastproxy(simple_config(shared_app.addr(), limits='header_timeout = "500ms"'))
    head = b"GET /echo HTTP/1.1\r\nHost: app\r\n" + b"".join(
        b"X-Slow-%d: 1\r\n" % i for i in range(40)) + b"\r\n"
    with RawConn(proxy.port(), timeout=10) as c:
        for i in range(0, len(head), 8):  # ~50 ms per piece, ~3.5 s in all
            try:
                c.send(head[i:i + 8])
            except OSError:
                break  # the proxy closed on us: read what it said
            if select.select([c.sock], [], [], 0.05)[0]:
                break  # the proxy answered (or closed)
        assert_proxy_error(c.read_response(timeout=5), 408, "request_timeout")


def test_header_timeout_for_a_later_request_runs_from_its_first_byte(fastproxy, shared_app):
    proxy = fastproxy(simple_config(shared_app.addr(),
                                    limits='header_timeout = "300ms"\nidle_timeout = "30s"'))
    with RawConn(proxy.port(), timeout=10) as c:
        c.send(REQ)
        assert c.read_response().status == 200
        c.send(b"GET /echo HTTP/1.1\r\nHost: a")  # then stall
        assert_proxy_error(c.read_response(), 408, "request_timeout")
        assert c.wait_closed(5) == b""
