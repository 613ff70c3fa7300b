"""The trace-context rules of fastproxy.observe.tracing (SPEC §7, §11 "Tracing"): which
incoming W3C / B3 headers are a valid context, and what the proxy writes upstream."""
from __future__ import annotations

import pytest
from hypothesis import assume, given, strategies as st

from fastproxy.observe.tracing import (Context, new_span_id, new_trace_id, outgoing, parse,
                                       parse_tuple, sent_b3_single)

BOTH = ("w3c", "b3")
T = "4bf92f3577b34da6a3ce929d0e0e4736"
P = "00f067aa0ba902b7"
T16 = "a3ce929d0e0e4736"
S = "e457b5a2e4d86bd1"
TP = f"00-{T}-{P}-01"
B3T = "80f198ee56343ba864fe8b2a57d3eff7"


def h(*pairs):
    return [(name.encode(), value.encode("latin-1")) for name, value in pairs]


def w3c(trace=T, parent=P, sampled=True, tracestate=None):
    return Context(trace, parent, sampled, tracestate, "w3c")


def b3(trace=B3T, parent=S, sampled=None, source="b3"):
    return Context(trace, parent, sampled, None, source)


CASES = [
    # -- absent ------------------------------------------------------------------------
    ("nothing", [], BOTH, None),
    ("unrelated headers", [("x-request-id", "abc"), ("host", "a")], BOTH, None),
    # -- W3C valid ---------------------------------------------------------------------
    ("traceparent sampled", [("traceparent", TP)], BOTH, w3c()),
    ("traceparent unsampled", [("traceparent", f"00-{T}-{P}-00")], BOTH, w3c(sampled=False)),
    ("other flag bits ignored", [("traceparent", f"00-{T}-{P}-fe")], BOTH, w3c(sampled=False)),
    ("flags 03 sampled", [("traceparent", f"00-{T}-{P}-03")], BOTH, w3c()),
    ("name in mixed case", [("TraceParent", TP)], BOTH, w3c()),
    ("optional whitespace around value", [("traceparent", f" {TP}\t")], BOTH, w3c()),
    ("future version, exactly 55", [("traceparent", f"cc-{T}-{P}-01")], BOTH, w3c()),
    ("future version with more fields", [("traceparent", f"cc-{T}-{P}-01-what-ever")], BOTH,
     w3c()),
    ("tracestate kept", [("traceparent", TP), ("tracestate", "rojo=00f067aa0ba902b7")], BOTH,
     w3c(tracestate="rojo=00f067aa0ba902b7")),
    ("repeated tracestate joined", [("tracestate", "a=1"), ("traceparent", TP),
                                    ("TraceState", "b=2,c=3")], BOTH,
     w3c(tracestate="a=1,b=2,c=3")),
    ("empty tracestate values skipped", [("traceparent", TP), ("tracestate", ""),
                                         ("tracestate", "a=1")], BOTH, w3c(tracestate="a=1")),
    ("tracestate of exactly 512 bytes", [("traceparent", TP), ("tracestate", "a=" + "x" * 510)],
     BOTH, w3c(tracestate="a=" + "x" * 510)),
    ("tracestate over 512 bytes dropped", [("traceparent", TP), ("tracestate", "a=" + "x" * 511)],
     BOTH, w3c()),
    ("joined tracestate over 512 dropped", [("traceparent", TP), ("tracestate", "a=" + "x" * 300),
                                            ("tracestate", "b=" + "x" * 300)], BOTH, w3c()),
    ("w3c only", [("traceparent", TP)], ("w3c",), w3c()),
    # -- W3C invalid -------------------------------------------------------------------
    ("traceparent not propagated", [("traceparent", TP)], ("b3",), None),
    ("version ff", [("traceparent", f"ff-{T}-{P}-01")], BOTH, None),
    ("version uppercase", [("traceparent", f"0A-{T}-{P}-01")], BOTH, None),
    ("version one digit", [("traceparent", f"0-{T}-{P}-01x")], BOTH, None),
    ("version 00 longer than 55", [("traceparent", f"00-{T}-{P}-01-")], BOTH, None),
    ("future version: 56th char not dash", [("traceparent", f"cc-{T}-{P}-01x")], BOTH, None),
    ("too short", [("traceparent", f"00-{T}-{P}-1")], BOTH, None),
    ("uppercase trace id", [("traceparent", f"00-{T.upper()}-{P}-01")], BOTH, None),
    ("uppercase parent id", [("traceparent", f"00-{T}-00F067AA0BA902B7-01")], BOTH, None),
    ("uppercase flags", [("traceparent", f"00-{T}-{P}-0A")], BOTH, None),
    ("zero trace id", [("traceparent", f"00-{'0' * 32}-{P}-01")], BOTH, None),
    ("zero parent id", [("traceparent", f"00-{T}-{'0' * 16}-01")], BOTH, None),
    ("non-hex", [("traceparent", f"00-{T[:-1]}g-{P}-01")], BOTH, None),
    ("wrong separators", [("traceparent", f"00_{T}_{P}_01")], BOTH, None),
    ("16-digit trace id", [("traceparent", f"00-{T16}-{P}-01")], BOTH, None),
    ("two traceparent headers", [("traceparent", TP), ("traceparent", TP)], BOTH, None),
    ("empty traceparent", [("traceparent", "")], BOTH, None),
    ("tracestate alone", [("tracestate", "a=1")], BOTH, None),
    # -- B3 multi ----------------------------------------------------------------------
    ("b3 multi", [("X-B3-TraceId", B3T), ("X-B3-SpanId", S), ("X-B3-Sampled", "1")], BOTH,
     b3(sampled=True)),
    ("b3 multi unsampled", [("x-b3-traceid", B3T), ("x-b3-spanid", S), ("x-b3-sampled", "0")],
     BOTH, b3(sampled=False)),
    ("b3 multi without decision", [("x-b3-traceid", B3T), ("x-b3-spanid", S)], BOTH, b3()),
    ("b3 sampled true", [("x-b3-traceid", B3T), ("x-b3-spanid", S), ("x-b3-sampled", "true")],
     BOTH, b3(sampled=True)),
    ("b3 sampled false", [("x-b3-traceid", B3T), ("x-b3-spanid", S), ("x-b3-sampled", "false")],
     BOTH, b3(sampled=False)),
    ("b3 debug flag", [("x-b3-traceid", B3T), ("x-b3-spanid", S), ("x-b3-flags", "1")], BOTH,
     b3(sampled=True)),
    ("b3 debug flag beats sampled 0", [("x-b3-traceid", B3T), ("x-b3-spanid", S),
                                       ("x-b3-sampled", "0"), ("x-b3-flags", "1")], BOTH,
     b3(sampled=True)),
    ("b3 flags 0 is no decision", [("x-b3-traceid", B3T), ("x-b3-spanid", S), ("x-b3-flags", "0")],
     BOTH, b3()),
    ("b3 malformed sampled ignored", [("x-b3-traceid", B3T), ("x-b3-spanid", S),
                                      ("x-b3-sampled", "yes")], BOTH, b3()),
    ("b3 sampled d is not a multi value", [("x-b3-traceid", B3T), ("x-b3-spanid", S),
                                           ("x-b3-sampled", "d")], BOTH, b3()),
    ("b3 16-digit trace id padded", [("x-b3-traceid", T16), ("x-b3-spanid", S)], BOTH,
     b3(trace="0" * 16 + T16)),
    ("b3 parent span id ignored", [("x-b3-traceid", B3T), ("x-b3-spanid", S),
                                   ("x-b3-parentspanid", "not even hex")], BOTH, b3()),
    ("b3 only", [("x-b3-traceid", B3T), ("x-b3-spanid", S)], ("b3",), b3()),
    ("b3 not propagated", [("x-b3-traceid", B3T), ("x-b3-spanid", S)], ("w3c",), None),
    ("b3 trace id without span id", [("x-b3-traceid", B3T)], BOTH, None),
    ("b3 span id without trace id", [("x-b3-spanid", S)], BOTH, None),
    ("b3 uppercase trace id", [("x-b3-traceid", B3T.upper()), ("x-b3-spanid", S)], BOTH, None),
    ("b3 zero trace id", [("x-b3-traceid", "0" * 32), ("x-b3-spanid", S)], BOTH, None),
    ("b3 zero 16-digit trace id", [("x-b3-traceid", "0" * 16), ("x-b3-spanid", S)], BOTH, None),
    ("b3 zero span id", [("x-b3-traceid", B3T), ("x-b3-spanid", "0" * 16)], BOTH, None),
    ("b3 24-digit trace id", [("x-b3-traceid", B3T[:24]), ("x-b3-spanid", S)], BOTH, None),
    ("b3 32-digit span id", [("x-b3-traceid", B3T), ("x-b3-spanid", B3T)], BOTH, None),
    ("b3 repeated trace id", [("x-b3-traceid", B3T), ("x-b3-traceid", B3T),
                              ("x-b3-spanid", S)], BOTH, None),
    ("b3 repeated sampled", [("x-b3-traceid", B3T), ("x-b3-spanid", S), ("x-b3-sampled", "1"),
                             ("X-B3-Sampled", "1")], BOTH, None),
    # -- B3 single ---------------------------------------------------------------------
    ("b3 single ids", [("b3", f"{B3T}-{S}")], BOTH, b3(source="b3single")),
    ("b3 single sampled", [("b3", f"{B3T}-{S}-1")], BOTH, b3(sampled=True, source="b3single")),
    ("b3 single unsampled", [("b3", f"{B3T}-{S}-0")], BOTH, b3(sampled=False, source="b3single")),
    ("b3 single debug", [("B3", f"{B3T}-{S}-d")], BOTH, b3(sampled=True, source="b3single")),
    ("b3 single with parent", [("b3", f"{B3T}-{S}-1-{P}")], BOTH,
     b3(sampled=True, source="b3single")),
    ("b3 single 16-digit trace id", [("b3", f"{T16}-{S}-1")], BOTH,
     b3(trace="0" * 16 + T16, sampled=True, source="b3single")),
    ("b3 single bare decision", [("b3", "1")], BOTH, None),
    ("b3 single bad sampling", [("b3", f"{B3T}-{S}-true")], BOTH, None),
    ("b3 single empty sampling", [("b3", f"{B3T}-{S}-")], BOTH, None),
    ("b3 single bad parent", [("b3", f"{B3T}-{S}-1-xyz")], BOTH, None),
    ("b3 single zero parent", [("b3", f"{B3T}-{S}-1-{'0' * 16}")], BOTH, None),
    ("b3 single too many fields", [("b3", f"{B3T}-{S}-1-{P}-1")], BOTH, None),
    ("b3 single uppercase", [("b3", f"{B3T.upper()}-{S}-1")], BOTH, None),
    ("b3 single zero span", [("b3", f"{B3T}-{'0' * 16}-1")], BOTH, None),
    ("b3 single trace id only", [("b3", B3T)], BOTH, None),
    ("b3 single repeated", [("b3", f"{B3T}-{S}-1"), ("b3", f"{B3T}-{S}-1")], BOTH, None),
    ("b3 single over multi", [("x-b3-traceid", T16), ("x-b3-spanid", P), ("b3", f"{B3T}-{S}-0")],
     BOTH, b3(sampled=False, source="b3single")),
    ("invalid b3 single falls back to multi", [("b3", "garbage"), ("x-b3-traceid", B3T),
                                               ("x-b3-spanid", S)], BOTH, b3()),
    # -- both families -----------------------------------------------------------------
    ("traceparent wins over disagreeing b3", [("x-b3-traceid", B3T), ("x-b3-spanid", S),
                                             ("x-b3-sampled", "0"), ("traceparent", TP)], BOTH,
     w3c()),
    ("traceparent wins over single b3", [("b3", f"{B3T}-{S}-0"), ("traceparent", TP)], BOTH,
     w3c()),
    ("invalid traceparent, valid b3", [("traceparent", f"00-{T.upper()}-{P}-01"),
                                       ("tracestate", "a=1"), ("x-b3-traceid", B3T),
                                       ("x-b3-spanid", S), ("x-b3-sampled", "1")], BOTH,
     b3(sampled=True)),
    ("repeated traceparent, valid b3", [("traceparent", TP), ("traceparent", TP),
                                        ("b3", f"{B3T}-{S}")], BOTH, b3(source="b3single")),
    ("b3 ignored when only w3c is propagated", [("traceparent", "junk"), ("x-b3-traceid", B3T),
                                                ("x-b3-spanid", S)], ("w3c",), None),
    ("traceparent ignored when only b3 is propagated", [("traceparent", TP), ("x-b3-traceid", B3T),
                                                        ("x-b3-spanid", S)], ("b3",), b3()),
    ("nothing propagated", [("traceparent", TP), ("b3", f"{B3T}-{S}")], (), None),
]


