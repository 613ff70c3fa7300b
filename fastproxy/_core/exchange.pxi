# Included by proxy.pyx: Exchange, one proxied request and its response, from routing to
# the report. It owns the policy and no byte format: it talks to a ClientSide and an
# UpstreamSide (sides.pxi), which own the framing.

cdef enum:
    R_HEAD = 0        # waiting for the response head
    R_BODY = 1        # streaming the response body (or a tunnel)
    R_DONE = 2
    # a stream an HTTP/2 upstream refused never reached the application: sent again on a
    # new connection this many times at most (a server that drains its connections one
    # answered stream at a time may refuse the same stream more than once; Go's client
    # allows six attempts)
    MAX_REFUSED_RESENDS = 5

@cython.final
@cython.freelist(64)
cdef class Exchange:
    """One proxied request and its response.

    Its phases, top to bottom: `start` (authorize, route, split and breaker, the head
    edit, the body, connect), `connect`/`attach` (cluster slot, endpoint, pooled or new
    connection), the request body (`request_data`), the response (`response_head`,
    `response_data`), then `finish`, or `reject`/`upstream_failed`, and `report`.
    """
    cdef ClientSide client
    cdef Worker w
    cdef RequestHead head
    cdef Route route
    cdef Cluster cluster
    cdef Endpoint endpoint
    cdef UpstreamSide up
    cdef HeadEdit edit           # how the request head changes on its way upstream
    cdef bytes rid_line          # b"x-request-id: ...\r\n" for the response
    cdef list queued            # body bytes for an upstream that is connecting
    cdef Py_ssize_t queued_bytes
    cdef list replay            # the body sent upstream, while it is small enough to resend
    cdef Py_ssize_t replay_bytes
    cdef bint replay_lost       # more was sent than is kept: no resend possible
    cdef list req_trailers      # a BODY_STREAM request's trailers, once they came
    cdef readonly bint req_done  # the whole request body came from the client
    cdef int status              # the final response status, once its head came
    cdef int rstate
    cdef bint resp_started      # a response head went to the client
    cdef bint got_response_bytes
    cdef int resends             # sent again because it never reached the application
    cdef bint reused
    cdef bint connecting
    cdef set tried
    cdef int tunnel_eofs
    cdef bint tunneling          # a 101 came: bytes flow both ways until both ends close
    cdef int gate                # the breaker's answer: PASS or PROBE (REJECT never gets here)
    cdef str connect_error
    cdef bint holds_slot         # counts in its cluster's in_flight
    cdef bint waiting_slot       # waiting in its cluster's queue for a connection slot
    cdef int retries_done
    cdef bint replay_on_attach   # a retry: send the head and the kept body again
    cdef bint judged             # the outcome went to the breaker
    cdef bint grpc               # a gRPC request (SPEC §12): statuses in grpc-status
    cdef bint h2                 # the client spoke HTTP/2 (the access log's protocol)
    cdef int grpc_status         # the response's grpc-status, -1 until known
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
    cdef long long bytes_in      # body bytes, framing excluded
    cdef long long bytes_out
    cdef bint traced
    cdef bint sampled
    cdef bint keep_tracestate    # continuing a W3C context: its tracestate goes on
    cdef uint64_t trace_hi, trace_lo, span_id, parent_id

    cdef void init(self, ClientSide client, RequestHead head):
        """A request head is complete (before `start`)."""
        self.t0 = monotonic_ns()
        self.client = client
        self.ls = client.ls
        self.peer = client.peer_id
        self.w = client.w
        self.head = head
        self.req_done = head.framing == BODY_NONE
        self.grpc = client.grpc
        self.grpc_status = -1
        self.h2 = client.h2

    # -- the phases of a request -------------------------------------------------------------
    cdef void start(self):
        """Authorize and route the request, pick its cluster, then send it on its way."""
        cdef ClientSide client = self.client
        cdef RequestHead h = self.head
        cdef Route route = self.ls.route_for(h, client)
        self.route = route
        if route is not None:
            self.cluster = route.cluster
        if client.forbidden(route):
            log.info("listener %s: peer %s forbidden (route %s)", self.ls.name, client.peer_id,
                     route.name if route is not None else "-")
            self.reject(403, "forbidden", f"peer {client.peer_id} is not allowed here")
            return
        if route is None:
            self.reject(404, "no_route", "no route matches " + h.authority.decode("latin-1")
                        + h.path.decode("latin-1"))
            return
        client.arm_deadline(self.deadline(route))
        if not self.choose_cluster():
            return
        self.edit = self.edit_request()
        client.begin_body()        # the body that came with the head; 100 Continue
        if self.rstate != R_DONE:  # (a malformed body is answered with 400 there)
            self.connect()

    cdef double deadline(self, Route route):
        """The route's timeout, capped by a gRPC client's grpc-timeout."""
        cdef bytes value
        cdef double t
        if self.grpc:
            value = self.head.get(b"grpc-timeout")
            if value is not None and 2 <= len(value) <= 9 and value[:-1].isdigit():
                t = int(value[:-1]) * GRPC_UNITS.get(value[-1:], 0.0)
                if 0 < t < route.timeout:
                    return t
        return route.timeout

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

    # -- the request -------------------------------------------------------------------------
    cdef HeadEdit edit_request(self):
        """What changes in the request head going upstream: hop-by-hop fields out,
        x-forwarded-*, x-request-id and the trace context ours (docs/http.md)."""
        cdef RequestHead h = self.head
        cdef ClientSide client = self.client
        cdef HeadEdit e = new_edit(REQUEST_HOP_BY_HOP)
        cdef int families = self.w.trace_families
        cdef bytes trace = self.trace() if families else None
        cdef Field* f
        if not h.upgrade:
            e.drop |= _kinds(H_UPGRADE)
        if h.expect_continue:       # we answer it (100 Continue); the upstream gets the body
            e.drop |= _kinds(H_EXPECT)
        if families & PROPAGATE_W3C:
            e.drop |= _kinds(H_TRACEPARENT) if self.keep_tracestate else \
                _kinds(H_TRACEPARENT, H_TRACESTATE)
        if families & PROPAGATE_B3:
            e.drop |= B3_FIELDS
        e.append_field = h.xff_field
        if h.xff_field >= 0:
            e.append = b", " + client.client_ip
        if h.host_field < 0:
            e.authority = h.authority if h.absolute_form else self.cluster.default_host
        e.lines = [client.forwarded_lines if h.xff_field < 0 else client.proto_lines]
        if h.request_id_field >= 0:
            f = &h.fields[h.request_id_field]
            self.rid_line = b"x-request-id: " + h.raw[f.value_start:f.value_end] + CRLF
        else:
            self.rid_line = self.w.new_request_id_line()
            e.lines.append(self.rid_line)
        if trace is not None:
            e.lines.append(trace)
        return e

    cdef void request_data(self, object data, Py_ssize_t off, Py_ssize_t n, long long payload,
                           bint end):
        """From the client side: n request body bytes of data[off:] (payload of them data,
        the rest framing); end: the body is complete."""
        self.bytes_in += payload
        if end:
            self.req_done = True
        if n or end:
            self.send_upstream(_slice(data, off, off + n), end)

    cdef void request_trailers(self, list fields):
        """From the client side: a BODY_STREAM request's trailers; the request is complete."""
        self.req_done = True
        self.req_trailers = fields
        if self.up is not None:
            self.up.send_trailers(fields)

    cdef void send_upstream(self, bytes data, bint end):
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
            self.up.send_data(data, end)
        else:
            if self.queued is None:
                self.queued = []
            self.queued.append(data)
            self.queued_bytes += PyBytes_GET_SIZE(data)
            if self.queued_bytes > QUEUE_LIMIT:
                self.client.pause_body(P_QUEUE)

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
        cdef UpstreamSide up
        cdef int protocol
        if cl.original:
            ep = cl.original_endpoint(self.client.dest.forward_host, self.client.dest.port)
        else:
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
        protocol = self.upstream_protocol()
        up = ep.take_idle(protocol)
        if up is not None:
            self.attach(up, True)
            return
        self.connecting = True
        if not self.t_up:
            self.t_dial = monotonic_ns()
        open_upstream(self.w, cl, ep, self, protocol)

    cdef int upstream_protocol(self):
        """What to speak upstream (SPEC §12): the cluster's protocol; for auto, what ALPN
        settles on TLS, and on plain connections the protocol the client used."""
        cdef Cluster cl = self.cluster
        if cl.protocol != PROTO_AUTO or cl.tls_mode != TLS_OFF:
            return cl.protocol
        if self.endpoint is not None and self.endpoint.speaks_h1:
            return PROTO_HTTP1
        return PROTO_HTTP2 if self.client.h2 and not self.client.orig_h1 else PROTO_HTTP1

    cdef inline void dialed(self):
        """A connection attempt (or a wait for a slot of a busy cluster) ended: its time was
        the upstream side's, not the proxy's."""
        if self.t_dial:
            self.t_wait += monotonic_ns() - self.t_dial
            self.t_dial = 0

    cdef void attach(self, UpstreamSide up, bint reused):
        """A connection to the endpoint is ready: the request head goes, with the body
        bytes queued meanwhile (or, for a retry or a resend, all that was kept)."""
        cdef list body
        self.connecting = False
        if not reused:
            self.dialed()
        self.up = up
        self.reused = reused
        up.ex = self
        self.endpoint.active += 1
        body = self.queued
        self.queued = None
        self.queued_bytes = 0
        if self.replay_on_attach:
            if self.replay_lost:    # never send a head with part of its body missing
                self.drop_upstream()
                self.upstream_failed(502, "upstream_reset", "the request body could not be sent again")
                return
            body = self.replay
        up.send_request(self.head, self.edit, body, self.req_done and self.req_trailers is None)
        if self.req_trailers is not None and self.up is up:
            up.send_trailers(self.req_trailers)
        if not self.t_up:
            self.t_up = monotonic_ns()
        self.client.resume_body(P_QUEUE)
        if self.client.write_blocked:
            up.pause_reading()

    cdef void tls_failed(self, Endpoint ep, str why):
        """The upstream TLS handshake or the server's identity check failed (docs/identity.md)."""
        self.connecting = False
        self.dialed()
        if self.client is None or self.rstate == R_DONE:
            return
        log.warning("cluster %s: TLS with %s:%d failed: %s", self.cluster.name, ep.host, ep.port, why)
        self.judge(True)
        self.reject(503, "upstream_tls", f"TLS with {ep.host}:{ep.port} failed: {why}")

    cdef void connect_failed(self, Endpoint ep, str why):
        """A new connection could not be made: try another endpoint, then give up."""
        self.connecting = False
        self.dialed()
        if self.client is None or self.rstate == R_DONE:
            return
        if self.tried is None:
            self.tried = set()
        self.tried.add(ep)
        self.connect_error = why
        self.cluster.endpoint_outcome(ep, True, monotonic_ms())
        self.connect_endpoint()   # another endpoint, or 503 connect_failed when none is left


    # -- the response ------------------------------------------------------------------------
    cdef void response_arriving(self):
        """From the upstream side: bytes of a response head came."""
        if not self.t_rin:
            self.t_rin = monotonic_ns()
        self.got_response_bytes = True

    cdef void informational(self, ResponseHead rh, bint more):
        """A 1xx head (not 101): relayed. Waiting for the final response (and for the
        client's body after a 100) is not the proxy's time; more: its bytes came too."""
        if self.client is not None:
            self.client.send_informational(rh)
        self.t_rin = monotonic_ns() if more else 0

    cdef void response_head(self, ResponseHead rh, object data, Py_ssize_t off, Py_ssize_t n,
                            bint end):
        """The final response head, with the first n body bytes of data[off:] (data, no
        framing); end: that is the whole response. A 5xx may be retried instead."""
        cdef int status = rh.status
        cdef HeadEdit e
        cdef bytes grpc_status
        if status >= 500 and (self.may_retry(RETRY_5XX) or (
                (status == 502 or status == 503 or status == 504) and self.may_retry(RETRY_GATEWAY))):
            self.retry(f"upstream answered {status}")
            return
        if self.grpc and status == 200:
            grpc_status = rh.get(b"grpc-status")   # trailers-only: the status is in the head
            if grpc_status is not None:
                self.grpc_status = parse_grpc_status(grpc_status)
                if self.may_retry(GRPC_RETRY.get(self.grpc_status, 0)):
                    self.retry(f"upstream answered grpc-status {self.grpc_status}")
                    return
                self.judge(self.grpc_status in GRPC_FAILURES)
            # else the status comes in the trailers: judged then
        else:
            self.judge(status >= 500)
        self.status = status
        e = self.w.response_edit    # the same for every response: a copy per one is waste
        if rh.request_id_field < 0:
            e.lines = self.w.rid_lines
            e.lines[0] = self.rid_line
        else:
            e.lines = None
        self.rstate = R_BODY
        self.resp_started = True
        self.bytes_out += n
        self.client.send_response(rh, e, data, off, n, end)
        if end:
            self.finish()
        elif self.rstate == R_BODY:
            self.t_rout = monotonic_ns()

    cdef void response_data(self, object data, Py_ssize_t off, Py_ssize_t n, long long payload,
                            bint end):
        """From the upstream side: n more response body bytes of data[off:] (payload of
        them data); end: the response is complete."""
        self.bytes_out += payload
        self.client.send_data(data, off, n, end)
        if end:
            self.finish()

    cdef void response_trailers(self, list fields):
        """From the upstream side: a BODY_STREAM response's trailers, which complete it."""
        if self.grpc:
            for name, value in fields:
                if name == b"grpc-status":
                    self.grpc_status = parse_grpc_status(value)
            self.judge(self.grpc_status in GRPC_FAILURES)
        if self.client is not None:
            self.client.send_trailers(fields)
        self.finish()

    cdef void finish(self):
        """The response is complete: pool the upstream connection, free the client."""
        cdef UpstreamSide up = self.up
        cdef ClientSide client = self.client
        self.judge(False)        # a gRPC response that ended without trailers
        self.report(self.status, None)
        self.rstate = R_DONE
        if up is not None:
            self.up = None
            up.ex = None
            self.endpoint.active -= 1
            up.release(self.req_done)
        self.release_slot()   # after pooling: a waiting request takes this very connection
        if client is not None:
            self.client = None
            client.done()

    # -- failures ----------------------------------------------------------------------------
    cdef void reject(self, int status, str reason, str detail):
        """Answer with a proxy-generated error (before any response byte went out)."""
        cdef ClientSide client = self.client
        self.rstate = R_DONE
        self.abandon()   # no outcome for the breaker: a granted probe goes back
        self.drop_upstream()
        self.release_slot()
        if client is None:
            return
        self.client = None
        if self.grpc:
            self.grpc_status = GRPC_STATUS_OF.get(status, 2)
        if self.rid_line is None:
            rid = self.head.get(b"x-request-id")
            self.rid_line = b"x-request-id: " + rid + CRLF if rid else self.w.new_request_id_line()
        self.bytes_out = client.local_reply(status, reason, detail, self.rid_line)
        self.report(status, reason)
        client.done()

    cdef void upstream_failed(self, int status, str reason, str detail):
        """The upstream failed: an error response, or a truncated one once the head went out."""
        cdef ClientSide client = self.client
        self.judge(True)
        if self.resp_started:
            self.report(self.status, reason)   # truncated: the client saw this status
            self.rstate = R_DONE
            self.drop_upstream()
            self.release_slot()
            if client is not None:
                self.client = None
                client.abort()
            return
        self.reject(status, reason, detail)

    cdef void drop_upstream(self):
        cdef UpstreamSide up = self.up
        if up is not None:
            self.up = None
            up.ex = None
            self.endpoint.active -= 1
            up.reset()

    cdef void upstream_closed(self, str why, bint tls):
        """From the upstream side: its connection ended (EOF, reset, TLS alert) before the
        response was complete."""
        if tls and self.rstate == R_HEAD and not self.got_response_bytes:
            # the server refused our certificate: TLS 1.3 ends the client's handshake before
            # the server has checked it, so its alert arrives on the first read
            self.drop_upstream()
            self.tls_failed(self.endpoint, why)
            return
        if self.rstate == R_HEAD and not self.got_response_bytes and self.reused \
                and self.up.close_may_be_race() and self.resends == 0 and not self.replay_lost:
            # the keep-alive race: the upstream closed an idle connection just as we sent
            # on it. Send again, once, on a fresh connection (docs/http.md). A body still
            # arriving goes along as long as all of it is kept: the fresh connection gets
            # it whole, or (past REPLAY_LIMIT) nothing at all, never a part (attach).
            self.resend()
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

    cdef void resend(self):
        """Send the request again on a fresh connection to the same endpoint: it never
        reached the application (outside `retries`, docs/http.md)."""
        self.drop_upstream()
        self.resends += 1
        self.replay_on_attach = True
        self.connecting = True
        open_upstream(self.w, self.cluster, self.endpoint, self, self.upstream_protocol())

    cdef void upstream_refused(self):
        """From an HTTP/2 upstream side: the server refused the stream (REFUSED_STREAM, or
        above a GOAWAY's last stream): it never reached the application."""
        if self.rstate == R_HEAD and not self.got_response_bytes \
                and self.resends < MAX_REFUSED_RESENDS and not self.replay_lost:
            self.resend()
        else:
            self.upstream_closed("refused the stream", False)

    cdef void timed_out(self):
        """From the client side: the route's timeout passed."""
        if self.waiting_slot:   # still waiting for a connection slot: the upstream never saw it
            self.reject(504, "upstream_timeout", f"no connection of cluster {self.cluster.name} "
                        f"became free within the route timeout ({self.route.timeout:g}s)")
            return
        self.upstream_failed(504, "upstream_timeout",
                             f"no complete response within the route timeout ({self.route.timeout:g}s)")

    cdef void client_gone(self):
        """From the client side: the client went away; abandon the upstream side too."""
        self.report(self.status_sent(), None)
        self.abandon()
        self.client = None
        self.rstate = R_DONE
        self.drop_upstream()
        self.release_slot()

    # -- backpressure ------------------------------------------------------------------------
    cdef void client_blocked(self, bint blocked):
        """From the client side: it stopped (or went on) taking response bytes."""
        if self.up is not None:
            if blocked:
                self.up.pause_reading()
            else:
                self.up.resume_reading()

    cdef void upstream_blocked(self, bint blocked):
        """From the upstream side: it stopped (or went on) taking request bytes."""
        if self.client is not None:
            if blocked:
                self.client.pause_body(P_UPSTREAM)
            else:
                self.client.resume_body(P_UPSTREAM)

    # -- Upgrade tunnels ---------------------------------------------------------------------
    cdef void switching_protocols(self, ResponseHead rh, object data):
        """A 101 came (data starts with its head): from now on bytes flow both ways."""
        cdef ClientSide client = self.client
        if not self.head.upgrade:
            self.upstream_failed(502, "bad_gateway", "101 response to a request without Upgrade")
            return
        self.judge(False)
        self.status = 101
        self.resp_started = True
        self.t_rout = monotonic_ns()
        self.rstate = R_BODY
        self.tunneling = True
        pending = client.tunnel_open()   # bytes the client sent after its request head
        client.tunnel_write(_slice(data, 0, _len(data)))
        if pending is not None:
            self.tunnel_to_upstream(pending)

    cdef void tunnel_to_upstream(self, object data):
        if self.up is not None:
            self.up.tunnel_write(data)

    cdef void tunnel_to_client(self, object data):
        if self.client is not None:
            self.client.tunnel_write(data)

    cdef bint tunnel_eof(self, bint from_client):
        """One side of the tunnel finished sending: pass the half-close on; when both
        sides have finished, close both connections. True keeps the transport open."""
        self.tunnel_eofs += 1
        if self.tunnel_eofs >= 2:
            self.tunnel_close()
            return False
        if self.up is not None and self.client is not None:
            if not from_client and self.client.tunnel_write_eof():
                return True
            if from_client and self.up.tunnel_write_eof():
                return True
        self.tunnel_close()
        return False

    cdef void tunnel_close(self):
        cdef ClientSide client = self.client
        self.report(101, None)
        self.drop_upstream()
        self.release_slot()
        if client is not None:
            self.client = None
            client.abort()

    # -- the report ----------------------------------------------------------------------------
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
        return self.status if self.resp_started else 499

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
                          status, end - self.t0, over, self.grpc_status if self.grpc else -2)
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
            PyBytes_GET_SIZE(rid) - 16 if rid is not None else 0, error, self.h2,
            self.grpc_status if self.grpc else -2, self.original_destination())

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
                over * 1e-9, "HTTP/2" if self.h2 else "HTTP/1.1",
                (self.grpc_status if self.grpc_status >= 0 else None) if self.grpc else None,
                self.original_destination())

    cdef str original_destination(self):
        """A transparent listener's request: where its connection was going, else None."""
        cdef ClientSide c = self.client
        return None if c is None or c.dest is None else c.dest.text



