"""`fastproxy demo`: a whole mesh on loopback in one command (docs/operations.md).

Owns the demo's orchestration: a throw-away directory with a mesh CA made by our own CA
code and an SVID per workload; the demo apps (fastproxy.demo_apps, one helper process);
one real sidecar per app (`python -m fastproxy run -c <generated toml>`), mTLS between
them, a 90/10 split of `reviews`, a circuit breaker on `ratings` (which fails in phases),
tracing exported to a small OTLP sink; a load generator; and the live summary, whose
view of the mesh comes from what any operator can read: the sidecars' admin APIs
(the admin API: /metrics, /clusters, /requests/failed, /certs), whose dashboards (GET /)
it names. Ctrl-C or SIGTERM stops every child (SIGTERM, then SIGKILL after a grace) and
removes the directory.

    load ──> frontend sidecar :B+0 (ingress) ──> frontend app
             frontend app ──> frontend sidecar :B+1 (outbound, Host: reviews | ratings)
                 ──mTLS──> reviews-v1 sidecar :B+2 ──> reviews-v1 app   (90 %)
                 ──mTLS──> reviews-v2 sidecar :B+3 ──> reviews-v2 app   (10 %)
                 ──mTLS──> ratings sidecar    :B+4 ──> ratings app      (circuit breaker)
    gRPC calls ──> frontend sidecar :B+1 (h2c) ──mTLS, HTTP/2──> ratings sidecar ──> ratings gRPC
"""
from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastproxy.demo_apps import GRPC_METHOD, LOOPBACK, HttpClient, grpc_call

TRUST_DOMAIN = "demo.local"
WORKLOADS = ("frontend", "reviews-v1", "reviews-v2", "ratings")
GRACE = 5.0             # seconds a child has to exit after SIGTERM before SIGKILL
STARTUP_TIMEOUT = 30.0  # seconds for every sidecar to be ready
REFRESH = 1.0           # seconds between summary refreshes

# Every port is base + offset; one contiguous block, so a single --base-port moves it all.
PORTS = {
    "ingress": (0, "frontend sidecar, ingress listener (plain HTTP): the mesh's front door"),
    "outbound": (1, "frontend sidecar, outbound listener (the frontend app calls reviews, ratings)"),
    "inbound:reviews-v1": (2, "reviews-v1 sidecar, mTLS inbound listener"),
    "inbound:reviews-v2": (3, "reviews-v2 sidecar, mTLS inbound listener"),
    "inbound:ratings": (4, "ratings sidecar, mTLS inbound listener"),
    "admin:frontend": (5, "frontend sidecar, admin API"),
    "admin:reviews-v1": (6, "reviews-v1 sidecar, admin API"),
    "admin:reviews-v2": (7, "reviews-v2 sidecar, admin API"),
    "admin:ratings": (8, "ratings sidecar, admin API"),
    "otlp": (9, "the demo's OTLP trace sink"),
    "app:frontend": (10, "frontend app"),
    "app:reviews-v1": (11, "reviews-v1 app"),
    "app:reviews-v2": (12, "reviews-v2 app"),
    "app:ratings": (13, "ratings app"),
    "grpc:ratings": (14, "ratings app, gRPC service (HTTP/2)"),
}
PORT_SPAN = len(PORTS)


