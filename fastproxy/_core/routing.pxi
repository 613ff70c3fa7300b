# Included by proxy.pyx: the compiled configuration a request is matched against -
# Route (match keys, cluster or split, timeout, retries), ListenerState (limits, routes,
# identity checks, forwarded lines) and Port (what a listening socket serves).

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
    # transparent listeners: the original destination's network and port (0: any)
    cdef bint has_destination
    cdef object dest_network   # the network's address as an int, shifted by dest_shift
    cdef int dest_shift        # address bits outside the prefix
    cdef int dest_version
    cdef int dest_port

    cdef bint matches(self, RequestHead h, const char* p, ClientSide c):
        cdef Py_ssize_t n
        if self.has_destination:
            if c is None or c.dest is None or c.dest.version != self.dest_version \
                    or (self.dest_port and c.dest.port != self.dest_port) \
                    or c.dest.address >> self.dest_shift != self.dest_network:
                return False
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
    cdef bint http2             # HTTP/2 accepted: h2c prior knowledge, ALPN h2 on TLS
    cdef tuple h2_settings      # (max_concurrent_streams, stream_window, connection_window,
                                #  max_frame_size)
    cdef bint transparent       # connections redirected by iptables: their original destination
    cdef double detect_timeout  # transparent: no byte within it is a server-first protocol
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
            ps.grpc_prefix = b"fastproxy_grpc_requests_total\x1f" + labels + b"\x1f"
            ps.duration = table.slot(b"fastproxy_request_duration_seconds\x1f" + labels)
            self.pairs[cluster] = ps
            if self.overhead is NULL:
                self.overhead = table.slot(b"fastproxy_proxy_overhead_seconds\x1f" + self.name.encode())
        return ps

    def match(self, RequestHead h):
        """The name of the route a parsed request takes, or None (tests, benchmarks)."""
        cdef Route r = self.route_for(h, None)
        return None if r is None else r.name

    cdef Route route_for(self, RequestHead h, ClientSide c):
        cdef const char* p = PyBytes_AS_STRING(h.raw)
        cdef Route r
        for r in self.routes:
            if r.matches(h, p, c):
                return r
        return None


cdef Route compile_route(spec, dict clusters):
    """The route `spec` (a fastproxy.config.compile.RouteSpec) describes, over `clusters`."""
    cdef Route r = Route()
    r.name = spec.name
    r.json_name = json_quoted(spec.name)
    r.host = spec.host
    r.host_suffix = spec.host_suffix
    r.prefix = spec.prefix
    r.path = spec.path
    r.method = spec.method
    r.headers = spec.headers
    if spec.cluster is not None:
        r.cluster = clusters[spec.cluster]
    else:
        r.split = make_split([clusters[name] for name, _ in spec.split],
                             [weight for _, weight in spec.split])
    r.timeout = spec.timeout
    r.retries = spec.retries
    r.retry_on = spec.retry_on
    r.allow = spec.allow
    if spec.destination is not None:
        network, prefix, version, r.dest_port = spec.destination
        r.has_destination = True
        r.dest_version = version
        r.dest_shift = (32 if version == 4 else 128) - prefix
        r.dest_network = network >> r.dest_shift
    return r


cdef void count_request(MetricTable table, ListenerState ls, str cluster, int status,
                        int64_t duration_ns, int64_t overhead_ns, int grpc_status):
    """One request in fastproxy_requests_total and the two histograms, and a gRPC one
    (grpc_status -1: unknown, -2: not gRPC) in fastproxy_grpc_requests_total
    (docs/observability.md)."""
    cdef PairStats ps = ls.pair(table, cluster)
    cdef MetricSlot* slot = ps.code(table, status)
    if slot is not NULL:
        fp_addu(&slot.v[0], 1)
    if grpc_status != -2:
        slot = ps.grpc_code(table, grpc_status)
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
    cdef MetricSlot* plain           # a permissive listener's connections without TLS

    def __init__(self, str listener):
        self.listener = listener
