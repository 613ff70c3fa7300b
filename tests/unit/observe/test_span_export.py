"""SpanExporter (SPEC §7): records become OTLP spans that reach a real OTLP/HTTP receiver
(tests/support/otlp_sink.py, decoded with opentelemetry-proto); the queue is bounded,
failures are counted, and submit never waits. Runs on uvloop, as the workers do.

The exporter serializes spans by hand; opentelemetry-proto is the oracle. Every request
body any test sends is decoded with ExportTraceServiceRequest.FromString and must equal,
unknown fields included, the request the library builds from the same records
(`SpanExporter.request`); a hypothesis test does the same over every kind of field."""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import uvloop
from hypothesis import HealthCheck, example, given, settings, strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from fastproxy.observe import tracing
from fastproxy.observe.records import Record
from fastproxy.observe.tracing import KNOWN_METHODS, SpanExporter
from support.otlp_sink import OTLPSink
from support.procs import free_port, wait_for_ports

T = "4bf92f3577b34da6a3ce929d0e0e4736"
S = "e457b5a2e4d86bd1"
P = "00f067aa0ba902b7"
ROOT = Path(__file__).resolve().parents[3]


def record(**changes) -> Record:
    fields = dict(start=1_700_000_000.25, end=1_700_000_000.75, listener="inbound",
                  direction="inbound", route="r1", cluster="c1", upstream="10.0.0.7:9000",
                  method="GET", path="/a/b?x=1&y=2", authority="web.local:8080", status=200,
                  error=None, bytes_in=3, bytes_out=10, peer=None, trace_id=T, span_id=S,
                  parent_id=P, sampled=True, request_id="rid-1", overhead=0.001)
    fields.update(changes)
    return Record(**fields)


def exporter(port: int, **options) -> SpanExporter:
    return SpanExporter("127.0.0.1", port, "web", **options)


