"""Strict HTTP/1.1 message-head parser and chunked-body reader (RFC 9110/9112).

Owns: turning received bytes into a `RequestHead`/`ResponseHead` of offsets, deciding
message framing, and refusing every request-smuggling vector. It never allocates per
header and never copies the head; the proxy forwards untouched lines as they came.

Theory of operation: a head may arrive in pieces, so parsing is incremental. Each call
scans only bytes it has not looked at for line ends, bare CR and NUL; each complete line
is then validated once. On the empty line the semantic checks run (Host, Content-Length,
Transfer-Encoding, Connection) and the head is complete. `parse_*` return the head
length, 0 for "need more bytes", or -1 with `error_status`/`error_detail` set.

Where we are stricter than RFC 9112 (and h11): bare LF line endings, control characters
(other than HTAB) in field values and the reason phrase (RFC 9110 §5.5 forbids them; h11
lets them through), whitespace in a chunk size other than before a chunk extension, chunk
extensions outside RFC 9112 §7.1.1's grammar (h11 takes anything after `;`), a
Host list, an empty Host, an empty or over-long Host port, and versions other than
HTTP/1.0 and HTTP/1.1 (`HTTP/1.2` included) are refused; a request with
Transfer-Encoding under HTTP/1.0 is refused instead of being read with faulty framing.
`max_headers` counts header fields (Host included), not the request line.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memchr, memcmp

cdef enum:
    CR = 13
    LF = 10
    SP = 32
    HTAB = 9
    MAX_LINE = 8192          # chunk-size and chunk-extension lines
    MAX_TRAILERS = 65536

cdef unsigned char TCHAR[256]
cdef unsigned char HOSTCHAR[256]


cdef void _init_tables() noexcept:
    cdef int c
    for c in range(256):
        TCHAR[c] = 0
        HOSTCHAR[c] = 0
    for c in range(ord('0'), ord('9') + 1):
        TCHAR[c] = 1
        HOSTCHAR[c] = 1
    for c in range(ord('a'), ord('z') + 1):
        TCHAR[c] = 1
        HOSTCHAR[c] = 1
    for c in range(ord('A'), ord('Z') + 1):
        TCHAR[c] = 1
        HOSTCHAR[c] = 1
    for c in b"!#$%&'*+-.^_`|~":
        TCHAR[c] = 1
    # reg-name: unreserved / pct-encoded / sub-delims, without ',' (a list is refused)
    for c in b"-._~%!$&'()*+;=":
        HOSTCHAR[c] = 1


_init_tables()


class ParseError(Exception):
    """A message the proxy must refuse: `status` is the answer, `detail` says why."""

    def __init__(self, int status, str detail):
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


cdef inline int _buffer(object buf, const char** p, Py_ssize_t* n) except -1:
    if type(buf) is bytes:
        p[0] = PyBytes_AS_STRING(buf)
        n[0] = PyBytes_GET_SIZE(buf)
    elif type(buf) is bytearray:
        p[0] = PyByteArray_AS_STRING(buf)
        n[0] = PyByteArray_GET_SIZE(buf)
    else:
        raise TypeError("expected bytes or bytearray")
    return 0


cdef inline unsigned char _lower(unsigned char c) noexcept:
    if 65 <= c <= 90:
        return c + 32
    return c


cdef bint ascii_ieq(const char* a, const char* b, Py_ssize_t n) noexcept:
    """Case-insensitive equality of n bytes; `b` must already be lowercase."""
    cdef Py_ssize_t i
    for i in range(n):
        if _lower(<unsigned char>a[i]) != <unsigned char>b[i]:
            return False
    return True


cdef inline bint _is_ows(char c) noexcept:
    return c == SP or c == HTAB


cdef int _classify(const char* p, Py_ssize_t n) noexcept:
    """Which header the proxy cares about a name is (case-insensitive)."""
    if n == 4:
        if ascii_ieq(p, b"host", 4):
            return H_HOST
    elif n == 2:
        if ascii_ieq(p, b"te", 2):
            return H_TE
        if ascii_ieq(p, b"b3", 2):
            return H_B3
    elif n == 6:
        if ascii_ieq(p, b"expect", 6):
            return H_EXPECT
    elif n == 7:
        if ascii_ieq(p, b"upgrade", 7):
            return H_UPGRADE
    elif n == 10:
        if ascii_ieq(p, b"connection", 10):
            return H_CONNECTION
        if ascii_ieq(p, b"keep-alive", 10):
            return H_KEEP_ALIVE
        if ascii_ieq(p, b"tracestate", 10):
            return H_TRACESTATE
        if ascii_ieq(p, b"x-b3-flags", 10):
            return H_B3_FLAGS
    elif n == 11:
        if ascii_ieq(p, b"traceparent", 11):
            return H_TRACEPARENT
        if ascii_ieq(p, b"x-b3-spanid", 11):
            return H_B3_SPANID
    elif n == 12:
        if ascii_ieq(p, b"x-request-id", 12):
            return H_X_REQUEST_ID
        if ascii_ieq(p, b"x-b3-traceid", 12):
            return H_B3_TRACEID
        if ascii_ieq(p, b"x-b3-sampled", 12):
            return H_B3_SAMPLED
    elif n == 14:
        if ascii_ieq(p, b"content-length", 14):
            return H_CONTENT_LENGTH
    elif n == 15:
        if ascii_ieq(p, b"x-forwarded-for", 15):
            return H_X_FORWARDED_FOR
    elif n == 16:
        if ascii_ieq(p, b"proxy-connection", 16):
            return H_PROXY_CONNECTION
    elif n == 17:
        if ascii_ieq(p, b"transfer-encoding", 17):
            return H_TRANSFER_ENCODING
        if ascii_ieq(p, b"x-forwarded-proto", 17):
            return H_X_FORWARDED_PROTO
        if ascii_ieq(p, b"x-b3-parentspanid", 17):
            return H_B3_PARENTSPANID
    elif n == 23:
        if ascii_ieq(p, b"x-forwarded-client-cert", 23):
            return H_XFCC
    return H_OTHER


cdef class Head:
    """Offsets of one parsed message head into `raw`."""

    def __cinit__(self):
        self.capacity = 32
        self.fields = <Field*>malloc(self.capacity * sizeof(Field))
        if self.fields is NULL:
            raise MemoryError()
        self.reset()

    def __dealloc__(self):
        free(self.fields)

    cdef void reset(self):
        self.raw = None
        self.length = 0
        self.start = 0
        self.line_end = 0
        self.version = 11
        self.nfields = 0
        self.framing = BODY_NONE
        self.content_length = -1
        self.keep_alive = True
        self.connection_upgrade = False
        self.has_connection_names = False
        self.error_status = 0
        self.error_detail = None
        self.scan_pos = 0
        self.checked = 0
        self.started = False

    cdef int fail(self, int status, str detail) except -2:
        self.error_status = status
        self.error_detail = detail
        return -1

    cdef int add_field(self, Py_ssize_t line_start, Py_ssize_t name_end, Py_ssize_t vs,
                       Py_ssize_t ve, Py_ssize_t line_end, int kind) except -1:
        cdef Field* grown
        if self.nfields == self.capacity:
            grown = <Field*>realloc(self.fields, 2 * self.capacity * sizeof(Field))
            if grown is NULL:
                raise MemoryError()
            self.fields = grown
            self.capacity *= 2
        cdef Field* f = &self.fields[self.nfields]
        f.line_start = line_start
        f.name_end = name_end
        f.value_start = vs
        f.value_end = ve
        f.line_end = line_end
        f.kind = kind
        f.drop = False
        self.nfields += 1
        return 0

    # -- Python views, for tests, the admin API and slow paths -------------------------

    @property
    def headers(self):
        """[(name, value)] as received, dropped ones included."""
        cdef int i
        cdef Field* f
        out = []
        for i in range(self.nfields):
            f = &self.fields[i]
            out.append((self.raw[f.line_start:f.name_end], self.raw[f.value_start:f.value_end]))
        return out

    def field_kind(self, int i):
        return self.fields[i].kind

    def field_dropped(self, int i):
        return self.fields[i].drop

    def get(self, name):
        """The value of the first header called `name` (case-insensitive), or None."""
        cdef bytes lname = name.lower() if isinstance(name, bytes) else name.lower().encode()
        cdef int i
        cdef Field* f
        for i in range(self.nfields):
            f = &self.fields[i]
            if f.name_end - f.line_start == len(lname) and ascii_ieq(
                    PyBytes_AS_STRING(self.raw) + f.line_start, lname, len(lname)):
                return self.raw[f.value_start:f.value_end]
        return None


cdef class RequestHead(Head):
    """A parsed request head."""

    def __cinit__(self):
        self.reset()  # Head.__cinit__ ran before this type's vtable was in place

    cdef void reset(self):
        Head.reset(self)
        self.method_end = 0
        self.target_start = self.target_end = 0
        self.path_start = self.path_end = 0
        self.authority_start = self.authority_end = 0
        self.host_start = self.host_end = 0
        self.absolute_form = False
        self.expect_continue = False
        self.upgrade = False
        self.host_field = -1
        self.request_id_field = -1
        self.xff_field = -1
        self.idempotent = False

    @property
    def method(self):
        return self.raw[self.start:self.method_end]

    @property
    def target(self):
        return self.raw[self.target_start:self.target_end]

    @property
    def path(self):
        return self.raw[self.path_start:self.path_end]

    @property
    def authority(self):
        return self.raw[self.authority_start:self.authority_end]

    @property
    def host(self):
        return self.raw[self.host_start:self.host_end].lower()


cdef class ResponseHead(Head):
    """A parsed response head."""

    def __cinit__(self):
        self.reset()

    cdef void reset(self):
        Head.reset(self)
        self.status = 0
        self.request_id_field = -1


# -- scanning ---------------------------------------------------------------------------

cdef Py_ssize_t _line_end(Head h, const char* p, Py_ssize_t pos, Py_ssize_t n, int bad) except -2:
    """Index of the LF ending the line at `pos`; -1 when incomplete; -3 on a framing error.

    Only line ends are checked here; every byte of a complete line is validated by the
    start-line and field parsers (which refuse CR and NUL as control characters).
    """
    cdef Py_ssize_t i = h.checked if h.checked > pos else pos
    cdef const char* q = <const char*>memchr(p + i, LF, n - i)
    if q is not NULL:
        i = q - p
        if i == pos or p[i - 1] != CR:
            h.fail(bad, "bare LF in message head")
            return -3
        h.checked = i + 1
        return i
    # incomplete: refuse a bare CR or NUL now rather than wait for a line end
    while i < n:
        if p[i] == CR and i + 1 < n or p[i] == 0:
            h.fail(bad, "bare CR in message head" if p[i] == CR else "NUL in message head")
            return -3
        i += 1
    # a CR at the very end may still be followed by its LF
    h.checked = n - 1 if (n > pos and p[n - 1] == CR) else n
    return -1


cdef int _parse_field(Head h, const char* p, Py_ssize_t a, Py_ssize_t b, Py_ssize_t line_end,
                      int bad) except -2:
    """Validate one field line p[a:b] (b at its CR) and record it."""
    cdef Py_ssize_t i = a, vs, ve, name_end
    cdef unsigned char c
    if p[a] == SP or p[a] == HTAB:
        return h.fail(bad, "obsolete line folding")
    while i < b and TCHAR[<unsigned char>p[i]]:
        i += 1
    if i == a:
        return h.fail(bad, "empty or invalid header name")
    if i == b or p[i] != 58:  # ':'
        if p[i] == SP or p[i] == HTAB:
            return h.fail(bad, "whitespace before colon in header")
        return h.fail(bad, "invalid character in header name")
    name_end = i
    vs = i + 1
    while vs < b and _is_ows(p[vs]):
        vs += 1
    ve = b
    while ve > vs and _is_ows(p[ve - 1]):
        ve -= 1
    for i in range(vs, ve):
        c = <unsigned char>p[i]
        if c < 32 and c != HTAB or c == 127:
            return h.fail(bad, "control character in header value")
    return h.add_field(a, name_end, vs, ve, line_end, _classify(p + a, name_end - a))


cdef long long _parse_length(const char* p, Py_ssize_t a, Py_ssize_t b) noexcept:
    """A Content-Length value: 1*DIGIT (leading zeros are decimal); -1 if malformed."""
    cdef long long v = 0
    cdef Py_ssize_t i
    if a == b:
        return -1
    for i in range(a, b):
        if not (48 <= p[i] <= 57):
            return -1
        if v > 99999999999999999:  # 10**17: the next digit could overflow 2**63
            return -1
        v = v * 10 + (p[i] - 48)
    return v


cdef int _scan(Head h, const char* p, Py_ssize_t n, Py_ssize_t max_bytes, int max_headers,
               int bad, bint request) except -2:
    """Advance over complete lines. 1: head complete; 0: need more; -1: refused."""
    cdef Py_ssize_t pos, eol
    cdef int r
    if not h.started:
        pos = 0
        # RFC 9112 §2.2: ignore empty lines before a request line
        while request and pos + 1 < n and p[pos] == CR and p[pos + 1] == LF:
            pos += 2
            if pos > max_bytes:
                h.fail(400, "too many empty lines before the request line")
                return -1
        if pos >= n or (pos + 1 == n and p[pos] == CR):
            return 0
        h.started = True
        h.start = pos
        h.scan_pos = pos
    pos = h.scan_pos
    while True:
        eol = _line_end(h, p, pos, n, bad)
        if eol == -3:
            return -1
        if eol == -1:
            if n - h.start > max_bytes:
                h.fail(431 if request else 502, "message head larger than max_header_bytes")
                return -1
            h.scan_pos = pos
            return 0
        if eol + 1 - h.start > max_bytes:
            h.fail(431 if request else 502, "message head larger than max_header_bytes")
            return -1
        if pos == h.start:
            h.line_end = eol + 1
            r = _start_line_request(<RequestHead>h, p, pos, eol - 1) if request else \
                _start_line_response(<ResponseHead>h, p, pos, eol - 1)
            if r < 0:
                return -1
        elif eol - 1 == pos:
            h.length = eol + 1
            return 1
        else:
            if _parse_field(h, p, pos, eol - 1, eol + 1, bad) < 0:
                return -1
            if h.nfields > max_headers:
                h.fail(431 if request else 502, "more header fields than max_headers")
                return -1
        pos = eol + 1
        h.scan_pos = pos


cdef int _start_line_request(RequestHead h, const char* p, Py_ssize_t a, Py_ssize_t b) except -2:
    cdef Py_ssize_t i = a, j
    while i < b and TCHAR[<unsigned char>p[i]]:
        i += 1
    if i == a or i == b or p[i] != SP:
        return h.fail(400, "invalid request line: method")
    h.method_end = i
    i += 1
    j = i
    while j < b and 33 <= <unsigned char>p[j] <= 126:
        j += 1
    if j == i or j == b or p[j] != SP:
        return h.fail(400, "invalid request line: target")
    h.target_start = i
    h.target_end = j
    j += 1
    if b - j != 8 or memcmp(p + j, b"HTTP/1.", 7) != 0 or not (p[j + 7] == 49 or p[j + 7] == 48):
        return h.fail(400, "invalid HTTP version")
    h.version = 11 if p[j + 7] == 49 else 10
    return 0


cdef int _start_line_response(ResponseHead h, const char* p, Py_ssize_t a, Py_ssize_t b) except -2:
    cdef Py_ssize_t i
    if b - a < 12 or memcmp(p + a, b"HTTP/1.", 7) != 0 or not (p[a + 7] == 49 or p[a + 7] == 48) \
            or p[a + 8] != SP:
        return h.fail(502, "invalid status line")
    h.version = 11 if p[a + 7] == 49 else 10
    for i in range(a + 9, a + 12):
        if not (48 <= p[i] <= 57):
            return h.fail(502, "invalid status code")
    h.status = (p[a + 9] - 48) * 100 + (p[a + 10] - 48) * 10 + (p[a + 11] - 48)
    if h.status < 100:
        return h.fail(502, "invalid status code")
    if b > a + 12:
        if p[a + 12] != SP:
            return h.fail(502, "invalid status line")
        for i in range(a + 13, b):
            if <unsigned char>p[i] < 32 and p[i] != HTAB or p[i] == 127:
                return h.fail(502, "control character in reason phrase")
    return 0


# -- list-valued headers ----------------------------------------------------------------

cdef enum:
    TOK_OTHER = 0
    TOK_CLOSE
    TOK_KEEP_ALIVE
    TOK_UPGRADE
    TOK_CHUNKED


cdef int _token_kind(const char* p, Py_ssize_t n) noexcept:
    if n == 5 and ascii_ieq(p, b"close", 5):
        return TOK_CLOSE
    if n == 10 and ascii_ieq(p, b"keep-alive", 10):
        return TOK_KEEP_ALIVE
    if n == 7 and ascii_ieq(p, b"upgrade", 7):
        return TOK_UPGRADE
    if n == 7 and ascii_ieq(p, b"chunked", 7):
        return TOK_CHUNKED
    return TOK_OTHER


cdef Py_ssize_t _next_element(const char* p, Py_ssize_t i, Py_ssize_t end, Py_ssize_t* ea,
                              Py_ssize_t* eb) noexcept:
    """One comma-separated element of p[i:end] trimmed into [ea, eb); returns the next i."""
    while i < end and _is_ows(p[i]):
        i += 1
    ea[0] = i
    while i < end and p[i] != 44:
        i += 1
    eb[0] = i
    while eb[0] > ea[0] and _is_ows(p[eb[0] - 1]):
        eb[0] -= 1
    return i + 1


cdef inline bint _all_tchar(const char* p, Py_ssize_t a, Py_ssize_t b) noexcept:
    if a == b:
        return False
    while a < b:
        if not TCHAR[<unsigned char>p[a]]:
            return False
        a += 1
    return True


cdef int _connection_tokens(Head h, const char* p, Field* f, bint* close, bint* keep) noexcept:
    """Read a Connection header; 1 if it names other headers to drop."""
    cdef Py_ssize_t i = f.value_start, ea, eb
    cdef int names = 0, k
    while i <= f.value_end:
        i = _next_element(p, i, f.value_end, &ea, &eb)
        if ea == eb:
            continue
        k = _token_kind(p + ea, eb - ea)
        if k == TOK_CLOSE:
            close[0] = True
        elif k == TOK_KEEP_ALIVE:
            keep[0] = True
        elif k == TOK_UPGRADE:
            h.connection_upgrade = True
        else:
            names = 1
    return names


cdef void _mark_connection_names(Head h, const char* p) noexcept:
    """Drop the end-to-end headers that a Connection header names (hop-by-hop now)."""
    cdef int i, j
    cdef Field* c
    cdef Field* f
    cdef Py_ssize_t k, ea, eb
    for i in range(h.nfields):
        c = &h.fields[i]
        if c.kind != H_CONNECTION:
            continue
        k = c.value_start
        while k <= c.value_end:
            k = _next_element(p, k, c.value_end, &ea, &eb)
            if ea == eb or _token_kind(p + ea, eb - ea) != TOK_OTHER:
                continue
            for j in range(h.nfields):
                f = &h.fields[j]
                if (f.kind == H_OTHER or f.kind >= H_TRACEPARENT) and f.name_end - f.line_start == eb - ea and \
                        _ieq2(p + f.line_start, p + ea, eb - ea):
                    f.drop = True


cdef bint _ieq2(const char* a, const char* b, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if _lower(<unsigned char>a[i]) != _lower(<unsigned char>b[i]):
            return False
    return True


cdef int _transfer_codings(Head h, const char* p, int bad, bint* chunked, bint* other) except -2:
    """Read every Transfer-Encoding field: is chunked final, is any other coding named?

    chunked anywhere but last, or anything that is not a list of tokens: -1 (refused).
    """
    cdef Field* f
    cdef Py_ssize_t i, ea, eb
    cdef int idx
    for idx in range(h.nfields):
        f = &h.fields[idx]
        if f.kind != H_TRANSFER_ENCODING:
            continue
        if f.value_start == f.value_end:
            return h.fail(bad, "empty Transfer-Encoding")
        i = f.value_start
        while i <= f.value_end:
            i = _next_element(p, i, f.value_end, &ea, &eb)
            if not _all_tchar(p, ea, eb):
                return h.fail(bad, "malformed Transfer-Encoding")
            if chunked[0]:
                return h.fail(bad, "chunked is not the final transfer coding")
            if _token_kind(p + ea, eb - ea) == TOK_CHUNKED:
                chunked[0] = True
            else:
                other[0] = True
    return 0


# -- requests ---------------------------------------------------------------------------

cdef int _authority(RequestHead h, const char* p, Py_ssize_t a, Py_ssize_t b) except -2:
    """Validate `host[:port]`; sets host_start/host_end. -1: refused."""
    cdef Py_ssize_t i = a, host_end
    if a == b:
        return h.fail(400, "empty Host")
    if p[a] == 91:  # '[' IP-literal
        i = a + 1
        while i < b and p[i] != 93:
            if not (TCHAR[<unsigned char>p[i]] or p[i] == 58):
                return h.fail(400, "invalid Host")
            i += 1
        if i == b:
            return h.fail(400, "invalid Host")
        i += 1
        host_end = i
    else:
        while i < b and HOSTCHAR[<unsigned char>p[i]]:
            i += 1
        host_end = i
        if host_end == a:
            return h.fail(400, "invalid Host")
    if i < b:
        if p[i] != 58:
            return h.fail(400, "invalid Host")
        i += 1
        if i == b or b - i > 5:
            return h.fail(400, "invalid Host port")
        while i < b:
            if not (48 <= p[i] <= 57):
                return h.fail(400, "invalid Host port")
            i += 1
    h.host_start = a
    h.host_end = host_end
    return 0


cdef int _request_target(RequestHead h, const char* p) except -2:
    cdef Py_ssize_t a = h.target_start, b = h.target_end, i, j, auth_start
    if p[a] == 47:  # '/': origin-form
        h.path_start = a
    elif b - a == 1 and p[a] == 42:  # '*'
        if not (h.method_end - h.start == 7 and memcmp(p + h.start, b"OPTIONS", 7) == 0):
            return h.fail(400, "asterisk-form target without OPTIONS")
        h.path_start = a
    elif b - a > 7 and ascii_ieq(p + a, b"http://", 7) or b - a > 8 and ascii_ieq(p + a, b"https://", 8):
        auth_start = a + (7 if p[a + 4] == 58 else 8)
        i = auth_start
        while i < b and p[i] != 47 and p[i] != 63 and p[i] != 35:
            i += 1
        if i == auth_start:
            return h.fail(400, "absolute-form target without authority")
        for j in range(auth_start, i):
            if p[j] == 64:
                return h.fail(400, "userinfo in request target")
        h.absolute_form = True
        h.authority_start = auth_start
        h.authority_end = i
        if _authority(h, p, auth_start, i) < 0:
            return -1
        h.path_start = i
    elif h.method_end - h.start == 7 and memcmp(p + h.start, b"CONNECT", 7) == 0:
        return h.fail(501, "CONNECT is not supported")
    else:
        return h.fail(400, "invalid request target")
    i = h.path_start
    while i < b and p[i] != 63 and p[i] != 35:
        i += 1
    h.path_end = i
    for i in range(h.target_start, b):
        if p[i] == 35:
            return h.fail(400, "fragment in request target")
    return 0


cdef int _request_semantics(RequestHead h, const char* p) except -2:
    cdef int i
    cdef Field* f
    cdef bint close = False, keep = False, chunked = False, other = False
    cdef bint has_te = False, has_upgrade = False
    cdef Py_ssize_t ha, hb, hs, he
    cdef long long cl
    if _request_target(h, p) < 0:
        return -1
    for i in range(h.nfields):
        f = &h.fields[i]
        if f.kind == H_OTHER:
            continue
        if f.kind == H_HOST:
            if h.host_field >= 0:
                return h.fail(400, "duplicate Host")
            h.host_field = i
        elif f.kind == H_CONTENT_LENGTH:
            if h.content_length >= 0:
                return h.fail(400, "duplicate Content-Length")
            cl = _parse_length(p, f.value_start, f.value_end)
            if cl < 0:
                return h.fail(400, "malformed Content-Length")
            h.content_length = cl
        elif f.kind == H_TRANSFER_ENCODING:
            has_te = True
        elif f.kind == H_CONNECTION:
            if _connection_tokens(h, p, f, &close, &keep):
                h.has_connection_names = True
        elif f.kind == H_UPGRADE:
            # Upgrade: h2c (RFC 7540 §3.2, dropped by RFC 9113) is not honoured: the
            # field goes as hop-by-hop and the request is served as HTTP/1.1
            has_upgrade = f.value_end > f.value_start and not (
                f.value_end - f.value_start == 3 and ascii_ieq(p + f.value_start, b"h2c", 3))
        elif f.kind == H_EXPECT:
            # RFC 9110 §10.1.1: an HTTP/1.0 request's 100-continue expectation is ignored
            if h.version == 11 and f.value_end - f.value_start == 12 and ascii_ieq(p + f.value_start, b"100-continue", 12):
                h.expect_continue = True
        elif f.kind == H_X_REQUEST_ID:
            if h.request_id_field < 0:
                h.request_id_field = i
        elif f.kind == H_X_FORWARDED_FOR:
            h.xff_field = i
    if h.host_field >= 0:
        f = &h.fields[h.host_field]
        if h.absolute_form:
            ha, hb = h.authority_start, h.authority_end
            if f.value_end - f.value_start != hb - ha or not _ieq2(p + f.value_start, p + ha, hb - ha):
                return h.fail(400, "Host differs from the absolute-form authority")
            hs, he = h.host_start, h.host_end
            if _authority(h, p, f.value_start, f.value_end) < 0:
                return -1
            h.host_start, h.host_end = hs, he
        else:
            if _authority(h, p, f.value_start, f.value_end) < 0:
                return -1
            h.authority_start = f.value_start
            h.authority_end = f.value_end
    elif h.version == 11:
        return h.fail(400, "missing Host")
    if has_te:
        if h.content_length >= 0:
            return h.fail(400, "both Content-Length and Transfer-Encoding")
        if h.version == 10:
            return h.fail(400, "Transfer-Encoding in an HTTP/1.0 request")
        if _transfer_codings(h, p, 400, &chunked, &other) < 0:
            return -1
        if other:
            return h.fail(501, "transfer coding other than chunked")
        h.framing = BODY_CHUNKED
    elif h.content_length > 0:
        h.framing = BODY_LENGTH
    h.keep_alive = (not close) if h.version == 11 else (keep and not close)
    h.upgrade = has_upgrade and h.connection_upgrade
    if h.has_connection_names:
        _mark_connection_names(h, p)
    h.idempotent = _idempotent(p + h.start, h.method_end - h.start)
    return 0


cdef bint _idempotent(const char* m, Py_ssize_t n) noexcept:
    if n == 3:
        return memcmp(m, b"GET", 3) == 0 or memcmp(m, b"PUT", 3) == 0
    if n == 4:
        return memcmp(m, b"HEAD", 4) == 0
    if n == 5:
        return memcmp(m, b"TRACE", 5) == 0
    if n == 6:
        return memcmp(m, b"DELETE", 6) == 0
    if n == 7:
        return memcmp(m, b"OPTIONS", 7) == 0
    return False


cdef Py_ssize_t parse_request(RequestHead h, object buf, Py_ssize_t max_bytes, int max_headers) except -2:
    """Parse (more of) a request head from buf[0:]. >0: head length; 0: incomplete; -1: refused."""
    cdef const char* p
    cdef Py_ssize_t n
    cdef int r
    _buffer(buf, &p, &n)
    r = _scan(h, p, n, max_bytes, max_headers, 400, True)
    if r <= 0:
        return r
    if _request_semantics(h, p) < 0:
        return -1
    h.raw = buf if type(buf) is bytes else PyBytes_FromStringAndSize(p, h.length)
    return h.length


cdef Py_ssize_t parse_response(ResponseHead h, object buf, Py_ssize_t max_bytes, int max_headers,
                               bint head_request) except -2:
    """Parse (more of) a response head. Framing per RFC 9112 §6.3; refusals are 502."""
    cdef const char* p
    cdef Py_ssize_t n
    cdef int r, i
    cdef Field* f
    cdef bint close = False, keep = False, chunked = False, other = False, has_te = False
    cdef long long cl
    _buffer(buf, &p, &n)
    r = _scan(h, p, n, max_bytes, max_headers, 502, False)
    if r <= 0:
        return r
    for i in range(h.nfields):
        f = &h.fields[i]
        if f.kind == H_CONTENT_LENGTH:
            if h.content_length >= 0:
                return h.fail(502, "duplicate Content-Length in response")
            cl = _parse_length(p, f.value_start, f.value_end)
            if cl < 0:
                return h.fail(502, "malformed Content-Length in response")
            h.content_length = cl
        elif f.kind == H_TRANSFER_ENCODING:
            has_te = True
        elif f.kind == H_CONNECTION:
            if _connection_tokens(h, p, f, &close, &keep):
                h.has_connection_names = True
        elif f.kind == H_X_REQUEST_ID:
            if h.request_id_field < 0:
                h.request_id_field = i
    if has_te:
        if h.content_length >= 0:
            return h.fail(502, "both Content-Length and Transfer-Encoding in response")
        if _transfer_codings(h, p, 502, &chunked, &other) < 0:
            return -1
        if other:
            return h.fail(502, "response transfer coding other than chunked")
    if head_request or h.status < 200 or h.status == 204 or h.status == 304:
        h.framing = BODY_NONE
    elif has_te:
        h.framing = BODY_CHUNKED
    elif h.content_length >= 0:
        h.framing = BODY_LENGTH if h.content_length > 0 else BODY_NONE
    else:
        h.framing = BODY_UNTIL_CLOSE
    # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing: close after
    h.keep_alive = ((not close) if h.version == 11 else (keep and not close and not has_te)) \
        and h.framing != BODY_UNTIL_CLOSE
    if h.has_connection_names:
        _mark_connection_names(h, p)
    h.raw = buf if type(buf) is bytes else PyBytes_FromStringAndSize(p, h.length)
    return h.length


include "http1_chunked.pxi"


# -- Python entry points (tests, benchmarks, tools) -------------------------------------

def parse_request_head(data, Py_ssize_t max_header_bytes=65536, int max_headers=100):
    """Parse a complete request head: a RequestHead, None if incomplete, or ParseError."""
    cdef RequestHead h = RequestHead()
    cdef Py_ssize_t r = parse_request(h, data, max_header_bytes, max_headers)
    if r < 0:
        raise ParseError(h.error_status, h.error_detail)
    return h if r > 0 else None


def parse_response_head(data, bint head_request=False, Py_ssize_t max_header_bytes=65536,
                        int max_headers=100):
    """Parse a complete response head: a ResponseHead, None if incomplete, or ParseError."""
    cdef ResponseHead h = ResponseHead()
    cdef Py_ssize_t r = parse_response(h, data, max_header_bytes, max_headers, head_request)
    if r < 0:
        raise ParseError(h.error_status, h.error_detail)
    return h if r > 0 else None


class IncrementalRequestParser:
    """Feeds a request head in pieces, as the proxy does (for tests)."""

    def __init__(self, max_header_bytes=65536, max_headers=100):
        self.head = RequestHead()
        self.buf = bytearray()
        self.limits = (max_header_bytes, max_headers)

    def feed(self, bytes data):
        self.buf += data
        r = parse_request(self.head, self.buf, self.limits[0], self.limits[1])
        if r < 0:
            raise ParseError(self.head.error_status, self.head.error_detail)
        return self.head if r > 0 else None
