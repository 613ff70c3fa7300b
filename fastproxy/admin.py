"""The admin API on `[proxy] admin` (docs/observability.md): HTTP/1.1 with h11, JSON answers.

Owns the operator's view of the proxy: `/ready`, `/metrics`, `/config`, `/clusters`,
`/certs`, `/requests/failed`, `POST /reload` and `POST /shutdown`, and the dashboard
(`GET /` and its files under `/ui/`, from fastproxy/ui), a page that reads those same
endpoints. It is meant for loopback, never shares a port with traffic, and nothing here
runs per proxied request.
With several workers, the first one serves it: metrics and failed requests come from
memory every worker shares; /clusters shows the pools of the serving worker; reload and
shutdown reach the others through the supervisor.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import ipaddress
import logging
import time
from datetime import datetime, timezone
from importlib import resources
from types import MappingProxyType

import h11
import orjson

from fastproxy.observe import metrics as prometheus

log = logging.getLogger("fastproxy")

MAX_REQUEST = 65536
UI = resources.files("fastproxy.ui")
UI_TYPES = {"html": "text/html; charset=utf-8", "css": "text/css; charset=utf-8",
            "js": "text/javascript; charset=utf-8"}


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _unix_rfc3339(t: float) -> str:
    moment = datetime.fromtimestamp(t, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(value):
    """A configuration model as JSON-ready data (addresses as "host:port")."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name != "raw" and f.name != "path"}
    if isinstance(value, (dict, MappingProxyType)):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


@dataclasses.dataclass(frozen=True, slots=True)
class Asset:
    """A file of the dashboard, as it is answered."""
    data: bytes
    kind: str


def ui_asset(name: str) -> Asset | None:
    """fastproxy/ui/NAME, if it is one of the dashboard's files (no paths, no dot files)."""
    kind = UI_TYPES.get(name.rpartition(".")[2])
    if kind is None or "/" in name or name.startswith("."):
        return None
    file = UI.joinpath(name)
    return Asset(file.read_bytes(), kind) if file.is_file() else None


