"""An HTTP/2 connection driven frame by frame (hyperframe builds and parses the frames,
hpack encodes the header blocks), for the attack and conformance tests. Every read has a
deadline; the end of what the peer sent stops the reads (a send that failed does not:
what the peer wrote before it closed, its GOAWAY, is still read)."""
from __future__ import annotations

import socket
import time

from hpack import Encoder
from hyperframe import frame as hf

from .procs import LOOPBACK

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Raw:
    """An HTTP/2 connection driven frame by frame."""

    def __init__(self, port: int, handshake: bool = True):
        self.sock = socket.create_connection((LOOPBACK, port), timeout=10)
        if handshake:
            self.sock.sendall(PREFACE + hf.SettingsFrame(0).serialize())
        self.buf = bytearray()
        self.frames: list = []
        self.closed = False      # the peer closed the connection (a send failed, or EOF)
        self.eof = False         # everything the peer sent has been read
        self.encoder = Encoder()

    def send(self, data: bytes) -> bool:
        """False when the proxy has closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.closed = True
            return False

    def headers(self, sid: int, path: str = "/echo", extra=(), end_stream: bool = True,
                end_headers: bool = True) -> bytes:
        block = self.encoder.encode([(":method", "GET" if end_stream else "POST"), (":scheme", "http"),
                                     (":authority", "attacked"), (":path", path), *extra])
        flags = (["END_STREAM"] if end_stream else []) + (["END_HEADERS"] if end_headers else [])
        return hf.HeadersFrame(sid, block, flags=flags).serialize()

    def read(self, until, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not until() and not self.eof:
            if time.monotonic() > deadline:
                raise TimeoutError(f"frames so far: {self.frames[-10:]}")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            if not data:
                self.closed = self.eof = True
                break
            self.buf += data
            while len(self.buf) >= 9:
                f, length = hf.Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) < 9 + length:
                    break
                f.parse_body(memoryview(self.buf[9:9 + length]))
                del self.buf[:9 + length]
                self.frames.append(f)

    def goaway(self):
        return next((f for f in self.frames if isinstance(f, hf.GoAwayFrame)), None)

    def resets(self, sid: int):
        return [f.error_code for f in self.frames if isinstance(f, hf.RstStreamFrame) and f.stream_id == sid]

    def close(self):
        self.sock.close()

    def rst_codes(self):
        return [f.error_code for f in self.frames if isinstance(f, hf.RstStreamFrame)]

