"""Request-head parsing: fastproxy's Cython parser against httptools and h11.

Each parser gets the same complete request head and must hand back what a proxy needs
to route it: method, target and the header fields. fastproxy's parser returns offsets
into the received bytes (it never builds a header list; the proxy forwards the lines as
they came); httptools is wired with only the callbacks a proxy would define (as
httptools recommends), collecting the fields into a list; h11 builds its Request event.
Each call parses from scratch: a fresh head / parser / connection per request. The
assertions check that all three read the same head, so the figures compare like with like.

    make bench-micro      (python -m pytest -q bench/micro --benchmark-only)
"""
from __future__ import annotations

import pytest

http1 = pytest.importorskip("fastproxy._core.http1", reason="the Cython core is not built (make build)")
httptools = pytest.importorskip("httptools")
h11 = pytest.importorskip("h11")

REQUESTS = {
    "curl-3-headers": (
        b"GET /api/v1/items?id=42 HTTP/1.1\r\n"
        b"Host: reviews.default.svc\r\n"
        b"User-Agent: curl/8.5.0\r\n"
        b"Accept: */*\r\n"
        b"\r\n"
    ),
    "browser-14-headers": (
        b"GET /static/app/main.5f3c1a.js?v=20240101 HTTP/1.1\r\n"
        b"Host: www.example.com\r\n"
        b"Connection: keep-alive\r\n"
        b"sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\"\r\n"
        b"sec-ch-ua-mobile: ?0\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        b"Chrome/124.0.0.0 Safari/537.36\r\n"
        b"sec-ch-ua-platform: \"Linux\"\r\n"
        b"Accept: */*\r\n"
        b"Sec-Fetch-Site: same-origin\r\n"
        b"Sec-Fetch-Mode: no-cors\r\n"
        b"Sec-Fetch-Dest: script\r\n"
        b"Referer: https://www.example.com/products/list?page=3&sort=price\r\n"
        b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
        b"Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n"
        b"Cookie: session=3f2a9c7e1b; theme=dark; _ga=GA1.2.123456789.1700000000\r\n"
        b"\r\n"
    ),
}


def parse_with_fastproxy(data: bytes):
    return http1.parse_request_head(data)


class _ProxyCallbacks:
    """Only what a proxy needs: the target and the header fields."""

    __slots__ = ("url", "headers", "complete")

    def __init__(self):
        self.url = b""
        self.headers = []
        self.complete = False

    def on_url(self, url: bytes):
        self.url += url

    def on_header(self, name: bytes, value: bytes):
        self.headers.append((name, value))

    def on_headers_complete(self):
        self.complete = True


def parse_with_httptools(data: bytes):
    callbacks = _ProxyCallbacks()
    parser = httptools.HttpRequestParser(callbacks)
    parser.feed_data(data)
    return parser, callbacks


def parse_with_h11(data: bytes):
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(data)
    return connection.next_event()


@pytest.fixture(params=list(REQUESTS))
def request_head(request, benchmark):
    benchmark.group = f"parse request head: {request.param}"
    return REQUESTS[request.param]


def test_fastproxy_cython(benchmark, request_head):
    head = benchmark(parse_with_fastproxy, request_head)
    assert head.length == len(request_head)
    assert head.method == b"GET" and head.nfields == request_head.count(b"\r\n") - 2


def test_httptools(benchmark, request_head):
    parser, callbacks = benchmark(parse_with_httptools, request_head)
    assert callbacks.complete and parser.get_method() == b"GET"
    assert len(callbacks.headers) == request_head.count(b"\r\n") - 2


def test_h11(benchmark, request_head):
    event = benchmark(parse_with_h11, request_head)
    assert isinstance(event, h11.Request) and event.method == b"GET"
    assert len(event.headers) == request_head.count(b"\r\n") - 2


def test_all_three_read_the_same_head():
    for data in REQUESTS.values():
        ours = parse_with_fastproxy(data)
        _, callbacks = parse_with_httptools(data)
        theirs = parse_with_h11(data)
        assert ours.target == callbacks.url == theirs.target
        assert ours.headers == callbacks.headers
        assert [(n.lower(), v) for n, v in ours.headers] == list(theirs.headers)
