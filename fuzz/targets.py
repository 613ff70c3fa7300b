"""The targets: HPACK decoding (against hpack), HTTP/2 frames (against hyperframe), the
HTTP/2 server session (its output must parse), HTTP/1.1 request heads (against h11) and
chunked bodies."""
from __future__ import annotations

import h11
import hpack
from hyperframe.frame import Frame

from fastproxy._core.hpack import Decoder, HPACKBomb, HPACKError
from fastproxy._core.http1 import ChunkedReader, ParseError, parse_request_head
from fastproxy._core.http2 import FrameReader, H2Error, RecordingHandler, ServerSession

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def hpack_decode(data: bytes) -> None:
    """Two header blocks through one decoder (the dynamic table carries over): whatever
    we accept, hpack accepts and decodes to the same list."""
    cut = data[0] % (len(data) + 1) if data else 0
    ours, theirs = Decoder(), hpack.Decoder()
    for block in (data[1:cut], data[cut:]):
        try:
            got = ours.decode(block)
        except (HPACKError, HPACKBomb):
            return               # refused: stricter than hpack is allowed, the table is gone
        try:
            want = [(bytes(n), bytes(v)) for n, v in theirs.decode(block, raw=True)]
        except hpack.OversizedHeaderListError:
            assert ours.oversized, "hpack found the list over its limit, we did not"
            return
        except Exception as e:   # noqa: BLE001 - any refusal of the oracle's
            raise AssertionError(f"we decoded {got!r} from a block hpack refuses ({e!r})")
        if ours.oversized:       # over max_fields/max_list_size: the fields before the cut
            assert got == want[:len(got)], (got, want)
        else:
            assert got == want, (got, want)


def h2_frames(data: bytes) -> None:
    """Every frame we read is the frame hyperframe reads from the same bytes."""
    reader = FrameReader()
    try:
        frames = reader.frames(data)
    except H2Error:
        frames = None
    at = 0
    for ftype, flags, sid, payload in frames or ():
        header, length = Frame.parse_frame_header(memoryview(data[at:at + 9]))
        assert (header.type, header.stream_id, length) == (ftype, sid, len(payload)), \
            (header, ftype, sid, len(payload))
        assert data[at + 9:at + 9 + length] == payload
        at += 9 + length


def h2_session(data: bytes) -> None:
    """A client's bytes after the preface: refused with H2Error or taken, never another
    exception; what the session writes back is well-formed frames."""
    session = ServerSession(RecordingHandler())
    try:
        session.receive(PREFACE + data)
    except H2Error:
        pass
    out = session.data_to_send()
    while out:
        frame, length = Frame.parse_frame_header(memoryview(out[:9]))
        assert len(out) >= 9 + length, "a truncated frame written"
        frame.parse_body(memoryview(out[9:9 + length]))
        out = out[9 + length:]


def http1_request(data: bytes) -> None:
    """A request head we accept, h11 accepts too, with the same method and target."""
    try:
        head = parse_request_head(data)
    except ParseError:
        return
    if head is None:         # incomplete: more bytes needed
        return
    while data.startswith(b"\r\n"):   # RFC 9112 §2.2 lets a server skip empty lines before
        data = data[2:]                # the request line, as we do; h11 does not
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as e:
        raise AssertionError(f"we accepted a head h11 refuses ({e})")
    if event is h11.NEED_DATA:
        raise AssertionError("we accepted a head h11 finds incomplete")
    assert isinstance(event, h11.Request) and event.method == head.method, (event, head.method)


def chunked(data: bytes) -> None:
    """A chunked body: refused or consumed, and the data extracted is what it framed."""
    reader = ChunkedReader()
    try:
        used, pieces = reader.feed_bytes(data, True)
    except ParseError:
        return
    assert 0 <= used <= len(data)
    assert sum(map(len, pieces)) <= used


TARGETS = {f.__name__: f for f in (hpack_decode, h2_frames, h2_session, http1_request, chunked)}
