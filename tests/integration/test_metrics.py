"""SPEC §8 / §11 metrics, read the way Prometheus reads them: GET /metrics on the admin
API, parsed with prometheus_client's own text parser, after a known sequence of requests.

- fastproxy_requests_total{listener,cluster,code}: exact per listener, cluster and numeric
  code; a request with no route has cluster="".
- fastproxy_request_duration_seconds{listener,cluster} and
  fastproxy_proxy_overhead_seconds{listener}: histograms whose _count is the number of
  requests, with consistent buckets.
- fastproxy_upstream_connections{cluster,state}: active while a request is held at the
  upstream, idle in the pool afterwards.
- fastproxy_config_reloads_total{result}, fastproxy_tls_handshake_failures_total{listener},
  fastproxy_circuit_open / fastproxy_circuit_trips_total{cluster}.
- With `workers = 2` every figure covers both workers: totals stay exact.

One proxy for the module, one listener per test so each test's counts are its own."""

from __future__ import annotations

import http.client
import signal
import socket
import ssl
import subprocess
import uuid

import httpx
import pytest

from support.certs import make_ca, make_leaf, write_material
from support.observe import admin_call, scrape, wait_metric, wait_ready
from support.procs import LOOPBACK, wait_until
from support.rawhttp import RawConn, get
from support.traffic import worker_of

pytestmark = pytest.mark.timeout(60)

WEB = "spiffe://mesh.local/ns/default/sa/web"


def module_config(app: str, cert, key, trust) -> str:
    return f"""
[proxy]
admin = "${{listen:admin}}"
access_log = "off"
drain_timeout = "2s"

[identity]
id = "{WEB}"
cert = "{cert}"
key = "{key}"
trust = "{trust}"

[[listener]]
name = "counts"
bind = "${{listen:counts}}"
  [[listener.route]]
  name = "status"
  prefix = "/status/"
  cluster = "up"

[[listener]]
name = "pool"
bind = "${{listen:pool}}"
  [[listener.route]]
  cluster = "pool"

[[listener]]
name = "secure"
bind = "${{listen:secure}}"
tls = "tls"
  [[listener.route]]
  cluster = "up"

[[listener]]
name = "brk"
bind = "${{listen:brk}}"
  [[listener.route]]
  cluster = "brk"

[cluster.up]
endpoints = ["{app}"]

[cluster.pool]
endpoints = ["{app}"]

[cluster.brk]
endpoints = ["{app}"]
  [cluster.brk.circuit_breaker]
  max_failures = 0
  window = "60s"
  open_for = "60s"
"""


@pytest.fixture(scope="module")
def env(module_fastproxy, module_upstreams, tmp_path_factory):
    app = module_upstreams.app()
    ca = make_ca("mesh.local")
    leaf = make_leaf(ca, WEB, dns=["localhost"], ips=["127.0.0.1"])
    cert, key, trust = write_material(tmp_path_factory.mktemp("identity"), leaf, ca)
    proxy = module_fastproxy(module_config(app.addr(), cert, key, trust), name="metrics")
    wait_ready(proxy)
    return {"proxy": proxy, "app": app, "ca": ca, "trust": trust}


def family_type(m, name: str) -> str | None:
    return m.types.get(name) or m.types.get(name.removesuffix("_total"))


def codes(m, listener: str) -> dict[tuple[str, str], float]:
    """{(cluster, code): value} of fastproxy_requests_total for one listener."""
    return {(dict(k)["cluster"], dict(k)["code"]): v
            for k, v in m.samples("fastproxy_requests_total", listener=listener).items()}


def assert_histogram(m, name: str, count: int, **labels) -> None:
    """_count == count, +Inf bucket == _count, buckets cumulative, _sum >= 0."""
    got = m.value(f"{name}_count", **labels)
    assert got == count, f"{name}_count{labels} = {got}, expected {count}\n{m.text}"
    buckets = sorted(((float(dict(k)["le"]), v) for k, v in m.samples(f"{name}_bucket", **labels).items()),
                     key=lambda b: b[0])
    assert buckets and buckets[-1][0] == float("inf"), f"{name}{labels}: no +Inf bucket"
    assert buckets[-1][1] == count, buckets
    values = [v for _, v in buckets]
    assert values == sorted(values), f"{name}{labels}: buckets not cumulative: {buckets}"
    assert m.value(f"{name}_sum", **labels) >= 0


# ---------------------------------------------------------------- requests and histograms