class AdminServer:
    """Serves the admin endpoints for a running worker (see runtime.worker)."""

    def __init__(self, worker):
        self.worker = worker
        self.routes = {
            ("GET", "/"): lambda: (200, ui_asset("index.html")),
            ("GET", "/ready"): self.ready,
            ("GET", "/certs"): self.certs,
            ("GET", "/clusters"): self.clusters,
            ("GET", "/metrics"): self.metrics,
            ("GET", "/config"): self.config,
            ("GET", "/requests/failed"): self.failed,
            ("POST", "/reload"): self.reload,
            ("POST", "/shutdown"): self.shutdown,
        }

    async def serve(self, sock) -> asyncio.AbstractServer:
        return await asyncio.start_server(self.handle, sock=sock)

    # -- endpoints -----------------------------------------------------------------------
    def ready(self) -> tuple[int, dict]:
        if self.worker.ready:
            return 200, {"ready": True}
        return 503, {"ready": False, "reason": self.worker.not_ready_reason}

    def clusters(self) -> tuple[int, dict]:
        out = []
        configured = self.worker.config.clusters
        for name, cluster in self.worker.core.clusters.items():
            breaker = cluster.breaker
            conf = configured[name].circuit_breaker if name in configured else None
            out.append({
                "name": name,
                "circuit": self.circuit(breaker.snapshot(), conf) if breaker is not None
                else {"state": "closed", "failures": 0, "trips": 0},
                "endpoints": [endpoint.status() for endpoint in cluster.endpoints],
            })
        return 200, {"clusters": out}

    @staticmethod
    def circuit(snapshot: dict, conf) -> dict:
        """A breaker's snapshot with its limits and, once it has opened, when it last
        opened and when it probes (or probed) again, as wall-clock times."""
        open_until = snapshot.pop("open_until", 0)
        if conf is not None:
            snapshot.update(max_failures=conf.max_failures, window=conf.window,
                            open_for=conf.open_for)
            if snapshot["trips"] and open_until:
                probe_at = time.time() + open_until - time.monotonic()
                snapshot.update(opened_at=_unix_rfc3339(probe_at - conf.open_for),
                                probe_at=_unix_rfc3339(probe_at))
        return snapshot

    def metrics(self) -> tuple[int, str]:
        """Prometheus text format: the shared series of every worker, then the identity
        and circuit gauges (the same in every worker)."""
        lines: list[str] = []

        def metric(*family) -> None:
            lines.extend(prometheus.family(*family))

        worker = self.worker
        worker.publish_gauges()   # this worker's share up to date; the others' within 1 s
        state = worker.identity
        if state is not None and state.material is not None:
            metric("fastproxy_identity_expiry_timestamp_seconds", "gauge",
                   "When this workload's certificate expires (Unix time).",
                   [({}, int(state.material.not_after.timestamp()))])
            metric("fastproxy_identity_rotations_total", "counter",
                   "Identity material rotations applied.", [({}, state.rotations)])
            metric("fastproxy_identity_rotation_failures_total", "counter",
                   "New identity material refused (the old stayed in use).",
                   [({}, state.rotation_failures)])
        circuits = [(name, c.breaker.snapshot()) for name, c in worker.core.clusters.items()
                    if c.breaker is not None]
        if circuits:
            metric("fastproxy_circuit_open", "gauge", "1 while the cluster's circuit is open.",
                   [({"cluster": n}, int(s["state"] == "open")) for n, s in circuits])
            metric("fastproxy_circuit_trips_total", "counter", "Times the cluster's circuit opened.",
                   [({"cluster": n}, s["trips"]) for n, s in circuits])
        return 200, prometheus.render(worker.core.metrics.series(), lines)

    def config(self) -> tuple[int, dict]:
        """The effective configuration (defaults filled in; files are named, never read)."""
        worker = self.worker
        refused = worker.last_refused
        return 200, {"generation": worker.generation, "loaded_at": _unix_rfc3339(worker.loaded_at),
                     "path": worker.config.path, "config": _plain(worker.config),
                     "last_error": worker.last_error,
                     "last_refused": refused and {"time": _unix_rfc3339(refused[0]),
                                                  "error": refused[1]}}

    def failed(self) -> tuple[int, dict]:
        self.worker.drain.flush()   # this worker's newest failures, not only the last timer's
        requests = self.worker.failed.recent()
        for entry in requests:
            entry["time"] = _unix_rfc3339(entry["time"])
        return 200, {"requests": requests}

    async def reload(self) -> tuple[int, dict]:
        result = await self.worker.admin_reload()
        return (200 if result["result"] == "success" else 400), result

    def shutdown(self) -> tuple[int, dict]:
        log.info("POST /shutdown: draining")
        self.worker.loop.call_soon(self.worker.admin_shutdown)
        return 202, {"result": "draining"}

    def certs(self) -> tuple[int, dict]:
        state = self.worker.identity
        if state is None or state.material is None:
            return 404, {"error": "no identity is configured" if state is None
                         else "no certificate yet"}
        m = state.material
        return 200, {
            "identity": {"id": m.spiffe_id, "serial": format(m.serial, "x"),
                         "not_before": _rfc3339(m.not_before), "not_after": _rfc3339(m.not_after)},
            "trust": [{"subject": c.subject.rfc4514_string(),
                       "not_after": _rfc3339(c.not_valid_after_utc)} for c in m.trust],
            "rotations": state.rotations,
            "rotation_failures": state.rotation_failures,
        }

    # -- HTTP/1.1 ------------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    refused = self.refused(event)
                    if refused:
                        status, body = 403, {"error": refused}
                    else:
                        status, body = await self.dispatch(event.method.decode(), event.target.decode())
                    await self.respond(conn, writer, status, body)
                elif isinstance(event, h11.ConnectionClosed) or conn.our_state is h11.MUST_CLOSE:
                    break
                elif conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self.respond(conn, writer, exc.error_status_hint, {"error": str(exc)})
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def refused(self, request: h11.Request) -> str | None:
        """Why a request must not be answered, or None. The dashboard invites browsers, so
        web pages must not reach the API through them: a Host that is a name other than
        localhost or the admin address's own is DNS rebinding; a POST whose Origin is
        another site is a cross-site request (it could drain the proxy)."""
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in request.headers}
        host = headers.get("host")
        if host is not None:
            name = host[1:host.find("]")] if host.startswith("[") else host.rpartition(":")[0] or host
            try:
                ipaddress.ip_address(name)
            except ValueError:
                if name.lower() not in ("localhost", self.worker.config.proxy.admin.host.lower()):
                    return f"Host {host!r}: the admin API answers requests to its address or localhost only"
        origin = headers.get("origin")
        if request.method != b"GET" and origin is not None and origin.partition("://")[2] != host:
            return f"Origin {origin!r}: cross-site {request.method.decode()} refused"
        return None

    async def dispatch(self, method: str, target: str) -> tuple[int, dict | str | Asset]:
        path = target.split("?", 1)[0]
        if method == "GET" and path.startswith("/ui/"):
            asset = ui_asset(path[4:])
            return (200, asset) if asset else (404, {"error": f"no such file: {path}"})
        handler = self.routes.get((method, path))
        if handler is not None:
            result = handler()
            return await result if inspect.isawaitable(result) else result
        allowed = [m for m, p in self.routes if p == path]
        if allowed:
            return 405, {"error": f"{method} is not allowed on {path}", "allow": allowed}
        return 404, {"error": f"no such endpoint: {path}"}

    async def respond(self, conn: h11.Connection, writer, status: int, body) -> None:
        if isinstance(body, Asset):   # the dashboard
            data, kind = body.data, body.kind
        elif isinstance(body, str):   # /metrics
            data, kind = body.encode(), "text/plain; version=0.0.4; charset=utf-8"
        else:
            data, kind = orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n", "application/json"
        headers = [("content-type", kind), ("content-length", str(len(data)))]
        if status == 405:
            headers.append(("allow", ", ".join(body["allow"])))
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
        writer.write(conn.send(h11.Data(data=data)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
