"""The access log: one JSON object per request (SPEC §8, §11), written off the event loop.

The drain timer formats a batch of records and hands the bytes to a writer thread, so a
slow disk or a full stdout pipe never stalls the proxy: when too much is waiting, batches
are dropped and counted instead. Several workers may share stdout: writes to pipes are
kept within PIPE_BUF and end on a line, so lines never interleave.
"""
from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time

import orjson

from fastproxy.observe.records import Record

log = logging.getLogger("fastproxy")

PIPE_BUF = 4096
MAX_WAITING = 64 * 1024 * 1024    # bytes queued for the writer; beyond it batches are dropped


class TimeFormat:
    """RFC 3339 UTC with milliseconds; the seconds part is formatted once per second."""

    def __init__(self):
        self.second = -1
        self.prefix = ""

    def __call__(self, t: float) -> str:
        second = int(t)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.prefix}.{int((t - second) * 1000):03d}Z"


class AccessLog:
    """Writes JSON lines to stdout, stderr or a file (opened for appending)."""

    def __init__(self, target: str):
        self.target = target
        if target in ("stdout", "stderr"):
            stream = sys.stdout if target == "stdout" else sys.stderr
            self.fd = stream.fileno()
            self.own_fd = False
        else:
            self.fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self.own_fd = True
        import stat
        self.regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
        self.time = TimeFormat()
        self.dropped = 0           # lines
        self.waiting = 0           # bytes queued
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._writer, name="access-log", daemon=True)
        self.thread.start()

    def line(self, r: Record | tuple) -> bytes:
        """One JSON line; takes the core's plain tuple as it comes (no Record made)."""
        (start, end, listener, _, route, cluster, upstream, method, path, authority, status,
         error, bytes_in, bytes_out, peer, trace_id, _, _, _, request_id, _) = r
        return orjson.dumps({
            "time": self.time(start), "listener": listener, "route": route, "method": method,
            "path": path, "authority": authority, "status": status,
            "duration_ms": round((end - start) * 1000, 3), "bytes_in": bytes_in,
            "bytes_out": bytes_out, "cluster": cluster, "upstream": upstream, "peer": peer,
            "trace_id": trace_id, "request_id": request_id, "error": error,
        }, option=orjson.OPT_APPEND_NEWLINE)

    def write(self, lines: list[bytes]) -> None:
        """Queue whole lines for the writer thread; never blocks."""
        size = sum(map(len, lines))
        if self.waiting + size > MAX_WAITING:
            self.dropped += len(lines)
            return
        self.waiting += size
        self.queue.put(lines)

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (for at most timeout), then stop."""
        self.queue.put(None)
        self.thread.join(timeout)
        if self.own_fd:
            os.close(self.fd)

    def _writer(self) -> None:
        while True:
            lines = self.queue.get()
            if lines is None:
                return
            self.waiting -= sum(map(len, lines))
            try:
                for chunk in self._chunks(lines):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(self.fd, view):]
            except OSError as exc:
                self.dropped += len(lines)
                log.warning("access log %s: %s", self.target, exc.strerror or exc)

    def _chunks(self, lines: list[bytes]):
        if self.regular:      # O_APPEND: one write lands whole
            yield b"".join(lines)
            return
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > PIPE_BUF:
                yield b"".join(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            yield b"".join(chunk)
