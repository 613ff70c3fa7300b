"""HTTP/2 request header lists as the core's request heads (fastproxy/_core/http2.pyx).

A decoded header list becomes the HTTP/1.1-shaped head every protocol's requests take in
the core; http1.parse_request then classifies it. Well-formed lists must come out with
the same method, target, authority and fields (h11 reads the bytes too); the malformed
ones of RFC 9113 §8.2-§8.3 are refused, and the `h2` library, as a server, refuses each of
them as well (except where the table says the RFC asks for more than h2 checks).
"""
from __future__ import annotations

import h2.config
import h2.connection
import h2.exceptions
import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy._core.http1 import parse_request_head
from fastproxy._core.http2 import MalformedMessage, check_trailers, request_head_bytes, response_head_bytes

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))

token = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12).map(str.encode)
value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map(str.encode)
regular = st.tuples(token.filter(lambda n: n not in (b"connection", b"keep-alive", b"te", b"upgrade",
                                                       b"transfer-encoding", b"proxy-connection",
                                                       b"host", b"cookie", b"content-length")),
                    value)


@FUZZ
@given(st.sampled_from([b"GET", b"POST", b"DELETE"]), value.map(lambda v: b"/" + v.replace(b"#", b"")),
       st.lists(regular, max_size=10), st.lists(value.filter(bool), max_size=3))
def test_a_well_formed_request_keeps_its_method_target_authority_and_fields(method, path, fields, crumbs):
    headers = [(b":method", method), (b":scheme", b"https"), (b":authority", b"svc.local"),
               (b":path", path), *fields, *[(b"cookie", c) for c in crumbs]]
    raw = request_head_bytes(headers)
    head = parse_request_head(raw)      # (a fragment in :path would be refused here: 400)
    assert (head.method, head.authority) == (method, b"svc.local")
    assert raw.split(b" ", 2)[1] == path
    expected = [(b"host", b"svc.local"), *fields]
    if crumbs:
        expected.append((b"cookie", b"; ".join(crumbs)))
    assert [(n.lower(), v) for n, v in head.headers] == expected
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, h11.Request) and event.target == path


def test_host_stands_in_for_a_missing_authority_and_connect_is_left_to_http1():
    raw = request_head_bytes([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                              (b"host", b"a.example")])
    assert parse_request_head(raw).authority == b"a.example"
    raw = request_head_bytes([(b":method", b"CONNECT"), (b":authority", b"a.example:443")])
    with pytest.raises(Exception, match="CONNECT is not supported"):
        parse_request_head(raw)             # 501, as for HTTP/1.1


BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")]
# (header list, does h2 refuse it too)
MALFORMED = {
    "uppercase name": (BASE + [(b"X-Custom", b"1")], True),
    "connection field": (BASE + [(b"connection", b"close")], True),
    "keep-alive field": (BASE + [(b"keep-alive", b"5")], True),
    "transfer-encoding": (BASE + [(b"transfer-encoding", b"chunked")], True),
    "upgrade": (BASE + [(b"upgrade", b"websocket")], True),
    "te other than trailers": (BASE + [(b"te", b"gzip")], True),
    "pseudo-header after a field": (BASE[:3] + [(b"x", b"1"), (b":path", b"/")], True),
    "unknown pseudo-header": (BASE + [(b":status", b"200")], True),
    "duplicate pseudo-header": (BASE + [(b":path", b"/again")], True),
    "no :method": (BASE[1:], True),
    "no :scheme": ([BASE[0]] + BASE[2:], True),
    "empty :path": (BASE[:3] + [(b":path", b"")], True),
    "CR in a value": (BASE + [(b"x", b"a\rb")], True),
    "NUL in a value": (BASE + [(b"x", b"a\x00b")], True),
    "space in a name": (BASE + [(b"x y", b"1")], True),
    "leading space in a value": (BASE + [(b"x", b" a")], True),
    ":authority and host differ": (BASE + [(b"host", b"b")], True),
    "neither :authority nor host": (BASE[:2] + BASE[3:], True),
}


def _h2_refuses(headers) -> bool:
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False,
        split_outbound_cookies=False))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    client.send_headers(1, headers, end_stream=True)
    try:
        server.receive_data(client.data_to_send())
    except h2.exceptions.ProtocolError:
        return True
    return False


@pytest.mark.parametrize("headers, h2_too", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_are_refused(headers, h2_too):
    with pytest.raises(MalformedMessage):
        request_head_bytes(headers)
    assert _h2_refuses(headers) == h2_too


# ---------------------------------------------------------------- responses and trailers

@FUZZ
@given(st.sampled_from([b"200", b"204", b"404", b"503", b"299"]), st.lists(regular, max_size=10))
def test_a_well_formed_response_keeps_its_status_and_fields(status, fields):
    raw = response_head_bytes([(b":status", status), *fields])
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, h11.Response) and event.status_code == int(status)
    assert [(n, v) for n, v in event.headers] == fields


@pytest.mark.parametrize("fields", [
    [(b"x-a", b"1")],                                          # no :status
    [(b":status", b"200"), (b":status", b"200")],
    [(b"x-a", b"1"), (b":status", b"200")],                     # after a regular field
    [(b":status", b"20")], [(b":status", b"2xx")],
    [(b":status", b"200"), (b":path", b"/")],
    [(b":status", b"200"), (b"X-Upper", b"1")],
    [(b":status", b"200"), (b"x-a", b"1\r\nset-cookie: evil=1")],   # would split the head
    [(b":status", b"200"), (b"x-a", b"nul\x00")],
    [(b":status", b"200"), (b"connection", b"close")],
    [(b":status", b"200"), (b"transfer-encoding", b"chunked")],
])
def test_malformed_responses_are_refused(fields):
    with pytest.raises(MalformedMessage):
        response_head_bytes(fields)


def test_trailers_lose_what_a_trailer_section_must_not_carry_and_refuse_the_rest():
    assert check_trailers([(b"grpc-status", b"0"), (b"content-length", b"5"), (b"te", b"x"),
                           (b"grpc-message", b"ok")]) == [(b"grpc-status", b"0"),
                                                           (b"grpc-message", b"ok")]
    for bad in ([(b":status", b"200")], [(b"Grpc-Status", b"0")], [(b"x", b"a\nb")]):
        with pytest.raises(MalformedMessage):
            check_trailers(bad)
