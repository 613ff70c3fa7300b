# Included by proxy.pyx: access log lines (docs/observability.md), written by the core itself.
#
# With the access log on, every request costs one JSON line. Building a record tuple, a
# dict and orjson's output for it in Python cost about 5 µs a request; here the line is
# written straight into a growing buffer of the worker from the values the exchange
# already holds (about half a microsecond), and Python takes the whole buffer on its drain
# timer and hands it to the writer thread. fastproxy.observe.accesslog's tests check the
# lines against orjson as the oracle.

from libc.stdio cimport snprintf
from libc.time cimport tm, time_t

cdef extern from "<time.h>" nogil:
    tm* gmtime_r(const time_t* timep, tm* result)

cdef enum:
    LOG_LIMIT = 32 * 1024 * 1024   # bytes waiting for the drain; beyond: lines dropped, counted


@cython.final
cdef class LogBuffer:
    """JSON lines waiting for the drain timer."""
    cdef char* data
    cdef Py_ssize_t length
    cdef Py_ssize_t capacity
    cdef readonly uint64_t dropped
    cdef int64_t second            # the second whose text is in second_text
    cdef char second_text[24]      # "2026-11-25T21:20:14."

    def __cinit__(self):
        self.capacity = 65536
        self.data = <char*>malloc(self.capacity)
        if self.data is NULL:
            raise MemoryError()
        self.second = -1

    def __dealloc__(self):
        free(self.data)

    def take(self):
        """Everything written since the last call, as bytes (whole lines)."""
        out = PyBytes_FromStringAndSize(self.data, self.length)
        self.length = 0
        if self.capacity > 4 * 1024 * 1024:   # a burst is over: give the memory back
            self.data = <char*>realloc(self.data, 65536)
            self.capacity = 65536
        return out

    cdef bint reserve(self, Py_ssize_t n) noexcept:
        cdef Py_ssize_t want
        cdef char* grown
        if self.length + n <= self.capacity:
            return True
        want = self.capacity * 2
        while want < self.length + n:
            want *= 2
        grown = <char*>realloc(self.data, want)
        if grown is NULL:
            return False
        self.data = grown
        self.capacity = want
        return True

    cdef inline void raw(self, const char* s, Py_ssize_t n) noexcept:
        memcpy(self.data + self.length, s, n)
        self.length += n

    cdef void text(self, const char* p, Py_ssize_t n, bint latin1) noexcept:
        """A JSON string of n bytes (latin1: bytes are code points, as the request's bytes
        are decoded; else UTF-8 passes as it is). Room for 6 bytes per byte is reserved."""
        cdef char* o = self.data + self.length
        cdef unsigned char c
        cdef Py_ssize_t i
        o[0] = b'"'
        o += 1
        for i in range(n):
            c = <unsigned char>p[i]
            if c == 34 or c == 92:          # " and \
                o[0] = b'\\'
                o[1] = <char>c
                o += 2
            elif c < 32 or c == 127:
                memcpy(o, b"\\u00", 4)
                o[4] = HEX[c >> 4]
                o[5] = HEX[c & 15]
                o += 6
            elif c >= 128 and latin1:
                o[0] = <char>(0xC0 | (c >> 6))
                o[1] = <char>(0x80 | (c & 0x3F))
                o += 2
            else:
                o[0] = <char>c
                o += 1
        o[0] = b'"'
        self.length = o + 1 - self.data

    cdef inline void quoted(self, bytes value) noexcept:
        """A value JSON-quoted ahead of time (names from the configuration), or null."""
        if value is None:
            self.raw(b"null", 4)
        else:
            self.raw(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))

    cdef void str_or_null(self, str value) noexcept:
        cdef bytes b
        if value is None:
            self.raw(b"null", 4)
        else:
            b = value.encode("utf-8", "replace")
            self.text(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), False)

    cdef void number(self, long long value) noexcept:
        """A decimal integer (snprintf would cost more than the rest of the line)."""
        cdef char digits[24]
        cdef int n = 0
        cdef char* o
        if value < 0:
            self.raw(b"-", 1)
            value = -value
        while True:
            digits[n] = <char>(48 + value % 10)
            n += 1
            value //= 10
            if value == 0:
                break
        o = self.data + self.length
        self.length += n
        while n:
            n -= 1
            o[0] = digits[n]
            o += 1

    cdef inline void three_digits(self, int value) noexcept:
        cdef char* o = self.data + self.length
        o[0] = <char>(48 + value // 100)
        o[1] = <char>(48 + value // 10 % 10)
        o[2] = <char>(48 + value % 10)
        self.length += 3

    cdef void timestamp(self, double t) noexcept:
        """RFC 3339 UTC with milliseconds; the seconds part is formatted once a second."""
        cdef int64_t second = <int64_t>t
        cdef time_t s
        cdef tm parts
        cdef int ms = <int>((t - second) * 1000)
        if second != self.second:
            s = <time_t>second
            gmtime_r(&s, &parts)
            snprintf(self.second_text, 24, b"%04d-%02d-%02dT%02d:%02d:%02d.",
                     parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday, parts.tm_hour,
                     parts.tm_min, parts.tm_sec)
            self.second = second
        self.raw(b"\"", 1)
        self.raw(self.second_text, 20)
        self.three_digits(ms if ms < 1000 else 999)
        self.raw(b"Z\"", 2)

    cdef void line(self, double start, int64_t duration_ns, bytes listener, bytes route,
                   const char* method, Py_ssize_t method_len, const char* path, Py_ssize_t path_len,
                   const char* authority, Py_ssize_t authority_len, int status,
                   long long bytes_in, long long bytes_out, bytes cluster, bytes upstream, str peer,
                   bint traced, uint64_t trace_hi, uint64_t trace_lo,
                   const char* request_id, Py_ssize_t request_id_len, str error, bint h2,
                   int grpc_status, str original_destination) noexcept:
        """One access log line, the fields of docs/observability.md in their order. listener, route,
        cluster and upstream come JSON-quoted (json_quoted), or None."""
        cdef Py_ssize_t need = 512 + 6 * (method_len + path_len + authority_len + request_id_len) \
            + PyBytes_GET_SIZE(listener) + (PyBytes_GET_SIZE(route) if route is not None else 0) \
            + (PyBytes_GET_SIZE(cluster) if cluster is not None else 0) \
            + (PyBytes_GET_SIZE(upstream) if upstream is not None else 0) \
            + (6 * len(peer) if peer is not None else 0) + (6 * len(error) if error is not None else 0) \
            + (len(original_destination) if original_destination is not None else 0)
        cdef long long micros = (duration_ns + 500) // 1000
        cdef char* o
        if self.length + need > LOG_LIMIT or not self.reserve(need):
            self.dropped += 1
            return
        self.raw(b"{\"time\":", 8)
        self.timestamp(start)
        self.raw(b",\"listener\":", 12)
        self.quoted(listener)
        self.raw(b",\"route\":", 9)
        self.quoted(route)
        self.raw(b",\"method\":", 10)
        self.text(method, method_len, True)
        self.raw(b",\"path\":", 8)
        self.text(path, path_len, True)
        self.raw(b",\"authority\":", 13)
        self.text(authority, authority_len, True)
        self.raw(b",\"status\":", 10)
        self.number(status)
        self.raw(b",\"duration_ms\":", 15)
        self.number(micros // 1000)
        self.raw(b".", 1)
        self.three_digits(<int>(micros % 1000))
        self.raw(b",\"bytes_in\":", 12)
        self.number(bytes_in)
        self.raw(b",\"bytes_out\":", 13)
        self.number(bytes_out)
        self.raw(b",\"cluster\":", 11)
        self.quoted(cluster)
        self.raw(b",\"upstream\":", 12)
        self.quoted(upstream)
        self.raw(b",\"peer\":", 8)
        self.str_or_null(peer)
        self.raw(b",\"trace_id\":", 12)
        if traced:
            o = self.data + self.length
            o[0] = b'"'
            _put_trace(o + 1, trace_hi, trace_lo)
            o[33] = b'"'
            self.length += 34
        else:
            self.raw(b"null", 4)
        self.raw(b",\"request_id\":", 14)
        if request_id is NULL:
            self.raw(b"null", 4)
        else:
            self.text(request_id, request_id_len, True)
        self.raw(b",\"error\":", 9)
        self.str_or_null(error)
        if h2:
            self.raw(b",\"protocol\":\"HTTP/2\"", 20)
        else:
            self.raw(b",\"protocol\":\"HTTP/1.1\"", 22)
        self.raw(b",\"grpc_status\":", 15)
        if grpc_status >= 0:
            self.number(grpc_status)
        else:
            self.raw(b"null", 4)
        self.raw(b",\"original_destination\":", 24)
        self.str_or_null(original_destination)
        self.raw(b"}\n", 2)


cdef bytes json_quoted(str value):
    """A name as a JSON string, once, when the configuration is compiled."""
    if value is None:
        return None
    cdef LogBuffer buf = LogBuffer()
    buf.str_or_null(value)
    return buf.take()


def access_log_line(record):
    """The line the core writes for a fastproxy.observe.records.Record (for tests: the
    strings are encoded as the core holds them, latin-1 for what came from the request)."""
    cdef LogBuffer buf = LogBuffer()
    (start, end, listener, _, route, cluster, upstream, method, path, authority, status,
     error, bytes_in, bytes_out, peer, trace_id, _, _, _, request_id, _, protocol,
     grpc_status, original_destination) = record
    m, p, a = method.encode("latin-1"), path.encode("latin-1"), authority.encode("latin-1")
    rid = request_id.encode("latin-1") if request_id is not None else None
    hi = int(trace_id[:16], 16) if trace_id is not None else 0
    lo = int(trace_id[16:], 16) if trace_id is not None else 0
    buf.line(start, <int64_t>round((end - start) * 1e9), json_quoted(listener), json_quoted(route),
             m, len(m), p, len(p), a, len(a), status, bytes_in, bytes_out, json_quoted(cluster),
             json_quoted(upstream), peer,
             trace_id is not None, hi, lo, PyBytes_AS_STRING(rid) if rid is not None else NULL,
             len(rid) if rid is not None else 0, error, protocol == "HTTP/2",
             grpc_status if grpc_status is not None else -1, original_destination)
    return buf.take()
