"""Tracing (docs/observability.md): the trace-context rules, and the export of spans over OTLP/HTTP.

Two parts live here:

- The trace-context reference: `parse` reads the incoming W3C (`traceparent`,
  `tracestate`) and B3 (`x-b3-*`, single `b3`) headers, `outgoing` says what the proxy
  writes upstream. The Cython core does the same on the hot path
  (fastproxy/_core/telemetry.pxi); this plain version is the readable statement of the
  rules and the oracle the core is tested against, so it favours clarity over speed.
- `SpanExporter`: takes the core's sampled `Record`s (via `records.Drain`), turns each
  into one OTLP span and POSTs them in batches to a collector's `/v1/traces`, off the
  request path, with a bounded queue. Spans are serialized by hand as they are submitted
  (a few microseconds each), so that an export only puts bytes together; the
  opentelemetry-proto classes build the same request in `SpanExporter.request`, the
  reference the tests hold the hand-made bytes to.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import random
import re
import struct
import time
from typing import Iterable, NamedTuple

import h11
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags, Status

from fastproxy import __version__
from fastproxy.observe.records import Record

log = logging.getLogger("fastproxy")

# -- trace context ---------------------------------------------------------------------------

TRACESTATE_LIMIT = 512     # bytes of (joined) tracestate continued; a longer one is dropped

_LOWER_HEX = re.compile(r"[0-9a-f]+")
_B3_SINGLE_SAMPLING = {"1": True, "d": True, "0": False}       # "d" (debug) is sampled
_B3_SAMPLED = {"1": True, "0": False, "true": True, "false": False}
_TRACE_HEADERS = frozenset((b"traceparent", b"tracestate", b"b3", b"x-b3-traceid",
                            b"x-b3-spanid", b"x-b3-sampled", b"x-b3-flags"))
_B3_MULTI = (b"x-b3-traceid", b"x-b3-spanid", b"x-b3-sampled", b"x-b3-flags")


class Context(NamedTuple):
    """A valid incoming trace context."""

    trace_id: str                 # 32 lowercase hex digits (a 16-digit B3 id left-padded)
    parent_id: str | None         # the caller's span id: 16 lowercase hex digits
    sampled: bool | None          # None: the caller sent no decision (B3 only)
    tracestate: str | None        # W3C only: the tracestate values joined with ","
    source: str                   # "w3c" | "b3" | "b3single"


def parse(headers: Iterable[tuple[bytes, bytes]], propagate: tuple[str, ...]) -> Context | None:
    """The valid incoming context of the header families in `propagate` ("w3c", "b3"), or
    None. `headers` are (name, value) pairs as received: names in any case, values with
    or without surrounding spaces/tabs (HTTP optional whitespace, ignored).

    Precedence: a valid `traceparent` wins over B3; within B3 a valid single `b3` wins
    over the `x-b3-*` headers. Anything malformed counts as absent, and so does a header
    that must appear once but is repeated (`traceparent`, `b3`, `x-b3-traceid`,
    `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`). A bare sampling decision without a
    context (`b3: 0`, or `x-b3-sampled` alone) gives None here; `parse_tuple` exposes it.
    """
    return _read(headers, propagate)[0]


def parse_tuple(headers: Iterable[tuple[bytes, bytes]], propagate: tuple[str, ...]
                ) -> tuple[str | None, str | None, int, str | None] | None:
    """`parse` as plain values, the shape the core works with:
    (trace_id, parent_id, sampled, tracestate) with sampled -1 (no decision), 0 or 1.

    A decision that came without a valid context (`b3: 1`, `x-b3-sampled: 0` alone, or
    next to an invalid B3 context) is (None, None, 0|1, None): the proxy starts a new
    trace and honours the decision. None when neither a context nor a decision came.
    """
    ctx, decision = _read(headers, propagate)
    if ctx is not None:
        return ctx.trace_id, ctx.parent_id, _tristate(ctx.sampled), ctx.tracestate
    if decision is not None:
        return None, None, _tristate(decision), None
    return None


def sent_b3_single(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the client sent a single `b3` header (valid or not): the proxy then answers
    upstream in the same form (`outgoing(..., b3_single=True)`), as the next hop evidently
    speaks it."""
    return any(name.lower() == b"b3" for name, _ in headers)


