"""SPEC §3/§11 strict parsing: the request-smuggling table of issue 2 item 6.

Every vector is sent on a fresh connection followed, in the same write, by a well-formed
pipelined request for /smuggled. Each case asserts:
  - the status (400 bad_request, or 501 not_implemented for a well-formed but unknown
    transfer coding) with `fastproxy-error` and the one-line body;
  - exactly one response, then the connection is closed (the pipelined follow-up on the
    same connection is not answered: the stream is not "re-synchronised" by guessing);
  - the recording upstream received NOTHING of it (neither the vector nor /smuggled);
  - a new connection afterwards is served normally (and is the only thing upstream saw).

A second table holds the close cousins that are valid and must be forwarded, so the
strictness is not bought by rejecting legal traffic.
"""

from __future__ import annotations

import pytest

from support.checks import assert_proxy_error
from support.configs import simple_config
from support.rawhttp import ConnectionClosed, RawConn
from support.upstreams import parse_recorded

pytestmark = pytest.mark.timeout(30)

FOLLOW_UP = b"GET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n"


def post(*lines: bytes, body: bytes = b"", start: bytes = b"POST /v HTTP/1.1") -> bytes:
    return start + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


def get(*lines: bytes, start: bytes = b"GET /v HTTP/1.1") -> bytes:
    return post(*lines, start=start)


H = b"Host: app"
CHUNKED = b"Transfer-Encoding: chunked"

