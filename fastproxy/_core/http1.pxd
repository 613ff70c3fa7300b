# Declarations shared by the HTTP/1.1 parser (http1.pyx) and the proxy (proxy.pyx).
# Heads are parsed into offsets into the received bytes; nothing is copied until a
# header must be rewritten.

cdef enum HeaderKind:
    H_OTHER = 0
    H_HOST
    H_CONTENT_LENGTH
    H_TRANSFER_ENCODING
    H_CONNECTION
    H_KEEP_ALIVE
    H_PROXY_CONNECTION
    H_TE
    H_UPGRADE
    H_EXPECT
    H_X_FORWARDED_FOR
    H_X_FORWARDED_PROTO
    H_X_REQUEST_ID
    H_XFCC
    # trace context (SPEC §7): read and rewritten when their family is propagated
    H_TRACEPARENT
    H_TRACESTATE
    H_B3
    H_B3_TRACEID
    H_B3_SPANID
    H_B3_PARENTSPANID
    H_B3_SAMPLED
    H_B3_FLAGS

cdef enum Framing:
    BODY_NONE = 0
    BODY_LENGTH = 1
    BODY_CHUNKED = 2
    BODY_UNTIL_CLOSE = 3
    BODY_STREAM = 4      # unknown length, passed as plain data with its end (and trailers)
                         # told apart: what HTTP/2 sides give; never parsed from HTTP/1.1

cdef struct Field:
    Py_ssize_t line_start   # first byte of the header line
    Py_ssize_t name_end     # offset of the colon
    Py_ssize_t value_start  # value without surrounding whitespace
    Py_ssize_t value_end
    Py_ssize_t line_end     # just past the line's CRLF
    int kind
    bint drop               # hop-by-hop: named by Connection

cdef class Head:
    cdef readonly bytes raw           # the bytes the head was parsed from; offsets index it
    cdef readonly Py_ssize_t length   # bytes of raw the head takes, final CRLF included
    cdef readonly Py_ssize_t start    # first byte of the start line (after ignored CRLFs)
    cdef readonly Py_ssize_t line_end # just past the start line's CRLF
    cdef readonly int version         # 10 or 11
    cdef Field* fields
    cdef readonly int nfields
    cdef int capacity
    cdef readonly int framing
    cdef readonly long long content_length
    cdef readonly bint keep_alive     # the connection may carry another message after this one
    cdef readonly bint connection_upgrade
    cdef readonly bint has_connection_names
    cdef readonly int error_status    # 0, or the status to answer with
    cdef readonly str error_detail
    # incremental scanning state for heads that arrive in pieces
    cdef Py_ssize_t scan_pos
    cdef Py_ssize_t checked
    cdef bint started

    cdef void reset(self)
    cdef int fail(self, int status, str detail) except -2
    cdef int add_field(self, Py_ssize_t line_start, Py_ssize_t name_end, Py_ssize_t vs,
                       Py_ssize_t ve, Py_ssize_t line_end, int kind) except -1

cdef class RequestHead(Head):
    cdef readonly Py_ssize_t method_end
    cdef readonly Py_ssize_t target_start, target_end
    cdef readonly Py_ssize_t path_start, path_end         # path of the target, query excluded
    cdef readonly Py_ssize_t authority_start, authority_end
    cdef readonly Py_ssize_t host_start, host_end         # host without port
    cdef readonly bint absolute_form
    cdef readonly bint expect_continue
    cdef readonly bint upgrade
    cdef readonly int host_field         # index of the Host field or -1
    cdef readonly int request_id_field   # first x-request-id or -1
    cdef readonly int xff_field          # last x-forwarded-for or -1
    cdef readonly bint idempotent

cdef class ResponseHead(Head):
    cdef readonly int status
    cdef readonly int request_id_field

cdef class ChunkedReader:
    cdef int state
    cdef long long remaining
    cdef Py_ssize_t line_bytes
    cdef Py_ssize_t trailer_bytes
    cdef readonly long long data_bytes   # body bytes without the framing
    cdef readonly bint done
    cdef readonly str error
    cdef bytearray trailer_text          # the trailer lines, kept when the data is extracted
    cdef void reset(self)
    cpdef list trailers(self)
    cdef Py_ssize_t feed(self, const char* p, Py_ssize_t n, list data_out) except -2
    cdef bint _extension(self, char c) noexcept
    cdef Py_ssize_t _fail(self, str why) noexcept

cdef Py_ssize_t parse_request(RequestHead h, object buf, Py_ssize_t max_bytes, int max_headers) except -2
cdef Py_ssize_t parse_response(ResponseHead h, object buf, Py_ssize_t max_bytes, int max_headers,
                               bint head_request) except -2
cdef bint ascii_ieq(const char* a, const char* b, Py_ssize_t n) noexcept
