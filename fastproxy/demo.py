"""`fastproxy demo`: a small demo app on loopback with fastproxy in front of it.

The whole-mesh demo (sidecars with mTLS, a 90/10 split, a circuit that opens) grows here
as those capabilities land; for now it shows the forwarding core.
"""
from __future__ import annotations

import asyncio
import os
import signal
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
        server = await asyncio.get_running_loop().create_server(DemoApp, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def main(args) -> int:
    app = subprocess.Popen([sys.executable, "-c", f"from fastproxy.demo import serve_app; serve_app({args.app_port})"])
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(DEMO_CONFIG.format(port=args.port, app_port=args.app_port))
    proxy = subprocess.Popen([sys.executable, "-m", "fastproxy", "run", "-c", f.name])
    time.sleep(0.5)
    print(f"""
fastproxy demo: an app on 127.0.0.1:{args.app_port}, fastproxy in front of it.

  curl -i http://127.0.0.1:{args.port}/hello        # proxied: see x-request-id, x-forwarded-*
  curl -i http://127.0.0.1:{args.port}/ -H 'Transfer-Encoding: gzip'   # refused: 501

Ctrl-C stops both.
""", flush=True)
    try:
        while proxy.poll() is None and app.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for p in (proxy, app):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in (proxy, app):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        os.unlink(f.name)
    return 0
