"""HTTP/2 (RFC 9113), sans-IO, for the core (client_h2.pxi and upstream_h2.pxi drive it).

Owns reading frames in place out of the bytes a connection receives, with every check
that needs only the frame and the CONTINUATION sequence (§4.2, §6: lengths, stream ids,
padding, SETTINGS values, a zero WINDOW_UPDATE increment, a HEADERS block cut by another
frame), and writing frames; the §8 rules for request and response header lists and the
HTTP/1.1-shaped heads they stand for; and a connection's session in the server or the
client role, with the protections of SPEC §12 (http2_session.pxi: stream states,
flow-control windows, SETTINGS, PING, GOAWAY). `H2Error` carries the error code, whether
it ends the connection or one stream, and the reason the metrics count it under.

`hyperframe` is the oracle in tests/unit/core/test_h2_frames.py, never used here.
"""
from http import HTTPStatus

cimport cython
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t

# frame types (§6) and flags
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
FLAG_END_STREAM = FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

# error codes (§7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, \
    STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, \
    CONNECT_ERROR, ENHANCE_YOUR_CALM, INADEQUATE_SECURITY, HTTP_1_1_REQUIRED = range(14)

# settings (§6.5.2)
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS, \
    SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = range(1, 7)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_MAX_FRAME_SIZE = 16384
cdef uint32_t MAX_WINDOW = 0x7FFFFFFF
cdef uint32_t LARGEST_FRAME_SIZE = 0xFFFFFF


# a connection error's reason, for fastproxy_http2_protocol_errors_total, by code; the
# protections (ENHANCE_YOUR_CALM) name their own
REASONS = {PROTOCOL_ERROR: "protocol_error", INTERNAL_ERROR: "internal_error",
           FLOW_CONTROL_ERROR: "flow_control", SETTINGS_TIMEOUT: "settings_timeout",
           STREAM_CLOSED: "stream_closed", FRAME_SIZE_ERROR: "frame_size",
           COMPRESSION_ERROR: "compression", ENHANCE_YOUR_CALM: "enhance_your_calm"}


class H2Error(Exception):
    """A peer broke RFC 9113: `code` to send, on `stream_id` (0: the connection ends);
    `reason` names it for the metrics."""

    def __init__(self, code: int, detail: str, stream_id: int = 0, reason: str | None = None):
        super().__init__(detail)
        self.code = code
        self.stream_id = stream_id
        self.reason = reason or REASONS.get(code, "protocol_error")


cdef inline uint32_t _u32(const uint8_t* p) noexcept:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


