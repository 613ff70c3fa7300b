"""What a proxy costs the machine, read from /proc: CPU time and peak memory of a process tree.

A contender is a set of root processes (nginx master, haproxy, fastproxy supervisor, two
of them for the two-hop scenario); its cost is the sum over every process under those
roots - workers included. CPU is utime+stime from /proc/<pid>/stat (clock ticks, all
threads of the process); peak memory is VmHWM from /proc/<pid>/status (the process's
resident high-water mark; pages shared between a master and its workers count once per
process, as `ps` would show them). Current memory (`tree_rss_bytes`, for bench.tls_costs)
is VmRSS summed the same way.

A measurement takes a snapshot before and after the measured load: processes present at
both count their difference, processes that appeared during the load count in full.
Must not start, stop or signal anything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def process_tree(roots: list[int]) -> list[int]:
    """The roots and all their descendants that exist now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry))   # fields[1] is ppid
    tree, todo = [], [pid for pid in roots if Path(f"/proc/{pid}").exists()]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pid: int) -> tuple[float, float] | None:
    """(user + system, system) CPU seconds of a process."""
    fields = _stat_fields(pid)
    if not fields:
        return None
    utime, stime = int(fields[11]), int(fields[12])   # stat fields 14 and 15
    return (utime + stime) / CLOCK_TICKS, stime / CLOCK_TICKS


def _status_bytes(pid: int, field: str) -> int | None:
    """A memory field of /proc/<pid>/status (given there in kB), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss_bytes(pid: int) -> int | None:
    return _status_bytes(pid, "VmHWM")


def tree_rss_bytes(roots: list[int]) -> int:
    """Resident memory of the whole tree now: VmRSS summed over its processes."""
    return sum(_status_bytes(pid, "VmRSS") or 0 for pid in process_tree(roots))


@dataclass
class TreeSnapshot:
    cpu_by_pid: dict[int, float]
    peak_rss_by_pid: dict[int, int]
    system_by_pid: dict[int, float]

    @classmethod
    def take(cls, roots: list[int]) -> "TreeSnapshot":
        cpu, rss, system = {}, {}, {}
        for pid in process_tree(roots):
            seconds, peak = cpu_seconds(pid), peak_rss_bytes(pid)
            if seconds is not None:
                cpu[pid], system[pid] = seconds
            if peak is not None:
                rss[pid] = peak
        return cls(cpu, rss, system)

    @property
    def processes(self) -> int:
        return len(self.cpu_by_pid)

    @property
    def peak_rss(self) -> int:
        return sum(self.peak_rss_by_pid.values())


def cpu_used_between(before: TreeSnapshot, after: TreeSnapshot, system: bool = False) -> float:
    """CPU seconds the tree used between two snapshots (new processes count in full);
    with `system`, only those spent in the kernel."""
    was, now = (before.system_by_pid, after.system_by_pid) if system else (before.cpu_by_pid, after.cpu_by_pid)
    return sum(seconds - was.get(pid, 0.0) for pid, seconds in now.items())
