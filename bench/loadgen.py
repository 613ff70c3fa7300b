"""Load generation: wrk for the closed-loop scenarios, h2load for the HTTP/2 ones,
bench.openloop for the fixed rate and for every HTTP/1.1 warm-up (wrk runs whole
seconds only; a warm-up needs less).

Both run pinned to the load CPU and report the same `LoadResult`: completed requests,
requests/s, latency percentiles in microseconds and errors by kind (socket errors and
non-2xx/3xx responses). wrk's numbers come from a Lua `done()` hook that prints JSON
(templates/wrk-report.lua), not from its human-readable text. wrk's latencies are those
of a closed loop; only the fixed-rate scenario measures latency free of coordinated omission.
Must not start or stop contenders.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import Placement, run_to_completion

TEMPLATES = Path(__file__).resolve().parent / "templates"
WRK_REPORT_SCRIPT = TEMPLATES / "wrk-report.lua"
ERROR_KINDS = ("connect", "read", "write", "status", "timeout")


class LoadError(RuntimeError):
    """The load generator itself failed (not the contender's errors, which are counted)."""


@dataclass
class LoadResult:
    requests: int
    duration_s: float
    rps: float
    latency_us: dict[str, float]          # p50, p99, p99.9, max
    errors: dict[str, int] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def run_wrk(wrk: str, placement: Placement, url: str, connections: int, duration_s: float) -> LoadResult:
    seconds = max(1, math.ceil(duration_s))            # wrk accepts whole seconds only
    cmd = placement.pinned([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
                            "-s", str(WRK_REPORT_SCRIPT), url], placement.load_cpu)
    try:
        done = run_to_completion(cmd, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        raise LoadError(f"wrk did not finish within {seconds + 60}s") from None
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            data = json.loads(line[len("WRK_JSON "):])
            break
    else:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LoadError(f"wrk exited with code {done.returncode}: {detail[0]}")
    duration = data["duration_us"] / 1e6
    return LoadResult(
        requests=data["requests"],
        duration_s=duration,
        rps=data["requests"] / duration if duration else 0.0,
        latency_us={k: float(v) for k, v in data["latency_us"].items()},
        errors={k: int(data["errors"].get(k, 0)) for k in ERROR_KINDS},
        extra={"bytes": data["bytes"]},
    )


def run_open_loop(placement: Placement, port: int, path: str, rate: int, connections: int,
                  duration_s: float, tls: bool = False) -> LoadResult:
    cmd = placement.pinned([sys.executable, "-m", "bench.openloop", "--port", str(port), "--path", path,
                            "--rate", str(rate), "--duration", str(duration_s),
                            "--connections", str(connections), *(["--tls"] if tls else [])],
                           placement.load_cpu)
    try:
        done = run_to_completion(cmd, timeout=duration_s + 60, cwd=TEMPLATES.parent.parent)
    except subprocess.TimeoutExpired:
        raise LoadError(f"the open-loop generator did not finish within {duration_s + 60:.0f}s") from None
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise LoadError(f"the open-loop generator exited with code {done.returncode}: {detail[0]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return LoadResult(
        requests=data["requests"],
        duration_s=data["duration_s"],
        rps=data["rps"],
        latency_us=data["latency_us"],
        errors=data["errors"],
        extra={"target_rps": data["target_rps"], "send_lag_us": data["send_lag_us"],
               "max_backlog": data["max_backlog"]},
    )


def run_h2load(h2load: str, placement: Placement, url: str, connections: int, streams: int,
               duration_s: float, workdir: Path, headers: tuple[str, ...] = (),
               data: Path | None = None) -> LoadResult:
    """h2load over HTTP/2 (cleartext, prior knowledge): `connections` x `streams` concurrent
    requests for duration_s. Latency percentiles come from its per-request log (its
    summary gives only mean and spread); errors are failed and non-2xx requests."""
    seconds = max(1, math.ceil(duration_s))
    log = workdir / "h2load.log"
    cmd = [h2load, "-t1", f"-c{connections}", f"-m{streams}", f"-D{seconds}", f"--log-file={log}",
           *[arg for header in headers for arg in ("-H", header)],
           *(["-d", str(data)] if data is not None else []), url]
    try:
        done = run_to_completion(placement.pinned(cmd, placement.load_cpu), timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        raise LoadError(f"h2load did not finish within {seconds + 60}s") from None
    summary = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                        r"(\d+) failed, (\d+) errored, (\d+) timeout", done.stdout)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", done.stdout)
    if done.returncode != 0 or not summary or not codes:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LoadError(f"h2load exited with code {done.returncode}: {detail[0]}")
    durations = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines()
                       if line.count("\t") >= 2)
    log.unlink()
    succeeded, failed, errored, timeout = (int(summary.group(i)) for i in (4, 5, 6, 7))
    bad_status = int(codes.group(3)) + int(codes.group(4))

    def percentile(q: float) -> float:
        return float(durations[min(len(durations) - 1, int(q * len(durations)))]) if durations else 0.0

    return LoadResult(
        requests=succeeded,
        duration_s=float(seconds),
        rps=succeeded / seconds,
        latency_us={"p50": percentile(0.5), "p99": percentile(0.99), "p99.9": percentile(0.999),
                    "max": float(durations[-1]) if durations else 0.0},
        errors={"connect": errored, "read": max(0, failed - errored), "write": 0,
                "status": bad_status, "timeout": timeout},
        extra={"streams_per_connection": streams},
    )
