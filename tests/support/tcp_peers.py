"""Three small servers for the interception tests, standard library only (it also runs
under the system Python, as an unprivileged "application"):

  --http HOST:PORT     HTTP/1.1: answers every request with JSON of its request line and
                       headers ({"line": ..., "headers": [[name, value], ...]}), keep-alive
  --echo HOST:PORT     TCP: sends back whatever it receives
  --banner HOST:PORT   a server-first protocol (SMTP-like): greets first, then echoes lines
                       prefixed with "250 "

Each flag may repeat. Run: python tcp_peers.py --http 10.77.0.1:9080 --echo 10.77.0.1:7000
"""
from __future__ import annotations

import argparse
import asyncio
import json

BANNER = b"220 banner.test ESMTP ready\r\n"


async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = [line.split(":", 1) for line in lines[1:] if ":" in line]
            length = next((int(v) for n, v in headers if n.strip().lower() == "content-length"), 0)
            if length:
                await reader.readexactly(length)
            body = json.dumps({"line": lines[0], "headers": [[n.strip(), v.strip()] for n, v in headers]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        writer.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except ConnectionError:
        pass
    writer.close()


async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(BANNER)
    try:
        while line := await reader.readline():
            writer.write(b"250 " + line)
            await writer.drain()
    except ConnectionError:
        pass
    writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    for flag in ("http", "echo", "banner"):
        ap.add_argument(f"--{flag}", action="append", default=[], metavar="HOST:PORT")
    args = ap.parse_args()
    servers = []
    for handler, addresses in ((http, args.http), (echo, args.echo), (banner, args.banner)):
        for address in addresses:
            host, _, port = address.rpartition(":")
            servers.append(await asyncio.start_server(handler, host.strip("[]"), int(port)))
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
