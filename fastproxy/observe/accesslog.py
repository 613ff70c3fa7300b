"""The access log: one JSON object per request (docs/observability.md), written off the event loop.

The core writes the lines itself (fastproxy/_core/accesslog.pxi) into a buffer; the drain
timer takes it and hands the bytes to a writer thread here, so a slow disk or a full
stdout pipe never stalls the proxy: when too much is waiting, batches are dropped and
counted instead. Several workers may share stdout: writes to pipes are kept within
PIPE_BUF and end on a line, so lines never interleave.
"""
from __future__ import annotations

import logging
import os
import queue
import stat
import sys
import threading

log = logging.getLogger("fastproxy")

PIPE_BUF = 4096
MAX_WAITING = 64 * 1024 * 1024    # bytes queued for the writer; beyond it batches are dropped


class AccessLog:
    """Writes batches of JSON lines to stdout, stderr or a file (opened for appending)."""

    def __init__(self, target: str):
        self.target = target
        if target in ("stdout", "stderr"):
            stream = sys.stdout if target == "stdout" else sys.stderr
            self.fd = stream.fileno()
            self.own_fd = False
        else:
            self.fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self.own_fd = True
        self.regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
        self.dropped = 0           # lines
        self.waiting = 0           # bytes queued
        self.lock = threading.Lock()   # dropped and waiting change in both threads
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._writer, name="access-log", daemon=True)
        self.thread.start()

    def write(self, lines: bytes) -> None:
        """Queue whole lines for the writer thread; never blocks."""
        if not lines:
            return
        with self.lock:
            if self.waiting + len(lines) > MAX_WAITING:
                self.dropped += lines.count(b"\n")
                return
            self.waiting += len(lines)
        self.queue.put(lines)

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (for at most timeout), then stop."""
        self.queue.put(None)
        self.thread.join(timeout)

    def _writer(self) -> None:
        while True:
            lines = self.queue.get()
            if lines is None:
                break
            with self.lock:
                self.waiting -= len(lines)
            try:
                for chunk in self._chunks(lines):
                    while chunk:
                        chunk = chunk[os.write(self.fd, chunk):]
            except OSError as exc:
                with self.lock:
                    self.dropped += lines.count(b"\n")
                log.warning("access log %s: %s", self.target, exc.strerror or exc)
        if self.own_fd:    # here, so a slow last write never meets a closed (reused) fd
            os.close(self.fd)

    def _chunks(self, lines: bytes):
        """One write for a file (O_APPEND lands it whole); for a pipe, pieces of at most
        PIPE_BUF that end on a line (a longer line goes alone)."""
        if self.regular:
            yield memoryview(lines)
            return
        view, start, end = memoryview(lines), 0, len(lines)
        while start < end:
            cut = lines.rfind(b"\n", start, start + PIPE_BUF) + 1
            if cut <= start:
                cut = lines.find(b"\n", start) + 1 or end
            yield view[start:cut]
            start = cut
