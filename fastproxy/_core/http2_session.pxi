# Included by http2.pyx: Session, one HTTP/2 connection (RFC 9113 §3.4, §5, §6.5, §6.9) in
# the server role (ServerSession: a client connection of the proxy) or the client role
# (ClientSession: an upstream connection): the preface and SETTINGS exchange, stream
# states, flow-control windows both ways, PING, GOAWAY, header blocks through HPACK.
# Sans-IO: bytes in with `receive`, bytes out from `data_to_send`, and what happened told
# to a SessionHandler.

from fastproxy._core.hpack import HPACKBomb, HPACKError

cdef enum:
    ST_OPEN = 0
    ST_HALF_CLOSED_REMOTE = 1    # the client ended its side: we may still send
    ST_HALF_CLOSED_LOCAL = 2     # we ended ours: the client may still send
    ST_CLOSED = 3

cdef long long WINDOW_LIMIT = 0x7FFFFFFF

# the protections of SPEC §12, per client connection
cdef int EMPTY_FRAMES_PER_SECOND = 1000    # DATA without data or END_STREAM, empty CONTINUATION
cdef int CONTROL_FRAMES_PER_SECOND = 1000  # PING and SETTINGS, each of which we must answer


cdef inline double _now() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class SessionHandler:
    """What a ServerSession reports. The HTTP/2 client side implements it; tests record it."""

    cdef void on_request(self, uint32_t stream_id, list fields, bint end_stream):
        pass

    cdef void on_response(self, uint32_t stream_id, list fields, bint end_stream):
        """A response head (client role); 1xx ones too, before the final one."""

    cdef void on_data(self, uint32_t stream_id, bytes data, bint end_stream):
        pass

    cdef void on_trailers(self, uint32_t stream_id, list fields):
        pass

    cdef void on_reset(self, uint32_t stream_id, uint32_t code):
        pass

    cdef void on_window(self, uint32_t stream_id):
        """The peer opened a send window (0: the connection's)."""

    cdef void on_goaway(self, uint32_t last_stream_id, uint32_t code):
        pass


@cython.final
cdef class _Stream:
    pass


