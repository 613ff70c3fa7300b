"""A mesh of three pods in network namespaces on this machine: what `make mesh-demo`
shows a person and tests/integration/test_netns_mesh.py asserts. Needs root, iproute2
and iptables; everything it creates (namespaces, their links and rules) goes when it
ends, and no traffic leaves them.

    node        a namespace with the bridge (10.88.0.1/24) and kube-proxy's part: the
                service address 10.96.0.30 DNAT-ed to the pod that serves echo and banner
    web         10.88.0.11  an application that calls http://10.96.0.20:9080/ (reviews)
    reviews-v1  10.88.0.12  HTTP on :9080; inbound mTLS, only web allowed
    reviews-v2  10.88.0.13  HTTP on :9080, TCP echo on :7000, a banner on :2525; inbound
                permissive (plain callers welcome); its application calls
                http://10.96.0.21:9080/ (reviews-v1 alone)

Each pod runs its application (fastproxy.intercept.mesh_apps; the callers are curl and
the system Python as uid 1000) and a fastproxy sidecar (root: the --proxy-uid) with
`fastproxy iptables` applied and certificates from our CA. The applications never name
a sidecar. web's sidecar routes the reviews service 90/10 to v1/v2 over mTLS, with a
circuit breaker on /flaky; what it has no route for passes through as TCP.

    python -m fastproxy.intercept.mesh      (make mesh-demo)
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fastproxy.identity.ca import init_ca, issue_files
from fastproxy.intercept import netns
from fastproxy.intercept.netns import IP
APP_UID = "1000"
TRUST_DOMAIN = "mesh.local"
REVIEWS, REVIEWS_V1_ONLY, SHARED = "10.96.0.20", "10.96.0.21", "10.96.0.30"


def spiffe(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{name}"


@dataclass
class Pod:
    name: str
    ip: str
    inbound: str                 # tls of the inbound listener: "mtls" or "permissive"
    allow: list[str] = field(default_factory=lambda: ["*"])
    apps: list[str] = field(default_factory=list)    # mesh_apps flags
    ns: str = ""


SIDECAR = """\
[proxy]
admin = "127.0.0.1:15000"
access_log = "stdout"
drain_timeout = "1s"

[identity]
id = "{id}"
cert = "{certs}/cert.pem"
key = "{certs}/key.pem"
trust = "{certs}/trust.pem"

[[listener]]
name = "outbound"
bind = "127.0.0.1:15001"
transparent = true
  [[listener.route]]
  name = "flaky"
  destination = "{reviews}:9080"
  prefix = "/flaky"
  cluster = "reviews-flaky"
  [[listener.route]]
  name = "reviews"
  destination = "{reviews}:9080"
  split = [{{ cluster = "reviews-v1", weight = 90 }}, {{ cluster = "reviews-v2", weight = 10 }}]
  [[listener.route]]
  name = "reviews-v1"
  destination = "{v1_only}:9080"
  cluster = "reviews-v1"

[[listener]]
name = "inbound"
bind = "0.0.0.0:15006"
direction = "inbound"
transparent = true
tls = "{inbound}"
allow = {allow}
  [[listener.route]]
  cluster = "original_destination"

[cluster.reviews-v1]
endpoints = ["10.88.0.12:9080"]
tls = "mtls"
peer = "{v1_id}"

[cluster.reviews-v2]
endpoints = ["10.88.0.13:9080"]
tls = "mtls"
peer = "{v2_id}"

[cluster.reviews-flaky]
endpoints = ["10.88.0.12:9080"]
tls = "mtls"
peer = "{v1_id}"
  [cluster.reviews-flaky.circuit_breaker]
  max_failures = 3
  window = "10s"
  open_for = "60s"
