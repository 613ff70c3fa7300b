"""SPEC §2/§4/§9/§11 circuit breaker: more than `max_failures` failures within the sliding
`window` open the circuit; while open, requests get `503 circuit_open` at once and the
upstream receives nothing; after `open_for`, `half_open_requests` probes go through —
success closes it, a failure re-opens it for another `open_for`. Failures are 5xx from
the upstream, connect failures, timeouts and resets; the proxy's own 503s (overloaded,
circuit_open) never count. With several workers the counts and the state are shared:
one trip for all of them. /clusters shows the state and the failures in the window.

The upstream is the aiohttp app switched at run time (ok / fail / hang / reset); its
hit counter tells whether a request reached it. Durations are short; the tests only
ever wait at least as long as a configured duration, they assert no timing."""

from __future__ import annotations


import pytest

from support.checks import assert_proxy_error
from support.procs import LOOPBACK, free_port, wait_until
from support.rawhttp import RawConn, get
from support.traffic import (ask, circuit, cluster_status, connection_per_worker, settle,
                             wait_admin)

pytestmark = pytest.mark.timeout(60)


def breaker_config(endpoints, *, max_failures=3, window="10s", open_for="2s", half_open=1,
                   route: dict | None = None, cluster: dict | None = None) -> dict:
    return {
        "proxy": {"admin": "${listen:admin}", "drain_timeout": "2s", "access_log": "off"},
        "listener": [{"name": "main", "bind": "${listen:main}",
                      "route": [{"name": "all", "cluster": "up", **(route or {})}]}],
        "cluster": {"up": {
            "endpoints": list(endpoints), **(cluster or {}),
            "circuit_breaker": {"max_failures": max_failures, "window": window,
                                "open_for": open_for, "half_open_requests": half_open},
        }},
    }


def start(fastproxy, config, **kw):
    proxy = fastproxy(config, **kw)
    wait_admin(proxy)
    return proxy


def trip(app, proxy, n: int = 4) -> None:
    """n failing requests that reach the upstream (the app is in fail mode)."""
    for i in range(n):
        r = get(proxy.port(), "/status/200")
        assert r.status == 500, f"failure {i + 1} of {n} should reach the upstream: {r!r}"


def assert_open(app, proxy, n: int = 5) -> None:
    before = app.hits()
    for _ in range(n):
        assert_proxy_error(get(proxy.port(), "/status/200"), 503, "circuit_open")
    assert app.hits() == before, "while the circuit is open the upstream receives nothing"


# ---------------------------------------------------------------- the boundary

def test_three_failures_keep_it_closed_the_fourth_opens_it(fastproxy, app_upstream):
    app = app_upstream(names=("a",))
    proxy = start(fastproxy, breaker_config([app.addr("a")], window="20s", open_for="20s"))
    assert circuit(proxy, "up")["state"] == "closed"
    app.set_mode("a", "fail")
    trip(app, proxy, 3)
    c = circuit(proxy, "up")
    assert (c["state"], c["failures"]) == ("closed", 3), c
    # still closed: requests reach the upstream; successes do not reset the window
    app.set_mode("a", "ok")
    for _ in range(5):
        assert get(proxy.port(), "/status/200").status == 200
    # 4xx answers are not failures
    for _ in range(3):
        assert get(proxy.port(), "/status/404").status == 404
    c = circuit(proxy, "up")
    assert (c["state"], c["failures"]) == ("closed", 3), c
    app.set_mode("a", "fail")
    trip(app, proxy, 1)            # the fourth failure: it reached the upstream, and opens it
    c = circuit(proxy, "up")
    assert (c["state"], c["failures"]) == ("open", 4), c
    assert_open(app, proxy)
    # the proxy's own 503 circuit_open are not failures
    assert circuit(proxy, "up")["failures"] == 4


FAILURE_KINDS = ["500", "503", "reset", "timeout", "connect-failure"]


