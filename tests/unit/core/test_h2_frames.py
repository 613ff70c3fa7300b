"""The HTTP/2 frame layer (fastproxy/_core/http2.pyx) against `hyperframe` and RFC 9113.

Frames that hyperframe serializes are read by ours - fed whole, byte by byte and split at
random points - and must come out with the same type, flags, stream and fields; frames we
write must parse with hyperframe. A table pins the refusals of §4-§6 with their error
codes, and whether they end the connection or one stream.
"""
from __future__ import annotations

import os

import pytest
from hyperframe import frame as hf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy._core import http2
from fastproxy._core.http2 import FrameReader, H2Error

SCALE = int(os.environ.get("FASTPROXY_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=200 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))

streams = st.integers(1, 2**31 - 1)
payloads = st.binary(max_size=300)
pads = st.none() | st.integers(0, 255)


def _padded(frame, pad):
    if pad is not None:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    return frame


@st.composite
def hyperframes(draw):
    kind = draw(st.sampled_from(["data", "headers", "priority", "rst", "settings", "ping",
                                 "goaway", "window", "unknown"]))
    sid = draw(streams)
    if kind == "data":
        f = _padded(hf.DataFrame(sid, data=draw(payloads)), draw(pads))
        if draw(st.booleans()):
            f.flags.add("END_STREAM")
    elif kind == "headers":
        f = _padded(hf.HeadersFrame(sid, data=draw(payloads)), draw(pads))
        f.flags.add("END_HEADERS")
        if draw(st.booleans()):
            f.flags.add("PRIORITY")
            f.depends_on, f.stream_weight = draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 255))
            f.exclusive = draw(st.booleans())
    elif kind == "priority":
        f = hf.PriorityFrame(sid, depends_on=draw(st.integers(0, 2**31 - 1)),
                             stream_weight=draw(st.integers(0, 255)), exclusive=draw(st.booleans()))
    elif kind == "rst":
        f = hf.RstStreamFrame(sid, error_code=draw(st.integers(0, 2**32 - 1)))
    elif kind == "settings":
        f = hf.SettingsFrame(0, settings={
            draw(st.sampled_from([1, 3, 6, 0x99])): draw(st.integers(0, 2**32 - 1)),
            4: draw(st.integers(0, 2**31 - 1)), 5: draw(st.integers(16384, 2**24 - 1))})
    elif kind == "ping":
        f = hf.PingFrame(0, opaque_data=draw(st.binary(min_size=8, max_size=8)))
    elif kind == "goaway":
        f = hf.GoAwayFrame(0, last_stream_id=draw(st.integers(0, 2**31 - 1)),
                           error_code=draw(st.integers(0, 2**32 - 1)), additional_data=draw(payloads))
    elif kind == "window":
        f = hf.WindowUpdateFrame(draw(st.integers(0, 2**31 - 1)),
                                 window_increment=draw(st.integers(1, 2**31 - 1)))
    else:   # hyperframe's ExtensionFrame writes a length of 0: an unknown type built by hand
        f = UnknownFrame(draw(st.integers(10, 255)), draw(st.integers(0, 255)), sid, draw(payloads))
    return f


class UnknownFrame:
    """A frame of a type RFC 9113 does not define: to be skipped (§4.1), payload intact."""

    def __init__(self, type, flags, stream_id, body):
        self.type, self.flags, self.stream_id, self.body = type, flags, stream_id, body

    def serialize(self):
        return (len(self.body).to_bytes(3, "big") + bytes([self.type, self.flags])
                + self.stream_id.to_bytes(4, "big") + self.body)


def expected_fields(f):
    if isinstance(f, (hf.DataFrame, hf.HeadersFrame)):
        return f.data
    if isinstance(f, hf.SettingsFrame):
        return sorted(f.settings.items())
    if isinstance(f, hf.WindowUpdateFrame):
        return f.window_increment
    if isinstance(f, hf.RstStreamFrame):
        return f.error_code
    if isinstance(f, hf.GoAwayFrame):
        return (f.last_stream_id, f.error_code, f.additional_data)
    if isinstance(f, hf.PingFrame):
        return f.opaque_data
    if isinstance(f, hf.PriorityFrame):
        return (f.exclusive, f.depends_on, f.stream_weight + 1)
    return f.body


def read(chunks):
    reader, out = FrameReader(), []
    reader.max_frame_size = 2**24 - 1
    for chunk in chunks:
        out += reader.frames(chunk)
    return out


@FUZZ
@given(st.lists(hyperframes(), min_size=1, max_size=8), st.data())
def test_hyperframes_frames_read_alike_however_the_bytes_are_cut(frames, data):
    wire = b"".join(f.serialize() for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)])]
    for chunks in ([wire], [wire[i:i + 1] for i in range(len(wire))], pieces):
        got = read(chunks)
        assert len(got) == len(frames)
        for (kind, flags, sid, payload), f in zip(got, frames):
            assert kind == f.type
            assert sid == f.stream_id
            fields = http2.payload_fields(kind, flags, payload)
            if kind == http2.SETTINGS:
                fields = sorted(fields)
            assert fields == expected_fields(f)


