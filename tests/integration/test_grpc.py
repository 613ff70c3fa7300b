"""SPEC §12 gRPC and HTTP/2 upstreams, end to end with real grpcio clients and servers
(stubs generated from tests/support/echo.proto): the four call kinds, trailers,
statuses, deadlines and the proxy's own errors as gRPC statuses, through one sidecar and
through a sidecar pair whose mTLS hop settles on HTTP/2 by ALPN.

Topology (module-wide):
    grpc client -> "edge" (plain, h2c) ------------------------------> grpc app (h2c)
    grpc client -> frontend "outbound" -> mtls cluster (ALPN h2) -> backend "inbound"
                   (mtls) -> auto cluster -> grpc app, or the aiohttp app for HTTP/1.1
"""
from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest

from support.h2client import H2Conn
from support.mesh import MeshCA, admin_get, sid, sidecar_config
from support.procs import wait_until

pytestmark = pytest.mark.timeout(90)

FRONTEND = sid("ns/default/sa/frontend")
BACKEND = sid("ns/default/sa/backend")
SVC = "/fastproxy.test.Echo/"


class Mesh:
    pass


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, module_fastproxy, module_upstreams):
    d = tmp_path_factory.mktemp("grpc")
    m = Mesh()
    m.grpc = module_upstreams.grpc()
    m.app = module_upstreams.app()
    m.pb, m.rpc = m.grpc.pb, m.grpc.rpc
    ca = MeshCA(d / "ca")
    frontend, backend = ca.issue(FRONTEND, d / "frontend"), ca.issue(BACKEND, d / "backend")

    edge = sidecar_config(frontend, FRONTEND, [
        {"name": "edge", "bind": "${listen:edge}", "route": [
            {"headers": {"x-route": "slow"}, "cluster": "grpc", "timeout": "500ms"},
            {"headers": {"x-route": "retry"}, "cluster": "grpc", "retries": 1,
             "retry_on": ["unavailable"]},
            {"headers": {"x-route": "fragile"}, "cluster": "fragile"},
            {"prefix": "/nowhere.", "cluster": "closed"},
            {"prefix": SVC, "cluster": "grpc"},
            {"prefix": "/plain/", "cluster": "plain_h2"},
            {"prefix": "/slow", "cluster": "h1app"}]},
    ], {"grpc": {"endpoints": [m.grpc.addr()], "protocol": "http2"},
        "plain_h2": {"endpoints": [m.grpc.addr()], "protocol": "http2"},
        "h1app": {"endpoints": [m.app.addr()], "protocol": "http1"},
        "fragile": {"endpoints": [m.grpc.addr()], "protocol": "http2",
                    "circuit_breaker": {"max_failures": 1, "window": "10s", "open_for": "60s"}},
        "closed": {"endpoints": ["127.0.0.1:1"], "protocol": "http2"}})
    edge["proxy"]["access_log"] = "stdout"
    edge["proxy"]["admin"] = "${listen:admin}"
    m.edge = module_fastproxy(edge, name="edge")

    m.backend = module_fastproxy(sidecar_config(backend, BACKEND, [
        {"name": "inbound", "bind": "${listen:inbound}", "tls": "mtls", "allow": [FRONTEND],
         "route": [{"prefix": SVC, "cluster": "grpc"}, {"cluster": "app"}]},
    ], {"grpc": {"endpoints": [m.grpc.addr()]}, "app": {"endpoints": [m.app.addr()]}}),
        name="backend")
    front = sidecar_config(frontend, FRONTEND, [
        {"name": "outbound", "bind": "${listen:outbound}", "route": [{"cluster": "backend"}]},
    ], {"backend": {"endpoints": [f"127.0.0.1:{m.backend.port('inbound')}"], "tls": "mtls",
                    "peer": BACKEND}})
    front["proxy"]["admin"] = "${listen:admin}"
    m.frontend = module_fastproxy(front, name="frontend")
    yield m


@pytest.fixture(params=["one sidecar", "sidecar pair"])
def stub(request, mesh):
    port = mesh.edge.port("edge") if request.param == "one sidecar" else mesh.frontend.port("outbound")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield mesh.rpc.EchoStub(channel)
    channel.close()


