"""SPEC §13, `tls = "permissive"`: one inbound port that takes mTLS peers and plain callers,
told apart by the first bytes — for moving a namespace into the mesh one service at a
time. Real sidecars with certificates from our CA; plain callers are curl and http.client.

    frontend sidecar (mtls cluster) --mTLS--> backend sidecar "inbound" (permissive) -> app
    plain client ------------------plain----> the same port
"""
from __future__ import annotations

import json
import socket
import subprocess

import httpx
import pytest

from support.mesh import MeshCA, sid, sidecar_config
from support.observe import scrape
from support.procs import wait_until

pytestmark = pytest.mark.timeout(60)

FRONTEND = sid("ns/default/sa/frontend")
BACKEND = sid("ns/default/sa/backend")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, module_fastproxy, module_upstreams):
    d = tmp_path_factory.mktemp("permissive")
    ca = MeshCA(d / "ca")
    frontend, backend = ca.issue(FRONTEND, d / "frontend"), ca.issue(BACKEND, d / "backend")
    app = module_upstreams.app()
    backend_proxy = module_fastproxy(sidecar_config(backend, BACKEND, [
        {"name": "inbound", "bind": "${listen:inbound}", "tls": "permissive", "route": [
            {"prefix": "/secret", "allow": [FRONTEND], "cluster": "app"},
            {"cluster": "app"}]},
        {"name": "strict", "bind": "${listen:strict}", "tls": "permissive", "allow": [FRONTEND],
         "route": [{"cluster": "app"}]},
    ], {"app": {"endpoints": [app.addr()]}}) | {
        "proxy": {"admin": "${listen:admin}", "access_log": "stdout", "drain_timeout": "2s"},
        "limits": {"header_timeout": "1s"}}, name="backend")
    inbound = f"127.0.0.1:{backend_proxy.port('inbound')}"
    frontend_proxy = module_fastproxy(sidecar_config(frontend, FRONTEND, [
        {"name": "outbound", "bind": "${listen:outbound}", "route": [
            {"host": "backend", "cluster": "backend"},
            {"host": "strict", "cluster": "strict"}]},
    ], {"backend": {"endpoints": [inbound], "tls": "mtls", "peer": BACKEND},
        "strict": {"endpoints": [f"127.0.0.1:{backend_proxy.port('strict')}"], "tls": "mtls",
                   "peer": BACKEND}}), name="frontend")
    return backend_proxy, frontend_proxy


def echo(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return dict((k.lower(), v) for k, v in response.json()["headers"])


def plain_connections(proxy) -> int:
    return int(scrape(proxy).value("fastproxy_plain_connections_total", 0, listener="inbound"))


def test_an_mtls_peer_and_a_plain_caller_share_the_port(mesh):
    backend, frontend = mesh
    via_mesh = echo(httpx.get(frontend.url("/echo", "outbound"), headers={"host": "backend"}, timeout=10))
    assert FRONTEND in via_mesh["x-forwarded-client-cert"] and via_mesh["x-forwarded-proto"] == "https"
    plain = echo(httpx.get(backend.url("/echo", "inbound"), timeout=10))
    assert "x-forwarded-client-cert" not in plain and plain["x-forwarded-proto"] == "http"
    curl = subprocess.run(["curl", "-s", "--http2-prior-knowledge", backend.url("/echo", "inbound")],
                          capture_output=True, text=True, timeout=10)
    assert json.loads(curl.stdout)["method"] == "GET"          # plain HTTP/2 too


def test_plain_callers_are_counted_and_logged_without_a_peer(mesh):
    backend, _ = mesh
    count = plain_connections(backend)
    httpx.get(backend.url("/echo?plain-marker", "inbound"), timeout=10)
    assert plain_connections(backend) == count + 1
    wait_until(lambda: "plain-marker" in backend.stdout(), deadline_s=10, what="the access log entry")
    entry = next(json.loads(line) for line in backend.stdout().splitlines() if "plain-marker" in line)
    assert entry["peer"] is None


def test_allow_rules_that_name_ids_refuse_plain_callers(mesh):
    backend, frontend = mesh
    assert httpx.get(backend.url("/secret", "inbound"), timeout=10).status_code == 403
    assert httpx.get(backend.url("/echo", "strict"), timeout=10).status_code == 403
    # the allowed peer passes both over mTLS
    assert httpx.get(frontend.url("/secret", "outbound"), headers={"host": "backend"},
                     timeout=10).status_code == 200
    assert httpx.get(frontend.url("/echo", "outbound"), headers={"host": "strict"},
                     timeout=10).status_code == 200


def test_a_caller_that_sends_nothing_is_closed_at_header_timeout(mesh):
    backend, _ = mesh
    with socket.create_connection(("127.0.0.1", backend.port("inbound")), timeout=30) as s:
        assert s.recv(1) == b""                                   # closed, no byte sent
