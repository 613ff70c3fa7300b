# Included by proxy.pyx: metrics in shared memory and trace context (docs/observability.md).
#
# Metrics. Every series is one slot of a table in an anonymous shared mapping made before
# the workers fork, so every figure covers every worker and a restarted worker goes on
# counting where its predecessor stopped. A slot is claimed by the FNV-1a hash of its key
# (the metric name and label values joined by \x1f) with a compare-and-swap, found again
# the same way by any worker, and updated with relaxed atomic adds: the request path never
# takes a lock, and a scrape only reads. The request path finds its slots through small
# per-listener caches, so it hashes nothing once warm.
#
# Trace context. The request head's trace headers are classified by the parser; here they
# are validated (W3C Trace Context, B3 multi and single) and the proxy's own context is
# written upstream. fastproxy.observe.tracing is the pure-Python reference it is tested
# against.

from libc.stdint cimport uint32_t

cdef extern from *:
    """
    static inline void fp_addu(uint64_t *p, uint64_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
    static inline uint64_t fp_loadu(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void fp_storeu(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    static inline uint32_t fp_load32(uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void fp_store32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int fp_cas64(uint64_t *p, uint64_t expected, uint64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    """
    void fp_addu(uint64_t *p, uint64_t v) nogil
    uint64_t fp_loadu(uint64_t *p) nogil
    void fp_storeu(uint64_t *p, uint64_t v) nogil
    uint32_t fp_load32(uint32_t *p) nogil
    void fp_store32(uint32_t *p, uint32_t v) nogil
    bint fp_cas64(uint64_t *p, uint64_t expected, uint64_t desired) nogil

from posix.time cimport CLOCK_REALTIME

cdef enum:
    METRIC_SLOTS = 4096
    METRIC_KEY = 192          # the longest key: a histogram's name and two 64-character names
    METRIC_VALUES = 32
    MAX_STATUS = 600

cdef struct MetricSlot:
    uint64_t hash            # 0: free
    uint32_t ready           # 1 once key is written (release): a scrape reads only ready slots
    uint32_t key_len
    char key[METRIC_KEY]
    uint64_t v[METRIC_VALUES]

METRICS_BYTES = METRIC_SLOTS * sizeof(MetricSlot)

# Histogram bucket upper bounds (seconds); counts are kept per bucket and summed at scrape.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)
OVERHEAD_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                    0.005, 0.01, 0.025, 0.05, 0.1)
cdef int N_DURATION = len(DURATION_BUCKETS)
cdef int N_OVERHEAD = len(OVERHEAD_BUCKETS)
cdef int64_t DURATION_NS[16]
cdef int64_t OVERHEAD_NS[16]
for _i, _b in enumerate(DURATION_BUCKETS):
    DURATION_NS[_i] = <int64_t>(_b * 1e9 + 0.5)
for _i, _b in enumerate(OVERHEAD_BUCKETS):
    OVERHEAD_NS[_i] = <int64_t>(_b * 1e9 + 0.5)


cdef inline int64_t monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline double unix_time() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline void hist_observe(MetricSlot* s, const int64_t* bounds, int nb, int64_t ns) noexcept nogil:
    """Histogram slot layout: v[0..nb] bucket counts (v[nb] is +Inf), v[nb+1] the sum in
    nanoseconds. The count is the buckets' total (so a scrape is always consistent)."""
    cdef int i = 0
    if ns < 0:
        ns = 0
    while i < nb and ns > bounds[i]:
        i += 1
    fp_addu(&s.v[i], 1)
    fp_addu(&s.v[nb + 1], <uint64_t>ns)


