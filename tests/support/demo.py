"""`fastproxy demo` as a user runs it, for the tests that watch it (its summary, its
dashboard): a free block of ports, and the demo in its own process group with its output
collected line by line."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import threading

from .fastproxy import REPO, fastproxy_cmd
from .procs import LOOPBACK, kill_group

PORT_SPAN = 15          # fastproxy.demo.PORT_SPAN: the demo uses base..base+14


def free_block(span: int = PORT_SPAN) -> int:
    """A base port whose whole block is free now."""
    for _ in range(100):
        base = random.randrange(20000, 60000 - span)
        socks = []
        try:
            for port in range(base, base + span):
                s = socket.socket()
                socks.append(s)
                s.bind((LOOPBACK, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of ports")


class Demo:
    """`fastproxy demo` in its own process group, its output collected line by line."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            fastproxy_cmd("demo", *args), cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, timeout: float = 20.0) -> None:
        """Ctrl-C, as a user stops it (it removes its directory); killed if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        kill_group(self.proc.pid)
