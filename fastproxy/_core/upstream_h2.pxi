# Included by proxy.pyx: the HTTP/2 upstream side. H2Upstream is one multiplexed
# connection to an endpoint (the client role of a Session); H2Call is one request on it,
# the UpstreamSide its Exchange talks to. An endpoint's HTTP/2 connections carry streams
# up to the server's SETTINGS_MAX_CONCURRENT_STREAMS, then another connection opens.
#
# A request head goes out as an HTTP/2 field list built from the RequestHead and its
# HeadEdit; its body in the framing the head names (chunked bodies from HTTP/1.1 clients
# are decoded). A response's field list becomes the ResponseHead every protocol's
# responses parse into (http2.response_head_bytes, then http1.parse_response); a body of
# unknown length is BODY_STREAM, and trailers go on as fields.

cdef class H2Connection(SessionHandler):
    """What the two HTTP/2 connection kinds share: frames queued by their session leave
    in one write at the end of the loop turn (Worker.flush_later)."""
    cdef Worker w
    cdef bint flush_queued

    cdef void flush(self):
        if not self.flush_queued:
            self.flush_queued = True
            self.w.flush_later(self)

    cdef void write_out(self):
        pass


@cython.final
cdef class H2Upstream(H2Connection):
    """A multiplexed HTTP/2 connection to one endpoint, and the asyncio protocol under it."""
    cdef Cluster cl
    cdef Endpoint ep
    cdef object transport
    cdef ClientSession session
    cdef dict calls              # stream id -> H2Call in flight
    cdef int reserved            # calls handed out, streams not yet opened
    cdef bint closed
    cdef bint counted
    cdef bint write_blocked
    cdef str tls_error
    cdef object timer
    cdef double idle_at
    cdef list heads_waiting      # calls whose response head waits for its first DATA

    def __init__(self, Worker w, Cluster cl, Endpoint ep):
        self.w = w
        self.cl = cl
        self.ep = ep
        self.calls = {}
        self.counted = True
        w.sockets += 1
        self.session = ClientSession(self, 65535, 16384, 1048576)

    def __dealloc__(self):
        if self.counted:
            self.w.sockets -= 1

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        if self.cl.tls_mode == TLS_MUTUAL:
            peer, why = self.w.identity.peer_id(transport, "server")
            if peer is None:
                self.tls_error = f"server certificate refused: {why}"
            elif not self.w.id_allowed((self.cl.peer,), peer):
                self.tls_error = f"server identity {peer} does not match peer {self.cl.peer}"
            if self.tls_error is not None:
                self.close()
                return
        self.ep.h2conns.append(self)
        self.write_out()               # the preface and our SETTINGS

    def data_received(self, data):
        cdef H2Call c
        if self.closed:
            return
        try:
            self.session.receive(data)
            if self.heads_waiting:    # no DATA came with them in these bytes: heads alone
                waiting = self.heads_waiting
                self.heads_waiting = None
                for c in waiting:
                    c.pass_head(None, False)
        except H2Error as e:
            if not self.session.settings_seen and data[:7] == b"HTTP/1." \
                    and self.cl.protocol == PROTO_AUTO:
                self.http1_server()
                return
            why = f"broke HTTP/2: {e}"
            if not self.session.settings_seen and data[:7] == b"HTTP/1.":
                why = "answered HTTP/1.1, not HTTP/2 (cluster protocol \"http1\" speaks it)"
            log.warning("cluster %s: %s %s", self.cl.name, self.ep.label, why)
            self.write_out()
            self.lost(why)
            self.close()
            return
        self.flush()

    cdef void http1_server(self):
        """An auto cluster's endpoint answered our h2c preface with HTTP/1.1: it speaks
        only that. Its requests here never reached the application (the preface came
        first): they are sent again over HTTP/1.1, which auto uses for it from now on."""
        cdef H2Call c
        if not self.ep.speaks_h1:
            log.info("cluster %s: %s answered HTTP/1.1 to HTTP/2 with prior knowledge: speaking "
                     "HTTP/1.1 to it", self.cl.name, self.ep.label)
        self.ep.speaks_h1 = True
        self.close()
        for c in list(self.calls.values()):
            c.was_reset(H2_REFUSED_STREAM)

    def eof_received(self):
        self.lost("closed the connection")
        return False

    def connection_lost(self, exc):
        if isinstance(exc, TLSError):
            self.lost("TLS alert: " + exc.reason, True)
        else:
            self.lost("reset the connection" if exc is not None else "closed the connection")

    def pause_writing(self):
        cdef H2Call c
        self.write_blocked = True
        for c in list(self.calls.values()):
            if c.ex is not None:
                c.ex.upstream_blocked(True)

    def resume_writing(self):
        cdef H2Call c
        self.write_blocked = False
        for c in list(self.calls.values()):
            if c.ex is not None and not self.session.waiting(c.sid):
                c.ex.upstream_blocked(False)

    # -- the pool --------------------------------------------------------------------------
    cdef bint can_take(self):
        """Another request may start on this connection now."""
        return not self.closed and self.session.started and not self.session.goaway_received \
            and len(self.calls) + self.reserved < self.session.peer_max_concurrent \
            and self.session.last_stream_id < 0x7FFFFFF0

    cdef H2Call take(self):
        cdef H2Call c = H2Call.__new__(H2Call)
        c.conn = self
        c.ep = self.ep
        c.resp = ResponseHead()
        self.reserved += 1
        self.idle_at = 0
        return c

    cdef void write_out(self):
        cdef bytes out = self.session.data_to_send()
        if PyBytes_GET_SIZE(out) and not self.closed:
            self.transport.write(out)

    cdef void call_ended(self, H2Call c):
        """A call is over (None: a new connection nobody took)."""
        if c is not None:
            self.calls.pop(c.sid, None)
        self.flush()
        if not self.calls and not self.reserved:
            if self.session.goaway_received:
                self.close()
            else:
                self.idle_at = self.w.now() + self.cl.idle_timeout
                if self.timer is None:
                    self.timer = self.w.loop.call_at(self.idle_at, self.on_idle_timer)

    def on_idle_timer(self):
        self.timer = None
        if self.closed or not self.idle_at:
            return
        if self.w.now() < self.idle_at:
            self.timer = self.w.loop.call_at(self.idle_at, self.on_idle_timer)
            return
        self.session.goaway(H2_NO_ERROR)
        self.write_out()
        self.close()

    cdef void lost(self, str why, bint tls=False):
        """The connection ended: every call in flight fails with it (and only those)."""
        cdef H2Call c
        if self.closed:
            return
        self.close()
        for c in list(self.calls.values()):
            c.closed = True
            if c.ex is not None:
                c.ex.upstream_closed(why, tls)
        self.calls.clear()

    cdef void close(self):
        if self.closed:
            return
        self.closed = True
        if self.counted:
            self.counted = False
            self.w.sockets -= 1
            if self.w.accept_paused:
                self.w.check_accepting()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        try:
            self.ep.h2conns.remove(self)
        except ValueError:
            pass
        if self.transport is not None:
            self.transport.close()

    # -- from the session (SessionHandler) ---------------------------------------------------
    cdef void on_response(self, uint32_t stream_id, list fields, bint end_stream):
        cdef H2Call c = self.calls.get(stream_id)
        if c is not None:
            c.response(fields, end_stream)

    cdef void on_data(self, uint32_t stream_id, bytes data, bint end_stream):
        cdef H2Call c = self.calls.get(stream_id)
        if c is None or c.ex is None:
            self.session.consumed(stream_id, PyBytes_GET_SIZE(data))
        else:
            c.data(data, end_stream)

    cdef void on_trailers(self, uint32_t stream_id, list fields):
        cdef H2Call c = self.calls.get(stream_id)
        if c is not None and c.ex is not None:
            c.trailers(fields)

    cdef void on_reset(self, uint32_t stream_id, uint32_t code):
        cdef H2Call c = self.calls.get(stream_id)
        if c is not None:
            c.was_reset(code)

    cdef void on_window(self, uint32_t stream_id):
        cdef H2Call c
        if stream_id == 0:
            for c in list(self.calls.values()):
                c.window_opened()
        else:
            c = self.calls.get(stream_id)
            if c is not None:
                c.window_opened()
        self.flush()

    cdef void on_goaway(self, uint32_t last_stream_id, uint32_t code):
        """Streams above last_stream_id never reached the application: sent again on a
        new connection (SPEC §12); those below finish."""
        cdef H2Call c
        for c in [c for sid, c in self.calls.items() if sid > last_stream_id]:
            c.was_reset(H2_REFUSED_STREAM)
        if not self.calls and not self.reserved:
            self.close()


