"""Fixed-rate, open-loop HTTP/1.1 load: latency counted from each request's intended send time.

wrk is a closed loop: a connection sends its next request only when the previous answer
is back, so while a response is slow the requests that were due meanwhile are simply not
sent and their wait is never measured ("coordinated omission"). Debian has no wrk2, so
this is the open loop: request i is due at start + i/rate whatever happens. It goes out on
an idle keep-alive connection or, if none is idle, waits in a backlog for the first one
that frees up; its latency runs from its due time to the end of its response. A late
generator can only make latency worse, never better - the direct (no proxy) run shows
this generator's own floor, and `send_lag_us` how late it sent.

Two threads: the pacer sleeps until each due time (time.sleep, a nanosecond timer; timer
slack set to 1 ns) and sends; the reader waits on epoll, parses responses (Content-Length
or chunked) and hands freed connections the backlog. One JSON object goes to stdout.
With --tls it speaks HTTPS (handshake once per connection, certificate not verified).

    python -m bench.openloop --port 8080 --path / --rate 2000 --duration 5 --connections 32
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import json
import select
import socket
import ssl
import sys
import threading
import time

PR_SET_TIMERSLACK = 29


def set_timer_slack_ns(ns: int) -> None:
    """Let time.sleep wake within a few microseconds of its target (the default slack is 50 us)."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def parse_response(buf: bytearray) -> tuple[int, int] | None:
    """(bytes used, status) for one complete response at the start of buf, None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and value.strip().lower().endswith("chunked"):
            chunked = True
    pos = end + 4
    if not chunked:
        return (pos + length, status) if len(buf) >= pos + length else None
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            while True:                      # optional trailers, then an empty line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return pos + 2, status
                pos = eol + 2
        pos += size + 2
        if pos > len(buf):
            return None


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-p * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def _client_tls_context() -> ssl.SSLContext:
    """Like wrk: encrypt, but do not verify the benchmark's throw-away certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Connection:
    __slots__ = ("sock", "buf", "due")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.due: float | None = None       # intended send time of the request in flight