def test_requests_total_is_exact_after_a_known_sequence(env):
    proxy = env["proxy"]
    port = proxy.port("counts")
    statuses = []
    for i in range(2):                      # new connections (http.client)
        c = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
        c.request("GET", f"/status/200?i={i}")
        r = c.getresponse()
        r.read()
        statuses.append(r.status)
        c.close()
    with httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=10) as hc:   # keep-alive
        statuses += [hc.get("/status/200").status_code for _ in range(3)]
        statuses += [hc.get("/status/503").status_code for _ in range(2)]
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                          f"http://{LOOPBACK}:{port}/status/503"], capture_output=True, text=True,
                         timeout=20)
    statuses.append(int(out.stdout))
    for path in ("/nope", "/other/path"):   # no route matches
        r = get(port, path)
        assert r.header("fastproxy-error") == "no_route", r
        statuses.append(r.status)
    assert sorted(statuses) == [200] * 5 + [404] * 2 + [503] * 3, statuses

    m = wait_metric(proxy, lambda m: sum(codes(m, "counts").values()) >= 10,
                    what="10 requests counted on listener counts")
    assert codes(m, "counts") == {("up", "200"): 5, ("up", "503"): 3, ("", "404"): 2}, m.text
    assert family_type(m, "fastproxy_requests_total") == "counter"
    assert family_type(m, "fastproxy_request_duration_seconds") == "histogram"
    assert family_type(m, "fastproxy_proxy_overhead_seconds") == "histogram"
    assert_histogram(m, "fastproxy_request_duration_seconds", 8, listener="counts", cluster="up")
    assert_histogram(m, "fastproxy_request_duration_seconds", 2, listener="counts", cluster="")
    assert_histogram(m, "fastproxy_proxy_overhead_seconds", 10, listener="counts")