@pytest.mark.parametrize("headers, propagate, expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_parse(headers, propagate, expected):
    assert parse(h(*headers), propagate) == expected


@pytest.mark.parametrize("headers, propagate, expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_parse_tuple_agrees_with_parse(headers, propagate, expected):
    got = parse_tuple(h(*headers), propagate)
    if expected is None:
        assert got is None or got[0] is None     # at most a bare decision
    else:
        sampled = -1 if expected.sampled is None else int(expected.sampled)
        assert got == (expected.trace_id, expected.parent_id, sampled, expected.tracestate)


DECISIONS = [
    ("bare b3 1", [("b3", "1")], BOTH, 1),
    ("bare b3 d", [("b3", "d")], BOTH, 1),
    ("bare b3 0", [("b3", "0")], BOTH, 0),
    ("x-b3-sampled alone", [("x-b3-sampled", "0")], BOTH, 0),
    ("x-b3-flags alone", [("x-b3-flags", "1")], BOTH, 1),
    ("decision beside an invalid b3 context", [("x-b3-traceid", "0" * 32), ("x-b3-spanid", S),
                                               ("x-b3-sampled", "1")], BOTH, 1),
    ("multi decision overrides bare single", [("b3", "0"), ("x-b3-sampled", "1")], BOTH, 1),
    ("bare single kept when multi is repeated", [("b3", "0"), ("x-b3-sampled", "1"),
                                                 ("x-b3-sampled", "1")], BOTH, 0),
]


@pytest.mark.parametrize("headers, propagate, sampled", [c[1:] for c in DECISIONS],
                         ids=[c[0] for c in DECISIONS])
def test_a_decision_without_context(headers, propagate, sampled):
    assert parse(h(*headers), propagate) is None
    assert parse_tuple(h(*headers), propagate) == (None, None, sampled, None)


@pytest.mark.parametrize("headers", [[("b3", "1")], [("x-b3-sampled", "0")]])
def test_a_decision_is_not_read_when_b3_is_not_propagated(headers):
    assert parse_tuple(h(*headers), ("w3c",)) is None


def test_a_valid_traceparent_hides_b3_decisions():
    assert parse_tuple(h(("b3", "0"), ("traceparent", TP)), BOTH) == (T, P, 1, None)


def test_nothing_at_all_is_none():
    assert parse_tuple([], BOTH) is None
    assert parse_tuple(h(("traceparent", "junk")), BOTH) is None


def test_sent_b3_single_is_any_b3_header_in_any_case():
    assert sent_b3_single(h(("B3", "garbage")))
    assert sent_b3_single(h(("b3", f"{B3T}-{S}")))
    assert not sent_b3_single(h(("x-b3-traceid", B3T), ("x-b3-spanid", S)))


# -- outgoing ----------------------------------------------------------------------------

def test_outgoing_new_trace_all_families():
    assert outgoing(None, B3T, S, True, BOTH, False) == [
        ("traceparent", f"00-{B3T}-{S}-01"),
        ("x-b3-traceid", B3T), ("x-b3-spanid", S), ("x-b3-sampled", "1")]


def test_outgoing_continues_w3c_with_tracestate():
    ctx = w3c(tracestate="a=1,b=2")
    assert outgoing(ctx, T, S, True, ("w3c",), False) == [
        ("traceparent", f"00-{T}-{S}-01"), ("tracestate", "a=1,b=2")]


def test_outgoing_b3_carries_the_incoming_parent():
    ctx = b3(sampled=False)
    assert outgoing(ctx, ctx.trace_id, P, False, BOTH, False) == [
        ("traceparent", f"00-{B3T}-{P}-00"),
        ("x-b3-traceid", B3T), ("x-b3-spanid", P), ("x-b3-sampled", "0"),
        ("x-b3-parentspanid", S)]


def test_outgoing_single_b3_answers_in_kind():
    ctx = b3(sampled=True, source="b3single")
    assert outgoing(ctx, B3T, P, True, ("b3",), True) == [("b3", f"{B3T}-{P}-1")]


def test_outgoing_no_tracestate_for_a_b3_context_or_a_new_trace():
    assert ("tracestate", "a=1") not in outgoing(None, T, S, True, BOTH, False)
    ctx = Context(B3T, S, True, "a=1", "b3")     # not from parse, but must not leak
    assert all(name != "tracestate" for name, _ in outgoing(ctx, B3T, P, True, BOTH, False))


def test_outgoing_nothing_propagated():
    assert outgoing(None, T, S, True, (), False) == []


def test_new_ids_are_lowercase_hex_and_distinct():
    traces = {new_trace_id() for _ in range(200)}
    spans = {new_span_id() for _ in range(200)}
    assert len(traces) == 200 and len(spans) == 200
    assert all(len(t) == 32 and int(t, 16) and t == t.lower() for t in traces)
    assert all(len(s) == 16 and int(s, 16) and s == s.lower() for s in spans)


# -- properties --------------------------------------------------------------------------

def hex_id(digits: int):
    """Ids in lowercase hex, never all zero."""
    return st.integers(1, 16 ** digits - 1).map(lambda n: f"{n:0{digits}x}")


propagations = st.sampled_from([("w3c",), ("b3",), ("w3c", "b3"), ("b3", "w3c")])


def random_case(draw, name: str) -> bytes:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if f else c for c, f in zip(name, flips)).encode()


@st.composite
def header_lists(draw, headers):
    """Outgoing headers as they arrive at the next hop: any name case, any order."""
    pairs = [(random_case(draw, name), value.encode()) for name, value in headers]
    return draw(st.permutations(pairs))


@given(trace=hex_id(32), span=hex_id(16), sampled=st.booleans(), propagate=propagations,
       b3_single=st.booleans(), data=st.data())
def test_outgoing_parses_back_to_the_same_trace(trace, span, sampled, propagate, b3_single, data):
    sent = outgoing(None, trace, span, sampled, propagate, b3_single)
    got = parse(data.draw(header_lists(sent)), propagate)
    assert got is not None
    assert (got.trace_id, got.parent_id, got.sampled) == (trace, span, sampled)
    expected = "w3c" if "w3c" in propagate else "b3single" if b3_single else "b3"
    assert got.source == expected


@given(incoming_trace=hex_id(32), incoming_span=hex_id(16), span=hex_id(16),
       sampled=st.booleans(), tracestate=st.sampled_from([None, "a=1", "k@v=x,y=2"]),
       data=st.data())
def test_a_continued_context_keeps_trace_id_and_tracestate_hop_after_hop(
        incoming_trace, incoming_span, span, sampled, tracestate, data):
    first = outgoing(None, incoming_trace, incoming_span, sampled, ("w3c",), False)
    if tracestate:
        first.append(("tracestate", tracestate))
    ctx = parse(data.draw(header_lists(first)), ("w3c",))
    assert ctx == Context(incoming_trace, incoming_span, sampled, tracestate, "w3c")
    second = parse(data.draw(header_lists(outgoing(ctx, ctx.trace_id, span, sampled,
                                                   ("w3c", "b3"), False))), ("w3c", "b3"))
    assert second == Context(incoming_trace, span, sampled, tracestate, "w3c")


@given(trace=hex_id(16), span=hex_id(16), propagate=propagations, data=st.data())
def test_a_16_digit_b3_trace_id_goes_on_padded(trace, span, propagate, data):
    incoming = data.draw(st.sampled_from([[("b3", f"{trace}-{span}-1")],
                                          [("x-b3-traceid", trace), ("x-b3-spanid", span)]]))
    ctx = parse(h(*incoming), ("b3",))
    assert ctx.trace_id == "0" * 16 + trace
    back = parse(h(*outgoing(ctx, ctx.trace_id, new_span_id(), True, propagate, False)), propagate)
    assert back.trace_id == "0" * 16 + trace


@given(trace=hex_id(32), parent=hex_id(16), position=st.integers(0, 54), data=st.data())
def test_an_uppercased_traceparent_digit_is_invalid(trace, parent, position, data):
    tp = f"00-{trace}-{parent}-01"
    letters = [i for i, c in enumerate(tp) if c in "abcdef"]
    assume(letters)
    i = data.draw(st.sampled_from(letters))
    spoiled = tp[:i] + tp[i].upper() + tp[i + 1:]
    assert parse(h(("traceparent", spoiled)), ("w3c",)) is None


trace_names = st.sampled_from(["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
                               "x-b3-sampled", "x-b3-flags", "x-b3-parentspanid", "x-other"])
junk = st.one_of(st.binary(max_size=80),
                 st.text("0123456789abcdefABCDEF-dtrue ", max_size=80).map(str.encode))


@given(st.lists(st.tuples(trace_names.map(str.encode), junk), max_size=6), propagations)
def test_parse_never_raises_and_returns_well_formed_ids(headers, propagate):
    got = parse(headers, propagate)
    if got is not None:
        assert len(got.trace_id) == 32 and int(got.trace_id, 16) != 0
        assert len(got.parent_id) == 16 and int(got.parent_id, 16) != 0
        assert got.trace_id == got.trace_id.lower() and got.parent_id == got.parent_id.lower()
        assert got.tracestate is None or len(got.tracestate.encode("latin-1")) <= 512
    tup = parse_tuple(headers, propagate)
    assert tup is None or tup[2] in (-1, 0, 1)
