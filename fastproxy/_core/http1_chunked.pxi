# Included by http1.pyx: ChunkedReader, which validates a chunked body (sizes, chunk
# extensions, trailers) as it streams past and optionally extracts the data.

# -- chunked bodies ---------------------------------------------------------------------

cdef enum ChunkState:
    C_SIZE_START = 0
    C_SIZE
    C_SIZE_BWS       # whitespace after the size: only before a chunk extension (RFC 9112 §7.1.1)
    # chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ), where the
    # name is a token and the value a token or a quoted-string (RFC 9112 §7.1.1)
    C_EXT_NAME_START
    C_EXT_NAME
    C_EXT_NAME_BWS
    C_EXT_VALUE_START
    C_EXT_VALUE
    C_EXT_QUOTED
    C_EXT_QUOTED_ESC
    C_EXT_QUOTED_END
    C_EXT_VALUE_BWS
    C_SIZE_LF
    C_DATA
    C_DATA_CR
    C_DATA_LF
    C_TRAILER_START
    C_TRAILER_NAME
    C_TRAILER_VALUE
    C_TRAILER_LF
    C_END_LF


cdef inline int _hex(char c) noexcept:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef class ChunkedReader:
    """Validates a chunked body as it streams past; optionally extracts the data.

    `feed` consumes bytes up to the end of the body and returns how many it consumed
    (fewer than given only when the body ended), or -1 with `error` set. The bytes it
    consumed are valid chunked framing and may be forwarded as they are. When it extracts
    the data it keeps the trailer section too (`trailers()`).
    """

    def __cinit__(self):
        self.reset()

    cdef void reset(self):
        self.state = C_SIZE_START
        self.remaining = 0
        self.line_bytes = 0
        self.trailer_bytes = 0
        self.data_bytes = 0
        self.done = False
        self.error = None
        self.trailer_text = None

    cpdef list trailers(self):
        """The trailer fields kept while extracting, as [(lowercase name, value)]."""
        cdef list out = []
        if self.trailer_text is None:
            return out
        for line in bytes(self.trailer_text).split(b"\n"):
            name, _, value = line.partition(b":")
            if name:
                out.append((name.lower(), value.strip(b" \t")))
        return out

    cdef Py_ssize_t feed(self, const char* p, Py_ssize_t n, list data_out) except -2:
        cdef Py_ssize_t i = 0, k
        cdef int d
        cdef char c
        while i < n:
            if self.state == C_DATA:
                k = n - i
                if k > self.remaining:
                    k = <Py_ssize_t>self.remaining
                if data_out is not None:
                    data_out.append(PyBytes_FromStringAndSize(p + i, k))
                i += k
                self.remaining -= k
                self.data_bytes += k
                if self.remaining == 0:
                    self.state = C_DATA_CR
                continue
            c = p[i]
            i += 1
            if self.state == C_SIZE_START or self.state == C_SIZE:
                d = _hex(c)
                if d >= 0:
                    self.line_bytes += 1
                    if self.remaining > (1LL << 56) or self.line_bytes > 20:
                        return self._fail("chunk size overflow")
                    self.remaining = self.remaining * 16 + d
                    self.state = C_SIZE
                elif self.state == C_SIZE and c == 59:  # ';'
                    self.state = C_EXT_NAME_START
                elif self.state == C_SIZE and c == CR:
                    self.state = C_SIZE_LF
                elif self.state == C_SIZE and (c == SP or c == HTAB):
                    self.state = C_SIZE_BWS
                else:
                    return self._fail("invalid chunk size")
            elif self.state == C_SIZE_BWS:
                if c == 59:
                    self.state = C_EXT_NAME_START
                elif c != SP and c != HTAB:
                    return self._fail("whitespace in chunk size")
            elif C_EXT_NAME_START <= self.state <= C_EXT_VALUE_BWS:
                self.line_bytes += 1
                if self.line_bytes > MAX_LINE:
                    return self._fail("chunk extension too long")
                if not self._extension(c):
                    return self._fail("invalid chunk extension")
            elif self.state == C_SIZE_LF:
                if c != LF:
                    return self._fail("missing LF after chunk size")
                self.line_bytes = 0
                self.state = C_DATA if self.remaining > 0 else C_TRAILER_START
            elif self.state == C_DATA_CR:
                if c != CR:
                    return self._fail("chunk data longer than its size")
                self.state = C_DATA_LF
            elif self.state == C_DATA_LF:
                if c != LF:
                    return self._fail("missing CRLF after chunk data")
                self.state = C_SIZE_START
            elif self.state == C_TRAILER_START:
                if c == CR:
                    self.state = C_END_LF
                elif TCHAR[<unsigned char>c]:
                    self.state = C_TRAILER_NAME
                    if data_out is not None:
                        if self.trailer_text is None:
                            self.trailer_text = bytearray()
                        elif self.trailer_text:
                            self.trailer_text.append(LF)
                        self.trailer_text.append(<unsigned char>c)
                else:
                    return self._fail("invalid trailer field")
            elif self.state == C_TRAILER_NAME or self.state == C_TRAILER_VALUE:
                # trailer lines are header fields: token ":" field-value
                self.trailer_bytes += 1
                if self.trailer_bytes > MAX_TRAILERS:
                    return self._fail("trailer section too large")
                if self.state == C_TRAILER_NAME:
                    if c == 58:
                        self.state = C_TRAILER_VALUE
                    elif not TCHAR[<unsigned char>c]:
                        return self._fail("invalid trailer field name")
                elif c == CR:
                    self.state = C_TRAILER_LF
                elif <unsigned char>c < 32 and c != HTAB or c == 127:
                    return self._fail("control character in trailer")
                if data_out is not None and c != CR:
                    self.trailer_text.append(<unsigned char>c)
            elif self.state == C_TRAILER_LF:
                if c != LF:
                    return self._fail("bare CR in trailer")
                self.state = C_TRAILER_START
            elif self.state == C_END_LF:
                if c != LF:
                    return self._fail("missing LF at end of chunked body")
                self.done = True
                return i
        return i

    cdef bint _extension(self, char c) noexcept:
        """One byte of a chunk extension: moves the state on, False if the grammar refuses."""
        cdef unsigned char u = <unsigned char>c
        cdef int s = self.state
        cdef bint ws = c == SP or c == HTAB
        if s == C_EXT_QUOTED:
            if c == 34:  # '"'
                self.state = C_EXT_QUOTED_END
            elif c == 92:  # '\\'
                self.state = C_EXT_QUOTED_ESC
            elif u < 32 and c != HTAB or u == 127:
                return False
            return True
        if s == C_EXT_QUOTED_ESC:
            self.state = C_EXT_QUOTED
            return not (u < 32 and c != HTAB or u == 127)
        if TCHAR[u]:
            if s == C_EXT_NAME_START:
                self.state = C_EXT_NAME
            elif s == C_EXT_VALUE_START:
                self.state = C_EXT_VALUE
            return s == C_EXT_NAME or s == C_EXT_NAME_START or s == C_EXT_VALUE \
                or s == C_EXT_VALUE_START
        if ws:
            if s == C_EXT_NAME:
                self.state = C_EXT_NAME_BWS
            elif s == C_EXT_VALUE or s == C_EXT_QUOTED_END:
                self.state = C_EXT_VALUE_BWS
            return True
        if c == 59:  # ';' starts the next extension after a name or a value
            self.state = C_EXT_NAME_START
            return s != C_EXT_NAME_START and s != C_EXT_VALUE_START
        if c == 61:  # '='
            self.state = C_EXT_VALUE_START
            return s == C_EXT_NAME or s == C_EXT_NAME_BWS
        if c == 34:
            self.state = C_EXT_QUOTED
            return s == C_EXT_VALUE_START
        if c == CR:  # the line may end right after a name or a value, not after BWS
            self.state = C_SIZE_LF
            return s == C_EXT_NAME or s == C_EXT_VALUE or s == C_EXT_QUOTED_END
        return False

    cdef Py_ssize_t _fail(self, str why) noexcept:
        self.error = why
        return -1

    def feed_bytes(self, data, bint extract=False):
        """Python entry for tests: (consumed, [data chunks] or None); raises ParseError."""
        out = [] if extract else None
        cdef const char* p
        cdef Py_ssize_t n
        _buffer(data, &p, &n)
        cdef Py_ssize_t r = self.feed(p, n, out)
        if r < 0:
            raise ParseError(400, self.error)
        return r, out
