"""The core's trace-context reading (fastproxy/_core/telemetry.pxi) against the reference
in fastproxy.observe.tracing: same context, same decision, for any mix of W3C and B3
headers, valid or not, in any case, repeated or not."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy._core.proxy import trace_context
from fastproxy.observe.tracing import parse_tuple

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"

VALUES = {
    b"traceparent": [f"00-{TRACE}-{SPAN}-01", f"00-{TRACE}-{SPAN}-00", f"01-{TRACE}-{SPAN}-01-x",
                     f"01-{TRACE}-{SPAN}-01", f"ff-{TRACE}-{SPAN}-01", f"00-{TRACE.upper()}-{SPAN}-01",
                     f"00-{'0' * 32}-{SPAN}-01", f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE}-{SPAN}-01-",
                     f"00-{TRACE}-{SPAN}-1", "garbage", ""],
    b"tracestate": ["a=b", "congo=t61rcWkgMzE", "x" * 600],
    b"b3": [f"{TRACE}-{SPAN}", f"{TRACE}-{SPAN}-1", f"{TRACE}-{SPAN}-0", f"{TRACE}-{SPAN}-d",
            f"{TRACE[:16]}-{SPAN}-1", f"{TRACE}-{SPAN}-1-{SPAN}", f"{TRACE}-{SPAN}-1-{'0' * 15}", f"{TRACE}-{SPAN}-1-{'0' * 16}",
            f"{TRACE}-{SPAN}-true",
            f"{TRACE}-{SPAN}-x", f"{TRACE}-{SPAN}-", "0", "1", "d", "2", f"{TRACE}", ""],
    b"x-b3-traceid": [TRACE, TRACE[:16], "0" * 32, TRACE.upper(), TRACE[:20], ""],
    b"x-b3-spanid": [SPAN, "0" * 16, SPAN[:8], SPAN.upper()],
    b"x-b3-sampled": ["1", "0", "true", "false", "d", "yes", ""],
    b"x-b3-flags": ["1", "0", "2"],
    b"x-b3-parentspanid": [SPAN, "nothex"],
}

header = st.sampled_from(sorted(VALUES)).flatmap(
    lambda name: st.tuples(st.sampled_from([name, name.upper(), name.title()]),
                           st.sampled_from(VALUES[name])))
propagate = st.sampled_from([("w3c", "b3"), ("w3c",), ("b3",)])


def core(headers, families):
    head = b"GET / HTTP/1.1\r\nHost: svc\r\n" + b"".join(
        name + b": " + value.encode() + b"\r\n" for name, value in headers) + b"\r\n"
    return trace_context(head, families)


def reference(headers, families):
    found = parse_tuple([(name, value.encode()) for name, value in headers], families)
    if found is None:
        return (None, None, -1)
    return found[:3]


@settings(max_examples=1500, deadline=None)
@given(st.lists(header, max_size=6), propagate)
def test_core_reads_the_context_the_reference_does(headers, families):
    trace_id, parent_id, sampled, _ = core(headers, families)
    assert (trace_id, parent_id, sampled) == reference(headers, families)


def test_examples():
    assert core([(b"traceparent", f"00-{TRACE}-{SPAN}-01")], ("w3c", "b3")) == (TRACE, SPAN, 1, "w3c")
    assert core([(b"b3", f"{TRACE[:16]}-{SPAN}-0")], ("w3c", "b3")) == ("0" * 16 + TRACE[:16], SPAN, 0, "b3single")
    assert core([(b"X-B3-TraceId", TRACE), (b"X-B3-SpanId", SPAN)], ("b3",)) == (TRACE, SPAN, -1, "b3")
    assert core([(b"x-b3-sampled", "1")], ("b3",)) == (None, None, 1, None)
    assert core([(b"traceparent", f"00-{TRACE}-{SPAN}-01")], ("b3",)) == (None, None, -1, None)
