# Included by proxy.pyx: Upstream, a pooled HTTP/1.1 upstream connection, and _Connect,
# one new connection attempt (TCP, then TLS for tls/mtls clusters).

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
            if self.ex.tunneling:
                self.ex.tunnel_to_client(data)
            else:
                self.ex.upstream_data(data)
        else:
            self.close()  # bytes nobody asked for: the connection cannot be trusted

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
            if ex.tunneling:
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