def outgoing(ctx: Context | None, trace_id: str, span_id: str, sampled: bool,
             propagate: tuple[str, ...], b3_single: bool) -> list[tuple[str, str]]:
    """The trace headers the proxy writes upstream, in this order; every incoming trace
    header of a propagated family is replaced by them, never forwarded.

    `ctx` is the incoming context (None when a new trace starts); `trace_id` is
    ctx.trace_id when continuing, and `span_id` the proxy's own span, the parent of the
    next hop. With "w3c" in propagate:
        traceparent: 00-{trace_id}-{span_id}-{01|00}
        tracestate: {ctx.tracestate}        only when continuing a W3C context that had one
    With "b3" in propagate and b3_single:
        b3: {trace_id}-{span_id}-{1|0}
    With "b3" in propagate otherwise:
        x-b3-traceid: {trace_id}            always 32 digits
        x-b3-spanid: {span_id}
        x-b3-sampled: {1|0}
        x-b3-parentspanid: {ctx.parent_id}  only when continuing
    An unsampled trace is still propagated, and B3-only input is written as
    traceparent too when "w3c" is propagated.
    """
    flag = "1" if sampled else "0"
    headers: list[tuple[str, str]] = []
    if "w3c" in propagate:
        headers.append(("traceparent", f"00-{trace_id}-{span_id}-0{flag}"))
        if ctx is not None and ctx.source == "w3c" and ctx.tracestate:
            headers.append(("tracestate", ctx.tracestate))
    if "b3" in propagate:
        if b3_single:
            headers.append(("b3", f"{trace_id}-{span_id}-{flag}"))
        else:
            headers += [("x-b3-traceid", trace_id), ("x-b3-spanid", span_id),
                        ("x-b3-sampled", flag)]
            if ctx is not None and ctx.parent_id is not None:
                headers.append(("x-b3-parentspanid", ctx.parent_id))
    return headers


def new_trace_id() -> str:
    """A random trace id: 32 lowercase hex digits, never all zero (ids need to be unique,
    not secret)."""
    return f"{random.getrandbits(128) or 1:032x}"


def new_span_id() -> str:
    """A random span id: 16 lowercase hex digits, never all zero."""
    return f"{random.getrandbits(64) or 1:016x}"


def _tristate(sampled: bool | None) -> int:
    return -1 if sampled is None else int(sampled)


def _is_hex(text: str, digits: int) -> bool:
    """Exactly `digits` lowercase hex digits (uppercase is invalid in both families)."""
    return len(text) == digits and _LOWER_HEX.fullmatch(text) is not None


def _is_id(text: str, digits: int) -> bool:
    """A trace or span id: `digits` lowercase hex digits, not all zero."""
    return _is_hex(text, digits) and text.strip("0") != ""


def _read(headers, propagate) -> tuple[Context | None, bool | None]:
    """(context, decision): the decision is that of a bare B3 sampling header, set only
    when no valid context came."""
    found: dict[bytes, list[str]] = {}
    for name, value in headers:
        key = name.lower()
        if key in _TRACE_HEADERS:
            # latin-1 maps every byte to one character, so lengths stay byte counts
            found.setdefault(key, []).append(value.strip(b" \t").decode("latin-1"))
    if "w3c" in propagate:
        ctx = _w3c(found)
        if ctx is not None:
            return ctx, None
    if "b3" in propagate:
        return _b3(found)
    return None, None


