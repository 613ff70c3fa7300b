"""The applications behind `fastproxy demo`, and the small HTTP/1.1 client it uses.

Owns the demo's workloads — `frontend`, `reviews` v1 and v2, `ratings` (which fails in
phases, and also answers gRPC calls) — and an OTLP/HTTP sink that keeps the spans the sidecars export, all served by
one helper process (`python -m fastproxy.demo_apps ...`, started by fastproxy.demo).
The apps know nothing about the mesh: they speak plain HTTP on loopback, and the
frontend calls `reviews` and `ratings` through its sidecar's outbound listener, passing
on the trace context headers as every meshed application must.

Everything here is deliberately small (keep-alive, content-length or chunked bodies,
GET-sized requests): it serves a demo, not production traffic.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import signal
import sys
import time
from datetime import datetime, timezone

import orjson

LOOPBACK = "127.0.0.1"
MAX_HEAD = 65536

# Headers an application copies from the request it serves to the requests it makes, so
# that the sidecars can join their spans into one trace (what Istio asks of every app),
# plus the canary header the frontend's outbound routes match on.
PROPAGATED = ("traceparent", "tracestate", "x-request-id", "b3", "x-b3-traceid",
              "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "x-canary")


# --- HTTP/1.1, minimal -------------------------------------------------------------------

class Request:
    def __init__(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes):
        self.method = method
        self.target = target
        self.path = target.split("?", 1)[0]
        self.headers = headers              # names lower-cased, in order
        self.body = body

    def header(self, name: str, default: str = "") -> str:
        for k, v in self.headers:
            if k == name:
                return v
        return default


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    """(first line, [(lower-cased name, value)]) of a message head."""
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
    return lines[0], headers


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]],
                     until_close: bool) -> bytes:
    fields = dict(headers)
    if "chunked" in fields.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":   # trailers
                    pass
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in fields:
        return await reader.readexactly(int(fields["content-length"]))
    return await reader.read() if until_close else b""


def _wants_close(headers: list[tuple[str, str]], version: str) -> bool:
    connection = dict(headers).get("connection", "").lower()
    return "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)


async def serve_http(handler, port: int, what: str) -> asyncio.AbstractServer:
    """An HTTP/1.1 keep-alive server on loopback; `handler(Request)` returns
    (status, [(name, value)], body)."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, headers = _parse_head(head)
                method, target, version = (line.split(" ") + ["", "", ""])[:3]
                body = await _read_body(reader, headers, until_close=False)
                try:
                    status, out_headers, data = await handler(Request(method, target, headers, body))
                except Exception as exc:   # a demo app bug must not kill the connection silently
                    status, out_headers, data = 500, [("content-type", "text/plain")], \
                        f"{what}: {type(exc).__name__}: {exc}\n".encode()
                close = _wants_close(headers, version)
                lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
                lines += [f"{k}: {v}" for k, v in out_headers]
                lines.append(f"content-length: {len(data)}")
                if close:
                    lines.append("connection: close")
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass   # the peer went away, or sent something this small server does not parse
        except asyncio.CancelledError:
            pass   # shutting down; re-raising makes Python 3.11's start_server log a traceback
        finally:
            writer.close()

    try:
        return await asyncio.start_server(connection, LOOPBACK, port, limit=MAX_HEAD)
    except OSError as exc:
        raise SystemExit(f"fastproxy demo: cannot listen on {LOOPBACK}:{port} ({what}): "
                         f"{exc.strerror or exc}") from None


_REASONS = {200: "OK", 202: "Accepted", 404: "Not Found", 415: "Unsupported Media Type",
            500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable"}


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes):
        self.status = status
        self.headers = dict(headers)     # lower-cased names; the last value wins
        self.body = body

    def json(self):
        return orjson.loads(self.body)