async def until(condition, what: str, timeout: float = 10.0) -> None:
    """A bounded wait (the deadline only turns a hang into a failure)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.01)


async def finish(ex: SpanExporter, task: asyncio.Task) -> None:
    """close(), after which run() must end (bounded, so a run() that ignores close fails)."""
    await ex.close(5.0)
    async with asyncio.timeout(10):
        await task


def export_all(port: int, records, **options) -> SpanExporter:
    """Submit, then close (which flushes): the simplest complete use."""
    async def main():
        ex = exporter(port, **options)
        for r in records:
            ex.submit(r)
        await ex.close(5.0)
        return ex
    return uvloop.run(main())


@pytest.fixture
def sink():
    with OTLPSink() as s:
        yield s


@pytest.fixture(autouse=True)
def oracle(monkeypatch):
    """Every body an exporter POSTs must decode (FromString) to exactly what the library
    builds from the records it carries: the records queued, in order, batch after batch."""
    queued: dict[SpanExporter, list[Record]] = {}
    posted: dict[SpanExporter, list[bytes]] = {}
    submit, post = SpanExporter.submit, SpanExporter._post

    def checked_submit(self, record):
        before = len(self.queue)
        submit(self, record)
        if len(self.queue) > before:
            queued.setdefault(self, []).append(record)

    async def checked_post(self, body):
        posted.setdefault(self, []).append(body)
        return await post(self, body)

    monkeypatch.setattr(SpanExporter, "submit", checked_submit)
    monkeypatch.setattr(SpanExporter, "_post", checked_post)
    yield
    for ex, bodies in posted.items():
        records = queued.get(ex, [])
        at = 0
        for body in bodies:
            sent = ExportTraceServiceRequest.FromString(body)
            count = len(sent.resource_spans[0].scope_spans[0].spans)
            assert count > 0
            assert sent == ex.request(records[at:at + count])
            at += count


def one_span(sink, rec: Record) -> dict:
    ex = export_all(sink.port, [rec])
    assert (ex.exported, ex.dropped, ex.export_failures) == (1, 0, 0)
    [span] = sink.wait_spans(1)
    return span


# -- what a span says ----------------------------------------------------------------------

def test_a_server_span_continuing_a_trace(sink):
    span = one_span(sink, record())
    assert span == {
        "trace_id": T, "span_id": S, "parent_span_id": P, "name": "GET r1",
        "kind": "SPAN_KIND_SERVER",
        "start_ns": int(1_700_000_000.25 * 1e9), "end_ns": int(1_700_000_000.75 * 1e9),
        "flags": 0x301,      # sampled, and the parent is remote
        "attributes": {
            "http.request.method": "GET", "url.path": "/a/b", "url.query": "x=1&y=2",
            "server.address": "web.local", "server.port": 8080,
            "http.response.status_code": 200, "http.request.body.size": 3,
            "http.response.body.size": 10, "fastproxy.listener": "inbound",
            "fastproxy.route": "r1", "fastproxy.cluster": "c1",
            "fastproxy.upstream": "10.0.0.7:9000", "fastproxy.request_id": "rid-1"},
        "status_code": "STATUS_CODE_UNSET", "status_message": "",
        "service_name": "web", "scope": "fastproxy",
    }
    assert sink.requests[0][:2] == ("/v1/traces", "application/x-protobuf")


def test_a_client_span_is_about_the_upstream_and_may_be_a_root(sink):
    span = one_span(sink, record(direction="outbound", listener="egress", parent_id=None,
                                 path="/only", authority="api.example", method="POST",
                                 peer="spiffe://mesh.local/ns/a/sa/b"))
    assert span["kind"] == "SPAN_KIND_CLIENT"
    assert span["parent_span_id"] == ""
    assert span["flags"] == 0x101        # sampled, a local root
    assert span["name"] == "POST r1"
    attrs = span["attributes"]
    assert (attrs["server.address"], attrs["server.port"]) == ("10.0.0.7", 9000)
    assert attrs["url.path"] == "/only" and "url.query" not in attrs
    assert attrs["fastproxy.listener"] == "egress"
    assert attrs["fastproxy.peer"] == "spiffe://mesh.local/ns/a/sa/b"


def test_an_ipv6_upstream_and_an_authority_without_port(sink):
    span = one_span(sink, record(direction="outbound", upstream="[::1]:8443"))
    attrs = span["attributes"]
    assert (attrs["server.address"], attrs["server.port"]) == ("::1", 8443)


def test_a_server_authority_without_port_has_no_server_port(sink):
    span = one_span(sink, record(authority="web.local"))
    assert span["attributes"]["server.address"] == "web.local"
    assert "server.port" not in span["attributes"]


def test_an_upstream_5xx_is_an_error(sink):
    span = one_span(sink, record(status=502))
    assert span["status_code"] == "STATUS_CODE_ERROR"
    assert span["attributes"]["error.type"] == "502"
    assert span["attributes"]["http.response.status_code"] == 502


def test_a_response_of_the_proxy_own_is_an_error_with_its_reason(sink):
    span = one_span(sink, record(direction="outbound", route=None, cluster=None, upstream=None,
                                 status=503, error="no_healthy_upstream", parent_id=None))
    assert span["name"] == "GET"
    assert span["status_code"] == "STATUS_CODE_ERROR"
    assert span["status_message"] == "no_healthy_upstream"
    attrs = span["attributes"]
    assert attrs["error.type"] == "no_healthy_upstream"
    for absent in ("server.address", "fastproxy.route", "fastproxy.cluster", "fastproxy.upstream"):
        assert absent not in attrs


def test_a_4xx_of_the_proxy_own_is_an_error_too(sink):
    span = one_span(sink, record(status=431, error="header_too_large"))
    assert span["status_code"] == "STATUS_CODE_ERROR"
    assert span["attributes"]["error.type"] == "header_too_large"


def test_a_client_gone_before_any_status(sink):
    span = one_span(sink, record(status=0))
    assert "http.response.status_code" not in span["attributes"]
    assert span["status_code"] == "STATUS_CODE_UNSET"
    assert "error.type" not in span["attributes"]


def test_an_unknown_method_is_other(sink):
    span = one_span(sink, record(method="PURGE"))
    assert span["name"] == "HTTP r1"
    assert span["attributes"]["http.request.method"] == "_OTHER"
    assert span["attributes"]["http.request.method_original"] == "PURGE"


def test_an_absolute_form_target_reports_its_path(sink):
    span = one_span(sink, record(path="http://web.local:8080/x/y?q=1"))
    assert (span["attributes"]["url.path"], span["attributes"]["url.query"]) == ("/x/y", "q=1")


# -- what gets exported ----------------------------------------------------------------------

def test_unsampled_and_untraced_records_are_ignored(sink):
    ex = export_all(sink.port, [record(sampled=False), record(trace_id=None, span_id=None),
                                record(span_id="0000000000000001")])
    assert (ex.exported, ex.dropped) == (1, 0)
    assert [s["span_id"] for s in sink.wait_spans(1)] == ["0000000000000001"]
    assert len(sink.requests) == 1


def test_batches_are_at_most_batch_size(sink):
    records = [record(span_id=f"{i + 1:016x}") for i in range(5)]
    ex = export_all(sink.port, records, batch_size=2)
    assert ex.exported == 5
    assert [n for _, _, n, _ in sink.requests] == [2, 2, 1]
    assert [s["span_id"] for s in sink.spans] == [r.span_id for r in records]


def test_a_full_batch_goes_out_without_waiting_for_the_interval(sink):
    async def main():
        ex = exporter(sink.port, batch_size=2, interval=3600)
        task = asyncio.create_task(ex.run())
        await asyncio.sleep(0)
        ex.submit(record(span_id="0000000000000001"))
        ex.submit(record(span_id="0000000000000002"))
        await until(lambda: ex.exported == 2, "the full batch to be exported")
        await finish(ex, task)
        return ex
    ex = uvloop.run(main())
    assert len(sink.spans) == 2 and ex.export_failures == 0


def test_the_connection_is_kept_alive(sink):
    async def main():
        ex = exporter(sink.port, interval=0.01)
        task = asyncio.create_task(ex.run())
        for n in (1, 2, 3):
            ex.submit(record(span_id=f"{n:016x}"))
            await until(lambda: ex.exported == n, f"export {n}")
        await finish(ex, task)
    uvloop.run(main())
    assert len(sink.requests) == 3
    assert sink.connections == 1


def test_a_connection_the_collector_closes_is_reopened(sink):
    sink.mode = "close"
    async def main():
        ex = exporter(sink.port, interval=0.01)
        task = asyncio.create_task(ex.run())
        for n in (1, 2):
            ex.submit(record(span_id=f"{n:016x}"))
            await until(lambda: ex.exported == n, f"export {n}")
        await finish(ex, task)
        return ex
    ex = uvloop.run(main())
    assert ex.export_failures == 0
    assert len(sink.spans) == 2 and sink.connections == 2


# -- bounded queue, failures ------------------------------------------------------------------

def test_submit_is_synchronous_and_drops_when_the_queue_is_full(sink):
    assert not inspect.iscoroutinefunction(SpanExporter.submit)
    ex = exporter(sink.port, max_queue=3)
    # no event loop runs here at all: submit cannot be waiting for anything
    results = [ex.submit(record(span_id=f"{i + 1:016x}")) for i in range(5)]
    assert results == [None] * 5
    assert (len(ex.queue), ex.dropped) == (3, 2)

    async def flush():
        await ex.close(5.0)
    uvloop.run(flush())
    assert (ex.exported, ex.dropped) == (3, 2)
    assert [s["span_id"] for s in sink.wait_spans(3)] == [f"{i + 1:016x}" for i in range(3)]


def test_submit_returns_at_once_while_an_export_hangs(sink):
    sink.mode = "hang"
    async def main():
        ex = exporter(sink.port, max_queue=4, batch_size=1, interval=0.01, timeout=0.5)
        task = asyncio.create_task(ex.run())
        ex.submit(record())
        await asyncio.to_thread(sink.wait_requests, 1)      # the export is now stuck
        for _ in range(6):
            assert ex.submit(record()) is None
        queued, dropped = len(ex.queue), ex.dropped
        await until(lambda: ex.export_failures >= 1, "the hanging export to time out")
        task.cancel()       # as the worker does at shutdown
        async with asyncio.timeout(10):
            await asyncio.gather(task, return_exceptions=True)
        await ex.close(0.1)
        return ex, queued, dropped
    ex, queued, dropped = uvloop.run(main())
    assert (queued, dropped) == (4, 2)
    assert ex.exported == 0


def test_a_collector_answering_500_counts_failures_then_recovers(sink, caplog):
    sink.mode = "500"
    async def main():
        ex = exporter(sink.port, interval=0.01)
        ex.WARN_EVERY = 3600.0
        task = asyncio.create_task(ex.run())
        for n in range(3):
            ex.submit(record(span_id=f"{n + 1:016x}"))
        await until(lambda: ex.export_failures >= 1, "a failed export")
        failed = (ex.exported, ex.dropped, ex.export_failures)
        ex.submit(record())
        await until(lambda: ex.export_failures >= 2, "a second failed export")
        sink.mode = "ok"
        ex.submit(record(span_id="00000000000000ff"))
        await until(lambda: ex.exported == 1, "an export after the collector recovered")
        await finish(ex, task)
        return ex, failed
    with caplog.at_level(logging.WARNING, logger="fastproxy"):
        ex, failed = uvloop.run(main())
    assert failed == (0, 3, 1)
    assert ex.backoff == 0.0
    assert [s["span_id"] for s in sink.spans] == ["00000000000000ff"]
    assert sink.requests[0][2] == 3         # the first, refused, batch did reach the sink
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "HTTP 500" in warnings[0].getMessage()


def test_a_collector_not_listening_counts_failures():
    port = free_port()
    async def main():
        ex = exporter(port, interval=0.01)
        task = asyncio.create_task(ex.run())
        ex.submit(record())
        ex.submit(record())
        await until(lambda: ex.export_failures >= 1, "a refused connection")
        assert ex.backoff > 0
        await finish(ex, task)
        return ex
    ex = uvloop.run(main())
    assert ex.exported == 0
    assert ex.dropped == 2


def test_close_gives_up_after_its_timeout_and_counts_what_is_left(sink):
    sink.mode = "hang"
    async def main():
        ex = exporter(sink.port, batch_size=2, timeout=60)
        for _ in range(5):
            ex.submit(record())
        await ex.close(0.3)
        return ex
    ex = uvloop.run(main())
    assert (ex.exported, ex.dropped, len(ex.queue)) == (0, 5, 0)
    assert ex.submit(record()) is None and ex.dropped == 6     # closed: nothing more goes out


# -- the sink as a program ---------------------------------------------------------------------

def test_the_sink_runs_as_a_program_and_writes_spans(tmp_path):
    port, out = free_port(), tmp_path / "spans.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.otlp_sink", "--port", str(port),
                             "--out", str(out)], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        wait_for_ports([port], proc=proc, what="otlp sink")
        ex = export_all(port, [record(), record(span_id="0000000000000002", direction="outbound")])
        assert ex.exported == 2
        lines = out.read_text().splitlines()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr.decode()
    spans = [json.loads(line) for line in lines]
    assert [(s["span_id"], s["kind"]) for s in spans] == [(S, "SPAN_KIND_SERVER"),
                                                          ("0000000000000002", "SPAN_KIND_CLIENT")]
    assert {s["service_name"] for s in spans} == {"web"}


# -- the hand-made bytes against the library -----------------------------------------------------

def hand_made(records) -> tuple[SpanExporter, bytes]:
    """Submit (no event loop, no network), then the body the next export would send."""
    ex = exporter(1, max_queue=len(records) + 1)
    for r in records:
        ex.submit(r)
    assert ex.dropped == 0
    return ex, ex.request_body(list(ex.queue))


def assert_as_the_library(records) -> None:
    ex, body = hand_made(records)
    assert ExportTraceServiceRequest.FromString(body) == ex.request(records)


HEX = "0123456789abcdef"
# small pools as well as anything: records of one batch then share parts (and the cache
# of encode_span, whose key must hold every field the fixed part depends on)
NAMES = (st.sampled_from(["r1", "c1", "egress", "", "ünïcødé ✓", "a" * 130])
         | st.text(max_size=20))
ADDRESSES = st.sampled_from([
    "web.local:8080", "web.local", "10.0.0.7:9000", "[::1]:8443", "[::1]", "::1", "h:", "h:0",
    "h:99999", "h:123456", "h:\u0663", "h:\u00b2", ":80", "", "ẃéb.local:1"]
) | st.text(max_size=20)
TARGETS = st.sampled_from([
    "/", "/a/b?x=1&y=2", "/?", "/only", "http://web.local:8080/x/y?q=1", "https://h", "*",
    "/ü?ß=1", "/" + "p" * 200, "/?" + "q" * 20000]) | st.text(max_size=40)
BIG = st.sampled_from([0, 1, 127, 128, 16383, 16384, 2**31, 2**63 - 1]) | st.integers(0, 2**63 - 1)


def optional(strategy):
    return st.none() | strategy


@st.composite
def records(draw) -> Record:
    start = draw(st.sampled_from([0.0, 1_700_000_000.25]) | st.floats(0, 4e9))
    return Record(
        start=start, end=draw(st.sampled_from([start, start - 1, start + 0.5])
                              | st.floats(0, 4e9)),
        listener=draw(NAMES), direction=draw(st.sampled_from(["inbound", "outbound", ""])),
        route=draw(optional(NAMES)), cluster=draw(optional(NAMES)),
        upstream=draw(optional(ADDRESSES)),
        method=draw(st.sampled_from(sorted(KNOWN_METHODS) + ["PURGE", "get", ""])
                    | st.text(max_size=10)),
        path=draw(TARGETS), authority=draw(ADDRESSES),
        status=draw(st.sampled_from([0, 200, 404, 431, 499, 500, 502, 503, 999])),
        error=draw(optional(st.sampled_from(["no_healthy_upstream", "", "é" * 200]) | NAMES)),
        bytes_in=draw(BIG), bytes_out=draw(BIG), peer=draw(optional(NAMES)),
        trace_id=draw(st.text(HEX, min_size=32, max_size=32)),
        span_id=draw(st.text(HEX, min_size=16, max_size=16)),
        parent_id=draw(st.none() | st.just("") | st.text(HEX, min_size=16, max_size=16)),
        sampled=True, request_id=draw(optional(NAMES | st.text(min_size=100, max_size=300))),
        overhead=0.001, protocol=draw(st.sampled_from(["HTTP/1.1", "HTTP/2"])),
        grpc_status=draw(optional(st.integers(0, 16))))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(records(), min_size=1, max_size=8))
@example([record()])
@example([record(), record(direction="outbound", parent_id=None, status=503,
                          error="no_healthy_upstream", request_id="x" * 5000)])
@example([record(path="/pkg.Svc/Say", protocol="HTTP/2", grpc_status=14)])
def test_the_hand_made_request_is_the_library_request(batch):
    assert_as_the_library(batch)


def test_lengths_of_every_varint_size_and_a_full_batch():
    # one, two and three byte lengths, in every field that has one: every length up to
    # where each attribute's KeyValue and the span itself need two bytes, then larger ones
    for n in [*range(260), 16383, 16384, 70000]:
        assert_as_the_library([record(path="/" + "p" * n, request_id="r" * n, listener="l" * n,
                                      route="é" * n, error="e" * n, bytes_in=n, bytes_out=n),
                               record(path="/?" + "q" * n, request_id="", method="M" * n,
                                      parent_id=None, error=None, status=n)])
    # a 512-span request is longer than 2**16 bytes: its own lengths take three bytes
    assert_as_the_library([record(span_id=f"{i + 1:016x}", bytes_out=i * 1000)
                           for i in range(512)])


def test_ids_the_core_would_not_make_are_encoded_one_by_one():
    # bytes.fromhex takes uppercase and skips spaces: the span still says what the library does
    assert_as_the_library([record(trace_id=T.upper()), record(span_id="e457b5a2 e4d86b "),
                           record(trace_id="4b f9 " + T[4:30]), record(trace_id="ab" * 8),
                           record(parent_id="00f0 67aa0ba902 "), record(parent_id=P * 2)])


def test_the_cache_of_fixed_parts_is_bounded():
    tracing._FIXED.clear()
    batch = [record(route=f"r{i}") for i in range(tracing._FIXED_MAX + 10)]
    assert_as_the_library(batch)
    assert 0 < len(tracing._FIXED) <= tracing._FIXED_MAX


def test_a_record_no_span_can_carry_is_dropped_not_raised(caplog):
    bad = [record(trace_id="zz" * 16), record(start=-1.0), record(start=float("nan")),
           record(listener=None), record(bytes_in=2**63), record(method=None)]
    for r in bad:   # the library refuses each of them too
        with pytest.raises((ValueError, TypeError)):
            exporter(1).request([r])
    ex = exporter(1)
    with caplog.at_level(logging.DEBUG, logger="fastproxy"):
        assert [ex.submit(r) for r in bad] == [None] * len(bad)
        ex.submit(record())
    assert (len(ex.queue), ex.dropped, ex.unencodable) == (1, len(bad), len(bad))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "span dropped" in warnings[0].getMessage()


def test_an_export_encodes_nothing(sink, monkeypatch):
    """The spans are encoded at submit; the export only puts bytes together, so the event
    loop never pauses for a batch."""
    async def main():
        ex = exporter(sink.port, batch_size=512)
        for i in range(600):
            ex.submit(record(span_id=f"{i + 1:016x}"))

        def refuse(*args):
            raise AssertionError("an export encoded a span")
        monkeypatch.setattr(tracing, "encode_span", refuse)
        monkeypatch.setattr(tracing, "_fill_span", refuse)
        await ex.close(5.0)
        monkeypatch.undo()      # the oracle uses the library
        return ex
    ex = uvloop.run(main())
    assert (ex.exported, ex.dropped) == (600, 0)
    assert [n for _, _, n, _ in sink.requests] == [512, 88]