def _w3c(found: dict[bytes, list[str]]) -> Context | None:
    """W3C Trace Context: `traceparent` = version "-" trace-id "-" parent-id "-" flags."""
    values = found.get(b"traceparent", [])
    if len(values) != 1:
        return None
    tp = values[0]
    if len(tp) < 55 or tp[2] != "-" or tp[35] != "-" or tp[52] != "-":
        return None
    version, trace_id, parent_id, flags = tp[0:2], tp[3:35], tp[36:52], tp[53:55]
    if not _is_hex(version, 2) or version == "ff":
        return None
    # version 00 is exactly 55 characters; a later version may append "-" and more fields
    if (version == "00" and len(tp) != 55) or (len(tp) > 55 and tp[55] != "-"):
        return None
    if not (_is_id(trace_id, 32) and _is_id(parent_id, 16) and _is_hex(flags, 2)):
        return None
    # empty tracestate values are allowed and mean nothing: they are not carried on
    tracestate = ",".join(v for v in found.get(b"tracestate", []) if v) or None
    if tracestate is not None and len(tracestate) > TRACESTATE_LIMIT:
        tracestate = None
    return Context(trace_id, parent_id, bool(int(flags, 16) & 1), tracestate, "w3c")


def _b3(found: dict[bytes, list[str]]) -> tuple[Context | None, bool | None]:
    """B3: a valid single `b3` header, else the `x-b3-*` headers. A malformed
    `x-b3-sampled` or `x-b3-flags` is ignored on its own; it does not spoil the ids."""
    decision = None
    single = found.get(b"b3", [])
    if len(single) == 1:
        ctx, decision = _b3_single(single[0])
        if ctx is not None:
            return ctx, None
    multi = {key: found[key] for key in _B3_MULTI if key in found}
    if any(len(values) > 1 for values in multi.values()):
        return None, decision
    sampled = _B3_SAMPLED.get(multi.get(b"x-b3-sampled", [""])[0])
    if sampled is not None:
        decision = sampled
    if multi.get(b"x-b3-flags") == ["1"]:      # debug: sampled, whatever x-b3-sampled says
        decision = True
    trace_id = multi.get(b"x-b3-traceid", [""])[0]
    span_id = multi.get(b"x-b3-spanid", [""])[0]
    if (_is_id(trace_id, 32) or _is_id(trace_id, 16)) and _is_id(span_id, 16):
        return Context(trace_id.rjust(32, "0"), span_id, decision, None, "b3"), None
    return None, decision


def _b3_single(value: str) -> tuple[Context | None, bool | None]:
    """`b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]`, or a bare sampling value:
    (context, None), (None, decision), or (None, None) when malformed."""
    if value in _B3_SINGLE_SAMPLING:
        return None, _B3_SINGLE_SAMPLING[value]
    parts = value.split("-")
    if not 2 <= len(parts) <= 4:
        return None, None
    trace_id, span_id = parts[0], parts[1]
    if not ((_is_id(trace_id, 32) or _is_id(trace_id, 16)) and _is_id(span_id, 16)):
        return None, None
    sampled = None
    if len(parts) >= 3:
        sampled = _B3_SINGLE_SAMPLING.get(parts[2])
        if sampled is None:
            return None, None
    # the parent span id says nothing about our parent (that is spanid), but it must be valid
    if len(parts) == 4 and not _is_id(parts[3], 16):
        return None, None
    return Context(trace_id.rjust(32, "0"), span_id, sampled, None, "b3single"), None


# -- span export -----------------------------------------------------------------------------

# OpenTelemetry HTTP semantic conventions: other methods are reported as "_OTHER" (and
# "HTTP" in the span name), so a client cannot blow up the backend's cardinality
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
                           "TRACE", "PATCH", "QUERY"))
# Span.flags says whether the parent is remote: a proxy span's parent, when it has one,
# is always in another process (the client's)
_LOCAL_ROOT = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_REMOTE_PARENT = _LOCAL_ROOT | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_SAMPLED_FLAG = 0x01        # W3C trace flags are bits 0-7 of Span.flags
_AUTHORITY = re.compile(r"[^/?]*")