class OpenLoop:
    def __init__(self, host: str, port: int, path: str, rate: float, duration: float,
                 connections: int, tls: bool = False, drain_timeout: float = 5.0):
        self.address = (host, port)
        self.tls_context = _client_tls_context() if tls else None
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        f"User-Agent: fastproxy-bench-openloop\r\n\r\n").encode()
        self.rate, self.duration = rate, duration
        self.wanted_connections = connections
        self.drain_timeout = drain_timeout
        self.lock = threading.Lock()
        self.idle: list[Connection] = []
        self.backlog: collections.deque[float] = collections.deque()
        self.by_fd: dict[int, Connection] = {}
        self.epoll = select.epoll()
        self.latencies: list[float] = []
        self.send_lags: list[float] = []
        self.errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
        self.max_backlog = 0
        self.pacing_done = False

    # -- connections ---------------------------------------------------------------
    def connect(self) -> Connection | None:
        try:
            sock = socket.create_connection(self.address, timeout=2)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls_context:
                sock = self.tls_context.wrap_socket(sock, server_hostname=self.address[0])  # handshakes
        except OSError:
            self.errors["connect"] += 1
            return None
        sock.setblocking(False)
        conn = Connection(sock)
        self.by_fd[sock.fileno()] = conn
        self.epoll.register(sock.fileno(), select.EPOLLIN)
        return conn

    def drop(self, conn: Connection) -> None:
        fd = conn.sock.fileno()
        if self.by_fd.pop(fd, None) is not None:
            try:
                self.epoll.unregister(fd)
            except OSError:
                pass
        conn.sock.close()
        if conn in self.idle:
            self.idle.remove(conn)

    def send(self, conn: Connection, due: float) -> None:
        """Caller holds the lock."""
        conn.due = due
        try:
            conn.sock.send(self.request)
        except OSError:
            # The reader sees the broken socket and replaces the connection.
            self.errors["write"] += 1
            conn.due = None

    def hand_out(self, conn: Connection) -> None:
        """A connection became free: give it the oldest backlogged request, or park it."""
        with self.lock:
            if self.backlog:
                self.send(conn, self.backlog.popleft())
            else:
                self.idle.append(conn)

    # -- the two threads ----------------------------------------------------------
    def pace(self, start: float) -> None:
        set_timer_slack_ns(1)
        interval = 1.0 / self.rate
        total = int(self.rate * self.duration)
        clock, sleep = time.perf_counter, time.sleep
        for i in range(total):
            due = start + i * interval
            delay = due - clock()
            if delay > 0:
                sleep(delay)
            with self.lock:
                if self.idle:
                    conn = self.idle.pop()
                    self.send_lags.append(clock() - due)
                    self.send(conn, due)
                else:
                    self.backlog.append(due)
                    self.max_backlog = max(self.max_backlog, len(self.backlog))
        self.pacing_done = True

    def read_responses(self, deadline: float) -> None:
        clock = time.perf_counter
        while True:
            with self.lock:
                busy = any(conn.due is not None for conn in self.by_fd.values())
                if self.pacing_done and not busy and not self.backlog:
                    return
                if not self.by_fd:
                    # Nothing left to send on: every backlogged request is lost.
                    self.errors["connect"] += len(self.backlog)
                    self.backlog.clear()
                    if self.pacing_done:
                        return
            if clock() > deadline:
                with self.lock:
                    lost = len(self.backlog) + sum(c.due is not None for c in self.by_fd.values())
                    self.errors["timeout"] += lost
                    self.backlog.clear()
                return
            events = self.epoll.poll(0.05)
            now = clock()
            for fd, _ in events:
                conn = self.by_fd.get(fd)
                if conn is None:
                    continue
                data, closed = self.read_available(conn)
                conn.buf += data
                while conn.due is not None:
                    parsed = parse_response(conn.buf)
                    if parsed is None:
                        break
                    used, status = parsed
                    del conn.buf[:used]
                    self.latencies.append(now - conn.due)
                    if not 200 <= status < 400:
                        self.errors["status"] += 1
                    conn.due = None
                    self.hand_out(conn)
                if closed:
                    self.replace(conn)

    def read_available(self, conn: Connection) -> tuple[bytes, bool]:
        """Everything readable now, and whether the peer closed. A TLS socket may hold
        decrypted bytes that epoll will not announce again, so read until it would block."""
        chunks = []
        while True:
            try:
                chunk = conn.sock.recv(262144)
            except (BlockingIOError, ssl.SSLWantReadError):
                return b"".join(chunks), False
            except OSError:
                return b"".join(chunks), True
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
            if self.tls_context is None and len(chunk) < 262144:
                return b"".join(chunks), False

    def replace(self, conn: Connection) -> None:
        """The peer closed a connection: count a lost request, open a fresh connection."""
        with self.lock:
            if conn.due is not None:
                self.errors["read"] += 1
                conn.due = None
            self.drop(conn)
            fresh = self.connect()
        if fresh is not None:
            self.hand_out(fresh)

    def run(self) -> dict:
        sys.setswitchinterval(0.0005)   # the pacer must get the GIL promptly when it wakes
        for _ in range(self.wanted_connections):
            conn = self.connect()
            if conn is not None:
                self.idle.append(conn)
        if not self.idle:
            return self.report(measured_s=0.0)
        start = time.perf_counter() + 0.01
        pacer = threading.Thread(target=self.pace, args=(start,), daemon=True)
        pacer.start()
        self.read_responses(deadline=start + self.duration + self.drain_timeout)
        pacer.join(timeout=1)
        measured_s = max(self.duration, 1e-9)
        for conn in list(self.by_fd.values()):
            self.drop(conn)
        return self.report(measured_s)

    def report(self, measured_s: float) -> dict:
        latencies = sorted(self.latencies)
        lags = sorted(self.send_lags)
        us = 1e6
        return {
            "requests": len(latencies),
            "duration_s": measured_s,
            "rps": len(latencies) / measured_s if measured_s else 0.0,
            "target_rps": self.rate,
            "latency_us": {
                "p50": percentile(latencies, 50) * us,
                "p99": percentile(latencies, 99) * us,
                "p99.9": percentile(latencies, 99.9) * us,
                "max": (latencies[-1] if latencies else 0.0) * us,
            },
            "send_lag_us": {"p50": percentile(lags, 50) * us, "p99": percentile(lags, 99) * us},
            "max_backlog": self.max_backlog,
            "errors": self.errors,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.openloop", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--rate", type=float, default=2000, help="requests per second")
    parser.add_argument("--duration", type=float, default=5, help="seconds of sending")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--tls", action="store_true", help="HTTPS (the certificate is not verified)")
    args = parser.parse_args(argv)
    result = OpenLoop(args.host, args.port, args.path, args.rate, args.duration, args.connections,
                      tls=args.tls).run()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
