# Included by proxy.pyx: Downstream, an HTTP/1.1 client connection - parsing request
# heads, pipelining, timeouts, refusals - and the start of each exchange.

# -- client side ---------------------------------------------------------------------------

@cython.final
cdef class Downstream(ClientSide):
    """A client connection, and the client side of the one request it has in flight:
    parses its requests one at a time, reads their bodies, and answers them in order."""
    cdef str listener_name
    cdef object transport
    cdef object pending          # unparsed bytes: a partial head or pipelined requests
    cdef RequestHead head
    cdef Exchange ex
    cdef int state
    cdef int paused
    cdef int requests
    cdef bint processing         # inside feed(): a finished request must not recurse
    cdef bint client_eof         # the client half-closed: close once its requests are answered
    cdef double deadline
    cdef Py_ssize_t dropped      # S_LINGER: bytes read and dropped
    cdef bint tls                # the connection is TLS (a permissive listener takes both)
    cdef bint detecting          # transparent: the first bytes will tell HTTP from the rest
    cdef TcpRelay relay          # S_PASS: the connection to the original destination
    cdef object timer
    cdef double timer_at
    cdef object _write           # transport.write, looked up once
    cdef readonly Port port
    cdef bint made               # connection_made came (for TLS: the handshake succeeded)
    cdef bint admitted           # holds one of the worker's max_connections slots
    cdef bint counted            # its socket is counted in Worker.sockets
    cdef MetricSlot* tls_failures
    # the request in flight: its body's framing, and how its response is framed
    cdef bint body_open          # request body bytes are still to come
    cdef int body_framing
    cdef long long body_remaining
    cdef ChunkedReader body_chunks
    cdef bint responding         # a response head went out
    cdef bint close_after        # close the connection once the response is out
    cdef ChunkedReader dechunker # a chunked response to an HTTP/1.0 client: sent as plain data
    cdef bint chunking           # a BODY_STREAM response to an HTTP/1.1 client: we chunk it
    cdef H2Client h2             # the connection speaks HTTP/2 (state S_H2): its session

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
        self.tls = isinstance(transport, TLSLink)
        if self.tls:
            fp_addu(&(self.port.tls_resumed if transport.session_reused() else self.port.tls_new).v[0], 1)
        elif self.port.plain is not NULL:        # a permissive listener's plain caller
            fp_addu(&self.port.plain.v[0], 1)
        if self.ls.tls_mode < TLS_MUTUAL or not self.tls:
            self.set_peer(None, self.tls)
        elif not self.identify(transport):
            return
        if self.ls.transparent and not self.learn_destination(transport):
            return
        self.state = S_IDLE
        w.connections.add(self)
        if w.draining:
            self.close()
            return
        # a transparent listener first waits detect_timeout for the client to speak
        self.set_deadline(w.now() + (self.ls.detect_timeout if self.detecting else self.ls.header_timeout))
        if w.admitted < w.max_connections and not w.waiting_count:
            w.admitted += 1
            self.admitted = True
        else:                        # waits for a slot; header_timeout runs meanwhile
            self.pause(P_ADMISSION)
            w.waiting.append(self)
            w.waiting_count += 1
            if w.waiting_count >= w.max_connections:
                w.check_accepting()
        if self.tls and self.ls.http2 and transport.selected_alpn_protocol() == "h2":
            self.start_h2(b"")

    def data_received(self, data):
        cdef int st = self.state
        cdef Py_ssize_t used
        if st == S_H2 and not self.paused:
            self.h2.receive(data)
            return
        if st == S_LINGER:
            self.dropped += _len(data)
            if self.dropped > LINGER_MAX_BYTES:   # a flood goes on: enough, the GOAWAY went
                self.close()
            return
        if st == S_H2 and not self.paused & P_ADMISSION:
            self.hold(data)         # read before the pause took: taken when reading resumes
            return
        if self.paused & P_ADMISSION:
            # uvloop starts reading after connection_made: keep what came, read no more
            self.hold(data)
            self.transport.pause_reading()
            return
        if st == S_PASS:
            self.relay.send(data)
            return
        if st == S_EXCHANGE:
            if self.body_open:
                used = self.request_body(data, 0)
                if 0 <= used < _len(data) and self.state == S_EXCHANGE:
                    self.hold(data[used:])  # the next pipelined request
            else:
                self.hold(data)
        elif st == S_TUNNEL:
            self.touch()
            self.ex.tunnel_to_upstream(data)
        elif st == S_IDLE or st == S_HEAD:
            if self.pending is not None:
                self.pending += data
                data = self.pending
                self.pending = None
            self.feed(data)

    def eof_received(self):
        if self.state == S_H2 or self.state == S_LINGER:
            return False
        if self.state == S_PASS:
            return self.relay.half_close()
        if self.state == S_TUNNEL and self.ex is not None:
            return self.ex.tunnel_eof(True)
        if self.state == S_EXCHANGE and not self.body_open and not self.responding:
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
        if self.h2 is not None:
            self.h2.lost()
        if self.relay is not None:
            self.relay.close()
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
        self.write_blocked = True
        if self.relay is not None:
            self.relay.pause_reading()
        if self.ex is not None:
            self.ex.client_blocked(True)
        elif self.h2 is not None:
            # an HTTP/2 client that does not read what we write (answers to its PINGs,
            # SETTINGS, refused streams...) is not read either, as TCP would have it
            self.pause(P_CLIENT)
            self.h2.set_blocked(True)

    def resume_writing(self):
        self.write_blocked = False
        if self.relay is not None:
            self.relay.resume_reading()
        if self.ex is not None:
            self.ex.client_blocked(False)
        elif self.h2 is not None:
            self.h2.set_blocked(False)
            self.resume(P_CLIENT)
            if not self.paused and self.pending is not None and self.state == S_H2:
                buf = self.pending
                self.pending = None
                self.h2.receive(buf)

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
        self.set_peer(peer, True)
        return True

    cdef void pass_through(self, object data):
        """Not HTTP, or HTTP that no route takes, on a transparent listener: the bytes go
        to the original destination as they are, both ways, until either side closes
        (SPEC §13). `data`: what the client sent so far."""
        self.state = S_PASS
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.relay = TcpRelay(self, data, self.dest.forward_host, self.dest.port)
        self.pause(P_QUEUE)           # until the relay is connected (TcpRelay.connection_made)

    cdef bint learn_destination(self, transport):
        """A transparent listener's connection: where it was going before iptables
        redirected it (SO_ORIGINAL_DST, read once). One that was going to this very
        listener would come back to it forever: refused. False: closed."""
        host, port = original_destination(transport)
        local = transport.get_extra_info("sockname")
        if local is not None and (host, port) == (local[0], local[1]):
            log.warning("listener %s: refused a connection from %s to the proxy's own address "
                        "%s:%d (a loop)", self.ls.name, self.client_ip.decode(), host, port)
            self.state = S_CLOSED
            transport.abort()
            return False
        self.dest = Destination(host, port, self.ls.direction == "outbound")
        self.detecting = True
        return True

    cdef void admit(self):
        """A slot is free: read and serve (header_timeout runs on from the accept)."""
        self.w.admitted += 1
        self.admitted = True
        self.resume(P_ADMISSION)
        if self.pending is not None:
            buf = self.pending
            self.pending = None
            if self.state == S_H2:
                self.h2.receive(buf)
            else:
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
        cdef Py_ssize_t r
        if self.detecting:
            r = looks_like_http(buf)
            if r == 0:                # not yet known: wait for more (detect_timeout runs)
                self.pending = bytearray(buf)
                self.state = S_HEAD
                return
            self.detecting = False
            if r < 0:
                self.pass_through(buf)
                return
            self.set_deadline(self.w.now() + ls.header_timeout)
        if self.requests == 0 and ls.http2 and is_preface_start(buf):
            if _len(buf) >= 24:       # HTTP/2 with prior knowledge (h2c)
                self.start_h2(buf)
                return
            r = 0                     # the rest of the preface is still to come
        else:
            r = parse_request(h, buf, ls.max_header_bytes, ls.max_headers)
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
        if ls.transparent and self.requests == 0 and ls.route_for(h, self) is None:
            self.pass_through(buf)    # HTTP no route takes goes on as it came (SPEC §13)
            return
        self.state = S_EXCHANGE
        self.start_exchange(h, buf, r)

    cdef void start_h2(self, object data):
        """The client speaks HTTP/2 (prior knowledge, or ALPN h2): its session takes over
        the connection, which keeps its admission slot, timer and drain."""
        self.state = S_H2
        self.pending = None
        self.h2 = H2Client(self)
        self.h2.receive(data)

    cdef void start_exchange(self, RequestHead h, object buf, Py_ssize_t off):
        """A request head is complete: its exchange takes over (Exchange.start)."""
        cdef Exchange ex = Exchange.__new__(Exchange)
        self.ls = self.w.listeners.get(self.listener_name, self.ls)   # a reload may replace it
        ex.init(self, h)
        self.ex = ex
        self.close_after = False
        if off < _len(buf):
            self.pending = buf[off:]   # the body, then maybe the next pipelined request
        self.body_framing = h.framing
        self.body_remaining = h.content_length
        self.body_open = h.framing != BODY_NONE
        if h.framing == BODY_CHUNKED:
            if self.body_chunks is None:
                self.body_chunks = ChunkedReader()
            else:
                self.body_chunks.reset()
        ex.start()

    # -- the client side of the exchange (ClientSide, sides.pxi) ------------------------------
    cdef bint ending(self):
        """Draining, or the listener went away: answer what is in flight, then close."""
        return self.w.draining or self.port.closing

    cdef void arm_deadline(self, double seconds):
        self.set_deadline(self.w.now() + seconds)

    cdef void begin_body(self):
        cdef object buf = self.pending
        cdef Py_ssize_t used
        if buf is not None:
            self.pending = None
            used = self.request_body(buf, 0)
            if used < 0:
                return
            if used < _len(buf):
                self.pending = buf[used:]
        if self.head.expect_continue and self.body_open:
            self.transport.write(CONTINUE_100)

    cdef Py_ssize_t request_body(self, object data, Py_ssize_t off) except -2:
        """Pass the request body bytes in data[off:] to the exchange, in their framing;
        returns how many were body (the rest is the next request), -1: refused."""
        cdef Py_ssize_t n = _len(data) - off, k
        cdef long long payload
        cdef ChunkedReader chunks = self.body_chunks
        if not self.body_open or n <= 0:
            return 0
        if self.body_framing == BODY_LENGTH:
            k = n if n < self.body_remaining else <Py_ssize_t>self.body_remaining
            self.body_remaining -= k
            payload = k
            self.body_open = self.body_remaining != 0
        else:
            payload = chunks.data_bytes
            k = chunks.feed(_ptr(data) + off, n, None)
            if k < 0:
                self.ex.reject(400, "bad_request", "invalid chunked body: " + chunks.error)
                return -1
            payload = chunks.data_bytes - payload
            self.body_open = not chunks.done
        self.ex.request_data(data, off, k, payload, not self.body_open)
        return k

    cdef void pause_body(self, int why):
        self.pause(why)

    cdef void resume_body(self, int why):
        self.resume(why)

    cdef void send_informational(self, ResponseHead rh):
        if self.head.version == 11:   # HTTP/1.0 clients do not expect 1xx
            self.write(rh.raw[rh.start:rh.length])

    cdef void send_response(self, ResponseHead rh, HeadEdit edit, object data, Py_ssize_t off,
                            Py_ssize_t n, bint end):
        cdef HeadWriter hw = self.w.hw
        cdef bytes raw = rh.raw
        cdef Field* f
        cdef int i
        cdef bint client_11 = self.head.version == 11
        cdef bint keep = self.head.keep_alive and not self.body_open and not self.ending() \
            and rh.framing != BODY_UNTIL_CLOSE
        self.responding = True
        self.chunking = rh.framing == BODY_STREAM and client_11
        if rh.framing == BODY_STREAM and not client_11:
            keep = False              # an HTTP/1.0 client: the close ends the body
        if rh.framing == BODY_CHUNKED and not client_11:
            if self.dechunker is None:
                self.dechunker = ChunkedReader()
            else:
                self.dechunker.reset()
            keep = False
        else:
            self.dechunker = None
        self.close_after = not keep
        hw.reset()
        if rh.version == 11:
            hw.span(rh.start, rh.line_end)
        else:
            hw.extra(b"HTTP/1.1" + raw[rh.start + 8:rh.line_end])
        for i in range(rh.nfields):
            f = &rh.fields[i]
            if edit.keeps(f):
                hw.span(f.line_start, f.line_end)
        if (rh.framing == BODY_CHUNKED or rh.framing == BODY_STREAM) and client_11:
            hw.extra(b"transfer-encoding: chunked\r\n")
        if edit.lines is not None:
            for line in edit.lines:
                hw.extra(line)
        if self.close_after:
            hw.extra(b"connection: close\r\n\r\n")
        elif not client_11:
            hw.extra(b"connection: keep-alive\r\n\r\n")
        else:
            hw.extra(CRLF)
        if 0 < n <= 16384 and type(data) is bytes and not self.chunking:
            # the usual small response: head and body in one write
            self.write(hw.build(raw, PyBytes_AS_STRING(data) + off, n))
            return
        self.write(hw.build(raw, NULL, 0))
        if n or (end and self.chunking):
            self.send_data(data, off, n, end)

    cdef void send_data(self, object data, Py_ssize_t off, Py_ssize_t n, bint end):
        cdef list out
        if self.chunking:
            self.write((chunk(_slice(data, off, off + n)) if n else b"")
                       + (b"0\r\n\r\n" if end else b""))
            return
        if n == 0:
            return
        if self.dechunker is not None:
            out = []
            self.dechunker.feed(_ptr(data) + off, n, out)   # the upstream side checked it
            for piece in out:
                self.write(piece)
        else:
            self.write(_slice(data, off, off + n))

    cdef void send_trailers(self, list fields):
        """To a client that asked for them (TE: trailers), in the chunked body's trailer
        section; to others the body just ends (RFC 9110 §6.5.1)."""
        cdef RequestHead h = self.head
        cdef bytes raw = h.raw
        cdef Field* f
        cdef int i
        cdef bint wanted = False
        if not self.chunking:
            return
        for i in range(h.nfields):
            f = &h.fields[i]
            if f.kind == H_TE and b"trailers" in raw[f.value_start:f.value_end].lower():
                wanted = True
        self.write(b"0\r\n" + (b"".join([n + b": " + v + CRLF for n, v in fields]) if wanted
                                 else b"") + CRLF)

    cdef Py_ssize_t local_reply(self, int status, str reason, str detail, bytes rid_line):
        # a request body we did not read leaves the connection unusable
        self.close_after = self.body_open or status == 400 or not self.head.keep_alive \
            or self.ending()
        return self.send_error(status, reason, detail, rid_line, self.close_after)

    cdef void abort(self):
        self.close()
        self.close_after = True
        self.done()

    cdef void done(self):
        """The exchange is over: close, or go on with the next request."""
        self.ex = None
        self.requests += 1
        self.responding = False
        self.body_open = False
        if self.close_after or self.ending() or self.state == S_CLOSED:
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
        """A response the proxy makes itself (docs/http.md); returns its body's size."""
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
        answered, the connection closed, and the outcome reported."""
        cdef bytes rid = self.w.new_request_id_line()   # every error the proxy makes carries one
        report_refusal(self, status, reason, rid, self.send_error(status, reason, detail, rid, True))

    cdef void wind_down(self):
        """Drain or listener removal. A busy connection closes after its response (sent
        with Connection: close); an idle one after a short grace, so a request already on
        its way is still answered rather than met with a reset."""
        if self.paused & P_ADMISSION:
            self.close()
        elif self.state == S_H2:
            self.h2.wind_down()
        elif self.state == S_IDLE:
            self.set_deadline(self.w.now() + WIND_DOWN_GRACE)

    cdef void close(self):
        if self.state != S_CLOSED:
            self.state = S_CLOSED
            self.transport.close()

    cdef void linger(self):
        """Close after what was written (GOAWAY) went, reading and dropping whatever the
        peer still sends meanwhile: closing a socket with unread bytes would reset the
        connection, and the peer would lose the frames that say why. At most a second."""
        if self.state == S_CLOSED:
            return
        if not self.transport.can_write_eof():   # TLS: close_notify follows what was written
            self.close()
            return
        self.state = S_LINGER
        self.transport.write_eof()
        self.deadline = self.w.now() + 1.0
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = self.deadline
        self.timer = self.w.loop.call_at(self.deadline, self.on_timer)

    cdef void write(self, bytes data):
        if self.state != S_CLOSED and self.state != S_LINGER:
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
        if self.state == S_H2:
            self.h2.on_timer()
            return
        if self.state == S_LINGER:
            self.state = S_CLOSED
            self.transport.abort()
            return
        if self.state == S_PASS:
            return
        if self.w.now() < self.deadline - 0.0005:
            self.set_deadline(self.deadline)
            return
        if self.detecting:            # nothing (or nothing decisive) came: a server-first protocol
            self.detecting = False
            buf = self.pending
            self.pending = None
            self.pass_through(buf)
            return
        if self.state == S_IDLE:
            if self.paused & P_ADMISSION and self.pending is not None:
                self.refuse(503, "overloaded", "no connection slot (max_connections) "
                            "within header_timeout")
            elif self.requests == 0 and not self.ending():
                # 408 from accept; but a connection that never sent a byte made
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

    cdef object tunnel_open(self):
        pending = self.pending
        self.pending = None
        self.state = S_TUNNEL
        return bytes(pending) if pending is not None else None

    cdef void tunnel_write(self, object data):
        self.write(data)
        self.touch()

    cdef bint tunnel_write_eof(self):
        if self.transport.can_write_eof():   # a TLS connection cannot
            self.transport.write_eof()
            return True
        return False

    cdef void touch(self):
        """Push the deadline out by idle_timeout (activity on a tunnel)."""
        self.deadline = self.w.now() + self.ls.idle_timeout


@cython.final
cdef class Sniffer:
    """A permissive listener's connection until its first bytes (SPEC §13): a TLS record
    (0x16, a ClientHello) hands it to a TLSLink, anything else to a plain Downstream.
    Nothing within header_timeout closes it; on a transparent listener nothing within
    detect_timeout is a server-first protocol, which the plain Downstream passes through."""
    cdef object make_tls             # () -> the TLS link (with its Downstream)
    cdef object make_plain           # () -> a plain Downstream
    cdef object transport
    cdef object timer
    cdef bint transparent

    def __init__(self, make_tls, make_plain, loop, ListenerState ls):
        self.make_tls = make_tls
        self.make_plain = make_plain
        self.transparent = ls.transparent
        timeout = ls.detect_timeout if ls.transparent else ls.header_timeout
        self.timer = loop.call_later(timeout, self.timed_out) if timeout > 0 else None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        app = self.make_tls() if data[0] == 0x16 else self.make_plain()
        self.transport.set_protocol(app)
        app.connection_made(self.transport)
        app.data_received(data)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if self.timer is not None:
            self.timer.cancel()

    def timed_out(self):
        self.timer = None
        if self.transparent:
            app = self.make_plain()
            self.transport.set_protocol(app)
            app.connection_made(self.transport)
        else:
            self.transport.close()


@cython.final
cdef class TcpRelay:
    """The upstream half of a passthrough (Downstream.pass_through): a TCP connection to
    the original destination. Bytes go both ways as they come, each side's full buffer
    pauses the other's reading, and a half-close is passed on."""
    cdef Downstream client
    cdef object transport
    cdef object first                # what the client sent before the connection was up
    cdef bint client_eof, upstream_eof
    cdef str target

    def __init__(self, Downstream client, first, str host, int port):
        self.client = client
        self.first = bytearray(first or b"")
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        task = client.w.loop.create_task(client.w.loop.create_connection(lambda: self, host, port))
        task.add_done_callback(self.connected)

    def connected(self, task):
        if task.cancelled() or task.exception() is not None:
            why = "cancelled" if task.cancelled() else task.exception()
            log.info("listener %s: passthrough to %s failed: %s", self.client.ls.name, self.target, why)
            self.client.close()

    def connection_made(self, transport):
        self.transport = transport
        if self.client.state != S_PASS:     # the client went meanwhile
            transport.close()
            return
        if self.first:
            transport.write(bytes(self.first))
        self.first = None            # from now on bytes go straight through
        self.client.resume(P_QUEUE)

    def data_received(self, data):
        self.client._write(data)

    def eof_received(self):
        self.upstream_eof = True
        if self.client_eof:
            self.client.close()
            return False
        if self.client.state == S_PASS:
            self.client.transport.write_eof()
        return True

    def connection_lost(self, exc):
        self.transport = None
        if self.client.state == S_PASS:
            self.client.close()

    def pause_writing(self):
        self.client.pause(P_UPSTREAM)

    def resume_writing(self):
        self.client.resume(P_UPSTREAM)

    cdef void send(self, object data):
        if self.transport is not None:
            self.transport.write(data)
        elif self.first is not None:        # still connecting: kept with what came first
            self.first += data

    cdef bint half_close(self):
        """The client sent its FIN: pass it on; the connection stays open for the answer."""
        self.client_eof = True
        if self.upstream_eof or self.transport is None:
            self.close()
            return False
        self.transport.write_eof()
        return True

    cdef void pause_reading(self):
        if self.transport is not None:
            self.transport.pause_reading()

    cdef void resume_reading(self):
        if self.transport is not None:
            self.transport.resume_reading()

    cdef void close(self):
        if self.transport is not None:
            self.transport.close()
            self.transport = None


