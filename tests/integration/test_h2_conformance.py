"""A conformance corpus after h2spec's cases (RFC 9113 and RFC 7541 sections), with raw
frames against a real fastproxy, each expecting the RFC's outcome:

  ok                 the connection goes on (a PING sent after the case is answered)
  conn CODE          GOAWAY with CODE
  closed             the connection closed (not HTTP/2 at all: answered as HTTP/1.1)
  stream CODE        RST_STREAM with CODE on the case's stream, or a GOAWAY with CODE
  response STATUS    a response with that status on stream 1
"""
from __future__ import annotations

import pytest
from hpack import Decoder, Encoder
from hyperframe import frame as hf

from support.h2raw import PREFACE, Raw

pytestmark = pytest.mark.timeout(60)

NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR = 0, 1, 3, 5, 6
COMPRESSION_ERROR = 9


@pytest.fixture(scope="module")
def proxy(module_fastproxy, module_upstreams):
    app = module_upstreams.app()
    return module_fastproxy({
        "proxy": {"admin": "", "drain_timeout": "2s", "access_log": "off"},
        "listener": [{"name": "main", "bind": "${listen:main}", "route": [{"cluster": "app"}]}],
        "cluster": {"app": {"endpoints": [app.addr()], "protocol": "http1"}},
    }, name="conformance")


def head(c: Raw, sid: int = 1, end_stream: bool = True, end_headers: bool = True,
         path: str = "/echo", extra=(), method: str = "GET") -> bytes:
    block = c.encoder.encode([(":method", method), (":scheme", "http"), (":authority", "t"),
                              (":path", path), *extra])
    flags = (["END_STREAM"] if end_stream else []) + (["END_HEADERS"] if end_headers else [])
    return hf.HeadersFrame(sid, block, flags=flags).serialize()


