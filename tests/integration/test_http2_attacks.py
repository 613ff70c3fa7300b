"""SPEC §12 "Protections": the known HTTP/2 attacks against a real fastproxy, with raw
frames (hyperframe and hpack build them). Each attack must end in the RFC's error code,
be counted in fastproxy_http2_protocol_errors_total{listener,reason}, reach the upstream
with nothing (or at most what the limit allows), and leave a well-behaved client on
another connection served meanwhile. Each also measures what it cost the proxy (Effect):
its memory must stay within 64 MiB above idle (issue 15's bound) and its CPU time within
a bound far above what a cut-short attack costs, so that only an attack served to its
end (or a loop) fails it. What the attacks cost at full speed, against nginx, HAProxy and
Envoy too, is measured by `python -m bench.attacks`.
"""
from __future__ import annotations

import socket
import time

import httpx
import pytest
from hpack import Decoder, Encoder
from hyperframe import frame as hf

from support.checks import RssSampler
from support.h2raw import Raw
from support.observe import scrape
from support.procs import cpu_seconds

pytestmark = pytest.mark.timeout(60)

MAX_STREAMS = 10
MEMORY_BOUND = 64 * 2**20        # above idle, per worker
CPU_BOUND_S = 5.0                # a cut-short attack costs a small fraction of it
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
    return int(scrape(proxy).value("fastproxy_http2_protocol_errors_total", 0, listener="main", reason=reason))


def well_behaved_client_is_served(proxy) -> None:
    with httpx.Client(http2=True, http1=False, timeout=10) as c:
        assert c.get(proxy.url("/echo", "main")).status_code == 200


class Effect(RssSampler):
    """What an attack cost the proxy: CPU seconds of all its processes, and the peak of
    their resident memory (sampled every 10 ms) above what it was before."""

    def __init__(self, proxy):
        super().__init__(proxy, interval=0.01)

    def __enter__(self) -> "Effect":
        self.pids = self.proxy.pids()
        self.cpu_before = sum(cpu_seconds(p) for p in self.pids)
        self.idle = self.sample()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.cpu_s = sum(cpu_seconds(p) for p in self.pids) - self.cpu_before
        self.memory = self.peak - self.idle

    def bounded(self) -> bool:
        print(f"attack effect: {self.cpu_s:.2f} s CPU, {self.memory / 2**20:+.1f} MiB")
        return self.memory <= MEMORY_BOUND and self.cpu_s <= CPU_BOUND_S


def test_rapid_reset_closes_the_connection_after_the_limit(env):
    proxy, app = env
    before_hits, before_count = app.hits()["app"], counted(proxy, "rapid_reset")
    c = Raw(proxy.port("main"))
    sid = 1
    with Effect(proxy) as effect:
        for _ in range(300):               # 3,000 streams opened and reset, in batches
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
    assert effect.bounded()


def test_a_request_reset_in_the_same_bytes_never_reaches_the_upstream(env):
    """Complete requests start once the bytes that brought them are read: a RST_STREAM
    right behind its HEADERS cancels it before the upstream hears of it."""
    proxy, app = env
    before = app.hits()["app"]
    c = Raw(proxy.port("main"))
    c.send(b"".join(c.headers(sid, "/slow?delay=2") + hf.RstStreamFrame(sid, error_code=8).serialize()
                    for sid in range(1, 2 * MAX_STREAMS, 2)))
    c.send(c.headers(2 * MAX_STREAMS + 1))
    c.read(lambda: any(isinstance(f, hf.HeadersFrame) for f in c.frames))
    assert app.hits()["app"] - before == 1                       # only the last, not reset


def test_continuation_flood_is_cut_before_the_block_ends(env):
    proxy, app = env
    before = app.hits()["app"]
    c = Raw(proxy.port("main"))
    c.send(c.headers(1, end_headers=False))
    junk = hf.ContinuationFrame(1, b"\x40\x01a\x01b" * 3000).serialize()   # 15 KB of literal fields
    with Effect(proxy) as effect:
        for _ in range(200):               # 3 MB if nobody stopped it
            if not c.send(junk):
                break
        c.read(lambda: c.goaway() is not None)
    assert c.goaway().error_code == ENHANCE_YOUR_CALM
    assert effect.bounded()
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


