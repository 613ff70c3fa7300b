"""The forwarding core: HTTP/1.1 client connections, upstream pools and the exchange between them.

Owns everything a proxied request touches: accepting client connections (`Downstream`),
parsing request heads, routing, pooled upstream connections (`Upstream`, `Endpoint`),
streaming bodies both ways with backpressure, timeouts, and the proxy's own error
responses. It never calls into Python per request unless a feature asks for it; the
Python layer configures a `Worker` and hands it a compiled configuration.

The phases of one request, in order (as Pingora lists them):
  1. Downstream.process       parse the head (http1.parse_request), refuse bad input
  2. Downstream.start_exchange  route; no match -> 404 no_route
  3. Exchange.build_upstream_head  copy untouched header lines, rewrite hop-by-hop,
                               x-forwarded-*, x-request-id
  4. Exchange.request_body     validate and queue the body bytes that came with the head
  5. Exchange.connect          an idle pooled connection, else a new one (503 on failure)
  6. Exchange.upstream_data    parse the response head, rewrite it, stream the body
  7. Exchange.finish           pool the upstream connection, hand the client connection
                               back to its next (pipelined) request

An `Exchange` is one request/response; it talks to its client connection only through a
few methods (write, send_error, exchange_done), so HTTP/2 streams can drive it later.
"""
import asyncio
import hashlib
import logging
import os
from collections import deque

from fastproxy._core.tls import TLSContext, TLSError, TLSLink

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.bytearray cimport PyByteArray_AS_STRING
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memcmp
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from fastproxy._core.http1 cimport (
    RequestHead, ResponseHead, ChunkedReader, Field, parse_request, parse_response, ascii_ieq,
    H_OTHER, H_HOST, H_CONTENT_LENGTH, H_TRANSFER_ENCODING, H_CONNECTION, H_KEEP_ALIVE,
    H_PROXY_CONNECTION, H_TE, H_UPGRADE, H_EXPECT, H_X_FORWARDED_FOR, H_X_FORWARDED_PROTO,
    H_X_REQUEST_ID, H_XFCC, H_TRACEPARENT, H_TRACESTATE, H_B3, H_B3_TRACEID, H_B3_SPANID,
    H_B3_PARENTSPANID, H_B3_SAMPLED, H_B3_FLAGS,
    BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_UNTIL_CLOSE,
)

cdef enum:
    REPLAY_LIMIT = 65536       # request bytes kept for a resend (SPEC §3, §5)
    QUEUE_LIMIT = 65536        # bytes held for an upstream that is still connecting
    PIPELINE_LIMIT = 65536     # pipelined bytes held while a request is in flight
    MAX_RESPONSE_HEAD = 65536
    MAX_RESPONSE_FIELDS = 256
    IDLE_PER_ENDPOINT = 1024
    MAX_SPANS = 64
    RECORD_LIMIT = 16384       # records waiting for the drain timer; beyond: dropped, counted

cdef double WIND_DOWN_GRACE = 0.5   # seconds an idle connection stays open once told to close

# client connection states
cdef enum:
    S_IDLE = 0       # waiting for the first byte of a request head
    S_HEAD = 1       # part of a head received
    S_EXCHANGE = 2   # a request is being proxied
    S_TUNNEL = 3     # an Upgrade tunnel: bytes flow both ways
    S_CLOSED = 4

# why a client connection is not being read
cdef enum:
    P_UPSTREAM = 1   # the upstream's write buffer is full
    P_QUEUE = 2      # the upstream is still connecting and enough is queued
    P_PIPELINE = 4   # enough pipelined requests are waiting
    P_ADMISSION = 8  # over max_connections: waits until a slot frees

# why a worker stopped accepting connections (Worker.accept_paused bits)
cdef enum:
    A_WAITING = 1      # as many connections wait for a slot as max_connections
    A_DESCRIPTORS = 2  # file descriptors are running short

cdef double PAUSE_LOG_EVERY = 10.0   # seconds between warnings that accepting stopped

cdef dict REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 400: b"Bad Request",
    403: b"Forbidden", 404: b"Not Found", 408: b"Request Timeout",
    431: b"Request Header Fields Too Large", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout",
}

log = logging.getLogger("fastproxy")

cdef enum:
    TLS_OFF = 0
    TLS_SERVER = 1   # "tls": server-authenticated TLS
    TLS_MUTUAL = 2   # "mtls": both sides present SPIFFE certificates

cdef dict TLS_MODES = {"off": TLS_OFF, "tls": TLS_SERVER, "mtls": TLS_MUTUAL}

cdef enum:
    RETRY_CONNECT = 1
    RETRY_RESET = 2
    RETRY_5XX = 4
    RETRY_GATEWAY = 8

cdef dict RETRY_ON = {"connect-failure": RETRY_CONNECT, "reset": RETRY_RESET, "5xx": RETRY_5XX,
                      "gateway-error": RETRY_GATEWAY}

cdef enum:
    BALANCE_ROUND_ROBIN = 0
    BALANCE_LEAST_REQUEST = 1
    BALANCE_RANDOM = 2

cdef dict BALANCES = {"round_robin": BALANCE_ROUND_ROBIN, "least_request": BALANCE_LEAST_REQUEST,
                      "random": BALANCE_RANDOM}

cdef dict PARSE_REASONS = {400: "bad_request", 431: "header_too_large", 501: "not_implemented"}

cdef bytes CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
cdef bytes CRLF = b"\r\n"


cdef inline double monotonic() noexcept:
    """The event loop's clock (libuv reads CLOCK_MONOTONIC too), without a Python call."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef char* HEX = b"0123456789abcdef"


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


include "resilience.pxi"
include "telemetry.pxi"
include "accesslog.pxi"


# -- compiled configuration ---------------------------------------------------------------

cdef class Route:
    """One route of a listener, compiled for matching against parsed offsets."""
    cdef readonly str name
    cdef bytes json_name       # the name as a JSON string, for the access log
    cdef bytes host            # exact host, lowercase
    cdef bytes host_suffix     # ".example.com" for "*.example.com"
    cdef bytes prefix
    cdef bytes path
    cdef bytes method
    cdef tuple headers         # ((lowercase name, value), ...)
    cdef readonly Cluster cluster   # the one cluster, or None with a split
    cdef readonly Split split
    cdef readonly double timeout
    cdef int retries
    cdef int retry_on          # RETRY_* bits
    cdef RetryBudget budget    # the route's own, or None: its cluster's
    cdef tuple allow           # SPIFFE id patterns that may use this route, or None

    cdef bint matches(self, RequestHead h, const char* p):
        cdef Py_ssize_t n
        if self.host is not None:
            n = h.host_end - h.host_start
            if n != PyBytes_GET_SIZE(self.host) or not ascii_ieq(p + h.host_start, self.host, n):
                return False
        elif self.host_suffix is not None:
            n = PyBytes_GET_SIZE(self.host_suffix)
            if h.host_end - h.host_start <= n or not ascii_ieq(p + h.host_end - n, self.host_suffix, n):
                return False
        if self.path is not None:
            n = PyBytes_GET_SIZE(self.path)
            if h.path_end - h.path_start != n or memcmp(p + h.path_start, <char*>self.path, n) != 0:
                return False
        elif self.prefix is not None:
            n = PyBytes_GET_SIZE(self.prefix)
            if h.path_end - h.path_start < n or memcmp(p + h.path_start, <char*>self.prefix, n) != 0:
                return False
        if self.method is not None:
            n = PyBytes_GET_SIZE(self.method)
            if h.method_end - h.start != n or memcmp(p + h.start, <char*>self.method, n) != 0:
                return False
        if self.headers:
            for name, value in self.headers:
                if h.get(name) != value:
                    return False
        return True


cdef class ListenerState:
    """A listener's compiled routes and limits; replaced whole on reload."""
    cdef readonly str name
    cdef bytes json_name        # the name as a JSON string, for the access log
    cdef readonly list routes
    cdef Py_ssize_t max_header_bytes
    cdef int max_headers
    cdef double header_timeout
    cdef double idle_timeout
    cdef bytes proto_line       # b"x-forwarded-proto: http\r\n"
    cdef readonly int tls_mode
    cdef tuple allow            # SPIFFE id patterns of peers that may connect (mtls)
    cdef bint allow_all
    cdef bytes xfcc_prefix      # b"x-forwarded-client-cert: By=<own id>;URI="
    cdef readonly str direction # "inbound" | "outbound"
    cdef dict pairs             # cluster name ("" without one) -> PairStats
    cdef MetricSlot* overhead

    cdef PairStats pair(self, MetricTable table, str cluster):
        """This listener's series for a cluster, found once per configuration."""
        cdef PairStats ps = self.pairs.get(cluster)
        cdef bytes labels
        if ps is None:
            labels = (self.name + "\x1f" + cluster).encode()
            ps = PairStats()
            ps.prefix = b"fastproxy_requests_total\x1f" + labels + b"\x1f"
            ps.duration = table.slot(b"fastproxy_request_duration_seconds\x1f" + labels)
            self.pairs[cluster] = ps
            if self.overhead is NULL:
                self.overhead = table.slot(b"fastproxy_proxy_overhead_seconds\x1f" + self.name.encode())
        return ps

    def match(self, RequestHead h):
        """The name of the route a parsed request takes, or None (tests, benchmarks)."""
        cdef Route r = self.route_for(h)
        return None if r is None else r.name

    cdef Route route_for(self, RequestHead h):
        cdef const char* p = PyBytes_AS_STRING(h.raw)
        cdef Route r
        for r in self.routes:
            if r.matches(h, p):
                return r
        return None


cdef void count_request(MetricTable table, ListenerState ls, str cluster, int status,
                        int64_t duration_ns, int64_t overhead_ns):
    """One request in fastproxy_requests_total and the two histograms (SPEC §8)."""
    cdef PairStats ps = ls.pair(table, cluster)
    cdef MetricSlot* slot = ps.code(table, status)
    if slot is not NULL:
        fp_addu(&slot.v[0], 1)
    if ps.duration is not NULL:
        hist_observe(ps.duration, DURATION_NS, N_DURATION, duration_ns)
    if ls.overhead is not NULL:
        hist_observe(ls.overhead, OVERHEAD_NS, N_OVERHEAD, overhead_ns)


@cython.final
cdef class Port:
    """One listening socket of a listener. It closes when a reload removes or moves its
    listener: its connections then finish what they carry and close, as in a drain."""
    cdef readonly str listener
    cdef public bint closing
    cdef MetricSlot* tls_failures    # NULL unless the listener speaks TLS
    cdef MetricSlot* tls_new         # handshakes, full and resumed (NULL likewise)
    cdef MetricSlot* tls_resumed

    def __init__(self, str listener):
        self.listener = listener