# (id, request bytes, expected status)
VECTORS = [
    # ---- Content-Length: conflicting, duplicate, list-form, malformed, overflow
    ("cl-conflicting", post(H, b"Content-Length: 5", b"Content-Length: 6", body=b"helloX"), 400),
    ("cl-duplicate-same", post(H, b"Content-Length: 5", b"Content-Length: 5", body=b"hello"), 400),
    ("cl-list-form", post(H, b"Content-Length: 5, 5", body=b"hello"), 400),
    ("cl-plus", post(H, b"Content-Length: +5", body=b"hello"), 400),
    ("cl-minus", post(H, b"Content-Length: -1", body=b"hello"), 400),
    ("cl-hex", post(H, b"Content-Length: 0x10", body=b"0123456789abcdef"), 400),
    ("cl-underscore", post(H, b"Content-Length: 1_0", body=b"0123456789"), 400),
    ("cl-empty", post(H, b"Content-Length: ", body=b"hello"), 400),
    ("cl-overflow", post(H, b"Content-Length: 99999999999999999999", body=b"hello"), 400),
    ("cl-inner-space", post(H, b"Content-Length: 1 0", body=b"0123456789"), 400),
    ("cl-decimal-point", post(H, b"Content-Length: 5.0", body=b"hello"), 400),
    # ---- Transfer-Encoding other than a final chunked
    ("te-vtab-chunked", post(H, b"Transfer-Encoding: \x0bchunked", body=b"5\r\nhello\r\n0\r\n\r\n"), 400),
    ("te-chunked-identity", post(H, b"Transfer-Encoding: chunked, identity",
                                 body=b"5\r\nhello\r\n0\r\n\r\n"), 400),
    ("te-chunked-twice", post(H, b"Transfer-Encoding: chunked, chunked",
                              body=b"5\r\nhello\r\n0\r\n\r\n"), 400),
    ("te-space-before-colon", post(H, b"Transfer-Encoding : chunked",
                                   body=b"5\r\nhello\r\n0\r\n\r\n"), 400),
    ("te-duplicate-lines", post(H, CHUNKED, CHUNKED, body=b"5\r\nhello\r\n0\r\n\r\n"), 400),
    ("te-chunked-then-identity-lines", post(H, CHUNKED, b"Transfer-Encoding: identity",
                                            body=b"5\r\nhello\r\n0\r\n\r\n"), 400),
    ("te-quoted", post(H, b'Transfer-Encoding: "chunked"', body=b"5\r\nhello\r\n0\r\n\r\n"), 400),
    ("te-empty", post(H, b"Transfer-Encoding: ", body=b"5\r\nhello\r\n0\r\n\r\n"), 400),
    # a well-formed coding the proxy does not implement: 501 (SPEC §11)
    ("te-gzip", post(H, b"Transfer-Encoding: gzip", body=b"hello"), 501),
    # `identity` is a syntactically valid token naming a coding nobody implements any more
    # (removed from the registry by RFC 7230): by SPEC §11 that is 501, like gzip.
    ("te-identity", post(H, b"Transfer-Encoding: identity", body=b"hello"), 501),
    # ---- CL together with TE (either order)
    ("cl-then-te", post(H, b"Content-Length: 5", CHUNKED, body=b"5\r\nhello\r\n0\r\n\r\n"), 400),
    ("te-then-cl", post(H, CHUNKED, b"Content-Length: 5", body=b"5\r\nhello\r\n0\r\n\r\n"), 400),
    ("cl-zero-and-te", post(H, b"Content-Length: 0", CHUNKED, body=b"5\r\nhello\r\n0\r\n\r\n"), 400),
    # ---- obs-fold (line folding) anywhere
    ("obs-fold-space", get(H, b"X-Foo: a", b" b"), 400),
    ("obs-fold-tab", get(H, b"X-Foo: a", b"\tb"), 400),
    ("obs-fold-first-line", get(b" X-Foo: a", H), 400),
    ("obs-fold-into-te", post(H, b"Transfer-Encoding: x", b" chunked", body=b"5\r\nhello\r\n0\r\n\r\n"), 400),
    # ---- bare CR / bare LF. SPEC §3 demands 400 for "bare CR/LF": stricter than RFC 9112
    # §2.2, which lets a recipient accept a lone LF as a line terminator. A proxy that
    # accepted it would disagree with upstreams that do not: exactly the smuggling risk.
    ("bare-cr-in-value", get(H, b"X-Foo: a\rb"), 400),
    ("bare-cr-before-crlf", get(H, b"X-Foo: a\r"), 400),
    ("bare-cr-request-line", b"GET /v HTTP/1.1\rHost: app\r\n\r\n", 400),
    ("bare-lf-everywhere", b"GET /v HTTP/1.1\nHost: app\n\n", 400),
    ("bare-lf-one-header", b"GET /v HTTP/1.1\r\nX-Foo: a\nHost: app\r\n\r\n", 400),
    ("bare-lf-request-line", b"GET /v HTTP/1.1\nHost: app\r\n\r\n", 400),
    ("bare-lf-end-of-head", b"GET /v HTTP/1.1\r\nHost: app\r\n\n", 400),
    # ---- NUL and other CTLs
    ("nul-in-value", get(H, b"X-Foo: a\x00b"), 400),
    ("ctl-0x01-in-value", get(H, b"X-Foo: a\x01b"), 400),
    ("ctl-esc-in-value", get(H, b"X-Foo: a\x1bb"), 400),
    ("del-in-value", get(H, b"X-Foo: a\x7fb"), 400),
    ("nul-in-name", get(H, b"X-F\x00oo: a"), 400),
    ("nul-in-target", get(H, start=b"GET /a\x00b HTTP/1.1"), 400),
    ("ctl-in-target", get(H, start=b"GET /a\x01b HTTP/1.1"), 400),
    # ---- invalid field names
    ("name-empty", get(H, b": value"), 400),
    ("name-with-space", get(H, b"X Foo: bar"), 400),
    ("name-non-token", get(H, b"X(Foo): bar"), 400),
    ("name-non-ascii", get(H, b"X-F\xc3\xb6o: bar"), 400),
    ("name-space-before-colon", get(H, b"X-Foo : bar"), 400),
    ("name-tab-before-colon", get(H, b"X-Foo\t: bar"), 400),
    ("line-without-colon", get(H, b"X-Foo bar"), 400),
    # ---- chunk sizes and chunk framing
    ("chunk-size-overflow", post(H, CHUNKED, body=b"FFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-0x", post(H, CHUNKED, body=b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-leading-space", post(H, CHUNKED, body=b" 5\r\nhello\r\n0\r\n\r\n"), 400),
    # RFC 9112 allows BWS only before a ';' chunk extension, not before the CRLF
    ("chunk-size-trailing-space", post(H, CHUNKED, body=b"5 \r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-inner-space", post(H, CHUNKED, body=b"1 0\r\n0123456789abcdef\r\n0\r\n\r\n"), 400),
    ("chunk-size-negative", post(H, CHUNKED, body=b"-5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-empty", post(H, CHUNKED, body=b"\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-non-hex", post(H, CHUNKED, body=b"g\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-missing-crlf-after-data", post(H, CHUNKED, body=b"5\r\nhello0\r\n\r\n"), 400),
    ("chunk-data-longer-than-size", post(H, CHUNKED, body=b"5\r\nhelloXX\r\n0\r\n\r\n"), 400),
    ("chunk-data-shorter-than-size", post(H, CHUNKED, body=b"5\r\nhel\r\n0\r\n\r\n"), 400),
    ("chunk-lines-bare-lf", post(H, CHUNKED, body=b"5\nhello\n0\n\n"), 400),
    # chunk-ext-name is a token, chunk-ext-val a token or quoted-string (RFC 9112 §7.1.1)
    ("chunk-extension-empty", post(H, CHUNKED, body=b"5;\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-extension-empty-name", post(H, CHUNKED, body=b"5;=x\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-extension-empty-value", post(H, CHUNKED, body=b"5;a=\r\nhello\r\n0\r\n\r\n"), 400),
    # ---- request line and version
    ("rl-double-space", get(H, start=b"GET  /v HTTP/1.1"), 400),
    ("rl-missing-version", get(H, start=b"GET /v"), 400),
    ("rl-version-1.01", get(H, start=b"GET /v HTTP/1.01"), 400),
    ("rl-version-2.0", get(H, start=b"GET /v HTTP/2.0"), 400),
    ("rl-version-lowercase", get(H, start=b"GET /v http/1.1"), 400),
    ("rl-trailing-space", get(H, start=b"GET /v HTTP/1.1 "), 400),
    ("rl-tabs", get(H, start=b"GET\t/v\tHTTP/1.1"), 400),
    ("rl-space-in-target", get(H, start=b"GET /a b HTTP/1.1"), 400),
    ("rl-method-non-token", get(H, start=b"G(T /v HTTP/1.1"), 400),
    ("rl-empty-method", get(H, start=b" /v HTTP/1.1"), 400),
    ("rl-target-not-origin-form", get(H, start=b"GET v HTTP/1.1"), 400),
    # ---- Host: missing (HTTP/1.1), duplicate, invalid
    ("host-missing", get(start=b"GET /v HTTP/1.1"), 400),
    ("host-duplicate-same", get(H, H), 400),
    ("host-duplicate-different", get(H, b"Host: other"), 400),
    ("host-userinfo", get(b"Host: user@app"), 400),
    ("host-port-non-numeric", get(b"Host: app:abc"), 400),
    ("host-list", get(b"Host: app, other"), 400),
    ("host-slash", get(b"Host: app/x"), 400),
    ("host-inner-whitespace", get(b"Host: ap p"), 400),
    ("host-absolute-form-differs", get(H, start=b"GET http://other/v HTTP/1.1"), 400),
    ("host-absolute-form-userinfo", get(H, start=b"GET http://u@app/v HTTP/1.1"), 400),
]

REASON = {400: "bad_request", 501: "not_implemented"}


@pytest.fixture(scope="module")
def env(module_fastproxy, module_upstreams):
    up = module_upstreams.raw()
    # a short header_timeout: a parser that waits for more bytes instead of rejecting
    # fails with 408 quickly rather than hanging the table
    proxy = module_fastproxy(simple_config(up.addr, limits='header_timeout = "3s"'))
    return proxy, up


@pytest.mark.parametrize("vector,status", [(v, s) for _, v, s in VECTORS],
                         ids=[i for i, _, _ in VECTORS])
def test_smuggling_vector_rejected(env, vector, status, request):
    proxy, up = env
    snap = up.snapshot()
    with RawConn(proxy.port(), timeout=10) as c:
        c.send(vector + FOLLOW_UP)
        try:
            resp = c.read_response()
        except ConnectionClosed as e:
            pytest.fail(f"connection {'reset' if c.reset else 'closed'} before any response "
                        f"(a proxy should answer {status} and drain before closing): {e}")
        assert_proxy_error(resp, status, REASON[status])
        try:
            rest = c.wait_closed(5)
        except TimeoutError:
            pytest.fail("connection left open after a rejected request")
        assert rest == b"", f"more bytes after the {status}: {rest[:300]!r}"
    # a new connection works, and it is the only thing the upstream ever saw
    follow = f"/after-{request.node.callspec.id}"
    with RawConn(proxy.port(), timeout=10) as c:
        c.send(f"GET {follow} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
        r = c.read_response()
        assert (r.status, r.body) == (200, f"raw:{follow}".encode())
    seen = up.bytes_since(snap)
    targets = [req.target for req in parse_recorded(seen)]
    assert targets == [follow], f"upstream received more than the follow-up: {seen[:500]!r}"


# ---- valid neighbours of the vectors: forwarded, with the body intact
ACCEPTED = [
    ("cl-leading-zeros-are-decimal", post(H, b"Content-Length: 010", body=b"0123456789"), b"0123456789"),
    ("cl-ows", post(H, b"Content-Length:  5 ", body=b"hello"), b"hello"),
    ("te-chunked-case-insensitive", post(H, b"Transfer-Encoding: Chunked",
                                         body=b"5\r\nhello\r\n0\r\n\r\n"), b"hello"),
    ("chunk-extension", post(H, CHUNKED, body=b"5;name=value\r\nhello\r\n0\r\n\r\n"), b"hello"),
    ("chunk-extension-bws", post(H, CHUNKED, body=b"5 ; name=value\r\nhello\r\n0\r\n\r\n"), b"hello"),
    ("chunk-extension-name-only", post(H, CHUNKED, body=b"5;a\r\nhello\r\n0\r\n\r\n"), b"hello"),
    ("chunk-extension-quoted-bws", post(H, CHUNKED, body=b'5 ; a = "q"\r\nhello\r\n0\r\n\r\n'),
     b"hello"),
    ("chunk-size-leading-zeros", post(H, CHUNKED, body=b"0005\r\nhello\r\n0\r\n\r\n"), b"hello"),
    ("chunk-size-uppercase-hex", post(H, CHUNKED, body=b"A\r\n0123456789\r\n0\r\n\r\n"), b"0123456789"),
    ("chunk-trailers", post(H, CHUNKED, body=b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"), b"hello"),
    ("value-htab-and-obs-text", get(H, b"X-Foo: a\tb\xe9"), b""),
    ("http10-without-host", b"GET /v HTTP/1.0\r\n\r\n", b""),
    ("absolute-form-same-authority", get(H, start=b"GET http://app/v HTTP/1.1"), b""),
    ("host-with-port", get(b"Host: app:8080"), b""),
    ("host-ipv6-literal", get(b"Host: [::1]:8080"), b""),
    # a body that looks like a request is a body: one request upstream, not two
    ("body-looks-like-a-request", post(H, b"Content-Length: %d" % len(FOLLOW_UP), body=FOLLOW_UP),
     FOLLOW_UP),
    ("chunked-body-looks-like-a-request",
     post(H, CHUNKED, body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(FOLLOW_UP), FOLLOW_UP)), FOLLOW_UP),
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request line
    ("leading-empty-line", b"\r\n" + get(H), b""),
]


@pytest.mark.parametrize("raw,body", [(r, b) for _, r, b in ACCEPTED], ids=[i for i, _, _ in ACCEPTED])
def test_valid_neighbour_forwarded(env, raw, body):
    proxy, up = env
    snap = up.snapshot()
    with RawConn(proxy.port(), timeout=10) as c:
        c.send(raw)
        r = c.read_response()
        assert r.status == 200, r
        assert r.header("fastproxy-error") is None
    recorded = parse_recorded(up.bytes_since(snap))
    assert len(recorded) == 1, recorded
    assert recorded[0].body == body