class SpanExporter:
    """One OTLP span per sampled record, POSTed in batches to http://host:port/v1/traces.

    `submit` runs on the event loop's thread (the records drain) and never waits: it
    encodes the record's span there and then (a few microseconds, spread over the drain's
    turns) and queues the bytes, or drops the record when the queue is full. `run` is the
    background task: an export only frames the queued spans (microseconds per batch), so
    the event loop never pauses for it. `close` flushes and stops it.

    Counters, in spans unless said otherwise:
      exported         accepted by the collector (2xx)
      dropped          lost: queue full, in a failed export, or still queued at close (and
                       a record no span can carry, which the core never makes)
      export_failures  failed export requests (non-2xx, refused, timed out, broken)
    so every span submitted is exported, dropped, or still queued.
    """

    MAX_BACKOFF = 30.0       # seconds between attempts while the collector keeps failing
    WARN_EVERY = 10.0        # seconds; at most one warning per period about failures

    def __init__(self, host: str, port: int, service_name: str, *, max_queue: int = 4096,
                 batch_size: int = 512, interval: float = 1.0, timeout: float = 5.0):
        self.host = host
        self.port = port
        self.service_name = service_name
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.interval = interval
        self.timeout = timeout
        self.exported = 0
        self.dropped = 0
        self.export_failures = 0
        # the spans waiting, each encoded and framed as a ScopeSpans.spans field
        self.queue: collections.deque[bytes] = collections.deque()
        self.wake = asyncio.Event()     # a full batch is waiting, or close() was called
        self.lock = asyncio.Lock()      # one export at a time on the one connection
        self.closed = False
        self.backoff = 0.0              # seconds to wait after a failure; 0 when healthy
        self.connection: tuple[asyncio.StreamReader, asyncio.StreamWriter,
                               h11.Connection] | None = None
        self.warned_at = float("-inf")
        self.failures_unreported = 0
        self.unencodable = 0            # records submit() could not encode (dropped)
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.resource = Resource(attributes=[
            KeyValue(key="service.name", value=AnyValue(string_value=service_name))])
        self.scope = InstrumentationScope(name="fastproxy", version=__version__)
        # ResourceSpans.resource and ScopeSpans.scope, the same in every request
        self.resource_field = _delimited(b"\x0a", self.resource.SerializeToString())
        self.scope_field = _delimited(b"\x0a", self.scope.SerializeToString())

    def submit(self, record: Record) -> None:
        """Queue a record's span; never blocks. Unsampled and untraced records are
        ignored; when the queue is full (or the exporter closed) the record is dropped."""
        if not record.sampled or record.trace_id is None:
            return
        if self.closed or len(self.queue) >= self.max_queue:
            self.dropped += 1
            return
        try:
            span = encode_span(record)
        except Exception as exc:
            # not a record the core makes (an id that is not hex, a time before 1970, a
            # None where a string belongs...): dropped, as the library refuses it too
            self.dropped += 1
            log.log(logging.DEBUG if self.unencodable else logging.WARNING,
                    "span dropped: no OTLP span can carry %r (%s)", record, exc)
            self.unencodable += 1
            return
        self.queue.append(span)
        # while backing off, a full batch waits for the next attempt like everything else
        if len(self.queue) >= self.batch_size and not self.backoff:
            self.wake.set()

    async def run(self) -> None:
        """Export every `interval`, or as soon as a batch is full; after a failure, wait a
        growing backoff (capped at MAX_BACKOFF) instead. Returns once close() is called."""
        while not self.closed:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that arrives as the event is set, and run() would never stop
            try:
                async with asyncio.timeout(self.backoff or self.interval):
                    await self.wake.wait()
            except TimeoutError:
                pass
            self.wake.clear()
            async with self.lock:
                while self.queue and not self.closed and await self._export_batch():
                    pass

    async def close(self, timeout: float = 2.0) -> None:
        """Export what is queued, for at most `timeout` seconds, then stop (run() returns).
        Stops at the first failure: what could not be sent is dropped and counted."""
        self.closed = True
        self.wake.set()
        try:
            async with asyncio.timeout(timeout):
                async with self.lock:
                    while self.queue and await self._export_batch():
                        pass
        except TimeoutError:
            pass
        finally:
            self.dropped += len(self.queue)
            self.queue.clear()
            self._disconnect()

    def request(self, records: Iterable[Record]) -> ExportTraceServiceRequest:
        """The OTLP request for a batch, built with the opentelemetry-proto classes: one
        resource (this service), one scope. The exporter sends the same request, encoded
        by hand (`encode_span`, `request_body`); this is its reference."""
        # messages are filled in place (add()): three times faster than constructing them
        request = ExportTraceServiceRequest()
        resource_spans = request.resource_spans.add()
        resource_spans.resource.CopyFrom(self.resource)
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.CopyFrom(self.scope)
        for record in records:
            _fill_span(scope_spans.spans.add(), record)
        return request

    def request_body(self, spans: list[bytes]) -> bytes:
        """The serialized ExportTraceServiceRequest around spans from `encode_span`:
        ResourceSpans{resource, ScopeSpans{scope, spans...}}. Only the two lengths are
        computed; the spans are copied once, into the body."""
        scope_spans = len(self.scope_field) + sum(map(len, spans))
        scope_spans_length = _varint(scope_spans)
        resource_spans = len(self.resource_field) + 1 + len(scope_spans_length) + scope_spans
        return b"".join((b"\x0a", _varint(resource_spans), self.resource_field,
                         b"\x12", scope_spans_length, self.scope_field, *spans))

    async def _export_batch(self) -> bool:
        """Send up to batch_size queued spans; False when the export failed."""
        queue = self.queue
        if len(queue) <= self.batch_size:
            batch = list(queue)
            queue.clear()
        else:
            batch = [queue.popleft() for _ in range(self.batch_size)]
        body = self.request_body(batch)
        try:
            async with asyncio.timeout(self.timeout):
                status = await self._post(body)
        except (OSError, TimeoutError, h11.ProtocolError) as exc:
            self._disconnect()
            problem = str(exc) or type(exc).__name__
        except BaseException:
            # cancelled mid-request (task cancelled, close() timed out): the connection is
            # in an unknown state and the batch's fate unknown; count it lost
            self._disconnect()
            self.dropped += len(batch)
            raise
        else:
            if 200 <= status < 300:
                self.exported += len(batch)
                self.backoff = 0.0
                return True
            problem = f"HTTP {status}"
        self.export_failures += 1
        self.dropped += len(batch)
        self.backoff = min(max(self.backoff, self.interval) * 2, self.MAX_BACKOFF)
        self._warn(problem)
        return False

    async def _post(self, body: bytes) -> int:
        """POST /v1/traces on the kept-alive connection; the response status."""
        if self.connection is None:
            return await self._exchange(body)
        try:
            return await self._exchange(body)
        except (OSError, h11.ProtocolError):
            # most likely the collector closed the idle connection: once more on a new one
            self._disconnect()
            return await self._exchange(body)

    async def _exchange(self, body: bytes) -> int:
        if self.connection is None:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.connection = reader, writer, h11.Connection(h11.CLIENT)
        reader, writer, http = self.connection
        writer.write(http.send(h11.Request(method="POST", target="/v1/traces", headers=[
            ("host", self.authority), ("content-type", "application/x-protobuf"),
            ("content-length", str(len(body))), ("user-agent", f"fastproxy/{__version__}")])))
        writer.write(http.send(h11.Data(data=body)))
        writer.write(http.send(h11.EndOfMessage()))
        await writer.drain()
        status = 0
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(await reader.read(65536))    # b"" is the end of the stream
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("the collector closed the connection")
            # informational responses and the body (an ExportTraceServiceResponse whose
            # partial_success we do not act on) are read past
        if http.our_state is h11.DONE and http.their_state is h11.DONE:
            http.start_next_cycle()
        else:   # "connection: close", or an HTTP/1.0 collector
            self._disconnect()
        return status

    def _disconnect(self) -> None:
        if self.connection is not None:
            self.connection[1].close()
            self.connection = None

    def _warn(self, problem: str) -> None:
        self.failures_unreported += 1
        now = time.monotonic()
        if now - self.warned_at < self.WARN_EVERY:
            return
        log.warning("span export to %s failed: %s (%d failed exports since the last warning; "
                    "%d spans dropped in all; next attempt in %.1fs)", self.authority, problem,
                    self.failures_unreported, self.dropped, self.backoff)
        self.warned_at = now
        self.failures_unreported = 0