def test_unary_with_trailing_metadata(stub, mesh):
    reply, call = stub.Say.with_call(mesh.pb.Msg(text="hi", blob=b"x" * 100_000), timeout=10)
    assert (reply.text, reply.count) == ("hi", 100_000)
    assert ("x-served-by", "grpc-app") in call.trailing_metadata()


def test_client_streaming(stub, mesh):
    msgs = (mesh.pb.Msg(text=str(i), blob=b"y" * 50_000) for i in range(40))
    reply = stub.Collect(msgs, timeout=20)
    assert reply.text == ",".join(str(i) for i in range(40)) and reply.count == 40 * 50_000


def test_server_streaming(stub, mesh):
    replies = list(stub.Spread(mesh.pb.Msg(count=300, blob=b"z" * 20_000), timeout=20))
    assert [r.text for r in replies] == [str(i) for i in range(300)]
    assert all(len(r.blob) == 20_000 for r in replies)


def test_bidirectional_streaming(stub, mesh):
    replies = list(stub.Chat((mesh.pb.Msg(text=f"m{i}", blob=b"q" * i) for i in range(100)),
                             timeout=20))
    assert [(r.text, r.count) for r in replies] == [(f"m{i}", i) for i in range(100)]


def test_application_statuses_pass_through(stub, mesh):
    with pytest.raises(grpc.RpcError) as e:
        stub.Say(mesh.pb.Msg(text="fail:5"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and e.value.details() == "asked to fail"


def test_many_concurrent_calls(stub, mesh):
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: stub.Say(mesh.pb.Msg(text=str(i)), timeout=20).text,
                                range(200)))
    assert replies == [str(i) for i in range(200)]


