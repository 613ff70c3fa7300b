# Included by proxy.pyx: the HTTP/2 client side. H2Client is the session of an HTTP/2
# client connection (its Downstream keeps the transport, the admission slot, the timer
# and the drain); H2Stream is one request of it, the ClientSide its Exchange talks to.
#
# A request's header list becomes the same RequestHead an HTTP/1.1 request parses into
# (http2.request_head_bytes, then http1.parse_request), so routing, the head edit, limits
# and the report are the HTTP/1.1 ones. Its body travels to the Exchange as received:
# with a content-length as BODY_LENGTH, without one as BODY_STREAM. Responses go
# back as HEADERS and DATA within the client's windows; what a window does not take waits
# in the stream, and the upstream is not read meanwhile.

cdef bytes PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# control frames (PING and SETTINGS acknowledgements, RST_STREAM) we may queue for a
# client that does not read what we write, before its connection ends (SPEC §12)
cdef long long CONTROL_BACKLOG = 10000
# response bytes queued in one loop turn before the streams stop reading their upstreams
# (the transport's own high-water mark)
cdef Py_ssize_t OUTPUT_HIGH_WATER = 64 * 1024
cdef bytes ORIG_PROTO = b"fastproxy-orig-proto"



cdef inline bint is_preface_start(object buf) noexcept:
    """buf is the connection preface so far (or all of it, and more)."""
    cdef Py_ssize_t n = _len(buf)
    return memcmp(_ptr(buf), PyBytes_AS_STRING(PREFACE), n if n < 24 else 24) == 0


cdef list kept_trailers(ChunkedReader reader):
    """The trailers of a chunked body that may go on in HTTP/2 (§8.1: checked, without
    the fields a trailer section must not carry); none when they cannot."""
    try:
        return check_trailers(reader.trailers())
    except MalformedMessage:
        return None


cdef bytes grpc_message(str text):
    """grpc-message is percent-encoded UTF-8 (gRPC's HTTP/2 protocol document)."""
    cdef bytearray out = bytearray()
    for c in text.encode("utf-8", "replace"):
        if 0x20 <= c <= 0x7E and c != 0x25:
            out.append(c)
        else:
            out += b"%%%02X" % c
    return bytes(out)


