"""SPEC §3 forwarding basics through a real fastproxy with real clients (curl,
http.client, httpx, raw sockets): bodies both ways in both framings, keep-alive on both
sides, pipelining, HTTP/1.0, HEAD, 204/304 and Expect: 100-continue."""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from support.app_upstream import pattern_bytes
from support.checks import assert_proxy_error
from support.configs import simple_config
from support.procs import LOOPBACK, free_port, wait_until
from support.rawhttp import RawConn

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def proxy(fastproxy, shared_app):
    return fastproxy(simple_config(shared_app.addr()))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True,
                          timeout=40)


# ---------------------------------------------------------------- curl

def test_curl_get(proxy):
    out = curl("-D", "-", proxy.url("/echo?q=1"))
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    echo = json.loads(body)
    assert echo["method"] == "GET" and echo["raw_path"] == "/echo?q=1"


def test_curl_post_content_length(proxy, tmp_path):
    data = pattern_bytes(300_000)
    f = tmp_path / "body.bin"
    f.write_bytes(data)
    # -H "Expect:" so curl does not wait for 100-continue (that has its own test)
    out = curl("-H", "Expect:", "--data-binary", f"@{f}", proxy.url("/echo"))
    assert out.returncode == 0, out.stderr
    echo = json.loads(out.stdout)
    assert echo["method"] == "POST"
    assert (echo["body_len"], echo["body_sha256"]) == (len(data), sha(data))


def test_curl_post_chunked_request_body(proxy, tmp_path):
    data = pattern_bytes(200_000)
    f = tmp_path / "body.bin"
    f.write_bytes(data)
    out = curl("-H", "Transfer-Encoding: chunked", "-H", "Expect:", "--data-binary", f"@{f}",
               proxy.url("/echo"))
    assert out.returncode == 0, out.stderr
    echo = json.loads(out.stdout)
    assert (echo["body_len"], echo["body_sha256"]) == (len(data), sha(data))


def test_curl_chunked_response(proxy):
    out = curl(proxy.url("/chunked"))
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"alpha-beta-gamma"


def test_curl_expect_100_continue(proxy, tmp_path):
    """curl sends Expect: 100-continue for big bodies; with a long expect timeout it only
    sends the body once a 100 arrived (or gives up after the timeout, which the test bounds)."""
    data = pattern_bytes(2_000_000)
    f = tmp_path / "body.bin"
    f.write_bytes(data)
    out = curl("-v", "--expect100-timeout", "20", "--data-binary", f"@{f}", proxy.url("/echo"))
    assert out.returncode == 0, out.stderr
    assert b"HTTP/1.1 100" in out.stderr, out.stderr[-2000:]
    echo = json.loads(out.stdout)
    assert (echo["body_len"], echo["body_sha256"]) == (len(data), sha(data))


# ---------------------------------------------------------------- httpx

def test_httpx_bodies_both_ways(proxy):
    with httpx.Client(base_url=proxy.url(""), timeout=30) as client:
        r = client.get("/echo", headers={"X-Hello": "world"})
        assert r.status_code == 200
        assert ["X-Hello", "world"] in r.json()["headers"]

        data = pattern_bytes(1_000_000)
        r = client.post("/echo", content=data)
        assert (r.json()["body_len"], r.json()["body_sha256"]) == (len(data), sha(data))

        def gen():  # no length known: httpx sends it chunked
            for i in range(0, len(data), 65536):
                yield data[i:i + 65536]
        r = client.post("/echo", content=gen())
        assert (r.json()["body_len"], r.json()["body_sha256"]) == (len(data), sha(data))

        with client.stream("GET", "/bytes/3000000", params={"chunked": "1"}) as r:
            assert r.headers.get("transfer-encoding") == "chunked"
            got = b"".join(r.iter_bytes())
        assert got == pattern_bytes(3_000_000)

        r = client.get("/bytes/3000000")
        assert r.headers["content-length"] == "3000000"
        assert r.content == pattern_bytes(3_000_000)


# ---------------------------------------------------------------- keep-alive

def test_keepalive_reused_on_both_sides(proxy):
    """One client connection carries 20 requests; the proxy reuses pooled upstream
    connections, so the upstream sees fewer connections than requests."""
    conn = http.client.HTTPConnection(LOOPBACK, proxy.port(), timeout=10)
    conn.connect()
    first_sock = conn.sock
    upstream_ports = set()
    for i in range(20):
        conn.request("GET", f"/echo?i={i}")
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200
        assert (r.getheader("connection") or "").lower() != "close"
        upstream_ports.add(json.loads(body)["peer_port"])
        assert conn.sock is first_sock, "http.client had to reconnect: keep-alive broken"
    conn.close()
    assert len(upstream_ports) < 20, upstream_ports


