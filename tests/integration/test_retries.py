"""SPEC §2/§5/§11 retries: `retries` more attempts for the failures `retry_on` names
(connect-failure, reset, 5xx, gateway-error), each preferring another endpoint; only while
no response byte went to the client; only for bodies fully buffered (<= 64 KiB) or empty;
any method the route sends; after the last attempt the client gets the last upstream
response, or the proxy error when none came. A retry budget (Linkerd's: over 10 s, 20% of
the requests plus 10 per second, configurable on the cluster or the route) keeps retries
from multiplying an outage."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from support.checks import assert_proxy_error
from support.observe import wait_metric
from support.procs import LOOPBACK, free_port
from support.rawhttp import ConnectionClosed, RawConn
from support.traffic import Conns, served_by, settle

pytestmark = pytest.mark.timeout(60)

NAMES = ("a", "b", "c")


def retry_config(endpoints, *, retries=1, retry_on=("5xx",), timeout="10s",
                 cluster_budget=None) -> dict:
    route = {"name": "all", "cluster": "up", "retries": retries, "timeout": timeout}
    if retry_on is not None:
        route["retry_on"] = list(retry_on)
    cluster = {"endpoints": list(endpoints)}
    if cluster_budget is not None:
        cluster["retry_budget"] = cluster_budget
    return {
        "proxy": {"admin": "", "drain_timeout": "2s", "access_log": "off"},
        "listener": [{"name": "main", "bind": "${listen:main}", "route": [route]}],
        "cluster": {"up": cluster},
    }


def warm(conns: Conns, n: int = 100) -> None:
    """Healthy requests: room in the retry budget for what follows."""
    for _ in range(n):
        assert conns.ask("/status/200").status == 200


def attempts_by_request(app, tag: str) -> dict[str, list[str]]:
    """path?query -> endpoints that received it, in order (requests tagged ?t=TAG...)."""
    out: dict[str, list[str]] = {}
    for name, _, path in app.log():
        if f"t={tag}" in path:
            out.setdefault(path, []).append(name)
    return out


KINDS = {
    # kind: (retry_on, how a fails)
    "5xx": (["5xx"], ("fail", 500)),
    "gateway-error": (["gateway-error"], ("fail", 503)),
    "reset": (["reset"], ("reset", None)),
    "connect-failure": (["connect-failure"], None),   # a's address: nothing listens
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_retry_lands_on_another_endpoint(fastproxy, app_upstream, kind):
    retry_on, fail = KINDS[kind]
    app = app_upstream(names=("a", "b"))
    a = app.addr("a") if fail else f"{LOOPBACK}:{free_port()}"
    proxy = fastproxy(retry_config([a, app.addr("b")], retries=1, retry_on=retry_on))
    with Conns(proxy.port(), n=2) as conns:
        if fail:
            warm(conns)
            app.set_mode("a", *fail)
        responses = [conns.ask(f"/status/200?t=x{i}") for i in range(10)]
    assert [r.status for r in responses] == [200] * 10, [r.status for r in responses]
    assert set(served_by(responses)) == {"b"}
    if fail:
        tries = attempts_by_request(app, "x")
        assert len(tries) == 10, tries
        assert any(t[0] == "a" for t in tries.values()), f"premise: some requests went to a first {tries}"
        assert all(t[-1] == "b" for t in tries.values()), tries


@pytest.mark.parametrize("retry_on,status", [
    (None, 500),                        # default: connect-failure, reset
    (["connect-failure", "reset"], 500),
    (["gateway-error"], 500),           # 500 is not a gateway error (502, 503, 504 are)
    (["5xx"], None),                    # and a reset is not a 5xx
], ids=["default-500", "explicit-500", "gateway-error-500", "5xx-reset"])
def test_no_retry_for_failures_retry_on_does_not_name(fastproxy, app_upstream, retry_on, status):
    app = app_upstream(names=("a", "b"))
    proxy = fastproxy(retry_config([app.addr("a"), app.addr("b")], retries=2, retry_on=retry_on))
    # no warm-up: a's connections are never pooled, so the one-time resend of a request
    # whose pooled connection was reset (SPEC §3) cannot come into play
    with Conns(proxy.port(), n=2) as conns:
        if status:
            app.set_mode("a", "fail", status)
        else:
            app.set_mode("a", "reset")
        responses = [conns.ask(f"/status/200?t=n{i}") for i in range(10)]
    tries = attempts_by_request(app, "n")
    assert all(len(t) == 1 or set(t) == {"a"} for t in tries.values()), \
        f"retried on another endpoint though retry_on={retry_on}: {tries}"
    failed = [r for r in responses if r.status != 200]
    assert failed, "premise: requests that went to a fail"
    if status:
        assert all(r.status == status for r in failed), failed
    else:
        for r in failed:
            assert_proxy_error(r, 502, "upstream_reset")


@pytest.mark.parametrize("mode", ["fail", "reset"])
def test_each_retry_prefers_an_endpoint_not_tried_yet(fastproxy, app_upstream, mode):
    """Three endpoints all failing, retries = 2: each request tries all three; the client
    gets the last attempt's response (5xx) or the proxy error (reset)."""
    app = app_upstream(names=NAMES)
    proxy = fastproxy(retry_config([app.addr(n) for n in NAMES], retries=2,
                                   retry_on=["5xx", "reset"]))
    with Conns(proxy.port(), n=2) as conns:
        warm(conns)
        for n in NAMES:
            app.set_mode(n, mode)
        responses = [conns.ask(f"/status/200?t=p{i}") for i in range(4)]
    tries = attempts_by_request(app, "p")
    for i, r in enumerate(responses):
        t = tries[f"/status/200?t=p{i}"]
        assert set(t) == set(NAMES), f"request {i} tried {t}"
        if mode == "fail":
            assert len(t) == 3, f"request {i}: retries = 2 means 3 attempts: {t}"
            assert r.status == 500 and r.header("x-served-by") == t[-1], (r, t)
        else:
            assert_proxy_error(r, 502, "upstream_reset")