@cython.final
cdef class H2Client(H2Connection):
    """The HTTP/2 session of one client connection and its streams."""
    cdef Downstream conn
    cdef ServerSession session
    cdef dict streams            # stream id -> H2Stream, until its response is out
    cdef list ready              # H2Streams whose request came whole, to start (start_ready)
    cdef bint write_blocked      # streams must not read their upstreams now: one of
    cdef bint transport_full     #   the transport's buffer is full (pause_writing), or
    cdef bint output_full        #   this loop turn queued OUTPUT_HIGH_WATER bytes already
    cdef int winding_down        # 1: the first GOAWAY went, 2: the final one
    cdef double idle_at          # no stream is open: when idle_timeout ends the connection
    cdef double goaway_at        # winding down: when the final GOAWAY goes
    cdef long long answers_at_unblock # session.answers when the transport last took bytes again
    cdef double block_deadline   # a header block is open: header_timeout ends it then

    def __init__(self, Downstream conn):
        cdef tuple s = conn.ls.h2_settings
        self.conn = conn
        self.w = conn.w
        self.streams = {}
        self.ready = []
        self.session = ServerSession(self, s[0], s[1], s[3], 4096, s[2], conn.ls.max_header_bytes,
                                     conn.ls.max_headers)

    # -- from the Downstream ---------------------------------------------------------------
    cdef void receive(self, object data):
        try:
            self.session.receive(data)
        except H2Error as e:          # a connection error: GOAWAY is queued
            self.ready = []
            self.protocol_error(e)
            return
        if self.ready:
            self.start_ready()
        self.flush()
        if self.session.block is None:
            self.block_deadline = 0
        elif not self.block_deadline:   # header_timeout for each header block (SPEC §12)
            self.block_deadline = self.w.now() + self.conn.ls.header_timeout
            self.conn.set_deadline(self.block_deadline)
        if not self.streams and self.idle_at == 0:
            self.idle()

    cdef void protocol_error(self, object e):
        """The client broke HTTP/2 or set off a protection: counted, GOAWAY, closed; its
        streams' exchanges end with it (the proxy's other connections carry on)."""
        cdef Downstream c = self.conn
        log.info("listener %s: HTTP/2 connection from %s closed: %s", c.listener_name,
                 c.client_ip.decode(), e)
        cdef MetricSlot* slot = self.w.metrics.slot(
            f"fastproxy_http2_protocol_errors_total\x1f{c.listener_name}\x1f{e.reason}".encode())
        if slot is not NULL:
            fp_addu(&slot.v[0], 1)
        self.write_out()
        self.lost()
        if self.transport_full:     # a client that does not read would keep the GOAWAY, and us
            c.transport.abort()
            c.close()
        else:
            c.linger()

    cdef void write_out(self):
        cdef bytes out = self.session.data_to_send()
        if PyBytes_GET_SIZE(out):
            self.conn.write(out)
        if self.output_full:        # it is the transport's now, which says when it is full
            self.output_full = False
            self.update_blocked()

    cdef void set_blocked(self, bint blocked):
        """From the transport: its buffer is full (or no longer). While it is full the
        connection is not read either (Downstream.pause_writing): a client that does not
        read what we write cannot make us queue more. One that made us answer more than
        CONTROL_BACKLOG control frames since it last took our bytes is flooding us."""
        self.transport_full = blocked
        if not blocked:
            self.answers_at_unblock = self.session.answers
        elif self.session.answers - self.answers_at_unblock > CONTROL_BACKLOG:
            self.w.loop.call_soon(self.control_flood)    # not inside the transport's write
        self.update_blocked()

    def control_flood(self):
        if self.conn.state == S_H2:
            self.session.goaway(H2_ENHANCE_YOUR_CALM)
            self.protocol_error(H2Error(H2_ENHANCE_YOUR_CALM, f"more than {CONTROL_BACKLOG} "
                                        "control frames answered for a client that does not read",
                                        reason="control_flood"))

    cdef void check_output(self):
        """Response bytes were queued. Many upstreams answering in one loop turn would all
        be queued before the end-of-turn write could fill the transport and pause them:
        past OUTPUT_HIGH_WATER, the streams stop reading their upstreams at once."""
        if not self.output_full and PyByteArray_GET_SIZE(self.session.out) >= OUTPUT_HIGH_WATER:
            self.output_full = True
            self.update_blocked()

    cdef void update_blocked(self):
        cdef H2Stream s
        cdef bint blocked = self.transport_full or self.output_full
        if blocked != self.write_blocked:
            self.write_blocked = blocked
            for s in list(self.streams.values()):
                s.update_blocked()

    cdef void lost(self):
        """The connection is gone: every stream's exchange with it."""
        cdef H2Stream s
        streams = list(self.streams.values())
        self.streams.clear()
        for s in streams:
            s.closed = True
            if s.ex is not None:
                ex = s.ex
                s.ex = None
                (<Exchange>ex).client_gone()

    cdef void idle(self):
        """No stream is open: idle_timeout runs (and a connection winding down closes)."""
        cdef Downstream c = self.conn
        if self.winding_down == 2:
            self.write_out()
            c.close()
            return
        self.idle_at = c.w.now() + c.ls.idle_timeout
        c.set_deadline(self.idle_at)

    cdef void on_timer(self):
        """The connection's timer: streams past their route deadline, the idle timeout, the
        second step of a graceful GOAWAY."""
        cdef Downstream c = self.conn
        cdef double now = c.w.now(), next_at = 0
        cdef H2Stream s
        if self.block_deadline:
            if now >= self.block_deadline - 0.0005:
                self.session.goaway(H2_PROTOCOL_ERROR)
                self.protocol_error(H2Error(H2_PROTOCOL_ERROR, "a header block incomplete after "
                                            "header_timeout", reason="header_timeout"))
                return
            next_at = self.block_deadline
        for s in list(self.streams.values()):
            if s.ex is not None and s.deadline:
                if s.deadline <= now + 0.0005:
                    s.ex.timed_out()
                elif next_at == 0 or s.deadline < next_at:
                    next_at = s.deadline
        if self.winding_down == 1:
            if now >= self.goaway_at - 0.0005:
                self.winding_down = 2     # a round trip later: streams begun meanwhile are in
                self.session.goaway(H2_NO_ERROR)
                self.flush()
            elif next_at == 0 or self.goaway_at < next_at:
                next_at = self.goaway_at
        if not self.streams:
            if self.winding_down == 2 or (self.idle_at and now >= self.idle_at - 0.0005):
                self.session.goaway(H2_NO_ERROR)
                self.write_out()
                c.close()
                return
            if self.idle_at and (next_at == 0 or self.idle_at < next_at):
                next_at = self.idle_at
        if next_at:
            c.set_deadline(next_at)

    cdef void wind_down(self):
        """Drain or listener removal (RFC 9113 §6.8): GOAWAY 2^31-1 now, the final GOAWAY
        after a grace that covers a round trip; streams in flight finish."""
        cdef Downstream c = self.conn
        if self.winding_down:
            return
        self.winding_down = 1
        self.session.goaway(H2_NO_ERROR, False)
        self.flush()
        self.goaway_at = c.w.now() + WIND_DOWN_GRACE
        c.set_deadline(self.goaway_at)

    # -- from the session (SessionHandler) ---------------------------------------------------
    cdef void on_request(self, uint32_t stream_id, list fields, bint end_stream):
        cdef H2Stream s = H2Stream.__new__(H2Stream)
        cdef Downstream c = self.conn
        s.client = self
        s.sid = stream_id
        s.w = c.w
        s.ls = c.ls = c.w.listeners.get(c.listener_name, c.ls)   # a reload may replace it
        s.same_peer(c)
        s.h2 = True
        s.write_blocked = self.write_blocked
        self.streams[stream_id] = s
        self.idle_at = 0
        if end_stream:   # complete: started once the bytes that came with it are read
            s.fields = fields
            self.ready.append(s)
        else:
            s.start(fields, False)

    cdef void start_ready(self):
        """Start the complete requests the last bytes brought. After them, not as each came:
        a RST_STREAM in the same bytes (rapid reset, CVE-2023-44487) cancels its request
        before anything was sent upstream."""
        cdef H2Stream s
        cdef list ready = self.ready
        self.ready = []
        for s in ready:
            if not s.closed:
                s.start(s.fields, True)
            s.fields = None

    cdef void on_data(self, uint32_t stream_id, bytes data, bint end_stream):
        cdef H2Stream s = self.streams.get(stream_id)
        if s is None or s.closed:
            self.session.consumed(stream_id, PyBytes_GET_SIZE(data))
        else:
            s.body(data, end_stream)

    cdef void on_trailers(self, uint32_t stream_id, list fields):
        cdef H2Stream s = self.streams.get(stream_id)
        if s is not None and not s.closed:
            s.trailers(fields)

    cdef void on_reset(self, uint32_t stream_id, uint32_t code):
        cdef H2Stream s = self.streams.get(stream_id)
        if s is not None:
            s.cancel()

    cdef void on_window(self, uint32_t stream_id):
        cdef H2Stream s
        if stream_id == 0:
            for s in list(self.streams.values()):
                s.window_opened()
        else:
            s = self.streams.get(stream_id)
            if s is not None:
                s.window_opened()
        self.flush()

    cdef void on_goaway(self, uint32_t last_stream_id, uint32_t code):
        pass                          # the client opens no more streams; ours finish