@pytest.mark.parametrize("kind", FAILURE_KINDS)
def test_every_kind_of_failure_counts(fastproxy, app_upstream, kind):
    """Requests 1-4 fail the way `kind` does (and reach the upstream), the 5th gets
    circuit_open."""
    app = app_upstream(names=("a",))
    route, expect = {}, None
    endpoint = app.addr("a")
    if kind in ("500", "503"):
        app.set_mode("a", "fail", int(kind))
        expect = ("status", int(kind))
    elif kind == "reset":
        app.set_mode("a", "reset")
        expect = ("error", 502, "upstream_reset")
    elif kind == "timeout":
        app.set_mode("a", "hang")
        route = {"timeout": "300ms"}
        expect = ("error", 504, "upstream_timeout")
    else:
        endpoint = f"{LOOPBACK}:{free_port()}"   # nothing listens there: refused
        expect = ("error", 503, "connect_failed")
    proxy = start(fastproxy, breaker_config([endpoint], window="30s", open_for="30s", route=route))
    for i in range(4):
        r = get(proxy.port(), "/status/200")
        if expect[0] == "status":
            assert r.status == expect[1], f"request {i + 1}: {r!r}"
        else:
            assert_proxy_error(r, expect[1], expect[2])
    before = app.hits()
    assert_proxy_error(get(proxy.port(), "/status/200"), 503, "circuit_open")
    assert app.hits() == before
    c = circuit(proxy, "up")
    assert c["state"] == "open", c


def test_failures_older_than_the_window_do_not_count(fastproxy, app_upstream):
    app = app_upstream(names=("a",))
    proxy = start(fastproxy, breaker_config([app.addr("a")], window="1s", open_for="30s"))
    app.set_mode("a", "fail")
    trip(app, proxy, 3)
    settle(1.0 + 1.1)   # the window, plus at most one bucket (SPEC §11: buckets <= 1 s)
    c = circuit(proxy, "up")
    assert (c["state"], c["failures"]) == ("closed", 0), c
    trip(app, proxy, 3)   # 6 failures in all, but only 3 within the window: closed
    assert circuit(proxy, "up")["state"] == "closed"
    trip(app, proxy, 1)
    assert circuit(proxy, "up")["state"] == "open"
    assert_open(app, proxy)


# ---------------------------------------------------------------- half-open

def test_half_open_probe_success_closes_it(fastproxy, app_upstream):
    app = app_upstream(names=("a",))
    proxy = start(fastproxy, breaker_config([app.addr("a")], open_for="2s"))
    app.set_mode("a", "fail")
    trip(app, proxy)
    app.set_mode("a", "ok")
    assert_open(app, proxy, 3)     # healthy again, but open: nothing goes through
    settle(2.2)
    before = app.hits()["a"]
    r = get(proxy.port(), "/status/200")
    assert r.status == 200 and app.hits()["a"] == before + 1, r
    assert circuit(proxy, "up")["state"] == "closed"
    for _ in range(5):
        assert get(proxy.port(), "/status/200").status == 200
    assert app.hits()["a"] == before + 6


def test_half_open_probe_failure_reopens_it_for_another_open_for(fastproxy, app_upstream):
    app = app_upstream(names=("a",))
    proxy = start(fastproxy, breaker_config([app.addr("a")], open_for="2s"))
    app.set_mode("a", "fail")
    trip(app, proxy)
    assert_open(app, proxy, 2)
    settle(2.2)
    before = app.hits()["a"]
    assert get(proxy.port(), "/status/200").status == 500   # the probe reached it, and failed
    assert app.hits()["a"] == before + 1
    assert circuit(proxy, "up")["state"] == "open"
    app.set_mode("a", "ok")
    assert_open(app, proxy, 3)     # re-opened: healthy or not, nothing goes through
    settle(2.2)
    assert get(proxy.port(), "/status/200").status == 200
    assert circuit(proxy, "up")["state"] == "closed"


