# Included by proxy.pyx: upstream endpoints and clusters - the idle connection pool per
# endpoint, balancing, admission (max_connections, max_pending), outlier ejection.

cdef int MAX_ORIGINAL_ENDPOINTS = 4096
cdef dict LOOPBACK_OF = {4: "127.0.0.1", 6: "::1"}   # where an inbound original destination is


cdef class Endpoint:
    """One upstream address and its pool of idle keep-alive connections."""
    cdef readonly str host
    cdef readonly int port
    cdef readonly str label          # "host:port", "[v6]:port"
    cdef bytes json_label            # the label as a JSON string, for the access log
    cdef list idle
    cdef list h2conns                # H2Upstream: open HTTP/2 connections, shared by requests
    cdef object h2_connecting        # an _Connect making an HTTP/2 connection, with room for more
    cdef readonly int active
    cdef public double idle_timeout
    cdef readonly int consecutive_failures
    cdef readonly int ejections
    cdef int64_t ejected_until       # monotonic ms; 0 when not ejected
    cdef bint speaks_h1              # answered HTTP/1.1 to an h2c preface: auto speaks HTTP/1.1 to it
    cdef public object tls_session   # tls/mtls clusters: the session the next connection offers

    def __init__(self, str host, int port):
        self.host = host
        self.port = port
        self.label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.json_label = json_quoted(self.label)
        self.idle = []
        self.h2conns = []
        self.idle_timeout = 60.0

    @property
    def idle_count(self):
        return len(self.idle)

    @property
    def http2_count(self):
        """Open HTTP/2 connections (each may carry many requests)."""
        return len(self.h2conns)

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
                "ejections": self.ejections, "active": self.active, "idle": len(self.idle),
                "http2_connections": len(self.h2conns)}

    cdef UpstreamSide take_idle(self, int protocol):
        """A side ready to carry a request now, speaking `protocol` (PROTO_*; auto: either):
        a stream on an HTTP/2 connection with room, an idle pooled HTTP/1.1 connection, or
        None."""
        cdef UpstreamSide up
        cdef H2Upstream c
        if protocol != PROTO_HTTP1:
            for c in self.h2conns:
                if c.can_take():
                    return c.take()
            if protocol == PROTO_HTTP2:
                return None
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
        cdef UpstreamSide up
        cdef H2Upstream c
        for up in list(self.idle):
            up.reset()
        self.idle.clear()
        for c in list(self.h2conns):
            if not c.calls and not c.reserved:
                c.close()


cdef class Admission:
    """A cluster's upstream connection slots, per worker: `max_connections` in use at
    once, then up to `max_pending` requests waiting, first come first served. One per
    cluster name, carried across reloads, so requests of the old and the new
    configuration share the slots; a reload's new limits apply to the waiting ones."""
    cdef int max_connections
    cdef int max_pending
    cdef readonly int in_flight
    cdef list waiting                # Exchange

    def __init__(self):
        self.waiting = []

    cdef void set_limits(self, int max_connections, int max_pending):
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.admit()

    cdef void release(self):
        """An exchange stopped using its upstream connection."""
        self.in_flight -= 1
        self.admit()

    cdef void admit(self):
        """Let waiting exchanges in while slots are free."""
        cdef Exchange ex
        while self.waiting and self.in_flight < self.max_connections:
            ex = self.waiting.pop(0)
            if ex.waiting_slot:
                ex.waiting_slot = False
                ex.holds_slot = True
                self.in_flight += 1
                ex.dialed()         # the wait for a busy cluster is not the proxy's time
                ex.connect_endpoint()


