"""`python -m bench.interception`: what transparent interception costs (issue 16's goals).
Needs root: it runs in a network namespace it creates (and deletes), with
`fastproxy iptables` applied and the load as another uid, so the connections really are
redirected. One fastproxy worker, pinned to one CPU; the load, the backend and HAProxy's
sink on the other.

  per request   wrk (uid 1000, 32 keep-alive connections) against the same route twice:
                through the transparent outbound listener (the application calls the
                service address 10.99.0.10:80, iptables redirects it; the route matches
                the destination) and straight at a plain listener of the same process
                with the same route. The difference is interception's cost per request;
                rounds alternate, medians are reported.
  per byte      a client (uid 1000) writes 1 GiB to a TCP sink at 10.99.0.10:9000: through
                fastproxy's passthrough (not HTTP, so relayed as TCP) and through HAProxy
                in `mode tcp` (one thread) in front of the same sink; the proxy's CPU per
                GiB, rounds alternating.

Prints a table and writes <results-dir>/<timestamp>-interception.md.

    python -m bench.interception [--rounds 3] [--seconds 3] [--gib 1]
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from bench import report
from bench.procstat import TreeSnapshot, cpu_used_between
from fastproxy.intercept import netns
from bench.runner import DEFAULT_RESULTS_DIR
from bench.tools import REPO_ROOT, git_revision

SERVICE = "10.99.0.10"
LOAD_UID = "1000"

FASTPROXY = """\
[proxy]
admin = ""
access_log = "off"
metrics = false
[tracing]
propagate = []

[[listener]]
name = "outbound"
bind = "127.0.0.1:15001"
transparent = true
  [[listener.route]]
  destination = "{service}:80"
  cluster = "backend"

[[listener]]
name = "direct"
bind = "127.0.0.1:15002"
  [[listener.route]]
  cluster = "backend"

[cluster.backend]
endpoints = ["127.0.0.1:8080"]
"""

HAPROXY = """\
global
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen sink
    bind 127.0.0.1:15003
    server sink 127.0.0.1:9000
"""

SINK = """
import socket, threading
s = socket.create_server(("0.0.0.0", 9000), backlog=64)
def drain(c):
    while c.recv(1 << 20):
        pass
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=drain, args=(c,), daemon=True).start()
"""

WRITER = """
import socket, sys, time
host, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
chunk = b"\\x00" + b"x" * (1 << 20 - 1)        # a first byte no HTTP request starts with
c = socket.create_connection((host, port))
sent = 0
while sent < total:
    c.sendall(chunk)
    sent += len(chunk)
