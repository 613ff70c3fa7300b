"""Process and port helpers for the end-to-end tests.

Everything is bounded: every wait has a deadline and raises with a useful message when
it passes. Processes are started in their own session (own process group) so that a
test can signal or reap a supervisor together with all its workers.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that this test session
    has not handed out before (so two fixtures never get the same one)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("could not find a free port")


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_ports(ports, *, proc: subprocess.Popen | None = None, deadline_s: float = 15.0,
                   what: str = "process", logs: tuple[Path, ...] = ()) -> None:
    """Wait until every port accepts a TCP connection. Fails early if `proc` exits."""
    deadline = time.monotonic() + deadline_s
    pending = list(ports)
    while pending:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on "
                               f"{pending}\n{_tail_logs(logs)}")
        pending = [p for p in pending if not port_accepts(p)]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not listen on {pending} within {deadline_s}s\n"
                               f"{_tail_logs(logs)}")
        time.sleep(0.05)


def wait_until(predicate, *, deadline_s: float, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; return that value."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {deadline_s}s")
        time.sleep(interval)


def _tail_logs(logs, limit: int = 4000) -> str:
    out = []
    for p in logs:
        try:
            text = Path(p).read_text(errors="replace")
        except OSError:
            continue
        out.append(f"--- {Path(p).name} ---\n{text[-limit:]}")
    return "\n".join(out)


# ---------------------------------------------------------------- /proc inspection

def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces/parens: split after the last ')'
    rest = raw[raw.rindex(")") + 2:].split()
    return rest  # rest[0]=state, rest[1]=ppid, rest[2]=pgrp


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), 0 when it is gone."""
    f = _stat_fields(pid)
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK") if f else 0.0


def live_pids_in_group(pgid: int) -> list[int]:
    """Pids (not zombies) whose process group is `pgid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f and int(f[2]) == pgid and f[0] != "Z":
            pids.append(int(entry))
    return pids


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f and int(f[1]) == pid and f[0] != "Z":
            kids.append(int(entry))
    return kids


def rss_bytes(pid: int) -> int:
    """VmRSS of one process, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tcp_sockets():
    """(local port, remote port, state, inode) of every TCP socket (IPv4 and IPv6)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            yield (int(cols[1].rsplit(":", 1)[1], 16), int(cols[2].rsplit(":", 1)[1], 16),
                   cols[3], cols[9])


def listening_inodes(port: int) -> set[str]:
    """Socket inodes of TCP sockets in LISTEN state on `port`."""
    return {inode for local, _, state, inode in tcp_sockets() if state == "0A" and local == port}


def socket_inodes_of(pid: int) -> set[str]:
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def pids_listening_on(port: int, candidates) -> list[int]:
    inodes = listening_inodes(port)
    return [pid for pid in candidates if socket_inodes_of(pid) & inodes]


# ---------------------------------------------------------------- stopping

def stop_group(proc: subprocess.Popen, *, sig=signal.SIGTERM, grace_s: float = 15.0) -> int | None:
    """Send `sig` to the process, wait up to `grace_s` for it, then SIGKILL its whole
    group. Returns the exit code it had before any SIGKILL (None if it had to be killed)."""
    rc = proc.poll()
    if rc is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            rc = proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            rc = None
    kill_group(proc.pid)
    if proc.poll() is None:
        proc.wait(timeout=5)
    return rc


def kill_group(pgid: int, deadline_s: float = 5.0) -> list[int]:
    """SIGKILL whatever is left in the group; returns the pids that were still alive."""
    left = live_pids_in_group(pgid)
    if left:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError as e:  # pragma: no cover - group already gone
            if e.errno != errno.ESRCH:
                raise
        deadline = time.monotonic() + deadline_s
        while live_pids_in_group(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
    return left