# gRPC (SPEC §12): grpc-timeout units; the statuses that count as failures (as a 5xx
# does); the retry_on bit of each status retried; the proxy's statuses as gRPC ones
cdef dict GRPC_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
cdef frozenset GRPC_FAILURES = frozenset((2, 4, 13, 14, 15))
cdef dict GRPC_RETRY = {1: RETRY_GRPC_CANCELLED, 4: RETRY_GRPC_DEADLINE, 8: RETRY_GRPC_EXHAUSTED,
                        13: RETRY_GRPC_INTERNAL, 14: RETRY_GRPC_UNAVAILABLE}
cdef dict GRPC_STATUS_OF = {400: 13, 431: 8, 403: 7, 404: 12, 501: 12, 502: 14, 503: 14, 504: 4}


cdef int parse_grpc_status(bytes value):
    """grpc-status as a number; 2 (UNKNOWN) when it is not one."""
    if 1 <= len(value) <= 2 and value.isdigit():
        return int(value)
    return 2

cdef void report_refusal(ClientSide down, int status, str reason, bytes rid, Py_ssize_t sent):
    """A request refused before it became an exchange (malformed, too large, too slow):
    reported as an exchange with no head, route or cluster, so that one writer counts,
    logs and records every outcome."""
    cdef Exchange ex = Exchange.__new__(Exchange)
    ex.t0 = monotonic_ns()
    ex.w = down.w
    ex.ls = down.ls
    ex.peer = down.peer_id
    ex.h2 = down.h2
    ex.grpc = down.grpc
    ex.grpc_status = GRPC_STATUS_OF.get(status, 2)
    ex.rid_line = rid
    ex.bytes_out = sent
    ex.report(status, reason)