c.shutdown(socket.SHUT_WR)
c.recv(1)
"""


class Namespace:
    """The bench's namespace: its service address on a veth, and what runs in it."""

    def __init__(self) -> None:
        self.name = f"fpbench-{uuid.uuid4().hex[:6]}"
        self.procs: list[subprocess.Popen] = []
        self.work = Path(tempfile.mkdtemp(prefix="fastproxy-interception-"))

    def sh(self, *cmd: str, uid: str | None = None) -> subprocess.CompletedProcess:
        try:
            return netns.run(*cmd, ns=self.name, uid=uid, cwd=REPO_ROOT, timeout=600)
        except netns.NetnsError as exc:
            raise SystemExit(str(exc)) from None

    def start(self, name: str, cpu: int, *cmd: str, port: int) -> subprocess.Popen:
        proc = netns.start(self.name, self.work / f"{name}.log", "taskset", "-c", str(cpu), *cmd, cwd=REPO_ROOT)
        self.procs.append(proc)
        try:
            netns.wait_listening(self.name, [port], proc, self.work / f"{name}.log")
        except netns.NetnsError as exc:
            raise SystemExit(f"{name}: {exc}") from None
        return proc

    def up(self) -> None:
        netns.run(netns.IP, "netns", "add", self.name)
        self.sh(netns.IP, "link", "set", "lo", "up")
        self.sh(netns.IP, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        self.sh(netns.IP, "addr", "add", f"{SERVICE}/24", "dev", "eth0")   # the service address is local
        self.sh(netns.IP, "link", "set", "eth0", "up")
        self.sh(netns.IP, "link", "set", "eth1", "up")

    def down(self) -> None:
        netns.stop(self.procs)
        netns.run(netns.IP, "netns", "delete", self.name, check=False)
        shutil.rmtree(self.work, ignore_errors=True)


def per_request(ns: Namespace, pid: int, url: str, seconds: int, load_cpu: int) -> tuple[float, float]:
    """(CPU µs per request, of which in the kernel)."""
    before = TreeSnapshot.take([pid])
    out = ns.sh("taskset", "-c", str(load_cpu), "wrk", "-t1", "-c32", f"-d{seconds}s", url, uid=LOAD_UID).stdout
    after = TreeSnapshot.take([pid])
    requests = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
    return (cpu_used_between(before, after) / requests * 1e6,
            cpu_used_between(before, after, system=True) / requests * 1e6)


def per_gib(ns: Namespace, pid: int, host: str, port: int, gib: float, load_cpu: int) -> float:
    before = TreeSnapshot.take([pid])
    ns.sh("taskset", "-c", str(load_cpu), "/usr/bin/python3", "-c", WRITER, host, str(port),
          str(int(gib * 2**30)), uid=LOAD_UID)
    after = TreeSnapshot.take([pid])
    return cpu_used_between(before, after) / gib


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.interception", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.interception needs root (a network namespace and iptables)", file=sys.stderr)
        return 1
    for tool in ("wrk", "haproxy", "iptables-restore", "taskset", "setpriv"):
        if shutil.which(tool) is None:
            print(f"bench.interception needs {tool} (make bench-deps; iptables: apt-get install iptables)",
                  file=sys.stderr)
            return 1
    cpus = sorted(os.sched_getaffinity(0))
    load_cpu, proxy_cpu = cpus[0], cpus[-1]
    ns = Namespace()
    rows = {"transparent": [], "direct": [], "transparent kernel": [], "direct kernel": [],
            "fastproxy passthrough": [], "haproxy mode tcp": []}
    try:
        ns.up()
        (ns.work / "fastproxy.toml").write_text(FASTPROXY.format(service=SERVICE))
        (ns.work / "haproxy.cfg").write_text(HAPROXY)
        ns.start("backend", load_cpu, sys.executable, "-m", "bench.builtin_backend", "--port", "8080", port=8080)
        ns.start("sink", load_cpu, sys.executable, "-c", SINK, port=9000)
        fastproxy = ns.start("fastproxy", proxy_cpu, sys.executable, "-m", "fastproxy", "run", "-c",
                             str(ns.work / "fastproxy.toml"), port=15002)
        haproxy = ns.start("haproxy", proxy_cpu, "haproxy", "-db", "-f", str(ns.work / "haproxy.cfg"), port=15003)
        ns.sh(sys.executable, "-m", "fastproxy", "iptables", "--proxy-uid", "0",
              "--exclude-outbound-ports", "15003")
        per_request(ns, fastproxy.pid, f"http://{SERVICE}/", 1, load_cpu)          # warm-ups
        per_request(ns, fastproxy.pid, "http://127.0.0.1:15002/", 1, load_cpu)
        for round_ in range(args.rounds):
            for name, url in (("transparent", f"http://{SERVICE}/"), ("direct", "http://127.0.0.1:15002/")):
                cpu, kernel = per_request(ns, fastproxy.pid, url, args.seconds, load_cpu)
                rows[name].append(cpu)
                rows[f"{name} kernel"].append(kernel)
            rows["fastproxy passthrough"].append(per_gib(ns, fastproxy.pid, SERVICE, 9000, args.gib, load_cpu))
            rows["haproxy mode tcp"].append(per_gib(ns, haproxy.pid, "127.0.0.1", 15003, args.gib, load_cpu))
            print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rows.items()), flush=True)
    finally:
        ns.down()
    med = {k: statistics.median(v) for k, v in rows.items()}
    git = git_revision()
    lines = [f"# Interception costs — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}", "",
             f"- command: `python -m bench.interception {' '.join(argv or sys.argv[1:])}`",
             f"- commit: {(git['commit'] or 'unknown')[:12]}{' (uncommitted changes)' if git.get('dirty') else ''}",
             f"- {args.rounds} rounds alternating; medians (min–max)", "",
             "| measure | value |", "|---|---|"]
    for key, unit in (("transparent", "µs CPU/request"), ("direct", "µs CPU/request"),
                      ("transparent kernel", "µs/request in the kernel"),
                      ("direct kernel", "µs/request in the kernel"),
                      ("fastproxy passthrough", "CPU s/GiB"), ("haproxy mode tcp", "CPU s/GiB")):
        lines.append(f"| {key} | {med[key]:.2f} {unit} ({min(rows[key]):.2f}–{max(rows[key]):.2f}) |")
    lines += ["", f"Interception costs {med['transparent'] - med['direct']:+.2f} µs CPU per request "
              f"({med['transparent kernel'] - med['direct kernel']:+.2f} µs of it in the kernel); "
              f"passthrough costs {med['fastproxy passthrough'] / med['haproxy mode tcp']:.2f}× HAProxy's "
              "CPU per byte."]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    path = report.dated_results_file(args.results_dir, "interception")
    path.write_text(text)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
