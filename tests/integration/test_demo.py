"""SPEC §1: `fastproxy demo` as a user runs it — a whole mesh on loopback with real
processes. Its plain-line summary (stdout is not a TTY here) must show the 90/10 split
read from the frontend sidecar's fastproxy_requests_total, the ratings circuit opening
and closing again (read from /clusters), failed requests with trace ids (from
/requests/failed) and every workload's mTLS identity (from /certs); SIGINT stops every
process of the demo and removes its directory, exit 0. A port already in use is one
clear line and exit 1.
"""
from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import pytest

from support.demo import Demo, free_block
from support.procs import LOOPBACK, live_pids_in_group

pytestmark = pytest.mark.timeout(90)

IDS = [f"spiffe://demo.local/ns/default/sa/{name}"
       for name in ("frontend", "reviews-v1", "reviews-v2", "ratings")]
# ratings fails 4 s after the load starts; the circuit (open_for 5 s) probes while
# ratings is healthy again, so open -> closed happens about 9 s into the load.
PHASES = ("--ratings-healthy", "4", "--ratings-failing", "4")
WATCH_S = 35            # everything expected must have shown by then (start included)


def summary(lines: list[str]) -> dict:
    """What the plain summary showed so far."""
    seen = {"split": None, "circuit": [], "failed": [], "ids": set(), "spans": 0, "grpc": {}}
    for line in lines:
        m = re.search(r"\] split: reviews-v1 ([\d.]+)% \(([\d,]+)\)\s+reviews-v2 ([\d.]+)% \(([\d,]+)\)", line)
        if m:
            seen["split"] = (float(m[1]), int(m[2].replace(",", "")) + int(m[4].replace(",", "")))
        m = re.search(r"\] circuit ratings: (closed|open|half_open)\b", line)
        if m and (not seen["circuit"] or seen["circuit"][-1] != m[1]):
            seen["circuit"].append(m[1])
        m = re.search(r"\] failed: .*\bcluster ratings (5\d\d) .*\btrace ([0-9a-f]{32})\b", line)
        if m:
            seen["failed"].append((m[1], m[2]))
        m = re.search(r"\] traces: ([\d,]+) spans at the OTLP sink", line)
        if m:
            seen["spans"] = int(m[1].replace(",", ""))
        m = re.search(r"\] gRPC ratings.Get over HTTP/2 \(grpc-status\): (.*)", line)
        if m:
            seen["grpc"] = {k: int(v.replace(",", "")) for k, v in re.findall(r"(\w+) x([\d,]+)", m[1])}
        m = re.search(r"\] identity \S+: (spiffe://\S+)", line)
        if m:
            seen["ids"].add(m[1])
    return seen


def complete(seen: dict) -> bool:
    circuit = seen["circuit"]
    reopened = "open" in circuit and "closed" in circuit[circuit.index("open"):]
    return (seen["split"] is not None and seen["split"][1] >= 200 and reopened
            and bool(seen["failed"]) and seen["ids"] == set(IDS) and seen["spans"] > 0
            and seen["grpc"].get("OK", 0) > 0 and seen["grpc"].get("UNAVAILABLE", 0) > 0)


def test_demo_shows_split_circuit_failures_identities_and_stops_on_sigint():
    base = free_block()
    demo = Demo("--base-port", str(base), "--duration", "60", *PHASES)
    try:
        deadline = time.monotonic() + WATCH_S
        while time.monotonic() < deadline and demo.proc.poll() is None:
            if complete(summary(demo.lines)):
                break
            time.sleep(0.5)
        assert demo.proc.poll() is None, f"the demo ended by itself:\n{demo.output()[-4000:]}"
        seen = summary(demo.lines)
        out = demo.output()[-6000:]

        # the stop is checked whatever the summary showed: it must always work
        pgid = demo.proc.pid
        demo.proc.send_signal(signal.SIGINT)
        rc = demo.proc.wait(timeout=20)
        demo.reader.join(timeout=5)
        left = [p for p in live_pids_in_group(pgid)]
        for _ in range(20):
            if not left:
                break
            time.sleep(0.1)
            left = live_pids_in_group(pgid)
        assert rc == 0, f"exit code {rc} after SIGINT:\n{demo.output()[-3000:]}"
        assert left == [], f"processes of the demo left after SIGINT: {left}"
        workdir = re.search(r"files in (\S+?) \.\.\.", demo.output())
        assert workdir, demo.output()[:2000]
        assert not Path(workdir[1]).exists(), f"{workdir[1]} was not removed"
        assert "Traceback" not in demo.output(), demo.output()[-4000:]

        assert seen["ids"] == set(IDS), f"mTLS identities from /certs: {seen['ids']}\n{out}"
        assert seen["split"] is not None, f"no split shares from fastproxy_requests_total:\n{out}"
        share, total = seen["split"]
        assert total >= 200 and 88 <= share <= 92, f"reviews-v1 {share}% of {total}:\n{out}"
        circuit = seen["circuit"]
        assert "open" in circuit, f"the ratings circuit never showed open: {circuit}\n{out}"
        assert "closed" in circuit[circuit.index("open"):], \
            f"the ratings circuit did not close again after opening: {circuit}\n{out}"
        assert seen["failed"], f"no failed ratings request with a trace id from /requests/failed:\n{out}"
        assert seen["spans"] > 0, f"no spans reached the demo's OTLP sink:\n{out}"
        # gRPC through both sidecars: answered while ratings is healthy, UNAVAILABLE
        # (the app's own trailers-only status, or the proxy's circuit_open) while it fails
        assert seen["grpc"].get("OK", 0) > 0 and seen["grpc"].get("UNAVAILABLE", 0) > 0, \
            f"gRPC calls: {seen['grpc']}\n{out}"
    finally:
        demo.kill()


def test_demo_port_in_use_is_one_line_and_exit_1():
    base = free_block()
    taken = base + 5     # the frontend sidecar's admin port
    with socket.socket() as holder:
        holder.bind((LOOPBACK, taken))
        holder.listen()
        demo = Demo("--base-port", str(base), "--duration", "5")
        try:
            rc = demo.proc.wait(timeout=30)
            demo.reader.join(timeout=5)
        finally:
            demo.kill()
    out = demo.output()
    assert rc == 1, out
    assert f"{LOOPBACK}:{taken}" in out and "Traceback" not in out, out
    assert len(out.strip().splitlines()) == 1, out
    assert live_pids_in_group(demo.proc.pid) == []