def spiffe_id(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{name}"


def _q(text: str) -> str:
    """A TOML basic string (JSON's escaping is a subset of TOML's)."""
    return json.dumps(text)


# --- configuration -----------------------------------------------------------------------

GRPC_NAMES = {0: "OK", 4: "DEADLINE_EXCEEDED", 14: "UNAVAILABLE"}


def sidecar_config(name: str, port: dict[str, int], certs: Path, logs: Path) -> str:
    """The TOML of one workload's sidecar."""
    me = spiffe_id(name)
    target = f"otlp+http://{LOOPBACK}:{port['otlp']}"
    # the frontend's sidecar sees every request (ingress and outbound): its log is the one
    # worth tailing; the others would only fill the temporary directory
    access_log = _q(str(logs / "frontend-access.log")) if name == "frontend" else '"off"'
    head = f"""\
# fastproxy demo: the sidecar of {name} (generated)
[proxy]
admin = "{LOOPBACK}:{port[f'admin:{name}']}"
drain_timeout = "2s"                  # Ctrl-C should not keep the viewer waiting
access_log = {access_log}

[identity]
id = "{me}"
cert = {_q(str(certs / name / 'cert.pem'))}
key = {_q(str(certs / name / 'key.pem'))}
trust = {_q(str(certs / name / 'trust.pem'))}

[tracing]
sample = 1.0                          # a demo: every request gets a trace
export = "{target}"
"""
    if name != "frontend":
        grpc_route = grpc_cluster = ""
        if name == "ratings":
            grpc_route = f"""
  [[listener.route]]                  # gRPC calls: HTTP/2 to the app's gRPC port
  name = "ratings-grpc"
  prefix = "{GRPC_METHOD.rsplit('/', 1)[0]}/"
  cluster = "grpc"
"""
            grpc_cluster = f"""
[cluster.grpc]
endpoints = ["{LOOPBACK}:{port['grpc:ratings']}"]
protocol = "http2"
"""
        return head + f"""
[[listener]]                          # only the frontend may call {name}, and only over mTLS
name = "inbound"
bind = "{LOOPBACK}:{port[f'inbound:{name}']}"
tls = "mtls"
allow = ["{spiffe_id('frontend')}"]
{grpc_route}
  [[listener.route]]
  cluster = "app"

[cluster.app]
endpoints = ["{LOOPBACK}:{port[f'app:{name}']}"]
{grpc_cluster}"""

    def mtls_cluster(cluster: str) -> str:
        return f"""
[cluster.{cluster}]
endpoints = ["{LOOPBACK}:{port[f'inbound:{cluster}']}"]
tls = "mtls"
peer = "{spiffe_id(cluster)}"         # the server must prove it is {cluster}
"""

    return head + f"""
[[listener]]                          # the mesh's front door: the load generator and curl
name = "ingress"
bind = "{LOOPBACK}:{port['ingress']}"
direction = "inbound"

  [[listener.route]]
  cluster = "app"

[[listener]]                          # what the frontend app calls: Host picks the service
name = "outbound"
bind = "{LOOPBACK}:{port['outbound']}"

  [[listener.route]]                  # canary by header: x-canary: 1 always gets v2
  name = "reviews-canary"
  host = "reviews"
  headers = {{ "x-canary" = "1" }}
  cluster = "reviews-v2"

  [[listener.route]]                  # everyone else: 90/10, decided per request
  name = "reviews"
  host = "reviews"
  split = [ {{ cluster = "reviews-v1", weight = 90 }}, {{ cluster = "reviews-v2", weight = 10 }} ]
  timeout = "2s"

  [[listener.route]]
  name = "ratings"
  host = "ratings"
  cluster = "ratings"
  timeout = "1s"

[cluster.app]
endpoints = ["{LOOPBACK}:{port['app:frontend']}"]
{mtls_cluster('reviews-v1')}{mtls_cluster('reviews-v2')}{mtls_cluster('ratings')}
  [cluster.ratings.circuit_breaker]   # short times, so the whole cycle shows within a minute
  max_failures = 3                    # more than 3 failures ...
  window = "10s"                      # ... within 10 s open the circuit ...
  open_for = "5s"                     # ... for 5 s; then one probe:
  half_open_requests = 1              # success closes it, failure re-opens it
"""


def make_mesh(workdir: Path, port: dict[str, int]) -> None:
    """The CA, one SVID per workload, and the sidecar configs, under `workdir`."""
    from fastproxy.identity.ca import init_ca, issue_files

    ca = init_ca(workdir / "ca", TRUST_DOMAIN)
    (workdir / "logs").mkdir()
    for name in WORKLOADS:
        issue_files(ca, spiffe_id(name), workdir / "certs" / name, ttl=24 * 3600)
        (workdir / f"{name}.toml").write_text(
            sidecar_config(name, port, workdir / "certs", workdir / "logs"))


def busy_port(port: dict[str, int]) -> tuple[int, str, str] | None:
    """The first port something else holds: (port, what it is for, the error)."""
    for key, (_, what) in PORTS.items():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the servers will
            try:
                s.bind((LOOPBACK, port[key]))
            except OSError as exc:
                return port[key], what, exc.strerror or str(exc)
    return None


# --- children ------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """In the child: get SIGTERM if the demo dies without cleaning up (e.g. SIGKILL), so no
    sidecar outlives it."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except Exception:
        pass


class Child:
    def __init__(self, name: str, argv: list[str], log: Path):
        self.name = name
        self.log = log
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # the children must import this very fastproxy, installed or not
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=env,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in text[-lines:])


