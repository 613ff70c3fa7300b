"""SPEC §7 / §11 "Tracing": trace-context propagation, observed on the wire by the
recording upstream.

- A valid incoming context (W3C `traceparent`/`tracestate`, B3 `x-b3-*`, single `b3`) is
  continued: same trace id, and the parent id sent upstream is the proxy's own span id
  (never the incoming parent's).
- Without a context a new trace starts, sampled at `sample`; an invalid context is
  replaced, never forwarded as it came.
- B3 ids of 16 hex digits are left-padded to 32 for W3C; `traceparent` wins over B3 when
  they disagree; B3-only input is also written as `traceparent`; an unsampled context is
  still propagated (flags `00`).
- `propagate = ["w3c"]` reads and writes only W3C: B3 headers pass untouched.
- The access log ties `x-request-id` to the trace id.

Two proxies in front of one recording upstream: `both` (propagate w3c+b3, sample 1.0,
access log to a file) and `w3c` (propagate w3c only, sample 0.0). Every request has a
unique path so the upstream's record of it is found by its target."""

from __future__ import annotations

import http.client
import subprocess
import uuid

import httpx
import pytest

from support.observe import (HEX16, HEX32, b3_of, parse_traceparent, read_log, wait_log)
from support.procs import LOOPBACK, wait_until
from support.upstreams import RecordedRequest

pytestmark = pytest.mark.timeout(60)

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
B3_TRACE = "463ac35c9f6413ad48485a3953bb6124"
B3_SPAN = "a2fb4a1d1a96d312"
B3_TRACE16 = "48485a3953bb6124"


def config(propagate, sample, access_log) -> str:
    return f"""
[proxy]
admin = ""
drain_timeout = "2s"
access_log = "{access_log}"

[tracing]
propagate = [{", ".join(f'"{p}"' for p in propagate)}]
sample = {sample}

[[listener]]
name = "main"
bind = "${{listen:main}}"

  [[listener.route]]
  name = "all"
  cluster = "up"

[cluster.up]
endpoints = ["${{upstream}}"]
"""


@pytest.fixture(scope="module")
def env(module_fastproxy, module_upstreams, tmp_path_factory):
    up = module_upstreams.raw()
    log_path = tmp_path_factory.mktemp("trace-log") / "access.log"
    both = module_fastproxy(config(["w3c", "b3"], 1.0, log_path), name="both", wait=False,
                            upstream=up.addr)
    w3c = module_fastproxy(config(["w3c"], 0.0, "off"), name="w3conly", wait=False,
                           upstream=up.addr)
    both.wait_ready()
    w3c.wait_ready()
    return {"up": up, "both": both, "w3c": w3c, "log": log_path}


def recorded(up, target: str) -> RecordedRequest:
    """The one request the upstream received with this target."""
    def find():
        found = [r for r in up.requests() if r.target == target]
        return found or None
    found = wait_until(find, deadline_s=5, what=f"upstream received {target}")
    assert len(found) == 1, f"{target} reached the upstream {len(found)} times"
    return found[0]


