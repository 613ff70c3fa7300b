"""Admission at scale: many more clients than one worker may serve, all answered.

Starts the builtin backend and one fastproxy worker (its descriptor limit set with
--nofile, max_connections with --max-connections), opens --clients connections that
each send one request, and once the first wave is answered lets every client leave as
soon as it has its response. It reports how many were answered after a few seconds,
whether the admin /ready answered meanwhile, how many in the end, and the accept pauses:

    python -m bench.admission --clients 19000 --nofile 20000 --max-connections 10000

Every client must be answered (exit status 0); the run needs --clients descriptors of
its own, so raise `ulimit -n` first. Traffic stays on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.processes import free_port, port_accepts
from bench.tools import core_not_built

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def config(port: int, admin: int, backend: int, max_connections: int) -> str:
    return f"""
[proxy]
admin = "127.0.0.1:{admin}"
access_log = "off"

[limits]
max_connections = {max_connections}
header_timeout = "120s"

[[listener]]
name = "main"
bind = "127.0.0.1:{port}"

  [[listener.route]]
  cluster = "backend"

[cluster.backend]
endpoints = ["127.0.0.1:{backend}"]
max_connections = 1000000   # the cluster's own limits are not what is measured here
max_pending = 1000000
"""


async def client(port: int, leave: asyncio.Event, results: list, i: int) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 120)
        writer.write(REQUEST)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 120)
        results[i] = head.split(b" ")[1].decode()
        await leave.wait()
        writer.close()
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
        results[i] = type(exc).__name__


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except OSError as exc:
        return 0, str(exc)


async def run(args, port: int, admin: int) -> bool:
    results: list = [None] * args.clients
    leave = asyncio.Event()
    started = time.monotonic()
    tasks = [asyncio.create_task(client(port, leave, results, i)) for i in range(args.clients)]
    await asyncio.sleep(args.hold)
    first = results.count("200")
    ready, _ = get(f"http://127.0.0.1:{admin}/ready")
    print(f"after {args.hold:g} s: {first:,}/{args.clients:,} answered; admin /ready: {ready}")
    leave.set()
    await asyncio.gather(*tasks)
    answered = results.count("200")
    print(f"in {time.monotonic() - started:.1f} s: {answered:,}/{args.clients:,} answered")
    others = sorted({r for r in results if r != "200"})
    if others:
        print(f"  not answered: {others}")
    _, text = get(f"http://127.0.0.1:{admin}/metrics")
    for line in text.splitlines():
        if line.startswith("fastproxy_accept_paused_total"):
            print(" ", line)
    return answered == args.clients and ready == 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.admission", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=12000)
    parser.add_argument("--max-connections", type=int, default=5000)
    parser.add_argument("--nofile", type=int, default=20000, help="fastproxy's RLIMIT_NOFILE")
    parser.add_argument("--hold", type=float, default=5.0,
                        help="seconds the first clients keep their connections")
    args = parser.parse_args(argv)
    if problem := core_not_built():
        print(f"python -m bench.admission: {problem}", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < args.clients + 64:
        print(f"this shell allows {hard} descriptors; {args.clients} clients need more "
              "(ulimit -n)", file=sys.stderr)
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    backend, port, admin = free_port(), free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="fastproxy-admission-"))
    (work / "fastproxy.toml").write_text(config(port, admin, backend, args.max_connections))
    procs = [subprocess.Popen([sys.executable, "-m", "bench.builtin_backend", "--port", str(backend)])]
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "fastproxy", "run", "-c", str(work / "fastproxy.toml")],
            stderr=open(work / "fastproxy.log", "w"),
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))))
        deadline = time.monotonic() + 20
        while not (port_accepts(port) and port_accepts(backend)):
            if time.monotonic() > deadline:
                print(f"fastproxy did not start; see {work / 'fastproxy.log'}", file=sys.stderr)
                return 1
            time.sleep(0.1)
        ok = asyncio.run(run(args, port, admin))
    finally:
        for p in procs:
            p.terminate()
            p.wait(15)
    print(f"fastproxy's log: {work / 'fastproxy.log'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
