# Included by proxy.pyx: Upstream, a pooled HTTP/1.1 upstream connection and the upstream
# side of its exchange (request heads out, responses parsed and framed), and _Connect, one
# new connection attempt (TCP, then TLS for tls/mtls clusters).

# -- upstream side -------------------------------------------------------------------------

@cython.final
cdef class Upstream(UpstreamSide):
    """A connection to one endpoint, and the upstream side of the one exchange it serves
    at a time (pooled in between): writes request heads, parses and frames responses."""
    cdef Worker w
    cdef object transport
    cdef object _write
    cdef Cluster cl
    cdef str tls_error           # why the server's identity was refused
    cdef ResponseHead resp
    cdef bint reusable
    cdef double deadline
    cdef object timer
    cdef bint counted            # its socket is counted in Worker.sockets
    cdef bint reading_paused     # the client is not taking the response: not read
    # the response in flight
    cdef bint head_request       # a response to HEAD has no body
    cdef bint chunk_request      # a BODY_STREAM request body: we write its chunked framing
    cdef object pending          # a response head's first part
    cdef bint in_body            # the final head came: body bytes follow
    cdef int framing
    cdef long long remaining
    cdef ChunkedReader chunks

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
        cdef Exchange ex = self.ex
        if ex is None:
            self.close()  # bytes nobody asked for: the connection cannot be trusted
        elif ex.tunneling:
            ex.tunnel_to_client(data)
        elif self.in_body:
            self.response_body(ex, data, 0)
        else:
            self.response_head(ex, data)

    def eof_received(self):
        if self.ex is not None and self.ex.tunneling:
            return self.ex.tunnel_eof(False)
        self.lost("closed the connection")
        return False

    def connection_lost(self, exc):
        if isinstance(exc, TLSError):
            self.lost("TLS alert: " + exc.reason, True)
        else:
            self.lost("reset the connection" if exc is not None else "closed the connection")

    def pause_writing(self):
        if self.ex is not None:
            self.ex.upstream_blocked(True)

    def resume_writing(self):
        if self.ex is not None:
            self.ex.upstream_blocked(False)

    # -- the upstream side of the exchange (UpstreamSide, sides.pxi) --------------------------
    cdef void send_request(self, RequestHead h, HeadEdit edit, list body, bint end):
        cdef list parts
        cdef bytes head = self.request_head(h, edit)
        self.head_request = h.method_end - h.start == 4 and \
            memcmp(PyBytes_AS_STRING(h.raw) + h.start, b"HEAD", 4) == 0
        self.chunk_request = h.framing == BODY_STREAM
        self.resp.reset()
        self.pending = None
        self.in_body = False
        if self.chunk_request:
            parts = [head]
            for data in body or ():
                if PyBytes_GET_SIZE(data):
                    parts.append(chunk(data))
            if end:
                parts.append(b"0\r\n\r\n")
            self._write(b"".join(parts))
        elif not body:
            self._write(head)
        else:
            parts = [head]
            parts.extend(body)
            self._write(b"".join(parts))

    cdef bytes request_head(self, RequestHead h, HeadEdit edit):
        """The head as HTTP/1.1 bytes: received lines kept as they came, ours appended."""
        cdef bytes raw = h.raw
        cdef HeadWriter hw = self.w.hw
        cdef Field* f
        cdef int i
        hw.reset()
        # request line: as received unless it must become origin-form HTTP/1.1
        if h.absolute_form or h.version == 10:
            target = raw[h.path_start:h.target_end]
            if not target.startswith(b"/") and target != b"*":
                target = b"/" + target
            hw.extra(raw[h.start:h.method_end] + b" " + target + b" HTTP/1.1\r\n")
        else:
            hw.span(h.start, h.line_end)
        for i in range(h.nfields):
            f = &h.fields[i]
            if edit.keeps(f):
                if i == edit.append_field:
                    hw.extra(raw[f.line_start:f.value_end] + edit.append + CRLF)
                else:
                    hw.span(f.line_start, f.line_end)
        if edit.authority is not None:
            hw.extra(b"host: " + edit.authority + CRLF)
        for line in edit.lines:
            hw.extra(line)
        if h.framing == BODY_CHUNKED or h.framing == BODY_STREAM:
            hw.extra(b"transfer-encoding: chunked\r\n")
        if h.upgrade:
            hw.extra(b"connection: upgrade\r\n")
        hw.extra(CRLF)
        return hw.build(raw, NULL, 0)

    cdef void send_data(self, bytes data, bint end):
        if self.chunk_request:
            if PyBytes_GET_SIZE(data):
                data = chunk(data)
            if end:
                data += b"0\r\n\r\n"
        if PyBytes_GET_SIZE(data):
            self._write(data)

    cdef void send_trailers(self, list fields):
        if self.chunk_request:   # the trailer section of the chunked body (RFC 9112 §7.1.2)
            self._write(b"0\r\n" + b"".join([n + b": " + v + CRLF for n, v in fields]) + CRLF)

    cdef void pause_reading(self):
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    cdef void resume_reading(self):
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    cdef void release(self, bint request_complete):
        self.resume_reading()
        if self.reusable and self.resp.keep_alive and request_complete and not self.closed:
            self.ep.release(self, self.w.now())
        else:
            self.close()

    cdef void reset(self):
        self.reading_paused = False
        self.close()

    cdef void tunnel_write(self, object data):
        self._write(data)

    cdef bint tunnel_write_eof(self):
        if self.transport.can_write_eof():
            self.transport.write_eof()
            return True
        return False

    # -- the response ------------------------------------------------------------------------
    cdef void response_head(self, Exchange ex, object data):
        """Parse the response head (1xx heads are relayed and skipped), then hand it and
        the body bytes that came with it to the exchange."""
        cdef ResponseHead rh = self.resp
        cdef Py_ssize_t r, n, k
        ex.response_arriving()
        if self.pending is not None:
            self.pending += data
            data = self.pending
        while True:
            r = parse_response(rh, data, MAX_RESPONSE_HEAD, MAX_RESPONSE_FIELDS, self.head_request)
            if r == 0:
                if self.pending is None:
                    self.pending = bytearray(data)
                return
            self.pending = None
            if r < 0:
                ex.upstream_failed(502, "bad_gateway", "malformed response: " + rh.error_detail)
                return
            if rh.status >= 200 or rh.status == 101:
                break
            ex.informational(rh, r < _len(data))
            rh.reset()
            if r == _len(data):
                return
            data = data[r:]
        if rh.status == 101:
            self.reusable = False
            ex.switching_protocols(rh, data)
            return
        self.in_body = True
        self.framing = rh.framing
        self.remaining = rh.content_length
        n = _len(data) - r
        if rh.framing == BODY_NONE:
            if n > 0:
                self.reusable = False   # bytes after a body-less response
            ex.response_head(rh, None, 0, 0, True)
        elif rh.framing == BODY_LENGTH:
            k = n if n < self.remaining else <Py_ssize_t>self.remaining
            self.remaining -= k
            if self.remaining == 0 and k < n:
                self.reusable = False   # more than the response: not trustworthy
            ex.response_head(rh, data, r, k, self.remaining == 0)
        elif rh.framing == BODY_UNTIL_CLOSE:
            self.reusable = False
            ex.response_head(rh, data, r, n, False)
        else:
            if self.chunks is None:
                self.chunks = ChunkedReader()
            else:
                self.chunks.reset()
            ex.response_head(rh, None, 0, 0, False)
            if n > 0 and self.ex is ex:
                self.response_body(ex, data, r)

    cdef void response_body(self, Exchange ex, object data, Py_ssize_t off):
        cdef Py_ssize_t n = _len(data) - off, k
        cdef long long before
        if self.framing == BODY_LENGTH:
            k = n if n < self.remaining else <Py_ssize_t>self.remaining
            self.remaining -= k
            if self.remaining == 0 and k < n:
                self.reusable = False
            ex.response_data(data, off, k, k, self.remaining == 0)
        elif self.framing == BODY_CHUNKED:
            before = self.chunks.data_bytes
            k = self.chunks.feed(_ptr(data) + off, n, None)
            if k < 0:
                ex.upstream_failed(502, "bad_gateway", "malformed chunked response body")
                return
            if self.chunks.done and k < n:
                self.reusable = False
            ex.response_data(data, off, k, self.chunks.data_bytes - before, self.chunks.done)
        else:
            ex.response_data(data, off, n, n, False)

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
        if ex is None:
            return
        if ex.tunneling:
            ex.tunnel_close()
        elif self.in_body and self.framing == BODY_UNTIL_CLOSE:
            ex.response_data(None, 0, 0, 0, True)   # the close ends the body
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
    cluster the handshake; `connect_timeout` covers both. An HTTP/2 attempt serves the
    exchanges that wait for it meanwhile too (`waiting`), up to the streams it will carry."""
    cdef Worker w
    cdef Cluster cl
    cdef Endpoint ep
    cdef Exchange ex
    cdef int protocol        # PROTO_*: HTTP/1.1, HTTP/2, or what ALPN settles (auto, TLS)
    cdef list waiting        # HTTP/2: more exchanges for this connection
    cdef object timer
    cdef object fut          # the TCP connection
    cdef object link         # the TLSLink, once its TCP connection is made
    cdef bint over           # reported: later news of this attempt is ignored

    def upstream(self):
        if self.protocol == PROTO_HTTP2:
            return H2Upstream(self.w, self.cl, self.ep)
        return Upstream(self.w, self.cl, self.ep)

    def tls_link(self):
        """Protocol factory of a tls/mtls cluster's connection."""
        cdef Worker w = self.w
        cdef Cluster cl = self.cl
        self.link = TLSLink(w.client_tls(cl, self.protocol), self.upstream(), w.loop,
                            server_name=cl.sni or self.ep.host, on_handshake=self.handshake_done,
                            session_store=self.ep)
        if self.protocol == PROTO_AUTO:
            self.link.select_app = self.settled
        return self.link

    def settled(self, link):
        """ALPN chose (auto clusters): the protocol that speaks it."""
        if link.selected_alpn_protocol() == "h2":
            self.protocol = PROTO_HTTP2
            self.ep.h2_connecting = self
            return H2Upstream(self.w, self.cl, self.ep)
        self.protocol = PROTO_HTTP1
        return link.app

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
            self.failed(False, "connect timeout")
            return
        exc = fut.exception()
        if exc is not None:
            self.end()
            self.failed(False, exc.strerror if isinstance(exc, OSError) and exc.strerror
                        else str(exc) or type(exc).__name__)
            return
        if self.link is None:
            self.end()
            self.connected(fut.result()[1])
        # TLS: handshake_done follows

    def handshake_done(self, link, exc):
        if self.over:
            return
        self.end()
        if exc is None:
            self.connected(link.app)
        elif isinstance(exc, TLSError):
            self.failed(True, exc.reason)
        else:   # the server closed or reset the connection instead of answering
            self.failed(True, (str(exc) or type(exc).__name__) + ": is it a TLS server?")

    cdef void end(self):
        """The attempt's outcome is known: it is reported once, and the timer stops."""
        self.over = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.ep.h2_connecting is self:
            self.ep.h2_connecting = None

    cdef list exchanges(self):
        """The exchanges still waiting for this connection."""
        cdef Exchange ex
        return [ex for ex in [self.ex] + (self.waiting or [])
                if ex.client is not None and ex.rstate != R_DONE and ex.connecting]

    cdef void failed(self, bint tls, str why):
        cdef Exchange ex
        for ex in self.exchanges():
            if tls:
                ex.tls_failed(self.ep, why)
            else:
                ex.connect_failed(self.ep, why)

    cdef void connected(self, object app):
        cdef Exchange ex
        cdef Upstream up
        cdef H2Upstream h2
        if isinstance(app, H2Upstream):
            h2 = <H2Upstream>app
            if h2.tls_error is not None:
                self.failed(True, h2.tls_error)
                return
            for ex in self.exchanges():
                if h2.can_take():
                    ex.attach(h2.take(), False)
                else:                   # more waited than the server takes at once
                    open_upstream(self.w, self.cl, self.ep, ex, PROTO_HTTP2)
            if not h2.calls and not h2.reserved:
                h2.call_ended(None)     # nobody came: idle until idle_timeout
            return
        up = <Upstream>app
        ex = self.ex
        if up.tls_error is not None:
            ex.tls_failed(self.ep, up.tls_error)
            return
        for other in self.waiting or ():  # auto: hoped for HTTP/2, got HTTP/1.1
            open_upstream(self.w, self.cl, self.ep, <Exchange>other, PROTO_HTTP1)
        if ex.client is None or ex.rstate == R_DONE or not ex.connecting:
            # the exchange ended meanwhile (timeout, client gone): keep the connection
            self.ep.release(up, self.w.now())
            return
        ex.attach(up, False)


cdef void open_upstream(Worker w, Cluster cl, Endpoint ep, Exchange ex, int protocol):
    """A new connection for ex (PROTO_*: what it should speak); an HTTP/2 one already on
    its way takes ex along instead when it has room."""
    cdef _Connect c = ep.h2_connecting
    if protocol != PROTO_HTTP1 and c is not None and len(c.waiting or ()) < 99:
        if c.waiting is None:
            c.waiting = []
        c.waiting.append(ex)
        return
    c = _Connect()
    c.w = w
    c.cl = cl
    c.ep = ep
    c.ex = ex
    c.protocol = protocol
    if protocol == PROTO_HTTP2:
        ep.h2_connecting = c
    factory = c.tls_link if cl.tls_mode != TLS_OFF else c.upstream
    c.fut = asyncio.ensure_future(w.loop.create_connection(factory, ep.host, ep.port), loop=w.loop)
    c.timer = w.loop.call_later(cl.connect_timeout, c.timed_out)
    c.fut.add_done_callback(c.done)