def raw_frame(length: int, ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return length.to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


def block(c: Raw, sid: int, raw_block: bytes, end_stream: bool = True) -> bytes:
    flags = ["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
    return hf.HeadersFrame(sid, raw_block, flags=flags).serialize()


def req(*fields) -> bytes:
    return Encoder().encode(list(fields))


BASE = ((":method", "GET"), (":scheme", "http"), (":authority", "t"), (":path", "/echo"))

CASES = {
    # 3.5 HTTP/2 connection preface
    "3.5/1 invalid preface": (lambda c: b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", "closed", None, False),
    "3.5/2 no SETTINGS first": (lambda c: PREFACE + hf.PingFrame(0, b"12345678").serialize(),
                                "conn", PROTOCOL_ERROR, False),
    # 4.1 frame format
    "4.1/1 unknown frame type": (lambda c: raw_frame(4, 0x20, 0, 0, b"abcd"), "ok", None, True),
    "4.1/2 undefined flags": (lambda c: hf.PingFrame(0, b"12345678").serialize()[:4] + b"\x16"
                              + hf.PingFrame(0, b"12345678").serialize()[5:], "ok", None, True),
    "4.1/3 reserved bit set": (lambda c: raw_frame(8, 6, 0, 0x80000000, b"12345678"), "ok", None, True),
    # 4.2 frame size
    "4.2/1 DATA of 16384": (lambda c: head(c, end_stream=False, method="POST")
                            + hf.DataFrame(1, b"x" * 16384, flags=["END_STREAM"]).serialize(),
                            "response", 200, True),
    "4.2/2 DATA over max": (lambda c: head(c, end_stream=False, method="POST")
                            + raw_frame(16385, 0, 1, 1, b"x" * 16385), "conn", FRAME_SIZE_ERROR, True),
    "4.2/3 HEADERS over max": (lambda c: raw_frame(16385, 1, 5, 1, b"\x88" * 16385),
                               "conn", FRAME_SIZE_ERROR, True),
    # 4.3 header compression
    "4.3/1 invalid header block": (lambda c: block(c, 1, b"\x80"), "conn", COMPRESSION_ERROR, True),
    "4.3/2 PRIORITY between HEADERS and CONTINUATION": (
        lambda c: head(c, end_headers=False) + hf.PriorityFrame(1, depends_on=0).serialize(),
        "conn", PROTOCOL_ERROR, True),
    # 5.1 stream states
    "5.1/1 DATA on idle stream": (lambda c: hf.DataFrame(1, b"x").serialize(), "conn", PROTOCOL_ERROR, True),
    "5.1/2 RST_STREAM on idle stream": (lambda c: hf.RstStreamFrame(1, error_code=8).serialize(),
                                       "conn", PROTOCOL_ERROR, True),
    "5.1/3 WINDOW_UPDATE on idle stream": (lambda c: hf.WindowUpdateFrame(1, window_increment=100).serialize(),
                                           "conn", PROTOCOL_ERROR, True),
    "5.1/4 CONTINUATION without HEADERS": (lambda c: hf.ContinuationFrame(1, b"\x88", flags=["END_HEADERS"]).serialize(),
                                           "conn", PROTOCOL_ERROR, True),
    "5.1/5 DATA on half-closed (remote)": (lambda c: head(c, path="/slow?delay=0.5")
                                           + hf.DataFrame(1, b"x", flags=["END_STREAM"]).serialize(),
                                           "stream", STREAM_CLOSED, True),
    "5.1/6 HEADERS on half-closed (remote)": (lambda c: head(c, path="/slow?delay=0.5")
                                              + block(c, 1, req(("x-a", "1"))), "stream", STREAM_CLOSED, True),
    # 5.1.1 stream identifiers
    "5.1.1/1 even stream id": (lambda c: head(c, sid=2), "conn", PROTOCOL_ERROR, True),
    "5.1.1/2 stream id smaller than a previous one": (lambda c: head(c, sid=5) + head(c, sid=3),
                                                      "conn", PROTOCOL_ERROR, True),
    # 5.1.2 concurrency (limit 100): beyond it REFUSED_STREAM (or PROTOCOL_ERROR)
    "5.1.2/1 over max concurrent streams": (
        lambda c: b"".join(head(c, sid=2 * i + 1, path="/slow?delay=1") for i in range(101)),
        "stream", 7, True),
    # 5.3.1 stream dependencies
    "5.3.1/1 HEADERS depending on itself": (
        lambda c: hf.HeadersFrame(1, req(*BASE), depends_on=1, stream_weight=16,
                                  flags=["END_HEADERS", "END_STREAM", "PRIORITY"]).serialize(),
        "ok-or-stream", PROTOCOL_ERROR, True),
    "5.3.1/2 PRIORITY depending on itself": (lambda c: hf.PriorityFrame(1, depends_on=1).serialize(),
                                            "ok-or-stream", PROTOCOL_ERROR, True),
    # 5.4.1 connection error handling
    "5.4.1/1 invalid PING closes with GOAWAY": (lambda c: raw_frame(6, 6, 0, 0, b"123456"),
                                               "conn", FRAME_SIZE_ERROR, True),
    # 5.5 extending HTTP/2
    "5.5/1 unknown frame in a header block": (lambda c: head(c, end_headers=False) + raw_frame(4, 0x20, 0, 1, b"abcd"),
                                              "conn", PROTOCOL_ERROR, True),
    # 6.1 DATA
    "6.1/1 DATA on stream 0": (lambda c: raw_frame(1, 0, 1, 0, b"x"),
                               "conn", PROTOCOL_ERROR, True),
    "6.1/2 DATA with bad padding": (lambda c: head(c, end_stream=False, method="POST")
                                    + raw_frame(4, 0, 0x9, 1, b"\x05abc"), "conn", PROTOCOL_ERROR, True),
    # 6.2 HEADERS
    "6.2/1 HEADERS on stream 0": (lambda c: raw_frame(1, 1, 5, 0, b"\x88"), "conn", PROTOCOL_ERROR, True),
    "6.2/2 HEADERS with bad padding": (lambda c: raw_frame(4, 1, 0xD, 1, b"\x05\x82\x84\x86"),
                                       "conn", PROTOCOL_ERROR, True),
    # 6.3 PRIORITY
    "6.3/1 PRIORITY on stream 0": (lambda c: raw_frame(5, 2, 0, 0, b"\x00\x00\x00\x01\x10"),
                                   "conn", PROTOCOL_ERROR, True),
    "6.3/2 PRIORITY of length 4": (lambda c: raw_frame(4, 2, 0, 1, b"\x00\x00\x00\x01"),
                                   "stream-or-conn", FRAME_SIZE_ERROR, True),
    # 6.4 RST_STREAM
    "6.4/1 RST_STREAM on stream 0": (lambda c: raw_frame(4, 3, 0, 0, b"\x00\x00\x00\x08"),
                                     "conn", PROTOCOL_ERROR, True),
    "6.4/2 RST_STREAM of length 3": (lambda c: head(c, path="/slow?delay=1") + raw_frame(3, 3, 0, 1, b"\x00\x00\x08"),
                                     "conn", FRAME_SIZE_ERROR, True),
    # 6.5 SETTINGS
    "6.5/1 SETTINGS ACK with a payload": (lambda c: raw_frame(6, 4, 1, 0, b"\x00\x03\x00\x00\x00\x01"),
                                          "conn", FRAME_SIZE_ERROR, True),
    "6.5/2 SETTINGS on a stream": (lambda c: raw_frame(6, 4, 0, 1, b"\x00\x03\x00\x00\x00\x01"),
                                   "conn", PROTOCOL_ERROR, True),
    "6.5/3 SETTINGS of length 3": (lambda c: raw_frame(3, 4, 0, 0, b"\x00\x03\x00"),
                                   "conn", FRAME_SIZE_ERROR, True),
    "6.5.2/1 ENABLE_PUSH of 2": (lambda c: raw_frame(6, 4, 0, 0, b"\x00\x02\x00\x00\x00\x02"),
                                 "conn", PROTOCOL_ERROR, True),
    "6.5.2/2 INITIAL_WINDOW_SIZE over 2^31-1": (lambda c: raw_frame(6, 4, 0, 0, b"\x00\x04\x80\x00\x00\x00"),
                                                "conn", FLOW_CONTROL_ERROR, True),
    "6.5.2/3 MAX_FRAME_SIZE too small": (lambda c: raw_frame(6, 4, 0, 0, b"\x00\x05\x00\x00\x3f\xff"),
                                         "conn", PROTOCOL_ERROR, True),
    "6.5.2/4 MAX_FRAME_SIZE too large": (lambda c: raw_frame(6, 4, 0, 0, b"\x00\x05\x01\x00\x00\x00"),
                                         "conn", PROTOCOL_ERROR, True),
    "6.5.2/5 unknown setting": (lambda c: raw_frame(6, 4, 0, 0, b"\x00\xff\x00\x00\x00\x01"), "ok", None, True),
    # 6.7 PING
    "6.7/1 PING on a stream": (lambda c: raw_frame(8, 6, 0, 1, b"12345678"), "conn", PROTOCOL_ERROR, True),
    "6.7/2 PING of length 7": (lambda c: raw_frame(7, 6, 0, 0, b"1234567"), "conn", FRAME_SIZE_ERROR, True),
    # 6.8 GOAWAY
    "6.8/1 GOAWAY on a stream": (lambda c: raw_frame(8, 7, 0, 1, b"\x00" * 8), "conn", PROTOCOL_ERROR, True),
    # 6.9 WINDOW_UPDATE
    "6.9/1 increment 0 on the connection": (lambda c: raw_frame(4, 8, 0, 0, b"\x00\x00\x00\x00"),
                                            "conn", PROTOCOL_ERROR, True),
    "6.9/2 increment 0 on a stream": (lambda c: head(c, path="/slow?delay=1") + raw_frame(4, 8, 0, 1, b"\x00" * 4),
                                      "stream", PROTOCOL_ERROR, True),
    "6.9/3 WINDOW_UPDATE of length 3": (lambda c: raw_frame(3, 8, 0, 0, b"\x00\x00\x01"),
                                        "conn", FRAME_SIZE_ERROR, True),
    "6.9.1/1 connection window over 2^31-1": (lambda c: hf.WindowUpdateFrame(0, window_increment=2**31 - 1).serialize(),
                                              "conn", FLOW_CONTROL_ERROR, True),
    "6.9.1/2 stream window over 2^31-1": (lambda c: head(c, path="/slow?delay=1")
                                          + hf.WindowUpdateFrame(1, window_increment=2**31 - 1).serialize(),
                                          "stream", FLOW_CONTROL_ERROR, True),
    # 6.10 CONTINUATION
    "6.10/1 HEADERS then CONTINUATION": (lambda c: head(c, end_headers=False)
                                         + hf.ContinuationFrame(1, b"", flags=["END_HEADERS"]).serialize(),
                                         "response", 200, True),
    "6.10/2 CONTINUATION after END_HEADERS": (lambda c: head(c, path="/slow?delay=1")
                                              + hf.ContinuationFrame(1, b"\x88", flags=["END_HEADERS"]).serialize(),
                                              "conn", PROTOCOL_ERROR, True),
    "6.10/3 CONTINUATION on another stream": (lambda c: head(c, end_headers=False)
                                              + hf.ContinuationFrame(3, b"", flags=["END_HEADERS"]).serialize(),
                                              "conn", PROTOCOL_ERROR, True),
    # 8.1 HTTP message exchanges
    "8.1/1 second HEADERS without END_STREAM": (lambda c: head(c, end_stream=False, method="POST")
                                                + block(c, 1, req(("x-trailer", "1")), end_stream=False),
                                                "stream", PROTOCOL_ERROR, True),
    "8.1.2.1/1 unknown pseudo-header": (lambda c: block(c, 1, req(*BASE, (":foo", "1"))), "stream", PROTOCOL_ERROR, True),
    "8.1.2.1/2 response pseudo-header in a request": (lambda c: block(c, 1, req(*BASE, (":status", "200"))),
                                                      "stream", PROTOCOL_ERROR, True),
    "8.1.2.1/3 pseudo-header in trailers": (lambda c: head(c, end_stream=False, method="POST")
                                            + block(c, 1, req((":path", "/x"))), "stream", PROTOCOL_ERROR, True),
    "8.1.2.2/1 connection-specific field": (lambda c: block(c, 1, req(*BASE, ("connection", "keep-alive"))),
                                            "stream", PROTOCOL_ERROR, True),
    "8.1.2.2/2 TE other than trailers": (lambda c: block(c, 1, req(*BASE, ("te", "trailers, deflate"))),
                                         "stream", PROTOCOL_ERROR, True),
    "8.1.2.3/1 empty :path": (lambda c: block(c, 1, req((":method", "GET"), (":scheme", "http"),
                                                        (":authority", "t"), (":path", ""))), "stream", PROTOCOL_ERROR, True),
    "8.1.2.3/2 no :method": (lambda c: block(c, 1, req((":scheme", "http"), (":authority", "t"), (":path", "/"))),
                             "stream", PROTOCOL_ERROR, True),
    "8.1.2.3/3 no :scheme": (lambda c: block(c, 1, req((":method", "GET"), (":authority", "t"), (":path", "/"))),
                             "stream", PROTOCOL_ERROR, True),
    "8.1.2.3/4 no :path": (lambda c: block(c, 1, req((":method", "GET"), (":scheme", "http"), (":authority", "t"))),
                           "stream", PROTOCOL_ERROR, True),
    "8.1.2.3/5 :method twice": (lambda c: block(c, 1, req(*BASE, (":method", "GET"))), "stream", PROTOCOL_ERROR, True),
    "8.1.2.6/1 content-length above the DATA": (lambda c: head(c, end_stream=False, method="POST",
                                                               extra=[("content-length", "5")])
                                                + hf.DataFrame(1, b"abc", flags=["END_STREAM"]).serialize(),
                                                "stream", PROTOCOL_ERROR, True),
    "8.1.2.6/2 content-length below the DATA": (lambda c: head(c, end_stream=False, method="POST",
                                                               extra=[("content-length", "1")])
                                                + hf.DataFrame(1, b"abc", flags=["END_STREAM"]).serialize(),
                                                "stream", PROTOCOL_ERROR, True),
    # 8.2 server push
    "8.2/1 PUSH_PROMISE from a client": (lambda c: raw_frame(5, 5, 4, 1, b"\x00\x00\x00\x02\x88"),
                                         "conn", PROTOCOL_ERROR, True),
    # RFC 7541 (HPACK)
    "hpack 2.3.3/1 index beyond the tables": (lambda c: block(c, 1, b"\xbf\x7f"), "conn", COMPRESSION_ERROR, True),
    "hpack 4.2/1 size update above the maximum": (lambda c: block(c, 1, b"\x3f\xe1\x3f" + req(*BASE)),
                                                  "conn", COMPRESSION_ERROR, True),
    "hpack 5.2/1 Huffman with EOS": (lambda c: block(c, 1, req(*BASE) + b"\x00\x85\xff\xff\xff\xff\xff\x01a"),
                                     "conn", COMPRESSION_ERROR, True),
    "hpack 5.2/2 Huffman padding over 7 bits": (lambda c: block(c, 1, req(*BASE) + b"\x00\x82\x1f\xff\x01a"),
                                                "conn", COMPRESSION_ERROR, True),
    "hpack 6.1/1 index 0": (lambda c: block(c, 1, b"\x80"), "conn", COMPRESSION_ERROR, True),
    "hpack 6.3/1 size update after a field": (lambda c: block(c, 1, req(*BASE) + b"\x20"),
                                              "conn", COMPRESSION_ERROR, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_h2spec_case(proxy, case):
    build, outcome, code, handshake = CASES[case]
    c = Raw(proxy.port("main"), handshake=handshake)
    try:
        c.send(build(c))
        if outcome == "response":
            c.read(lambda: any(isinstance(f, hf.HeadersFrame) and f.stream_id == 1 for f in c.frames))
            d = Decoder()
            (first,) = [f for f in c.frames if isinstance(f, hf.HeadersFrame) and f.stream_id == 1][:1]
            assert dict(d.decode(first.data))[":status"] == str(code)
            return
        if outcome in ("ok", "ok-or-stream"):
            c.send(hf.PingFrame(0, b"fastprox").serialize())
            c.read(lambda: any(isinstance(f, hf.PingFrame) and "ACK" in f.flags for f in c.frames)
                   or c.goaway() is not None)
            assert c.goaway() is None or outcome == "ok-or-stream" and c.goaway().error_code == code, c.frames[-5:]
            assert outcome == "ok-or-stream" or not c.rst_codes(), c.frames[-5:]
            return
        if outcome == "closed":
            c.read(lambda: False if not c.closed else True, timeout=10)
            assert c.closed
            return
        c.read(lambda: c.goaway() is not None or (outcome != "conn" and code in c.rst_codes()), timeout=10)
        if outcome == "conn":
            assert c.goaway() is not None and c.goaway().error_code == code, c.frames[-5:]
        else:   # a stream error; a connection error of the same code is allowed too
            assert code in c.rst_codes() or (c.goaway() is not None and c.goaway().error_code == code), \
                c.frames[-5:]
    finally:
        c.close()
