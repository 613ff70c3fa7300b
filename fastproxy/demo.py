"""`fastproxy demo`: a small demo app on loopback with fastproxy in front of it.

The whole-mesh demo (sidecars with mTLS, a 90/10 split, a circuit that opens) grows here
as those capabilities land; for now it shows the forwarding core.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import orjson

DEMO_CONFIG = """\
[proxy]
admin = ""
access_log = "off"

[[listener]]
name = "outbound"
bind = "127.0.0.1:{port}"

  [[listener.route]]
  cluster = "app"

[cluster.app]
endpoints = ["127.0.0.1:{app_port}"]
"""


class DemoApp(asyncio.Protocol):
    """A tiny HTTP/1.1 app: answers every request with what it received, as JSON."""

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = [line.split(":", 1) for line in lines[1:]]
            length = int(dict((k.lower(), v) for k, v in headers).get("content-length", 0))
            if len(rest) < length:
                return
            self.buf = rest[length:]
            body = orjson.dumps({
                "app": "fastproxy demo app",
                "request": lines[0],
                "headers": {k: v.strip() for k, v in headers},
            }, option=orjson.OPT_INDENT_2) + b"\n"
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(body) + body)


def serve_app(port: int) -> None:
    import uvloop

    async def main():
        try:
            server = await asyncio.get_running_loop().create_server(DemoApp, "127.0.0.1", port)
        except OSError as exc:
            print(f"fastproxy demo: the app cannot listen on 127.0.0.1:{port}: {exc.strerror}",
                  file=sys.stderr)
            raise SystemExit(1) from None
        async with server:
            await server.serve_forever()

    try:
        uvloop.run(main())
    except KeyboardInterrupt:
        pass


def main(args) -> int:
    app = subprocess.Popen([sys.executable, "-c", f"from fastproxy.demo import serve_app; serve_app({args.app_port})"])
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(DEMO_CONFIG.format(port=args.port, app_port=args.app_port))
    proxy = subprocess.Popen([sys.executable, "-m", "fastproxy", "run", "-c", f.name])
    if not _wait_listening((args.app_port, args.port), (app, proxy)):
        _stop((proxy, app))
        os.unlink(f.name)
        print("fastproxy demo: could not start (see above); free the ports or pass "
              "--port / --app-port", file=sys.stderr)
        return 1
    print(f"""
fastproxy demo: an app on 127.0.0.1:{args.app_port}, fastproxy in front of it.

  curl -i http://127.0.0.1:{args.port}/hello        # proxied: see x-request-id, x-forwarded-*
  curl -i http://127.0.0.1:{args.port}/ -H 'Transfer-Encoding: gzip'   # refused: 501

Ctrl-C stops both.
""", flush=True)
    interrupted = False
    try:
        while proxy.poll() is None and app.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        _stop((proxy, app))
        os.unlink(f.name)
    if not interrupted:
        print("fastproxy demo: a demo process ended unexpectedly (see above)", file=sys.stderr)
        return 1
    return 0


def _wait_listening(ports, procs, timeout: float = 10.0) -> bool:
    """True once every port accepts; False as soon as a process has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        try:
            for port in ports:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
