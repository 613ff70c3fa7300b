"""A scripted HTTP/2 (h2c) upstream for the tests, built on the `h2` library: it answers
every request with 200 and a body naming the connection and the stream, and misbehaves
as its mode says:

  plain            answer everything
  refuse-first     RST_STREAM(REFUSED_STREAM) the very first stream
  refuse-all       RST_STREAM(REFUSED_STREAM) every stream
  goaway-after-1   on each connection, answer the first stream, then GOAWAY with it as
                   the last stream id and leave the others unanswered
  drop-slow        requests to /slow are held; /drop closes the whole connection

Run: python h2_upstream.py --port N --mode MODE --record FILE (one JSON line per request:
connection number, stream id, path).
"""
from __future__ import annotations

import argparse
import asyncio
import json

import h2.config
import h2.connection
import h2.events
import h2.exceptions


class Conn(asyncio.Protocol):
    count = 0          # connections so far
    requests = 0       # requests so far, on every connection

    def __init__(self, mode: str, record):
        Conn.count += 1
        self.number = Conn.count
        self.mode = mode
        self.record = record
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.streams = 0
        self.held: list[int] = []

    def connection_made(self, transport):
        self.transport = transport
        self.h2.initiate_connection()
        transport.write(self.h2.data_to_send())

    def data_received(self, data):
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.transport.close()
            return
        for e in events:
            if isinstance(e, h2.events.RequestReceived):
                self.request(e.stream_id, dict(e.headers)[b":path"].decode())
            elif isinstance(e, h2.events.DataReceived):
                self.h2.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        self.transport.write(self.h2.data_to_send())

    def request(self, sid: int, path: str) -> None:
        self.streams += 1
        Conn.requests += 1
        self.record.write(json.dumps({"conn": self.number, "stream": sid, "path": path}) + "\n")
        self.record.flush()
        if self.mode == "refuse-all" or (self.mode == "refuse-first" and Conn.requests == 1):
            self.h2.reset_stream(sid, 7)
            return
        if self.mode == "goaway-after-1" and self.streams > 1:
            return
        if self.mode == "drop-slow":
            if path.startswith("/slow"):
                self.held.append(sid)
                return
            if path.startswith("/drop"):
                self.transport.abort()
                return
        self.answer(sid)
        if self.mode == "goaway-after-1":
            self.h2.close_connection(last_stream_id=sid)

    def answer(self, sid: int) -> None:
        body = f"conn {self.number} stream {sid}".encode()
        self.h2.send_headers(sid, [(":status", "200"), ("content-length", str(len(body)))])
        self.h2.send_data(sid, body, end_stream=True)
        if not self.transport.is_closing():
            self.transport.write(self.h2.data_to_send())


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", default="plain")
    ap.add_argument("--record", required=True)
    args = ap.parse_args()
    record = open(args.record, "a")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(args.mode, record), "127.0.0.1", args.port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
