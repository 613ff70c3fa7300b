"""SPEC §12 "Protections": the known HTTP/2 attacks against a real fastproxy, with raw
frames (hyperframe and hpack build them). Each attack must end in the RFC's error code,
be counted in fastproxy_http2_protocol_errors_total{listener,reason}, reach the upstream
with nothing (or at most what the limit allows), and leave a well-behaved client on
another connection served meanwhile.
"""
from __future__ import annotations

import re
import socket
import time

import httpx
import pytest
from hpack import Decoder, Encoder
from hyperframe import frame as hf

from support.h2raw import Raw

pytestmark = pytest.mark.timeout(60)

MAX_STREAMS = 10
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR = 0, 1, 3, 5, 6
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 9, 11


@pytest.fixture(scope="module")
def env(module_fastproxy, module_upstreams):
    app = module_upstreams.app()
    proxy = module_fastproxy({
        "proxy": {"admin": "${listen:admin}", "drain_timeout": "2s", "access_log": "off"},
        "limits": {"max_headers": 50},
        "http2": {"max_concurrent_streams": MAX_STREAMS},
        "listener": [{"name": "main", "bind": "${listen:main}", "route": [{"cluster": "app"}]}],
        "cluster": {"app": {"endpoints": [app.addr()], "protocol": "http1"}},
    }, name="attacked")
    return proxy, app


def counted(proxy, reason: str) -> int:
    host, _, port = proxy.config["proxy"]["admin"].rpartition(":")
    text = httpx.get(f"http://{host}:{port}/metrics", timeout=5).text
    m = re.search(r'fastproxy_http2_protocol_errors_total\{listener="main",reason="%s"\} (\d+)' % reason, text)
    return int(m[1]) if m else 0


def well_behaved_client_is_served(proxy) -> None:
    with httpx.Client(http2=True, http1=False, timeout=10) as c:
        assert c.get(proxy.url("/echo", "main")).status_code == 200


def test_rapid_reset_closes_the_connection_after_the_limit(env):
    proxy, app = env
    before_hits, before_count = app.hits()["app"], counted(proxy, "rapid_reset")
    c = Raw(proxy.port("main"))
    sid = 1
    for _ in range(300):                   # 1,000 streams opened and reset at once, in batches
        batch = b""
        for _ in range(10):
            batch += c.headers(sid, "/slow?delay=2") + hf.RstStreamFrame(sid, error_code=8).serialize()
            sid += 2
        if not c.send(batch):
            break
    c.read(lambda: c.goaway() is not None)
    assert c.goaway().error_code == ENHANCE_YOUR_CALM
    well_behaved_client_is_served(proxy)
    time.sleep(0.3)
    assert app.hits()["app"] - before_hits <= 2 * MAX_STREAMS + 1   # +1: the well-behaved one
    assert counted(proxy, "rapid_reset") == before_count + 1


def test_continuation_flood_is_cut_before_the_block_ends(env):
    proxy, app = env
    before = app.hits()["app"]
    c = Raw(proxy.port("main"))
    c.send(c.headers(1, end_headers=False))
    junk = hf.ContinuationFrame(1, b"\x40\x01a\x01b" * 3000).serialize()   # 15 KB of literal fields
    for _ in range(200):                   # 3 MB if nobody stopped it
        if not c.send(junk):
            break
    c.read(lambda: c.goaway() is not None)
    assert c.goaway().error_code == ENHANCE_YOUR_CALM
    assert counted(proxy, "continuation_flood") >= 1
    well_behaved_client_is_served(proxy)
    assert app.hits()["app"] - before == 1


def test_a_header_list_over_the_limits_gets_431_and_the_connection_goes_on(env):
    proxy, _ = env
    c = Raw(proxy.port("main"))
    many = [(f"x-h{i}", "v") for i in range(80)]          # max_headers = 50
    c.send(c.headers(1, extra=many))
    c.send(c.headers(3, extra=many[:5]))                   # the table must still be in step
    c.read(lambda: len([f for f in c.frames if isinstance(f, hf.HeadersFrame)]) >= 2)
    d = Decoder()
    heads = {f.stream_id: dict(d.decode(f.data)) for f in c.frames if isinstance(f, hf.HeadersFrame)}
    assert heads[1][":status"] == "431" and heads[1]["fastproxy-error"] == "header_too_large"
    assert heads[3][":status"] == "200"
    assert c.goaway() is None