def _split_target(target: str) -> tuple[str, str | None]:
    """(path, query) of a request target; an absolute-form target loses its scheme and
    authority. The query is None when the target has none (or an empty one)."""
    if not target.startswith("/") and "://" in target:
        rest = target.split("://", 1)[1]
        target = rest[_AUTHORITY.match(rest).end():]
        if not target.startswith("/"):
            target = "/" + target
    path, _, query = target.partition("?")
    return path, query or None


def _host_port(address: str | None) -> tuple[str | None, int | None]:
    """("host", port) of "host[:port]" or "[v6]:port"; the port is None when absent, or
    when it is not 1 to 5 ASCII digits (the most a Host header may have)."""
    if not address:
        return None, None
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:       # a bare IPv6 literal, or no port at all
        host, port = address, ""
    return host, int(port) if len(port) <= 5 and port.isdigit() and port.isascii() else None


def _fixed_attributes(r: Record) -> tuple[str, bool, list[tuple[str, str | int]], str | None]:
    """What a record's span says that does not change from request to request, with the
    OpenTelemetry HTTP semantic conventions: (name, is a server span, attributes, error or
    None). Reads only the fields of `_shape` (encode_span caches on them)."""
    server = r.direction == "inbound"
    method = r.method if r.method in KNOWN_METHODS else None
    attributes: list[tuple[str, str | int]] = [("http.request.method", method or "_OTHER")]
    if method is None:
        attributes.append(("http.request.method_original", r.method))
    # a server span is about the host the client asked for; a client span about the
    # endpoint the proxy sent the request to
    host, port = _host_port(r.authority if server else r.upstream)
    if host:
        attributes.append(("server.address", host))
    if port is not None:
        attributes.append(("server.port", port))
    if r.status > 0:
        attributes.append(("http.response.status_code", r.status))
    attributes.append(("fastproxy.listener", r.listener))
    for key, value in (("fastproxy.route", r.route), ("fastproxy.cluster", r.cluster),
                       ("fastproxy.upstream", r.upstream), ("fastproxy.peer", r.peer)):
        if value is not None:
            attributes.append((key, value))
    error = r.error if r.error is not None else str(r.status) if r.status >= 500 else None
    if error is not None:
        attributes.append(("error.type", error))
    name = f"{method or 'HTTP'} {r.route}" if r.route else method or "HTTP"
    return name, server, attributes, error


