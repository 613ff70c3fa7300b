"""A raw HTTP/1.1 client over a plain socket, for tests that must control every byte.

`RawConn.send()` writes exactly what it is given; `read_response()` parses one response
strictly enough to notice framing mistakes (it never guesses), and reports truncation
instead of hiding it. Every read has a deadline.
"""

from __future__ import annotations

import hashlib
import socket
import time
from dataclasses import dataclass, field

from .procs import LOOPBACK


class ConnectionClosed(Exception):
    """The peer closed (FIN or RST) before a complete response arrived."""

    def __init__(self, msg: str, partial: bytes = b""):
        super().__init__(msg)
        self.partial = partial


@dataclass
class Response:
    version: bytes
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    raw_head: bytes = b""
    truncated: bool = False
    chunked: bool = False
    interim: list["Response"] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """First value of a header (case-insensitive), decoded as latin-1, or None."""
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        key = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == key]

    def header_names(self) -> list[str]:
        return [k.decode("latin-1").lower() for k, _ in self.headers]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def __repr__(self) -> str:  # short, for assertion messages
        return (f"<Response {self.status} {self.reason!r} headers={self.headers!r} "
                f"body={self.body[:200]!r}{'...' if len(self.body) > 200 else ''}"
                f"{' TRUNCATED' if self.truncated else ''}>")


class RawConn:
    def __init__(self, port: int, host: str = LOOPBACK, timeout: float = 10.0,
                 rcvbuf: int | None = None):
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    @classmethod
    def wrap(cls, sock: socket.socket, timeout: float = 10.0) -> "RawConn":
        """A RawConn over an already connected socket."""
        c = cls.__new__(cls)
        c.sock, c.timeout, c.buf, c.eof, c.reset = sock, timeout, bytearray(), False, False
        return c

    # ------------------------------------------------------------ plumbing
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into buf. False on EOF/reset. TimeoutError past deadline."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no data within the deadline; have {bytes(self.buf[:300])!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 20)
        except socket.timeout:
            raise TimeoutError(f"no data within the deadline; have {bytes(self.buf[:300])!r}") from None
        except (ConnectionResetError, BrokenPipeError):
            self.eof = self.reset = True
            return False
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _read_line(self, deadline: float) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                return self._take(i + 2)[:-2]
            if not self._fill(deadline):
                raise ConnectionClosed("closed while reading a line", bytes(self.buf))

    # ------------------------------------------------------------ responses
    def read_head(self, deadline: float) -> Response:
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            if not self._fill(deadline):
                raise ConnectionClosed(
                    f"connection {'reset' if self.reset else 'closed'} before a complete "
                    f"response head; got {bytes(self.buf[:300])!r}", bytes(self.buf))
        raw = self._take(i + 4)
        lines = raw[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise AssertionError(f"malformed status line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise AssertionError(f"malformed response header line {line!r}")
            headers.append((name, value.strip(b" \t")))
        return Response(version=parts[0], status=int(parts[1]),
                        reason=parts[2] if len(parts) > 2 else b"", headers=headers, raw_head=raw)

    def read_response(self, *, method: str = "GET", timeout: float | None = None,
                      allow_truncated: bool = False, keep_interim: bool = False) -> Response:
        """Read one final response (1xx interim responses are collected in .interim,
        except 101 which is returned as final)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        interim = []
        while True:
            resp = self.read_head(deadline)
            if 100 <= resp.status < 200 and resp.status != 101:
                interim.append(resp)
                if keep_interim:
                    resp.interim = interim
                    return resp
                continue
            break
        resp.interim = interim
        te = [v.lower() for v in resp.header_all("transfer-encoding")]
        cl = resp.header_all("content-length")
        if method.upper() == "HEAD" or resp.status in (204, 304) or resp.status < 200:
            return resp
        if te:
            if te[-1].split(",")[-1].strip() != "chunked":
                raise AssertionError(f"response with transfer-encoding {te} that is not chunked")
            if cl:
                raise AssertionError("response with both content-length and transfer-encoding")
            resp.chunked = True
            self._read_chunked(resp, deadline, allow_truncated)
        elif cl:
            if len(cl) != 1 or not cl[0].isdigit():
                raise AssertionError(f"bad content-length in response: {cl}")
            self._read_exact(resp, int(cl[0]), deadline, allow_truncated)
        else:
            while self._fill(deadline):
                pass
            resp.body = self._take(len(self.buf))
        return resp

    def _read_exact(self, resp, n, deadline, allow_truncated):
        while len(self.buf) < n:
            if not self._fill(deadline):
                resp.body = self._take(len(self.buf))
                resp.truncated = True
                if allow_truncated:
                    return
                raise ConnectionClosed(f"body truncated at {len(resp.body)} of {n} bytes",
                                       resp.body)
        resp.body = self._take(n)

    def _read_chunked(self, resp, deadline, allow_truncated):
        body = bytearray()
        try:
            while True:
                line = self._read_line(deadline)
                size_text = line.split(b";", 1)[0].strip()
                size = int(size_text, 16)
                if size == 0:
                    while self._read_line(deadline) != b"":  # trailers
                        pass
                    break
                while len(self.buf) < size + 2:
                    if not self._fill(deadline):
                        body += self._take(min(size, len(self.buf)))
                        raise ConnectionClosed("chunk truncated", bytes(body))
                data = self._take(size + 2)
                if data[-2:] != b"\r\n":
                    raise AssertionError(f"chunk data not followed by CRLF: {data[-10:]!r}")
                body += data[:-2]
        except ConnectionClosed:
            resp.body = bytes(body)
            resp.truncated = True
            if allow_truncated:
                return
            raise
        resp.body = bytes(body)

    def read_bytes(self, n: int, timeout: float | None = None) -> bytes:
        """Exactly n raw bytes (e.g. from a tunnel); ConnectionClosed if the peer closes."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise ConnectionClosed(f"closed after {len(self.buf)} of {n} bytes", bytes(self.buf))
        return self._take(n)

    # ------------------------------------------------------------ connection state
    def wait_closed(self, timeout: float = 5.0) -> bytes:
        """Wait until the peer closes; return whatever bytes arrived first (which should
        normally be none). TimeoutError if the connection is still open at the deadline."""
        deadline = time.monotonic() + timeout
        while self._fill(deadline):
            pass
        return self._take(len(self.buf))

    def is_open(self, probe_s: float = 0.3) -> bool:
        """True if nothing (no EOF, no data) arrives within `probe_s`."""
        try:
            self.wait_closed(probe_s)
        except TimeoutError:
            return True
        return False


def request(port: int, data: bytes, *, method: str = "GET", timeout: float = 10.0,
            **kw) -> Response:
    """One request on a fresh connection; returns the response."""
    with RawConn(port, timeout=timeout) as c:
        c.send(data)
        return c.read_response(method=method, **kw)


def get(port: int, path: str = "/", host: str = "app", headers: list[tuple[str, str]] = (),
        **kw) -> Response:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return request(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode("latin-1"), **kw)


def read_body_sha256(sock: socket.socket, already: bytes, length: int) -> tuple[int, str]:
    """Read a body of `length` bytes (`already` holds its start), hashing as it comes:
    (bytes got, SHA-256 hex). Stops early if the connection closes."""
    h = hashlib.sha256(already)
    got = len(already)
    view = memoryview(bytearray(4 << 20))
    while got < length:
        n = sock.recv_into(view, min(len(view), length - got))
        if n == 0:
            break
        h.update(view[:n])
        got += n
    return got, h.hexdigest()