cdef class MetricTable:
    """The shared table of metric series (see the top of this file)."""
    cdef object buffer
    cdef unsigned char[::1] view
    cdef MetricSlot* slots
    cdef readonly bint full      # a series found no free slot (it is then not counted)

    def __init__(self, buffer=None):
        if buffer is None:
            buffer = bytearray(METRICS_BYTES)
        if len(buffer) < METRICS_BYTES:
            raise ValueError(f"the metric table needs {METRICS_BYTES} bytes")
        self.buffer = buffer
        self.view = buffer
        self.slots = <MetricSlot*>&self.view[0]

    cdef MetricSlot* slot(self, bytes key) except? NULL:
        """The slot of a series, claimed on first use; NULL when the table is full."""
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(key)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(key), i
        cdef uint64_t h = 14695981039346656037ULL
        cdef MetricSlot* s
        cdef uint64_t found
        for i in range(n):
            h = (h ^ p[i]) * 1099511628211ULL
        if h == 0:
            h = 1
        for i in range(METRIC_SLOTS):
            s = &self.slots[(h + <uint64_t>i) % METRIC_SLOTS]
            found = fp_loadu(&s.hash)
            if found == 0 and fp_cas64(&s.hash, 0, h):
                n = n if n < METRIC_KEY else METRIC_KEY
                memcpy(s.key, p, n)
                s.key_len = <uint32_t>n
                fp_store32(&s.ready, 1)
                return s
            if fp_loadu(&s.hash) == h:
                return s
        if not self.full:
            self.full = True
            log.warning("metrics: the table of %d series is full; new series are not counted",
                        METRIC_SLOTS)
        return NULL

    def add(self, str key, int index=0, uint64_t value=1):
        """Add to one value of a series (counters kept by Python: reloads, drops...)."""
        cdef MetricSlot* s = self.slot(key.encode())
        if s is not NULL and 0 <= index < METRIC_VALUES:
            fp_addu(&s.v[index], value)

    def set(self, str key, uint64_t value):
        """Set a gauge series (one per worker: each worker publishes its own)."""
        cdef MetricSlot* s = self.slot(key.encode())
        if s is not NULL:
            fp_storeu(&s.v[0], value)

    def series(self):
        """Every series: [(key, (values...))], read without stopping any writer."""
        cdef int i, j
        cdef MetricSlot* s
        out = []
        for i in range(METRIC_SLOTS):
            s = &self.slots[i]
            if fp_load32(&s.ready) != 1:
                continue
            out.append((s.key[:s.key_len].decode("utf-8", "replace"),
                        tuple(fp_loadu(&s.v[j]) for j in range(METRIC_VALUES))))
        return out


@cython.final
cdef class PairStats:
    """One (listener, cluster) pair's series, found once and kept by its ListenerState."""
    cdef MetricSlot* duration
    cdef MetricSlot* codes[MAX_STATUS]
    cdef bytes prefix          # b"fastproxy_requests_total\x1fLISTENER\x1fCLUSTER\x1f"
    cdef MetricSlot* grpc_codes[18]   # by grpc-status; [17]: none came
    cdef bytes grpc_prefix

    cdef MetricSlot* code(self, MetricTable table, int status) except? NULL:
        if status < 0 or status >= MAX_STATUS:
            status = 0
        if self.codes[status] is NULL:
            self.codes[status] = table.slot(self.prefix + str(status).encode())
        return self.codes[status]

    cdef MetricSlot* grpc_code(self, MetricTable table, int status) except? NULL:
        if status < 0 or status > 16:
            status = 17
        if self.grpc_codes[status] is NULL:
            self.grpc_codes[status] = table.slot(
                self.grpc_prefix + (b"none" if status == 17 else str(status).encode()))
        return self.grpc_codes[status]


# -- trace context -------------------------------------------------------------------------

cdef enum:
    TRACE_NONE = 0
    TRACE_W3C = 1
    TRACE_B3 = 2
    TRACE_B3_SINGLE = 3

cdef struct TraceContext:
    uint64_t hi, lo           # the trace id; 0, 0 when no valid context came
    uint64_t parent           # the incoming span id (our parent); 0 without a context
    int sampled               # -1: no decision came; 0; 1
    int source                # TRACE_*
    int tracestate_bytes      # total bytes of the tracestate values (W3C only)
    bint b3_single            # a single `b3` header came: answer in the same form


