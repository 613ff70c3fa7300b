"""`python -m bench.tls_costs`: two TLS costs the `tls` scenario's req/s does not show.

fastproxy, nginx and HAProxy are deployed exactly as in the `tls` scenario (a TLS
listener with the bench certificates, plain HTTP to the nginx `return 200` backend) and
pinned as bench.runner pins them: this process, the load and the backend on one CPU, the
proxy alone on the other. Then, in this order:

  handshakes   full TLS handshakes per CPU-second of the proxy. `openssl s_time -new`
               (every connection a full handshake, no request) runs T seconds per round,
               rounds alternating the contenders (A B C, A B C); the proxy tree's
               utime+stime around it comes from /proc (bench.procstat). Also connections
               per wall second. Median over rounds.
  idle memory  KiB of proxy memory per idle keep-alive TLS client connection: N
               connections from this process (asyncio, certificate not verified), one
               `GET /` answered on each, then the tree's VmRSS with all of them open and
               idle minus its VmRSS before opening, divided by the connections open.

The memory comes second so that it sees a proxy that has already done thousands of
handshakes: one-time lazy set-up is not charged to the idle connections.
Writes <results-dir>/<timestamp>-tls-costs.md and prints the same table. Owns these two
measurements only: deploying, starting, checking (bench.verify) and stopping a contender
is bench.runner's, reused here so both tools measure the same proxies.

    python -m bench.tls_costs [--quick] [--rounds 3] [--time 5] [--connections 2000]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import report
from bench.backend import BackendError, start_backend
from bench.certs import make_certs
from bench.contenders import Contender, DeployContext, all_contenders
from bench.openloop import _client_tls_context, parse_response
from bench.processes import Placement, ProcessRegistry, run_to_completion
from bench.procstat import TreeSnapshot, cpu_used_between, tree_rss_bytes
from bench.runner import (DEFAULT_RESULTS_DIR, Progress, Running, _dead_process, _interrupt_on_sigterm,
                          _raise_open_files_limit, _ready, _start, _stop)
from bench.scenarios import BY_NAME
from bench.tools import Tool, find_tool, git_revision, load_average, machine_description

SCENARIO = BY_NAME["tls"]
CONTENDERS = ("fastproxy", "nginx", "haproxy")
DEFAULTS = {"rounds": 3, "time": 5, "connections": 2000}
QUICK = {"rounds": 1, "time": 2, "connections": 500}
# Connections being opened at once. Few, like the scenarios' 32: each one's GET is
# forwarded, and a burst of 2,000 would leave the proxy holding as many upstream
# connections, whose memory is not the idle client connections'.
OPENING_CONCURRENCY = 32
IO_TIMEOUT_S = 10
SETTLE_S = 0.5            # after the last response, before reading RSS: let the proxy go idle
# s_time's summary: "693 connections in 0.49s; 1414.29 connections/user sec, bytes read 0"
S_TIME_SUMMARY = re.compile(r"^(\d+) connections in [\d.]+s;", re.M)

HANDSHAKES = report.Metric("handshakes_per_cpu_s", "full handshakes / proxy CPU-s", True, "count")
WALL = report.Metric("handshakes_per_wall_s", "handshakes / wall-s", True, "count")
MEMORY = report.Metric("kib_per_connection", "proxy KiB / idle TLS connection")


class MeasureError(RuntimeError):
    """A measurement of one contender could not be made; the message says why."""


# ---- the two measurements ----------------------------------------------------------------

def handshake_round(openssl: str, placement: Placement, deployed: Running, seconds: int) -> dict:
    """One `openssl s_time -new` run against the contender, and the proxy CPU it cost."""
    cmd = placement.pinned([openssl, "s_time", "-connect", f"127.0.0.1:{deployed.deployment.port}",
                            "-new", "-time", str(seconds)], placement.load_cpu)
    before = TreeSnapshot.take(deployed.root_pids)
    started = time.monotonic()
    try:
        done = run_to_completion(cmd, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        raise MeasureError(f"openssl s_time did not finish within {seconds + 30}s") from None
    wall_s = time.monotonic() - started
    after = TreeSnapshot.take(deployed.root_pids)
    match = S_TIME_SUMMARY.search(done.stdout)
    connections = int(match.group(1)) if match else 0
    if done.returncode != 0 or not connections:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise MeasureError(f"openssl s_time exited with code {done.returncode} after "
                           f"{connections} connections: {last[0]}")
    cpu_s = cpu_used_between(before, after)
    return {"connections": connections, "wall_s": wall_s, "proxy_cpu_s": cpu_s,
            "handshakes_per_cpu_s": connections / cpu_s if cpu_s else None,
            "handshakes_per_wall_s": connections / wall_s}


async def _open_one(port: int, context: ssl.SSLContext, request: bytes, gate: asyncio.Semaphore,
                    errors: dict[str, int]):
    """A TLS connection that has had one request answered, or None (counted in errors)."""
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=context), IO_TIMEOUT_S)
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            errors["connect"] += 1
            return None
        try:
            writer.write(request)
            buf = bytearray()
            while (parsed := parse_response(buf)) is None:
                chunk = await asyncio.wait_for(reader.read(65536), IO_TIMEOUT_S)
                if not chunk:
                    raise ConnectionError("closed before the response was complete")
                buf += chunk
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ValueError):
            errors["read"] += 1
            writer.transport.abort()
            return None
        if parsed[1] != 200:
            errors["status"] += 1
        return reader, writer


async def _close_all(connections: list) -> None:
    """Close politely (TLS close_notify), but do not wait on a proxy that does not answer."""
    for _, writer in connections:
        writer.close()
    waits = [asyncio.ensure_future(writer.wait_closed()) for _, writer in connections]
    if waits:
        await asyncio.wait(waits, timeout=IO_TIMEOUT_S)
    for (_, writer), wait in zip(connections, waits):
        if not wait.done():
            writer.transport.abort()
            wait.cancel()
        elif not wait.cancelled():
            wait.exception()        # a reset on close is fine; do not let asyncio log it


async def _idle_memory(roots: list[int], port: int, count: int) -> dict:
    request = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"User-Agent: fastproxy-bench-tls-costs\r\n\r\n").encode()
    context, gate = _client_tls_context(), asyncio.Semaphore(OPENING_CONCURRENCY)
    errors = {"connect": 0, "read": 0, "status": 0}
    before = tree_rss_bytes(roots)
    opened = await asyncio.gather(*(_open_one(port, context, request, gate, errors) for _ in range(count)))
    connections = [c for c in opened if c is not None]
    try:
        await asyncio.sleep(SETTLE_S)
        after = tree_rss_bytes(roots)
        # what the proxy closed meanwhile no longer costs it anything: do not divide by it
        still_open = sum(not (reader.at_eof() or reader.exception() or writer.is_closing())
                         for reader, writer in connections)
    finally:
        await _close_all(connections)
    if not still_open:
        raise MeasureError(f"no connection stayed open (errors: {errors})")
    return {"connections": count, "open": still_open, "errors": errors, "rss_before": before,
            "rss_after": after, "kib_per_connection": (after - before) / 1024 / still_open}


def idle_memory(deployed: Running, count: int) -> dict:
    return asyncio.run(_idle_memory(deployed.root_pids, deployed.deployment.port, count))


# ---- the run -------------------------------------------------------------------------------

def _new_entry(status: str = "ok", message: str | None = None) -> dict:
    return {"status": status, "message": message, "note": "", "rounds": [], "handshakes": None,
            "memory": None, "problems": []}


def deploy(contenders: dict[str, Contender], ctx: DeployContext, registry: ProcessRegistry,
           placement: Placement, entries: dict[str, dict], progress: Progress) -> dict[str, Running]:
    """Start every contender on the `tls` deployment and wait until it passes bench.verify."""
    running: dict[str, Running] = {}
    for name, contender in contenders.items():
        problem = contender.problem()
        if problem:
            entries[name] = _new_entry("not available", problem)
            continue
        entries[name] = _new_entry()
        started = _start(SCENARIO, contender, ctx, registry, placement, entries[name])
        if started:
            running[name] = started
    for name, started in list(running.items()):
        if not _ready(SCENARIO, started, ctx, registry, entries[name]):
            del running[name]
    for name, entry in entries.items():
        if name not in running:
            progress.say(f"{name:<9}  {report.status_text(entry)}")
    return running


def measure_handshakes(running: dict[str, Running], openssl: Tool, placement: Placement, rounds: int,
                       seconds: int, entries: dict[str, dict], progress: Progress) -> None:
    if not openssl.found:
        progress.say(f"handshakes  not available: {openssl.missing_message()}")
        for name in running:
            entries[name]["problems"].append(f"handshakes not available: {openssl.missing_message()}")
        return
    measuring = list(running)
    for number in range(1, rounds + 1):
        for name in list(measuring):
            label = f"handshakes  round {number}/{rounds}  {name:<9}"
            try:
                figures = handshake_round(openssl.path, placement, running[name], seconds)
            except MeasureError as exc:
                entries[name]["problems"].append(f"handshakes, round {number}: {exc}")
                progress.say(f"{label}  FAILED: {exc}")
                measuring.remove(name)
                continue
            entries[name]["rounds"].append(figures)
            progress.say(f"{label}  {figures['connections']:,} connections, "
                         f"{figures['proxy_cpu_s']:.2f} s proxy CPU")
    for name in running:
        entries[name]["handshakes"] = {
            m.key: report.figure([r[m.key] for r in entries[name]["rounds"] if r.get(m.key) is not None])
            for m in (HANDSHAKES, WALL)}


def measure_memory(running: dict[str, Running], count: int, entries: dict[str, dict],
                   progress: Progress) -> None:
    for name, deployed in running.items():
        try:
            memory = idle_memory(deployed, count)
        except MeasureError as exc:
            entries[name]["problems"].append(f"idle memory: {exc}")
            progress.say(f"idle memory  {name:<9}  FAILED: {exc}")
            continue
        entries[name]["memory"] = memory
        progress.say(f"idle memory  {name:<9}  {memory['open']:,} open, "
                     f"{(memory['rss_after'] - memory['rss_before']) / 2**20:+.1f} MiB")
        if memory["open"] < count or any(memory["errors"].values()):
            entries[name]["problems"].append(
                f"idle memory: {memory['open']:,} of {count:,} connections open when measured "
                f"(errors: {memory['errors']})")


def check_alive(running: dict[str, Running], entries: dict[str, dict]) -> None:
    """A proxy that died during the run: its figures stay, but say so."""
    for name, deployed in running.items():
        problem = _dead_process(deployed)
        if problem:
            entries[name].update(status="failed", message=f"during the run: {problem}")


# ---- the report ----------------------------------------------------------------------------

def render_markdown(run: dict) -> str:
    settings, machine, git = run["settings"], run["machine"], run["git"]
    commit = (git["commit"] or "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    placement = run["placement"]
    lines = [
        f"# fastproxy TLS costs — {run['started_at']}", "",
        f"- command: `{run['command']}` ({settings['rounds']} round(s) of `openssl s_time -new "
        f"-time {settings['time']}` per contender; {settings['connections']:,} idle keep-alive TLS "
        f"connections per contender)",
        f"- machine: {machine['cpu_model']}, {machine['cores']} cores, {machine['os']}, "
        f"Linux {machine['kernel']}, Python {machine['python']}",
        f"- fastproxy commit: {commit}",
        f"- tools: {', '.join(run['tools'])}",
        f"- placement: {placement['note']} (load + backend: CPU {placement['load_and_backend_cpu']}, "
        f"proxy: CPU {placement['proxy_cpu']})",
        f"- backend: {run['backend']}",
        f"- load average (1 min) at start / end: {report.format_load(run['load_average_at_start'])} / "
        f"{report.format_load(run['load_average_at_end'])}",
    ]
    if run["error"]:
        lines += ["", f"**The run stopped early:** {run['error']}"]
    lines += ["", f"| contender | {HANDSHAKES.label} | {WALL.label} | {MEMORY.label} |", "|---|---|---|---|"]
    notes = []
    for name, entry in run["contenders"].items():
        handshakes, memory = entry["handshakes"] or {}, entry["memory"]
        if handshakes.get(HANDSHAKES.key) or handshakes.get(WALL.key) or memory:
            cells = [report.format_figure(handshakes.get(HANDSHAKES.key), HANDSHAKES),
                     report.format_figure(handshakes.get(WALL.key), WALL),
                     report.format_value(memory["kib_per_connection"] if memory else None, MEMORY)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
            if entry["status"] != "ok":
                notes.append(f"- {name}: {report.status_text(entry)}")
        else:
            lines.append(f"| {name} | {report.status_text(entry).replace('|', chr(92) + '|')} | | |")
        notes += [f"- {name}: {problem}" for problem in entry["problems"]]
        if entry.get("note"):
            notes.append(f"- {name}: {entry['note']}")
    lines += [""] + (notes + [""] if notes else [])
    lines += [
        "How measured (median over rounds, with (min–max) when rounds differ; rounds alternate contenders):",
        "",
        f"- handshakes: `openssl s_time -connect 127.0.0.1:PORT -new -time {settings['time']}` pinned to the "
        "load CPU: every connection a full handshake, no request. Proxy CPU is utime+stime of all its "
        "processes from /proc around the run; wall-s is the whole s_time run, whose one client "
        "connection at a time may be the limit rather than the proxy (then proxy CPU stays below "
        "wall time). Higher is better.",
        f"- idle memory: {settings['connections']:,} TLS connections from one asyncio client "
        f"({OPENING_CONCURRENCY} being opened at a time), one keep-alive `GET /` answered on each; "
        "VmRSS summed over the proxy's processes with all of them open and idle, minus the same before "
        "opening, ÷ the connections still open. Measured after the handshake rounds; includes shared "
        "memory the proxy touched (nginx's shared TLS session cache). Lower is better.",
    ]
    return "\n".join(lines) + "\n"


# ---- command line --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tls_costs",
        description="Full TLS handshakes per proxy CPU-second and memory per idle TLS connection: "
                    "fastproxy, nginx and HAProxy on the `tls` scenario's deployment.")
    parser.add_argument("--rounds", type=int, help=f"handshake rounds per contender (default {DEFAULTS['rounds']})")
    parser.add_argument("--time", type=int, help=f"seconds of each s_time run (default {DEFAULTS['time']})")
    parser.add_argument("--connections", type=int,
                        help=f"idle TLS connections per contender (default {DEFAULTS['connections']})")
    parser.add_argument("--contender", action="append", metavar="NAME[,NAME]",
                        help=f"measure only these: {', '.join(CONTENDERS)}")
    parser.add_argument("--quick", action="store_true",
                        help=", ".join(f"{k} {v}" for k, v in QUICK.items()) + " (explicit flags win)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR,
                        help="where <timestamp>-tls-costs.md goes (default bench/results)")
    return parser


def parse_settings(argv: list[str] | None) -> tuple[dict, list[str], Path]:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else DEFAULTS)
    for key in settings:
        value = getattr(args, key)
        if value is not None:
            if value <= 0:
                parser.error(f"--{key} must be positive")
            settings[key] = value
    names = [n.strip() for value in args.contender or [] for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    return settings, list(dict.fromkeys(names)) or list(CONTENDERS), args.results_dir


def main(argv: list[str] | None = None) -> int:
    settings, names, results_dir = parse_settings(argv)
    progress = Progress()
    tools = {name: find_tool(name) for name in ("nginx", "haproxy", "taskset", "openssl")}
    placement = Placement(tools["taskset"].path)
    contenders = {n: c for n, c in all_contenders(tools, 1).items() if n in names}
    fastproxy_version = contenders["fastproxy"].version() if "fastproxy" in contenders else None
    run = {
        "started_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": "python -m bench.tls_costs" + "".join(
            f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv)),
        "settings": settings, "machine": machine_description(), "git": git_revision(),
        "tools": [t for t in [fastproxy_version] if t] + [tool.short_version for tool in tools.values()],
        "placement": placement.describe(), "backend": None, "contenders": {}, "error": None,
        "load_average_at_start": load_average(), "load_average_at_end": None,
    }
    progress.say(f"TLS costs of {', '.join(contenders)}: {settings['rounds']} round(s) of "
                 f"{settings['time']} s s_time, {settings['connections']:,} idle connections")
    workdir = Path(tempfile.mkdtemp(prefix="fastproxy-tls-costs-"))
    workdir.chmod(0o755)    # nginx workers may run as another user
    (workdir / "logs").mkdir()
    registry = ProcessRegistry(workdir / "logs")
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    interrupted = False
    try:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {placement.load_cpu})   # the asyncio client too: off the proxy's CPU
        _raise_open_files_limit()           # the idle connections, here and in the proxy
        backend = start_backend(registry, placement, tools["nginx"], workdir)
        run["backend"] = backend.description
        ctx = DeployContext(workdir=workdir, backend=backend, certs=make_certs(workdir / "certs"))
        running = deploy(contenders, ctx, registry, placement, run["contenders"], progress)
        measure_handshakes(running, tools["openssl"], placement, settings["rounds"], settings["time"],
                           run["contenders"], progress)
        measure_memory(running, settings["connections"], run["contenders"], progress)
        check_alive(running, run["contenders"])
        for deployed in running.values():
            _stop(deployed, registry)
    except KeyboardInterrupt:
        interrupted = True
        run["error"] = "interrupted: the figures are partial"
    except BackendError as exc:
        run["error"] = str(exc)
    finally:
        registry.stop_all()
        signal.signal(signal.SIGTERM, previous_sigterm)
        shutil.rmtree(workdir, ignore_errors=True)
    run["load_average_at_end"] = load_average()
    markdown = render_markdown(run)
    path = report.dated_results_file(results_dir, "tls-costs")
    path.write_text(markdown)
    print("\n" + markdown)
    print(f"results: {path}")
    return 130 if interrupted else 1 if run["error"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