def test_keepalive_raw_upstream_connection_count(fastproxy, raw_upstream):
    up = raw_upstream()
    proxy = fastproxy(simple_config(up.addr))
    with RawConn(proxy.port()) as c:
        for i in range(10):
            c.send(f"GET /n{i} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
            r = c.read_response()
            assert (r.status, r.body) == (200, f"raw:/n{i}".encode())
    assert [r.target for r in up.requests()] == [f"/n{i}" for i in range(10)]
    assert up.connection_count() < 10


# ---------------------------------------------------------------- pipelining

def test_pipelined_requests_answered_in_order(proxy):
    body = b"0123456789"
    reqs = (
        b"GET /echo?n=1 HTTP/1.1\r\nHost: app\r\n\r\n"
        b"POST /echo?n=2 HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\n" + body +
        b"POST /echo?n=3 HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n"
        b"GET /status/204 HTTP/1.1\r\nHost: app\r\n\r\n"
        b"GET /slow?delay=0.2 HTTP/1.1\r\nHost: app\r\n\r\n"
        b"GET /echo?n=6 HTTP/1.1\r\nHost: app\r\n\r\n"
    )
    with RawConn(proxy.port()) as c:
        c.send(reqs)
        r1, r2, r3, r4, r5, r6 = (c.read_response() for _ in range(6))
    assert json.loads(r1.body)["raw_path"] == "/echo?n=1"
    e2 = json.loads(r2.body)
    assert (e2["raw_path"], e2["body_len"], e2["body_sha256"]) == ("/echo?n=2", 10, sha(body))
    e3 = json.loads(r3.body)
    assert (e3["raw_path"], e3["body_len"], e3["body_sha256"]) == ("/echo?n=3", 6, sha(b"abcdef"))
    assert r4.status == 204 and r4.body == b""
    assert r5.body == b"slow done"
    assert json.loads(r6.body)["raw_path"] == "/echo?n=6"


# ---------------------------------------------------------------- HTTP/1.0

def test_http10_closes_by_default(proxy):
    with RawConn(proxy.port()) as c:
        c.send(b"GET /echo HTTP/1.0\r\nHost: app\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and json.loads(r.body)["method"] == "GET"
        assert c.wait_closed(5) == b""


def test_http10_without_host_is_served(proxy):
    with RawConn(proxy.port()) as c:
        c.send(b"GET /echo HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert c.wait_closed(5) == b""


def test_http10_keep_alive_when_asked(proxy):
    """HTTP/1.0 + Connection: keep-alive: the proxy may keep the connection (and then
    says `Connection: keep-alive` and frames the body) or close it — never leave the
    client unable to tell where the response ends."""
    with RawConn(proxy.port()) as c:
        c.send(b"GET /echo HTTP/1.0\r\nHost: app\r\nConnection: keep-alive\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        if (r.header("connection") or "").lower() == "keep-alive":
            assert r.header("content-length") is not None
            assert r.header("transfer-encoding") is None  # HTTP/1.0 has no chunked
            c.send(b"GET /echo?second HTTP/1.0\r\nHost: app\r\nConnection: keep-alive\r\n\r\n")
            assert json.loads(c.read_response().body)["raw_path"] == "/echo?second"
        else:
            assert c.wait_closed(5) == b""


def test_http10_client_gets_chunked_upstream_body_unchunked(proxy):
    with RawConn(proxy.port()) as c:
        c.send(b"GET /chunked HTTP/1.0\r\nHost: app\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert r.header("transfer-encoding") is None, "chunked sent to an HTTP/1.0 client"
        assert r.body == b"alpha-beta-gamma"


# ---------------------------------------------------------------- HEAD, 204, 304

def test_head_has_no_body_and_keeps_framing(proxy):
    with RawConn(proxy.port()) as c:
        c.send(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: app\r\n\r\n"
               b"GET /echo?after-head HTTP/1.1\r\nHost: app\r\n\r\n")
        h = c.read_response(method="HEAD")
        assert h.status == 200 and h.header("content-length") == "1000" and h.body == b""
        r = c.read_response()
        assert json.loads(r.body)["raw_path"] == "/echo?after-head"


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_statuses(proxy, code):
    with RawConn(proxy.port()) as c:
        c.send(f"GET /status/{code} HTTP/1.1\r\nHost: app\r\n\r\n"
               "GET /echo?after HTTP/1.1\r\nHost: app\r\n\r\n".encode())
        r = c.read_response()
        assert r.status == code and r.body == b""
        assert r.header("transfer-encoding") is None
        assert json.loads(c.read_response().body)["raw_path"] == "/echo?after"


# ---------------------------------------------------------------- Expect: 100-continue

def test_expect_100_continue_before_body(proxy):
    """SPEC §11: the client receives 100 Continue before it must send the body. The
    client here sends nothing until the 100 arrived (bounded wait)."""
    body = pattern_bytes(50_000)
    with RawConn(proxy.port()) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body))
        interim = c.read_response(keep_interim=True, timeout=10)
        assert interim.status == 100, interim
        c.send(body)
        r = c.read_response()
        echo = json.loads(r.body)
        assert (echo["body_len"], echo["body_sha256"]) == (len(body), sha(body))
        # and the connection goes on
        c.send(b"GET /echo?next HTTP/1.1\r\nHost: app\r\n\r\n")
        assert json.loads(c.read_response().body)["raw_path"] == "/echo?next"


def test_expect_100_continue_answered_without_body_when_upstream_is_down(fastproxy):
    """With Expect: 100-continue and no upstream, the client gets the final 503 without
    having to send its body first."""
    proxy = fastproxy(simple_config(f"{LOOPBACK}:{free_port()}"))
    with RawConn(proxy.port()) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\n"
               b"Content-Length: 50000\r\n\r\n")
        assert_proxy_error(c.read_response(timeout=10), 503, "connect_failed")


# ---------------------------------------------------------------- concurrency

def test_concurrent_clients_each_get_their_own_responses(proxy):
    def client(n: int) -> list[str]:
        errors = []
        conn = http.client.HTTPConnection(LOOPBACK, proxy.port(), timeout=20)
        for i in range(15):
            body = f"client {n} request {i}".encode() * (n + 1)
            conn.request("POST", f"/echo?c={n}&i={i}", body=body)
            r = conn.getresponse()
            echo = json.loads(r.read())
            if (echo["raw_path"], echo["body_sha256"]) != (f"/echo?c={n}&i={i}", sha(body)):
                errors.append(f"client {n} request {i} got {echo['raw_path']}")
        conn.close()
        return errors

    with ThreadPoolExecutor(max_workers=32) as pool:
        errors = [e for errs in pool.map(client, range(32)) for e in errs]
    assert not errors, errors[:5]


# ---------------------------------------------------------------- upstream framing variants

UPSTREAM_VARIANTS = {
    "/close-delimited": [{"send": "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody-until-close"},
                         {"close": True}],
    "/http10-close-delimited": [{"send": "HTTP/1.0 200 OK\r\n\r\nbody-until-close"}, {"close": True}],
    # the upstream says close but keeps its socket open: the proxy must not reuse it
    "/conn-close": [{"send": "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 16\r\n\r\n"
                             "body-until-close"}],
    "/http10-length": [{"send": "HTTP/1.0 200 OK\r\nContent-Length: 16\r\n\r\nbody-until-close"}],
    "/early-hints": [{"send": "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"},
                     {"sleep": 0.05},
                     {"send": "HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\nbody-until-close"}],
    "/slow-body": [{"send": "HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n"}]
                  + [a for piece in ("body", "-unt", "il-c", "lose")
                     for a in ({"sleep": 0.05}, {"send": piece})],
    "/slow-chunked": [{"send": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"}]
                     + [a for piece in ("body", "-unt", "il-c", "lose")
                        for a in ({"sleep": 0.05}, {"send": f"4\r\n{piece}\r\n"})]
                     + [{"send": "0\r\n\r\n"}],
}


@pytest.mark.parametrize("path", list(UPSTREAM_VARIANTS))
def test_upstream_response_framings(fastproxy, raw_upstream, path):
    up = raw_upstream({"rules": [{"prefix": p, "actions": a} for p, a in UPSTREAM_VARIANTS.items()]})
    proxy = fastproxy(simple_config(up.addr))
    with RawConn(proxy.port()) as c:
        c.send(f"GET {path} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
        r = c.read_response()
        assert (r.status, r.body) == (200, b"body-until-close"), r
        if c.eof:  # close-delimited to the client: fine, but then it really is closed
            return
        c.send(b"GET /after HTTP/1.1\r\nHost: app\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"raw:/after")
    if path in ("/conn-close", "/http10-length"):
        wait_until(lambda: up.closed_by_peer(0), deadline_s=10,
                   what="proxy closes an upstream connection that is not keep-alive")
        assert up.connection_count() >= 2


def test_config_given_as_a_dict(fastproxy, shared_app):
    """The fixture also takes a dict (written as TOML): same proxy, same behaviour."""
    proxy = fastproxy({
        "proxy": {"admin": "", "drain_timeout": "2s"},
        "listener": [{"name": "dict", "bind": "${listen:dict}",
                      "route": [{"prefix": "/", "cluster": "app"}]}],
        "cluster": {"app": {"endpoints": [shared_app.addr()]}},
    })
    r = http.client.HTTPConnection(LOOPBACK, proxy.port("dict"), timeout=10)
    r.request("GET", "/echo")
    assert r.getresponse().status == 200
    r.close()