def _shape(r: Record) -> tuple:
    """The fields `_fixed_attributes` reads (the authority only matters to a server span)."""
    server = r.direction == "inbound"
    return (server, r.method, r.authority if server else None, r.status, r.error, r.listener,
            r.route, r.cluster, r.upstream, r.peer)


def _request_attributes(r: Record) -> list[tuple[str, str | int]]:
    """The attributes particular to each request, after the fixed ones."""
    path, query = _split_target(r.path)
    attributes: list[tuple[str, str | int]] = [("url.path", path)]
    if query is not None:
        attributes.append(("url.query", query))
    attributes += [("http.request.body.size", r.bytes_in),
                   ("http.response.body.size", r.bytes_out)]
    if r.request_id is not None:
        attributes.append(("fastproxy.request_id", r.request_id))
    if r.original_destination is not None:
        attributes.append(("fastproxy.original_destination", r.original_destination))
    return attributes + _rpc_attributes(r)


def _rpc_attributes(r: Record) -> list[tuple[str, str | int]]:
    """A gRPC call's attributes (OpenTelemetry RPC conventions): the path is
    /package.Service/Method."""
    if r.grpc_status is None:
        return []
    _, service, method = (r.path.split("?", 1)[0].split("/", 2) + ["", ""])[:3]
    return [("rpc.system", "grpc"), ("rpc.service", service), ("rpc.method", method),
            ("rpc.grpc.status_code", r.grpc_status)]


