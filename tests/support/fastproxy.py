"""Start fastproxy as a user would (`python -m fastproxy run -c FILE.toml`) and control it.

Config text may contain placeholders:
    ${listen:NAME}   a free 127.0.0.1 port, as "127.0.0.1:PORT" (use as a listener bind)
    ${port:NAME}     a free port number alone (same pool as listen:NAME)
    ${KEY}           the keyword argument KEY given to `render`
Placeholders use `${...}` so TOML inline tables (`{ a = 1 }`) need no escaping.
"""

from __future__ import annotations

import os
import resource
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from .procs import (LOOPBACK, children_of, free_port, live_pids_in_group, rss_bytes,
                    stop_group, wait_for_ports)

PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[2]
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_:.\-]+)\}")


def render(template: str, ports: dict[str, int] | None = None, **values) -> tuple[str, dict[str, int]]:
    """Substitute placeholders; returns (text, ports allocated by name)."""
    ports = dict(ports or {})

    def sub(m):
        key = m.group(1)
        if key.startswith(("listen:", "port:")):
            kind, name = key.split(":", 1)
            if name not in ports:
                ports[name] = free_port()
            return f"{LOOPBACK}:{ports[name]}" if kind == "listen" else str(ports[name])
        if key not in values:
            raise KeyError(f"config placeholder ${{{key}}} has no value")
        return str(values[key])

    return _PLACEHOLDER.sub(sub, template), ports


def fastproxy_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "fastproxy", *args]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 30,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a short fastproxy command (check, bad usage ...) to completion."""
    return subprocess.run(fastproxy_cmd(*args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


class ProxyProcess:
    """A running `fastproxy run`. Started in its own session: its pid is its pgid, and a
    supervisor's workers share the group unless they leave it."""

    def __init__(self, workdir: Path, config_text: str, *, name: str = "fastproxy",
                 workers: int | None = None, extra_args: tuple[str, ...] = (),
                 wait: bool = True, ready_timeout: float = 20.0, nofile: int | None = None,
                 env: dict | None = None):
        self.workdir = workdir
        self.name = name
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config_text)
        self.config = tomllib.loads(config_text)
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.check_exit = True  # teardown asserts a clean SIGTERM exit (0)
        args = ["run", "-c", str(self.config_path)]
        if workers is not None:
            args += ["--workers", str(workers)]
        self.proc = subprocess.Popen(
            fastproxy_cmd(*args, *extra_args), cwd=workdir, stdin=subprocess.DEVNULL,
            stdout=open(self.stdout_path, "wb"), stderr=open(self.stderr_path, "wb"),
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            # nofile: a file descriptor limit of the process's own (soft and hard)
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
            if nofile else None,
        )
        if wait:
            self.wait_ready(ready_timeout)

    # ------------------------------------------------------------ addresses
    def listeners(self) -> dict[str, int]:
        out = {}
        for lst in self.config.get("listener", []):
            host, _, port = lst["bind"].rpartition(":")
            out[lst["name"]] = int(port)
        return out

    def port(self, listener: str | None = None) -> int:
        ls = self.listeners()
        return ls[listener] if listener else next(iter(ls.values()))

    def url(self, path: str = "/", listener: str | None = None) -> str:
        return f"http://{LOOPBACK}:{self.port(listener)}{path}"

    # ------------------------------------------------------------ lifecycle
    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_for_ports(self.listeners().values(), proc=self.proc, deadline_s=timeout,
                       what="fastproxy", logs=(self.stderr_path, self.stdout_path))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        """Every live process of this fastproxy (supervisor and workers)."""
        return live_pids_in_group(self.proc.pid)

    def workers(self) -> list[int]:
        return children_of(self.proc.pid)

    def rss(self) -> int:
        """Total VmRSS of all its processes, bytes."""
        return sum(rss_bytes(p) for p in self.pids())

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signal(self, sig=signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the whole group now (after a test already failed on it); teardown will
        not complain about the exit code."""
        self.check_exit = False
        stop_group(self.proc, sig=signal.SIGKILL, grace_s=5)

    def stop(self, grace_s: float = 15.0) -> tuple[int | None, bool, list[int]]:
        """SIGTERM, bounded wait, SIGKILL of the group if needed. Returns (exit code, or
        None if it had to be killed; whether it was still running; pids of its group
        still alive after it exited)."""
        was_running = self.proc.poll() is None
        rc = self.proc.poll()
        leftovers: list[int] = []
        if was_running:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                rc = self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                rc = None
        # workers must not outlive the supervisor (a short grace: they may be exiting now)
        deadline = time.monotonic() + 3
        while (leftovers := live_pids_in_group(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop_group(self.proc, sig=signal.SIGKILL, grace_s=5)
        return rc, was_running, leftovers
