"""SPEC §13, transparent listeners, in two network namespaces this test creates: a "pod"
(10.77.0.2) with an application, a fastproxy sidecar and `fastproxy iptables` applied,
and a "remote" host (10.77.0.1) with an HTTP server, a TCP echo and a server-first
banner (fastproxy.intercept.mesh_apps). The application (uid 1000: curl and the system
Python) knows only the remote addresses; the sidecar (root, the --proxy-uid) is never
named by it. What crosses: HTTP to a routed destination goes through the sidecar (it adds
x-request-id), HTTP to an unrouted one, a TCP echo and a banner pass through untouched,
a connection straight to the sidecar's own port is refused as a loop, and a call into
the pod reaches the application on its own port through the inbound listener.
Needs root, `ip netns` and iptables; says so when it skips.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from fastproxy.intercept import netns
from support.namespaces import NEEDS_CURL, NEEDS_NAMESPACES
from support.procs import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
IP = netns.IP
APP_UID = "1000"

pytestmark = [pytest.mark.timeout(90), *NEEDS_NAMESPACES, NEEDS_CURL]


def sh(*cmd: str, ns: str | None = None) -> subprocess.CompletedProcess:
    return netns.run(*cmd, ns=ns, cwd=REPO_ROOT)


def as_app(ns: str, *cmd: str) -> subprocess.CompletedProcess:
    """A command of the application: uid 1000, so the sidecar's rules capture it."""
    return netns.run(*cmd, ns=ns, uid=APP_UID, cwd=REPO_ROOT)


def start(ns: str, log: Path, *cmd: str, ports: list[int], procs: list) -> None:
    proc = netns.start(ns, log, *cmd, cwd=REPO_ROOT)
    procs.append(proc)
    netns.wait_listening(ns, ports, proc, log)


SIDECAR = """
[proxy]
admin = "127.0.0.1:15000"
access_log = "stdout"
drain_timeout = "1s"

[[listener]]
name = "outbound"
bind = "127.0.0.1:15001"
transparent = true
  [[listener.route]]
  destination = "10.77.0.1:9080"
  cluster = "original_destination"

[[listener]]
name = "inbound"
bind = "0.0.0.0:15006"
direction = "inbound"
transparent = true
  [[listener.route]]
  cluster = "original_destination"
"""


@pytest.fixture(scope="module")
def pod():
    tag = uuid.uuid4().hex[:6]
    pod, remote = f"fp-pod-{tag}", f"fp-remote-{tag}"
    work = Path(tempfile.mkdtemp(prefix="fp-transparent-"))
    procs: list[subprocess.Popen] = []
    sh(IP, "netns", "add", pod)
    sh(IP, "netns", "add", remote)
    try:
        sh(IP, "link", "add", f"p{tag}", "type", "veth", "peer", "name", f"r{tag}")
        sh(IP, "link", "set", f"p{tag}", "netns", pod)
        sh(IP, "link", "set", f"r{tag}", "netns", remote)
        for ns, dev, addr in ((pod, f"p{tag}", "10.77.0.2/24"), (remote, f"r{tag}", "10.77.0.1/24")):
            sh(IP, "link", "set", "lo", "up", ns=ns)
            sh(IP, "addr", "add", addr, "dev", dev, ns=ns)
            sh(IP, "link", "set", dev, "up", ns=ns)
        start(remote, work / "remote.log", sys.executable, "-m", "fastproxy.intercept.mesh_apps",
              "--http", "10.77.0.1:9080", "--http", "10.77.0.1:9081", "--echo", "10.77.0.1:7000",
              "--banner", "10.77.0.1:2525", ports=[9080, 9081, 7000, 2525], procs=procs)
        start(pod, work / "app.log", sys.executable, "-m", "fastproxy.intercept.mesh_apps",
              "--http", "127.0.0.1:8080", ports=[8080], procs=procs)
        (work / "sidecar.toml").write_text(SIDECAR)
        start(pod, work / "sidecar.log", sys.executable, "-m", "fastproxy", "run", "-c",
              str(work / "sidecar.toml"), ports=[15001, 15006], procs=procs)
        done = sh(sys.executable, "-m", "fastproxy", "iptables", "--proxy-uid", "0", ns=pod)
        assert "traffic capture in place" in done.stdout
        yield pod, remote, work
    finally:
        netns.stop(procs)
        netns.run(IP, "netns", "delete", pod, check=False)
        netns.run(IP, "netns", "delete", remote, check=False)
        shutil.rmtree(work, ignore_errors=True)


def curl_json(ns: str, url: str) -> dict:
    done = as_app(ns, "curl", "-s", "-m", "10", url)
    return json.loads(done.stdout)


def headers(reply: dict) -> dict:
    return {n.lower(): v for n, v in reply["headers"]}


def test_http_to_a_routed_destination_goes_through_the_sidecar(pod):
    ns, _, work = pod
    reply = curl_json(ns, "http://10.77.0.1:9080/reviews/1")
    assert reply["line"] == "GET /reviews/1 HTTP/1.1"
    assert "x-request-id" in headers(reply) and headers(reply)["host"] == "10.77.0.1:9080"
    log = work / "sidecar.log"
    wait_until(lambda: "/reviews/1" in log.read_text(), deadline_s=10, what="the access log entry")
    entry = next(json.loads(line) for line in log.read_text().splitlines()
                 if "/reviews/1" in line and line.startswith("{"))
    assert entry["original_destination"] == "10.77.0.1:9080" and entry["status"] == 200


def test_http_no_route_takes_passes_through_untouched(pod):
    ns, _, _ = pod
    reply = curl_json(ns, "http://10.77.0.1:9081/other")
    assert "x-request-id" not in headers(reply) and "x-forwarded-for" not in headers(reply)


def test_non_http_and_server_first_protocols_pass_through(pod):
    ns, _, _ = pod
    probe = r"""
import socket
c = socket.create_connection(("10.77.0.1", 7000), timeout=5)
c.sendall(b"\x00\x01binary ping\n"); print(c.recv(100))
b = socket.create_connection(("10.77.0.1", 2525), timeout=5)
print(b.recv(100)); b.sendall(b"HELO pod\r\n"); print(b.recv(100))
"""
    out = as_app(ns, "/usr/bin/python3", "-c", probe).stdout.splitlines()
    assert out == [repr(b"\x00\x01binary ping\n"), repr(b"220 banner.test ESMTP ready\r\n"),
                   repr(b"250 HELO pod\r\n")]


def test_a_connection_to_the_sidecars_own_listener_is_refused_as_a_loop(pod):
    ns, _, work = pod
    probe = r"""
import socket
c = socket.create_connection(("127.0.0.1", 15001), timeout=5)
try:
    c.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"); print(repr(c.recv(100)))
except ConnectionResetError:
    print("reset")
"""
    out = as_app(ns, "/usr/bin/python3", "-c", probe).stdout.strip()
    assert out in ("b''", "reset")
    assert "(a loop)" in (work / "sidecar.log").read_text()


def test_a_call_into_the_pod_reaches_the_application_through_the_inbound_listener(pod):
    ns, remote, work = pod
    reply = json.loads(sh("curl", "-s", "-m", "10", "http://10.77.0.2:8080/inside", ns=remote).stdout)
    assert reply["line"] == "GET /inside HTTP/1.1"
    assert headers(reply)["x-forwarded-for"] == "10.77.0.1" and "x-request-id" in headers(reply)