def _fill_span(span: Span, r: Record) -> None:
    """One record as an OTLP span, with the opentelemetry-proto classes (the reference
    `encode_span` is tested against)."""
    name, server, attributes, error = _fixed_attributes(r)
    attributes = attributes + _request_attributes(r)
    span.trace_id = bytes.fromhex(r.trace_id)
    span.span_id = bytes.fromhex(r.span_id)
    if r.parent_id:
        span.parent_span_id = bytes.fromhex(r.parent_id)
    span.flags = _SAMPLED_FLAG | (_REMOTE_PARENT if r.parent_id else _LOCAL_ROOT)
    span.name = name
    span.kind = Span.SPAN_KIND_SERVER if server else Span.SPAN_KIND_CLIENT
    span.start_time_unix_nano = int(r.start * 1e9)
    span.end_time_unix_nano = max(int(r.end * 1e9), span.start_time_unix_nano)
    for key, value in attributes:
        attribute = span.attributes.add()
        attribute.key = key
        if isinstance(value, int):
            attribute.value.int_value = value
        else:
            attribute.value.string_value = value
    if error is not None:
        span.status.code = Status.STATUS_CODE_ERROR
        span.status.message = r.error or ""


# -- the protobuf wire format, by hand ---------------------------------------------------------
#
# A span is encoded as the library would (field order aside, which decoders ignore), several
# times faster than building it with the upb classes: the part of a span that repeats from
# request to request (name, kind, status, most attributes) is encoded once per `_shape` and
# cached, and the rest is mostly bytes formatting.
#
# Each field is a tag, (number << 3) | wire type, then its value: a varint (type 0), 8
# little-endian bytes (1), a varint length and that many bytes (2: strings, bytes and
# messages), or 4 little-endian bytes (5). Field numbers from
# opentelemetry/proto/{trace,common}/v1/*.proto:
#   ScopeSpans     1 scope, 2 spans
#   Span           1 trace_id, 2 span_id, 4 parent_span_id, 5 name, 6 kind (enum),
#                  7 start_time_unix_nano (fixed64), 8 end_time_unix_nano (fixed64),
#                  9 attributes (KeyValue), 15 status, 16 flags (fixed32)
#   KeyValue       1 key, 2 value (AnyValue)
#   AnyValue       1 string_value, 3 int_value (int64)
#   Status         2 message, 3 code (enum)

_BYTE = tuple(bytes((n,)) for n in range(256))
_INT64 = 1 << 63
_TIMES = struct.Struct("<BQBQ")      # start_time_unix_nano, end_time_unix_nano, with tags
_KIND = {True: b"\x30" + _BYTE[Span.SPAN_KIND_SERVER],
         False: b"\x30" + _BYTE[Span.SPAN_KIND_CLIENT]}
_FLAGS = {parent: b"\x85\x01" + struct.pack("<I", _SAMPLED_FLAG | flags)
          for parent, flags in ((False, _LOCAL_ROOT), (True, _REMOTE_PARENT))}
_STATUS_ERROR = b"\x18" + _BYTE[Status.STATUS_CODE_ERROR]
_FIXED: dict[tuple, bytes] = {}     # _shape -> name, kind, fixed attributes and status, encoded
_FIXED_MAX = 1024                   # shapes cached; the cache starts over when it is full


def _varint(n: int) -> bytes:
    """A non-negative integer as a varint: 7 bits a byte, low first, high bit = more."""
    if n < 0x80:
        return _BYTE[n]
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited(tag: bytes, data: bytes) -> bytes:
    """A length-delimited field."""
    return tag + _varint(len(data)) + data


def _key(key: str) -> bytes:
    """KeyValue.key, then the tag of KeyValue.value."""
    return _delimited(b"\x0a", key.encode()) + b"\x12"


def _attribute(key: bytes, value: str | int) -> bytes:
    """A Span.attributes field: a KeyValue whose AnyValue is a string or an int64."""
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise ValueError(f"{value} is out of the int64 range")
        # a negative int64 is sent as its 64-bit two's complement
        any_value = b"\x18" + _varint(value & 0xFFFF_FFFF_FFFF_FFFF)
    else:
        any_value = _delimited(b"\x0a", value.encode())
    return _delimited(b"\x4a", key + _varint(len(any_value)) + any_value)