cdef class Session:
    """One HTTP/2 connection, either role (its fields: http2.pxd)."""

    cdef void setup(self, SessionHandler handler, uint32_t max_concurrent_streams,
                    uint32_t initial_window_size, uint32_t max_frame_size,
                    uint32_t header_table_size, uint32_t connection_window,
                    Py_ssize_t max_header_bytes, Py_ssize_t max_headers):
        self.handler = handler
        self.max_block = max_header_bytes
        self.reader = FrameReader()
        self.reader.max_frame_size = max_frame_size
        self.decoder = Decoder()
        self.decoder.max_table_size = header_table_size
        self.decoder.max_list_size = max_header_bytes
        self.decoder.max_fields = max_headers
        self.encoder = Encoder()
        self.out = bytearray()
        self.preface = bytearray()
        self.streams = {}
        self.max_concurrent = max_concurrent_streams
        self.peer_max_concurrent = 100       # until the peer's SETTINGS say (§6.5.2: unlimited)
        self.initial_window = initial_window_size
        self.peer_initial_window = 65535
        self.peer_max_frame = DEFAULT_MAX_FRAME_SIZE
        self.send_window = 65535
        self.recv_window = self.connection_window = max(connection_window, 65535)
        if self.client:
            self.started = True
            self.out += PREFACE
            self.out += settings_frame([(SETTINGS_ENABLE_PUSH, 0),
                                        (SETTINGS_INITIAL_WINDOW_SIZE, initial_window_size),
                                        (SETTINGS_MAX_FRAME_SIZE, max_frame_size)])
        else:
            self.out += settings_frame([(SETTINGS_MAX_CONCURRENT_STREAMS, max_concurrent_streams),
                                        (SETTINGS_INITIAL_WINDOW_SIZE, initial_window_size),
                                        (SETTINGS_MAX_FRAME_SIZE, max_frame_size),
                                        (SETTINGS_HEADER_TABLE_SIZE, header_table_size)])
        if self.connection_window > 65535:   # the connection's window is not a setting (§6.9.2)
            self.out += frame(WINDOW_UPDATE, 0, 0,
                              (self.connection_window - 65535).to_bytes(4, "big"))

    cpdef bytes data_to_send(self):
        """The bytes to write to the peer now (b"" when there are none)."""
        if not self.out:
            return b""
        out = bytes(self.out)
        del self.out[:]
        return out

    # -- receiving ------------------------------------------------------------------------
    cpdef receive(self, data):
        """Take bytes from the peer. A stream error resets that stream and goes on; a
        connection error queues GOAWAY and raises H2Error."""
        while True:
            try:
                self._receive(data)
                return
            except H2Error as error:
                if error.stream_id == 0:
                    self.goaway(error.code)
                    raise
                self.reset_stream(error.stream_id, error.code)
                self.count_refused()
                self.check_refused()
                data = b""              # the frames after it
            except HPACKError as error:
                self.goaway(COMPRESSION_ERROR)
                raise H2Error(COMPRESSION_ERROR, str(error)) from None
            except HPACKBomb as error:
                self.goaway(ENHANCE_YOUR_CALM)
                raise H2Error(ENHANCE_YOUR_CALM, str(error), reason="hpack_bomb") from None

    cdef void _receive(self, object data) except *:
        cdef FrameHeader h
        cdef Py_ssize_t start
        if not self.started:
            self.preface += data
            if len(self.preface) < 24:
                if PREFACE[:len(self.preface)] != self.preface:
                    raise H2Error(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
                return
            if self.preface[:24] != PREFACE:
                raise H2Error(PROTOCOL_ERROR, "not the HTTP/2 connection preface")
            self.started = True
            data = bytes(self.preface[24:])
            self.preface = None
        self.reader.feed(data)
        while self.reader.next_frame(&h, &start):
            if not self.settings_seen:
                if h.type != SETTINGS or h.flags & FLAG_ACK:
                    raise H2Error(PROTOCOL_ERROR, "the first frame is not SETTINGS")
                self.settings_seen = True
            self.on_frame(&h, self.reader.payload(start, h.length))

    cdef void on_frame(self, FrameHeader* h, bytes payload) except *:
        cdef uint32_t t = h.type, sid = h.stream_id
        if t == DATA:
            self.data(h, payload)
        elif t == HEADERS:
            if sid % 2 == 0:
                raise H2Error(PROTOCOL_ERROR, f"HEADERS on stream {sid}, not a client's")
            if self.client and sid > self.last_stream_id:
                raise H2Error(PROTOCOL_ERROR, f"HEADERS on stream {sid}, which we did not open")
            self.block = bytearray(payload_fields(HEADERS, h.flags, payload))
            self.block_stream = sid
            self.block_end_stream = h.flags & FLAG_END_STREAM
            if h.flags & FLAG_END_HEADERS:
                self.header_block()
            else:
                self.check_block(h)
        elif t == CONTINUATION:
            self.block += payload
            if h.flags & FLAG_END_HEADERS:
                self.header_block()
            else:
                self.check_block(h)
        elif t == RST_STREAM:
            if sid > self.last_stream_id:
                raise H2Error(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
            if self.streams.pop(sid, None) is not None:
                if not self.client:
                    self.count_reset()
                self.handler.on_reset(sid, payload_fields(RST_STREAM, h.flags, payload))
        elif t == SETTINGS:
            if not h.flags & FLAG_ACK:
                self.count_control()
                self.settings(payload_fields(SETTINGS, h.flags, payload))
        elif t == PING:
            if not h.flags & FLAG_ACK:
                self.count_control()
                self.out += frame(PING, FLAG_ACK, 0, payload)
                self.answers += 1
        elif t == PUSH_PROMISE:
            raise H2Error(PROTOCOL_ERROR, "PUSH_PROMISE, though SETTINGS_ENABLE_PUSH is 0")
        elif t == GOAWAY:
            last, code, _ = payload_fields(GOAWAY, h.flags, payload)
            self.goaway_received = True
            self.handler.on_goaway(last, code)
        elif t == WINDOW_UPDATE:
            self.window_update(sid, payload_fields(WINDOW_UPDATE, h.flags, payload))
        # PRIORITY is parsed and ignored (§5.3.2: deprecated); unknown types are skipped

    cdef void data(self, FrameHeader* h, bytes payload) except *:
        cdef uint32_t sid = h.stream_id
        cdef _Stream s = self.streams.get(sid)
        if s is None:
            if sid > self.last_stream_id:
                raise H2Error(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            self.recv_window -= h.length   # counts for the connection all the same
            self.consumed_connection(h.length)
            if self.client:
                return                     # a stream we reset: its frames may still come
            raise H2Error(STREAM_CLOSED, f"DATA on closed stream {sid}", sid)
        if h.length > self.recv_window:
            raise H2Error(FLOW_CONTROL_ERROR, "DATA beyond the connection's window")
        self.recv_window -= h.length
        if s.state == ST_HALF_CLOSED_REMOTE:
            self.consumed_connection(h.length)
            raise H2Error(STREAM_CLOSED, f"DATA after the end of stream {sid}", sid)
        if h.length > s.recv_window:
            self.consumed_connection(h.length)
            raise H2Error(FLOW_CONTROL_ERROR, f"DATA beyond the window of stream {sid}", sid)
        s.recv_window -= h.length
        if h.length == 0 and not h.flags & FLAG_END_STREAM and not self.client:
            self.count_empty()
        data = payload_fields(DATA, h.flags, payload)
        if len(data) < h.length:          # padding is flow-controlled but nobody consumes it
            self.consume(sid, s, h.length - len(data))
        if h.flags & FLAG_END_STREAM:
            self.remote_end(sid, s)
        self.handler.on_data(sid, data, h.flags & FLAG_END_STREAM)

    cdef void header_block(self) except *:
        cdef uint32_t sid = self.block_stream
        cdef _Stream s = self.streams.get(sid)
        cdef list fields = self.decoder.decode_block(bytes(self.block))   # always: HPACK is stateful
        cdef bint end = self.block_end_stream
        self.block = None
        if self.decoder.oversized:
            fields = None                  # over max_header_bytes/max_headers: the handler says 431
        if self.client:
            self.response_block(sid, s, fields, end)
            return
        if s is not None:                 # trailers
            if s.state == ST_HALF_CLOSED_REMOTE:
                raise H2Error(STREAM_CLOSED, f"HEADERS after the end of stream {sid}", sid)
            if not end:
                raise H2Error(PROTOCOL_ERROR, "trailers without END_STREAM", sid)
            if fields is None:
                raise H2Error(PROTOCOL_ERROR, "trailers over the header limits", sid)
            self.remote_end(sid, s)
            self.handler.on_trailers(sid, fields)
            return
        if sid <= self.last_stream_id:   # §5.1.1: an unexpected stream id
            raise H2Error(PROTOCOL_ERROR, f"HEADERS on stream {sid}, below the last one opened")
        self.last_stream_id = sid
        if self.goaway_sent:
            return                         # §6.8: ignored after our GOAWAY
        if len(self.streams) >= self.max_concurrent:
            self.reset_stream(sid, REFUSED_STREAM)
            return
        s = _Stream()
        s.state = ST_OPEN
        s.send_window = self.peer_initial_window
        s.recv_window = self.initial_window
        self.streams[sid] = s
        if end:
            s.state = ST_HALF_CLOSED_REMOTE
        self.handler.on_request(sid, fields, end)
        self.check_refused()              # the handler may have refused it (count_refused)

    cdef void response_block(self, uint32_t sid, _Stream s, list fields, bint end) except *:
        """Client role: a response head (1xx ones first), or the trailers after one."""
        if s is None:
            return                         # a stream we reset: its frames may still come
        if s.state == ST_HALF_CLOSED_REMOTE:
            raise H2Error(STREAM_CLOSED, f"HEADERS after the end of stream {sid}", sid)
        if fields is None:
            raise H2Error(PROTOCOL_ERROR, "a response header list over the limits", sid)
        if s.responded:
            if not end:
                raise H2Error(PROTOCOL_ERROR, "trailers without END_STREAM", sid)
            self.remote_end(sid, s)
            self.handler.on_trailers(sid, fields)
            return
        if not fields or fields[0][0] != b":status":
            raise H2Error(PROTOCOL_ERROR, "a response without :status first", sid)
        informational = fields[0][1][:1] == b"1"
        if informational and end:
            raise H2Error(PROTOCOL_ERROR, "a 1xx response that ends the stream", sid)
        s.responded = not informational
        if end:
            self.remote_end(sid, s)
        self.handler.on_response(sid, fields, end)

    cpdef uint32_t send_request(self, list fields, bint end_stream=False) except 0:
        """Client role: open a stream with a request head; its id."""
        cdef uint32_t sid = self.last_stream_id + 2 if self.last_stream_id else 1
        cdef _Stream s = _Stream()
        s.state = ST_OPEN
        s.send_window = self.peer_initial_window
        s.recv_window = self.initial_window
        self.streams[sid] = s
        self.last_stream_id = sid
        self.out += headers_frames(sid, self.encoder.encode_list(fields), end_stream,
                                   self.peer_max_frame)
        if end_stream:
            self.local_end(sid, s)
        return sid

    cpdef bint can_open(self):
        """Client role: another stream may be opened now."""
        return not self.goaway_received and len(self.streams) < self.peer_max_concurrent \
            and self.last_stream_id < 0x7FFFFFFD

    cdef void remote_end(self, uint32_t sid, _Stream s):
        if s.state == ST_HALF_CLOSED_LOCAL:
            s.state = ST_CLOSED
            del self.streams[sid]
        else:
            s.state = ST_HALF_CLOSED_REMOTE

    cdef void settings(self, list values) except *:
        cdef long long delta = 0
        cdef _Stream s
        for ident, value in values:
            if ident == SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for s in self.streams.values():
                    s.send_window += delta
                    if s.send_window > WINDOW_LIMIT:
                        raise H2Error(FLOW_CONTROL_ERROR, "a stream's window beyond 2^31-1")
            elif ident == SETTINGS_MAX_FRAME_SIZE:
                self.peer_max_frame = value
            elif ident == SETTINGS_MAX_CONCURRENT_STREAMS:
                self.peer_max_concurrent = value
            elif ident == SETTINGS_HEADER_TABLE_SIZE:
                self.encoder.set_max_table_size(min(value, 4096))
        self.out += settings_frame(ack=True)
        self.answers += 1
        if delta > 0:
            self.push_all()
            for sid in list(self.streams):
                self.handler.on_window(sid)

    cdef void window_update(self, uint32_t sid, uint32_t increment) except *:
        cdef _Stream s
        if sid == 0:
            self.send_window += increment
            if self.send_window > WINDOW_LIMIT:
                raise H2Error(FLOW_CONTROL_ERROR, "the connection's window beyond 2^31-1")
            self.push_all()
            self.handler.on_window(0)
            return
        if sid > self.last_stream_id:
            raise H2Error(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
        s = self.streams.get(sid)
        if s is None:
            return                         # a stream that just closed
        s.send_window += increment
        if s.send_window > WINDOW_LIMIT:
            raise H2Error(FLOW_CONTROL_ERROR, f"the window of stream {sid} beyond 2^31-1", sid)
        self.push(sid, s)
        self.handler.on_window(sid)

    # -- flow control of what we receive ---------------------------------------------------
    cpdef consumed(self, uint32_t stream_id, Py_ssize_t n):
        """The handler took n body bytes of the stream: the client may send as many more."""
        self.consume(stream_id, self.streams.get(stream_id), n)

    cdef void consume(self, uint32_t sid, _Stream s, Py_ssize_t n):
        self.consumed_connection(n)
        if s is not None and s.state != ST_HALF_CLOSED_REMOTE:
            s.unacked += n
            if s.unacked >= self.initial_window // 2:
                s.recv_window += s.unacked
                self.out += frame(WINDOW_UPDATE, 0, sid, (<uint32_t>s.unacked).to_bytes(4, "big"))
                s.unacked = 0

    cdef void consumed_connection(self, Py_ssize_t n):
        # updated in halves of the window: few frames, and never a stall
        self.unacked += n
        if self.unacked >= self.connection_window // 2:
            self.recv_window += self.unacked
            self.out += frame(WINDOW_UPDATE, 0, 0, (<uint32_t>self.unacked).to_bytes(4, "big"))
            self.unacked = 0

    # -- sending --------------------------------------------------------------------------
    cpdef send_headers(self, uint32_t stream_id, list fields, bint end_stream=False):
        """A response head (or, with end_stream, a trailers block)."""
        cdef _Stream s = self.streams[stream_id]
        self.out += headers_frames(stream_id, self.encoder.encode_list(fields), end_stream,
                                   self.peer_max_frame)
        if end_stream:
            self.local_end(stream_id, s)

    cpdef Py_ssize_t send_data(self, uint32_t stream_id, bytes data, bint end_stream=False) except -1:
        """As much of data as the windows allow; returns how many bytes went. end_stream
        ends the stream only when all of them went."""
        cdef _Stream s = self.streams[stream_id]
        cdef Py_ssize_t n = len(data), k, at = 0
        cdef Py_ssize_t allowed = max(0, min(n, self.send_window, s.send_window))
        if n == 0:
            self.out += frame(DATA, FLAG_END_STREAM if end_stream else 0, stream_id, b"")
        while at < allowed:
            k = min(allowed - at, self.peer_max_frame)
            self.out += frame(DATA, FLAG_END_STREAM if end_stream and at + k == n else 0,
                              stream_id, data[at:at + k])
            at += k
        self.send_window -= allowed
        s.send_window -= allowed
        if end_stream and allowed == n:
            self.local_end(stream_id, s)
        return allowed

    cpdef bint send_body(self, uint32_t stream_id, bytes data, bint end_stream=False) except -1:
        """Body bytes: what the windows allow goes now, the rest waits in the stream and
        goes as the peer opens its windows (then on_window). True: nothing waits."""
        cdef _Stream s = self.streams.get(stream_id)
        cdef Py_ssize_t k
        if s is None:
            return True
        if s.queued is not None:
            s.queued += data
            s.queued_end = end_stream
            return False
        if not PyBytes_GET_SIZE(data) and not end_stream:
            return True
        k = self.send_data(stream_id, data, end_stream)
        if k < PyBytes_GET_SIZE(data):
            s.queued = data[k:]
            s.queued_end = end_stream
            return False
        return True

    cpdef send_trailers(self, uint32_t stream_id, list fields):
        """Trailers, which end the stream: after the body bytes still waiting, if any."""
        cdef _Stream s = self.streams.get(stream_id)
        if s is None:
            return
        if s.queued is not None:
            s.queued_trailers = fields
        else:
            self.send_headers(stream_id, fields, True)

    cpdef bint waiting(self, uint32_t stream_id):
        """Body bytes (or trailers) of the stream wait for the peer's windows."""
        cdef _Stream s = self.streams.get(stream_id)
        return s is not None and s.queued is not None

    cdef void push(self, uint32_t sid, _Stream s) except *:
        """The peer opened a window: what waits in the stream goes, as far as it can."""
        cdef bytes data = s.queued
        cdef Py_ssize_t k
        if data is None:
            return
        k = self.send_data(sid, data, s.queued_end)
        if k < PyBytes_GET_SIZE(data):
            s.queued = data[k:]
            return
        s.queued = None
        if s.queued_trailers is not None:
            self.send_headers(sid, s.queued_trailers, True)
            s.queued_trailers = None

    cdef void push_all(self) except *:
        cdef _Stream s
        for sid, s in list(self.streams.items()):
            if s.queued is not None:
                self.push(sid, s)

    cdef void local_end(self, uint32_t sid, _Stream s):
        if s.state == ST_HALF_CLOSED_REMOTE:
            s.state = ST_CLOSED
            del self.streams[sid]
        else:
            s.state = ST_HALF_CLOSED_LOCAL

    cpdef Py_ssize_t send_window_of(self, uint32_t stream_id):
        """How many bytes send_data would take on the stream now."""
        cdef _Stream s = self.streams.get(stream_id)
        return 0 if s is None else max(0, min(self.send_window, s.send_window))

    cpdef reset_stream(self, uint32_t stream_id, uint32_t code):
        self.streams.pop(stream_id, None)
        self.out += frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))
        self.answers += 1

    # -- the protections (SPEC §12) ---------------------------------------------------------
    cdef void check_block(self, FrameHeader* h) except *:
        """A header block still open: the CONTINUATION flood ends when it grows past
        max_header_bytes, before it is complete (nothing of it is decoded or kept)."""
        if len(self.block) > self.max_block:
            raise H2Error(ENHANCE_YOUR_CALM, f"a header block over {self.max_block} bytes and "
                          "not ended", reason="continuation_flood")
        if h.length == 0:
            self.count_empty()

    cdef void tick(self):
        """The one-second window the flood counters count in."""
        cdef double now = _now()
        if now - self.window_start >= 1.0:
            self.window_start = now
            self.resets_in_window = self.empty_in_window = self.refused_in_window = 0
            self.control_in_window = 0

    cdef void count_reset(self) except *:
        """Rapid reset (CVE-2023-44487): streams the client opens and resets before their
        response, more than 2 x max_concurrent_streams in a second."""
        self.tick()
        self.resets_in_window += 1
        if self.resets_in_window > 2 * self.max_concurrent:
            raise H2Error(ENHANCE_YOUR_CALM, f"more than {2 * self.max_concurrent} streams reset "
                          "by the client within a second", reason="rapid_reset")

    cpdef count_refused(self):
        """A request refused as malformed or over the limits (a stream error here, or a
        400 or 431 from the handler)."""
        self.tick()
        self.refused_in_window += 1

    cdef void check_refused(self) except *:
        """A client that sends more than 2 x max_concurrent_streams requests a second that
        must be refused is flooding us with answers to write (CVE-2019-9514), not making
        mistakes."""
        if self.refused_in_window > 2 * self.max_concurrent:
            self.goaway(ENHANCE_YOUR_CALM)
            raise H2Error(ENHANCE_YOUR_CALM, f"more than {2 * self.max_concurrent} requests "
                          "refused as malformed or too large within a second", reason="refused_flood")

    cdef void count_control(self) except *:
        """PING and SETTINGS floods (CVE-2019-9512, -9515): a peer keeps a handful in a
        second busy (keep-alive, settings changes); more than a thousand only makes us
        write answers."""
        self.tick()
        self.control_in_window += 1
        if self.control_in_window > CONTROL_FRAMES_PER_SECOND:
            raise H2Error(ENHANCE_YOUR_CALM, f"more than {CONTROL_FRAMES_PER_SECOND} PING and "
                          "SETTINGS frames within a second", reason="control_flood")

    cdef void count_empty(self) except *:
        self.tick()
        self.empty_in_window += 1
        if self.empty_in_window > EMPTY_FRAMES_PER_SECOND:
            raise H2Error(ENHANCE_YOUR_CALM, f"more than {EMPTY_FRAMES_PER_SECOND} empty frames "
                          "within a second", reason="empty_frames")

    cpdef goaway(self, uint32_t code=NO_ERROR, bint final=True):
        """No new streams: the ones up to the last we saw finish (§6.8). Not final: the
        first GOAWAY of a graceful shutdown, 2^31-1, so that streams the client is
        sending meanwhile are still taken; the final one follows a round trip later."""
        if self.goaway_sent:
            return
        self.goaway_sent = final
        self.out += frame(GOAWAY, 0, 0, (0 if self.client else self.last_stream_id if final
                                         else WINDOW_LIMIT)
                          .to_bytes(4, "big") + code.to_bytes(4, "big"))

    @property
    def open_streams(self):
        return len(self.streams)


cdef class ServerSession(Session):
    """The server role: a client's connection to the proxy."""

    def __init__(self, SessionHandler handler, uint32_t max_concurrent_streams=100,
                 uint32_t initial_window_size=65535, uint32_t max_frame_size=16384,
                 uint32_t header_table_size=4096, uint32_t connection_window=65535,
                 Py_ssize_t max_header_bytes=65536, Py_ssize_t max_headers=100):
        self.setup(handler, max_concurrent_streams, initial_window_size, max_frame_size,
                   header_table_size, connection_window, max_header_bytes, max_headers)


@cython.final
cdef class ClientSession(Session):
    """The client role: the proxy's connection to an upstream server."""

    def __init__(self, SessionHandler handler, uint32_t initial_window_size=65535,
                 uint32_t max_frame_size=16384, uint32_t connection_window=65535):
        self.client = True
        self.setup(handler, 0, initial_window_size, max_frame_size, 4096, connection_window,
                   262144, 1000)


cdef class RecordingHandler(SessionHandler):
    """A SessionHandler that keeps what it is told, as tuples in `events` (for tests)."""
    cdef readonly list events

    def __init__(self):
        self.events = []

    cdef void on_request(self, uint32_t stream_id, list fields, bint end_stream):
        self.events.append(("request", stream_id, fields, end_stream))

    cdef void on_data(self, uint32_t stream_id, bytes data, bint end_stream):
        self.events.append(("data", stream_id, data, end_stream))

    cdef void on_trailers(self, uint32_t stream_id, list fields):
        self.events.append(("trailers", stream_id, fields))

    cdef void on_reset(self, uint32_t stream_id, uint32_t code):
        self.events.append(("reset", stream_id, code))

    cdef void on_window(self, uint32_t stream_id):
        self.events.append(("window", stream_id))

    cdef void on_goaway(self, uint32_t last_stream_id, uint32_t code):
        self.events.append(("goaway", last_stream_id, code))

    cdef void on_response(self, uint32_t stream_id, list fields, bint end_stream):
        self.events.append(("response", stream_id, fields, end_stream))
