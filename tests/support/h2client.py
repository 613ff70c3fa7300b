"""A small HTTP/2 client over a plain or TLS socket, built on the `h2` library, for tests
that must see frames: resets, GOAWAY, trailers, windows, several streams at once.

It never validates what it sends (so tests can send malformed requests) and every read
has a deadline.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings

from .procs import LOOPBACK


@dataclass
class Stream:
    headers: list[tuple[bytes, bytes]] | None = None
    informational: list[list[tuple[bytes, bytes]]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] | None = None
    ended: bool = False
    reset: int | None = None      # the error code of a RST_STREAM from the server

    @property
    def status(self) -> int | None:
        return int(self.header(":status")) if self.headers else None

    def header(self, name: str) -> str | None:
        for k, v in self.headers or ():
            if k == name.encode():
                return v.decode("latin-1")
        return None

    def trailer(self, name: str) -> str | None:
        for k, v in self.trailers or ():
            if k == name.encode():
                return v.decode("latin-1")
        return None

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class H2Conn:
    def __init__(self, port: int, *, tls: ssl.SSLContext | None = None, window: int | None = None,
                 auto_ack: bool = True, timeout: float = 10.0, settings: dict | None = None):
        sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
            sock = tls.wrap_socket(sock, server_hostname="localhost")
            assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
        self.sock = sock
        self.timeout = timeout
        self.auto_ack = auto_ack       # give received DATA back to the windows at once
        config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                           normalize_outbound_headers=False,
                                           validate_inbound_headers=False)
        self.h2 = h2.connection.H2Connection(config)
        initial = dict(settings or {})
        if window is not None:
            initial[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = window
        self.h2.initiate_connection()
        if initial:
            self.h2.update_settings(initial)
        self.streams: dict[int, Stream] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def close(self) -> None:
        self.sock.close()

    # -- sending ------------------------------------------------------------------------
    def request(self, path: str = "/", method: str = "GET", headers=(), body: bytes | None = None,
                end: bool = True, authority: str = "test", scheme: str = "http") -> int:
        sid = self.send_fields([(":method", method), (":scheme", scheme), (":authority", authority),
                                (":path", path), *headers], end and body is None)
        if body is not None:
            self.send(sid, body, end)
        return sid

    def send_fields(self, fields, end: bool = True) -> int:
        """A new stream with exactly this header list (pseudo-headers included)."""
        sid = self.h2.get_next_available_stream_id()
        self.streams[sid] = Stream()
        self.h2.send_headers(sid, list(fields), end_stream=end)
        self.flush()
        return sid

    def send(self, sid: int, data: bytes, end: bool = False) -> None:
        """DATA within the windows the server gave (waits for them)."""
        view = memoryview(data)
        while view:
            n = min(len(view), self.h2.local_flow_control_window(sid),
                    self.h2.max_outbound_frame_size)
            if n <= 0:
                self.flush()
                self.read_some(time.monotonic() + self.timeout)
                continue
            self.h2.send_data(sid, bytes(view[:n]))
            view = view[n:]
        if end:
            self.h2.end_stream(sid)
        self.flush()

    def send_trailers(self, sid: int, trailers) -> None:
        self.h2.send_headers(sid, list(trailers), end_stream=True)
        self.flush()

    def reset(self, sid: int, code: int = 8) -> None:
        self.h2.reset_stream(sid, code)
        self.flush()

    # -- receiving ----------------------------------------------------------------------
    def read_some(self, deadline: float) -> bool:
        """One read; False when the connection closed."""
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(1 << 20)
        except (socket.timeout, TimeoutError):
            return True
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        for event in self.h2.receive_data(data):
            self.on_event(event)
        self.flush()
        return True

    def on_event(self, e) -> None:
        s = self.streams.get(getattr(e, "stream_id", None) or 0)
        if isinstance(e, h2.events.InformationalResponseReceived):
            s.informational.append(e.headers)
        elif isinstance(e, h2.events.ResponseReceived):
            s.headers = e.headers
        elif isinstance(e, h2.events.DataReceived):
            s.body += e.data
            if self.auto_ack:
                self.h2.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif isinstance(e, h2.events.TrailersReceived):
            s.trailers = e.headers
        elif isinstance(e, h2.events.StreamEnded):
            s.ended = True
        elif isinstance(e, h2.events.StreamReset):
            if s is not None:
                s.reset = e.error_code
        elif isinstance(e, h2.events.ConnectionTerminated):
            self.goaway = e

    def wait(self, *sids: int, timeout: float | None = None) -> list[Stream]:
        """Read until every stream named is done (ended or reset) or the connection closed."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not all(self.streams[s].done for s in sids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"streams {sids} not done: {[self.streams[s] for s in sids]}")
            if not self.read_some(deadline):
                break
        return [self.streams[s] for s in sids]

    def wait_for(self, predicate, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout)
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met")
            if not self.read_some(deadline):
                if not predicate():
                    raise ConnectionError("closed before the condition was met")
                return

    def get(self, path: str = "/", timeout: float | None = None, **kw) -> Stream:
        return self.wait(self.request(path, **kw), timeout=timeout)[0]