cdef class Endpoint:
    """One upstream address and its pool of idle keep-alive connections."""
    cdef readonly str host
    cdef readonly int port
    cdef readonly str label          # "host:port", "[v6]:port"
    cdef bytes json_label            # the label as a JSON string, for the access log
    cdef list idle
    cdef readonly int active
    cdef public double idle_timeout
    cdef readonly int consecutive_failures
    cdef readonly int ejections
    cdef int64_t ejected_until       # monotonic ms; 0 when not ejected
    cdef public object tls_session   # tls/mtls clusters: the session the next connection offers

    def __init__(self, str host, int port):
        self.host = host
        self.port = port
        self.label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.json_label = json_quoted(self.label)
        self.idle = []
        self.idle_timeout = 60.0

    @property
    def idle_count(self):
        return len(self.idle)

    def status(self):
        """This endpoint for the admin API's /clusters."""
        import datetime, time
        address = self.label
        left = (self.ejected_until - monotonic_ms()) / 1000.0
        until = None
        if left > 0:
            until = datetime.datetime.fromtimestamp(time.time() + left, datetime.timezone.utc) \
                .isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"address": address, "healthy": until is None, "ejected_until": until,
                "ejections": self.ejections, "active": self.active, "idle": len(self.idle)}

    cdef Upstream take_idle(self):
        cdef Upstream up
        while self.idle:
            up = self.idle.pop()
            if not up.closed:
                up.pooled = False
                return up
        return None

    cdef void release(self, Upstream up, double now):
        if len(self.idle) >= IDLE_PER_ENDPOINT:
            up.close()
            return
        up.pooled = True
        up.set_idle_deadline(now + self.idle_timeout)
        self.idle.append(up)

    cdef void forget(self, Upstream up):
        if up.pooled:
            up.pooled = False
            try:
                self.idle.remove(up)
            except ValueError:
                pass

    def close_idle(self):
        cdef Upstream up
        for up in list(self.idle):
            up.close()
        self.idle.clear()


cdef class Cluster:
    """Endpoints of one upstream service and how to pick among them."""
    cdef readonly str name
    cdef bytes json_name             # the name as a JSON string, for the access log
    cdef readonly list endpoints
    cdef Py_ssize_t rr
    cdef readonly double connect_timeout
    cdef readonly double idle_timeout
    cdef readonly tuple addresses    # as configured: ((host, port, is_ip), ...)
    cdef readonly bytes default_host
    cdef readonly int tls_mode
    cdef readonly str peer           # the SPIFFE id pattern an mtls server must present
    cdef readonly str sni            # server name for tls clusters (a configured DNS name)
    cdef readonly Breaker breaker    # None unless [cluster.X.circuit_breaker]
    cdef int balance                 # BALANCE_*
    cdef uint64_t rng                # xorshift state for random and least_request
    cdef int outlier_failures        # 0: no outlier detection
    cdef int64_t eject_ms
    cdef double max_ejected
    cdef int max_connections         # upstream connections in use at once (per worker)
    cdef int max_pending             # requests waiting for one; beyond: 503 overloaded
    cdef readonly int in_flight
    cdef list waiting                # Exchange, first come first served
    cdef RetryBudget budget          # shared by the routes that set none of their own

    def __init__(self, str name):
        self.name = name
        self.json_name = json_quoted(name)
        self.endpoints = []
        self.waiting = []

    def set_endpoints(self, list addresses):
        """Replace the resolved endpoint list, keeping pools of addresses that remain."""
        cdef Endpoint ep
        old = {(ep.host, ep.port): ep for ep in self.endpoints}
        new = []
        for host, port in addresses:
            ep = old.pop((host, port), None)
            if ep is None:
                ep = Endpoint(host, port)
            ep.idle_timeout = self.idle_timeout
            new.append(ep)
        for ep in old.values():
            ep.close_idle()
        self.endpoints = new

    cdef inline uint64_t next_random(self) noexcept:
        cdef uint64_t x = self.rng
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        self.rng = x
        return x

    cdef inline bint usable(self, Endpoint ep, set exclude, int64_t now):
        return ep.ejected_until <= now and (exclude is None or ep not in exclude)

    cdef bint has_healthy(self, int64_t now):
        cdef Endpoint ep
        for ep in self.endpoints:
            if ep.ejected_until <= now:
                return True
        return False

    cdef Endpoint pick(self, set exclude, int64_t now):
        """The endpoint for a new request: balance policy, ejected and excluded ones skipped."""
        cdef Py_ssize_t n = len(self.endpoints), i, start
        cdef Endpoint ep, other
        if n == 0:
            return None
        if self.balance == BALANCE_ROUND_ROBIN:
            for i in range(n):
                self.rr += 1
                if self.rr >= n:
                    self.rr = 0
                ep = self.endpoints[self.rr]
                if self.usable(ep, exclude, now):
                    return ep
            return None
        start = self.next_random() % n
        ep = None
        for i in range(n):
            other = self.endpoints[(start + i) % n]
            if self.usable(other, exclude, now):
                ep = other
                break
        if ep is None or self.balance == BALANCE_RANDOM or n == 1:
            return ep
        # least_request: the power of two choices on outstanding requests
        start = self.next_random() % n
        for i in range(n):
            other = self.endpoints[(start + i) % n]
            if other is not ep and self.usable(other, exclude, now):
                return other if other.active < ep.active else ep
        return ep

    # -- admission (SPEC §2 max_connections / max_pending, per worker) ----------------------
    cdef void release_slot(self):
        """An exchange stopped using its upstream connection: the first waiting one goes."""
        cdef Exchange ex
        self.in_flight -= 1
        while self.waiting and self.in_flight < self.max_connections:
            ex = self.waiting.pop(0)
            if ex.waiting_slot:
                ex.waiting_slot = False
                ex.holds_slot = True
                self.in_flight += 1
                ex.dialed()         # the wait for a busy cluster is not the proxy's time
                ex.connect_endpoint()

    cdef void endpoint_outcome(self, Endpoint ep, bint failure, int64_t now):
        """Outlier detection: eject an endpoint after consecutive failures (SPEC §2)."""
        cdef Endpoint e
        cdef int ejected = 0, allowed
        if self.outlier_failures == 0 or ep is None:
            return
        if not failure:
            ep.consecutive_failures = 0
            return
        ep.consecutive_failures += 1
        if ep.consecutive_failures < self.outlier_failures or ep.ejected_until > now:
            return
        for e in self.endpoints:
            if e.ejected_until > now:
                ejected += 1
        allowed = max(1, <int>(self.max_ejected * len(self.endpoints)))
        if ejected >= allowed:
            return
        ep.ejections += 1
        ep.consecutive_failures = 0
        # each ejection lasts longer than the last, up to ten times eject_for
        ep.ejected_until = now + self.eject_ms * min(ep.ejections, 10)
        log.warning("cluster %s: endpoint %s:%d ejected for %gs after %d consecutive failures",
                    self.name, ep.host, ep.port, self.eject_ms * min(ep.ejections, 10) / 1000.0,
                    self.outlier_failures)


# -- the worker: one event loop's connections and configuration ---------------------------