def send(env, headers: list[tuple[str, str]], proxy: str = "both",
         client: str = "http.client") -> tuple[RecordedRequest, str]:
    """One GET with these headers through the proxy; (what the upstream received, the
    response's x-request-id)."""
    target = f"/t/{uuid.uuid4().hex}"
    port = env[proxy].port()
    if client == "http.client":
        c = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
        try:
            c.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
            c.putheader("Host", "app")
            for k, v in headers:
                c.putheader(k, v)
            c.endheaders()
            r = c.getresponse()
            body = r.read()
            status, request_id = r.status, r.getheader("x-request-id")
        finally:
            c.close()
    elif client == "httpx":
        with httpx.Client(timeout=10) as hc:
            r = hc.get(f"http://{LOOPBACK}:{port}{target}", headers=[("Host", "app"), *headers])
            status, body, request_id = r.status_code, r.content, r.headers.get("x-request-id")
    else:
        args = ["curl", "-sS", "-o", "/dev/null", "-D", "-", "--max-time", "10",
                "-H", "Host: app"]
        for k, v in headers:
            args += ["-H", f"{k}: {v}"]
        out = subprocess.run(args + [f"http://{LOOPBACK}:{port}{target}"], capture_output=True,
                             text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        status = int(lines[0].split()[1])
        body = b"raw:" + target.encode()
        request_id = next((ln.split(":", 1)[1].strip() for ln in lines
                           if ln.lower().startswith("x-request-id:")), None)
    assert status == 200 and body == f"raw:{target}".encode(), (status, body)
    return recorded(env["up"], target), request_id


def traceparent(rec: RecordedRequest):
    """The one valid traceparent the upstream received."""
    values = rec.header_all("traceparent")
    assert len(values) == 1, f"traceparent headers upstream: {values!r}"
    tp = parse_traceparent(values[0])
    assert tp is not None, f"invalid traceparent sent upstream: {values[0]!r}"
    return tp


def assert_b3_matches(rec: RecordedRequest, tp) -> None:
    """With b3 propagated, the B3 context written upstream is the same context."""
    b3 = b3_of(rec)
    assert b3 is not None, f"no B3 headers upstream although b3 is propagated: {rec.headers!r}"
    assert b3.trace_id32 == tp.trace_id, (b3, tp)
    assert b3.span_id == tp.parent_id, (b3, tp)
    if b3.sampled is not None:
        assert b3.sampled == tp.sampled, (b3, tp)


# ---------------------------------------------------------------- no context

def test_absent_context_starts_a_new_sampled_trace(env):
    rec1, _ = send(env, [], client="httpx")
    rec2, _ = send(env, [], client="http.client")
    tp1, tp2 = traceparent(rec1), traceparent(rec2)
    assert tp1.sampled and tp2.sampled, "sample = 1.0: every new trace is sampled"
    assert tp1.trace_id != tp2.trace_id, "two requests without context share a trace id"
    assert_b3_matches(rec1, tp1)
    assert_b3_matches(rec2, tp2)
    assert rec1.header_all("tracestate") == []


def test_absent_context_with_sample_0_is_unsampled(env):
    rec, _ = send(env, [], proxy="w3c")
    tp = traceparent(rec)
    assert tp.flags == "00", tp
    assert b3_of(rec) is None, "propagate = [\"w3c\"]: no B3 headers are written"


# ---------------------------------------------------------------- W3C

def test_w3c_context_is_continued_with_the_proxys_span_as_parent(env):
    rec, _ = send(env, [("traceparent", f"00-{TRACE}-{PARENT}-01"),
                        ("tracestate", "vendor=opaque,other=1")])
    tp = traceparent(rec)
    assert tp.trace_id == TRACE
    assert tp.parent_id != PARENT, "the proxy's own span id must be the parent sent upstream"
    assert tp.flags == "01"
    assert rec.header_all("tracestate") == ["vendor=opaque,other=1"]
    assert_b3_matches(rec, tp)


def test_each_request_gets_its_own_span(env):
    """Two requests continuing the same parent: the same trace, two distinct proxy spans."""
    headers = [("traceparent", f"00-{TRACE}-{PARENT}-01")]
    tp1, tp2 = traceparent(send(env, headers)[0]), traceparent(send(env, headers)[0])
    assert tp1.trace_id == tp2.trace_id == TRACE
    assert len({tp1.parent_id, tp2.parent_id, PARENT}) == 3, (tp1, tp2)


def test_unsampled_w3c_context_is_still_propagated(env):
    rec, _ = send(env, [("traceparent", f"00-{TRACE}-{PARENT}-00")], client="curl")
    tp = traceparent(rec)
    assert (tp.trace_id, tp.flags) == (TRACE, "00"), tp
    assert tp.parent_id != PARENT
    assert_b3_matches(rec, tp)


def test_sampled_parent_is_honoured_whatever_sample_says(env):
    """`sample` decides for new traces only: a continued sampled context stays sampled."""
    rec, _ = send(env, [("traceparent", f"00-{TRACE}-{PARENT}-01")], proxy="w3c")
    tp = traceparent(rec)
    assert (tp.trace_id, tp.flags) == (TRACE, "01"), tp
    assert tp.parent_id != PARENT


INVALID_TRACEPARENTS = {
    "no-flags": f"00-{TRACE}-{PARENT}",
    "zero-trace-id": f"00-{'0' * 32}-{PARENT}-01",
    "zero-parent-id": f"00-{TRACE}-{'0' * 16}-01",
    "version-ff": f"ff-{TRACE}-{PARENT}-01",
    "uppercase": f"00-{TRACE.upper()}-{PARENT.upper()}-01",
    "v00-extra-field": f"00-{TRACE}-{PARENT}-01-extra",
    "short-trace-id": f"00-{TRACE[:30]}-{PARENT}-01",
    "non-hex": f"00-{TRACE[:31]}g-{PARENT}-01",
    "garbage": "hello world",
}


@pytest.mark.parametrize("value", INVALID_TRACEPARENTS.values(), ids=INVALID_TRACEPARENTS.keys())
def test_invalid_traceparent_is_replaced_by_a_new_trace(env, value):
    rec, _ = send(env, [("traceparent", value)])
    tp = traceparent(rec)      # exactly one, valid: the invalid one was not forwarded
    assert rec.header("traceparent") != value
    assert tp.trace_id != TRACE and tp.trace_id != TRACE.upper()
    assert tp.sampled, "a new trace at sample = 1.0 is sampled"
    assert_b3_matches(rec, tp)


# ---------------------------------------------------------------- B3

def test_b3_multi_header_context_is_continued_and_written_as_traceparent(env):
    rec, _ = send(env, [("X-B3-TraceId", B3_TRACE), ("X-B3-SpanId", B3_SPAN),
                        ("X-B3-Sampled", "1")], client="httpx")
    tp = traceparent(rec)
    assert (tp.trace_id, tp.flags) == (B3_TRACE, "01"), tp
    assert tp.parent_id != B3_SPAN
    assert_b3_matches(rec, tp)


def test_b3_16_hex_trace_id_is_left_padded_for_w3c(env):
    rec, _ = send(env, [("x-b3-traceid", B3_TRACE16), ("x-b3-spanid", B3_SPAN),
                        ("x-b3-sampled", "1")])
    tp = traceparent(rec)
    assert tp.trace_id == "0" * 16 + B3_TRACE16, tp
    assert tp.parent_id != B3_SPAN
    assert_b3_matches(rec, tp)


def test_b3_unsampled_multi_header_gives_flags_00(env):
    rec, _ = send(env, [("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN),
                        ("x-b3-sampled", "0")])
    tp = traceparent(rec)
    assert (tp.trace_id, tp.flags) == (B3_TRACE, "00"), tp
    assert_b3_matches(rec, tp)


@pytest.mark.parametrize("value,trace,flags", [
    (f"{B3_TRACE}-{B3_SPAN}-1", B3_TRACE, "01"),
    (f"{B3_TRACE}-{B3_SPAN}-1-{PARENT}", B3_TRACE, "01"),
    (f"{B3_TRACE16}-{B3_SPAN}-1", "0" * 16 + B3_TRACE16, "01"),
    (f"{B3_TRACE}-{B3_SPAN}-0", B3_TRACE, "00"),
    (f"{B3_TRACE}-{B3_SPAN}-d", B3_TRACE, "01"),
], ids=["sampled", "with-parent", "16-hex", "unsampled", "debug"])
def test_single_b3_header_is_continued(env, value, trace, flags):
    rec, _ = send(env, [("b3", value)], client="curl")
    tp = traceparent(rec)
    assert (tp.trace_id, tp.flags) == (trace, flags), tp
    assert tp.parent_id != B3_SPAN
    assert_b3_matches(rec, tp)
    assert value not in rec.header_all("b3"), "the proxy's own span must replace the b3 span"


INVALID_B3 = {
    "multi-non-hex-trace": [("x-b3-traceid", "z" * 32), ("x-b3-spanid", B3_SPAN), ("x-b3-sampled", "1")],
    "multi-20-hex-trace": [("x-b3-traceid", B3_TRACE[:20]), ("x-b3-spanid", B3_SPAN)],
    "multi-short-span": [("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN[:10])],
    "multi-zero-trace": [("x-b3-traceid", "0" * 32), ("x-b3-spanid", B3_SPAN)],
    "single-non-hex": [("b3", f"{'x' * 32}-{B3_SPAN}-1")],
    "single-missing-span": [("b3", f"{B3_TRACE}--1")],
}


@pytest.mark.parametrize("headers", INVALID_B3.values(), ids=INVALID_B3.keys())
def test_invalid_b3_is_replaced_never_forwarded(env, headers):
    rec, _ = send(env, headers)
    tp = traceparent(rec)
    assert tp.trace_id != B3_TRACE and tp.sampled, tp
    sent = {(k.lower(), v) for k, v in headers}
    got = {(k.decode().lower(), v.decode()) for k, v in rec.headers}
    assert not ({s for s in sent if s[0] in ("x-b3-traceid", "b3")} & got), \
        f"an invalid B3 header was forwarded as it came: {rec.headers!r}"
    assert_b3_matches(rec, tp)


def test_traceparent_wins_when_b3_disagrees(env):
    rec, _ = send(env, [("traceparent", f"00-{TRACE}-{PARENT}-01"),
                        ("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN),
                        ("x-b3-sampled", "1"), ("b3", f"{B3_TRACE}-{B3_SPAN}-1")])
    tp = traceparent(rec)
    assert tp.trace_id == TRACE, tp
    assert tp.parent_id not in (PARENT, B3_SPAN)
    assert_b3_matches(rec, tp)
    leaked = [(k, v) for k, v in rec.headers if B3_TRACE.encode() in v]
    assert not leaked, f"the losing B3 trace id was forwarded: {leaked!r}"


# ---------------------------------------------------------------- propagate = ["w3c"]

def test_w3c_only_leaves_b3_headers_untouched(env):
    b3_headers = [("X-B3-TraceId", B3_TRACE), ("X-B3-SpanId", B3_SPAN), ("X-B3-Sampled", "1"),
                  ("X-B3-ParentSpanId", PARENT), ("b3", f"{B3_TRACE}-{B3_SPAN}-1")]
    rec, _ = send(env, b3_headers, proxy="w3c")
    forwarded = [(k.decode(), v.decode()) for k, v in rec.headers
                 if k.lower().startswith(b"x-b3-") or k.lower() == b"b3"]
    assert forwarded == b3_headers, "B3 headers must pass unchanged when b3 is not propagated"
    traceparent(rec)   # a valid traceparent is still written


def test_w3c_only_continues_w3c_and_leaves_b3_alone(env):
    rec, _ = send(env, [("traceparent", f"00-{TRACE}-{PARENT}-01"),
                        ("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN)], proxy="w3c")
    tp = traceparent(rec)
    assert tp.trace_id == TRACE and tp.parent_id != PARENT
    assert rec.header_all("x-b3-traceid") == [B3_TRACE]
    assert rec.header_all("x-b3-spanid") == [B3_SPAN]


# ---------------------------------------------------------------- x-request-id and the trace

def test_access_log_ties_request_id_to_the_trace(env):
    request_id = f"req-{uuid.uuid4().hex}"
    rec, echoed = send(env, [("traceparent", f"00-{TRACE}-{PARENT}-01"),
                             ("x-request-id", request_id)])
    assert echoed == request_id
    assert rec.header_all("x-request-id") == [request_id]
    (line,) = wait_log(lambda: read_log(env["log"]), lambda e: e.get("request_id") == request_id)
    assert line["trace_id"] == TRACE
    assert line["path"] == rec.target

    # a generated request id, and a new trace: the same pair in the log and upstream
    rec, generated = send(env, [], client="httpx")
    assert generated and rec.header_all("x-request-id") == [generated]
    tp = traceparent(rec)
    (line,) = wait_log(lambda: read_log(env["log"]), lambda e: e.get("request_id") == generated)
    assert line["trace_id"] == tp.trace_id
    assert HEX32.fullmatch(line["trace_id"]) and HEX16.fullmatch(tp.parent_id)
