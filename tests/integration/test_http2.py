"""SPEC §12, the client side: HTTP/2 clients through a real fastproxy to an HTTP/1.1
app. Real peers: curl (--http2-prior-knowledge, --http2 over TLS), nghttp, h2load,
httpx with http2=True, and the `h2` library for tests that must see frames.

Topology: client -> fastproxy listener "main" (plain: h2c or HTTP/1.1 on one port;
"https": tls, ALPN) -> the aiohttp test app over HTTP/1.1.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import subprocess
import time
import uuid

import httpx
import pytest

from support.app_upstream import PATTERN, pattern_sha256
from support.configs import simple_config
from support.h2client import H2Conn
from support.mesh import MeshCA, sid, sidecar_config
from support.procs import wait_until

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20
ME = sid("ns/default/sa/front")
PROTOCOL_ERROR, CANCEL, NO_ERROR = 1, 8, 0


@pytest.fixture(scope="module")
def h2(tmp_path_factory, module_fastproxy, module_upstreams):
    d = tmp_path_factory.mktemp("h2")
    ca = MeshCA(d / "ca")
    material = ca.issue(ME, d / "me")
    app = module_upstreams.app()
    routes = [{"headers": {"x-route": "short"}, "cluster": "app", "timeout": "300ms"},
              {"prefix": "/nowhere", "cluster": "closed"},
              {"cluster": "app"}]
    config = sidecar_config(material, ME, [
        {"name": "main", "bind": "${listen:main}", "route": routes,
         "http2_settings": {"max_concurrent_streams": 8}},
        {"name": "https", "bind": "${listen:https}", "tls": "tls", "route": routes},
        {"name": "h1only", "bind": "${listen:h1only}", "tls": "tls", "http2": False,
         "route": routes},
        {"name": "plain1", "bind": "${listen:plain1}", "http2": False, "route": routes},
    ], {"app": {"endpoints": [app.addr()], "protocol": "http1"},   # the app speaks only HTTP/1.1
        "closed": {"endpoints": ["127.0.0.1:1"], "connect_timeout": "1s"}})
    config["proxy"]["access_log"] = "stdout"
    proxy = module_fastproxy(config, name="h2")
    proxy.ca = ca
    proxy.app = app
    return proxy


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True,
                          timeout=40)


def conn(proxy, **kw) -> H2Conn:
    return H2Conn(proxy.port("main"), **kw)


# ---------------------------------------------------------------- real clients

def test_curl_prior_knowledge_and_http1_share_the_port(h2):
    out = curl("--http2-prior-knowledge", "-D", "-", h2.url("/echo?q=1", "main"))
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200"), head
    assert re.search(rb"(?m)^x-request-id: \S+", head)
    echo = json.loads(body)
    assert echo["raw_path"] == "/echo?q=1" and echo["version"] == "1.1"
    headers = dict((k.lower(), v) for k, v in echo["headers"])
    assert headers["host"] == f"127.0.0.1:{h2.port('main')}"
    assert headers["x-forwarded-proto"] == "http"
    out = curl("-D", "-", h2.url("/echo", "main"))   # HTTP/1.1 on the same port
    assert out.stdout.startswith(b"HTTP/1.1 200"), out.stdout[:200]


def test_curl_over_tls_settles_h2_by_alpn(h2):
    out = curl("--http2", "-k", "-D", "-",   # a SPIFFE certificate names no host
               f"https://127.0.0.1:{h2.port('https')}/echo")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"HTTP/2 200"), out.stdout[:200]
    headers = dict((k.lower(), v) for k, v in json.loads(out.stdout.partition(b"\r\n\r\n")[2])["headers"])
    assert headers["x-forwarded-proto"] == "https"


def test_http2_false_offers_only_http1(h2):
    port = h2.port("h1only")
    out = curl("--http2", "-k", "-D", "-", f"https://127.0.0.1:{port}/echo")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"HTTP/1.1 200"), out.stdout[:200]
    # and a preface on a plain http2 = false listener is not taken for HTTP/2
    out = curl("--http2-prior-knowledge", h2.url("/echo", "plain1"))
    assert out.returncode != 0 or b"HTTP/2" not in out.stdout


def test_nghttp_many_streams_on_one_connection(h2):
    urls = [h2.url(f"/echo/{i}", "main") for i in range(8)]   # max_concurrent_streams
    out = subprocess.run(["nghttp", "-ns", *urls], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(b"/echo/") == 8, out.stdout


def test_h2load_all_succeed(h2):
    out = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "8",
                          h2.url("/echo", "main")], capture_output=True, timeout=60)
    text = out.stdout.decode()
    assert "2000 succeeded" in text and "status codes: 2000 2xx" in text, text


def test_httpx_multiplexes_requests_and_bodies(h2):
    async def main():
        async with httpx.AsyncClient(http2=True, http1=False, timeout=30) as c:
            rs = await asyncio.gather(*[c.get(h2.url(f"/echo/{i}", "main")) for i in range(40)])
            assert {r.http_version for r in rs} == {"HTTP/2"}
            assert sorted(r.json()["path"] for r in rs) == sorted(f"/echo/{i}" for i in range(40))
            data = PATTERN * 40
            r = await c.post(h2.url("/echo", "main"), content=data)
            echo = r.json()
            assert (echo["body_len"], echo["body_sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
            assert ["content-length", str(len(data))] in [[k.lower(), v] for k, v in echo["headers"]]

            async def parts():
                for _ in range(10):
                    yield PATTERN
            r = await c.post(h2.url("/echo", "main"), content=parts())
            echo = r.json()
            assert echo["body_len"] == 10 * len(PATTERN)
            assert ["transfer-encoding", "chunked"] in [[k.lower(), v.lower()] for k, v in echo["headers"]]
    asyncio.run(main())


# ---------------------------------------------------------------- translation

def test_large_response_through_the_windows(h2):
    c = conn(h2)
    s = c.get(f"/bytes/{8 * MiB}", timeout=30)
    assert s.status == 200 and len(s.body) == 8 * MiB
    assert hashlib.sha256(s.body).hexdigest() == pattern_sha256(8 * MiB)


def test_chunked_response_becomes_data_frames(h2):
    c = conn(h2)
    s = c.get("/chunked")
    assert s.status == 200 and bytes(s.body) == b"alpha-beta-gamma"
    assert s.header("transfer-encoding") is None


def test_response_header_names_are_lowercase_and_hop_by_hop_gone(h2):
    c = conn(h2)
    s = c.get("/echo")
    names = [k for k, _ in s.headers]
    assert all(k == k.lower() for k in names), names
    assert b"connection" not in names and b"keep-alive" not in names


def test_cookie_crumbs_are_joined_for_http1(h2):
    c = conn(h2)
    s = c.get("/echo", headers=[("cookie", "a=1"), ("x-n", "2"), ("cookie", "b=2")])
    headers = json.loads(s.body)["headers"]
    assert [v for k, v in headers if k.lower() == "cookie"] == ["a=1; b=2"]


def test_request_trailers_reach_an_http1_upstream_in_the_chunked_body(h2):
    c = conn(h2)
    sid_ = c.request("/echo", method="POST", body=b"hello", end=False)
    c.send_trailers(sid_, [("x-checksum", "abc")])
    (s,) = c.wait(sid_)
    assert s.status == 200 and json.loads(s.body)["body_len"] == 5


def test_expect_100_continue_gets_an_interim_response(h2):
    c = conn(h2)
    sid_ = c.request("/echo", method="POST", headers=[("expect", "100-continue"),
                                                      ("content-length", "3")], end=False)
    c.wait_for(lambda: c.streams[sid_].informational)
    assert c.streams[sid_].informational[0][0] == (b":status", b"100")
    c.send(sid_, b"abc", end=True)
    (s,) = c.wait(sid_)
    assert s.status == 200 and json.loads(s.body)["body_len"] == 3


# ---------------------------------------------------------------- the proxy's answers

def test_no_route_answer_is_an_http2_response(h2):
    c = conn(h2)
    s = c.get("/nowhere")
    assert s.status == 503 and s.header("fastproxy-error") == "connect_failed"
    assert bytes(s.body).startswith(b"fastproxy: connect_failed: ")
    assert s.header("x-request-id")


def test_grpc_requests_get_trailers_only_errors(h2):
    c = conn(h2)
    s = c.get("/nowhere/svc.Echo/Say", method="POST",
              headers=[("content-type", "application/grpc"), ("te", "trailers")])
    assert s.status == 200 and not s.body
    assert s.header("grpc-status") == "14"   # 503 -> UNAVAILABLE
    assert s.header("grpc-message").startswith("fastproxy: connect_failed: ")
    assert s.header("fastproxy-error") == "connect_failed"


def test_route_timeout_on_one_stream_leaves_the_others(h2):
    c = conn(h2)
    slow = c.request("/slow?delay=3", headers=[("x-route", "short")])
    fast = [c.request(f"/echo/{i}") for i in range(3)]
    done = c.wait(slow, *fast)
    assert done[0].status == 504 and done[0].header("fastproxy-error") == "upstream_timeout"
    assert [s.status for s in done[1:]] == [200, 200, 200]


# ---------------------------------------------------------------- strictness per stream

MALFORMED = {   # SPEC §12 Strictness: (headers replacing the pseudo-headers or not, extra fields)
    "connection": (None, [("connection", "keep-alive")]),
    "keep-alive": (None, [("keep-alive", "300")]),
    "proxy-connection": (None, [("proxy-connection", "close")]),
    "transfer-encoding": (None, [("transfer-encoding", "chunked")]),
    "upgrade": (None, [("upgrade", "websocket")]),
    "te-not-trailers": (None, [("te", "gzip")]),
    "uppercase-name": (None, [("X-Upper", "1")]),
    "crlf-in-value": (None, [("x-bad", "a\r\nx-smuggled: 1")]),
    "lf-in-value": (None, [("x-bad", "a\nGET /evil HTTP/1.1")]),
    "nul-in-value": (None, [("x-bad", "a\x00b")]),
    "cr-in-name": (None, [("x-b\rad", "1")]),
    "leading-whitespace": (None, [("x-bad", " leading")]),
    "trailing-whitespace": (None, [("x-bad", "trailing\t")]),
    "unknown-pseudo": (None, [(":unknown", "1")]),
    "pseudo-after-regular": ([(":method", "GET"), (":scheme", "http"), ("x-a", "1"),
                              (":path", "/slow"), (":authority", "t")], []),
    "method-missing": ([(":scheme", "http"), (":path", "/slow"), (":authority", "t")], []),
    "scheme-missing": ([(":method", "GET"), (":path", "/slow"), (":authority", "t")], []),
    "path-missing": ([(":method", "GET"), (":scheme", "http"), (":authority", "t")], []),
    "path-empty": ([(":method", "GET"), (":scheme", "http"), (":path", ""), (":authority", "t")], []),
    "path-repeated": ([(":method", "GET"), (":scheme", "http"), (":path", "/slow"),
                       (":path", "/other"), (":authority", "t")], []),
    "authority-host-differ": (None, [("host", "elsewhere")]),
    "content-length-malformed": (None, [("content-length", "1x")]),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_requests_reset_only_their_stream(h2, case):
    pseudo, fields = MALFORMED[case]
    c = conn(h2)
    tag = uuid.uuid4().hex
    if pseudo is None:
        bad = c.request(f"/slow?tag={tag}", headers=fields)
    else:
        bad = c.send_fields([(n, v.replace("/slow", f"/slow?tag={tag}")) for n, v in pseudo])
    good = c.request("/echo")
    b, g = c.wait(bad, good)
    # RST_STREAM(PROTOCOL_ERROR), or the 400 of the checks HTTP/1.1 heads get too
    assert (b.reset == PROTOCOL_ERROR and b.headers is None) or \
        (b.status == 400 and b.header("fastproxy-error") == "bad_request"), b
    assert g.status == 200
    assert not h2.app.seen(tag)


def test_content_length_mismatch_is_a_stream_error(h2):
    c = conn(h2)
    tag = uuid.uuid4().hex
    bad = c.request(f"/stream-upload?tag={tag}", method="POST",
                    headers=[("content-length", "10")], body=b"abc", end=True)
    (b,) = c.wait(bad)
    assert b.reset == PROTOCOL_ERROR


def test_streams_beyond_max_concurrent_streams_are_refused(h2):
    c = conn(h2)
    tags = [uuid.uuid4().hex for _ in range(9)]
    sids = [c.request(f"/slow?hold={t}") for t in tags]
    c.wait_for(lambda: c.streams[sids[-1]].reset is not None)
    assert c.streams[sids[-1]].reset == 7      # REFUSED_STREAM
    for t in tags[:8]:
        h2.app.release(t)
    assert [s.status for s in c.wait(*sids[:8])] == [200] * 8


# ---------------------------------------------------------------- flow control

def test_a_client_that_does_not_read_slows_the_upstream(h2):
    c = conn(h2, auto_ack=False)
    tag = uuid.uuid4().hex
    size = 64 * MiB
    sid_ = c.request(f"/bytes/{size}?tag={tag}")
    c.wait_for(lambda: len(c.streams[sid_].body) >= 65535)
    time.sleep(1.0)
    sent = h2.app.progress(tag)["sent"]
    # the client's 64 KiB window, the proxy's bounded per-stream wait and the socket
    # buffers hold what the app could send; nothing near the whole body
    assert sent < 16 * MiB, sent
    c.auto_ack = True
    c.h2.acknowledge_received_data(len(c.streams[sid_].body), sid_)
    c.flush()
    (s,) = c.wait(sid_, timeout=40)
    assert len(s.body) == size


def test_a_slow_upstream_reader_holds_back_the_client(h2):
    c = conn(h2)
    tag = uuid.uuid4().hex
    sid_ = c.request(f"/stream-upload?hold={tag}", method="POST",
                     headers=[("content-length", str(32 * MiB))], end=False)
    chunk = PATTERN * 16
    sent = 0
    deadline = time.monotonic() + 5
    # the app does not read: the client runs out of window long before 32 MiB
    while sent < 32 * MiB and time.monotonic() < deadline:
        n = min(len(chunk), c.h2.local_flow_control_window(sid_), c.h2.max_outbound_frame_size)
        if n <= 0:
            c.read_some(time.monotonic() + 0.2)
            continue
        c.h2.send_data(sid_, chunk[:n])
        c.flush()
        sent += n
    assert sent < 16 * MiB, sent
    h2.app.release(tag)
    rest = 32 * MiB - sent
    c.send(sid_, (chunk * (rest // len(chunk) + 1))[:rest], end=True)
    (s,) = c.wait(sid_, timeout=40)
    assert s.status == 200 and json.loads(s.body)["body_len"] == 32 * MiB


# ---------------------------------------------------------------- resets, drain

def test_client_reset_abandons_the_upstream_request(h2):
    c = conn(h2)
    tag = uuid.uuid4().hex
    sid_ = c.request(f"/drip?n=50&delay=0.05&tag={tag}")
    c.wait_for(lambda: c.streams[sid_].headers is not None)
    c.reset(sid_, CANCEL)
    s = c.get("/echo")
    assert s.status == 200


def test_access_log_and_metrics_count_http2_requests(h2):
    c = conn(h2)
    s = c.get("/echo/logged-h2")
    assert s.status == 200
    deadline = time.monotonic() + 5
    while "/echo/logged-h2" not in h2.stdout() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(json.loads(x) for x in h2.stdout().splitlines() if "/echo/logged-h2" in x)
    assert line["status"] == 200 and line["listener"] == "main"


def test_drain_sends_goaway_and_lets_streams_in_flight_finish(fastproxy, shared_app):
    """nghttp as the client (the h2 library treats any GOAWAY as the end): the stream in
    flight at SIGTERM completes, after GOAWAY 2^31-1 and then the final GOAWAY."""
    proxy = fastproxy(simple_config(shared_app.addr(), cluster='protocol = "http1"',
                                    drain_timeout="5s"))
    tag = uuid.uuid4().hex
    client = subprocess.Popen(["nghttp", "-v", proxy.url(f"/slow?delay=1.5&tag={tag}")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_until(lambda: shared_app.seen(tag), deadline_s=5, what="the request at the app")
    proxy.signal(signal.SIGTERM)
    out = client.communicate(timeout=15)[0].decode()
    assert client.returncode == 0, out
    goaways = re.findall(r"recv GOAWAY frame.*\n.*last_stream_id=(\d+), error_code=(\w+)", out)
    assert [g[0] for g in goaways[:2]] == ["2147483647", "13"], out
    assert all(code.startswith("NO_ERROR") for _, code in goaways), out
    assert "recv (stream_id=13) :status: 200" in out and "slow done" in out
    assert "slow done" not in out.split("GOAWAY")[0]   # it was still in flight at the GOAWAY
    assert proxy.wait(10) == 0


def test_trailers_with_a_pseudo_header_reset_the_stream(h2):
    c = conn(h2)
    tag = uuid.uuid4().hex
    bad = c.request(f"/stream-upload?hold={tag}", method="POST", body=b"abc", end=False)
    c.send_trailers(bad, [(":path", "/evil")])
    (b,) = c.wait(bad)
    assert b.reset == PROTOCOL_ERROR
    h2.app.release(tag)


def test_an_auto_cluster_falls_back_to_http1_for_a_server_that_answers_http1(fastproxy, shared_app):
    """h2c client, plain auto cluster, an HTTP/1.1-only app: the first connection's
    preface is answered with HTTP/1.1, its requests go again over HTTP/1.1, and the
    endpoint is spoken to in HTTP/1.1 from then on."""
    proxy = fastproxy(simple_config(shared_app.addr()))     # protocol "auto" (the default)
    c = H2Conn(proxy.port())
    first = c.wait(*[c.request(f"/echo/{i}") for i in range(4)])
    assert [s.status for s in first] == [200] * 4
    assert [json.loads(s.body)["version"] for s in first] == ["1.1"] * 4
    assert c.get("/echo/later").status == 200
    assert proxy.stderr().count("answered HTTP/1.1 to HTTP/2") == 1


def test_trailers_of_a_chunked_http1_response_reach_an_http2_client(fastproxy, raw_upstream):
    up = raw_upstream({"default": [{"send": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                                            "Trailer: X-Checksum\r\n\r\n5\r\nhello\r\n0\r\n"
                                            "X-Checksum: abc\r\nConnection: drop-me\r\n\r\n"}]})
    proxy = fastproxy(simple_config(up.addr, cluster='protocol = "http1"'))
    c = H2Conn(proxy.port())
    s = c.get("/t")
    assert s.status == 200 and bytes(s.body) == b"hello"
    assert s.trailers == [(b"x-checksum", b"abc")]     # connection-specific ones are dropped


def test_upgrade_h2c_is_served_as_http1(h2):
    """curl --http2 on http:// asks to upgrade (Upgrade: h2c, HTTP2-Settings): the proxy
    serves the request as HTTP/1.1 and passes neither field on."""
    out = curl("--http2", "-D", "-", h2.url("/echo", "main"))
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    sent = [k.lower() for k, _ in json.loads(body)["headers"]]
    assert "upgrade" not in sent and "http2-settings" not in sent, sent
