# Declarations of the HTTP/2 codec and server session (http2.pyx), cimported by the
# proxy's HTTP/2 client side (client_h2.pxi).
cimport cython
from libc.stdint cimport uint8_t, uint32_t
from fastproxy._core.hpack cimport Decoder, Encoder


cdef struct FrameHeader:
    uint32_t length
    uint8_t type
    uint8_t flags
    uint32_t stream_id


@cython.final
cdef class FrameReader:
    cdef bytearray buf
    cdef Py_ssize_t pos
    cdef public uint32_t max_frame_size      # SETTINGS_MAX_FRAME_SIZE we announced
    cdef uint32_t continuation               # a HEADERS block is open on this stream (0: none)
    cdef void feed(self, object data)
    cdef int next_frame(self, FrameHeader* h, Py_ssize_t* payload) except -1
    cdef bytes payload(self, Py_ssize_t start, uint32_t length)
    cdef int check(self, FrameHeader* h, const uint8_t* p) except -1


cpdef bytes request_head_bytes(list fields)
cpdef list check_trailers(list fields)
cpdef bytes response_head_bytes(list fields)


cdef class SessionHandler:
    cdef void on_request(self, uint32_t stream_id, list fields, bint end_stream)
    cdef void on_response(self, uint32_t stream_id, list fields, bint end_stream)
    cdef void on_data(self, uint32_t stream_id, bytes data, bint end_stream)
    cdef void on_trailers(self, uint32_t stream_id, list fields)
    cdef void on_reset(self, uint32_t stream_id, uint32_t code)
    cdef void on_window(self, uint32_t stream_id)
    cdef void on_goaway(self, uint32_t last_stream_id, uint32_t code)


@cython.final
cdef class _Stream:
    cdef int state
    cdef long long send_window
    cdef long long recv_window
    cdef long long unacked      # bytes the handler consumed, not yet given back by WINDOW_UPDATE
    cdef bint responded         # client role: the final response head came
    cdef bytes queued           # body bytes the peer's windows did not take yet (send_body)
    cdef bint queued_end
    cdef list queued_trailers   # trailers to send once the queued bytes went


cdef class Session:
    cdef bint client               # the client role (an upstream connection)
    cdef SessionHandler handler
    cdef FrameReader reader
    cdef Decoder decoder
    cdef Encoder encoder
    cdef bytearray out
    cdef bytearray preface         # the first bytes, until the 24 of the preface came
    cdef bint started              # the preface came
    cdef bint settings_seen        # the client's first frame, a SETTINGS, came
    cdef dict streams              # stream id -> _Stream, open or half-closed
    cdef readonly uint32_t last_stream_id   # the peer's streams (server role), ours (client)
    cdef uint32_t max_concurrent
    cdef readonly uint32_t peer_max_concurrent
    cdef readonly bint goaway_received
    cdef uint32_t initial_window       # ours: the window each new stream gives the client
    cdef long long peer_initial_window # the client's, for what we send
    cdef uint32_t peer_max_frame
    cdef long long send_window     # the connection's, both ways
    cdef long long recv_window
    cdef long long connection_window   # ours, as the client started it
    cdef long long unacked
    cdef bytearray block           # a header block being collected (HEADERS + CONTINUATION)
    cdef uint32_t block_stream
    cdef bint block_end_stream
    cdef readonly bint goaway_sent
    cdef Py_ssize_t max_block      # a header block's bytes, at most (max_header_bytes)
    cdef readonly long long answers   # control frames we queued in answer (PING, SETTINGS, RST)
    cdef double window_start       # the flood counters count in one-second windows
    cdef int resets_in_window
    cdef int refused_in_window
    cdef int control_in_window
    cdef int empty_in_window

    cdef void setup(self, SessionHandler handler, uint32_t max_concurrent_streams,
                    uint32_t initial_window_size, uint32_t max_frame_size,
                    uint32_t header_table_size, uint32_t connection_window,
                    Py_ssize_t max_header_bytes, Py_ssize_t max_headers)
    cdef void check_block(self, FrameHeader* h) except *
    cdef void tick(self)
    cdef void count_reset(self) except *
    cdef void count_empty(self) except *
    cdef void count_control(self) except *
    cpdef count_refused(self)
    cdef void check_refused(self) except *
    cpdef receive(self, data)
    cpdef uint32_t send_request(self, list fields, bint end_stream=*) except 0
    cpdef bint can_open(self)
    cdef void response_block(self, uint32_t sid, _Stream s, list fields, bint end) except *
    cpdef bytes data_to_send(self)
    cpdef send_headers(self, uint32_t stream_id, list fields, bint end_stream=*)
    cpdef Py_ssize_t send_data(self, uint32_t stream_id, bytes data, bint end_stream=*) except -1
    cpdef bint send_body(self, uint32_t stream_id, bytes data, bint end_stream=*) except -1
    cpdef send_trailers(self, uint32_t stream_id, list fields)
    cpdef bint waiting(self, uint32_t stream_id)
    cdef void push(self, uint32_t sid, _Stream s) except *
    cdef void push_all(self) except *
    cpdef consumed(self, uint32_t stream_id, Py_ssize_t n)
    cpdef Py_ssize_t send_window_of(self, uint32_t stream_id)
    cpdef reset_stream(self, uint32_t stream_id, uint32_t code)
    cpdef goaway(self, uint32_t code=*, bint final=*)
    cdef void _receive(self, object data) except *
    cdef void on_frame(self, FrameHeader* h, bytes payload) except *
    cdef void data(self, FrameHeader* h, bytes payload) except *
    cdef void header_block(self) except *
    cdef void remote_end(self, uint32_t sid, _Stream s)
    cdef void settings(self, list values) except *
    cdef void window_update(self, uint32_t sid, uint32_t increment) except *
    cdef void consume(self, uint32_t sid, _Stream s, Py_ssize_t n)
    cdef void consumed_connection(self, Py_ssize_t n)
    cdef void local_end(self, uint32_t sid, _Stream s)


cdef class ServerSession(Session):
    pass


@cython.final
cdef class ClientSession(Session):
    pass