def stop_children(children: list[Child]) -> None:
    """SIGTERM every child still running; SIGKILL those still there after GRACE."""
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    for child in children:
        try:
            child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"fastproxy demo: {child.name} did not stop within {GRACE:.0f} s; killed",
                  file=sys.stderr)
            child.proc.kill()
            child.proc.wait()


# --- reading the admin APIs ----------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition: (name, labels, value)."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), value))
    return out


def requests_by(samples, listener: str, cluster: str) -> dict[str, int]:
    """fastproxy_requests_total of one listener and cluster, by code."""
    codes: dict[str, int] = collections.Counter()
    for name, labels, value in samples:
        if (name == "fastproxy_requests_total" and labels.get("listener") == listener
                and labels.get("cluster") == cluster):
            codes[labels.get("code", "?")] += int(value)
    return codes


def _clock(rfc3339: str) -> str:
    """12:00:01.234 of an RFC 3339 time."""
    return rfc3339.partition("T")[2].rstrip("Z")[:12] if "T" in rfc3339 else rfc3339


def _n(value: int) -> str:
    return f"{value:,}"


class Snapshot:
    """What one refresh read; None (or a reason) where an endpoint gave nothing usable."""
    split: dict[str, int] | None = None
    ratings_codes: dict[str, int] | None = None
    circuit: dict | None = None
    failed: list[dict] | None = None
    failed_note = ""
    phase: dict | None = None
    sink: dict | None = None


class Stats:
    """The load generator's view: what the frontend answered."""

    def __init__(self):
        self.status: collections.Counter[int] = collections.Counter()
        self.versions: collections.Counter[str] = collections.Counter()
        self.degraded = 0
        self.errors = 0
        self.last_error = ""
        self.grpc: collections.Counter[int] = collections.Counter()   # by grpc-status
        self.grpc_errors = 0

    @property
    def answered(self) -> int:
        return sum(self.status.values())


# --- the demo -------------------------------------------------------------------------------

