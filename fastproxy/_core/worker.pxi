# Included by proxy.pyx: Worker, one event loop's connections, listeners, clusters and
# configuration; admission of client connections; drain.

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
    cdef HeadEdit response_edit      # reused by every response head passed on
    cdef list rid_lines              # [the x-request-id line], for response_edit.lines
    cdef list h2_unflushed           # HTTP/2 connections with frames queued: written once per turn
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
        self.response_edit = new_edit(RESPONSE_HOP_BY_HOP)
        self.rid_lines = [None]
        self.shared = SharedCounters()
        self.metrics = MetricTable()
        self.log = LogBuffer()
        self.rng = int.from_bytes(os.urandom(8), "little") | 1
        self.records = []
        self.tls_contexts = {}
        self.h2_unflushed = []

    cdef void flush_later(self, H2Connection c):
        """Write c's frames at the end of this loop turn, with whatever else its streams
        queue meanwhile: responses that arrive together leave in one write."""
        if not self.h2_unflushed:
            self.loop.call_soon(self.flush_h2)
        self.h2_unflushed.append(c)

    def flush_h2(self):
        cdef H2Connection c
        cdef list clients = self.h2_unflushed
        self.h2_unflushed = []
        for c in clients:
            c.flush_queued = False
            c.write_out()

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

    def install(self, snapshot):
        """Swap in a configuration snapshot (fastproxy.config.compile.Snapshot) whole.

        Requests in flight keep the routes and clusters they started with. Carried to the
        new snapshot, by name: each cluster's endpoints with their pools and ejections,
        its admission slots, retry budget and balancer position (Cluster.__init__), the
        circuit breakers (in shared memory, by cluster name) and routes' own retry
        budgets (by listener and route name)."""
        cdef ListenerState ls
        cdef Route r
        clusters = {spec.name: Cluster(spec, self.clusters.get(spec.name), self.shared)
                    for spec in snapshot.clusters}
        listeners = {}
        route_budgets = {}
        for spec in snapshot.listeners:
            ls = ListenerState()
            ls.name = spec.name
            ls.json_name = json_quoted(spec.name)
            ls.max_header_bytes = spec.max_header_bytes
            ls.max_headers = spec.max_headers
            ls.header_timeout = spec.header_timeout
            ls.idle_timeout = spec.idle_timeout
            ls.proto_line = spec.proto_line
            ls.xfcc_prefix = spec.xfcc_prefix
            ls.tls_mode = spec.tls_mode
            ls.transparent = spec.transparent
            ls.detect_timeout = spec.detect_timeout
            ls.allow = spec.allow
            ls.allow_all = "*" in spec.allow
            ls.direction = spec.direction
            ls.http2 = spec.http2
            ls.h2_settings = spec.h2_settings
            ls.pairs = {}
            ls.routes = []
            for rs in spec.routes:
                r = compile_route(rs, clusters)
                if rs.budget is not None:
                    key = (spec.name, rs.name)
                    r.budget = route_budgets[key] = make_budget(self.route_budgets.get(key),
                                                                rs.budget)
                ls.routes.append(r)
            listeners[spec.name] = ls
        for name, cl in self.clusters.items():
            if name not in clusters:
                for ep in cl.endpoints:
                    ep.close_idle()
        self.clusters = clusters
        self.listeners = listeners
        self.route_budgets = route_budgets
        self.max_connections = snapshot.max_connections
        self.admit_waiting()          # a higher limit lets waiting connections in now
        self.trace_families = snapshot.propagate
        self.sample_all = snapshot.sample >= 1.0
        self.sample_below = <uint64_t>(snapshot.sample * 18446744073709551615.0) \
            if not self.sample_all else 0
        self.export_spans = snapshot.export_spans
        self.log_all = snapshot.access_log
        self.count_requests = snapshot.metrics

    cdef object tls_context(self, context):
        """The core's handle on an ssl.SSLContext (made once per context: they change only
        when the identity rotates)."""
        found = self.tls_contexts.get(context)
        if found is None:
            if len(self.tls_contexts) >= 64:   # rotated away: let the old ones go
                self.tls_contexts.clear()
            found = self.tls_contexts[context] = TLSContext(context)
        return found

    cdef object client_tls(self, Cluster cl, int protocol):
        """The client context for a new connection of a tls/mtls cluster (newest material),
        offering by ALPN what `protocol` (PROTO_*) asks."""
        if cl.tls_mode == TLS_MUTUAL:
            return self.tls_context(self.identity.client_contexts[True, protocol])
        if self.identity is not None and self.identity.material is not None:
            return self.tls_context(self.identity.client_contexts[False, protocol])
        if self.default_tls is None:
            from fastproxy.identity.tls import CLIENT_ALPN, tls_client_context
            self.default_tls = [tls_client_context(None, alpn) for alpn in CLIENT_ALPN]   # the system's trust
        return self.tls_context(self.default_tls[protocol])

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
        mtls = ls.tls_mode >= TLS_MUTUAL
        def tls_factory():
            current = self.listeners.get(port.listener, ls)
            return TLSLink(self.tls_context(self.identity.server_contexts[mtls, ls.http2]),
                           Downstream(self, port), self.loop,
                           timeout=(<ListenerState>current).header_timeout)
        if ls.tls_mode != TLS_PERMISSIVE:
            return tls_factory
        if port.plain is NULL:
            port.plain = self.metrics.slot(b"fastproxy_plain_connections_total\x1f" + port.listener.encode())
        def plain_factory():
            return Downstream(self, port)
        def sniffing_factory():
            current = self.listeners.get(port.listener, ls)
            return Sniffer(tls_factory, plain_factory, self.loop, current)
        return sniffing_factory

    # -- admission: [limits] max_connections and the file descriptors ---------------------
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