@FUZZ
@given(streams, st.binary(max_size=40000), st.booleans())
def test_our_header_blocks_split_into_continuations_parse_with_hyperframe(sid, block, end):
    wire = http2.headers_frames(sid, block, end)
    got, at = b"", 0
    while at < len(wire):
        f, length = hf.Frame.parse_frame_header(memoryview(wire[at:at + 9]))
        f.parse_body(memoryview(wire[at + 9:at + 9 + length]))
        assert f.stream_id == sid and length <= 16384
        got += f.data
        at += 9 + length
    assert got == block
    assert [f[0] for f in read([wire])][0] == http2.HEADERS     # and ours reads them


def test_our_settings_parse_with_hyperframe():
    wire = http2.settings_frame([(http2.SETTINGS_MAX_CONCURRENT_STREAMS, 100),
                                 (http2.SETTINGS_INITIAL_WINDOW_SIZE, 65535)])
    f, length = hf.Frame.parse_frame_header(memoryview(wire[:9]))
    f.parse_body(memoryview(wire[9:]))
    assert f.settings == {3: 100, 4: 65535}
    assert http2.settings_frame(ack=True) == hf.SettingsFrame(0, flags=["ACK"]).serialize()


F = http2.frame
REFUSED = {
    "frame above max_frame_size": (F(0, 0, 1, b"x" * 16385), http2.FRAME_SIZE_ERROR, 0),
    "DATA on stream 0": (F(0, 0, 0, b"x"), http2.PROTOCOL_ERROR, 0),
    "HEADERS on stream 0": (F(1, 4, 0, b"x"), http2.PROTOCOL_ERROR, 0),
    "padding as long as the frame": (F(0, 8, 1, b"\x04abc"), http2.PROTOCOL_ERROR, 0),
    "padded frame without its length": (F(0, 8, 1, b""), http2.PROTOCOL_ERROR, 0),
    "HEADERS too short for priority": (F(1, 0x24, 1, b"\x00\x00"), http2.FRAME_SIZE_ERROR, 0),
    "PRIORITY of 4 bytes": (F(2, 0, 3, b"\x00" * 4), http2.FRAME_SIZE_ERROR, 3),
    "RST_STREAM of 5 bytes": (F(3, 0, 1, b"\x00" * 5), http2.FRAME_SIZE_ERROR, 0),
    "SETTINGS on a stream": (F(4, 0, 1, b""), http2.PROTOCOL_ERROR, 0),
    "SETTINGS of 5 bytes": (F(4, 0, 0, b"\x00" * 5), http2.FRAME_SIZE_ERROR, 0),
    "SETTINGS ACK with a payload": (F(4, 1, 0, b"\x00" * 6), http2.FRAME_SIZE_ERROR, 0),
    "ENABLE_PUSH 2": (F(4, 0, 0, b"\x00\x02\x00\x00\x00\x02"), http2.PROTOCOL_ERROR, 0),
    "INITIAL_WINDOW_SIZE 2^31": (F(4, 0, 0, b"\x00\x04\x80\x00\x00\x00"), http2.FLOW_CONTROL_ERROR, 0),
    "MAX_FRAME_SIZE 16383": (F(4, 0, 0, b"\x00\x05\x00\x00\x3f\xff"), http2.PROTOCOL_ERROR, 0),
    "PUSH_PROMISE": (F(5, 4, 1, b"\x00\x00\x00\x02"), http2.PROTOCOL_ERROR, 0),
    "PING of 7 bytes": (F(6, 0, 0, b"\x00" * 7), http2.FRAME_SIZE_ERROR, 0),
    "PING on a stream": (F(6, 0, 1, b"\x00" * 8), http2.PROTOCOL_ERROR, 0),
    "GOAWAY of 7 bytes": (F(7, 0, 0, b"\x00" * 7), http2.FRAME_SIZE_ERROR, 0),
    "WINDOW_UPDATE of 0 on a stream": (F(8, 0, 5, b"\x00" * 4), http2.PROTOCOL_ERROR, 5),
    "WINDOW_UPDATE of 0 on the connection": (F(8, 0, 0, b"\x00" * 4), http2.PROTOCOL_ERROR, 0),
    "CONTINUATION without HEADERS": (F(9, 4, 1, b"x"), http2.PROTOCOL_ERROR, 0),
    "a header block cut by DATA": (F(1, 0, 1, b"x") + F(0, 0, 1, b"y"), http2.PROTOCOL_ERROR, 0),
    "CONTINUATION of another stream": (F(1, 0, 1, b"x") + F(9, 4, 3, b"y"), http2.PROTOCOL_ERROR, 0),
}


@pytest.mark.parametrize("wire, code, stream", REFUSED.values(), ids=REFUSED.keys())
def test_broken_frames_are_refused_with_their_error_code(wire, code, stream):
    with pytest.raises(H2Error) as refused:
        FrameReader().frames(wire)
    assert (refused.value.code, refused.value.stream_id) == (code, stream)


def test_a_header_block_with_continuations_then_other_frames_is_fine():
    wire = F(1, 0, 1, b"a") + F(9, 0, 1, b"b") + F(9, 4, 1, b"c") + F(0, 1, 1, b"body")
    assert [(t, sid) for t, _, sid, _ in FrameReader().frames(wire)] == \
        [(1, 1), (9, 1), (9, 1), (0, 1)]


def test_the_reserved_bit_of_the_stream_id_is_ignored():
    wire = bytearray(F(0, 0, 1, b"x"))
    wire[5] |= 0x80
    assert FrameReader().frames(bytes(wire))[0][2] == 1