"""

# what a packet capture looks for on the bridge: a request line in clear text
CLEAR_TEXT = (b"GET /", b"HTTP/1.1\r\n")




class Mesh:
    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.node = f"fpnode-{self.tag}"
        self.bridge = "fpbr0"
        self.work = Path(tempfile.mkdtemp(prefix="fastproxy-mesh-"))
        self.pods = {p.name: p for p in (
            Pod("web", "10.88.0.11", "mtls"),
            Pod("reviews-v1", "10.88.0.12", "mtls", allow=[spiffe("web")],
                apps=["--http", "0.0.0.0:9080", "--name", "reviews-v1"]),
            Pod("reviews-v2", "10.88.0.13", "permissive",
                apps=["--http", "0.0.0.0:9080", "--echo", "0.0.0.0:7000", "--banner", "0.0.0.0:2525",
                      "--name", "reviews-v2"]),
        )}
        self.procs: list[subprocess.Popen] = []

    # -- running things in the namespaces --------------------------------------------------
    def sh(self, *cmd: str, ns: str | None = None, check: bool = True, input: str | None = None):
        return netns.run(*cmd, ns=ns, check=check, input=input)

    def app(self, pod: str, *cmd: str, check: bool = True):
        """A command of a pod's application: uid 1000, so its sidecar's rules capture it."""
        return netns.run(*cmd, ns=self.pods[pod].ns, uid=APP_UID, check=check)

    def start(self, ns: str, name: str, *cmd: str, ports: list[int]) -> None:
        proc = netns.start(ns, self.work / f"{name}.log", *cmd)
        self.procs.append(proc)
        netns.wait_listening(ns, ports, proc, self.work / f"{name}.log")

    # -- up and down -------------------------------------------------------------------------
    def up(self) -> "Mesh":
        for tool in ("iptables-restore", "setpriv", "curl"):
            if shutil.which(tool) is None:
                raise netns.NetnsError(f"{tool} is not installed")
        self.sh(IP, "netns", "add", self.node)
        self.sh(IP, "link", "add", self.bridge, "type", "bridge", ns=self.node)
        self.sh(IP, "addr", "add", "10.88.0.1/24", "dev", self.bridge, ns=self.node)
        for dev in ("lo", self.bridge):
            self.sh(IP, "link", "set", dev, "up", ns=self.node)
        # kube-proxy's part: the shared service address, and bridged traffic through iptables
        self.sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1", ns=self.node)
        self.sh("iptables-restore", "--noflush", ns=self.node, input=(
            "*nat\n"
            f"-A PREROUTING -d {SHARED}/32 -p tcp -j DNAT --to-destination 10.88.0.13\n"
            "COMMIT\n"))
        ca = init_ca(self.work / "ca", TRUST_DOMAIN)
        for index, pod in enumerate(self.pods.values()):
            pod.ns = f"fp{pod.name}-{self.tag}"
            host, peer = f"veth{index}", f"eth0-{self.tag}{index}"
            self.sh(IP, "netns", "add", pod.ns)
            self.sh(IP, "link", "add", host, "type", "veth", "peer", "name", peer, ns=self.node)
            self.sh(IP, "link", "set", host, "master", self.bridge, "up", ns=self.node)
            self.sh(IP, "link", "set", peer, "netns", pod.ns, ns=self.node)
            self.sh(IP, "link", "set", peer, "name", "eth0", ns=pod.ns)
            self.sh(IP, "addr", "add", f"{pod.ip}/24", "dev", "eth0", ns=pod.ns)
            for dev in ("lo", "eth0"):
                self.sh(IP, "link", "set", dev, "up", ns=pod.ns)
            self.sh(IP, "route", "add", "default", "via", "10.88.0.1", ns=pod.ns)
            certs = self.work / pod.name
            issue_files(ca, spiffe(pod.name), certs, 24 * 3600)
            config = self.work / f"{pod.name}.toml"
            config.write_text(SIDECAR.format(
                id=spiffe(pod.name), certs=certs, reviews=REVIEWS, v1_only=REVIEWS_V1_ONLY,
                inbound=pod.inbound, allow=json.dumps(pod.allow), v1_id=spiffe("reviews-v1"),
                v2_id=spiffe("reviews-v2")))
            if pod.apps:
                self.start(pod.ns, f"{pod.name}-app", sys.executable, "-m", "fastproxy.intercept.mesh_apps",
                           *pod.apps, ports=[9080])
            self.start(pod.ns, f"{pod.name}-sidecar", sys.executable, "-m", "fastproxy", "run", "-c",
                       str(config), ports=[15001, 15006])
            self.sh(sys.executable, "-m", "fastproxy", "iptables", "--proxy-uid", "0",
                    "--exclude-inbound-ports", "15000", ns=pod.ns)
        return self

    def down(self) -> None:
        netns.stop(self.procs)
        for pod in self.pods.values():
            if pod.ns:
                self.sh(IP, "netns", "delete", pod.ns, check=False)
        self.sh(IP, "netns", "delete", self.node, check=False)
        shutil.rmtree(self.work, ignore_errors=True)

    # -- what the checks use -------------------------------------------------------------------
    def curl(self, pod: str, url: str) -> tuple[int, dict, dict]:
        """(status, response headers, JSON body or {}) of the application's GET `url`."""
        done = self.app(pod, "curl", "-s", "-m", "10", "-D", "-", url)
        head, _, body = done.stdout.partition("\n\n")      # text mode: CRLF came as LF
        lines = head.split("\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        try:
            reply = json.loads(body)
        except ValueError:
            reply = {}
        return int(lines[0].split()[1]), headers, reply

    def socket_probe(self, pod: str, host: str, port: int, send: bytes, first_read: bool) -> list[bytes]:
        """What a raw TCP client in the pod's application gets back."""
        probe = ("import socket,sys\n"
                 f"c = socket.create_connection(({host!r}, {port}), timeout=5)\n"
                 + ("print(repr(c.recv(200)))\n" if first_read else "")
                 + f"c.sendall({send!r}); print(repr(c.recv(200)))\n")
        out = self.app(pod, "/usr/bin/python3", "-c", probe).stdout.splitlines()
        return [ast.literal_eval(line) for line in out]   # the probe prints repr(bytes)

    def capture(self, seconds: float) -> subprocess.Popen:
        """A raw-socket capture of every frame on the node's links (the bridge's ports: each
        pod's veth) for `seconds`."""
        code = ("import socket,sys,time\n"
                "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))\n"
                "s.settimeout(0.2); out = open(sys.argv[1], 'wb'); end = time.time() + float(sys.argv[2])\n"
                "while time.time() < end:\n"
                "    try: f = s.recv(65536)\n"
                "    except socket.timeout: continue\n"
                "    out.write(len(f).to_bytes(4, 'big') + f)\n")
        return subprocess.Popen([IP, "netns", "exec", self.node, sys.executable, "-c", code,
                                 str(self.work / "capture.bin"), str(seconds)])

    def captured(self) -> list[tuple[str, int, str, int, bytes]]:
        """The TCP segments with a payload the capture saw: (src, sport, dst, dport, payload)."""
        data, segments, at = (self.work / "capture.bin").read_bytes(), [], 0
        while at + 4 <= len(data):
            n = int.from_bytes(data[at:at + 4], "big")
            frame, at = data[at + 4:at + 4 + n], at + 4 + n
            if frame[12:14] != b"\x08\x00" or frame[23] != 6:      # IPv4, TCP
                continue
            ihl = (frame[14] & 0x0F) * 4
            tcp = 14 + ihl
            payload = frame[tcp + (frame[tcp + 12] >> 4) * 4:14 + int.from_bytes(frame[16:18], "big")]
            if payload:
                segments.append((socket.inet_ntoa(frame[26:30]), int.from_bytes(frame[tcp:tcp + 2], "big"),
                                 socket.inet_ntoa(frame[30:34]), int.from_bytes(frame[tcp + 2:tcp + 4], "big"),
                                 payload))
        return segments


def run_checks(mesh: Mesh) -> list[tuple[str, bool, str]]:
    """Every behaviour the mesh shows, as (what, held, detail)."""
    results = []

    def check(what: str, held: bool, detail: str) -> None:
        results.append((what, held, detail))

    capture = mesh.capture(4)
    time.sleep(0.5)
    status, _, reply = mesh.curl("web", f"http://{REVIEWS}:9080/reviews/1")
    xfcc = dict(reply.get("headers", [])).get("x-forwarded-client-cert", "")
    check("web -> reviews through both sidecars", status == 200 and bool(reply.get("served_by")),
          f"status {status}, served by {reply.get('served_by')}")
    check("the inbound sidecar saw web's SPIFFE id", spiffe("web") in xfcc, xfcc or "no x-forwarded-client-cert")
    shares: dict[str, int] = {}
    for i in range(20):
        who = mesh.curl("web", f"http://{REVIEWS}:9080/who/{i}")[2].get("served_by", "no answer")
        shares[who] = shares.get(who, 0) + 1
    check("a 90/10 split by destination", shares == {"reviews-v1": 18, "reviews-v2": 2}, str(shares))
    capture.wait(timeout=10)
    segments = [s for s in mesh.captured() if {s[1], s[3]} & {9080}]
    clear = [s for s in segments if any(marker in s[4] for marker in CLEAR_TEXT)]
    tls = [s for s in segments if s[4][:1] in (b"\x16", b"\x17")]
    check("only TLS crossed between the pods", bool(tls) and not clear,
          f"{len(segments)} segments to or from :9080 on the bridge, {len(tls)} TLS records, "
          f"{len(clear)} with a request line in clear text")
    status, headers, _ = mesh.curl("reviews-v2", f"http://{REVIEWS_V1_ONLY}:9080/anything")
    check("a pod outside allow gets 403", status == 403, f"reviews-v2 -> reviews-v1: {status} "
          f"{headers.get('fastproxy-error', '')}")
    statuses = [mesh.curl("web", f"http://{REVIEWS}:9080/flaky/status/500")[:2] for _ in range(6)]
    check("the circuit opens after more than 3 failures", [s for s, _ in statuses[:4]] == [500] * 4 and
          statuses[-1][1].get("fastproxy-error") == "circuit_open",
          ", ".join(f"{s} {h.get('fastproxy-error', '')}".strip() for s, h in statuses))
    echo = mesh.socket_probe("web", SHARED, 7000, b"\x00\x01binary\n", first_read=False)
    check("a TCP echo passes through untouched", echo == [b"\x00\x01binary\n"], repr(echo))
    banner = mesh.socket_probe("web", SHARED, 2525, b"HELO web\r\n", first_read=True)
    check("a server-first banner passes through", banner == [b"220 banner.test ESMTP ready\r\n",
                                                             b"250 HELO web\r\n"], repr(banner))
    done = mesh.sh("curl", "-s", "-m", "10", "http://10.88.0.13:9080/plain", ns=mesh.node, check=False)
    try:
        plain = json.loads(done.stdout)
    except ValueError:
        plain = {}
    check("a permissive pod accepts a plain caller", plain.get("served_by") == "reviews-v2",
          f"from the node without a sidecar: {done.stdout[:80] or done.stderr.strip()}")
    before = mesh.sh("iptables-save", "-t", "nat", ns=mesh.pods["web"].ns).stdout
    mesh.sh(sys.executable, "-m", "fastproxy", "iptables", "--cleanup", ns=mesh.pods["web"].ns)
    after = mesh.sh("iptables-save", "-t", "nat", ns=mesh.pods["web"].ns).stdout
    _, _, direct = mesh.curl("web", "http://10.88.0.13:9080/direct")
    check("--cleanup restores the namespace", "FASTPROXY" in before and "FASTPROXY" not in after
          and direct.get("served_by") == "reviews-v2"
          and "x-forwarded-client-cert" not in dict(direct.get("headers", [])),
          "no FASTPROXY chains left; web's application now reaches reviews-v2 in plain, "
          "without its sidecar")
    return results


def main() -> int:
    if os.geteuid() != 0:
        print("fastproxy mesh demo: needs root (network namespaces and iptables)", file=sys.stderr)
        return 1
    mesh = Mesh()
    try:
        print("setting up: a node with a bridge, three pods, their applications and sidecars ...")
        mesh.up()
        for pod in mesh.pods.values():
            print(f"  {pod.name:11} {pod.ip}  inbound {pod.inbound:10} id {spiffe(pod.name)}")
        print()
        results = run_checks(mesh)
    except netns.NetnsError as exc:
        print(f"fastproxy mesh demo: {exc}", file=sys.stderr)
        return 1
    finally:
        mesh.down()
    for what, held, detail in results:
        print(f"  {'ok  ' if held else 'FAIL'} {what}: {detail}")
    return 0 if all(held for _, held, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
