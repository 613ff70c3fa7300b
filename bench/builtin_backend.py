"""The fallback backend when nginx is missing: a tiny keep-alive HTTP/1.1 server on uvloop.

Answers `GET /` with the same 12 bytes as the nginx backend and `GET /64k` with 65,536
bytes, and takes OTLP span exports (`POST /v1/traces`, 200) like the nginx backend;
anything else gets 404. Its cost per request is not nginx's, which the results
say when it was used. Pipelined requests are answered in order.

For bench.attacks it also answers `GET /slow` like `/` but `--delay-ms` late (an
application that takes its time, so attack streams are in flight when they are reset),
and tells how many requests reached it: `GET /_count` (asked directly, not through a
proxy) answers the number of requests before it.

    python -m bench.builtin_backend --port 8080 [--delay-ms 10]
"""
from __future__ import annotations

import argparse
import asyncio

SMALL_BODY = b"hello world\n"
LARGE_BODY = b"x" * 65536


def _response(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nServer: fastproxy-bench-backend\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


RESPONSES = {b"/": _response("200 OK", SMALL_BODY), b"/64k": _response("200 OK", LARGE_BODY),
             b"/v1/traces": _response("200 OK", b"")}
NOT_FOUND = _response("404 Not Found", b"not found\n")


class BackendProtocol(asyncio.Protocol):
    served = 0          # requests so far, on every connection
    delay_s = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.buffer = bytearray()
        self.busy_until = 0.0        # a late answer is due then: later ones wait for it

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out, late = [], False
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(self.buffer[:end])
            body_length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    body_length = int(value.strip())
            if len(self.buffer) < end + 4 + body_length:
                break
            del self.buffer[:end + 4 + body_length]
            parts = head.split(b" ", 2)
            target = parts[1] if len(parts) > 1 else b""
            path = target.split(b"?", 1)[0]
            if path == b"/_count":
                out.append(_response("200 OK", b"%d" % BackendProtocol.served))
            else:
                BackendProtocol.served += 1
                out.append(RESPONSES.get(b"/" if path == b"/slow" else path, NOT_FOUND))
                late = late or path == b"/slow"
            if b"connection: close" in head.lower():
                self.send(out, late, close=True)
                return
        if out:
            self.send(out, late)

    def send(self, out: list[bytes], late: bool, close: bool = False) -> None:
        # a late answer delays the ones pipelined behind it: the order stays the requests'
        loop = asyncio.get_running_loop()
        at = max(self.busy_until, loop.time() + self.delay_s if late else 0.0)
        if at > loop.time():
            self.busy_until = at
            loop.call_at(at, self.send_now, out, close)
        else:
            self.send_now(out, close)

    def send_now(self, out: list[bytes], close: bool) -> None:
        if self.transport.is_closing():
            return
        self.transport.writelines(out)
        if close:
            self.transport.close()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BackendProtocol, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.builtin_backend")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="answer GET /slow this late")
    args = parser.parse_args(argv)
    BackendProtocol.delay_s = args.delay_ms / 1000
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve(args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
