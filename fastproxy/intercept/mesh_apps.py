"""The applications of the namespace mesh (fastproxy.intercept.mesh) and the
interception tests: three small servers, standard library only, that know nothing of
the mesh.

  --http HOST:PORT     HTTP/1.1: answers every request with JSON of its request line,
                       headers and --name ({"line": ..., "headers": [[name, value], ...],
                       "served_by": NAME}), keep-alive; a path with /status/N in it answers status N
  --echo HOST:PORT     TCP: sends back whatever it receives
  --banner HOST:PORT   a server-first protocol (SMTP-like): greets first, then echoes lines
                       prefixed with "250 "

Each flag may repeat. Run: python -m fastproxy.intercept.mesh_apps --http 10.77.0.1:9080
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re

BANNER = b"220 banner.test ESMTP ready\r\n"
NAME = "app"


async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = [line.split(":", 1) for line in lines[1:] if ":" in line]
            length = next((int(v) for n, v in headers if n.strip().lower() == "content-length"), 0)
            if length:
                await reader.readexactly(length)
            body = json.dumps({"line": lines[0], "headers": [[n.strip(), v.strip()] for n, v in headers],
                               "served_by": NAME}).encode()
            target = lines[0].split(" ")[1] if lines[0].count(" ") >= 2 else "/"
            code = re.search(r"/status/(\d{3})", target)
            status = int(code[1]) if code else 200
            writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (status, len(body), body))
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
    global NAME
    ap = argparse.ArgumentParser()
    for flag in ("http", "echo", "banner"):
        ap.add_argument(f"--{flag}", action="append", default=[], metavar="HOST:PORT")
    ap.add_argument("--name", default=NAME, help="who answers, in every HTTP reply")
    args = ap.parse_args()
    NAME = args.name
    servers = []
    for handler, addresses in ((http, args.http), (echo, args.echo), (banner, args.banner)):
        for address in addresses:
            host, _, port = address.rpartition(":")
            servers.append(await asyncio.start_server(handler, host.strip("[]"), int(port)))
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