@pytest.mark.parametrize("probes", [1, 2])
def test_only_half_open_requests_probes_go_through(fastproxy, app_upstream, probes):
    """Probes held by the upstream: exactly `probes` reach it, the others get
    circuit_open; when the probes succeed the circuit closes."""
    app = app_upstream(names=("a",))
    proxy = start(fastproxy, breaker_config([app.addr("a")], open_for="2s", half_open=probes))
    app.set_mode("a", "fail")
    trip(app, proxy)
    app.set_mode("a", "ok")
    settle(2.2)
    held = []
    try:
        for i in range(probes):
            c = RawConn(proxy.port())
            c.send(f"GET /slow?hold=probe{i} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
            held.append(c)
            wait_until(lambda: app.seen(f"probe{i}"), deadline_s=10, what=f"probe {i} arrives")
        for _ in range(3):
            assert_proxy_error(get(proxy.port(), "/status/200"), 503, "circuit_open")
        assert app.hits()["a"] == 4 + probes
        for i, c in enumerate(held):
            app.release(f"probe{i}")
            assert c.read_response().status == 200
    finally:
        for c in held:
            c.close()
    assert get(proxy.port(), "/status/200").status == 200
    assert circuit(proxy, "up")["state"] == "closed"


# ---------------------------------------------------------------- what is not a failure

def test_the_proxys_own_503s_are_not_failures(fastproxy, app_upstream):
    """max_failures = 0 (the first failure opens it): overloaded 503s and circuit_open
    503s leave the count alone."""
    app = app_upstream(names=("a",))
    proxy = start(fastproxy, breaker_config([app.addr("a")], max_failures=0, open_for="30s",
                                            cluster={"max_connections": 1, "max_pending": 0}))
    with RawConn(proxy.port()) as holder:
        holder.send(b"GET /slow?hold=h HTTP/1.1\r\nHost: app\r\n\r\n")
        wait_until(lambda: app.seen("h"), deadline_s=10, what="held request arrives")
        for _ in range(5):
            assert_proxy_error(get(proxy.port(), "/status/200"), 503, "overloaded")
        app.release("h")
        assert holder.read_response().status == 200
    c = circuit(proxy, "up")
    assert (c["state"], c["failures"]) == ("closed", 0), c
    assert get(proxy.port(), "/status/200").status == 200
    assert get(proxy.port(), "/status/500").status == 500      # the one real failure opens it
    assert_open(app, proxy)
    c = circuit(proxy, "up")
    assert (c["state"], c["failures"]) == ("open", 1), c


# ---------------------------------------------------------------- workers share it

def test_two_workers_share_one_circuit(fastproxy, app_upstream):
    """Failures through both workers (one keep-alive connection held on each, its worker
    identified through /proc): 2 + 1 failures keep it closed for both, the 4th (through
    the second worker) opens it for both — one trip."""
    app = app_upstream(names=("a",))
    proxy = start(fastproxy, breaker_config([app.addr("a")], window="30s", open_for="30s"),
                  workers=2)
    wait_until(lambda: len(proxy.workers()) == 2, deadline_s=10, what="two workers")
    conns = connection_per_worker(proxy, 2)
    (w1, c1), (w2, c2) = conns.items()
    try:
        base = app.hits()["a"]
        app.set_mode("a", "fail")
        for c in (c1, c1, c2):
            assert ask(c, "/status/200").status == 500
        app.set_mode("a", "ok")
        for c in (c1, c2):     # both workers: still closed
            assert ask(c, "/status/200").status == 200
        st = circuit(proxy, "up")
        assert (st["state"], st["failures"]) == ("closed", 3), st
        app.set_mode("a", "fail")
        assert ask(c2, "/status/200").status == 500          # the 4th, in the second worker
        assert_proxy_error(ask(c2, "/status/200"), 503, "circuit_open")
        settle(0.2)          # SPEC §11: every other worker sees it within 100 ms
        hits = app.hits()["a"]
        assert hits == base + 6
        for c in (c1, c2, c1, c2):
            assert_proxy_error(ask(c, "/status/200"), 503, "circuit_open")
        assert app.hits()["a"] == hits, "open in both workers: nothing reaches the upstream"
        assert set(proxy.workers()) == {w1, w2}, "a worker was restarted"
        st = circuit(proxy, "up")
        assert (st["state"], st["failures"]) == ("open", 4), st
        if "trips" in st:
            assert st["trips"] == 1, st
    finally:
        c1.close()
        c2.close()


def test_two_workers_share_the_half_open_probes(fastproxy, app_upstream):
    """half_open_requests = 1 across both workers: while worker 1's probe is held at the
    upstream, worker 2 gets circuit_open; the probe's success closes it for both."""
    app = app_upstream(names=("a",))
    proxy = start(fastproxy, breaker_config([app.addr("a")], window="30s", open_for="2s"),
                  workers=2)
    wait_until(lambda: len(proxy.workers()) == 2, deadline_s=10, what="two workers")
    conns = connection_per_worker(proxy, 2)
    (_, c1), (_, c2) = conns.items()
    try:
        app.set_mode("a", "fail")
        for c in (c1, c2, c1, c2):
            assert ask(c, "/status/200").status == 500
        for c in (c1, c2):
            assert_proxy_error(ask(c, "/status/200"), 503, "circuit_open")
        app.set_mode("a", "ok")
        settle(2.2)
        c1.send(b"GET /slow?hold=probe HTTP/1.1\r\nHost: app\r\n\r\n")
        wait_until(lambda: app.seen("probe"), deadline_s=10, what="the probe arrives")
        before = app.hits()["a"]
        for _ in range(3):
            assert_proxy_error(ask(c2, "/status/200"), 503, "circuit_open")
        assert app.hits()["a"] == before
        app.release("probe")
        assert c1.read_response().status == 200
        for c in (c2, c1, c2):
            assert ask(c, "/status/200").status == 200
        assert circuit(proxy, "up")["state"] == "closed"
    finally:
        app.release("probe")
        c1.close()
        c2.close()


def test_transitions_are_logged(fastproxy, app_upstream):
    app = app_upstream(names=("a",))
    proxy = start(fastproxy, breaker_config([app.addr("a")], open_for="1s"))
    app.set_mode("a", "fail")
    trip(app, proxy)

    def lines(word):
        return [ln for ln in proxy.stderr().splitlines()
                if "circuit" in ln and " up" in ln and word in ln]
    wait_until(lambda: lines("open"), deadline_s=5, what="a log line: the circuit of up opened")
    app.set_mode("a", "ok")
    settle(1.2)
    assert get(proxy.port(), "/status/200").status == 200
    wait_until(lambda: lines("closed"), deadline_s=5, what="a log line: the circuit of up closed")


def test_clusters_shape(fastproxy, app_upstream):
    """SPEC §11 Admin: /clusters lists each cluster with its circuit and endpoints."""
    app = app_upstream(names=("a", "b"))
    proxy = start(fastproxy, breaker_config([app.addr("a"), app.addr("b")]))
    assert get(proxy.port(), "/status/200").status == 200
    st = cluster_status(proxy, "up")
    assert st["circuit"]["state"] == "closed" and st["circuit"]["failures"] == 0, st
    assert {e["address"] for e in st["endpoints"]} == {app.addr("a"), app.addr("b")}, st
    for e in st["endpoints"]:
        assert e["healthy"] is True and e["ejected_until"] is None, e
        assert isinstance(e["active"], int) and isinstance(e["idle"], int), e
    assert sum(e["idle"] + e["active"] for e in st["endpoints"]) >= 1, st


def test_a_probe_that_ends_without_an_outcome_is_given_back(fastproxy, app_upstream):
    """A half-open probe granted to a request the proxy itself refuses (a malformed chunked
    body: 400, nothing upstream) must not hold the circuit half-open: the next request
    is the probe, and its success closes the circuit."""
    app = app_upstream(names=("a",))
    proxy = start(fastproxy, breaker_config([app.addr("a")], open_for="1s"))
    app.set_mode("a", "fail")
    trip(app, proxy)
    app.set_mode("a", "ok")
    settle(1.2)
    with RawConn(proxy.port()) as c:
        c.send(b"POST /x HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n")
        assert_proxy_error(c.read_response(), 400, "bad_request")
    r = get(proxy.port(), "/status/200")
    assert r.status == 200, r
    assert circuit(proxy, "up")["state"] == "closed"


def test_a_reload_that_adds_a_cluster_keeps_each_circuit_with_its_cluster(fastproxy, app_upstream,
                                                                          tmp_path):
    """Circuit state is kept per cluster name in the shared table, so adding a cluster
    whose name sorts first does not move an open circuit to another cluster."""
    import signal as _signal
    app = app_upstream(names=("a",))
    config = breaker_config([app.addr("a")], open_for="30s", window="30s")
    proxy = start(fastproxy, config)
    app.set_mode("a", "fail")
    trip(app, proxy)
    assert circuit(proxy, "up")["state"] == "open"
    extra = f'\n[cluster.aaa]\nendpoints = ["{app.addr("a")}"]\n  [cluster.aaa.circuit_breaker]\n  max_failures = 3\n'
    proxy.config_path.write_text(proxy.config_path.read_text() + extra)
    proxy.signal(_signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in proxy.stderr(), deadline_s=10, what="reload")
    assert circuit(proxy, "up")["state"] == "open"
    assert circuit(proxy, "aaa")["state"] == "closed"
