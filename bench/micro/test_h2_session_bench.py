"""One HTTP/2 request and its response through the server session: fastproxy's
(fastproxy/_core/http2_session.pxi) against the `h2` library's.

Each round starts from a session past the preface and SETTINGS; timed is what a server
does for one request: read the client's HEADERS (a 12-field browser request, HPACK-coded),
answer with a response head and a 12-byte body, and take the bytes to send. Figures, not
pass/fail: `python -m pytest -q bench/micro --benchmark-only -k session`.
"""
from __future__ import annotations

import pytest

http2 = pytest.importorskip("fastproxy._core.http2", reason="the Cython core is not built")
h2_config = pytest.importorskip("h2.config")
h2_connection = pytest.importorskip("h2.connection")
h2_events = pytest.importorskip("h2.events")

ROUNDS = 2000
REQUEST = [
    (b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"www.example.com"),
    (b":path", b"/static/app/main.5f3c1a.js?v=20240101"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"),
    (b"accept", b"*/*"), (b"sec-fetch-site", b"same-origin"), (b"sec-fetch-mode", b"no-cors"),
    (b"referer", b"https://www.example.com/products/list?page=3&sort=price"),
    (b"accept-encoding", b"gzip, deflate, br, zstd"), (b"accept-language", b"en-US,en;q=0.9"),
    (b"cookie", b"session=3f2a9c7e1b; theme=dark"),
]
RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"12")]
BODY = b"hello world\n"


def _client_bytes():
    client = h2_connection.H2Connection(h2_config.H2Configuration(client_side=True))
    client.initiate_connection()
    handshake = client.data_to_send()
    client.send_headers(1, REQUEST, end_stream=True)
    return handshake, client.data_to_send()


HANDSHAKE, HEADERS = _client_bytes()


def run(benchmark, target, setup):
    return benchmark.pedantic(target, setup=setup, rounds=ROUNDS, warmup_rounds=50)


def _ours():
    session = http2.ServerSession(http2.RecordingHandler())
    session.receive(HANDSHAKE)
    session.data_to_send()
    return (session,), {}


def _serve_ours(session):
    session.receive(HEADERS)
    session.send_headers(1, RESPONSE)
    session.send_data(1, BODY, end_stream=True)
    return session.data_to_send()


def _theirs():
    server = h2_connection.H2Connection(h2_config.H2Configuration(client_side=False))
    server.initiate_connection()
    server.receive_data(HANDSHAKE)
    server.data_to_send()
    return (server,), {}


def _serve_theirs(server):
    events = server.receive_data(HEADERS)
    assert isinstance(events[0], h2_events.RequestReceived)
    server.send_headers(1, RESPONSE)
    server.send_data(1, BODY, end_stream=True)
    return server.data_to_send()


@pytest.mark.benchmark(group="h2 session: one request and its response")
def test_session_fastproxy(benchmark):
    assert run(benchmark, _serve_ours, _ours)


@pytest.mark.benchmark(group="h2 session: one request and its response")
def test_session_h2(benchmark):
    assert run(benchmark, _serve_theirs, _theirs)