@cython.final
cdef class H2Stream(ClientSide):
    """One request of an HTTP/2 client connection, as its Exchange sees it."""
    cdef H2Client client
    cdef uint32_t sid
    cdef Exchange ex
    cdef RequestHead head
    cdef bint closed             # reset, or the response went and the stream is forgotten
    cdef double deadline         # the route's timeout, as monotonic time (0: none yet)
    # the request body, toward the exchange
    cdef bint body_open
    cdef int framing             # BODY_NONE, BODY_LENGTH or BODY_STREAM
    cdef long long remaining     # content-length not yet received
    cdef int paused              # P_* bits: received bytes are not acknowledged meanwhile
    cdef Py_ssize_t unacked      # bytes received while paused: the client's window waits
    cdef list fields             # the request's header list, until start_ready starts it
    # the response, toward the client
    cdef ChunkedReader dechunker # a chunked HTTP/1.1 response: its data goes as DATA

    cdef void start(self, list fields, bint end):
        cdef RequestHead h
        cdef ListenerState ls = self.ls
        cdef Exchange ex
        self.body_open = not end
        if fields is None:            # the session cut a list over the limits
            self.refuse(431, "header_too_large", f"request header list over max_header_bytes "
                        f"({ls.max_header_bytes}) or max_headers ({ls.max_headers})")
            return
        try:
            raw = request_head_bytes(fields)
        except MalformedMessage as e:
            self.malformed(str(e))
            return
        h = RequestHead()
        self.head = h
        if parse_request(h, raw, ls.max_header_bytes, ls.max_headers) < 0:
            self.refuse(h.error_status, PARSE_REASONS.get(h.error_status, "bad_request"),
                        h.error_detail)
            return
        if end and h.framing != BODY_NONE:
            self.malformed("content-length without DATA")
            return
        if not end and h.framing == BODY_NONE and h.get(b"content-length") is None:
            h.framing = BODY_STREAM
        ctype = h.get(b"content-type")
        self.grpc = ctype is not None and ctype.startswith(b"application/grpc")
        self.orig_h1 = self.peer_id is not None and self.orig_http1(h)   # an mTLS peer's mark
        self.framing = h.framing
        self.remaining = h.content_length
        ex = Exchange.__new__(Exchange)
        ex.init(self, h)
        self.ex = ex
        ex.start()

    cdef bint orig_http1(self, RequestHead h):
        """A peer sidecar marked the stream as an HTTP/1.1 request carried over HTTP/2
        (`fastproxy-orig-proto`, SPEC §12): the mark goes, and an auto cluster speaks
        HTTP/1.1 to the application. Trusted only from mTLS peers."""
        cdef bytes raw = h.raw
        cdef Field* f
        cdef int i
        cdef bint marked = False
        for i in range(h.nfields):
            f = &h.fields[i]
            if f.name_end - f.line_start == 20 and raw[f.line_start:f.name_end] == ORIG_PROTO:
                f.drop = True
                marked = True
        return marked

    # -- the request body ----------------------------------------------------------------------
    cdef void body(self, bytes data, bint end):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if self.framing == BODY_LENGTH:
            self.remaining -= n
            if self.remaining < 0 or (end and self.remaining):
                self.malformed("DATA that does not match content-length")
                return
        elif self.framing == BODY_STREAM:
            if not n and not end:
                return
        elif n:
            self.malformed("DATA that does not match content-length")
            return
        if end:
            self.body_open = False
        if self.ex is not None:
            self.ex.request_data(data, 0, n, n, end)
        if self.closed:
            return
        if self.paused:
            self.unacked += n
        else:
            self.client.session.consumed(self.sid, n)
            self.client.flush()
        if end and self.ex is None and not self.waiting():
            self.forget()

    cdef void trailers(self, list fields):
        try:
            fields = check_trailers(fields)
        except MalformedMessage as e:
            self.malformed(str(e))
            return
        if self.framing == BODY_LENGTH and self.remaining:
            self.malformed("DATA that does not match content-length")
            return
        self.body_open = False
        if self.ex is not None:
            if self.framing == BODY_STREAM:
                self.ex.request_trailers(fields)
            else:                     # a body with a length: HTTP/1.1 has no place for them
                self.ex.request_data(b"", 0, 0, 0, True)
        if not self.closed and self.ex is None and not self.waiting():
            self.forget()

    # -- the client side of the exchange (ClientSide, sides.pxi) ------------------------------
    cdef bint ending(self):
        return self.client.winding_down != 0 or self.client.conn.ending()

    cdef void arm_deadline(self, double seconds):
        self.deadline = self.w.now() + seconds
        self.client.conn.set_deadline(self.deadline)

    cdef void begin_body(self):
        if self.head.expect_continue and self.body_open and not self.closed:
            self.client.session.send_headers(self.sid, [(b":status", b"100")])
            self.client.flush()

    cdef void pause_body(self, int why):
        self.paused |= why

    cdef void resume_body(self, int why):
        if self.paused:
            self.paused &= ~why
            if not self.paused and self.unacked and not self.closed:
                self.client.session.consumed(self.sid, self.unacked)
                self.unacked = 0
                self.client.flush()

    cdef list response_fields(self, ResponseHead rh, HeadEdit edit):
        """The head as an HTTP/2 field list: :status, then the edited fields."""
        return edit.fields(rh, [(b":status", b"%d" % rh.status)], True)

    cdef void send_informational(self, ResponseHead rh):
        if not self.closed:
            self.client.session.send_headers(self.sid, self.response_fields(
                rh, new_edit(RESPONSE_HOP_BY_HOP)))
            self.client.flush()

    cdef void send_response(self, ResponseHead rh, HeadEdit edit, object data, Py_ssize_t off,
                            Py_ssize_t n, bint end):
        if self.closed:
            return
        if rh.framing == BODY_CHUNKED:
            if self.dechunker is None:
                self.dechunker = ChunkedReader()
            else:
                self.dechunker.reset()
        else:
            self.dechunker = None
        self.client.session.send_headers(self.sid, self.response_fields(rh, edit),
                                         end and n == 0)
        if n or not end:
            self.send_data(data, off, n, end)
        else:
            self.client.flush()

    cdef void send_data(self, object data, Py_ssize_t off, Py_ssize_t n, bint end):
        cdef list out, fields
        cdef bytes payload
        if self.dechunker is not None:
            out = []
            self.dechunker.feed(_ptr(data) + off, n, out)   # the upstream side checked it
            payload = out[0] if len(out) == 1 else b"".join(out)
            if end and self.dechunker.done:
                fields = kept_trailers(self.dechunker)
                if fields:            # the chunked body's trailers end the stream
                    self.write_body(payload, False)
                    self.send_trailers(fields)
                    return
        else:
            payload = _slice(data, off, off + n)
        self.write_body(payload, end)

    cdef void send_trailers(self, list fields):
        if not self.closed:
            self.client.session.send_trailers(self.sid, fields)
            self.client.flush()

    cdef void write_body(self, bytes payload, bint end):
        """Response body bytes: what the client's windows do not take waits in the
        session, and the upstream is not read meanwhile."""
        if self.closed:
            return
        if not self.client.session.send_body(self.sid, payload, end):
            self.update_blocked()
        self.client.check_output()
        self.client.flush()

    cdef bint waiting(self):
        """Response bytes wait for the client's windows."""
        return self.client.session.waiting(self.sid)

    cdef void window_opened(self):
        """The client opened a window (the session sent what it could)."""
        if self.fields is not None:   # not started yet (start_ready)
            return
        self.update_blocked()
        if self.ex is None and not self.closed and not self.waiting():
            self.forget()

    cdef void update_blocked(self):
        """The exchange reads the upstream only while the client takes what it sends."""
        cdef bint blocked = self.waiting() or self.client.write_blocked
        if blocked != self.write_blocked:
            self.write_blocked = blocked
            if self.ex is not None:
                self.ex.client_blocked(blocked)

    cdef Py_ssize_t local_reply(self, int status, str reason, str detail, bytes rid_line):
        cdef bytes rid = rid_line[14:PyBytes_GET_SIZE(rid_line) - 2]
        cdef bytes body
        if self.closed:
            return 0
        if self.grpc:   # trailers-only (docs/http2.md, gRPC)
            self.client.session.send_headers(self.sid, [
                (b":status", b"200"), (b"content-type", b"application/grpc"),
                (b"grpc-status", b"%d" % GRPC_STATUS_OF.get(status, 2)),
                (b"grpc-message", grpc_message(f"fastproxy: {reason}: {detail}")),
                (b"fastproxy-error", reason.encode()), (b"x-request-id", rid)], True)
            self.client.flush()
            return 0
        body = f"fastproxy: {reason}: {detail}\n".encode("utf-8", "replace")
        self.client.session.send_headers(self.sid, [
            (b":status", b"%d" % status), (b"content-type", b"text/plain; charset=utf-8"),
            (b"fastproxy-error", reason.encode()), (b"content-length", b"%d" % len(body)),
            (b"x-request-id", rid)])
        self.write_body(body, True)
        return len(body)

    cdef void done(self):
        self.ex = None
        if not self.waiting():
            self.forget()

    cdef void abort(self):
        self.ex = None
        self.reset(H2_INTERNAL_ERROR)

    # -- ending ---------------------------------------------------------------------------------
    cdef void forget(self):
        """The response is out: the stream is done with. A request body still coming is
        not wanted: RST_STREAM NO_ERROR tells the client to stop (RFC 9113 §8.1)."""
        if self.body_open:
            self.reset(H2_NO_ERROR)
            return
        self.close_stream()

    cdef void reset(self, uint32_t code):
        if not self.closed:
            self.client.session.reset_stream(self.sid, code)
            self.close_stream()

    cdef void close_stream(self):
        cdef H2Client c = self.client
        self.closed = True
        c.streams.pop(self.sid, None)
        c.flush()
        if not c.streams:
            c.idle()

    cdef void cancel(self):
        """The client reset the stream."""
        cdef Exchange ex = self.ex
        self.closed = True
        self.ex = None
        self.client.streams.pop(self.sid, None)
        if ex is not None:
            ex.client_gone()
        if not self.client.streams:
            self.client.idle()

    cdef void malformed(self, str detail):
        """RFC 9113 §8.1.1: a stream error; nothing reaches the upstream (or, mid-body, the
        upstream's exchange is abandoned), and the connection's other streams go on."""
        cdef Exchange ex = self.ex
        log.debug("listener %s: malformed HTTP/2 request from %s: %s", self.ls.name,
                  self.client_ip.decode(), detail)
        self.ex = None
        self.client.session.count_refused()
        if ex is not None:
            ex.client_gone()
        else:
            report_refusal(self, 400, "bad_request", self.w.new_request_id_line(), 0)
        self.reset(H2_PROTOCOL_ERROR)

    cdef void refuse(self, int status, str reason, str detail):
        """A request refused before it became an exchange (too large, unsupported)."""
        cdef bytes rid = self.w.new_request_id_line()
        self.client.session.count_refused()
        report_refusal(self, status, reason, rid, self.local_reply(status, reason, detail, rid))
        self.done()