def test_an_hpack_bomb_is_cut_at_four_times_the_limit_and_closes_the_connection(env):
    """A 4 KB field put in the dynamic table, then 12,000 one-byte references to it: 48 MB
    once decoded. Decoding stops past 4 x max_header_bytes; nothing is forwarded."""
    proxy, app = env
    before_hits, before_count = app.hits()["app"], counted(proxy, "hpack_bomb")
    c = Raw(proxy.port("main"))
    bomb = (Encoder().encode([(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/"),
                              ("x-bomb", "a" * 4000)])             # the last goes into the table
            + b"\xbe" * 12000)                                     # index 62, 12,000 times
    with Effect(proxy) as effect:
        c.send(hf.HeadersFrame(1, bomb, flags=["END_HEADERS", "END_STREAM"]).serialize())
        c.read(lambda: c.goaway() is not None)
    assert c.goaway().error_code == ENHANCE_YOUR_CALM
    assert counted(proxy, "hpack_bomb") == before_count + 1
    well_behaved_client_is_served(proxy)
    assert app.hits()["app"] - before_hits == 1
    assert effect.bounded()


def test_a_table_size_update_above_the_advertised_size_is_a_compression_error(env):
    proxy, _ = env
    c = Raw(proxy.port("main"))
    block = b"\x3f\xe1\x3f" + Encoder().encode([(":method", "GET"), (":scheme", "http"),
                                               (":authority", "a"), (":path", "/")])  # size 8192
    c.send(hf.HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
    c.read(lambda: c.goaway() is not None)
    assert c.goaway().error_code == COMPRESSION_ERROR


@pytest.mark.parametrize("frame", [hf.PingFrame(0, b"12345678"), hf.SettingsFrame(0)],
                         ids=["ping", "settings"])
def test_control_frame_flood_from_a_client_that_does_not_read(env, frame):
    """More than 1,000 PING or SETTINGS frames in a second close the connection (and while
    a client takes none of our answers, the proxy reads none of its frames)."""
    proxy, _ = env
    before = counted(proxy, "control_flood")
    c = Raw(proxy.port("main"))
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flood = frame.serialize() * 1000
    deadline = time.monotonic() + 20
    with Effect(proxy) as effect:
        while time.monotonic() < deadline and c.send(flood):   # never reads the answers
            pass
    assert c.closed, "the proxy never closed the connection of a control frame flood"
    assert effect.bounded()
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
    with Effect(proxy) as effect:
        for _ in range(30):
            if not c.send(empty * 100):
                break
        c.read(lambda: c.goaway() is not None)
    assert c.goaway().error_code == ENHANCE_YOUR_CALM
    assert counted(proxy, "empty_frames") >= 1
    assert effect.bounded()


def test_a_flood_of_requests_that_must_be_refused_closes_the_connection(env):
    """Malformed requests (here a connection-specific header) are refused one by one, and
    the connection goes on; more than 2 x max_concurrent_streams of them in a second is a
    flood of answers to write (CVE-2019-9514): GOAWAY, counted, nothing forwarded."""
    proxy, app = env
    before_hits, before_count = app.hits()["app"], counted(proxy, "refused_flood")
    c = Raw(proxy.port("main"))
    with Effect(proxy) as effect:
        for sid in range(1, 2000, 20):
            if not c.send(b"".join(c.headers(s, extra=[("connection", "close")]) for s in range(sid, sid + 20, 2))):
                break
        c.read(lambda: c.goaway() is not None)
    assert c.goaway().error_code == ENHANCE_YOUR_CALM
    assert counted(proxy, "refused_flood") == before_count + 1
    well_behaved_client_is_served(proxy)
    assert app.hits()["app"] - before_hits == 1
    assert effect.bounded()


def test_slow_readers_hold_no_more_than_bounded_memory(env):
    """Forty connections of ten 1 MiB downloads each, windows opened to 2^31-1, never read:
    400 MiB if the proxy buffered what the upstream offers. It stops reading the upstreams
    instead (what the application still writes waits in the kernel's socket buffers)."""
    proxy, app = env
    readers = []
    with Effect(proxy) as effect:
        for _ in range(40):
            c = Raw(proxy.port("main"))
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.send(hf.SettingsFrame(0, settings={hf.SettingsFrame.INITIAL_WINDOW_SIZE: 2**31 - 1}).serialize()
                   + hf.WindowUpdateFrame(0, window_increment=2**31 - 1 - 65535).serialize()
                   + b"".join(c.headers(sid, f"/bytes/{2**20}")
                              for sid in range(1, 2 * MAX_STREAMS, 2)))
            readers.append(c)
        time.sleep(2)
    for c in readers:
        c.sock.close()
    assert effect.bounded()
    well_behaved_client_is_served(proxy)


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