cdef inline int _hexdigit(unsigned char c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    return -1


cdef bint _hex(const char* p, Py_ssize_t n, uint64_t* out) noexcept nogil:
    """n (<= 16) lowercase hex digits into out; False on any other character."""
    cdef uint64_t v = 0
    cdef int d
    cdef Py_ssize_t i
    for i in range(n):
        d = _hexdigit(<unsigned char>p[i])
        if d < 0:
            return False
        v = (v << 4) | <uint64_t>d
    out[0] = v
    return True


cdef bint _trace_id(const char* p, Py_ssize_t n, TraceContext* c) noexcept nogil:
    """A 32- (or, for B3, 16-) digit trace id, not all zero."""
    if n == 32:
        if not (_hex(p, 16, &c.hi) and _hex(p + 16, 16, &c.lo)):
            return False
    elif n == 16:
        c.hi = 0
        if not _hex(p, 16, &c.lo):
            return False
    else:
        return False
    return c.hi != 0 or c.lo != 0


cdef bint parse_traceparent(const char* p, Py_ssize_t n, TraceContext* c) noexcept nogil:
    """W3C Trace Context `traceparent`: version-traceid-parentid-flags."""
    cdef uint64_t version, flags
    if n < 55 or not _hex(p, 2, &version) or version == 255:
        return False
    if (version == 0 and n != 55) or (n > 55 and p[55] != b'-'):
        return False
    if p[2] != b'-' or p[35] != b'-' or p[52] != b'-':
        return False
    if not _trace_id(p + 3, 32, c) or not _hex(p + 36, 16, &c.parent) or c.parent == 0:
        return False
    if not _hex(p + 53, 2, &flags):
        return False
    c.sampled = <int>(flags & 1)
    c.source = TRACE_W3C
    return True


cdef int _b3_sampling(const char* p, Py_ssize_t n) noexcept nogil:
    """The sampling state of single `b3`: 1, 0 ("d", debug, is sampled), -2 malformed."""
    if n == 1:
        if p[0] == b'1' or p[0] == b'd':
            return 1
        if p[0] == b'0':
            return 0
    return -2


cdef int _b3_sampled_header(const char* p, Py_ssize_t n) noexcept nogil:
    """`x-b3-sampled`: 1, 0 (also the legacy "true"/"false"), -2 malformed."""
    if n == 1 and (p[0] == b'1' or p[0] == b'0'):
        return p[0] - 48
    if n == 4 and memcmp(p, b"true", 4) == 0:
        return 1
    if n == 5 and memcmp(p, b"false", 5) == 0:
        return 0
    return -2


cdef bint parse_b3_single(const char* p, Py_ssize_t n, TraceContext* c) noexcept nogil:
    """`b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]`, or a bare sampling state
    (a decision without a context: True with source left TRACE_NONE)."""
    cdef Py_ssize_t t
    cdef int s
    cdef uint64_t grandparent
    if n == 1:
        s = _b3_sampling(p, 1)
        if s == -2:
            return False
        c.sampled = s
        return True
    t = 32 if n >= 49 and p[32] == b'-' else 16
    if n < t + 17 or p[t] != b'-' or not _trace_id(p, t, c):
        return False
    if not _hex(p + t + 1, 16, &c.parent) or c.parent == 0:
        return False
    p += t + 17
    n -= t + 17
    if n == 0:
        c.source = TRACE_B3_SINGLE
        return True
    if n < 2 or p[0] != b'-':
        return False
    s = _b3_sampling(p + 1, 1)
    if s == -2:
        return False
    if n != 2:   # then only "-{parentspanid}"
        if n != 19 or p[2] != b'-' or not _hex(p + 3, 16, &grandparent) or grandparent == 0:
            return False
    c.sampled = s
    c.source = TRACE_B3_SINGLE
    return True


cdef enum:
    PROPAGATE_W3C = 1
    PROPAGATE_B3 = 2
    TRACESTATE_LIMIT = 512      # bytes of tracestate forwarded; a longer one is dropped


cdef void read_trace_context(RequestHead h, int families, TraceContext* c) noexcept:
    """The incoming context of the families propagated (c.source TRACE_NONE when none is
    valid). A valid traceparent wins over B3; single `b3` over the x-b3-* headers."""
    cdef const char* p = PyBytes_AS_STRING(h.raw)
    cdef Field* f
    cdef int i, k, tp = -1, single = -1, tid = -1, sid = -1, smp = -1, flags = -1
    cdef bint repeated_tp = False, repeated_single = False, repeated_multi = False
    cdef int state = 0
    cdef int decision = -1
    cdef TraceContext t
    c.hi = c.lo = c.parent = 0
    c.sampled = -1
    c.source = TRACE_NONE
    c.tracestate_bytes = 0
    c.b3_single = False
    for i in range(h.nfields):
        f = &h.fields[i]
        k = f.kind
        if k < H_TRACEPARENT:
            continue
        if k == H_TRACEPARENT:
            repeated_tp = tp >= 0
            tp = i
        elif k == H_TRACESTATE and f.value_end > f.value_start:
            # the values joined with ","
            c.tracestate_bytes += <int>(f.value_end - f.value_start) + (c.tracestate_bytes > 0)
        elif k == H_B3:
            repeated_single = single >= 0
            single = i
        elif k == H_B3_TRACEID:
            repeated_multi |= tid >= 0
            tid = i
        elif k == H_B3_SPANID:
            repeated_multi |= sid >= 0
            sid = i
        elif k == H_B3_SAMPLED:
            repeated_multi |= smp >= 0
            smp = i
        elif k == H_B3_FLAGS:
            repeated_multi |= flags >= 0
            flags = i
    c.b3_single = single >= 0
    if families & PROPAGATE_W3C and tp >= 0 and not repeated_tp:
        f = &h.fields[tp]
        if parse_traceparent(p + f.value_start, f.value_end - f.value_start, c):
            return
        c.hi = c.lo = c.parent = 0
        c.sampled = -1
    if not families & PROPAGATE_B3:
        return
    if single >= 0 and not repeated_single:
        f = &h.fields[single]
        t.hi = t.lo = t.parent = 0
        t.sampled = -1
        t.source = TRACE_NONE
        if parse_b3_single(p + f.value_start, f.value_end - f.value_start, &t):
            if t.source != TRACE_NONE:
                c[0] = t
                c.tracestate_bytes = 0
                c.b3_single = True
                return
            decision = t.sampled
    if repeated_multi:
        c.sampled = decision
        return
    if smp >= 0:
        f = &h.fields[smp]
        state = _b3_sampled_header(p + f.value_start, f.value_end - f.value_start)
        if state != -2:
            decision = state
    if flags >= 0:
        f = &h.fields[flags]
        if f.value_end - f.value_start == 1 and p[f.value_start] == b'1':
            decision = 1    # debug
    if tid >= 0 and sid >= 0:
        f = &h.fields[tid]
        if _trace_id(p + f.value_start, f.value_end - f.value_start, c):
            f = &h.fields[sid]
            if f.value_end - f.value_start == 16 and _hex(p + f.value_start, 16, &c.parent) \
                    and c.parent != 0:
                c.source = TRACE_B3
                c.sampled = decision
                c.tracestate_bytes = 0
                return
        c.hi = c.lo = c.parent = 0
    c.sampled = decision


cdef inline char* _put(char* o, const char* s, Py_ssize_t n) noexcept:
    memcpy(o, s, n)
    return o + n


cdef inline char* _put_hex(char* o, uint64_t v, int digits) noexcept:
    cdef int i
    for i in range(digits - 1, -1, -1):
        o[i] = HEX[v & 15]
        v >>= 4
    return o + digits


cdef char* _put_trace(char* o, uint64_t hi, uint64_t lo) noexcept:
    return _put_hex(_put_hex(o, hi, 16), lo, 16)


cdef bytes trace_lines(int families, bint b3_single, uint64_t hi, uint64_t lo, uint64_t span,
                       uint64_t parent, bint sampled):
    """The trace headers sent upstream: our span as the parent of the next hop (the same
    set as fastproxy.observe.tracing.outgoing)."""
    cdef char buf[320]
    cdef char* o = buf
    cdef char flag = b'1' if sampled else b'0'
    if families & PROPAGATE_W3C:
        o = _put(o, b"traceparent: 00-", 16)
        o = _put_trace(o, hi, lo)
        o[0] = b'-'
        o = _put_hex(o + 1, span, 16)
        o = _put(o, b"-0", 2)
        o[0] = flag
        o = _put(o + 1, b"\r\n", 2)
    if families & PROPAGATE_B3:
        if b3_single:
            o = _put(o, b"b3: ", 4)
            o = _put_trace(o, hi, lo)
            o[0] = b'-'
            o = _put_hex(o + 1, span, 16)
            o[0] = b'-'
            o[1] = flag
            o = _put(o + 2, b"\r\n", 2)
        else:
            o = _put(o, b"x-b3-traceid: ", 14)
            o = _put_trace(o, hi, lo)
            o = _put(o, b"\r\nx-b3-spanid: ", 15)
            o = _put_hex(o, span, 16)
            o = _put(o, b"\r\nx-b3-sampled: ", 16)
            o[0] = flag
            o = _put(o + 1, b"\r\n", 2)
            if parent:
                o = _put(o, b"x-b3-parentspanid: ", 19)
                o = _put_hex(o, parent, 16)
                o = _put(o, b"\r\n", 2)
    return PyBytes_FromStringAndSize(buf, o - buf)


def trace_context(bytes raw_head, propagate=("w3c", "b3")):
    """The incoming context of a request head as (trace_id, parent_id, sampled, source) —
    sampled -1/0/1, source "w3c"/"b3"/"b3single"/None — for tests against the reference
    in fastproxy.observe.tracing."""
    cdef RequestHead h = RequestHead()
    cdef TraceContext c
    cdef int families = (PROPAGATE_W3C if "w3c" in propagate else 0) | \
        (PROPAGATE_B3 if "b3" in propagate else 0)
    if parse_request(h, raw_head, 1 << 20, 1000) <= 0:
        raise ValueError(h.error_detail or "incomplete request head")
    read_trace_context(h, families, &c)
    if c.source == TRACE_NONE:
        return (None, None, c.sampled, None)
    return (f"{c.hi:016x}{c.lo:016x}", f"{c.parent:016x}", c.sampled,
            ("w3c", "b3", "b3single")[c.source - 1])
