"""Starting and reliably stopping every process a run needs: contenders, backend, load.

Each process gets its own process group (so nginx/HAProxy workers and fastproxy workers
are signalled with their parent), is pinned to a CPU with taskset when taskset exists,
and writes its output to a log file in the run's work directory. `ProcessRegistry`
remembers everything started and `stop_all()` ends it - SIGTERM to the group, then
SIGKILL - on the normal path, on errors and on Ctrl-C. Children also get SIGTERM if the
harness itself dies (PR_SET_PDEATHSIG).

Must not interpret what the processes print; callers read the logs.
"""
from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
_libc = None


def _die_with_parent() -> None:
    """preexec_fn: the child receives SIGTERM when the harness process goes away."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class Placement:
    """Which CPU each role runs on: the same for every contender of a run."""

    def __init__(self, taskset: str | None):
        self.taskset = taskset
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.enough_cpus = len(cpus) >= 2
        self.load_cpu = cpus[0] if cpus else 0               # load generator + backend
        self.proxy_cpu = cpus[1] if self.enough_cpus else self.load_cpu   # proxy alone

    def describe(self) -> dict:
        if not self.taskset:
            note = "not pinned: taskset not found"
        elif not self.enough_cpus:
            note = "one CPU only: everything shares it"
        else:
            note = "load generator and backend share one CPU, the proxy has the other to itself"
        return {"load_and_backend_cpu": self.load_cpu, "proxy_cpu": self.proxy_cpu,
                "pinned": bool(self.taskset), "note": note}

    def pinned(self, cmd: list[str], cpu: int) -> list[str]:
        return [self.taskset, "-c", str(cpu), *cmd] if self.taskset else list(cmd)


def free_port() -> int:
    """A free loopback port below the ephemeral range, so client sockets never collide with it."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port found in 20000-32000")


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class ManagedProcess:
    def __init__(self, name: str, cmd: list[str], log_path: Path, cwd: Path | None = None,
                 env: dict | None = None):
        self.name = name
        self.cmd = cmd
        self.log_path = log_path
        self.cwd = cwd
        self.env = env
        self.popen: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.cwd, env=self.env, start_new_session=True, preexec_fn=_die_with_parent,
            )

    def exit_code(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_ready(self, port: int, timeout: float) -> str | None:
        """None once `port` accepts a connection; otherwise why it did not (for the report)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return f"{self.name} exited with code {self.exit_code()} before listening: {self.log_tail()}"
            if port_accepts(port):
                # A supervisor may bind the port before its worker is up: make sure the
                # process is still there a moment later (a crash shows here, not mid-run).
                time.sleep(0.2)
                if not self.alive():
                    continue
                return None
            time.sleep(0.05)
        return f"{self.name} did not accept connections on 127.0.0.1:{port} within {timeout:.0f}s: {self.log_tail()}"

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            return "(no output)"
        tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return "; ".join(tail) if tail else "(no output)"

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after `grace` seconds."""
        if self.popen is None:
            return
        pgid = self.popen.pid   # start_new_session: the group id is the leader's pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; its workers may still be finishing.
            if not _group_exists(pgid):
                break
        try:
            self.popen.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class ProcessRegistry:
    """Everything the run started, so it can all be stopped whatever happens."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.running: list[ManagedProcess] = []

    def start(self, name: str, cmd: list[str], cwd: Path | None = None,
              env: dict | None = None) -> ManagedProcess:
        process = ManagedProcess(name, cmd, self.logdir / f"{name}.log", cwd=cwd, env=env)
        self.running.append(process)
        process.start()
        return process

    def stop(self, process: ManagedProcess) -> None:
        process.stop()
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        while self.running:
            self.stop(self.running[-1])


def run_to_completion(cmd: list[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a short-lived tool (wrk, the open-loop generator, fastproxy check) in its own
    process group; kill the group on timeout or Ctrl-C instead of leaving it behind."""
    popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=cwd,
                             start_new_session=True, preexec_fn=_die_with_parent)
    try:
        stdout, stderr = popen.communicate(timeout=timeout)
    except BaseException:
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        popen.communicate()
        raise
    return subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