def test_upstream_connections_active_then_idle(env):
    proxy, app = env["proxy"], env["app"]
    tag = uuid.uuid4().hex

    def conns(m):
        return m.by("fastproxy_upstream_connections", "state", cluster="pool")

    with RawConn(proxy.port("pool"), timeout=20) as c:
        c.send(f"GET /slow?hold={tag} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
        wait_until(lambda: app.seen(tag), deadline_s=10, what="held request reached the app")
        m = wait_metric(proxy, lambda m: conns(m).get("active") == 1,
                        what="one active upstream connection of cluster pool")
        app.release(tag)
        assert c.read_response().status == 200
    m = wait_metric(proxy, lambda m: conns(m).get("active", 0) == 0 and conns(m).get("idle") == 1,
                    what="the pool connection is idle")
    assert family_type(m, "fastproxy_upstream_connections") == "gauge"
    states = {dict(k)["state"] for k in m.samples("fastproxy_upstream_connections")}
    assert "idle" in states and states <= {"active", "idle", "http2"}, states


def test_circuit_gauge_and_trips(env):
    proxy = env["proxy"]
    port = proxy.port("brk")
    assert get(port, "/status/500").status == 500       # max_failures = 0: this opens it
    r = get(port, "/status/200")
    assert (r.status, r.header("fastproxy-error")) == (503, "circuit_open"), r
    m = wait_metric(proxy, lambda m: m.value("fastproxy_circuit_trips_total", cluster="brk") == 1,
                    what="one trip of cluster brk")
    assert m.value("fastproxy_circuit_open", cluster="brk") == 1
    assert family_type(m, "fastproxy_circuit_open") == "gauge"
    assert family_type(m, "fastproxy_circuit_trips_total") == "counter"
    m = wait_metric(proxy, lambda m: sum(codes(m, "brk").values()) >= 2, what="brk requests counted")
    assert codes(m, "brk") == {("brk", "500"): 1, ("brk", "503"): 1}, m.text


# ---------------------------------------------------------------- reloads and TLS

def test_config_reloads_total_counts_each_reload(env):
    proxy = env["proxy"]
    m = scrape(proxy)
    success = m.value("fastproxy_config_reloads_total", 0, result="success")
    failure = m.value("fastproxy_config_reloads_total", 0, result="failure")
    reply = admin_call(proxy, "POST", "/reload")
    assert reply.status == 200 and reply.json()["result"] == "success", reply
    m = scrape(proxy)
    assert m.value("fastproxy_config_reloads_total", result="success") == success + 1, m.text
    proxy.signal(signal.SIGHUP)
    m = wait_metric(proxy, lambda m: m.value("fastproxy_config_reloads_total", 0,
                                             result="success") >= success + 2,
                    what="the SIGHUP reload counted")
    assert m.value("fastproxy_config_reloads_total", result="success") == success + 2
    assert m.value("fastproxy_config_reloads_total", 0, result="failure") == failure
    assert family_type(m, "fastproxy_config_reloads_total") == "counter"
    assert get(proxy.port("pool"), "/status/204").status == 204     # still serving


def plain_http_to_tls(port: int) -> None:
    """A plain-HTTP client on a TLS listener: it never gets an HTTP response."""
    with RawConn(port, timeout=10) as c:
        c.send(b"GET /status/200 HTTP/1.1\r\nHost: app\r\n\r\n")
        try:
            data = c.wait_closed(10)
        except TimeoutError:
            pytest.fail("the TLS listener kept a plain-HTTP connection open")
        assert not data.startswith(b"HTTP/"), data


def test_tls_handshake_failures_per_listener(env):
    proxy = env["proxy"]
    listeners = ("counts", "pool", "secure", "brk")
    before = {n: scrape(proxy).value("fastproxy_tls_handshake_failures_total", 0, listener=n)
              for n in listeners}
    plain_http_to_tls(proxy.port("secure"))
    plain_http_to_tls(proxy.port("secure"))
    m = wait_metric(proxy, lambda m: m.value("fastproxy_tls_handshake_failures_total", 0,
                                             listener="secure") >= before["secure"] + 2,
                    what="two handshake failures on listener secure")
    # a proper TLS client is served and not counted
    ctx = ssl.create_default_context(cafile=str(env["trust"]))
    ctx.check_hostname = False
    c = http.client.HTTPSConnection(LOOPBACK, proxy.port("secure"), context=ctx, timeout=10)
    try:
        c.request("GET", "/status/200")
        assert c.getresponse().status == 200
    finally:
        c.close()
    m = scrape(proxy)
    after = {n: m.value("fastproxy_tls_handshake_failures_total", 0, listener=n) for n in listeners}
    assert after == {**before, "secure": before["secure"] + 2}, (before, after)
    assert family_type(m, "fastproxy_tls_handshake_failures_total") == "counter"


def test_tls_handshakes_by_session(env):
    """A full handshake counts as new; the same client offering its session back, resumed."""
    proxy = env["proxy"]

    def count(session):
        return scrape(proxy).value("fastproxy_tls_handshakes_total", 0, listener="secure",
                                   session=session)

    before = {s: count(s) for s in ("new", "resumed")}
    ctx = ssl.create_default_context(cafile=str(env["trust"]))
    ctx.check_hostname = False
    session = None
    for _ in range(3):
        with ctx.wrap_socket(socket.create_connection((LOOPBACK, proxy.port("secure"))),
                             session=session) as s:
            c = RawConn.wrap(s)
            c.send(b"GET /status/200 HTTP/1.1\r\nHost: app\r\n\r\n")
            assert c.read_response().status == 200   # the ticket came before it
            session = s.session
    wait_metric(proxy, lambda m: m.value("fastproxy_tls_handshakes_total", 0, listener="secure",
                                         session="resumed") >= before["resumed"] + 2,
                what="two resumed handshakes")
    assert {s: count(s) for s in before} == {"new": before["new"] + 1,
                                            "resumed": before["resumed"] + 2}
    assert family_type(scrape(proxy), "fastproxy_tls_handshakes_total") == "counter"


# ---------------------------------------------------------------- several workers

def test_two_workers_totals_are_exact(fastproxy, shared_app):
    proxy = fastproxy(f"""
[proxy]
admin = "${{listen:admin}}"
access_log = "off"
drain_timeout = "2s"

[[listener]]
name = "main"
bind = "${{listen:main}}"
  [[listener.route]]
  prefix = "/status/"
  cluster = "up"

[cluster.up]
endpoints = ["{shared_app.addr()}"]
""", workers=2)
    wait_ready(proxy)
    wait_until(lambda: len(proxy.workers()) == 2, deadline_s=10, what="two workers")
    served: dict[int | None, int] = {}
    ok = 0
    while ok < 40 or len([p for p in served if p is not None]) < 2 or min(
            (n for p, n in served.items() if p is not None), default=0) < 5:
        assert ok < 400, f"400 connections did not reach both workers: {served}"
        with RawConn(proxy.port()) as c:           # one request per connection
            c.send(b"GET /status/200 HTTP/1.1\r\nHost: app\r\n\r\n")
            assert c.read_response().status == 200
            pid = worker_of(proxy, c)
            served[pid] = served.get(pid, 0) + 1
        ok += 1
    for _ in range(6):
        assert get(proxy.port(), "/status/503").status == 503
    for _ in range(4):
        assert get(proxy.port(), "/nothing-here").status == 404
    total = ok + 10
    m = wait_metric(proxy, lambda m: sum(codes(m, "main").values()) >= total,
                    what=f"{total} requests counted across both workers")
    assert codes(m, "main") == {("up", "200"): ok, ("up", "503"): 6, ("", "404"): 4}, \
        f"served per worker: {served}\n{m.text}"
    assert_histogram(m, "fastproxy_request_duration_seconds", ok + 6, listener="main", cluster="up")
    assert_histogram(m, "fastproxy_request_duration_seconds", 4, listener="main", cluster="")
    assert_histogram(m, "fastproxy_proxy_overhead_seconds", total, listener="main")
    # the same answer whichever worker serves the scrape
    for _ in range(5):
        assert codes(scrape(proxy), "main") == codes(m, "main")