def test_a_table_size_update_above_the_advertised_size_is_a_compression_error(env):
    proxy, _ = env
    c = Raw(proxy.port("main"))
    block = b"\x3f\xe1\x3f" + Encoder().encode([(":method", "GET"), (":scheme", "http"),
                                               (":authority", "a"), (":path", "/")])  # size 8192
    c.send(hf.HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
    c.read(lambda: c.goaway() is not None)
    assert c.goaway().error_code == COMPRESSION_ERROR


def test_ping_flood_from_a_client_that_does_not_read(env):
    proxy, _ = env
    before = counted(proxy, "control_flood")
    c = Raw(proxy.port("main"))
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ping = hf.PingFrame(0, b"12345678").serialize() * 1000
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and c.send(ping):   # never reads the acknowledgements
        pass
    assert c.closed, "the proxy never closed the connection of a PING flood"
    well_behaved_client_is_served(proxy)
    deadline = time.monotonic() + 5
    while counted(proxy, "control_flood") == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert counted(proxy, "control_flood") == before + 1


def test_empty_data_frames_flood(env):
    proxy, _ = env
    c = Raw(proxy.port("main"))
    c.send(c.headers(1, "/echo", end_stream=False))
    empty = hf.DataFrame(1, b"").serialize()
    for _ in range(30):
        if not c.send(empty * 100):
            break
    c.read(lambda: c.goaway() is not None)
    assert c.goaway().error_code == ENHANCE_YOUR_CALM
    assert counted(proxy, "empty_frames") >= 1


@pytest.mark.parametrize("frames, code, reason", [
    (lambda c: hf.WindowUpdateFrame(0, window_increment=2**31 - 1).serialize(), FLOW_CONTROL_ERROR, "flow_control"),
    (lambda c: b"\x00\x40\x01\x00\x00\x00\x00\x00\x01" + b"x" * 16385, FRAME_SIZE_ERROR, "frame_size"),
    (lambda c: hf.HeadersFrame(2, b"\x82", flags=["END_HEADERS"]).serialize(), PROTOCOL_ERROR, "protocol_error"),
    (lambda c: c.headers(3) + c.headers(1), PROTOCOL_ERROR, "protocol_error"),
], ids=["window-overflow", "frame-too-large", "even-stream-id", "stream-id-going-back"])
def test_connection_errors_get_goaway_with_the_rfc_code_and_are_counted(env, frames, code, reason):
    proxy, _ = env
    before = counted(proxy, reason)
    c = Raw(proxy.port("main"))
    c.send(frames(c))
    c.read(lambda: c.goaway() is not None)
    assert c.goaway().error_code == code
    c.read(lambda: c.closed, timeout=5)
    assert c.closed
    assert counted(proxy, reason) == before + 1


def test_data_after_the_end_of_a_stream_resets_only_that_stream(env):
    """(DATA beyond a stream's window, the other stream error, is tested on the session
    in tests/unit/core/test_h2_session.py: here the proxy credits what it consumed at once.)"""
    proxy, _ = env
    c = Raw(proxy.port("main"))
    c.send(c.headers(1, "/slow?delay=1"))
    c.send(hf.DataFrame(1, b"late", flags=["END_STREAM"]).serialize())
    c.send(c.headers(3))
    c.read(lambda: STREAM_CLOSED in c.resets(1) and any(
        isinstance(f, hf.HeadersFrame) and f.stream_id == 3 for f in c.frames))
    assert c.goaway() is None


def test_a_header_block_left_open_ends_at_header_timeout(fastproxy, shared_app):
    """Slowloris for HTTP/2: HEADERS without END_HEADERS and then nothing."""
    proxy = fastproxy({
        "proxy": {"admin": "", "drain_timeout": "2s", "access_log": "off"},
        "limits": {"header_timeout": "500ms"},
        "listener": [{"name": "main", "bind": "${listen:main}", "route": [{"cluster": "app"}]}],
        "cluster": {"app": {"endpoints": [shared_app.addr()], "protocol": "http1"}},
    })
    c = Raw(proxy.port("main"))
    started = time.monotonic()
    c.send(c.headers(1, end_headers=False))
    c.read(lambda: c.goaway() is not None, timeout=5)
    assert c.goaway().error_code == PROTOCOL_ERROR
    assert 0.4 < time.monotonic() - started < 3
