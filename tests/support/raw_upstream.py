"""A raw asyncio TCP upstream that records every byte it receives and answers with
scripted bytes. Run as a program:

    python raw_upstream.py --port P --record DIR [--script FILE.json]

Recording: each accepted connection N gets `DIR/conn-NNNN.bin` (created at accept,
appended and flushed on every read) and `DIR/conn-NNNN.closed` once the peer closed or
reset it. The test reads these files; nothing else is needed to observe the server.

Requests are delimited with a small HTTP/1.1 parser (content-length and chunked) so the
server can answer pipelined/keep-alive requests one by one. Bytes that do not parse as a
request are only recorded (e.g. a tunnel that should not exist).

Script (JSON):
    {"rules": [{"prefix": "/hang", "actions": [{"hang": true}]}, ...],
     "default": [...]}                    # actions for targets no rule matches
Actions, run in order for each request:
    {"ok": true}                          the default answer: 200 with body `raw:<target>`
    {"send": "latin-1 text"}              raw bytes to send (JSON escapes for \\r\\n)
    {"sleep": 0.1}                        seconds
    {"close": true}                       close the connection (FIN) and stop
    {"reset": true}                       abort the connection (RST) and stop
    {"hang": true}                        never answer again on this connection (keep recording)
    {"idle_close": [0.0, 0.003]}          after this response, close the connection if no new
                                          byte arrives within a random delay in that range
Without any action list the answer is `200` with body `raw:<target>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import struct
from pathlib import Path


class Incomplete(Exception):
    pass


def parse_request(buf: bytes):
    """(consumed, target) for the first complete request in buf, None if incomplete,
    (consumed, None) for a head that is not an HTTP request (skipped)."""
    i = buf.find(b"\r\n\r\n")
    if i < 0:
        return None
    lines = buf[:i].split(b"\r\n")
    parts = lines[0].split(b" ")
    pos = i + 4
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return pos, None
    cl, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        n = name.strip().lower()
        if n == b"content-length":
            try:
                cl = int(value.strip())
            except ValueError:
                cl = 0
        elif n == b"transfer-encoding" and value.strip().lower().endswith(b"chunked"):
            chunked = True
    if chunked:
        while True:
            j = buf.find(b"\r\n", pos)
            if j < 0:
                return None
            try:
                size = int(buf[pos:j].split(b";")[0].strip(), 16)
            except ValueError:
                return j + 2, None
            pos = j + 2
            if size == 0:
                k = buf.find(b"\r\n\r\n", pos - 2)
                if k < 0:
                    return None
                pos = k + 4
                break
            if len(buf) < pos + size + 2:
                return None
            pos += size + 2
    else:
        if len(buf) < pos + cl:
            return None
        pos += cl
    return pos, parts[1].decode("latin-1")


class Server:
    def __init__(self, record: Path, script: dict):
        self.record = record
        self.script = script
        self.count = 0

    def actions_for(self, target: str):
        path = target
        if "://" in path:  # absolute-form
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        for rule in self.script.get("rules", []):
            if path.startswith(rule["prefix"]):
                return rule["actions"]
        if "default" in self.script:
            return self.script["default"]
        return [{"ok": True}]

    @staticmethod
    def default_response(target: str) -> bytes:
        body = f"raw:{target}".encode("latin-1")
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nX-Raw-Upstream: 1\r\n\r\n"
        return head.encode("latin-1") + body

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.count += 1
        stem = self.record / f"conn-{self.count:04d}"
        rec = open(f"{stem}.bin", "ab", buffering=0)
        state = {"buf": b"", "eof": False}
        arrived = asyncio.Event()

        async def read_loop():
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    rec.write(data)
                    state["buf"] += data
                    arrived.set()
            except (ConnectionError, OSError):
                pass
            finally:
                state["eof"] = True
                Path(f"{stem}.closed").touch()
                arrived.set()

        reading = asyncio.create_task(read_loop())
        try:
            await self.respond(writer, state, arrived)
        except (ConnectionError, OSError):
            pass
        finally:
            if not writer.is_closing():
                writer.close()
            # keep recording until the peer is gone (the reader ends on EOF/reset)
            try:
                await asyncio.wait_for(reading, timeout=30)
            except (asyncio.TimeoutError, Exception):
                reading.cancel()
            rec.close()

    async def respond(self, writer, state, arrived):
        idle_close = None
        while True:
            parsed = parse_request(state["buf"])
            if parsed is None:
                if state["eof"]:
                    return
                arrived.clear()
                if idle_close is not None:
                    try:
                        await asyncio.wait_for(arrived.wait(), random.uniform(*idle_close))
                    except asyncio.TimeoutError:
                        return  # idle: close
                else:
                    await arrived.wait()
                continue
            idle_close = None
            consumed, target = parsed
            state["buf"] = state["buf"][consumed:]
            if target is None:
                continue
            for action in self.actions_for(target):
                if action.get("ok"):
                    writer.write(self.default_response(target))
                    await writer.drain()
                elif "send" in action:
                    writer.write(action["send"].encode("latin-1"))
                    await writer.drain()
                elif "sleep" in action:
                    await asyncio.sleep(action["sleep"])
                elif action.get("close"):
                    return
                elif action.get("reset"):
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                elif action.get("hang"):
                    await asyncio.Event().wait()
                elif "idle_close" in action:
                    idle_close = action["idle_close"]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--record", type=Path, required=True)
    ap.add_argument("--script", type=Path)
    args = ap.parse_args()
    script = json.loads(args.script.read_text()) if args.script else {}
    args.record.mkdir(parents=True, exist_ok=True)
    server = Server(args.record, script)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", args.port, backlog=1024)
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
