"""A real OTLP/HTTP trace receiver for the tests: `POST /v1/traces` with a protobuf
`ExportTraceServiceRequest`, decoded with opentelemetry-proto. Every span is kept as a
plain dict:

    {"trace_id", "span_id", "parent_span_id" (hex; "" for a root), "name",
     "kind" ("SPAN_KIND_SERVER", ...), "start_ns", "end_ns", "flags",
     "attributes" {key: str | int | float | bool}, "status_code" ("STATUS_CODE_ERROR", ...),
     "status_message", "service_name", "scope"}

In-process (an HTTP/1.1 keep-alive server in threads, on a free 127.0.0.1 port):

    with OTLPSink() as sink:
        ... export to 127.0.0.1:sink.port ...
        spans = sink.wait_spans(3)          # bounded wait; raises TimeoutError

As a program (appends one JSON object per span to FILE, flushed after each export; stops
on SIGTERM or SIGINT):

    python -m tests.support.otlp_sink --port P --out FILE [--mode ok|500|hang|close]

`mode` (settable at any time) says how exports are answered:
    "ok"     200 with an empty ExportTraceServiceResponse (spans kept)
    "500"    500; the spans are not kept (the request is still listed in `requests`)
    "hang"   never answers; the connection is held until the sink stops
    "close"  like "ok", then closes the connection (tests that the exporter reconnects)
Anything but POST /v1/traces gets 404, another content type 415, an undecodable body 400.
`requests` lists every export as (path, content_type, span count, client port).
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

MODES = ("ok", "500", "hang", "close")


def _value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def decode(body: bytes) -> list[dict]:
    """The spans of one ExportTraceServiceRequest, as dicts."""
    export = ExportTraceServiceRequest()
    export.ParseFromString(body)
    spans = []
    for resource_spans in export.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append({
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": Span.SpanKind.Name(span.kind),
                    "start_ns": span.start_time_unix_nano,
                    "end_ns": span.end_time_unix_nano,
                    "flags": span.flags,
                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                    "status_code": Status.StatusCode.Name(span.status.code),
                    "status_message": span.status.message,
                    "service_name": resource.get("service.name"),
                    "scope": scope_spans.scope.name,
                })
    return spans


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"       # keep-alive, as collectors do
    server: "_Server"

    def setup(self):
        super().setup()
        self.server.sink._opened(self.connection)

    def finish(self):
        self.server.sink._closed(self.connection)
        super().finish()

    def log_message(self, format, *args):   # quiet: pytest shows failures, not traffic
        pass

    def do_POST(self):
        sink = self.server.sink
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        content_type = self.headers.get("content-type", "")
        if self.path != "/v1/traces":
            return self._answer(404, b"not found", "text/plain")
        if content_type != "application/x-protobuf":
            return self._answer(415, b"protobuf only", "text/plain")
        try:
            spans = decode(body)
        except DecodeError as exc:
            return self._answer(400, str(exc).encode(), "text/plain")
        mode = sink.mode
        sink._received(self.path, content_type, spans, self.client_address[1],
                       keep=mode in ("ok", "close"))
        if mode == "hang":
            sink.stopping.wait()
            self.close_connection = True
            return
        if mode == "500":
            return self._answer(500, b"sink told to fail", "text/plain")
        self._answer(200, ExportTraceServiceResponse().SerializeToString(),
                     "application/x-protobuf", close=mode == "close")

    def _answer(self, status: int, body: bytes, content_type: str, close: bool = False):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        if close:
            self.send_header("connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    sink: "OTLPSink"


class OTLPSink:
    """The receiver; `start()`/`stop()` or use it as a context manager."""

    def __init__(self, port: int = 0, mode: str = "ok", out: str | None = None):
        assert mode in MODES, mode
        self.mode = mode
        self.spans: list[dict] = []
        self.requests: list[tuple[str, str, int, int]] = []
        self.stopping = threading.Event()
        self._changed = threading.Condition()
        self._connections: set[socket.socket] = set()
        self._out = open(out, "a", encoding="utf-8") if out else None
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.sink = self
        self.port = self._server.server_address[1]
        # a short poll interval: stop() waits for serve_forever to notice
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="otlp-sink", daemon=True)

    def start(self) -> "OTLPSink":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()                 # releases hanging handlers
        self._server.shutdown()
        self._server.server_close()
        with self._changed:
            for conn in list(self._connections):    # kept-alive clients see the end
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._out is not None:
            self._out.close()

    def __enter__(self) -> "OTLPSink":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def connections(self) -> int:
        """Distinct client connections that sent at least one export."""
        with self._changed:
            return len({client_port for *_, client_port in self.requests})

    def wait_spans(self, count: int, timeout: float = 10.0) -> list[dict]:
        """At least `count` spans kept; raises TimeoutError after `timeout` seconds."""
        return self._wait(lambda: len(self.spans) >= count, timeout,
                          lambda: f"{len(self.spans)} of {count} spans")

    def wait_requests(self, count: int, timeout: float = 10.0) -> list:
        """At least `count` exports received (kept or not)."""
        self._wait(lambda: len(self.requests) >= count, timeout,
                   lambda: f"{len(self.requests)} of {count} export requests")
        return list(self.requests)

    def _wait(self, done, timeout, describe) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"otlp sink: only {describe()} after {timeout}s")
                self._changed.wait(left)
            return list(self.spans)

    def _received(self, path, content_type, spans, client_port, keep):
        with self._changed:
            self.requests.append((path, content_type, len(spans), client_port))
            if keep:
                self.spans.extend(spans)
                if self._out is not None:
                    self._out.writelines(json.dumps(span) + "\n" for span in spans)
                    self._out.flush()
            self._changed.notify_all()

    def _opened(self, conn):
        with self._changed:
            self._connections.add(conn)

    def _closed(self, conn):
        with self._changed:
            self._connections.discard(conn)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="An OTLP/HTTP trace receiver for tests.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True, help="appends one JSON object per span")
    parser.add_argument("--mode", choices=MODES, default="ok")
    args = parser.parse_args(argv)
    # blocked before any thread starts, so only sigwait below receives them
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sink = OTLPSink(args.port, args.mode, args.out).start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    sink.stop()


if __name__ == "__main__":
    main()
