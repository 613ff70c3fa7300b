"""SPEC §2 [limits] max_connections, per worker: up to max_connections connections are
served; as many again are accepted and wait, paused and in arrival order, with
header_timeout running; beyond that, and when file descriptors run short, the worker
stops accepting and new connections wait in the kernel's listen backlog."""

from __future__ import annotations

import time

import pytest

from support.checks import assert_proxy_error
from support.configs import simple_config
from support.observe import admin_call, ready_status, replace_config, wait_metric
from support.procs import wait_until
from support.rawhttp import ConnectionClosed, RawConn

pytestmark = pytest.mark.timeout(90)

GET = b"GET /echo HTTP/1.1\r\nHost: app\r\n\r\n"


def admin_config(endpoint, limits: str) -> str:
    return simple_config(endpoint, limits=limits).replace('admin = ""', 'admin = "${listen:admin}"')


def served(n: int, port: int) -> list[RawConn]:
    conns = [RawConn(port) for _ in range(n)]
    for c in conns:
        c.send(GET)
        assert c.read_response().status == 200
    return conns


def assert_waiting(conn: RawConn, seconds: float = 1.0) -> None:
    with pytest.raises(TimeoutError):
        conn.read_head(deadline=time.monotonic() + seconds)


def test_connections_over_max_connections_wait_for_a_free_slot(fastproxy, shared_app):
    proxy = fastproxy(simple_config(shared_app.addr(), limits="max_connections = 2"))
    first, second = served(2, proxy.port())
    with RawConn(proxy.port()) as third:
        third.send(GET)
        assert_waiting(third)     # two connections are open
        first.close()
        assert third.read_response(timeout=10).status == 200
    second.close()


def test_every_waiting_connection_is_let_in_as_slots_free(fastproxy, shared_app):
    proxy = fastproxy(simple_config(shared_app.addr(), limits="max_connections = 3"))
    first = served(3, proxy.port())
    waiting = [RawConn(proxy.port()) for _ in range(3)]
    for c in waiting:
        c.send(GET)
    assert_waiting(waiting[0])
    for c in first:
        c.close()
    for c in waiting:
        assert c.read_response(timeout=10).status == 200
    for c in waiting:
        c.close()
    with RawConn(proxy.port()) as late:   # and a new client after them
        late.send(GET)
        assert late.read_response(timeout=10).status == 200


def test_waiting_connections_are_admitted_in_arrival_order(fastproxy, shared_app):
    proxy = fastproxy(simple_config(shared_app.addr(), limits="max_connections = 1"))
    [first] = served(1, proxy.port())
    a, b = RawConn(proxy.port()), RawConn(proxy.port())
    a.send(GET)
    time.sleep(0.2)               # accepted one after the other
    b.send(GET)
    assert_waiting(a, 0.5)
    first.close()
    assert a.read_response(timeout=10).status == 200
    assert_waiting(b)             # a holds the one slot
    a.close()
    assert b.read_response(timeout=10).status == 200
    b.close()


def test_header_timeout_runs_for_waiting_connections(fastproxy, shared_app):
    proxy = fastproxy(simple_config(
        shared_app.addr(), limits='max_connections = 2\nheader_timeout = "1s"\nidle_timeout = "60s"'))
    busy = served(2, proxy.port())
    silent, asking = RawConn(proxy.port()), RawConn(proxy.port())
    asking.send(GET)
    resp = asking.read_response(timeout=15)       # its head came, but no slot did
    assert_proxy_error(resp, 503, "overloaded")
    assert resp.header("x-request-id")
    resp = silent.read_response(timeout=15)       # nothing came at all
    assert_proxy_error(resp, 408, "request_timeout")
    with pytest.raises(ConnectionClosed):
        silent.read_response(timeout=5)
    for c in (*busy, silent, asking):
        c.close()


def test_beyond_the_waiting_ones_connections_stay_in_the_backlog(fastproxy, shared_app):
    proxy = fastproxy(admin_config(shared_app.addr(), "max_connections = 2"))
    busy = served(2, proxy.port())
    queued = [RawConn(proxy.port()) for _ in range(3)]   # accepted, they wait
    for c in queued:
        c.send(GET)
    m = wait_metric(proxy, lambda m: m.value("fastproxy_accept_paused_total",
                                             reason="max_connections"), what="accepting paused")
    m = wait_metric(proxy, lambda m: m.value("fastproxy_downstream_connections_waiting") == 3,
                    what="three waiting")
    open_before = m.value("fastproxy_downstream_connections", listener="main")
    assert open_before == 5
    backlog = RawConn(proxy.port())       # left in the kernel's backlog: not accepted
    backlog.send(GET)
    time.sleep(1.5)                       # the gauges are published every second
    m = wait_metric(proxy, lambda m: True)
    assert m.value("fastproxy_downstream_connections", listener="main") == open_before
    assert m.value("fastproxy_downstream_connections_waiting") == 3
    for c in busy:
        c.close()
    for c in (*queued, backlog):          # each in turn, as slots free
        assert c.read_response(timeout=10).status == 200
        c.close()
    wait_metric(proxy, lambda m: m.value("fastproxy_downstream_connections_waiting") == 0
                and m.value("fastproxy_downstream_connections", listener="main") == 0,
                what="nobody waits")


def test_a_reload_raising_max_connections_lets_waiting_ones_in(fastproxy, shared_app):
    proxy = fastproxy(admin_config(shared_app.addr(), "max_connections = 1"))
    [first] = served(1, proxy.port())
    with RawConn(proxy.port()) as waiting:
        waiting.send(GET)
        assert_waiting(waiting)
        replace_config(proxy, proxy.config_path.read_text().replace(
            "max_connections = 1", "max_connections = 4"))
        assert admin_call(proxy, "POST", "/reload").status == 200
        assert waiting.read_response(timeout=10).status == 200
    first.close()


def test_running_short_of_file_descriptors_pauses_accepting(fastproxy, shared_app):
    """With 256 descriptors, 140 clients, each needing an upstream connection too: the
    worker accepts what its descriptors allow, logs and counts that it stopped, still
    answers its admin listener, and serves the rest from the backlog as the first ones
    leave. Nobody is dropped unanswered."""
    proxy = fastproxy(admin_config(shared_app.addr(), ""), nofile=256)
    started = time.monotonic()
    conns = [RawConn(proxy.port()) for _ in range(140)]
    for c in conns:
        c.send(GET)
    wait_metric(proxy, lambda m: m.value("fastproxy_accept_paused_total",
                                         reason="file_descriptors"), what="accepting paused")
    assert ready_status(proxy) == 200
    answered = []
    time.sleep(1)
    for c in conns:            # those accepted are answered; the others wait their turn
        try:
            assert c.read_response(timeout=0.05).status == 200
        except TimeoutError:
            continue
        answered.append(c)
    assert 0 < len(answered) < len(conns)
    for c in answered:
        c.close()
    for c in conns:
        if c not in answered:
            assert c.read_response(timeout=15).status == 200
            c.close()
    wait_until(lambda: "file descriptors" in proxy.stderr(), deadline_s=10, what="the pause logged")
    logged = proxy.stderr().count("file descriptors:")     # at most once per 10 s
    assert logged <= 1 + (time.monotonic() - started) / 10