SCRIPT_PARTIAL = {"rules": [
    {"prefix": "/partial-body", "actions": [
        {"send": "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst bytes"},
        {"sleep": 1.0}, {"reset": True}]},
    {"prefix": "/head-only", "actions": [
        {"send": "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"},
        {"sleep": 1.0}, {"reset": True}]},
]}


@pytest.mark.parametrize("path", ["/partial-body", "/head-only"])
def test_never_retried_after_response_bytes_went_to_the_client(fastproxy, raw_upstream, path):
    """The upstream sends a response head (and some body), then — after the client has
    received it — resets. The client's response is truncated; no endpoint sees the
    request twice."""
    ups = [raw_upstream(SCRIPT_PARTIAL), raw_upstream(SCRIPT_PARTIAL)]
    proxy = fastproxy(retry_config([u.addr for u in ups], retries=2,
                                   retry_on=["reset", "5xx", "connect-failure"]))
    with RawConn(proxy.port()) as c:
        c.send(f"GET {path} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
        head = c.read_head(deadline=time.monotonic() + 10)
        assert head.status == 200, head     # the client has the head before the reset
        with pytest.raises(ConnectionClosed):
            c.read_bytes(100, timeout=10)
    settle(0.5)   # a wrong retry would be on its way by now
    sent = [r.target for u in ups for r in u.requests()]
    assert sent == [path], f"the request reached the upstreams as {sent}"


@pytest.mark.parametrize("size,chunked,retried", [
    (0, False, True),
    (1024, True, True),
    (65536, False, True),
    (65537, False, False),
    (200_000, True, False),
], ids=["empty", "chunked-1k", "64k", "64k+1", "chunked-200k"])
def test_only_bodies_up_to_64_kib_are_retried(fastproxy, app_upstream, size, chunked, retried):
    app = app_upstream(names=("a", "b"))
    proxy = fastproxy(retry_config([app.addr("a"), app.addr("b")], retries=1, retry_on=["5xx"]))
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    with Conns(proxy.port(), n=2) as conns:
        warm(conns)
        app.set_mode("a", "fail")
        responses = []
        for i in range(6):
            c = conns.conns[i % 2]
            head = f"POST /echo?t=b{i} HTTP/1.1\r\nHost: app\r\n"
            if chunked:
                pieces = [body[j:j + 16384] for j in range(0, len(body), 16384)]
                data = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
                c.send((head + "Transfer-Encoding: chunked\r\n\r\n").encode() + data)
            else:
                c.send((head + f"Content-Length: {size}\r\n\r\n").encode() + body)
            responses.append(c.read_response())
    tries = attempts_by_request(app, "b")
    assert len(tries) == 6, tries
    went_to_a = [p for p, t in tries.items() if t[0] == "a"]
    assert went_to_a, f"premise: some requests went to a first: {tries}"
    if retried:
        assert [r.status for r in responses] == [200] * 6, responses
        for r in responses:   # the retried body arrived whole
            assert r.header("x-served-by") == "b"
            assert json.loads(r.body)["body_len"] == size
    else:
        assert all(len(t) == 1 for t in tries.values()), f"a {size}-byte body was retried: {tries}"
        assert Counter(r.status for r in responses)[500] == len(went_to_a)


def test_retry_budget_caps_retries_during_an_outage(fastproxy, app_upstream):
    """Every endpoint fails; retries = 2 would triple the load (900 upstream requests for
    300). A budget of 20% plus 1 per second keeps it near 300 + 60 + 10."""
    app = app_upstream(names=("a", "b"))
    proxy = fastproxy(retry_config([app.addr("a"), app.addr("b")], retries=2, retry_on=["5xx"],
                                   cluster_budget={"ratio": 0.2, "min_per_second": 1}))
    app.set_mode("a", "fail")
    app.set_mode("b", "fail")
    n = 300
    with Conns(proxy.port(), n=4) as conns:
        statuses = Counter(conns.ask(f"/status/200?t=o{i}").status for i in range(n))
    assert statuses == {500: n}, statuses
    retries = sum(app.hits().values()) - n
    assert retries >= 10, "the floor of retries is always allowed"
    # a window that ends during the run starts a fresh floor: 20% + up to two floors
    assert retries <= 0.2 * n + 20, (
        f"{retries} retries for {n} requests in an outage: the budget allows 20% + 10")


@pytest.mark.parametrize("kind", ["5xx", "reset"])
def test_default_budget_does_not_starve_retries_at_low_traffic(fastproxy, app_upstream, kind):
    """One endpoint of two fails, retries = 1, a few sequential requests and no traffic
    before: every request succeeds on the other endpoint. BUG at the time of writing: the
    budget allowed 5 retries per 10 s beyond 20%, so 7 of 20 failed (2 of 10 on reset)."""
    retry_on, fail = KINDS[kind]
    app = app_upstream(names=("a", "b"))
    proxy = fastproxy(retry_config([app.addr("a"), app.addr("b")], retries=1, retry_on=retry_on))
    app.set_mode("a", *fail)
    with Conns(proxy.port(), n=1) as conns:
        statuses = [conns.ask(f"/status/200?t=l{i}").status for i in range(20)]
    assert statuses == [200] * 20, statuses
    assert app.hits()["a"] >= 5, "premise: requests went to the failing endpoint first"


def test_route_budget_overrides_the_clusters_and_denials_are_counted(fastproxy, app_upstream):
    """The cluster allows no retries; one route brings its own budget. Retries the budget
    refuses are counted in fastproxy_retry_budget_exhausted_total."""
    app = app_upstream(names=("a", "b"))
    config = retry_config([app.addr("a"), app.addr("b")], retries=1,
                          cluster_budget={"ratio": 0, "min_per_second": 0})
    config["proxy"]["admin"] = "${listen:admin}"
    own = {"name": "own", "prefix": "/own", "cluster": "up", "retries": 1, "retry_on": ["5xx"],
           "retry_budget": {"min_per_second": 10}}
    config["listener"][0]["route"].insert(0, own)
    proxy = fastproxy(config)
    app.set_mode("a", "fail")
    with Conns(proxy.port(), n=1) as conns:
        own_statuses = [conns.ask(f"/own/{i}").status for i in range(10)]
        cluster_statuses = [conns.ask(f"/status/200?t=c{i}").status for i in range(10)]
    assert own_statuses == [200] * 10, own_statuses
    failed = cluster_statuses.count(500)
    assert failed >= 3 and set(cluster_statuses) <= {200, 500}, cluster_statuses
    wait_metric(proxy, lambda m: m.value("fastproxy_retry_budget_exhausted_total",
                                         cluster="up") == failed,
                what=f"{failed} denied retries counted")

