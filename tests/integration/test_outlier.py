"""SPEC §2/§11 outlier ejection and balancing: after `consecutive_failures` failures in a
row an endpoint is ejected for `eject_for` (longer with each repeated ejection, capped);
`max_ejected` (rounded down) caps the ejected fraction, but one endpoint may always be
ejected; every balance policy skips ejected endpoints; /clusters shows the ejection.
`least_request` prefers endpoints with fewer outstanding requests, `random` spreads.

One aiohttp process listens once per endpoint (`x-served-by`), switched at run time."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime

import pytest

from support.checks import assert_proxy_error
from support.procs import wait_until
from support.rawhttp import RawConn
from support.traffic import Conns, endpoint_status, ejected, served_by, settle, wait_admin

pytestmark = pytest.mark.timeout(60)

NAMES = ("a", "b", "c")


def outlier_config(app, names=NAMES, *, consecutive=3, eject_for="30s", max_ejected=None,
                   balance="round_robin") -> dict:
    outlier = {"consecutive_failures": consecutive, "eject_for": eject_for}
    if max_ejected is not None:
        outlier["max_ejected"] = max_ejected
    return {
        "proxy": {"admin": "${listen:admin}", "drain_timeout": "2s", "access_log": "off"},
        "listener": [{"name": "main", "bind": "${listen:main}",
                      "route": [{"name": "all", "cluster": "up"}]}],
        "cluster": {"up": {"endpoints": [app.addr(n) for n in names], "balance": balance,
                           "outlier": outlier}},
    }


def start(fastproxy, config):
    proxy = fastproxy(config)
    wait_admin(proxy)
    return proxy


def send_until(conns: Conns, app, name: str, hits: int, limit: int = 200) -> list:
    """Requests until endpoint `name` has received `hits` requests in all."""
    out = []
    while app.hits()[name] < hits:
        assert len(out) < limit, f"{name} got {app.hits()[name]} of {hits} requests in {limit}"
        out.append(conns.ask("/status/200"))
    return out


def rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("balance", ["round_robin", "least_request", "random"])
def test_the_one_bad_endpoint_among_three_is_ejected(fastproxy, app_upstream, balance):
    app = app_upstream(names=NAMES)
    proxy = start(fastproxy, outlier_config(app, balance=balance))
    app.set_mode("b", "fail")
    with Conns(proxy.port(), n=3) as conns:
        first = send_until(conns, app, "b", 3)
        assert [r.status for r in first].count(500) == 3, [r.status for r in first]
        assert ejected(proxy, "up") == {app.addr("b")}
        rest = [conns.ask("/status/200") for _ in range(60)]
    assert all(r.status == 200 for r in rest), Counter(r.status for r in rest)
    assert app.hits()["b"] == 3, "an ejected endpoint receives nothing"
    assert set(served_by(rest)) == {"a", "c"}
    eps = endpoint_status(proxy, "up")
    assert eps[app.addr("b")]["healthy"] is False, eps
    assert rfc3339(eps[app.addr("b")]["ejected_until"]) > time.time(), eps
    for n in ("a", "c"):
        assert eps[app.addr(n)]["healthy"] is True and eps[app.addr(n)]["ejected_until"] is None, eps


def test_failures_must_be_consecutive(fastproxy, app_upstream):
    """2 failures, a success, 2 failures: never 3 in a row, so b is never ejected."""
    app = app_upstream(names=NAMES)
    proxy = start(fastproxy, outlier_config(app))
    with Conns(proxy.port(), n=3) as conns:
        app.set_mode("b", "fail")
        send_until(conns, app, "b", 2)
        app.set_mode("b", "ok")
        send_until(conns, app, "b", 3)
        app.set_mode("b", "fail")
        send_until(conns, app, "b", 5)
        app.set_mode("b", "ok")
        assert ejected(proxy, "up") == set()
        rest = [conns.ask("/status/200") for _ in range(30)]
    assert Counter(served_by(rest))["b"] >= 5, Counter(served_by(rest))


def test_ejection_ends_after_eject_for_and_grows_when_repeated(fastproxy, app_upstream):
    """eject_for = 1s: b comes back after it; still failing, it is ejected again for
    longer (the proxy's own ejected_until tells how long)."""
    app = app_upstream(names=NAMES)
    proxy = start(fastproxy, outlier_config(app, eject_for="1s"))
    app.set_mode("b", "fail")
    with Conns(proxy.port(), n=3) as conns:
        before = time.time()
        send_until(conns, app, "b", 3)
        until1 = endpoint_status(proxy, "up")[app.addr("b")]["ejected_until"]
        assert until1 is not None
        first_len_max = rfc3339(until1) - before
        settle(1.2)
        # back in the rotation: it receives requests again, fails again, out again (after
        # at most 3 more failures)
        assert ejected(proxy, "up") == set()
        for _ in range(30):
            conns.ask("/status/200")
            after = time.time()
            until2 = endpoint_status(proxy, "up")[app.addr("b")]["ejected_until"]
            if until2 is not None:
                break
        assert until2 is not None, "failing again after its ejection ended: ejected again"
        assert app.hits()["b"] <= 6, app.hits()
        second_len_min = rfc3339(until2) - after
        assert second_len_min > first_len_max, (
            f"the second ejection ({until2}, >= {second_len_min:.2f}s) should last longer than "
            f"the first ({until1}, <= {first_len_max:.2f}s)")
        # now healthy: once the (longer) ejection is over it serves again
        app.set_mode("b", "ok")
        settle(max(0.0, rfc3339(until2) - time.time()) + 0.2)
        back = app.hits()["b"]
        send_until(conns, app, "b", back + 2, limit=30)
    assert ejected(proxy, "up") == set()


@pytest.mark.parametrize("max_ejected,bad,expect", [
    (0.5, NAMES, 1),          # 3 * 0.5 = 1.5 -> 1
    (0.2, ("a", "b"), 1),     # 3 * 0.2 = 0.6 -> 0, but one may always be ejected
    (0.7, NAMES, 2),          # 3 * 0.7 = 2.1 -> 2
], ids=["half", "one-always", "two-of-three"])
def test_max_ejected_is_honoured(fastproxy, app_upstream, max_ejected, bad, expect):
    app = app_upstream(names=NAMES)
    proxy = start(fastproxy, outlier_config(app, consecutive=2, max_ejected=max_ejected))
    for n in bad:
        app.set_mode(n, "fail")
    with Conns(proxy.port(), n=3) as conns:
        for _ in range(40):
            conns.ask("/status/200")
            assert len(ejected(proxy, "up")) <= expect, endpoint_status(proxy, "up")
        out = ejected(proxy, "up")
        assert len(out) == expect, endpoint_status(proxy, "up")
        assert out <= {app.addr(n) for n in bad}
        before = app.hits()
        rest = [conns.ask("/status/200") for _ in range(30)]
    after = app.hits()
    for n in NAMES:
        if app.addr(n) in out:
            assert after[n] == before[n], f"{n} is ejected but got requests"
        else:
            assert after[n] > before[n], f"{n} is not ejected (max_ejected) but got nothing"
    assert len(rest) == 30


def test_every_endpoint_ejected_is_no_healthy_upstream(fastproxy, app_upstream):
    app = app_upstream(names=NAMES)
    proxy = start(fastproxy, outlier_config(app, consecutive=1, max_ejected=1.0))
    for n in NAMES:
        app.set_mode(n, "fail")
    with Conns(proxy.port(), n=3) as conns:
        statuses = [conns.ask("/status/200").status for _ in range(3)]
        assert statuses == [500, 500, 500]
        assert len(ejected(proxy, "up")) == 3
        for _ in range(3):
            assert_proxy_error(conns.ask("/status/200"), 503, "no_healthy_upstream")
    assert sum(app.hits().values()) == 3


def test_least_request_avoids_the_endpoint_with_outstanding_requests(fastproxy, app_upstream):
    """a hangs on every request (they stay outstanding); b and c answer at once. Round
    robin would give a a third of 60 requests, random about as many; least_request (power
    of two choices on outstanding requests) picks a only when both choices are a."""
    app = app_upstream(names=NAMES)
    cfg = outlier_config(app, balance="least_request")
    del cfg["cluster"]["up"]["outlier"]
    proxy = fastproxy(cfg)
    app.set_mode("a", "hang")
    held = []
    try:
        for i in range(60):
            c = RawConn(proxy.port())
            c.send(b"GET /status/200 HTTP/1.1\r\nHost: app\r\n\r\n")
            wait_until(lambda: sum(app.hits().values()) == i + 1, deadline_s=10,
                       what=f"request {i + 1} arrives")
            if app.log()[-1][0] == "a":
                held.append(c)        # outstanding at a
            else:
                assert c.read_response().status == 200
                c.close()
        hits = app.hits()
    finally:
        for c in held:
            c.close()
    assert sum(hits.values()) == 60
    assert hits["a"] <= 15, f"least_request kept sending to the endpoint with outstanding requests: {hits}"
    assert hits["b"] > 0 and hits["c"] > 0, hits


def test_random_balancing_uses_every_endpoint(fastproxy, app_upstream):
    app = app_upstream(names=NAMES)
    cfg = outlier_config(app, balance="random")
    del cfg["cluster"]["up"]["outlier"]
    proxy = fastproxy(cfg)
    with Conns(proxy.port(), n=3) as conns:
        seen = Counter(served_by(conns.ask("/status/200") for _ in range(300)))
    assert set(seen) == set(NAMES) and all(50 <= v <= 150 for v in seen.values()), seen