class Demo:
    def __init__(self, args, port: dict[str, int], workdir: Path, children: list[Child]):
        self.args = args
        self.port = port
        self.workdir = workdir
        self.children = children
        self.tty = sys.stdout.isatty() and not args.plain
        self.admin = {name: HttpClient(port[f"admin:{name}"]) for name in WORKLOADS}
        self.ratings_app = HttpClient(port["app:ratings"])
        self.frontend_app = HttpClient(port["app:frontend"])
        self.sink = HttpClient(port["otlp"])
        self.stats = Stats()
        self.started = 0.0
        self.identities: list[str] = []
        self.events: collections.deque[str] = collections.deque(maxlen=8)
        self.seen_failed: collections.deque[tuple] = collections.deque(maxlen=1000)
        self.last_circuit: dict | None = None
        self.last_phase: str | None = None
        self.rate_mark = (0.0, 0)
        self.next_slot = 0.0          # the load generator's next request time

    # -- the whole run --
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:   # not under nohup
            loop.add_signal_handler(signal.SIGHUP, stop.set)        # the terminal closed
        if not await self.wait_ready(stop):
            return 0 if stop.is_set() else 1
        self.started = self.next_slot = loop.time()
        load = [asyncio.create_task(self.load_worker()) for _ in range(self.load_connections())]
        if self.args.rate > 0:
            load.append(asyncio.create_task(self.grpc_worker()))
        print(self.intro() + "\n", flush=True)
        try:
            while not stop.is_set():
                dead = self.dead_child()
                if dead is not None:
                    print(f"fastproxy demo: {dead.name} exited unexpectedly (code {dead.proc.returncode}); "
                          f"its last lines:\n{dead.tail()}", file=sys.stderr)
                    return 1
                if self.args.duration and loop.time() - self.started >= self.args.duration:
                    break
                snap = await self.poll()
                self.show(snap)
                try:
                    await asyncio.wait_for(stop.wait(), REFRESH)
                except asyncio.TimeoutError:
                    pass
        finally:
            for task in load:
                task.cancel()
            await asyncio.gather(*load, return_exceptions=True)
        print("fastproxy demo: stopping" + (" (Ctrl-C)" if stop.is_set() else ""), flush=True)
        return 0

    def dead_child(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() is not None), None)

    async def wait_ready(self, stop: asyncio.Event) -> bool:
        """Every sidecar's /ready is 200 and every app answers; False (with the reason
        printed) if a child exits or the deadline passes."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        print(f"fastproxy demo: starting 4 sidecars and the demo apps (files in {self.workdir}) ...",
              flush=True)
        while not stop.is_set():
            dead = self.dead_child()
            if dead is not None:
                print(f"fastproxy demo: {dead.name} exited during startup (code {dead.proc.returncode}):\n"
                      f"{dead.tail()}", file=sys.stderr)
                return False
            checks = [self.admin[name].get("/ready", timeout=1) for name in WORKLOADS]
            checks += [self.ratings_app.get("/_demo/phase", timeout=1), self.sink.get("/traces", timeout=1),
                       self.frontend_app.get("/favicon.ico", timeout=1)]
            results = await asyncio.gather(*checks, return_exceptions=True)
            if all(not isinstance(r, BaseException) and r.status in (200, 404) for r in results[4:]) \
                    and all(not isinstance(r, BaseException) and r.status == 200 for r in results[:4]):
                await self.read_identities()
                return True
            if time.monotonic() > deadline:
                # children: the apps, then the sidecars in WORKLOADS order (see main)
                late = [child for child, r in zip(self.children[1:], results)
                        if isinstance(r, BaseException) or r.status != 200] or self.children[:1]
                print(f"fastproxy demo: not ready within {STARTUP_TIMEOUT:.0f} s: "
                      + "; ".join(f"{c.name}, its last lines:\n{c.tail()}" for c in late), file=sys.stderr)
                return False
            await asyncio.sleep(0.1)
        return False

    async def read_identities(self) -> None:
        """GET /certs of every sidecar: who each one is in the mesh."""
        results = await asyncio.gather(*(self.admin[n].get("/certs") for n in WORKLOADS),
                                       return_exceptions=True)
        self.identities = []
        for name, r in zip(WORKLOADS, results):
            try:
                ident = r.json()["identity"]
                self.identities.append(f"identity {name}: {ident['id']}  serial {ident['serial'][:16]}...  "
                                       f"valid until {ident['not_after']}")
            except Exception:
                self.identities.append(f"identity {name}: n/a (GET /certs gave nothing usable)")

    # -- load --
    def load_connections(self) -> int:
        return 0 if self.args.rate <= 0 else max(2, min(32, self.args.rate // 20))

    async def load_worker(self) -> None:
        """Requests to the frontend's ingress at an even pace; all workers share one
        schedule (slot k at start + k/rate); after a stall they catch up on at most one
        second of it, not on everything missed."""
        loop = asyncio.get_running_loop()
        client = HttpClient(self.port["ingress"])
        interval = 1.0 / self.args.rate
        try:
            while True:
                slot = self.next_slot
                self.next_slot = max(slot, loop.time() - 1.0) + interval
                if slot > loop.time():
                    await asyncio.sleep(slot - loop.time())
                try:
                    r = await client.get("/", timeout=5)
                except (OSError, asyncio.TimeoutError, ValueError) as exc:
                    self.stats.errors += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"[:80]
                    client.close()
                    await asyncio.sleep(0.2)
                    continue
                self.stats.status[r.status] += 1
                if r.status == 200:
                    self.stats.versions[r.headers.get("x-demo-reviews", "?")] += 1
                    self.stats.degraded += r.headers.get("x-demo-ratings") == "unavailable"
        finally:
            client.close()

    async def grpc_worker(self) -> None:
        """gRPC calls to ratings, a few a second, through the frontend sidecar (h2c in,
        HTTP/2 over mTLS to the ratings sidecar, HTTP/2 to the app's gRPC service)."""
        while True:
            try:
                status, _ = await grpc_call(self.port["outbound"], "ratings")
                self.stats.grpc[status] += 1
            except (OSError, asyncio.TimeoutError, ConnectionError):
                self.stats.grpc_errors += 1
            await asyncio.sleep(0.25)

    # -- reading --
    async def poll(self) -> Snapshot:
        fe = self.admin["frontend"]
        metrics, clusters, failed, phase, sink = await asyncio.gather(
            fe.get("/metrics"), fe.get("/clusters"), fe.get("/requests/failed"),
            self.ratings_app.get("/_demo/phase"), self.sink.get("/traces"), return_exceptions=True)
        snap = Snapshot()
        if not isinstance(metrics, BaseException) and metrics.status == 200:
            samples = parse_metrics(metrics.body.decode("utf-8", "replace"))
            split = {c: sum(requests_by(samples, "outbound", c).values()) for c in ("reviews-v1", "reviews-v2")}
            if any(split.values()):
                snap.split = split
            codes = requests_by(samples, "outbound", "ratings")
            if codes:
                snap.ratings_codes = codes
        try:
            snap.circuit = next(c["circuit"] for c in clusters.json()["clusters"] if c["name"] == "ratings")
        except Exception:
            pass
        try:
            if failed.status != 200:
                raise ValueError(f"HTTP {failed.status}")
            snap.failed = list(failed.json()["requests"])
        except Exception as exc:
            snap.failed_note = f"{type(exc).__name__}: {exc}"[:60]
        try:
            snap.phase = phase.json()
        except Exception:
            pass
        try:
            snap.sink = sink.json()
        except Exception:
            pass
        return snap

    # -- showing --
    def intro(self) -> str:
        p = self.port
        certs = self.workdir / "certs"
        ratings = (f"healthy {self.args.ratings_healthy:g} s, failing {self.args.ratings_failing:g} s, repeating"
                   if self.args.ratings_failing > 0 else "always healthy")
        tries = [
            (f"curl -i http://{LOOPBACK}:{p['ingress']}/", "a page: the reviews version, who called it, the trace id"),
            (f"curl -i -H 'x-canary: 1' http://{LOOPBACK}:{p['ingress']}/", "the canary route: always reviews-v2"),
            (f"curl -i -H 'Host: reviews' http://{LOOPBACK}:{p['outbound']}/", "the frontend's outbound listener: the split"),
            (f"curl -i --http2-prior-knowledge -H 'Host: reviews' http://{LOOPBACK}:{p['outbound']}/",
             "the same over HTTP/2 (and HTTP/2 between the sidecars)"),
            (f"curl -vk https://{LOOPBACK}:{p['inbound:reviews-v1']}/", "refused: no client certificate, no HTTP answer"),
            (f"curl -ik --cert {certs}/ratings/cert.pem --key {certs}/ratings/key.pem "
             f"https://{LOOPBACK}:{p['inbound:reviews-v1']}/", "403: ratings may not call reviews"),
            (f"curl http://{LOOPBACK}:{p['admin:frontend']}/requests/failed", "recent failures with their trace ids"),
            (f"curl http://{LOOPBACK}:{p['otlp']}/traces/TRACE_ID", "the spans of one trace (the demo's OTLP sink)"),
            (f"tail -f {self.workdir}/logs/frontend-access.log", "the frontend sidecar's access log"),
        ]
        width = max(len(cmd) for cmd, _ in tries if len(cmd) < 70)
        try_lines = "\n".join(f"  {cmd:<{width}}  # {why}" if len(cmd) <= width else f"  {cmd}\n  {'':<{width}}  # {why}"
                              for cmd, why in tries)
        dashboards = "\n".join(f"  {name:<10} http://{LOOPBACK}:{p[f'admin:{name}']}/" for name in WORKLOADS)
        return f"""\
fastproxy demo: a mesh on loopback; trust domain {TRUST_DOMAIN}; CA, certificates, configs, logs in {self.workdir}

  load {self.args.rate}/s -> frontend sidecar :{p['ingress']} -> frontend app -> frontend sidecar :{p['outbound']} (outbound)
      -mTLS-> reviews-v1 sidecar :{p['inbound:reviews-v1']} -> app    90 %
      -mTLS-> reviews-v2 sidecar :{p['inbound:reviews-v2']} -> app    10 %  (x-canary: 1 -> 100 %)
      -mTLS-> ratings sidecar    :{p['inbound:ratings']} -> app    {ratings}; circuit breaker
  gRPC ratings.Get, 4/s -> frontend sidecar :{p['outbound']} (h2c) -mTLS, HTTP/2-> ratings sidecar -> app :{p['grpc:ratings']}

Try:
{try_lines}
Dashboards, one per sidecar (open in a browser; the frontend's shows the split and the ratings circuit live);
the same admin addresses answer /ready /metrics /clusters /certs /config /requests/failed:
{dashboards}
Ctrl-C stops everything."""

    def show(self, snap: Snapshot) -> None:
        now = asyncio.get_running_loop().time()
        elapsed = now - self.started
        events = self.note_events(snap, elapsed)
        lines = self.summary(snap, now)
        if self.tty:
            self.redraw([*self.identities, "", *lines, "", "events:", *(f"  {e}" for e in self.events)])
            return
        if not self.identities_shown:
            self.identities_shown = True
            lines = self.identities + lines
        new = failed_kinds(self.new_failed(snap))
        stamp = f"[{elapsed:5.0f}s]"
        print("\n".join(f"{stamp} {line}" for line in
                        (*events, *lines, *(f"failed: {n:>3} new | {line}" for n, line in new))), flush=True)

    identities_shown = False
    drawn = 0

    def redraw(self, lines: list[str]) -> None:
        """Rewrite the live block below the intro in place: cursor up over the previous
        block, each line cleared. Lines are cut to the terminal's width and the block to
        its height, so the line count (and the cursor movement) stays exact."""
        size = shutil.get_terminal_size((120, 40))
        lines = [line[:size.columns - 1] for line in lines][:max(1, size.lines - 1)]
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        sys.stdout.write(up + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
        sys.stdout.flush()
        self.drawn = len(lines)

    def summary(self, snap: Snapshot, now: float) -> list[str]:
        s = self.stats
        mark_t, mark_n = self.rate_mark
        rate = (s.answered + s.errors - mark_n) / (now - mark_t) if mark_t else 0.0
        self.rate_mark = (now, s.answered + s.errors)
        seen = sum(s.versions.values())
        versions = " ".join(f"{v} {100 * n / seen:.0f}%" for v, n in sorted(s.versions.items())) if seen else "-"
        codes = " ".join(f"{code} x{_n(n)}" for code, n in sorted(s.status.items())) or "-"
        lines = [f"load: {rate:.0f} req/s; frontend answered {codes} ({_n(s.degraded)} without ratings); "
                 f"reviews versions seen {versions}; connection errors {_n(s.errors)}"
                 + (f" ({s.last_error})" if s.errors else "")]
        if snap.split:
            total = sum(snap.split.values())
            lines.append("split: " + "  ".join(f"{c} {100 * n / total:.1f}% ({_n(n)})" for c, n in snap.split.items())
                         + "   [fastproxy_requests_total at the frontend sidecar]")
        else:
            lines.append("split: n/a (no fastproxy_requests_total for reviews-v1/v2 at the frontend sidecar)")
        phase = snap.phase or {}
        app = "n/a"
        if phase:
            app = phase["phase"]
            if phase.get("started") and phase.get("changes_in") is not None:
                app += f" for {phase['changes_in']:.0f} s more"
        codes = " ".join(f"{c} x{_n(n)}" for c, n in sorted(snap.ratings_codes.items())) if snap.ratings_codes else "n/a"
        lines.append(f"ratings: app {app}; what the frontend got through its sidecar: {codes}")
        grpc = " ".join(f"{GRPC_NAMES.get(c, c)} x{_n(n)}" for c, n in sorted(s.grpc.items())) or "-"
        lines.append(f"gRPC ratings.Get over HTTP/2 (grpc-status): {grpc}"
                     + (f"; connection errors {_n(s.grpc_errors)}" if s.grpc_errors else ""))
        if snap.circuit:
            c = snap.circuit
            trips = f", trips {c['trips']}" if "trips" in c else ""
            lines.append(f"circuit ratings: {c.get('state', 'n/a')} (failures in window {c.get('failures', '?')}{trips})")
        else:
            lines.append("circuit ratings: n/a (GET /clusters gave nothing usable)")
        if snap.sink:
            services = ", ".join(f"{k} {_n(v)}" for k, v in sorted(snap.sink.get("by_service", {}).items()))
            lines.append(f"traces: {_n(snap.sink.get('spans', 0))} spans at the OTLP sink"
                         + (f" ({services})" if services else ""))
        else:
            lines.append("traces: n/a")
        if snap.failed is None:
            lines.append(f"failed: n/a (GET /requests/failed: {snap.failed_note})")
        elif self.tty:
            lines.append(f"failed requests at the frontend sidecar (the {len(snap.failed)} kept, by kind, newest of each):")
            lines += [f"  {n:>3} x {line}" for n, line in failed_kinds(snap.failed)[:4]]
            # a failure the upstream answered has spans in both sidecars: the better example
            traced = sorted((e for e in snap.failed if e.get("trace_id")),
                            key=lambda e: e.get("reason") is not None)
            traced = traced[0]["trace_id"] if traced else None
            if traced:
                lines.append(f"  its spans: curl http://{LOOPBACK}:{self.port['otlp']}/traces/{traced}")
        return lines

    def new_failed(self, snap: Snapshot) -> list[dict]:
        """Failed requests not shown before, newest first."""
        out = []
        for e in snap.failed or ():
            key = (e.get("time"), e.get("request_id"), e.get("listener"))
            if key not in self.seen_failed:
                self.seen_failed.append(key)
                out.append(e)
        return out

    def note_events(self, snap: Snapshot, elapsed: float) -> list[str]:
        """Ratings phase changes and circuit transitions since the last refresh."""
        events = []
        phase = (snap.phase or {}).get("phase")
        if phase and self.last_phase and phase != self.last_phase:
            events.append(f"event: ratings app now {phase}")
        self.last_phase = phase or self.last_phase
        circuit = snap.circuit
        if circuit and self.last_circuit:
            before, after = self.last_circuit.get("state"), circuit.get("state")
            if before != after:
                events.append(f"event: circuit ratings {before} -> {after}")
            elif after == "open" and circuit.get("trips", 0) > self.last_circuit.get("trips", 0):
                # the half-open probe failed between two refreshes
                events.append("event: circuit ratings open -> half_open -> open (the probe failed)")
        if circuit:
            self.last_circuit = circuit
        for e in events:
            self.events.append(f"{elapsed:5.0f}s {e.removeprefix('event: ')}")
        return events


def failed_line(e: dict) -> str:
    return (f"{_clock(str(e.get('time', '')))} {e.get('listener')} route {e.get('route')} "
            f"cluster {e.get('cluster')} {e.get('status')} {e.get('reason') or '-'} "
            f"trace {e.get('trace_id') or '-'} request {e.get('request_id') or '-'}")


def failed_kinds(entries: list[dict]) -> list[tuple[int, str]]:
    """Failed requests (newest first) by kind — listener, cluster, status, reason — as
    (how many, the newest of that kind): hundreds of `503 circuit_open` must not hide
    the few 500s that opened the circuit."""
    kinds: dict[tuple, list] = {}
    for e in entries:
        kind = (e.get("listener"), e.get("cluster"), e.get("status"), e.get("reason"))
        if kind in kinds:
            kinds[kind][0] += 1
        else:
            kinds[kind] = [1, failed_line(e)]
    return [(n, line) for n, line in kinds.values()]


# --- the command ---------------------------------------------------------------------------

def main(args) -> int:
    port = {key: args.base_port + offset for key, (offset, _) in PORTS.items()}
    busy = busy_port(port)
    if busy is not None:
        number, what, error = busy
        print(f"fastproxy demo: cannot listen on {LOOPBACK}:{number} ({what}): {error}; "
              f"free it or move the demo's ports {args.base_port}-{args.base_port + PORT_SPAN - 1} "
              f"with --base-port", file=sys.stderr)
        return 1
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    # SIGTERM before the event loop runs must clean up as well as Ctrl-C does
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="fastproxy-demo-"))
    children: list[Child] = []
    code = 0
    try:
        make_mesh(workdir, port)
        logs = workdir / "logs"
        children.append(Child("demo apps", [
            sys.executable, "-m", "fastproxy.demo_apps",
            "--frontend", str(port["app:frontend"]), "--outbound", str(port["outbound"]),
            "--reviews-v1", str(port["app:reviews-v1"]), "--reviews-v2", str(port["app:reviews-v2"]),
            "--ratings", str(port["app:ratings"]), "--otlp", str(port["otlp"]),
            "--ratings-grpc", str(port["grpc:ratings"]),
            "--ratings-healthy", str(args.ratings_healthy), "--ratings-failing", str(args.ratings_failing),
        ], logs / "apps.log"))
        for name in WORKLOADS:
            children.append(Child(f"sidecar {name}", [sys.executable, "-m", "fastproxy", "run", "-c",
                                                      str(workdir / f"{name}.toml")], logs / f"{name}.log"))
        import uvloop
        code = uvloop.run(Demo(args, port, workdir, children).run())
    except KeyboardInterrupt:
        code = 0
    except BrokenPipeError:   # `fastproxy demo | head`: the reader has seen enough
        sys.stdout = open(os.devnull, "w")
        code = 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):   # nothing may interrupt the cleanup
            signal.signal(sig, signal.SIG_IGN)
        stop_children(children)
        if args.keep:
            print(f"fastproxy demo: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code == 0:
        print("fastproxy demo: stopped; every process ended" + ("" if args.keep else f", {workdir} removed"))
    return code
