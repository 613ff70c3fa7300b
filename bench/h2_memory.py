"""Memory per idle HTTP/2 client connection (issue 14's goal: at most 32 KiB).

Starts one fastproxy worker (plain listener, h2c, HTTP/1.1 backend on loopback), measures
its RSS, opens N connections that each send the preface and one request and read the
response, then leave the connection open and idle, and measures again; the same for
HTTP/1.1 keep-alive connections for comparison. Prints KiB per connection.

    python -m bench.h2_memory [--connections 2000]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from hyperframe.frame import HeadersFrame, SettingsFrame
from hpack import Encoder

from bench.processes import ManagedProcess, free_port

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def backend(port: int) -> asyncio.AbstractServer:
    async def handle(reader, writer):
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError):
            writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", port)


async def open_h2(port: int, n: int) -> list:
    request = HeadersFrame(1, Encoder().encode([(":method", "GET"), (":scheme", "http"),
                                                (":authority", "bench"), (":path", "/")]),
                           flags=["END_HEADERS", "END_STREAM"]).serialize()
    hello = PREFACE + SettingsFrame(0).serialize() + request
    conns = []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(hello)
        await r.read(4096)       # SETTINGS, and (usually) the response
        w.write(SettingsFrame(0, flags=["ACK"]).serialize())
        conns.append((r, w))
    return conns


async def open_h1(port: int, n: int) -> list:
    conns = []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
        await r.read(4096)
        conns.append((r, w))
    return conns


async def measure(n: int) -> None:
    backend_port, port = free_port(), free_port()
    server = await backend(backend_port)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "fastproxy.toml")
        config.write_text(f"""
[proxy]
admin = ""
access_log = "off"
[limits]
max_connections = {4 * n}
[[listener]]
name = "main"
bind = "127.0.0.1:{port}"
  [[listener.route]]
  cluster = "app"
[cluster.app]
endpoints = ["127.0.0.1:{backend_port}"]
protocol = "http1"
""")
        try:
            for name, opener in (("HTTP/2", open_h2), ("HTTP/1.1", open_h1)):
                # a fresh worker per protocol: memory freed by one would be reused by the other
                proxy = ManagedProcess(f"fastproxy ({name})", [sys.executable, "-m", "fastproxy", "run",
                                                               "-c", str(config)], Path(tmp, "fastproxy.log"))
                proxy.start()
                try:
                    problem = proxy.wait_ready(port, 20)
                    if problem:
                        raise SystemExit(problem)
                    await asyncio.sleep(0.5)
                    before = rss_kib(proxy.pid)
                    conns = await opener(port, n)
                    await asyncio.sleep(1.0)
                    after = rss_kib(proxy.pid)
                    print(f"{name:9} {n} idle connections: {after - before:7,} KiB more RSS, "
                          f"{(after - before) / n:5.1f} KiB per connection")
                    for _, w in conns:
                        w.close()
                finally:
                    proxy.stop()
        finally:
            server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=2000)
    args = ap.parse_args()
    asyncio.run(measure(args.connections))


if __name__ == "__main__":
    main()