@cython.final
cdef class H2Call(UpstreamSide):
    """One request on an H2Upstream, as its Exchange sees it."""
    cdef H2Upstream conn
    cdef uint32_t sid            # 0 until the stream opens
    cdef ResponseHead resp
    cdef bint head_request
    cdef bint responded          # the final response head came
    cdef ChunkedReader dechunker # a chunked request body from an HTTP/1.1 client
    cdef bint request_ended      # the request's end went (or waits in the session to go)
    cdef bint reading_paused     # the client is not taking the response: DATA not acknowledged
    cdef Py_ssize_t unacked
    cdef bint head_waiting       # the response head is kept for the DATA that follows it, so
                                 # that a small response leaves in one write with its head

    # -- the upstream side of the exchange (UpstreamSide, sides.pxi) --------------------------
    cdef void send_request(self, RequestHead h, HeadEdit edit, list body, bint end):
        cdef H2Upstream c = self.conn
        self.head_request = h.method_end - h.start == 4 and \
            memcmp(PyBytes_AS_STRING(h.raw) + h.start, b"HEAD", 4) == 0
        if h.framing == BODY_CHUNKED:
            self.dechunker = ChunkedReader()
        c.reserved -= 1
        if c.closed:                  # lost between take() and now
            self.closed = True
            self.ex.upstream_closed("closed the connection", False)
            return
        fields = request_fields(h, edit, c.cl.tls_mode != TLS_OFF)
        if (not self.ex.client.h2 or self.ex.client.orig_h1) and c.cl.tls_mode == TLS_MUTUAL:
            fields.append((ORIG_PROTO, b"HTTP/1.1"))   # the peer sidecar speaks it on (SPEC §12)
        self.sid = c.session.send_request(fields, end and not body)
        c.calls[self.sid] = self
        if end and not body:
            self.request_ended = True
        elif body:
            for i, data in enumerate(body):
                self.send_data(data, end and i == len(body) - 1)
        c.flush()

    cdef void send_data(self, bytes data, bint end):
        cdef list out
        if self.request_ended or self.closed:
            return
        if self.dechunker is not None:
            out = []
            self.dechunker.feed(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), out)
            data = b"".join(out)
            if end and self.dechunker.done:
                fields = kept_trailers(self.dechunker)
                if fields:            # the chunked body's trailers end the stream
                    self.write_body(data, False)
                    self.send_trailers(fields)
                    return
        self.write_body(data, end)
        self.conn.flush()

    cdef void write_body(self, bytes data, bint end):
        """Request body bytes: what the server's windows do not take waits in the
        session, and the client is not read meanwhile."""
        if end:
            self.request_ended = True
        if not self.conn.session.send_body(self.sid, data, end) and self.ex is not None:
            self.ex.upstream_blocked(True)

    cdef void window_opened(self):
        """The server opened a window (the session sent what it could)."""
        if self.ex is not None and not self.conn.write_blocked \
                and not self.conn.session.waiting(self.sid):
            self.ex.upstream_blocked(False)

    cdef void send_trailers(self, list fields):
        if self.request_ended or self.closed:
            return
        self.conn.session.send_trailers(self.sid, fields)
        self.request_ended = True
        self.conn.flush()

    cdef void pause_reading(self):
        self.reading_paused = True

    cdef void resume_reading(self):
        if self.reading_paused:
            self.reading_paused = False
            if self.unacked and not self.closed:
                self.conn.session.consumed(self.sid, self.unacked)
                self.unacked = 0
                self.conn.flush()

    cdef void release(self, bint request_complete):
        """The response is complete; a request still being sent is cut (RST_STREAM)."""
        self.end_call(H2_CANCEL if not self.request_ended else H2_NO_ERROR)

    cdef void reset(self):
        self.end_call(H2_CANCEL)

    cdef bint close_may_be_race(self):
        return False

    cdef void end_call(self, uint32_t code):
        cdef H2Upstream c = self.conn
        if self.closed:
            return
        self.closed = True
        if not self.sid:
            c.reserved -= 1           # never opened
            c.call_ended(self)
            return
        if self.sid in c.session.streams and (code != H2_NO_ERROR or not self.request_ended):
            c.session.reset_stream(self.sid, code)
        c.call_ended(self)

    # -- from the connection ----------------------------------------------------------------
    cdef void response(self, list fields, bint end):
        cdef Exchange ex = self.ex
        cdef ResponseHead rh = self.resp
        if ex is None:
            return
        ex.response_arriving()
        try:
            raw = response_head_bytes(fields)
        except MalformedMessage as e:
            ex.upstream_failed(502, "bad_gateway", f"malformed HTTP/2 response: {e}")
            return
        rh.reset()
        if parse_response(rh, raw, MAX_RESPONSE_HEAD, MAX_RESPONSE_FIELDS, self.head_request) < 0:
            ex.upstream_failed(502, "bad_gateway", "malformed response: " + rh.error_detail)
            return
        if rh.status < 200:
            if rh.status != 101:
                ex.informational(rh, False)
            return
        self.responded = True
        if end:
            rh.framing = BODY_NONE
            ex.response_head(rh, None, 0, 0, True)
            return
        if rh.framing != BODY_LENGTH and rh.framing != BODY_NONE:
            rh.framing = BODY_STREAM
        self.head_waiting = True
        if self.conn.heads_waiting is None:
            self.conn.heads_waiting = []
        self.conn.heads_waiting.append(self)

    cdef void pass_head(self, bytes data, bint end):
        """The response head goes to the exchange, with the first body bytes if they came."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data) if data is not None else 0
        if not self.head_waiting or self.ex is None:
            return
        self.head_waiting = False
        self.ex.response_head(self.resp, data, 0, n, end)

    cdef void data(self, bytes data, bint end):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if not self.responded:
            self.conn.session.consumed(self.sid, n)
            self.ex.upstream_failed(502, "bad_gateway", "DATA before the response head")
            return
        if self.head_waiting:
            self.pass_head(data, end)
        else:
            self.ex.response_data(data, 0, n, n, end)
        if self.closed:
            self.conn.session.consumed(self.sid, n)
        elif self.reading_paused:
            self.unacked += n
        else:
            self.conn.session.consumed(self.sid, n)

    cdef void trailers(self, list fields):
        try:
            fields = check_trailers(fields)
        except MalformedMessage as e:
            self.ex.upstream_failed(502, "bad_gateway", f"malformed HTTP/2 trailers: {e}")
            return
        self.pass_head(None, False)
        if self.ex is not None:
            self.ex.response_trailers(fields)

    cdef void was_reset(self, uint32_t code):
        """The server reset the stream (or a GOAWAY left it out)."""
        cdef Exchange ex = self.ex
        self.closed = True
        self.conn.calls.pop(self.sid, None)
        self.conn.call_ended(self)
        if ex is None:
            return
        if code == H2_REFUSED_STREAM:
            ex.upstream_refused()
        else:
            ex.upstream_closed(f"reset the stream (HTTP/2 error {code})", False)


cdef list request_fields(RequestHead h, HeadEdit edit, bint tls):
    """The request head as an HTTP/2 field list: the pseudo-headers, the kept fields with
    their names lowercased (Host becomes :authority), the proxy's own lines."""
    cdef bytes raw = h.raw
    cdef Field* f
    cdef int i
    cdef bytes authority = edit.authority if edit.authority is not None else h.authority
    cdef bytes path = raw[h.path_start if h.absolute_form else h.target_start:h.target_end]
    cdef bint te_trailers = False
    cdef list out = [(b":method", raw[h.start:h.method_end]),
                     (b":scheme", b"https" if tls else b"http"), (b":authority", authority),
                     (b":path", path if path[:1] == b"/" or path == b"*" else b"/" + path)]
    for i in range(h.nfields):
        f = &h.fields[i]
        if f.kind == H_TE and b"trailers" in raw[f.value_start:f.value_end]:
            te_trailers = True
    if te_trailers:                   # gRPC needs it; the only te HTTP/2 allows
        out.append((b"te", b"trailers"))
    return edit.fields(h, out, False)
