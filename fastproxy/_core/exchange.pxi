# Included by proxy.pyx: Exchange, one proxied request and its response.

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
    cdef bint tunneling          # a 101 came: bytes flow both ways until both ends close
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
        """Tell the cluster's breaker how the request went (once; see docs/traffic.md)."""
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
        """Send the request again, preferably to another endpoint (docs/traffic.md)."""
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
        """Continue the incoming trace or start one; the lines for upstream."""
        cdef Worker w = self.w
        cdef TraceContext c
        if self.head is not None:
            read_trace_context(self.head, w.trace_families, &c)
        else:   # a refusal before any head was read: a trace of its own
            c.hi = c.lo = c.parent = 0
            c.sampled = -1
            c.source = TRACE_NONE
            c.tracestate_bytes = 0
            c.b3_single = False
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
        cdef bytes raw = h.raw if h is not None else b""   # a refusal has no head
        cdef const char* p = PyBytes_AS_STRING(raw)
        cdef Py_ssize_t method = 0, method_n = 0, target = 0, target_n = 0, auth = 0, auth_n = 0
        cdef bytes rid = self.rid_line
        if h is not None:
            method, method_n = h.start, h.method_end - h.start
            target, target_n = h.target_start, h.target_end - h.target_start
            auth, auth_n = h.authority_start, h.authority_end - h.authority_start
        self.w.log.line(
            unix_time() - (end - self.t0) * 1e-9, end - self.t0, self.ls.json_name,
            self.route.json_name if self.route is not None else None,
            p + method, method_n, p + target, target_n, p + auth, auth_n, status, self.bytes_in,
            self.bytes_out, self.cluster.json_name if self.cluster is not None else None,
            self.endpoint.json_label if self.endpoint is not None else None, self.peer,
            self.traced, self.trace_hi, self.trace_lo,
            PyBytes_AS_STRING(rid) + 14 if rid is not None else NULL,
            PyBytes_GET_SIZE(rid) - 16 if rid is not None else 0, error)

    cdef tuple record(self, int status, str error, int64_t end, int64_t over):
        """A fastproxy.observe.records.Record, as a plain tuple (same field order)."""
        cdef RequestHead h = self.head
        cdef bytes raw = h.raw if h is not None else None
        cdef double now = unix_time()
        cdef bytes rid = self.rid_line
        return (now - (end - self.t0) * 1e-9, now, self.ls.name, self.ls.direction,
                self.route.name if self.route is not None else None,
                self.cluster.name if self.cluster is not None else None,
                self.endpoint.label if self.endpoint is not None else None,
                h.method.decode("latin-1") if h is not None else "",
                raw[h.target_start:h.target_end].decode("latin-1") if h is not None else "",
                h.authority.decode("latin-1") if h is not None else "",
                status, error, self.bytes_in, self.bytes_out,
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
        cdef Admission slots = self.cluster.admission
        if not self.holds_slot:
            if slots.in_flight >= slots.max_connections:
                if len(slots.waiting) >= slots.max_pending:
                    self.reject(503, "overloaded", f"cluster {self.cluster.name}: "
                                f"{slots.in_flight} connections in use and "
                                f"{len(slots.waiting)} requests waiting")
                    return
                self.waiting_slot = True
                if not self.t_up:
                    self.t_dial = monotonic_ns()
                slots.waiting.append(self)
                return
            self.holds_slot = True
            slots.in_flight += 1
        self.connect_endpoint()

    cdef void release_slot(self):
        if self.waiting_slot:
            self.waiting_slot = False
            try:
                self.cluster.admission.waiting.remove(self)
            except ValueError:
                pass
        if self.holds_slot:
            self.holds_slot = False
            self.cluster.admission.release()

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
        """The upstream TLS handshake or the server's identity check failed (docs/identity.md)."""
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
            # on it. Send again, once, on a fresh connection (docs/http.md).
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
        self.tunneling = True
        pending = down.become_tunnel()   # bytes the client sent after its request head
        self.tunnel_to_client(_slice(data, 0, _len(data)))
        if pending is not None:
            self.tunnel_to_upstream(pending)

    cdef void tunnel_to_upstream(self, object data):
        if self.up is not None:
            self.up.transport.write(data)
            self.down.touch()

    cdef void tunnel_to_client(self, object data):
        if self.down is not None:
            self.down.write(data)
            self.down.touch()

    cdef void upstream_blocked(self, bint blocked):
        """The upstream connection's write buffer filled up (or drained): stop (or go on)
        reading the client."""
        if self.down is not None:
            if blocked:
                self.down.pause(P_UPSTREAM)
            else:
                self.down.resume(P_UPSTREAM)

    cdef bint tunnel_eof(self, bint from_client):
        """One side of the tunnel finished sending: pass the half-close on; when both
        sides have finished, close both connections. True keeps the transport open."""
        self.tunnel_eofs += 1
        if self.tunnel_eofs >= 2:
            self.tunnel_close()
            return False
        if self.up is not None and self.down is not None:
            if not from_client and self.down.close_write():
                return True
            if from_client and self.up.transport.can_write_eof():
                self.up.transport.write_eof()
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


cdef void report_refusal(Downstream down, int status, str reason, bytes rid, Py_ssize_t sent):
    """A request refused before it became an exchange (malformed, too large, too slow):
    reported as an exchange with no head, route or cluster, so that one writer counts,
    logs and records every outcome."""
    cdef Exchange ex = Exchange.__new__(Exchange)
    ex.t0 = monotonic_ns()
    ex.w = down.w
    ex.ls = down.ls
    ex.peer = down.peer_id
    ex.rid_line = rid
    ex.bytes_out = sent
    ex.report(status, reason)
