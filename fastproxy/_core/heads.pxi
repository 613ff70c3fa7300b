# Included by proxy.pyx: HeadWriter, which builds an outgoing head from copy runs of the
# received bytes plus the proxy's own lines, and small helpers over bytes/bytearray.

# -- building heads: copy runs of untouched bytes, then append our own lines ---------------

cdef struct Span:
    Py_ssize_t start   # -1: the next extra goes here
    Py_ssize_t end


cdef class HeadWriter:
    """Collects runs of a received head and extra lines, then copies them out once.

    Untouched header lines are adjacent, so a typical head is one run: one memcpy.
    """
    cdef Span* spans
    cdef int n
    cdef int cap
    cdef list extras
    cdef Py_ssize_t total

    def __cinit__(self):
        self.extras = []
        self.cap = 64
        self.spans = <Span*>malloc(self.cap * sizeof(Span))
        if self.spans is NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.spans)

    cdef inline void reset(self):
        self.n = 0
        self.total = 0
        if self.extras:
            del self.extras[:]

    cdef int _push(self, Py_ssize_t a, Py_ssize_t b) except -1:
        cdef Span* grown
        if self.n == self.cap:
            grown = <Span*>realloc(self.spans, 2 * self.cap * sizeof(Span))
            if grown is NULL:
                raise MemoryError()
            self.spans = grown
            self.cap *= 2
        self.spans[self.n].start = a
        self.spans[self.n].end = b
        self.n += 1
        return 0

    cdef inline int span(self, Py_ssize_t a, Py_ssize_t b) except -1:
        if self.n and self.spans[self.n - 1].end == a:
            self.spans[self.n - 1].end = b
        else:
            self._push(a, b)
        self.total += b - a
        return 0

    cdef int extra(self, bytes data) except -1:
        self.extras.append(data)
        self._push(-1, -1)
        self.total += PyBytes_GET_SIZE(data)
        return 0

    cdef bytes build(self, bytes raw, const char* body, Py_ssize_t body_len):
        """The runs and extras in order, then body_len bytes of body."""
        cdef Py_ssize_t k
        cdef bytes out = PyBytes_FromStringAndSize(NULL, self.total + body_len)
        cdef char* o = PyBytes_AS_STRING(out)
        cdef const char* src = PyBytes_AS_STRING(raw)
        cdef int i, e = 0
        cdef bytes x
        for i in range(self.n):
            if self.spans[i].start < 0:
                x = self.extras[e]
                e += 1
                k = PyBytes_GET_SIZE(x)
                memcpy(o, PyBytes_AS_STRING(x), k)
            else:
                k = self.spans[i].end - self.spans[i].start
                memcpy(o, src + self.spans[i].start, k)
            o += k
        if body_len:
            memcpy(o, body, body_len)
        return out


cdef inline bytes chunk(bytes data):
    """data as one chunk of HTTP/1.1 chunked encoding."""
    return b"%x\r\n" % PyBytes_GET_SIZE(data) + data + b"\r\n"


cdef inline const char* _ptr(object data):
    if type(data) is bytes:
        return PyBytes_AS_STRING(data)
    return PyByteArray_AS_STRING(data)


cdef inline Py_ssize_t _len(object data):
    if type(data) is bytes:
        return PyBytes_GET_SIZE(data)
    return len(data)


cdef inline bytes _slice(object data, Py_ssize_t a, Py_ssize_t b):
    """data[a:b] as bytes; no copy when that is all of a bytes object."""
    if a == 0 and type(data) is bytes and b == PyBytes_GET_SIZE(data):
        return <bytes>data
    return PyBytes_FromStringAndSize(_ptr(data) + a, b - a)
