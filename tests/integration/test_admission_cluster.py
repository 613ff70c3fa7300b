"""SPEC §2/§4/§11 cluster admission: at most `max_connections` upstream connections per
cluster (per worker); further requests queue, at most `max_pending` of them, beyond that
`503 overloaded` at once; a queued request honours its route's timeout (504
upstream_timeout, and it never reaches the upstream). /clusters shows the pool sizes.

Requests are held at the upstream with /slow?hold=TAG until the test releases them."""

from __future__ import annotations

import pytest

from support.checks import assert_proxy_error
from support.procs import wait_until
from support.rawhttp import RawConn, get
from support.traffic import connection_per_worker, endpoint_status, settle, wait_admin

pytestmark = pytest.mark.timeout(60)


def admission_config(app, *, max_connections=1, max_pending=1, routes=None) -> dict:
    return {
        "proxy": {"admin": "${listen:admin}", "drain_timeout": "2s", "access_log": "off"},
        "listener": [{"name": "main", "bind": "${listen:main}",
                      "route": routes or [{"name": "all", "cluster": "up", "timeout": "30s"}]}],
        "cluster": {"up": {"endpoints": [app.addr("a")], "max_connections": max_connections,
                           "max_pending": max_pending}},
    }


def start(fastproxy, config):
    proxy = fastproxy(config)
    wait_admin(proxy)
    return proxy


def hold(proxy, app, tag: str) -> RawConn:
    """A request the upstream holds until release(tag); returns once it arrived there."""
    c = RawConn(proxy.port(), timeout=30)
    c.send(f"GET /slow?hold={tag} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
    wait_until(lambda: app.seen(tag), deadline_s=10, what=f"held request {tag} arrives")
    return c


def test_requests_beyond_max_connections_queue_and_are_served_in_turn(fastproxy, app_upstream):
    app = app_upstream(names=("a",))
    proxy = start(fastproxy, admission_config(app, max_connections=1, max_pending=10))
    first = hold(proxy, app, "q1")
    second = RawConn(proxy.port(), timeout=30)
    try:
        second.send(b"GET /slow?hold=q2 HTTP/1.1\r\nHost: app\r\n\r\n")
        settle(0.5)
        assert not app.seen("q2"), "max_connections = 1: the second request must wait"
        ep = endpoint_status(proxy, "up")[app.addr("a")]
        assert ep["active"] == 1 and ep["idle"] == 0, ep
        app.release("q1")
        assert first.read_response().status == 200
        wait_until(lambda: app.seen("q2"), deadline_s=10, what="the queued request goes out")
        app.release("q2")
        assert second.read_response().status == 200
    finally:
        app.release("q1")
        app.release("q2")
        first.close()
        second.close()
    ep = endpoint_status(proxy, "up")[app.addr("a")]
    assert ep["active"] + ep["idle"] <= 1, ep


@pytest.mark.parametrize("max_pending", [0, 1, 3])
def test_beyond_max_pending_503_overloaded_at_once(fastproxy, app_upstream, max_pending):
    app = app_upstream(names=("a",))
    proxy = start(fastproxy, admission_config(app, max_connections=1, max_pending=max_pending))
    first = hold(proxy, app, "h")
    queued = []
    try:
        for _ in range(max_pending):
            c = RawConn(proxy.port(), timeout=30)
            c.send(b"GET /status/200 HTTP/1.1\r\nHost: app\r\n\r\n")
            queued.append(c)
        settle(0.3)
        for _ in range(3):
            # at once: the route timeout is 30 s, the read gives up after 10
            assert_proxy_error(get(proxy.port(), "/status/200", timeout=10), 503, "overloaded")
        assert app.hits() == {"a": 1}, "queued and refused requests must not reach the upstream"
        app.release("h")
        assert first.read_response().status == 200
        for c in queued:
            assert c.read_response().status == 200
    finally:
        app.release("h")
        first.close()
        for c in queued:
            c.close()
    assert app.hits() == {"a": 1 + max_pending}
    assert get(proxy.port(), "/status/200").status == 200


def test_queued_request_honours_the_route_timeout(fastproxy, app_upstream):
    """/slow has a 30 s route, everything else a 1 s route; with the one connection held
    by /slow, a queued request gets 504 upstream_timeout and never reaches the upstream."""
    app = app_upstream(names=("a",))
    routes = [{"name": "slow", "path": "/slow", "cluster": "up", "timeout": "30s"},
              {"name": "rest", "cluster": "up", "timeout": "1s"}]
    proxy = start(fastproxy, admission_config(app, max_connections=1, max_pending=5,
                                              routes=routes))
    first = hold(proxy, app, "t")
    try:
        r = get(proxy.port(), "/status/200?queued", timeout=15)
        assert_proxy_error(r, 504, "upstream_timeout")
        assert [p for _, _, p in app.log()] == ["/slow?hold=t"], app.log()
        app.release("t")
        assert first.read_response().status == 200
    finally:
        app.release("t")
        first.close()
    settle(0.3)
    assert [p for _, _, p in app.log()] == ["/slow?hold=t"], \
        "a request that timed out in the queue must not be sent later"
    assert get(proxy.port(), "/status/200").status == 200


def test_limits_are_per_worker(fastproxy, app_upstream):
    """SPEC §11: max_connections and max_pending are per worker. With two workers and
    max_connections = 1, max_pending = 0, each worker holds one request upstream; a third
    request, whichever worker takes it, is overloaded."""
    app = app_upstream(names=("a",))
    proxy = fastproxy(admission_config(app, max_connections=1, max_pending=0), workers=2)
    wait_admin(proxy)
    wait_until(lambda: len(proxy.workers()) == 2, deadline_s=10, what="two workers")
    conns = connection_per_worker(proxy, 2)
    try:
        for i, c in enumerate(conns.values()):
            c.send(f"GET /slow?hold=w{i} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
            wait_until(lambda: app.seen(f"w{i}"), deadline_s=10,
                       what=f"worker {i + 1}'s request reaches the upstream")
        for _ in range(4):
            assert_proxy_error(get(proxy.port(), "/status/200", timeout=10), 503, "overloaded")
        for i, c in enumerate(conns.values()):
            app.release(f"w{i}")
            assert c.read_response().status == 200
    finally:
        for i, c in enumerate(conns.values()):
            app.release(f"w{i}")
            c.close()
