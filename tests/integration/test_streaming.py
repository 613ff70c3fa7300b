"""SPEC §3: bodies stream in both directions with backpressure; memory per connection
stays bounded whatever the body size and however slow either peer is.

The body is 1 GiB, as the issue asks (about 3 s through loopback).
Set FASTPROXY_TEST_BIG_BODY (bytes, or with a suffix: 1GiB, 512MiB) for another size.
RSS is the sum of VmRSS over all fastproxy processes, read from /proc while the body
flows; growth is measured against the value after a warm-up request.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

import pytest

from support.app_upstream import PATTERN, pattern_sha256
from support.checks import RssSampler, wait_stalled
from support.configs import simple_config
from support.procs import LOOPBACK
from support.rawhttp import RawConn, read_body_sha256

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20
RSS_GROWTH_LIMIT = 50 * MiB


def _size(text: str) -> int:
    text = text.strip()
    for suffix, mult in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * mult)
    return int(text)


BIG = _size(os.environ.get("FASTPROXY_TEST_BIG_BODY", "1GiB"))



@pytest.fixture
def proxy(fastproxy, shared_app):
    p = fastproxy(simple_config(shared_app.addr()))
    # warm up: first request allocates whatever a request allocates once
    with RawConn(p.port()) as c:
        c.send(b"GET /bytes/1000000 HTTP/1.1\r\nHost: app\r\n\r\n")
        assert c.read_response().status == 200
    return p


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the response head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def test_big_download_streams_with_bounded_memory(proxy):
    base = proxy.rss()
    with RssSampler(proxy) as rss, socket.create_connection((LOOPBACK, proxy.port()), timeout=60) as s:
        s.sendall(f"GET /bytes/{BIG} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
        head, rest = read_head(s)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert f"content-length: {BIG}".encode() in head.lower()
        got, digest = read_body_sha256(s, rest, BIG)
    assert got == BIG
    assert digest == pattern_sha256(BIG)
    assert rss.peak - base < RSS_GROWTH_LIMIT, f"RSS grew {(rss.peak - base) / MiB:.1f} MiB"


def test_big_upload_streams_with_bounded_memory(proxy):
    base = proxy.rss()
    with RssSampler(proxy) as rss, socket.create_connection((LOOPBACK, proxy.port()), timeout=60) as s:
        s.sendall(f"POST /stream-upload HTTP/1.1\r\nHost: app\r\nContent-Length: {BIG}\r\n\r\n".encode())
        full, rest = divmod(BIG, len(PATTERN))
        for _ in range(full):
            s.sendall(PATTERN)
        s.sendall(PATTERN[:rest])
        r = RawConn.wrap(s, timeout=60).read_response()
    assert r.status == 200, r
    echo = json.loads(r.body)
    assert echo["body_len"] == BIG
    assert echo["body_sha256"] == pattern_sha256(BIG)
    assert rss.peak - base < RSS_GROWTH_LIMIT, f"RSS grew {(rss.peak - base) / MiB:.1f} MiB"


def test_slow_reading_client_backpressures_the_upstream(proxy, shared_app):
    """The client reads the head and then nothing: the proxy must stop reading from the
    upstream (the upstream's writes block) instead of buffering the body."""
    tag = uuid.uuid4().hex
    with RssSampler(proxy) as rss:
        base = proxy.rss()
        with RawConn(proxy.port(), rcvbuf=64 * 1024, timeout=60) as c:
            c.send(f"GET /bytes/{BIG}?tag={tag} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
            head = c.read_head(deadline=time.monotonic() + 30)
            assert head.status == 200
            sent = wait_stalled(lambda: shared_app.progress(tag)["sent"], what="upstream writes")
            grown = proxy.rss() - base
            assert not shared_app.progress(tag)["done"]
            # kernel socket buffers on loopback can hold tens of MiB; the proxy must not
            # hold the rest
            assert sent < BIG // 2, f"upstream wrote {sent / MiB:.0f} MiB of {BIG / MiB:.0f} into the proxy"
            assert grown < RSS_GROWTH_LIMIT, f"RSS grew {grown / MiB:.1f} MiB while the client was not reading"
            # now read everything: nothing was lost
            got, digest = read_body_sha256(c.sock, bytes(c.buf), BIG)
        assert got == BIG and digest == pattern_sha256(BIG)
    assert rss.peak - base < RSS_GROWTH_LIMIT


def test_slow_upstream_reader_backpressures_the_client(proxy, shared_app):
    """The upstream does not read the request body until released: the client's sends
    must block (the proxy stops reading from it) instead of the proxy buffering."""
    tag = uuid.uuid4().hex
    sent = [0]
    result = {}

    def send_body(sock):
        try:
            full, rest = divmod(BIG, len(PATTERN))
            for _ in range(full):
                sock.sendall(PATTERN)
                sent[0] += len(PATTERN)
            sock.sendall(PATTERN[:rest])
            sent[0] += rest
        except OSError as e:  # reported through `result`
            result["error"] = e

    base = proxy.rss()
    with RawConn(proxy.port(), timeout=90) as c:
        c.send(f"POST /stream-upload?hold={tag} HTTP/1.1\r\nHost: app\r\n"
               f"Content-Length: {BIG}\r\n\r\n".encode())
        t = threading.Thread(target=send_body, args=(c.sock,), daemon=True)
        t.start()
        try:
            stalled = wait_stalled(lambda: sent[0], what="client sends")
            grown = proxy.rss() - base
            assert shared_app.seen(tag), "the request never reached the upstream"
            assert stalled < BIG // 2, f"the proxy accepted {stalled / MiB:.0f} MiB the upstream did not read"
            assert grown < RSS_GROWTH_LIMIT, f"RSS grew {grown / MiB:.1f} MiB"
        finally:
            shared_app.release(tag)
        t.join(timeout=90)
        assert not t.is_alive() and "error" not in result, result
        r = c.read_response(timeout=60)
    echo = json.loads(r.body)
    assert echo["body_len"] == BIG and echo["body_sha256"] == pattern_sha256(BIG)