cdef tuple original_destination(transport):
    """(host, port) a redirected connection was going to: SO_ORIGINAL_DST, or
    IP6T_SO_ORIGINAL_DST for IPv6; the socket's own address when there is none."""
    sock = transport.get_extra_info("socket")
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(41, 80, 28)            # SOL_IPV6, IP6T_SO_ORIGINAL_DST
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), raw[2] << 8 | raw[3]
        raw = sock.getsockopt(0, 80, 16)                 # SOL_IP, SO_ORIGINAL_DST
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), raw[2] << 8 | raw[3]
    except OSError:                                      # not redirected (no conntrack entry)
        local = transport.get_extra_info("sockname")
        return local[0], local[1]


cdef int looks_like_http(object buf):
    """The first bytes of a transparent listener's connection: 1 for an HTTP/1.x request
    line or the HTTP/2 preface (a method token and a space), -1 for anything else, 0 when
    too few bytes came to tell."""
    cdef const unsigned char* p = <const unsigned char*>_ptr(buf)
    cdef Py_ssize_t n = _len(buf), i
    for i in range(min(n, 21)):
        if p[i] == 0x20:
            return 1 if i > 0 else -1
        if not (0x41 <= p[i] <= 0x5A or p[i] == 0x2D or p[i] == 0x5F):   # A-Z - _
            return -1
    return 0 if n < 21 else -1