cdef class Cluster:
    """One upstream service as one configuration snapshot describes it: its settings are
    fixed for the requests that started under it. What outlives a reload is carried to
    the next snapshot's Cluster of the same name: the endpoints (their pools, failures
    and ejections), the admission slots, the retry budget, the balancer's position."""
    cdef readonly str name
    cdef bytes json_name             # the name as a JSON string, for the access log
    cdef readonly list endpoints
    cdef Py_ssize_t rr
    cdef readonly double connect_timeout
    cdef readonly double idle_timeout
    cdef readonly tuple addresses    # as configured: ((host, port, is_ip), ...)
    cdef readonly bytes default_host
    cdef readonly int tls_mode
    cdef readonly int protocol       # PROTO_*
    cdef readonly str peer           # the SPIFFE id pattern an mtls server must present
    cdef readonly str sni            # server name for tls clusters (a configured DNS name)
    cdef readonly Breaker breaker    # None unless [cluster.X.circuit_breaker]
    cdef int balance                 # BALANCE_*
    cdef uint64_t rng                # xorshift state for random and least_request
    cdef int outlier_failures        # 0: no outlier detection
    cdef int64_t eject_ms
    cdef double max_ejected
    cdef readonly Admission admission
    cdef RetryBudget budget          # shared by the routes that set none of their own
    cdef readonly bint original      # original_destination: an endpoint per destination
    cdef dict by_address             # original_destination: (host, port) -> Endpoint

    def __init__(self, spec, Cluster previous, SharedCounters shared):
        """The cluster `spec` (a fastproxy.config.compile.ClusterSpec) describes, carrying
        the state of `previous` (None for a new name): the same cluster under the
        configuration before."""
        cdef Endpoint ep
        self.name = spec.name
        self.json_name = json_quoted(spec.name)
        self.connect_timeout = spec.connect_timeout
        self.idle_timeout = spec.idle_timeout
        self.addresses = spec.addresses
        self.default_host = spec.default_host
        self.tls_mode = spec.tls_mode
        self.protocol = spec.protocol
        self.peer = spec.peer
        self.sni = spec.sni
        self.balance = spec.balance
        self.outlier_failures = spec.outlier_failures
        self.eject_ms = spec.eject_ms
        self.max_ejected = spec.max_ejected
        self.breaker = make_breaker(shared, spec.name, spec.breaker) if spec.breaker else None
        self.original = spec.original
        self.by_address = previous.by_address if previous is not None and previous.original else {}
        if previous is None:
            self.endpoints = []
            self.admission = Admission()
            self.rng = int.from_bytes(os.urandom(8), "little") | 1
        else:
            self.admission = previous.admission
            self.rng = previous.rng
            self.rr = previous.rr
            if previous.tls_mode == self.tls_mode and previous.peer == self.peer \
                    and previous.sni == self.sni:
                self.endpoints = previous.endpoints
            else:   # pooled connections were made for other TLS settings: not reused
                self.endpoints = []
                for ep in previous.endpoints:
                    ep.close_idle()
        self.admission.set_limits(spec.max_connections, spec.max_pending)
        self.budget = make_budget(previous.budget if previous is not None else None, spec.budget)
        if not self.endpoints or previous.addresses != spec.addresses:
            self.set_endpoints([(host, port) for host, port, is_ip in spec.addresses if is_ip])
        else:   # the same endpoints: keep what DNS resolved too
            for ep in self.endpoints:
                ep.idle_timeout = self.idle_timeout

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

    cdef Endpoint original_endpoint(self, str host, int port):
        """original_destination: the endpoint of one destination, made on first use and kept
        with its pool (at most MAX_ORIGINAL_ENDPOINTS; past that the idle ones go)."""
        cdef Endpoint ep = self.by_address.get((host, port))
        if ep is None:
            if len(self.by_address) >= MAX_ORIGINAL_ENDPOINTS:
                for ep in self.by_address.values():
                    ep.close_idle()
                self.by_address = {k: e for k, e in self.by_address.items() if (<Endpoint>e).active}
            ep = self.by_address[host, port] = Endpoint(host, port)
            ep.idle_timeout = self.idle_timeout
        return ep

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

    cdef void endpoint_outcome(self, Endpoint ep, bint failure, int64_t now):
        """Outlier detection: eject an endpoint after consecutive failures (docs/traffic.md)."""
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