cdef class Worker:
    """All state of one worker process's event loop."""
    cdef readonly object loop
    cdef readonly dict listeners     # name -> ListenerState
    cdef readonly dict clusters      # name -> Cluster
    cdef readonly set connections    # open Downstream
    cdef readonly int admitted       # of those, the ones let in (at most max_connections)
    cdef object waiting              # deque: Downstream paused for admission, in arrival order
    cdef readonly int waiting_count  # live ones in it (it keeps closed ones until they come up)
    cdef readonly int max_connections
    cdef readonly int sockets        # client and upstream sockets open: descriptors in use
    cdef int sockets_high            # pause accepting at this many (0: no limit known)
    cdef int sockets_low             # and resume below this many
    cdef readonly int accept_paused  # A_* bits: why new connections stay in the backlog
    cdef public object on_accepting  # called (no arguments) when accept_paused turns on or off
    cdef readonly dict accept_pauses # reason -> times accepting stopped for it
    cdef readonly dict retry_budget_denials  # cluster name -> retries a budget refused
    cdef dict route_budgets          # (listener, route name) -> the route's RetryBudget
    cdef double pause_logged         # when accepting stopping was last logged
    cdef readonly bint draining
    cdef unsigned long long rid_seed
    cdef unsigned long long rid_counter
    cdef readonly object drained     # a Future set when draining and no connection is left
    cdef HeadWriter hw               # reused by every head built on this loop
    cdef public object identity      # fastproxy.identity.tls.IdentityState, or None
    cdef public object id_allowed    # (patterns, spiffe id) -> bool
    cdef object default_tls          # a system-trust client context, made on first use
    cdef dict tls_contexts           # ssl.SSLContext -> its TLSContext, for new links
    cdef SharedCounters shared       # breaker slots, shared with the other workers
    cdef readonly MetricTable metrics  # metric series, shared with the other workers
    cdef public int index            # this worker's number: per-worker gauges carry it
    cdef int trace_families          # PROPAGATE_* bits; 0: no trace headers are touched
    cdef uint64_t sample_below       # a new trace is sampled when a random word is below
    cdef bint sample_all
    cdef uint64_t rng
    cdef bint count_requests         # [proxy] metrics: request counters and histograms
    cdef bint log_all                # the access log is on: every request writes a line
    cdef bint export_spans           # spans are exported: sampled requests make a record
    cdef readonly LogBuffer log      # access log lines, when log_all
    cdef list records                # Record tuples for fastproxy.observe.records.Drain
    cdef readonly uint64_t records_dropped

    def __init__(self, loop):
        self.loop = loop
        self.listeners = {}
        self.clusters = {}
        self.connections = set()
        self.waiting = deque()
        self.max_connections = 10000
        self.accept_pauses = {"max_connections": 0, "file_descriptors": 0}
        self.retry_budget_denials = {}
        self.route_budgets = {}
        self.pause_logged = -PAUSE_LOG_EVERY
        seed = os.urandom(16)
        self.rid_seed = int.from_bytes(seed[:8], "little")
        self.rid_counter = int.from_bytes(seed[8:], "little") >> 16  # ids unique per worker
        self.drained = None
        self.hw = HeadWriter()
        self.shared = SharedCounters()
        self.metrics = MetricTable()
        self.log = LogBuffer()
        self.rng = int.from_bytes(os.urandom(8), "little") | 1
        self.records = []
        self.tls_contexts = {}

    def attach_shared(self, buffer, metrics=None):
        """Use mappings shared with the other workers for breaker state and metrics
        (before configure)."""
        self.shared = SharedCounters(buffer)
        if metrics is not None:
            self.metrics = MetricTable(metrics)

    def take_records(self):
        """The records made since the last call (the drain timer takes them)."""
        cdef list out = self.records
        self.records = []
        return out

    cdef void add_record(self, tuple record):
        if len(self.records) < RECORD_LIMIT:
            self.records.append(record)
        else:
            self.records_dropped += 1

    cdef inline bint sample(self) noexcept:
        """Sample a new trace? (tracing.sample)"""
        return self.sample_all or self.random64() < self.sample_below

    cdef inline uint64_t random64(self) noexcept:
        """xorshift64*: trace and span ids need to be unique, not secret."""
        cdef uint64_t x = self.rng
        x ^= x >> 12
        x ^= x << 25
        x ^= x >> 27
        self.rng = x
        return x * 2685821657736338717ULL

    def configure(self, config):
        """Compile a validated fastproxy.config.Config; clusters keep their pools by name."""
        cdef Cluster cl
        cdef ListenerState ls
        cdef Route r
        clusters = {}
        for name, c in config.clusters.items():
            cl = self.clusters.get(name) or Cluster(name)
            cl.connect_timeout = c.connect_timeout
            cl.idle_timeout = c.idle_timeout
            cl.addresses = tuple((e.host, e.port, e.is_ip) for e in c.endpoints)
            cl.default_host = str(c.endpoints[0]).encode()
            cl.tls_mode = TLS_MODES[c.tls]
            cl.peer = c.peer
            cl.sni = next((e.host for e in c.endpoints if not e.is_ip), None)
            # every worker numbers the clusters the same way: the slot is the sorted index
            cl.balance = BALANCES[c.balance]
            cl.max_connections = c.max_connections
            cl.max_pending = c.max_pending
            if cl.rng == 0:
                cl.rng = int.from_bytes(os.urandom(8), "little") | 1
            if c.outlier is not None:
                cl.outlier_failures = c.outlier.consecutive_failures
                cl.eject_ms = <int64_t>(c.outlier.eject_for * 1000)
                cl.max_ejected = c.outlier.max_ejected
            else:
                cl.outlier_failures = 0
            cl.breaker = make_breaker(self.shared, name, c.circuit_breaker) if c.circuit_breaker else None
            cl.budget = make_budget(cl.budget, c.retry_budget)
            cl.set_endpoints([(e.host, e.port) for e in c.endpoints if e.is_ip])
            clusters[name] = cl
        listeners = {}
        route_budgets = {}
        for lc in config.listeners:
            ls = ListenerState()
            ls.name = lc.name
            ls.json_name = json_quoted(lc.name)
            ls.max_header_bytes = lc.limits.max_header_bytes
            ls.max_headers = lc.limits.max_headers
            ls.header_timeout = lc.limits.header_timeout
            ls.idle_timeout = lc.limits.idle_timeout
            ls.proto_line = b"x-forwarded-proto: " + (b"http" if lc.tls == "off" else b"https") + b"\r\n"
            ls.routes = [self._route(rc, clusters) for rc in lc.routes]
            for rc, r in zip(lc.routes, ls.routes):
                if rc.retry_budget is not None:   # counts kept across reloads, by name
                    key = (lc.name, rc.name)
                    r.budget = route_budgets[key] = make_budget(self.route_budgets.get(key),
                                                                rc.retry_budget)
            ls.tls_mode = TLS_MODES[lc.tls]
            ls.allow = tuple(lc.allow)
            ls.allow_all = "*" in lc.allow
            if config.identity is not None:
                ls.xfcc_prefix = b"x-forwarded-client-cert: By=" + config.identity.id.encode() + b";URI="
            ls.direction = lc.direction
            ls.pairs = {}
            listeners[lc.name] = ls
        for name, cl in self.clusters.items():
            if name not in clusters:
                for ep in cl.endpoints:
                    ep.close_idle()
        self.clusters = clusters
        self.listeners = listeners
        self.route_budgets = route_budgets
        self.max_connections = config.limits.max_connections
        self.admit_waiting()          # a higher limit lets waiting connections in now
        tracing = config.tracing
        self.trace_families = (PROPAGATE_W3C if "w3c" in tracing.propagate else 0) | \
            (PROPAGATE_B3 if "b3" in tracing.propagate else 0)
        self.sample_all = tracing.sample >= 1.0
        self.sample_below = <uint64_t>(tracing.sample * 18446744073709551615.0) \
            if not self.sample_all else 0
        self.export_spans = tracing.export != "off" and self.trace_families != 0
        self.log_all = config.proxy.access_log != "off"
        self.count_requests = config.proxy.metrics

    cdef Route _route(self, rc, dict clusters):
        cdef Route r = Route()
        r.name = rc.name
        r.json_name = json_quoted(rc.name)
        if rc.host is not None:
            if rc.host.startswith("*."):
                r.host_suffix = rc.host[1:].lower().encode()
            else:
                r.host = rc.host.lower().encode()
        r.prefix = rc.prefix.encode() if rc.prefix is not None else None
        r.path = rc.path.encode() if rc.path is not None else None
        r.method = rc.method.encode() if rc.method is not None else None
        r.headers = tuple((n.lower().encode(), v.encode()) for n, v in rc.headers)
        if rc.cluster is not None:
            r.cluster = clusters[rc.cluster]
        else:
            r.split = make_split([clusters[m.cluster] for m in rc.split], [m.weight for m in rc.split])
        r.timeout = rc.timeout
        r.retries = rc.retries
        r.retry_on = 0
        for name in rc.retry_on:
            r.retry_on |= RETRY_ON[name]
        r.allow = tuple(rc.allow) if rc.allow is not None else None
        return r

    cdef object tls_context(self, context):
        """The core's handle on an ssl.SSLContext (made once per context: they change only
        when the identity rotates)."""
        found = self.tls_contexts.get(context)
        if found is None:
            if len(self.tls_contexts) >= 16:   # rotated away: let the old ones go
                self.tls_contexts.clear()
            found = self.tls_contexts[context] = TLSContext(context)
        return found

    cdef object client_tls(self, Cluster cl):
        """The client context for a new connection of a tls/mtls cluster (newest material)."""
        if cl.tls_mode == TLS_MUTUAL:
            return self.tls_context(self.identity.client_mtls)
        if self.identity is not None and self.identity.material is not None:
            return self.tls_context(self.identity.client_tls)
        if self.default_tls is None:
            from fastproxy.identity.tls import tls_client_context
            self.default_tls = tls_client_context(None)   # the system's trust
        return self.tls_context(self.default_tls)

    def protocol_factory(self, Port port):
        """The factory for asyncio's create_server on one listening socket. A tls/mtls
        listener's connections get a TLSLink with the newest server context: a rotation
        reaches every new handshake, and established connections keep theirs."""
        cdef ListenerState ls = self.listeners[port.listener]
        if ls.tls_mode == TLS_OFF:
            def factory():
                return Downstream(self, port)
            return factory
        if port.tls_failures is NULL:
            name = port.listener.encode()
            port.tls_failures = self.metrics.slot(b"fastproxy_tls_handshake_failures_total\x1f" + name)
            port.tls_new = self.metrics.slot(b"fastproxy_tls_handshakes_total\x1f" + name + b"\x1fnew")
            port.tls_resumed = self.metrics.slot(
                b"fastproxy_tls_handshakes_total\x1f" + name + b"\x1fresumed")
        mtls = ls.tls_mode == TLS_MUTUAL
        def tls_factory():
            current = self.listeners.get(port.listener, ls)
            return TLSLink(self.tls_context(self.identity.server_contexts[mtls]),
                           Downstream(self, port), self.loop,
                           timeout=(<ListenerState>current).header_timeout)
        return tls_factory

    # -- admission: max_connections and the file descriptors (SPEC §2 [limits]) -----------
    #
    # Up to max_connections client connections are served; as many again are accepted and
    # wait, paused, in arrival order (header_timeout runs for them). Beyond that, or when
    # descriptors run short, the worker stops accepting: new connections wait in the
    # kernel's listen backlog until it accepts again (the runtime closes and re-opens its
    # servers when on_accepting tells it).

    def set_descriptor_limit(self, int limit, int in_use):
        """RLIMIT_NOFILE and the descriptors open besides sockets (files, listeners, the
        loop's own). A reserve stays free for the admin listener, upstream connections
        made meanwhile and the connections one accept burst takes from the backlog."""
        cdef int reserve = min(max(limit // 8, 64), 4096)
        self.sockets_high = max(limit - in_use - reserve, 16)
        self.sockets_low = max(self.sockets_high - max(reserve // 4, 8), 8)

    @property
    def accepting(self):
        return self.accept_paused == 0 and not self.draining

    @property
    def short_of_descriptors(self):
        return bool(self.accept_paused & A_DESCRIPTORS)

    cdef void admit_waiting(self):
        """Let waiting connections in, oldest first, while slots are free."""
        cdef Downstream d
        while self.waiting_count and self.admitted < self.max_connections:
            d = <Downstream>self.waiting.popleft()
            if d.paused & P_ADMISSION:     # else it closed while it waited
                self.waiting_count -= 1
                d.admit()
        self.check_accepting()

    cdef void check_accepting(self):
        """Pause or resume accepting as the waiting connections and the descriptors say."""
        cdef int want = 0
        if self.waiting_count >= self.max_connections:
            want = A_WAITING
        # a connection let in may need an upstream connection too: count one for each
        cdef int needed = self.sockets + self.admitted
        if self.sockets_high and (needed >= self.sockets_high or (
                self.accept_paused & A_DESCRIPTORS and needed >= self.sockets_low)):
            want |= A_DESCRIPTORS
        if want == self.accept_paused:
            return
        cdef int started = want & ~self.accept_paused
        cdef bint was_paused = self.accept_paused != 0
        self.accept_paused = want
        if started:
            reason = "file_descriptors" if started & A_DESCRIPTORS else "max_connections"
            self.accept_pauses[reason] += 1
            if self.now() - self.pause_logged >= PAUSE_LOG_EVERY:
                self.pause_logged = self.now()
                if started & A_DESCRIPTORS:
                    log.warning("file descriptors: %d sockets open for %d connections let in, "
                                "near the limit; not accepting connections until some close "
                                "(they wait in the listen backlog)", self.sockets, self.admitted)
                else:
                    log.warning("max_connections: %d connections served and %d waiting; not "
                                "accepting more until some close (they wait in the listen backlog)",
                                self.admitted, self.waiting_count)
        if was_paused != (want != 0) and self.on_accepting is not None:
            self.on_accepting()

    def close_port(self, Port port):
        """A reload removed or moved this socket's listener: its connections wind down."""
        cdef Downstream d
        port.closing = True
        for d in list(self.connections):
            if d.port is port:
                d.wind_down()

    def begin_drain(self):
        """Stop taking requests: idle connections close now, busy ones after their response."""
        cdef Downstream d
        self.draining = True
        self.drained = self.loop.create_future()
        for d in list(self.connections):
            d.wind_down()
        self._check_drained()

    def close_all(self):
        """drain_timeout is over: close everything. Requests still in flight are reported,
        cut off (error "drain_timeout")."""
        cdef Downstream d
        for d in list(self.connections):
            if d.ex is not None:
                d.ex.report(d.ex.status_sent(), "drain_timeout")
            d.close()
        for cl in self.clusters.values():
            for ep in cl.endpoints:
                ep.close_idle()

    cdef void _check_drained(self):
        if self.draining and not self.connections and self.drained is not None \
                and not self.drained.done():
            self.drained.set_result(None)

    cdef bytes new_request_id_line(self):
        """b"x-request-id: <uuid-shaped id>\\r\\n": a per-worker random seed and a counter."""
        cdef bytes line = PyBytes_FromStringAndSize(b"x-request-id: xxxxxxxx-xxxx-4xxx-axxx-xxxxxxxxxxxx\r\n", 52)
        cdef char* o = PyBytes_AS_STRING(line) + 14
        cdef unsigned long long s = self.rid_seed, c = self.rid_counter
        cdef int i
        self.rid_counter += 1
        for i in range(7, -1, -1):
            o[i] = HEX[s & 15]
            s >>= 4
        for i in range(12, 9, -1):
            o[i] = HEX[s & 15]
            s >>= 4
        o[9] = HEX[s & 15]
        for i in range(17, 14, -1):
            o[i] = HEX[s & 15]
            s >>= 4
        for i in range(22, 19, -1):
            o[i] = HEX[c & 15]
            c >>= 4
        for i in range(35, 23, -1):
            o[i] = HEX[c & 15]
            c >>= 4
        return line

    cdef inline double now(self):
        return monotonic()

    def connection_listeners(self):
        """The listener of each open client connection (for the connection gauges)."""
        cdef Downstream d
        return [d.listener_name for d in self.connections]

    def open_connection_count(self):
        return len(self.connections)


# -- client side ---------------------------------------------------------------------------

@cython.final
cdef class Downstream:
    """A client connection: parses its requests one at a time and answers them in order."""
    cdef Worker w
    cdef str listener_name
    cdef ListenerState ls
    cdef object transport
    cdef readonly bytes client_ip
    cdef object pending          # unparsed bytes: a partial head or pipelined requests
    cdef RequestHead head
    cdef Exchange ex
    cdef int state
    cdef int paused
    cdef bint writing_paused
    cdef int requests
    cdef bint processing         # inside feed(): a finished request must not recurse
    cdef bint client_eof         # the client half-closed: close once its requests are answered
    cdef double deadline
    cdef object timer
    cdef double timer_at
    cdef bytes forwarded_lines   # x-forwarded-for, -proto and -client-cert, for requests without XFF
    cdef bytes proto_lines       # x-forwarded-proto and -client-cert, for requests with XFF
    cdef readonly str peer_id    # the verified SPIFFE id of an mtls client
    cdef bint denied             # the peer is not in the listener's allow
    cdef dict route_allowed      # per-route allow decisions for this peer
    cdef object _write           # transport.write, looked up once
    cdef readonly Port port
    cdef bint made               # connection_made came (for TLS: the handshake succeeded)
    cdef bint admitted           # holds one of the worker's max_connections slots
    cdef bint counted            # its socket is counted in Worker.sockets
    cdef MetricSlot* tls_failures

    def __init__(self, Worker w, Port port):
        # made by the protocol factory, as the socket is accepted
        self.w = w
        self.port = port
        self.listener_name = port.listener
        self.tls_failures = port.tls_failures
        self.head = RequestHead()
        self.counted = True
        w.sockets += 1
        if w.sockets_high and w.sockets + w.admitted >= w.sockets_high:
            w.check_accepting()

    def __dealloc__(self):
        # a TLS listener's TLSLink creates its Downstream before the handshake and drops it
        # unused when the handshake fails (or times out): that is where failures are counted
        if not self.made and self.tls_failures is not NULL:
            fp_addu(&self.tls_failures.v[0], 1)
        if self.counted:
            self.w.sockets -= 1
            if self.w.accept_paused:
                self.w.check_accepting()

    # asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport):
        cdef Worker w = self.w
        self.made = True
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = (peer[0] if peer else "unknown").encode()
        self.ls = w.listeners.get(self.listener_name)
        if self.ls is None or self.port.closing:   # accepted just as a reload removed it
            self.state = S_CLOSED
            transport.close()
            return
        self._write = transport.write
        if self.port.tls_new is not NULL:
            fp_addu(&(self.port.tls_resumed if transport.session_reused() else self.port.tls_new).v[0], 1)
        self.proto_lines = self.ls.proto_line
        if self.ls.tls_mode == TLS_MUTUAL and not self.identify(transport):
            return
        self.forwarded_lines = b"x-forwarded-for: " + self.client_ip + CRLF + self.proto_lines
        self.state = S_IDLE
        w.connections.add(self)
        if w.draining:
            self.close()
            return
        self.set_deadline(w.now() + self.ls.header_timeout)
        if w.admitted < w.max_connections and not w.waiting_count:
            w.admitted += 1
            self.admitted = True
        else:                        # waits for a slot; header_timeout runs meanwhile
            self.pause(P_ADMISSION)
            w.waiting.append(self)
            w.waiting_count += 1
            if w.waiting_count >= w.max_connections:
                w.check_accepting()

    def data_received(self, data):
        cdef int st = self.state
        cdef Py_ssize_t used
        if self.paused & P_ADMISSION:
            # uvloop starts reading after connection_made: keep what came, read no more
            self.hold(data)
            self.transport.pause_reading()
            return
        if st == S_EXCHANGE:
            if self.ex.request_body_open():
                used = self.ex.request_body(data, 0)
                if 0 <= used < _len(data) and self.state == S_EXCHANGE:
                    self.hold(data[used:])  # the next pipelined request
            else:
                self.hold(data)
        elif st == S_TUNNEL:
            self.ex.tunnel_to_upstream(data)
        elif st == S_IDLE or st == S_HEAD:
            if self.pending is not None:
                self.pending += data
                data = self.pending
                self.pending = None
            self.feed(data)

    def eof_received(self):
        if self.state == S_TUNNEL and self.ex is not None:
            return self.ex.tunnel_eof(True)
        if self.state == S_EXCHANGE and not self.ex.request_body_open() \
                and not self.ex.resp_started:
            # a client may half-close after its last request: answer what it sent. One
            # that leaves while its response streams is gone (the upstream is closed).
            self.client_eof = True
            return True
        return False

    def connection_lost(self, exc):
        cdef Worker w = self.w
        self.state = S_CLOSED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.ex is not None:
            self.ex.client_gone()
            self.ex = None
        w.connections.discard(self)
        if self.counted:
            self.counted = False
            w.sockets -= 1
        if self.admitted:
            self.admitted = False
            w.admitted -= 1
            w.admit_waiting()
        elif self.paused & P_ADMISSION:
            self.paused &= ~P_ADMISSION     # its entry in w.waiting is skipped
            w.waiting_count -= 1
            if len(w.waiting) > 2 * w.waiting_count + 64:
                w.waiting = deque(d for d in w.waiting if (<Downstream>d).paused & P_ADMISSION)
            w.check_accepting()
        elif w.accept_paused:
            w.check_accepting()
        w._check_drained()

    def pause_writing(self):
        self.writing_paused = True
        if self.ex is not None:
            self.ex.pause_upstream_reading()

    def resume_writing(self):
        self.writing_paused = False
        if self.ex is not None:
            self.ex.resume_upstream_reading()

    # internals --------------------------------------------------------------------------
    cdef bint identify(self, transport):
        """An mtls client: its SPIFFE id, once per connection. False: refused and closed."""
        cdef ListenerState ls = self.ls
        peer, why = self.w.identity.peer_id(transport, "client")
        if peer is None:
            log.warning("listener %s: refused %s: %s", ls.name, self.client_ip.decode(), why)
            if self.tls_failures is not NULL:
                fp_addu(&self.tls_failures.v[0], 1)
            self.state = S_CLOSED
            transport.close()
            return False
        self.peer_id = peer
        self.denied = not ls.allow_all and not self.w.id_allowed(ls.allow, peer)
        self.proto_lines = ls.proto_line + ls.xfcc_prefix + peer.encode() + CRLF
        return True

    cdef bint forbidden(self, Route route):
        """Whether this mtls peer may not use the route (listener and route allow)."""
        if self.denied:
            return True
        if route is None or route.allow is None:
            return False
        if self.route_allowed is None:
            self.route_allowed = {}
        ok = self.route_allowed.get(route)
        if ok is None:
            ok = self.route_allowed[route] = bool(self.w.id_allowed(route.allow, self.peer_id))
        return not ok

    cdef void admit(self):
        """A slot is free: read and serve (header_timeout runs on from the accept)."""
        self.w.admitted += 1
        self.admitted = True
        self.resume(P_ADMISSION)
        if self.pending is not None:
            buf = self.pending
            self.pending = None
            self.feed(buf)

    cdef void pause(self, int why):
        if self.paused == 0 and self.state != S_CLOSED:
            self.transport.pause_reading()
        self.paused |= why

    cdef void resume(self, int why):
        if self.paused == 0:
            return
        self.paused &= ~why
        if self.paused == 0 and self.state != S_CLOSED:
            self.transport.resume_reading()

    cdef void hold(self, object data):
        """Keep bytes that arrive while a request is in flight (pipelining)."""
        if self.pending is None:
            self.pending = bytearray(data)
        else:
            self.pending += data
        if len(self.pending) > PIPELINE_LIMIT:
            self.pause(P_PIPELINE)

    cdef void feed(self, object buf):
        """Start the requests in buf, one after another while each finishes at once.

        A request can end synchronously (404, a refused body...), and the next pipelined
        one starts from here, in a loop rather than by recursion, so a client cannot
        deepen the C stack with thousands of tiny pipelined requests.
        """
        self.processing = True
        try:
            self.process(buf)
            while self.state == S_IDLE and self.pending is not None:
                buf = self.pending
                self.pending = None
                self.process(buf)
        finally:
            self.processing = False
        if self.client_eof and (self.state == S_IDLE or self.state == S_HEAD):
            self.close()

    cdef void process(self, object buf):
        """Parse the next request head from buf and start proxying it."""
        cdef ListenerState ls = self.ls
        cdef RequestHead h = self.head
        cdef Py_ssize_t r = parse_request(h, buf, ls.max_header_bytes, ls.max_headers)
        if r == 0:
            if self.pending is None:
                self.pending = bytearray(buf)
            elif type(self.pending) is bytes:
                self.pending = bytearray(self.pending)
            if self.state == S_IDLE:
                self.state = S_HEAD
                if self.requests:  # later requests: header_timeout runs from the first byte
                    self.set_deadline(self.w.now() + ls.header_timeout)
            return
        self.pending = None
        if r < 0:
            self.refuse(h.error_status, PARSE_REASONS.get(h.error_status, "bad_request"),
                        h.error_detail)
            self.state = S_CLOSED
            return
        self.state = S_EXCHANGE
        self.start_exchange(h, buf, r)

    cdef void start_exchange(self, RequestHead h, object buf, Py_ssize_t off):
        cdef ListenerState ls = self.w.listeners.get(self.listener_name, self.ls)
        self.ls = ls
        cdef Route route = ls.route_for(h)
        cdef Exchange ex = Exchange.__new__(Exchange)
        cdef Py_ssize_t used
        ex.init(self, h, route)
        self.ex = ex
        if off < _len(buf):
            self.pending = buf[off:]   # the body, then maybe the next pipelined request
        if self.peer_id is not None and self.forbidden(route):
            log.info("listener %s: peer %s forbidden (route %s)", ls.name, self.peer_id,
                     route.name if route is not None else "-")
            ex.reject(403, "forbidden", f"peer {self.peer_id} is not allowed here")
            return
        if route is None:
            ex.reject(404, "no_route", "no route matches " + h.authority.decode("latin-1")
                      + h.path.decode("latin-1"))
            return
        self.set_deadline(self.w.now() + route.timeout)
        if not ex.choose_cluster():
            return
        ex.up_head = ex.build_upstream_head()
        self.pending = None
        used = ex.request_body(buf, off)
        if used < 0:
            return
        if off + used < _len(buf):
            self.pending = buf[off + used:]
        if h.expect_continue and not ex.req_done:
            self.transport.write(CONTINUE_100)
        ex.connect()

    cdef void exchange_done(self, bint close):
        """The response is complete: close, or go on with the next request."""
        self.ex = None
        self.requests += 1
        if close or self.ending() or self.state == S_CLOSED:
            self.close()
            return
        self.state = S_IDLE
        self.head.reset()
        self.set_deadline(self.w.now() + self.ls.idle_timeout)
        self.resume(P_PIPELINE | P_UPSTREAM | P_QUEUE)
        if self.pending is not None and not self.processing:
            buf = self.pending
            self.pending = None
            self.feed(buf)
        if self.client_eof and self.state == S_IDLE and not self.processing:
            self.close()

    cdef Py_ssize_t send_error(self, int status, str reason, str detail, bytes rid_line, bint close):
        """A response the proxy makes itself (SPEC §4); returns its body's size."""
        body = f"fastproxy: {reason}: {detail}\n".encode("utf-8", "replace")
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Error")),
                 b"content-type: text/plain; charset=utf-8\r\n",
                 b"fastproxy-error: " + reason.encode() + b"\r\n",
                 b"content-length: %d\r\n" % len(body)]
        if rid_line is not None:
            lines.append(rid_line)
        if close:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        lines.append(body)
        if self.state != S_CLOSED:
            self.transport.write(b"".join(lines))
            if close:
                self.close()
        return len(body)

    cdef void refuse(self, int status, str reason, str detail):
        """A request refused before it became an exchange (malformed, too large, too slow):
        counted and recorded, answered, and the connection closed."""
        cdef Worker w = self.w
        cdef ListenerState ls = self.ls
        cdef double now
        cdef bytes rid = w.new_request_id_line()   # every error the proxy makes carries one
        cdef Py_ssize_t sent = self.send_error(status, reason, detail, rid, True)
        cdef uint64_t hi = 0, lo = 0, span = 0
        cdef bint sampled = False
        if w.count_requests:
            count_request(w.metrics, ls, "", status, 0, 0)
        if w.trace_families:    # a response of our own gets a span (of a new trace) too
            hi, lo, span = w.random64(), w.random64() or 1, w.random64() or 1
            sampled = w.sample()
        now = unix_time()
        if w.log_all:
            w.log.line(now, 0, ls.json_name, None, b"", 0, b"", 0, b"", 0, status, 0, sent, None,
                       None, self.peer_id, w.trace_families != 0, hi, lo,
                       PyBytes_AS_STRING(rid) + 14, PyBytes_GET_SIZE(rid) - 16, reason)
        w.add_record((now, now, ls.name, ls.direction, None, None, None, "", "", "", status,
                      reason, 0, sent, self.peer_id,
                      f"{hi:016x}{lo:016x}" if w.trace_families else None,
                      f"{span:016x}" if w.trace_families else None, None, sampled,
                      rid[14:PyBytes_GET_SIZE(rid) - 2].decode("latin-1"), 0.0))

    cdef inline bint ending(self):
        """Draining, or the listener went away: answer what is in flight, then close."""
        return self.w.draining or self.port.closing

    cdef void wind_down(self):
        """Drain or listener removal. A busy connection closes after its response (sent
        with Connection: close); an idle one after a short grace, so a request already on
        its way is still answered rather than met with a reset."""
        if self.paused & P_ADMISSION:
            self.close()
        elif self.state == S_IDLE:
            self.set_deadline(self.w.now() + WIND_DOWN_GRACE)

    cdef void close(self):
        if self.state != S_CLOSED:
            self.state = S_CLOSED
            self.transport.close()

    cdef void write(self, bytes data):
        if self.state != S_CLOSED:
            self._write(data)

    # one lazily re-armed timer per connection: deadlines move without timer churn
    cdef void set_deadline(self, double when):
        self.deadline = when
        if self.timer is None or when < self.timer_at:
            if self.timer is not None:
                self.timer.cancel()
            self.timer_at = when
            self.timer = self.w.loop.call_at(when, self.on_timer)

    def on_timer(self):
        self.timer = None
        if self.state == S_CLOSED:
            return
        if self.w.now() < self.deadline - 0.0005:
            self.set_deadline(self.deadline)
            return
        if self.state == S_IDLE:
            if self.paused & P_ADMISSION and self.pending is not None:
                self.refuse(503, "overloaded", "no connection slot (max_connections) "
                            "within header_timeout")
            elif self.requests == 0 and not self.ending():
                # SPEC §11: 408 from accept; but a connection that never sent a byte made
                # no request, so nothing is counted or logged (a preconnect, a probe)
                self.send_error(408, "request_timeout", "no request head within header_timeout",
                                self.w.new_request_id_line(), True)
            else:
                self.close()
        elif self.state == S_HEAD:
            self.refuse(408, "request_timeout", "request head incomplete after header_timeout")
        elif self.state == S_EXCHANGE:
            self.ex.timed_out()
        else:
            self.ex.tunnel_close()

    cdef void touch(self):
        """Push the deadline out by idle_timeout (activity on a tunnel)."""
        self.deadline = self.w.now() + self.ls.idle_timeout


# -- one request/response ------------------------------------------------------------------

cdef enum:
    R_HEAD = 0        # waiting for the response head
    R_BODY = 1        # streaming the response body
    R_DONE = 2

@cython.final
@cython.freelist(64)
cdef class Exchange:
    """One proxied request and its response."""
    cdef Downstream down
    cdef Worker w
    cdef RequestHead head
    cdef Route route
    cdef Cluster cluster
    cdef Endpoint endpoint
    cdef Upstream up
    cdef bytes up_head
    cdef bytes rid_line          # b"x-request-id: ...\r\n" for the response
    cdef list queued            # bytes for an upstream that is connecting
    cdef Py_ssize_t queued_bytes
    cdef list replay            # the body sent upstream, while it is small enough to resend
    cdef Py_ssize_t replay_bytes
    cdef bint replay_lost       # more was sent than is kept: no resend possible
    cdef int req_framing
    cdef long long req_remaining
    cdef ChunkedReader req_chunks
    cdef readonly bint req_done
    cdef ResponseHead resp
    cdef object resp_pending
    cdef int rstate
    cdef int resp_framing
    cdef long long resp_remaining
    cdef ChunkedReader resp_chunks
    cdef bint dechunk
    cdef bint resp_started      # a response head went to the client
    cdef bint got_response_bytes
    cdef bint close_client
    cdef bint resent
    cdef bint reused
    cdef bint connecting
    cdef set tried
    cdef bint up_reading_paused
    cdef bint head_request
    cdef int tunnel_eofs
    cdef int gate                # the breaker's answer: PASS or PROBE (REJECT never gets here)
    cdef str connect_error
    cdef bint holds_slot         # counts in its cluster's in_flight
    cdef bint waiting_slot       # waiting in its cluster's queue for a connection slot
    cdef int retries_done
    cdef bint replay_on_attach   # a retry: send the head and the kept body again
    cdef bint judged             # the outcome went to the breaker
    # what is reported when it ends (metrics, and a record for logs, spans, failures)
    cdef ListenerState ls
    cdef str peer                # the client's verified SPIFFE id (mtls listeners)
    cdef bint reported
    cdef int64_t t0              # monotonic ns: the request head was complete
    cdef int64_t t_dial          # a new upstream connection was asked for
    cdef int64_t t_wait          # ns spent waiting for connections to open (upstream time)
    cdef int64_t t_up            # the request head went upstream
    cdef int64_t t_rin           # the response head's first bytes came
    cdef int64_t t_rout          # the response head went to the client (streamed bodies)
    cdef long long bytes_in
    cdef long long bytes_out
    cdef bint traced
    cdef bint sampled
    cdef bint keep_tracestate    # continuing a W3C context: its tracestate goes on
    cdef uint64_t trace_hi, trace_lo, span_id, parent_id

    cdef void init(self, Downstream down, RequestHead head, Route route):
        self.t0 = monotonic_ns()
        self.down = down
        self.ls = down.ls
        self.peer = down.peer_id
        self.w = down.w
        self.head = head
        self.route = route
        if route is not None:
            self.cluster = route.cluster
        self.req_framing = head.framing
        self.req_remaining = head.content_length
        self.req_done = head.framing == BODY_NONE
        self.head_request = head.method_end - head.start == 4 and \
            memcmp(PyBytes_AS_STRING(head.raw) + head.start, b"HEAD", 4) == 0

    # -- the cluster ----------------------------------------------------------------------
    cdef bint choose_cluster(self):
        """Pick the cluster (splits) and pass its circuit breaker; False: answered already."""
        cdef Route route = self.route
        cdef int64_t now = monotonic_ms()
        cdef int why = 0
        cdef Cluster cl = route.cluster
        if route.split is not None:
            cl = route.split.pick(now, &why)
            if cl is None:
                if why:
                    self.reject(503, "circuit_open", f"every cluster of route {route.name} has its circuit open")
                else:
                    self.reject(503, "no_healthy_upstream", f"no cluster of route {route.name} has a healthy endpoint")
                return False
            self.cluster = cl
        self.budget().count_request(now)
        if cl.breaker is not None:
            self.gate = cl.breaker.gate(now)
            if self.gate == GATE_REJECT:
                self.judged = True
                self.reject(503, "circuit_open", f"the circuit of cluster {cl.name} is open")
                return False
        return True

    cdef void judge(self, bint failure):
        """Tell the cluster's breaker how the request went (once; SPEC §2's failures only)."""
        if self.judged or self.cluster is None:
            return
        self.judged = True
        self.cluster.endpoint_outcome(self.endpoint, failure, monotonic_ms())
        if self.cluster.breaker is not None:
            self.cluster.breaker.record(failure, self.gate, monotonic_ms())

    cdef inline RetryBudget budget(self):
        return self.route.budget if self.route.budget is not None else self.cluster.budget

    cdef bint may_retry(self, int cause):
        """A retry is allowed: the route asks for it, nothing went to the client, the body
        is all kept, attempts remain, and the retry budget (the route's, else the
        cluster's) has room; a refusal is counted."""
        cdef dict denials
        if not ((self.route.retry_on & cause) and self.retries_done < self.route.retries
                and not self.resp_started and self.req_done and not self.replay_lost):
            return False
        if self.budget().take_retry(monotonic_ms()):
            return True
        denials = self.w.retry_budget_denials
        denials[self.cluster.name] = denials.get(self.cluster.name, 0) + 1
        return False

    cdef void retry(self, str why):
        """Send the request again, preferably to another endpoint (SPEC §5)."""
        cdef Endpoint failed = self.endpoint
        self.judge(True)            # each failed attempt counts for breaker and outlier
        self.judged = False
        self.gate = GATE_PASS
        self.retries_done += 1
        self.drop_upstream()
        self.rstate = R_HEAD
        self.got_response_bytes = False
        self.t_rin = self.t_rout = 0
        self.resp_pending = None
        self.replay_on_attach = True
        if self.tried is None:
            self.tried = set()
        self.tried.add(failed)
        if len(self.tried) >= len(self.cluster.endpoints):
            self.tried = None       # every endpoint was tried: any may take the retry
        log.info("cluster %s: retry %d of %s %s: %s", self.cluster.name, self.retries_done,
                 self.head.method.decode("latin-1"), self.head.path.decode("latin-1"), why)
        self.connect_endpoint()

    cdef void abandon(self):
        """The request ended without an outcome (client gone): give a probe back."""
        if not self.judged and self.gate == GATE_PROBE and self.cluster.breaker is not None:
            self.judged = True
            fp_add(&self.cluster.breaker.slot.probes, -1)

    # -- the request --------------------------------------------------------------------
    cdef bytes build_upstream_head(self):
        """The head sent upstream: received lines kept as they came, ours appended."""
        cdef RequestHead h = self.head
        cdef bytes raw = h.raw
        cdef const char* p = PyBytes_AS_STRING(raw)
        cdef HeadWriter hw = self.w.hw
        cdef Field* f
        cdef int i, kind
        cdef bint upgrade = h.upgrade
        cdef Downstream down = self.down
        cdef int families = self.w.trace_families
        cdef bytes trace = self.trace() if families else None
        hw.reset()
        # request line: as received unless it must become origin-form HTTP/1.1
        if h.absolute_form or h.version == 10:
            hw.extra(self._request_line())
        else:
            hw.span(h.start, h.line_end)
        for i in range(h.nfields):
            f = &h.fields[i]
            kind = f.kind
            if kind == H_OTHER:
                if not f.drop:
                    hw.span(f.line_start, f.line_end)
            elif kind == H_HOST or kind == H_CONTENT_LENGTH:
                hw.span(f.line_start, f.line_end)
            elif kind == H_X_REQUEST_ID:
                hw.span(f.line_start, f.line_end)
                if self.rid_line is None:
                    self.rid_line = b"x-request-id: " + raw[f.value_start:f.value_end] + CRLF
            elif kind == H_X_FORWARDED_FOR:
                if i == h.xff_field:
                    hw.extra(raw[f.line_start:f.value_end] + b", " + down.client_ip + b"\r\n")
                else:
                    hw.span(f.line_start, f.line_end)
            elif kind == H_UPGRADE:
                if upgrade:
                    hw.span(f.line_start, f.line_end)
            elif kind == H_EXPECT:
                if not h.expect_continue:
                    hw.span(f.line_start, f.line_end)
            elif kind >= H_TRACEPARENT:
                # ours to rewrite when the family is propagated; otherwise untouched
                if f.drop:
                    pass
                elif kind == H_TRACEPARENT or kind == H_TRACESTATE:
                    if not families & PROPAGATE_W3C or (kind == H_TRACESTATE and self.keep_tracestate):
                        hw.span(f.line_start, f.line_end)
                elif not families & PROPAGATE_B3:
                    hw.span(f.line_start, f.line_end)
            # Connection, Keep-Alive, Proxy-Connection, TE, Transfer-Encoding: hop-by-hop;
            # x-forwarded-proto is ours to set; x-forwarded-client-cert only the proxy sets.
        if h.host_field < 0:
            hw.extra(b"host: " + (h.authority if h.absolute_form else self.cluster.default_host)
                     + b"\r\n")
        hw.extra(down.forwarded_lines if h.xff_field < 0 else down.proto_lines)
        if self.rid_line is None:
            self.rid_line = self.w.new_request_id_line()
            hw.extra(self.rid_line)
        if trace is not None:
            hw.extra(trace)
        if self.req_framing == BODY_CHUNKED:
            hw.extra(b"transfer-encoding: chunked\r\n")
        if upgrade:
            hw.extra(b"connection: upgrade\r\n")
        hw.extra(CRLF)
        return hw.build(raw, NULL, 0)

    cdef bytes trace(self):
        """Continue the incoming trace or start one (SPEC §7); the lines for upstream."""
        cdef Worker w = self.w
        cdef TraceContext c
        read_trace_context(self.head, w.trace_families, &c)
        self.traced = True
        self.span_id = w.random64() or 1
        if c.source != TRACE_NONE:
            self.trace_hi, self.trace_lo, self.parent_id = c.hi, c.lo, c.parent
            self.keep_tracestate = c.source == TRACE_W3C and c.tracestate_bytes <= TRACESTATE_LIMIT
        else:
            self.trace_hi = w.random64()
            self.trace_lo = w.random64() or 1
        if c.sampled >= 0:
            self.sampled = c.sampled == 1
        else:
            self.sampled = w.sample()
        return trace_lines(w.trace_families, c.b3_single, self.trace_hi, self.trace_lo,
                           self.span_id, self.parent_id, self.sampled)

    cdef inline int status_sent(self):
        """The status the client got, or 499 (as nginx logs it) when no head went out."""
        return self.resp.status if self.resp_started else 499

    cdef void report(self, int status, str error):
        """The request ended: count it, and make a record when anything wants one."""
        cdef Worker w = self.w
        cdef ListenerState ls = self.ls
        cdef int64_t end, over
        if self.reported:
            return
        self.reported = True
        self.dialed()
        end = monotonic_ns()
        if self.req_chunks is not None:
            self.bytes_in = self.req_chunks.data_bytes
        if self.resp_chunks is not None:
            self.bytes_out = self.resp_chunks.data_bytes
        # time inside the proxy: up to the request leaving (connects excluded), and from
        # the response head arriving to its leaving; everything for an answer of our own
        if self.t_rin:
            over = self.t_up - self.t0 - self.t_wait + (self.t_rout or end) - self.t_rin
        elif self.t_up:
            over = self.t_up - self.t0 - self.t_wait
        else:
            over = end - self.t0 - self.t_wait
        if w.count_requests:
            count_request(w.metrics, ls, self.cluster.name if self.cluster is not None else "",
                          status, end - self.t0, over)
        if w.trace_families and not self.traced:
            self.trace()    # a response of our own gets a span too
        if w.log_all:
            self.log_line(status, error, end)
        if (self.sampled and w.export_spans) or status >= 500 or error is not None:
            w.add_record(self.record(status, error, end, over))

    cdef void log_line(self, int status, str error, int64_t end):
        cdef RequestHead h = self.head
        cdef const char* p = PyBytes_AS_STRING(h.raw)
        cdef bytes rid = self.rid_line
        self.w.log.line(
            unix_time() - (end - self.t0) * 1e-9, end - self.t0, self.ls.json_name,
            self.route.json_name if self.route is not None else None,
            p + h.start, h.method_end - h.start, p + h.target_start, h.target_end - h.target_start,
            p + h.authority_start, h.authority_end - h.authority_start, status, self.bytes_in,
            self.bytes_out, self.cluster.json_name if self.cluster is not None else None,
            self.endpoint.json_label if self.endpoint is not None else None, self.peer,
            self.traced, self.trace_hi, self.trace_lo,
            PyBytes_AS_STRING(rid) + 14 if rid is not None else NULL,
            PyBytes_GET_SIZE(rid) - 16 if rid is not None else 0, error)

    cdef tuple record(self, int status, str error, int64_t end, int64_t over):
        """A fastproxy.observe.records.Record, as a plain tuple (same field order)."""
        cdef RequestHead h = self.head
        cdef bytes raw = h.raw
        cdef double now = unix_time()
        cdef bytes rid = self.rid_line
        return (now - (end - self.t0) * 1e-9, now, self.ls.name, self.ls.direction,
                self.route.name if self.route is not None else None,
                self.cluster.name if self.cluster is not None else None,
                self.endpoint.label if self.endpoint is not None else None,
                h.method.decode("latin-1"), raw[h.target_start:h.target_end].decode("latin-1"),
                h.authority.decode("latin-1"), status, error, self.bytes_in, self.bytes_out,
                self.peer,
                f"{self.trace_hi:016x}{self.trace_lo:016x}" if self.traced else None,
                f"{self.span_id:016x}" if self.traced else None,
                f"{self.parent_id:016x}" if self.parent_id else None,
                self.sampled, rid[14:PyBytes_GET_SIZE(rid) - 2].decode("latin-1") if rid is not None else None,
                over * 1e-9)

    cdef bytes _request_line(self):
        cdef RequestHead h = self.head
        raw = h.raw
        target = raw[h.path_start:h.target_end]
        if not target.startswith(b"/") and target != b"*":
            target = b"/" + target
        return raw[h.start:h.method_end] + b" " + target + b" HTTP/1.1\r\n"

    cdef bint request_body_open(self):
        return not self.req_done

    cdef Py_ssize_t request_body(self, object data, Py_ssize_t off) except -2:
        """Forward request body bytes from data[off:]; returns how many were body, -1 refused."""
        cdef Py_ssize_t n = _len(data) - off, k
        cdef const char* p
        if self.req_done or n <= 0:
            return 0
        if self.req_framing == BODY_LENGTH:
            k = n if n < self.req_remaining else <Py_ssize_t>self.req_remaining
            self.req_remaining -= k
            if self.req_remaining == 0:
                self.req_done = True
        else:
            k = self.req_chunks_feed(_ptr(data) + off, n)
            if k < 0:
                self.reject(400, "bad_request", "invalid chunked body: " + self.req_chunks.error)
                return -1
            if self.req_chunks.done:
                self.req_done = True
        if k:
            if self.req_framing == BODY_LENGTH:
                self.bytes_in += k      # chunked: the reader counts the data
            self.send_upstream(_slice(data, off, off + k))
        return k

    cdef Py_ssize_t req_chunks_feed(self, const char* p, Py_ssize_t n) except -2:
        if self.req_chunks is None:
            self.req_chunks = ChunkedReader()
        return self.req_chunks.feed(p, n, None)

    cdef void send_upstream(self, bytes data):
        if not self.replay_lost:
            self.replay_bytes += PyBytes_GET_SIZE(data)
            if self.replay_bytes <= REPLAY_LIMIT:
                if self.replay is None:
                    self.replay = []
                self.replay.append(data)
            else:
                self.replay = None
                self.replay_lost = True
        if self.up is not None:
            self.up._write(data)
        else:
            if self.queued is None:
                self.queued = []
            self.queued.append(data)
            self.queued_bytes += PyBytes_GET_SIZE(data)
            if self.queued_bytes > QUEUE_LIMIT:
                self.down.pause(P_QUEUE)

    # -- the upstream connection -----------------------------------------------------------
    cdef void connect(self):
        """Take a connection slot of the cluster, or wait for one, or 503 overloaded."""
        cdef Cluster cl = self.cluster
        if not self.holds_slot:
            if cl.in_flight >= cl.max_connections:
                if len(cl.waiting) >= cl.max_pending:
                    self.reject(503, "overloaded", f"cluster {cl.name}: {cl.in_flight} connections "
                                f"in use and {len(cl.waiting)} requests waiting")
                    return
                self.waiting_slot = True
                if not self.t_up:
                    self.t_dial = monotonic_ns()
                cl.waiting.append(self)
                return
            self.holds_slot = True
            cl.in_flight += 1
        self.connect_endpoint()

    cdef void release_slot(self):
        if self.waiting_slot:
            self.waiting_slot = False
            try:
                self.cluster.waiting.remove(self)
            except ValueError:
                pass
        if self.holds_slot:
            self.holds_slot = False
            self.cluster.release_slot()

    cdef void connect_endpoint(self):
        cdef Cluster cl = self.cluster
        cdef Endpoint ep
        cdef Upstream up
        ep = cl.pick(self.tried, monotonic_ms())
        if ep is None:
            if self.tried:
                self.endpoint = None   # each endpoint tried was counted already
                self.judge(True)
                self.reject(503, "connect_failed", f"no connection to any endpoint of cluster "
                            f"{cl.name}: {self.connect_error}")
            else:
                self.reject(503, "no_healthy_upstream", f"cluster {cl.name} has no healthy endpoint")
            return
        self.endpoint = ep
        up = ep.take_idle()
        if up is not None:
            self.attach(up, True)
            return
        self.connecting = True
        if not self.t_up:
            self.t_dial = monotonic_ns()
        open_upstream(self.w, cl, ep, self)

    cdef inline void dialed(self):
        """A connection attempt (or a wait for a slot of a busy cluster) ended: its time was
        the upstream side's, not the proxy's."""
        if self.t_dial:
            self.t_wait += monotonic_ns() - self.t_dial
            self.t_dial = 0

    cdef void attach(self, Upstream up, bint reused):
        cdef list q
        self.connecting = False
        if not reused:
            self.dialed()
        self.up = up
        self.reused = reused
        up.ex = self
        self.resp = up.resp   # each connection parses its responses into one reused head
        self.resp.reset()
        self.endpoint.active += 1
        q = self.queued
        self.queued = None
        self.queued_bytes = 0
        if self.replay_on_attach:
            if self.replay_lost:    # never send a head with part of its body missing
                self.drop_upstream()
                self.upstream_failed(502, "upstream_reset", "the request body could not be sent again")
                return
            q = [self.up_head]      # everything again (a resend or a retry)
            if self.replay is not None:
                q.extend(self.replay)
        elif q is None:
            q = [self.up_head]
        else:
            q.insert(0, self.up_head)
        if len(q) == 1:
            up._write(q[0])
        else:
            up._write(b"".join(q))
        if not self.t_up:
            self.t_up = monotonic_ns()
        self.down.resume(P_QUEUE)
        if self.down.writing_paused:
            self.pause_upstream_reading()

    cdef void tls_failed(self, Endpoint ep, str why):
        """The upstream TLS handshake or the server's identity check failed (SPEC §6)."""
        self.connecting = False
        self.dialed()
        if self.down is None or self.rstate == R_DONE:
            return
        log.warning("cluster %s: TLS with %s:%d failed: %s", self.cluster.name, ep.host, ep.port, why)
        self.judge(True)
        self.reject(503, "upstream_tls", f"TLS with {ep.host}:{ep.port} failed: {why}")

    cdef void connect_failed(self, Endpoint ep, str why):
        """A new connection could not be made: try another endpoint, then give up."""
        self.connecting = False
        self.dialed()
        if self.down is None or self.rstate == R_DONE:
            return
        if self.tried is None:
            self.tried = set()
        self.tried.add(ep)
        self.connect_error = why
        self.cluster.endpoint_outcome(ep, True, monotonic_ms())
        self.connect_endpoint()   # another endpoint, or 503 connect_failed when none is left

    # -- the response ----------------------------------------------------------------------
    cdef void upstream_data(self, object data):
        cdef Py_ssize_t r
        if self.rstate == R_BODY:
            self.response_body(data, 0)
            return
        if self.rstate != R_HEAD:
            return
        if not self.t_rin:
            self.t_rin = monotonic_ns()
        self.got_response_bytes = True
        if self.resp_pending is not None:
            self.resp_pending += data
            data = self.resp_pending
        while True:
            r = parse_response(self.resp, data, MAX_RESPONSE_HEAD, MAX_RESPONSE_FIELDS,
                               self.head_request)
            if r == 0:
                if self.resp_pending is None:
                    self.resp_pending = bytearray(data)
                return
            self.resp_pending = None
            if r < 0:
                self.upstream_failed(502, "bad_gateway",
                                     "malformed response: " + self.resp.error_detail)
                return
            if self.resp.status >= 200 or self.resp.status == 101:
                break
            # 1xx: relay to HTTP/1.1 clients, then read on; waiting for the final response
            # (and the client's body after a 100) is not the proxy's time
            if self.head.version == 11:
                self.down.write(self.resp.raw[self.resp.start:r])
            self.resp.reset()
            if r == _len(data):
                self.t_rin = 0
                return
            self.t_rin = monotonic_ns()
            data = data[r:]
        if self.resp.status == 101:
            self.start_tunnel(data, r)
        elif self.resp.status >= 500 and (self.may_retry(RETRY_5XX) or (
                self.resp.status in (502, 503, 504) and self.may_retry(RETRY_GATEWAY))):
            self.retry(f"upstream answered {self.resp.status}")
        else:
            self.response_head(data, r)

    cdef void response_head(self, object data, Py_ssize_t off):
        cdef ResponseHead rh = self.resp
        cdef HeadWriter hw = self.w.hw
        cdef Field* f
        cdef int i, kind
        cdef bytes raw = rh.raw
        cdef Py_ssize_t n = _len(data) - off, body_len = 0
        cdef bint client_11 = self.head.version == 11
        cdef bint keep
        self.judge(rh.status >= 500)
        self.resp_framing = rh.framing
        self.resp_remaining = rh.content_length
        keep = self.head.keep_alive and self.req_done and not self.down.ending() \
            and rh.framing != BODY_UNTIL_CLOSE
        if rh.framing == BODY_CHUNKED and not client_11:
            self.dechunk = True
            keep = False
        self.close_client = not keep
        hw.reset()
        if rh.version == 11:
            hw.span(rh.start, rh.line_end)
        else:
            hw.extra(b"HTTP/1.1" + raw[rh.start + 8:rh.line_end])
        for i in range(rh.nfields):
            f = &rh.fields[i]
            kind = f.kind
            if kind == H_CONNECTION or kind == H_KEEP_ALIVE or kind == H_PROXY_CONNECTION \
                    or kind == H_TE or kind == H_TRANSFER_ENCODING or kind == H_UPGRADE or f.drop:
                continue
            hw.span(f.line_start, f.line_end)
        if rh.framing == BODY_CHUNKED and not self.dechunk:
            hw.extra(b"transfer-encoding: chunked\r\n")
        if rh.request_id_field < 0:
            hw.extra(self.rid_line)
        if self.close_client:
            hw.extra(b"connection: close\r\n\r\n")
        elif not client_11:
            hw.extra(b"connection: keep-alive\r\n\r\n")
        else:
            hw.extra(CRLF)
        self.rstate = R_BODY
        self.resp_started = True
        if rh.framing == BODY_NONE:
            self.down.write(hw.build(raw, NULL, 0))
            if n > 0:
                self.up.reusable = False  # bytes after a body-less response
            self.finish()
            return
        if rh.framing == BODY_LENGTH and 0 < n <= 16384 and type(data) is bytes:
            # the usual small response: head and body in one write
            body_len = n if n < self.resp_remaining else <Py_ssize_t>self.resp_remaining
            self.down.write(hw.build(raw, PyBytes_AS_STRING(data) + off, body_len))
            self.t_rout = monotonic_ns()
            self.bytes_out += body_len
            self.resp_remaining -= body_len
            if self.resp_remaining == 0:
                if body_len < n:
                    self.up.reusable = False  # more than the response: not trustworthy
                self.finish()
            return
        self.down.write(hw.build(raw, NULL, 0))
        self.t_rout = monotonic_ns()
        if n > 0:
            self.response_body(data, off)

    cdef void response_body(self, object data, Py_ssize_t off):
        cdef Py_ssize_t n = _len(data) - off, k
        cdef list out
        if self.resp_framing == BODY_LENGTH:
            k = n if n < self.resp_remaining else <Py_ssize_t>self.resp_remaining
            self.down.write(_slice(data, off, off + k))
            self.bytes_out += k
            self.resp_remaining -= k
            if self.resp_remaining == 0:
                if k < n:
                    self.up.reusable = False
                self.finish()
        elif self.resp_framing == BODY_CHUNKED:
            if self.resp_chunks is None:
                self.resp_chunks = ChunkedReader()
            out = [] if self.dechunk else None
            k = self.resp_chunks.feed(_ptr(data) + off, n, out)
            if k < 0:
                self.upstream_failed(502, "bad_gateway", "malformed chunked response body")
                return
            if self.dechunk:
                for chunk in out:
                    self.down.write(chunk)
            else:
                self.down.write(_slice(data, off, off + k))
            if self.resp_chunks.done:
                if k < n:
                    self.up.reusable = False
                self.finish()
        else:
            self.bytes_out += n
            self.down.write(_slice(data, off, off + n))

    cdef void finish(self):
        """The response is complete: pool the upstream connection, free the client."""
        cdef Upstream up = self.up
        cdef Downstream down = self.down
        self.report(self.resp.status, None)
        self.rstate = R_DONE
        if up is not None:
            self.up = None
            up.ex = None
            self.endpoint.active -= 1
            if self.up_reading_paused:
                up.transport.resume_reading()
                self.up_reading_paused = False
            if up.reusable and self.resp.keep_alive and self.req_done and not up.closed:
                self.endpoint.release(up, self.w.now())
            else:
                up.close()
        self.release_slot()   # after pooling: a waiting request takes this very connection
        if down is not None:
            self.down = None
            down.exchange_done(self.close_client)

    # -- failures ----------------------------------------------------------------------------
    cdef void reject(self, int status, str reason, str detail):
        """Answer with a proxy-generated error (before any response byte went out)."""
        cdef Downstream down = self.down
        self.rstate = R_DONE
        self.abandon()   # no outcome for the breaker: a granted probe goes back
        self.drop_upstream()
        self.release_slot()
        if down is None:
            return
        self.down = None
        # a request body we did not read leaves the connection unusable
        close = not self.req_done or status == 400 or not self.head.keep_alive or down.ending()
        if self.rid_line is None:
            rid = self.head.get(b"x-request-id")
            self.rid_line = b"x-request-id: " + rid + CRLF if rid else self.w.new_request_id_line()
        self.bytes_out = down.send_error(status, reason, detail, self.rid_line, close)
        self.report(status, reason)
        down.exchange_done(close)

    cdef void upstream_failed(self, int status, str reason, str detail):
        """The upstream failed: an error response, or a truncated one once the head went out."""
        cdef Downstream down = self.down
        self.judge(True)
        if self.resp_started:
            self.report(self.resp.status, reason)   # truncated: the client saw this status
            self.rstate = R_DONE
            self.drop_upstream()
            self.release_slot()
            if down is not None:
                self.down = None
                down.close()
                down.exchange_done(True)
            return
        self.reject(status, reason, detail)

    cdef void drop_upstream(self):
        cdef Upstream up = self.up
        self.up_reading_paused = False
        if up is not None:
            self.up = None
            up.ex = None
            self.endpoint.active -= 1
            up.close()

    cdef void upstream_closed(self, str why, bint tls):
        """The upstream connection ended (EOF, reset, TLS alert) while this exchange used it."""
        if self.rstate == R_BODY and self.resp_framing == BODY_UNTIL_CLOSE:
            self.up.reusable = False
            self.finish()
            return
        if tls and self.rstate == R_HEAD and not self.got_response_bytes:
            # the server refused our certificate: TLS 1.3 ends the client's handshake before
            # the server has checked it, so its alert arrives on the first read
            self.drop_upstream()
            self.tls_failed(self.endpoint, why)
            return
        if self.rstate == R_HEAD and not self.got_response_bytes and self.reused \
                and not self.resent and self.req_done and not self.replay_lost:
            # the keep-alive race: the upstream closed an idle connection just as we sent
            # on it. Send again, once, on a fresh connection (SPEC §3).
            self.drop_upstream()
            self.resent = True
            self.replay_on_attach = True
            self.connecting = True
            open_upstream(self.w, self.cluster, self.endpoint, self)   # same endpoint, fresh
            return
        if self.rstate == R_HEAD and not self.got_response_bytes and self.may_retry(RETRY_RESET):
            self.retry(f"upstream {why}")
            return
        if self.rstate == R_HEAD:
            self.upstream_failed(502, "upstream_reset",
                                 f"upstream {self.endpoint.host}:{self.endpoint.port} {why} "
                                 "before a complete response head")
        else:
            self.upstream_failed(502, "upstream_reset", "upstream closed mid-body")

    cdef void timed_out(self):
        if self.waiting_slot:   # still waiting for a connection slot: the upstream never saw it
            self.reject(504, "upstream_timeout", f"no connection of cluster {self.cluster.name} "
                        f"became free within the route timeout ({self.route.timeout:g}s)")
            return
        self.upstream_failed(504, "upstream_timeout",
                             f"no complete response within the route timeout ({self.route.timeout:g}s)")

    cdef void client_gone(self):
        """The client connection closed: abandon the upstream side too."""
        self.report(self.status_sent(), None)
        self.abandon()
        self.down = None
        self.rstate = R_DONE
        self.drop_upstream()
        self.release_slot()

    # -- backpressure ------------------------------------------------------------------------
    cdef void pause_upstream_reading(self):
        if self.up is not None and not self.up_reading_paused:
            self.up_reading_paused = True
            self.up.transport.pause_reading()

    cdef void resume_upstream_reading(self):
        if self.up is not None and self.up_reading_paused:
            self.up_reading_paused = False
            self.up.transport.resume_reading()

    # -- Upgrade tunnels ---------------------------------------------------------------------
    cdef void start_tunnel(self, object data, Py_ssize_t off):
        cdef Downstream down = self.down
        if not self.head.upgrade:
            self.upstream_failed(502, "bad_gateway", "101 response to a request without Upgrade")
            return
        self.judge(False)
        self.resp_started = True
        self.t_rout = monotonic_ns()
        self.rstate = R_BODY
        self.resp_framing = BODY_UNTIL_CLOSE
        self.up.reusable = False
        down.state = S_TUNNEL
        down.write(_slice(data, 0, _len(data)))
        down.touch()
        if down.pending is not None:  # bytes the client sent after its request head
            self.up.transport.write(bytes(down.pending))
            down.pending = None

    cdef void tunnel_to_upstream(self, object data):
        if self.up is not None:
            self.up.transport.write(data)
            self.down.touch()

    cdef bint tunnel_eof(self, bint from_client):
        """One side of the tunnel finished sending: pass the half-close on; when both
        sides have finished, close both connections. True keeps the transport open."""
        self.tunnel_eofs += 1
        if self.tunnel_eofs >= 2:
            self.tunnel_close()
            return False
        transport = (self.up.transport if from_client else self.down.transport) \
            if self.up is not None and self.down is not None else None
        if transport is not None and transport.can_write_eof():
            transport.write_eof()
            return True
        self.tunnel_close()
        return False

    cdef void tunnel_close(self):
        cdef Downstream down = self.down
        self.report(101, None)
        self.drop_upstream()
        self.release_slot()
        if down is not None:
            self.down = None
            down.close()


# -- upstream side -------------------------------------------------------------------------

@cython.final
cdef class Upstream:
    """A connection to one endpoint: serves one exchange at a time, pooled in between."""
    cdef Endpoint ep
    cdef Worker w
    cdef Exchange ex
    cdef object transport
    cdef object _write
    cdef Cluster cl
    cdef str tls_error           # why the server's identity was refused
    cdef ResponseHead resp
    cdef bint closed
    cdef bint pooled
    cdef bint reusable
    cdef double deadline
    cdef object timer
    cdef bint counted            # its socket is counted in Worker.sockets

    def __init__(self, Worker w, Cluster cl, Endpoint ep):
        # made by the protocol factory, once the socket is connected
        self.w = w
        self.cl = cl
        self.ep = ep
        self.reusable = True
        self.resp = ResponseHead()
        self.counted = True
        w.sockets += 1

    def __dealloc__(self):
        if self.counted:   # a TLS link whose handshake failed never told us it closed
            self.uncount()

    def connection_made(self, transport):
        self.transport = transport
        self._write = transport.write
        if self.cl.tls_mode == TLS_MUTUAL:
            peer, why = self.w.identity.peer_id(transport, "server")
            if peer is None:
                self.tls_error = f"server certificate refused: {why}"
            elif not self.w.id_allowed((self.cl.peer,), peer):
                self.tls_error = f"server identity {peer} does not match peer {self.cl.peer}"
            if self.tls_error is not None:
                self.close()

    def data_received(self, data):
        if self.ex is not None:
            if self.ex.down is not None and self.ex.down.state == S_TUNNEL:
                self.ex.down.write(data)
                self.ex.down.touch()
            else:
                self.ex.upstream_data(data)
        else:
            self.close()  # bytes nobody asked for: the connection cannot be trusted

    def eof_received(self):
        if self.ex is not None and self.ex.down is not None and self.ex.down.state == S_TUNNEL:
            return self.ex.tunnel_eof(False)
        self.lost("closed the connection")
        return False

    def connection_lost(self, exc):
        if isinstance(exc, TLSError):
            self.lost("TLS alert: " + exc.reason, True)
        else:
            self.lost("reset the connection" if exc is not None else "closed the connection")

    def pause_writing(self):
        if self.ex is not None and self.ex.down is not None:
            self.ex.down.pause(P_UPSTREAM)

    def resume_writing(self):
        if self.ex is not None and self.ex.down is not None:
            self.ex.down.resume(P_UPSTREAM)

    cdef void lost(self, str why, bint tls=False):
        cdef Exchange ex = self.ex
        if self.closed:
            return
        self.closed = True
        self.uncount()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.ep.forget(self)
        if ex is not None:
            if ex.down is not None and ex.down.state == S_TUNNEL:
                ex.tunnel_close()
            else:
                ex.upstream_closed(why, tls)

    cdef void uncount(self):
        cdef Worker w = self.w
        if self.counted:
            self.counted = False
            w.sockets -= 1
            if w.accept_paused:
                w.check_accepting()

    cdef void close(self):
        if not self.closed:
            self.closed = True
            self.uncount()
            self.ep.forget(self)
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.transport.close()

    cdef void set_idle_deadline(self, double deadline):
        self.deadline = deadline
        if self.timer is None:
            self.timer = self.w.loop.call_at(self.deadline, self.on_idle_timer)

    def on_idle_timer(self):
        self.timer = None
        if self.closed or not self.pooled:
            return
        if self.w.now() < self.deadline:
            self.timer = self.w.loop.call_at(self.deadline, self.on_idle_timer)
            return
        self.close()


cdef class _Connect:
    """One new upstream connection attempt: the TCP connection, then for a tls/mtls
    cluster the handshake; `connect_timeout` covers both."""
    cdef Worker w
    cdef Cluster cl
    cdef Endpoint ep
    cdef Exchange ex
    cdef object timer
    cdef object fut          # the TCP connection
    cdef object link         # the TLSLink, once its TCP connection is made
    cdef bint over           # reported: later news of this attempt is ignored

    def upstream(self):
        return Upstream(self.w, self.cl, self.ep)

    def tls_link(self):
        """Protocol factory of a tls/mtls cluster's connection."""
        cdef Worker w = self.w
        cdef Cluster cl = self.cl
        self.link = TLSLink(w.client_tls(cl), Upstream(w, cl, self.ep), w.loop,
                            server_name=cl.sni or self.ep.host, on_handshake=self.handshake_done,
                            session_store=self.ep)
        return self.link

    def timed_out(self):
        self.timer = None
        if self.over:
            return
        link = self.link
        if link is not None:
            link.on_handshake = None   # a cancelled connect closes it: that is not news
        if not self.fut.done():
            self.fut.cancel()          # done() reports it
        elif link is not None:
            # connected, but the server never finished (or failed) the handshake: a TLS
            # failure, most often a plain-text server waiting for a request head
            self.over = True
            link.abort()
            self.ex.tls_failed(self.ep, f"no TLS handshake within connect_timeout "
                               f"({self.cl.connect_timeout:g}s): is it a TLS server?")

    def done(self, fut):
        """The TCP connection is made, or failed."""
        if self.over:
            return
        if fut.cancelled():
            self.end()
            self.ex.connect_failed(self.ep, "connect timeout")
            return
        exc = fut.exception()
        if exc is not None:
            self.end()
            self.ex.connect_failed(self.ep, exc.strerror if isinstance(exc, OSError) and exc.strerror
                                   else str(exc) or type(exc).__name__)
            return
        if self.link is None:
            self.end()
            self.connected(<Upstream>fut.result()[1])
        # TLS: handshake_done follows

    def handshake_done(self, link, exc):
        if self.over:
            return
        self.end()
        if exc is None:
            self.connected(<Upstream>link.app)
        elif isinstance(exc, TLSError):
            self.ex.tls_failed(self.ep, exc.reason)
        else:   # the server closed or reset the connection instead of answering
            self.ex.tls_failed(self.ep, (str(exc) or type(exc).__name__) + ": is it a TLS server?")

    cdef void end(self):
        """The attempt's outcome is known: it is reported once, and the timer stops."""
        self.over = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    cdef void connected(self, Upstream up):
        cdef Exchange ex = self.ex
        if up.tls_error is not None:
            ex.tls_failed(self.ep, up.tls_error)
            return
        if ex.down is None or ex.rstate == R_DONE or not ex.connecting:
            # the exchange ended meanwhile (timeout, client gone): keep the connection
            self.ep.release(up, self.w.now())
            return
        ex.attach(up, False)


cdef void open_upstream(Worker w, Cluster cl, Endpoint ep, Exchange ex):
    cdef _Connect c = _Connect()
    c.w = w
    c.cl = cl
    c.ep = ep
    c.ex = ex
    factory = c.tls_link if cl.tls_mode != TLS_OFF else c.upstream
    c.fut = asyncio.ensure_future(w.loop.create_connection(factory, ep.host, ep.port), loop=w.loop)
    c.timer = w.loop.call_later(cl.connect_timeout, c.timed_out)
    c.fut.add_done_callback(c.done)
