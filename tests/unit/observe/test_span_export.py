"""SpanExporter (SPEC §7): records become OTLP spans that reach a real OTLP/HTTP receiver
(tests/support/otlp_sink.py, decoded with opentelemetry-proto); the queue is bounded,
failures are counted, and submit never waits. Runs on uvloop, as the workers do."""
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

from fastproxy.observe.records import Record
from fastproxy.observe.tracing import SpanExporter
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