class HttpClient:
    """Keep-alive requests to one loopback port, with a small pool of connections."""

    def __init__(self, port: int, host: str = LOOPBACK):
        self.host = host
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(self, method: str, path: str, *, authority: str | None = None,
                      headers: list[tuple[str, str]] = (), body: bytes = b"",
                      timeout: float = 5.0) -> Response:
        return await asyncio.wait_for(self._request(method, path, authority, headers, body), timeout)

    async def get(self, path: str, timeout: float = 2.0, **kw) -> Response:
        return await self.request("GET", path, timeout=timeout, **kw)

    async def _request(self, method, path, authority, headers, body) -> Response:
        lines = [f"{method} {path} HTTP/1.1", f"host: {authority or f'{self.host}:{self.port}'}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if body or method in ("POST", "PUT"):
            lines.append(f"content-length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        # A pooled connection the server has closed meanwhile fails before any response
        # byte: try once more on a new one (these requests are all safe to resend).
        for attempt in range(2):
            pooled = bool(self.idle)
            reader, writer = self.idle.pop() if pooled else \
                await asyncio.open_connection(self.host, self.port, limit=MAX_HEAD)
            try:
                writer.write(data)
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                if pooled and attempt == 0:
                    continue
                raise ConnectionError(f"{self.host}:{self.port} closed the connection") from None
            except BaseException:
                writer.close()
                raise
            try:
                line, response_headers = _parse_head(head)
                version, status = line.split(" ")[:2]
                close = _wants_close(response_headers, version)
                payload = await _read_body(reader, response_headers, until_close=close)
            except BaseException:
                writer.close()
                raise
            if close:
                writer.close()
            else:
                self.idle.append((reader, writer))
            return Response(int(status), response_headers, payload)
        raise AssertionError("unreachable")

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


# --- the apps ------------------------------------------------------------------------------

def _json(status: int, value, extra: list[tuple[str, str]] = ()) -> tuple[int, list, bytes]:
    return status, [("content-type", "application/json"), *extra], \
        orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"


def trace_id_of(traceparent: str) -> str | None:
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


class Frontend:
    """The page: one call to `reviews` and one to `ratings`, both through the sidecar.

    Without reviews there is no page, so its error is passed on (502 with what the
    sidecar said). Ratings are optional: when they fail — a 500 from ratings, or the
    sidecar's instant `503 circuit_open` — the page is still a 200, degraded, which is
    what a circuit breaker is for: the frontend stays fast and up while ratings is down.
    """

    def __init__(self, outbound_port: int):
        self.outbound = HttpClient(outbound_port)

    async def __call__(self, req: Request):
        if req.path == "/favicon.ico":
            return 404, [], b""
        forward = [(k, v) for k, v in req.headers if k in PROPAGATED]
        reviews, ratings = await asyncio.gather(
            self.outbound.get("/reviews", authority="reviews", headers=forward, timeout=3),
            self.outbound.get("/ratings", authority="ratings", headers=forward, timeout=3),
            return_exceptions=True)
        if isinstance(reviews, BaseException) or reviews.status != 200:
            what = (f"{type(reviews).__name__}: {reviews}" if isinstance(reviews, BaseException)
                    else f"{reviews.status} {reviews.body.decode('utf-8', 'replace').strip()}")
            return 502, [("content-type", "text/plain")], f"frontend: reviews failed: {what}\n".encode()
        page = {"service": "frontend", "trace_id": trace_id_of(req.header("traceparent")),
                "request_id": req.header("x-request-id") or None, "reviews": reviews.json()}
        if isinstance(ratings, BaseException):
            page["ratings"] = {"unavailable": f"{type(ratings).__name__}: {ratings}"}
        elif ratings.status != 200:
            reason = ratings.headers.get("fastproxy-error", "from the ratings app")
            page["ratings"] = {"unavailable": f"{ratings.status} {reason}"}
        else:
            page["ratings"] = ratings.json()
        return _json(200, page, [("x-demo-reviews", page["reviews"].get("version", "?")),
                                 ("x-demo-ratings", "unavailable" if "unavailable" in page["ratings"] else "ok")])


class Reviews:
    """reviews v1 or v2: says which version answered and who called it (the identity its
    sidecar verified, from x-forwarded-client-cert)."""

    TEXT = {"v1": ["An extremely entertaining play.", "Absolutely fun and entertaining."],
            "v2": ["An extremely entertaining play. (new layout)", "Absolutely fun! (new layout)"]}

    def __init__(self, version: str):
        self.version = version

    async def __call__(self, req: Request):
        return _json(200, {"service": "reviews", "version": self.version,
                           "reviews": self.TEXT[self.version],
                           "caller": req.header("x-forwarded-client-cert") or None})


class Ratings:
    """Healthy for `healthy` seconds, then 500 for `failing` seconds, repeating. The clock
    starts with the first request, so the viewer always sees a healthy start. `GET
    /_demo/phase` tells the demo's summary where it stands (and does not start the clock)."""

    def __init__(self, healthy: float, failing: float):
        self.healthy = healthy
        self.failing = failing
        self.started: float | None = None

    def phase(self) -> tuple[str, float]:
        """("healthy" | "failing", seconds until the phase changes)."""
        if self.failing <= 0:
            return "healthy", float("inf")
        if self.started is None:
            return "healthy", self.healthy
        t = (time.monotonic() - self.started) % (self.healthy + self.failing)
        if t < self.healthy:
            return "healthy", self.healthy - t
        return "failing", self.healthy + self.failing - t

    async def __call__(self, req: Request):
        if req.path == "/_demo/phase":
            phase, left = self.phase()
            return _json(200, {"phase": phase, "changes_in": None if left == float("inf") else round(left, 1),
                               "started": self.started is not None})
        if self.started is None:
            self.started = time.monotonic()
        phase, left = self.phase()
        if phase == "failing":
            return 500, [("content-type", "text/plain")], \
                f"ratings: simulated outage (healthy again in {left:.0f} s)\n".encode()
        return _json(200, {"service": "ratings", "stars": 4})


class OtlpSink:
    """A tiny trace backend: accepts OTLP/HTTP `POST /v1/traces` (protobuf) and
    keeps the spans of the most recent traces, so a trace id from /requests/failed can be
    looked up: `GET /traces/<trace id>`; `GET /traces` gives the counts."""

    KEEP = 2000   # traces: the last ~20 s at 100 req/s, enough to look up a recent failure

    def __init__(self):
        self.traces: collections.OrderedDict[str, list[dict]] = collections.OrderedDict()
        self.spans = 0
        self.by_service: collections.Counter[str] = collections.Counter()
        self.errors = 0

    async def __call__(self, req: Request):
        if req.method == "POST" and req.path == "/v1/traces":
            if "json" in req.header("content-type"):   # fastproxy exports protobuf
                self.errors += 1
                return 415, [("content-type", "text/plain")], b"otlp sink: only application/x-protobuf\n"
            try:
                self.add(req)
            except Exception as exc:   # a malformed export is the exporter's problem: say so
                self.errors += 1
                return 400, [("content-type", "text/plain")], f"otlp sink: {exc}\n".encode()
            return 200, [("content-type", "application/x-protobuf")], b""   # an empty response message
        if req.method == "GET" and req.path == "/traces":
            return _json(200, {"spans": self.spans, "traces": len(self.traces),
                               "by_service": dict(self.by_service), "rejected_exports": self.errors,
                               "recent": list(reversed(list(self.traces)[-10:]))})
        if req.method == "GET" and req.path.startswith("/traces/"):
            spans = self.traces.get(req.path.removeprefix("/traces/").lower())
            if spans is None:
                return _json(404, {"error": "no such trace (not sampled, not exported yet, or too old)"})
            return _json(200, {"spans": sorted(spans, key=lambda s: s["time"])})
        return _json(404, {"error": "POST /v1/traces, GET /traces, GET /traces/<trace id>"})

    def add(self, req: Request) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        body = req.body
        if req.header("content-encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource_spans in export.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "?")
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    trace_id = span.trace_id.hex()
                    spans = self.traces.get(trace_id)
                    if spans is None:
                        spans = self.traces[trace_id] = []
                        while len(self.traces) > self.KEEP:
                            self.traces.popitem(last=False)
                    spans.append({
                        "service": service, "name": span.name,
                        "kind": SPAN_KINDS.get(span.kind, str(span.kind)),
                        "time": datetime.fromtimestamp(span.start_time_unix_nano / 1e9, timezone.utc)
                        .isoformat(timespec="microseconds").replace("+00:00", "Z"),
                        "span_id": span.span_id.hex(), "parent_span_id": span.parent_span_id.hex() or None,
                        "duration_ms": round((span.end_time_unix_nano - span.start_time_unix_nano) / 1e6, 3),
                        "error": span.status.code == 2,
                        "attributes": {a.key: _otlp_value(a.value) for a in span.attributes},
                    })
                    self.spans += 1
                    self.by_service[service] += 1


SPAN_KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def _otlp_value(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind in ("string_value", "int_value", "double_value", "bool_value") else None


# --- the helper process --------------------------------------------------------------------

# --- gRPC, minimal --------------------------------------------------------------------------
#
# The ratings service over gRPC (unary `fastproxy.demo.Ratings/Get`, JSON messages:
# content-type application/grpc+json), served and called with the HTTP/2 sessions of
# fastproxy's own core, so the demo needs no gRPC library.

GRPC_METHOD = "/fastproxy.demo.Ratings/Get"


def grpc_message(payload: bytes) -> bytes:
    """One length-prefixed gRPC message, uncompressed."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class RatingsGrpc(asyncio.Protocol):
    """One HTTP/2 connection of the gRPC ratings service: stars while `ratings` is
    healthy, UNAVAILABLE (14) while it fails."""

    def __init__(self, ratings: Ratings):
        from fastproxy._core.http2 import RecordingHandler, ServerSession
        self.ratings = ratings
        self.handler = RecordingHandler()
        self.session = ServerSession(self.handler)
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.session.data_to_send())

    def data_received(self, data):
        try:
            self.session.receive(data)
        except Exception:   # a broken peer: what the session queued (GOAWAY) goes, then close
            self.transport.write(self.session.data_to_send())
            self.transport.close()
            return
        for event in self.handler.events:
            ended = event[0] == "request" and event[3] or event[0] == "data" and event[3]
            if ended:
                self.answer(event[1])
        self.handler.events.clear()
        self.transport.write(self.session.data_to_send())

    def answer(self, stream_id: int) -> None:
        if self.ratings.started is None:
            self.ratings.started = time.monotonic()
        phase, left = self.ratings.phase()
        head = [(b":status", b"200"), (b"content-type", b"application/grpc+json")]
        if phase == "failing":   # trailers-only: the status in the only HEADERS frame
            self.session.send_headers(stream_id, head + [
                (b"grpc-status", b"14"),
                (b"grpc-message", b"simulated outage, healthy again in %d s" % left)], True)
            return
        self.session.send_headers(stream_id, head)
        self.session.send_data(stream_id, grpc_message(orjson.dumps({"service": "ratings",
                                                                     "stars": 4})))
        self.session.send_headers(stream_id, [(b"grpc-status", b"0")], True)


async def serve_grpc(ratings: Ratings, port: int) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(lambda: RatingsGrpc(ratings), LOOPBACK, port)
    except OSError as exc:
        raise SystemExit(f"app ratings (gRPC): cannot listen on {LOOPBACK}:{port}: {exc.strerror}")


async def grpc_call(port: int, authority: str, timeout: float = 3.0) -> tuple[int, str]:
    """One unary call of GRPC_METHOD through h2c on `port`: (grpc-status, grpc-message)."""
    from fastproxy._core.http2 import ClientSession, RecordingHandler
    handler = RecordingHandler()
    session = ClientSession(handler)
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        sid = session.send_request([(b":method", b"POST"), (b":scheme", b"http"),
                                    (b":authority", authority.encode()),
                                    (b":path", GRPC_METHOD.encode()),
                                    (b"content-type", b"application/grpc+json"),
                                    (b"te", b"trailers")])
        session.send_data(sid, grpc_message(b"{}"), True)
        writer.write(session.data_to_send())
        fields: dict[bytes, bytes] = {}
        async with asyncio.timeout(timeout):
            while True:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("the connection closed before the call ended")
                session.receive(data)
                writer.write(session.data_to_send())
                for event in handler.events:
                    if event[0] in ("response", "trailers"):
                        fields.update(event[2])
                    if event[0] == "reset":
                        raise ConnectionError(f"stream reset (HTTP/2 error {event[2]})")
                if any(e[0] == "trailers" or e[0] == "response" and e[3] for e in handler.events):
                    break
        status = fields.get(b"grpc-status", b"2")
        return (int(status) if status.isdigit() else 2,
                fields.get(b"grpc-message", b"").decode("utf-8", "replace"))
    finally:
        writer.close()


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # a closing terminal sends SIGHUP to every process of the demo: the demo itself
    # decides, and stops everyone with SIGTERM
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    ratings = Ratings(args.ratings_healthy, args.ratings_failing)
    servers = [
        await serve_http(Frontend(args.outbound), args.frontend, "app frontend"),
        await serve_http(Reviews("v1"), args.reviews_v1, "app reviews-v1"),
        await serve_http(Reviews("v2"), args.reviews_v2, "app reviews-v2"),
        await serve_http(ratings, args.ratings, "app ratings"),
    ]
    if args.ratings_grpc:
        servers.append(await serve_grpc(ratings, args.ratings_grpc))
    if args.otlp:
        servers.append(await serve_http(OtlpSink(), args.otlp, "OTLP sink"))
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastproxy.demo_apps",
                                description="the apps of `fastproxy demo` (started by it)")
    for name in ("frontend", "outbound", "reviews-v1", "reviews-v2", "ratings"):
        p.add_argument(f"--{name}", type=int, required=True, metavar="PORT")
    p.add_argument("--otlp", type=int, default=0, metavar="PORT", help="OTLP sink port (0: none)")
    p.add_argument("--ratings-grpc", type=int, default=0, metavar="PORT",
                   help="the ratings gRPC service's port (0: none)")
    p.add_argument("--ratings-healthy", type=float, default=20.0, metavar="SECONDS")
    p.add_argument("--ratings-failing", type=float, default=20.0, metavar="SECONDS")
    args = p.parse_args(argv)
    try:
        import uvloop
        uvloop.run(run(args))
    except SystemExit as exc:   # a port we cannot listen on: one line, exit 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
