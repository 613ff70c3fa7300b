"""SPEC §2 [limits] max_connections: per worker; further connections wait (they are not
refused) and are served as soon as an earlier connection closes."""

from __future__ import annotations

import time

import pytest

from support.configs import simple_config
from support.rawhttp import RawConn

pytestmark = pytest.mark.timeout(60)


def test_connections_over_max_connections_wait_for_a_free_slot(fastproxy, shared_app):
    proxy = fastproxy(simple_config(shared_app.addr(), limits="max_connections = 2"))
    first, second = RawConn(proxy.port()), RawConn(proxy.port())
    for c in (first, second):
        c.send(b"GET /echo HTTP/1.1\r\nHost: app\r\n\r\n")
        assert c.read_response().status == 200
    with RawConn(proxy.port()) as third:
        third.send(b"GET /echo HTTP/1.1\r\nHost: app\r\n\r\n")
        with pytest.raises(TimeoutError):  # waits: two connections are open
            third.read_head(deadline=time.monotonic() + 1.0)
        first.close()
        assert third.read_response(timeout=10).status == 200
    second.close()