@cython.final
cdef class FrameReader:
    """Frames out of a connection's received bytes, checked one by one.

    `feed(data)` keeps bytes; `next_frame(&header, &payload_start)` returns 1 with the
    next complete frame (its payload at `buffer[payload_start:payload_start + length]`),
    0 when more bytes are needed; the frame's bytes stay valid until the next call.
    """
    def __cinit__(self):
        self.buf = bytearray()
        self.max_frame_size = DEFAULT_MAX_FRAME_SIZE

    cdef void feed(self, object data):
        if self.pos and self.pos == PyByteArray_GET_SIZE(self.buf):
            del self.buf[:]
            self.pos = 0
        elif self.pos > 65536:
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += data

    cdef int next_frame(self, FrameHeader* h, Py_ssize_t* payload) except -1:
        cdef Py_ssize_t n = PyByteArray_GET_SIZE(self.buf) - self.pos
        cdef const uint8_t* p
        if n < 9:
            return 0
        p = <const uint8_t*>PyByteArray_AS_STRING(self.buf) + self.pos
        h.length = (<uint32_t>p[0] << 16) | (<uint32_t>p[1] << 8) | p[2]
        h.type = p[3]
        h.flags = p[4]
        h.stream_id = _u32(p + 5) & 0x7FFFFFFF    # the reserved bit is ignored (§4.1)
        if h.length > self.max_frame_size:
            raise H2Error(FRAME_SIZE_ERROR, f"a frame of {h.length} bytes, above "
                          f"SETTINGS_MAX_FRAME_SIZE {self.max_frame_size}")
        if n < 9 + <Py_ssize_t>h.length:
            return 0
        payload[0] = self.pos + 9
        self.pos += 9 + h.length
        self.check(h, p + 9)
        return 1

    cdef bytes payload(self, Py_ssize_t start, uint32_t length):
        """A copy of the current frame's payload (one copy, not a slice and a copy)."""
        return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self.buf) + start, length)

    cdef int check(self, FrameHeader* h, const uint8_t* p) except -1:
        """The checks of §4-§6 that need only this frame and the CONTINUATION sequence."""
        cdef uint32_t t = h.type, n = h.length, sid = h.stream_id, v, i
        if self.continuation:
            if t != CONTINUATION or sid != self.continuation:
                raise H2Error(PROTOCOL_ERROR, "a header block interrupted by another frame")
        elif t == CONTINUATION:
            raise H2Error(PROTOCOL_ERROR, "CONTINUATION without a HEADERS block open")
        if t == DATA or t == HEADERS or t == PRIORITY or t == RST_STREAM or \
                t == PUSH_PROMISE or t == CONTINUATION:
            if sid == 0:
                raise H2Error(PROTOCOL_ERROR, f"frame type {t} on stream 0")
        elif (t == SETTINGS or t == PING or t == GOAWAY) and sid != 0:
            raise H2Error(PROTOCOL_ERROR, f"frame type {t} on stream {sid}")
        if (t == DATA or t == HEADERS or t == PUSH_PROMISE) and h.flags & FLAG_PADDED:
            if n < 1 or p[0] >= n:
                raise H2Error(PROTOCOL_ERROR, "padding as long as the frame")
        if t == HEADERS:
            if h.flags & FLAG_PRIORITY and n < 5 + (1 if h.flags & FLAG_PADDED else 0) + \
                    (p[0] if h.flags & FLAG_PADDED else 0):
                raise H2Error(FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
            if not h.flags & FLAG_END_HEADERS:
                self.continuation = sid
        elif t == CONTINUATION:
            if h.flags & FLAG_END_HEADERS:
                self.continuation = 0
        elif t == PRIORITY:
            if n != 5:
                raise H2Error(FRAME_SIZE_ERROR, "PRIORITY of a length other than 5", sid)
        elif t == RST_STREAM:
            if n != 4:
                raise H2Error(FRAME_SIZE_ERROR, "RST_STREAM of a length other than 4")
        elif t == SETTINGS:
            if h.flags & FLAG_ACK:
                if n:
                    raise H2Error(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            elif n % 6:
                raise H2Error(FRAME_SIZE_ERROR, "SETTINGS of a length not a multiple of 6")
            for i in range(0, n, 6):
                v = _u32(p + i + 2)
                check_setting((p[i] << 8) | p[i + 1], v)
        elif t == PUSH_PROMISE:
            raise H2Error(PROTOCOL_ERROR, "PUSH_PROMISE: push is disabled")
        elif t == PING:
            if n != 8:
                raise H2Error(FRAME_SIZE_ERROR, "PING of a length other than 8")
        elif t == GOAWAY:
            if n < 8:
                raise H2Error(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        elif t == WINDOW_UPDATE:
            if n != 4:
                raise H2Error(FRAME_SIZE_ERROR, "WINDOW_UPDATE of a length other than 4")
            if _u32(p) & 0x7FFFFFFF == 0:
                raise H2Error(PROTOCOL_ERROR, "WINDOW_UPDATE with an increment of 0", sid)
        return 0

    def count(self, data):
        """Feed `data` and check every complete frame, as the session's loop does; how many
        there were (for benchmarks: no Python object per frame)."""
        cdef FrameHeader h
        cdef Py_ssize_t start
        cdef int k = 0
        self.feed(data)
        while self.next_frame(&h, &start):
            k += 1
        return k

    def frames(self, data):
        """Python access for tests: feed `data`, return [(type, flags, stream_id, payload)]
        of every complete frame."""
        cdef FrameHeader h
        cdef Py_ssize_t start
        cdef list out = []
        self.feed(data)
        while self.next_frame(&h, &start):
            out.append((h.type, h.flags, h.stream_id, self.payload(start, h.length)))
        return out


cdef int check_setting(uint32_t ident, uint32_t value) except -1:
    if ident == SETTINGS_ENABLE_PUSH and value > 1:
        raise H2Error(PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
    if ident == SETTINGS_INITIAL_WINDOW_SIZE and value > MAX_WINDOW:
        raise H2Error(FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE {value}")
    if ident == SETTINGS_MAX_FRAME_SIZE and not DEFAULT_MAX_FRAME_SIZE <= value <= LARGEST_FRAME_SIZE:
        raise H2Error(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
    return 0


def payload_fields(int type, int flags, bytes payload):
    """What a checked frame's payload says, by type: DATA -> data; HEADERS and
    CONTINUATION -> the header block fragment; SETTINGS -> [(id, value)]; WINDOW_UPDATE ->
    increment; RST_STREAM -> error code; GOAWAY -> (last stream, error code, debug data);
    PING -> opaque data; PRIORITY -> (exclusive, depends on, weight); others -> payload."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(payload)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload), start = 0
    if type == DATA or type == HEADERS:
        if flags & FLAG_PADDED:
            start = 1
            n -= p[0]
        if type == HEADERS and flags & FLAG_PRIORITY:
            start += 5
        return payload[start:n]
    if type == SETTINGS:
        return [((p[i] << 8) | p[i + 1], _u32(p + i + 2)) for i in range(0, n, 6)]
    if type == WINDOW_UPDATE:
        return _u32(p) & 0x7FFFFFFF
    if type == RST_STREAM:
        return _u32(p)
    if type == GOAWAY:
        return _u32(p) & 0x7FFFFFFF, _u32(p + 4), payload[8:]
    if type == PRIORITY:
        return bool(p[0] & 0x80), _u32(p) & 0x7FFFFFFF, p[4] + 1
    return payload


# -- writing --------------------------------------------------------------------------------
cdef void put_header(bytearray out, uint32_t length, int type, int flags, uint32_t stream_id):
    cdef uint8_t h[9]
    h[0] = (length >> 16) & 0xFF
    h[1] = (length >> 8) & 0xFF
    h[2] = length & 0xFF
    h[3] = type
    h[4] = flags
    h[5] = (stream_id >> 24) & 0x7F
    h[6] = (stream_id >> 16) & 0xFF
    h[7] = (stream_id >> 8) & 0xFF
    h[8] = stream_id & 0xFF
    out += PyBytes_FromStringAndSize(<char*>h, 9)


def frame(int type, int flags, uint32_t stream_id, bytes payload=b""):
    """One frame's bytes."""
    cdef bytearray out = bytearray()
    put_header(out, PyBytes_GET_SIZE(payload), type, flags, stream_id)
    out += payload
    return bytes(out)


def settings_frame(settings=(), bint ack=False):
    """A SETTINGS frame: [(id, value)], or the ACK."""
    cdef bytearray payload = bytearray()
    for ident, value in settings:
        payload += (<uint32_t>ident).to_bytes(2, "big") + (<uint32_t>value).to_bytes(4, "big")
    return frame(SETTINGS, FLAG_ACK if ack else 0, 0, bytes(payload))


def headers_frames(uint32_t stream_id, bytes block, bint end_stream, uint32_t max_frame_size=16384):
    """HEADERS, then CONTINUATION frames as needed, for one header block."""
    cdef bytearray out = bytearray()
    cdef Py_ssize_t n = len(block), at = min(n, max_frame_size)
    put_header(out, at, HEADERS, (FLAG_END_STREAM if end_stream else 0)
               | (FLAG_END_HEADERS if at == n else 0), stream_id)
    out += block[:at]
    while at < n:
        k = min(n - at, max_frame_size)
        put_header(out, k, CONTINUATION, FLAG_END_HEADERS if at + k == n else 0, stream_id)
        out += block[at:at + k]
        at += k
    return bytes(out)


# -- requests as the Exchange sees them ----------------------------------------------------
class MalformedMessage(Exception):
    """A header list RFC 9113 §8 calls malformed: the stream is reset with PROTOCOL_ERROR."""


cdef frozenset CONNECTION_SPECIFIC = frozenset((b"connection", b"proxy-connection", b"keep-alive",
                                                b"transfer-encoding", b"upgrade"))
cdef frozenset REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))


cdef bint _bad_name(bytes name) noexcept:
    """§8.2.1: a field name with a control, space, uppercase or non-ASCII character."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(name)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(name)
    if n == 0:
        return True
    for i in range(n):
        if p[i] <= 0x20 or 0x41 <= p[i] <= 0x5A or p[i] >= 0x7F:
            return True
    return False


cdef bint _bad_value(bytes value) noexcept:
    """§8.2.1: NUL, CR or LF anywhere, or whitespace at either end."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(value)
    if n and (p[0] == 0x20 or p[0] == 0x09 or p[n - 1] == 0x20 or p[n - 1] == 0x09):
        return True
    for i in range(n):
        if p[i] == 0 or p[i] == 0x0A or p[i] == 0x0D:
            return True
    return False


cpdef bytes request_head_bytes(list fields):
    """The HTTP/1.1 head bytes an HTTP/2 request's decoded header list stands for, after
    the checks of RFC 9113 §8.2-§8.3 (MalformedMessage when one fails).

    The head is the shape every protocol's requests take in the core: a request line from
    :method and :path, a host line from :authority, then the regular fields in order, the
    cookie crumbs joined into one (§8.2.3). http1.parse_request then classifies it as it
    does any request, so routing, the head edit, trace context and the access log work on
    it unchanged, and what HTTP/1.1 cannot carry is refused the same way (400, 501).
"""
    cdef dict pseudo = {}
    cdef list lines = []
    cdef list cookies = None
    cdef bytes name, value, host = None
    cdef bint regular = False
    for name, value in fields:
        if _bad_value(value):
            raise MalformedMessage(f"field {name!r}: a value with NUL, CR, LF or edge whitespace")
        if name[:1] == b":":
            if regular:
                raise MalformedMessage(f"pseudo-header {name!r} after a regular field")
            if name not in REQUEST_PSEUDO:
                raise MalformedMessage(f"pseudo-header {name!r} in a request")
            if name in pseudo:
                raise MalformedMessage(f"pseudo-header {name!r} twice")
            pseudo[name] = value
            continue
        regular = True
        if _bad_name(name):
            raise MalformedMessage(f"field name {name!r}: not a lowercase token")
        if name in CONNECTION_SPECIFIC:
            raise MalformedMessage(f"connection-specific field {name.decode()!r}")
        if name == b"te" and value != b"trailers":
            raise MalformedMessage("te other than \"trailers\"")
        if name == b"cookie":
            if cookies is None:
                cookies = []
                lines.append(None)        # the joined cookie goes where the first crumb was
            cookies.append(value)
            continue
        if name == b"host":
            if host is not None:
                raise MalformedMessage("host twice")
            host = value
            continue
        lines.append(name + b": " + value + b"\r\n")
    method = pseudo.get(b":method")
    authority = pseudo.get(b":authority")
    if method is None:
        raise MalformedMessage(":method missing")
    if method == b"CONNECT":
        if authority is None or b":scheme" in pseudo or b":path" in pseudo:
            raise MalformedMessage("CONNECT needs :authority and neither :scheme nor :path")
        target = authority
    else:
        target = pseudo.get(b":path")
        if b":scheme" not in pseudo or not target:
            raise MalformedMessage(":scheme or :path missing or empty")
    if authority is not None and host is not None and authority != host:
        raise MalformedMessage(":authority and host differ")
    if authority is None:
        authority = host
    if authority is None:
        raise MalformedMessage("neither :authority nor host")
    if cookies is not None:
        lines[lines.index(None)] = b"cookie: " + b"; ".join(cookies) + b"\r\n"
    return b"".join([method, b" ", target, b" HTTP/1.1\r\nhost: ", authority, b"\r\n", *lines, b"\r\n"])


cdef dict REASON_PHRASES = {s.value: s.phrase.encode() for s in HTTPStatus}


cpdef bytes response_head_bytes(list fields):
    """The HTTP/1.1 head bytes an HTTP/2 response's decoded header list stands for, after
    the checks of §8.1-§8.3 (MalformedMessage): exactly one :status, first; no
    connection-specific field; names lowercase tokens; values without NUL, CR or LF (what
    would split an HTTP/1.1 head). http1.parse_response then reads it as any response."""
    cdef list lines = []
    cdef bytes name, value, status = None
    cdef int code
    for name, value in fields:
        if _bad_value(value):
            raise MalformedMessage(f"field {name!r}: a value with NUL, CR, LF or edge whitespace")
        if name[:1] == b":":
            if name != b":status" or status is not None or lines:
                raise MalformedMessage(f"pseudo-header {name!r} in a response")
            status = value
            continue
        if _bad_name(name):
            raise MalformedMessage(f"field name {name!r}: not a lowercase token")
        if name in CONNECTION_SPECIFIC:
            raise MalformedMessage(f"connection-specific field {name.decode()!r}")
        lines.append(name + b": " + value + b"\r\n")
    if status is None or len(status) != 3 or not status.isdigit():
        raise MalformedMessage(":status missing or not three digits")
    code = int(status)
    return b"".join([b"HTTP/1.1 ", status, b" ", REASON_PHRASES.get(code, b""), b"\r\n",
                     *lines, b"\r\n"])


cpdef list check_trailers(list fields):
    """The trailers to pass on, after the checks of §8.1 (MalformedMessage: a
    pseudo-header, a bad name or value) and without the fields a trailer section must not
    carry (RFC 9110 §6.5.1)."""
    cdef list kept = []
    cdef bytes name, value
    for name, value in fields:
        if name[:1] == b":":
            raise MalformedMessage(f"pseudo-header {name!r} in trailers")
        if _bad_name(name) or _bad_value(value):
            raise MalformedMessage(f"trailer {name!r}: not a lowercase token, or a bad value")
        if name not in CONNECTION_SPECIFIC and name not in (b"content-length", b"host", b"te"):
            kept.append((name, value))
    return kept


include "http2_session.pxi"