def _string_attribute(key: bytes, value: str) -> bytes:
    """_attribute for a string, with the lengths of a short one formatted in place."""
    data = value.encode()
    n = len(data)
    if len(key) + n < 125:      # every length below 128: one byte each
        return b"J%c%s%c\n%c%s" % (len(key) + n + 3, key, n + 2, n, data)
    return _attribute(key, value)


def _size_attribute(key: bytes, value: int) -> bytes:
    """_attribute for an int, a small one formatted in place."""
    if 0 <= value < 0x80:
        return b"J%c%s\x02\x18%c" % (len(key) + 3, key, value)
    return _attribute(key, value)


def _fixed(r: Record) -> bytes:
    """Span.name, Span.kind, the attributes of _fixed_attributes and Span.status."""
    name, server, attributes, error = _fixed_attributes(r)
    parts = [_delimited(b"\x2a", name.encode()), _KIND[server]]
    parts += (_attribute(_key(key), value) for key, value in attributes)
    if error is not None:
        message = r.error.encode() if r.error else b""
        status = _delimited(b"\x12", message) + _STATUS_ERROR if message else _STATUS_ERROR
        parts.append(_delimited(b"\x7a", status))
    return b"".join(parts)


_URL_PATH, _URL_QUERY, _BODY_IN, _BODY_OUT, _REQUEST_ID, _ORIGINAL_DESTINATION = map(_key, (
    "url.path", "url.query", "http.request.body.size", "http.response.body.size",
    "fastproxy.request_id", "fastproxy.original_destination"))


def encode_span(r: Record) -> bytes:
    """A record's span, serialized and framed as a ScopeSpans.spans field: what
    `SpanExporter.request_body` puts together. Decodes to the span `_fill_span` makes of
    the record. Raises (ValueError, TypeError, ...) for a record no span can carry, which
    the library refuses too."""
    shape = _shape(r)
    fixed = _FIXED.get(shape)
    if fixed is None:
        if len(_FIXED) >= _FIXED_MAX:
            _FIXED.clear()
        fixed = _FIXED[shape] = _fixed(r)
    trace_id, span_id, parent_id = r.trace_id, r.span_id, r.parent_id
    ids = None
    if len(trace_id) == 32 and len(span_id) == 16 and (not parent_id or len(parent_id) == 16):
        # the three id fields at once: their tags and lengths are hex digits too
        try:
            ids = bytes.fromhex(f"0a10{trace_id}1208{span_id}2208{parent_id}" if parent_id
                                else f"0a10{trace_id}1208{span_id}")
        except ValueError:
            pass
        if ids is not None and len(ids) != (38 if parent_id else 28):   # fromhex skips spaces
            ids = None
    if ids is None:     # not ids of the core's: each field on its own
        ids = (_delimited(b"\x0a", bytes.fromhex(trace_id))
               + _delimited(b"\x12", bytes.fromhex(span_id)))
        if parent_id:
            ids += _delimited(b"\x22", bytes.fromhex(parent_id))
    start = int(r.start * 1e9)
    path, query = _split_target(r.path)
    parts = [ids, fixed, _TIMES.pack(0x39, start, 0x41, max(int(r.end * 1e9), start)),
             _string_attribute(_URL_PATH, path)]
    if query is not None:
        parts.append(_string_attribute(_URL_QUERY, query))
    parts += (_size_attribute(_BODY_IN, r.bytes_in), _size_attribute(_BODY_OUT, r.bytes_out))
    if r.request_id is not None:
        parts.append(_string_attribute(_REQUEST_ID, r.request_id))
    if r.original_destination is not None:
        parts.append(_string_attribute(_ORIGINAL_DESTINATION, r.original_destination))
    if r.grpc_status is not None:
        parts += [_attribute(_key(key), value) for key, value in _rpc_attributes(r)]
    parts.append(_FLAGS[bool(parent_id)])
    span = b"".join(parts)
    return _delimited(b"\x12", span)