def test_client_deadline(stub, mesh):
    with pytest.raises(grpc.RpcError) as e:
        stub.Say(mesh.pb.Msg(text="sleep:3"), timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# ---------------------------------------------------------------- the proxy's own answers

def edge_stub(mesh):
    return mesh.rpc.EchoStub(grpc.insecure_channel(f"127.0.0.1:{mesh.edge.port('edge')}"))


def call_path(mesh, path: str, metadata=(), timeout: float = 10):
    channel = grpc.insecure_channel(f"127.0.0.1:{mesh.edge.port('edge')}")
    method = channel.unary_unary(path, request_serializer=mesh.pb.Msg.SerializeToString,
                                 response_deserializer=mesh.pb.Msg.FromString)
    try:
        return method(mesh.pb.Msg(text="sleep:3"), metadata=metadata, timeout=timeout)
    finally:
        channel.close()


@pytest.mark.parametrize("path, metadata, code, reason", [
    ("/nowhere.Svc/Call", (), grpc.StatusCode.UNAVAILABLE, "connect_failed"),
    ("/unrouted.Svc/Call", (), grpc.StatusCode.UNIMPLEMENTED, "no_route"),
    (SVC + "Say", (("x-route", "slow"),), grpc.StatusCode.DEADLINE_EXCEEDED, "upstream_timeout"),
])
def test_proxy_errors_are_grpc_statuses(mesh, path, metadata, code, reason):
    with pytest.raises(grpc.RpcError) as e:
        call_path(mesh, path, metadata)
    assert e.value.code() == code
    assert e.value.details().startswith(f"fastproxy: {reason}: ")
    assert ("fastproxy-error", reason) in e.value.trailing_metadata() + e.value.initial_metadata()


def test_grpc_timeout_caps_the_route_timeout(mesh):
    """The proxy's own deadline, before the route's (30 s): a server that ignores
    grpc-timeout (here the HTTP/1.1 test app) is cut when it passes, and the client gets
    DEADLINE_EXCEEDED as a trailers-only response of the proxy."""
    c = H2Conn(mesh.edge.port("edge"))
    started = time.monotonic()
    s = c.wait(c.request("/slow?delay=3", method="POST", body=b"\x00\x00\x00\x00\x00", headers=[
        ("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "300m")]))[0]
    assert time.monotonic() - started < 2.5
    assert (s.status, s.header("grpc-status"), s.header("fastproxy-error")) == (200, "4", "upstream_timeout")


def test_unavailable_is_retried_when_the_route_asks(mesh):
    with pytest.raises(grpc.RpcError) as e:
        edge_stub(mesh).Say(mesh.pb.Msg(text="fail:14"), metadata=(("x-route", "retry"),), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    wait_until(lambda: "upstream answered grpc-status 14" in mesh.edge.stderr(), deadline_s=5,
               what="the retry in the log")


def test_failing_grpc_statuses_open_the_circuit(mesh):
    stub = edge_stub(mesh)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as e:
            stub.Say(mesh.pb.Msg(text="fail:13"), metadata=(("x-route", "fragile"),), timeout=10)
        assert e.value.code() == grpc.StatusCode.INTERNAL and e.value.details() == "asked to fail"
    with pytest.raises(grpc.RpcError) as e:
        stub.Say(mesh.pb.Msg(text="ok"), metadata=(("x-route", "fragile"),), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert e.value.details().startswith("fastproxy: circuit_open: ")


def test_grpc_requests_are_counted_by_status(mesh):
    stub = edge_stub(mesh)
    stub.Say(mesh.pb.Msg(text="counted"), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.Say(mesh.pb.Msg(text="fail:5"), timeout=10)
    host, _, port = mesh.edge.config["proxy"]["admin"].rpartition(":")
    text = httpx.get(f"http://{host}:{port}/metrics", timeout=5).text
    assert re.search(r'fastproxy_grpc_requests_total\{listener="edge",cluster="grpc",'
                     r'grpc_status="0"\} [1-9]', text), text
    assert re.search(r'fastproxy_grpc_requests_total\{listener="edge",cluster="grpc",'
                     r'grpc_status="5"\} [1-9]', text)


# ---------------------------------------------------------------- HTTP/2 between sidecars

def test_http1_app_traffic_crosses_the_sidecars_as_http2_and_leaves_as_http1(mesh):
    url = f"http://127.0.0.1:{mesh.frontend.port('outbound')}/echo"
    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda i: httpx.get(url + f"/{i}", timeout=10).json(), range(40)))
    assert all(b["version"] == "1.1" for b in bodies)
    headers = [dict((k.lower(), v) for k, v in b["headers"]) for b in bodies]
    assert all("fastproxy-orig-proto" not in h for h in headers)
    assert all(h["x-forwarded-client-cert"].endswith(FRONTEND) for h in headers)
    _, clusters = admin_get(mesh.frontend, "/clusters")
    (endpoint,) = clusters["clusters"][0]["endpoints"]
    assert endpoint["http2_connections"] == 1 and endpoint["idle"] == 0
    host, _, port = mesh.frontend.config["proxy"]["admin"].rpartition(":")
    metrics = httpx.get(f"http://{host}:{port}/metrics", timeout=5).text
    assert 'fastproxy_upstream_connections{cluster="backend",state="http2"} 1' in metrics


@pytest.mark.parametrize("framing", [[], ["-H", "Transfer-Encoding: chunked"]],
                         ids=["content-length", "chunked"])
def test_curl_http1_bodies_through_the_pair(mesh, framing):
    out = subprocess.run(["curl", "-sS", "--max-time", "10", *framing, "-d", "x" * 70000,
                          f"http://127.0.0.1:{mesh.frontend.port('outbound')}/echo"],
                         capture_output=True, timeout=20)
    echo = json.loads(out.stdout)
    assert echo["body_len"] == 70000
    sent = dict((k.lower(), v.lower()) for k, v in echo["headers"])
    assert sent.get("transfer-encoding") == ("chunked" if framing else None)


def test_access_log_records_the_protocol(mesh):
    rid = uuid.uuid4().hex
    edge_stub(mesh).Say(mesh.pb.Msg(text="logged"), metadata=(("x-request-id", rid),), timeout=10)
    wait_until(lambda: rid in mesh.edge.stdout(), deadline_s=5, what="the access log line")
    (line,) = [json.loads(x) for x in mesh.edge.stdout().splitlines() if rid in x]
    assert line["status"] == 200 and line["path"] == SVC + "Say" and line["cluster"] == "grpc"
    assert (line["protocol"], line["grpc_status"]) == ("HTTP/2", 0)
