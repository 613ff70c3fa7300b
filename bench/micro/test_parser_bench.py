"""The rest of the HTTP/1.1 parsing hot path: fastproxy's Cython code against httptools and h11.

test_parse_request_head.py times a complete request head parsed in one call. This file
times what the proxy also does on every exchange:

- a request head that arrives in three segments (IncrementalRequestParser keeps its scan
  position; httptools and h11 are fed the same segments);
- a response head (parse_response_head; httptools.HttpResponseParser; h11 as a client);
- a 64 KiB chunked body in 16 chunks, validated as it streams past (ChunkedReader without
  extraction, as the proxy forwards the bytes; httptools' on_body; h11's Data events).

Per-round setup (a fresh parser, the head already read for body benchmarks) is outside
the timed region, so only parsing is compared; assertions check that all three read the
same thing. Figures, not pass/fail: `python -m pytest -q bench/micro --benchmark-only`.
"""
from __future__ import annotations

import pytest

http1 = pytest.importorskip("fastproxy._core.http1", reason="the Cython core is not built")
httptools = pytest.importorskip("httptools")
h11 = pytest.importorskip("h11")

ROUNDS = 3000

REQUEST = (
    b"GET /static/app/main.5f3c1a.js?v=20240101 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"Connection: keep-alive\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/124.0.0.0 Safari/537.36\r\n"
    b"Accept: */*\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Sec-Fetch-Mode: no-cors\r\n"
    b"Referer: https://www.example.com/products/list?page=3&sort=price\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n"
    b"Cookie: session=3f2a9c7e1b; theme=dark; _ga=GA1.2.123456789.1700000000\r\n"
    b"\r\n"
)
# where a slow client or a small socket read would cut it
REQUEST_PIECES = [REQUEST[:40], REQUEST[40:300], REQUEST[300:]]
REQUEST_FIELDS = REQUEST.count(b"\r\n") - 2

RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: 1532\r\n"
    b"Date: Mon, 25 Nov 2024 18:00:00 GMT\r\n"
    b"Cache-Control: private, max-age=0\r\n"
    b"Vary: Accept-Encoding\r\n"
    b"x-request-id: 6f1c2a9e-8d3b-4c7e-9a1f-2b3c4d5e6f70\r\n"
    b"Server: envoy\r\n"
    b"\r\n"
)
RESPONSE_FIELDS = RESPONSE.count(b"\r\n") - 2

CHUNK = bytes(range(256)) * 16                                      # 4 KiB
BODY = b"".join(b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n" for _ in range(16)) + b"0\r\n\r\n"
BODY_DATA_LEN = 16 * len(CHUNK)
CHUNKED_HEAD = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


class _Callbacks:
    """Only what a proxy needs from httptools."""

    __slots__ = ("url", "headers", "complete", "body_bytes", "done")

    def __init__(self):
        self.url, self.headers, self.complete = b"", [], False
        self.body_bytes, self.done = 0, False

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_headers_complete(self):
        self.complete = True

    def on_body(self, body):
        self.body_bytes += len(body)

    def on_message_complete(self):
        self.done = True


def run(benchmark, target, setup):
    return benchmark.pedantic(target, setup=setup, rounds=ROUNDS, warmup_rounds=100)


# -- a request head in three segments --------------------------------------------------

@pytest.fixture
def pieces_group(benchmark):
    benchmark.group = "request head in 3 segments"


def _fastproxy_pieces(parser):
    for piece in REQUEST_PIECES:
        head = parser.feed(piece)
    return head


def test_pieces_fastproxy(benchmark, pieces_group):
    head = run(benchmark, _fastproxy_pieces, lambda: ((http1.IncrementalRequestParser(),), {}))
    assert head.length == len(REQUEST) and len(head.headers) == REQUEST_FIELDS


def _httptools_pieces(parser, callbacks):
    for piece in REQUEST_PIECES:
        parser.feed_data(piece)
    return callbacks


def _httptools_request_setup():
    callbacks = _Callbacks()
    return (httptools.HttpRequestParser(callbacks), callbacks), {}


def test_pieces_httptools(benchmark, pieces_group):
    callbacks = run(benchmark, _httptools_pieces, _httptools_request_setup)
    assert callbacks.complete and len(callbacks.headers) == REQUEST_FIELDS


def _h11_pieces(conn):
    for piece in REQUEST_PIECES:
        conn.receive_data(piece)
        event = conn.next_event()
    return event


def test_pieces_h11(benchmark, pieces_group):
    event = run(benchmark, _h11_pieces, lambda: ((h11.Connection(h11.SERVER),), {}))
    assert isinstance(event, h11.Request) and len(event.headers) == REQUEST_FIELDS


# -- a response head --------------------------------------------------------------------

@pytest.fixture
def response_group(benchmark):
    benchmark.group = "response head"


def test_response_fastproxy(benchmark, response_group):
    head = run(benchmark, http1.parse_response_head, lambda: ((RESPONSE,), {}))
    assert head.status == 200 and head.content_length == 1532
    assert len(head.headers) == RESPONSE_FIELDS


def _httptools_response_setup():
    callbacks = _Callbacks()
    return (httptools.HttpResponseParser(callbacks), callbacks), {}


def _httptools_response(parser, callbacks):
    parser.feed_data(RESPONSE)
    return parser, callbacks


def test_response_httptools(benchmark, response_group):
    parser, callbacks = run(benchmark, _httptools_response, _httptools_response_setup)
    assert parser.get_status_code() == 200 and len(callbacks.headers) == RESPONSE_FIELDS


def _h11_client():
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
    conn.send(h11.EndOfMessage())
    return (conn,), {}


def _h11_response(conn):
    conn.receive_data(RESPONSE)
    return conn.next_event()


def test_response_h11(benchmark, response_group):
    event = run(benchmark, _h11_response, _h11_client)
    assert event.status_code == 200 and len(event.headers) == RESPONSE_FIELDS


# -- a 64 KiB chunked body ----------------------------------------------------------------

@pytest.fixture
def chunked_group(benchmark):
    benchmark.group = "chunked body 64 KiB / 16 chunks"


def _fastproxy_chunked(reader):
    consumed, _ = reader.feed_bytes(BODY)
    return reader, consumed


def test_chunked_fastproxy(benchmark, chunked_group):
    reader, consumed = run(benchmark, _fastproxy_chunked, lambda: ((http1.ChunkedReader(),), {}))
    assert reader.done and consumed == len(BODY)


def _httptools_chunked_setup():
    callbacks = _Callbacks()
    parser = httptools.HttpRequestParser(callbacks)
    parser.feed_data(CHUNKED_HEAD)
    return (parser, callbacks), {}


def _httptools_chunked(parser, callbacks):
    parser.feed_data(BODY)
    return callbacks


def test_chunked_httptools(benchmark, chunked_group):
    callbacks = run(benchmark, _httptools_chunked, _httptools_chunked_setup)
    assert callbacks.done and callbacks.body_bytes == BODY_DATA_LEN


def _h11_chunked_setup():
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(CHUNKED_HEAD)
    conn.next_event()
    return (conn,), {}


def _h11_chunked(conn):
    conn.receive_data(BODY)
    received = 0
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Data):
            received += len(event.data)
        else:
            return event, received


def test_chunked_h11(benchmark, chunked_group):
    event, received = run(benchmark, _h11_chunked, _h11_chunked_setup)
    assert isinstance(event, h11.EndOfMessage) and received == BODY_DATA_LEN
