# Included by proxy.pyx: sides that record what an Exchange asks of them, so that the
# Exchange's policy is tested without sockets (tests/unit/core/test_exchange.py) and a new
# protocol's sides have a template. Nothing in the proxy uses them.

cdef ResponseHead _parse_response(bytes head, bint head_request):
    cdef ResponseHead rh = ResponseHead()
    if parse_response(rh, head, MAX_RESPONSE_HEAD, MAX_RESPONSE_FIELDS, head_request) != len(head):
        raise ValueError(f"not one complete response head: {rh.error_detail or head!r}")
    return rh


cdef class RecordingClient(ClientSide):
    """A client side with no connection: `request()` starts an exchange the way a
    protocol does; every call the Exchange makes is appended to `calls` as a tuple:
    ("deadline", seconds) ("begin_body",) ("pause", why) ("resume", why)
    ("informational", status) ("response", status, [(name, value)], body, end)
    ("data", bytes, end) ("local_reply", status, reason) ("done",) ("abort",)."""
    cdef readonly list calls
    cdef Exchange ex
    cdef RequestHead head
    cdef bytes first_body
    cdef bint first_end
    cdef public bint draining

    def __init__(self, Worker w, str listener, str client_ip="127.0.0.1", str peer_id=None):
        self.w = w
        self.ls = w.listeners[listener]
        self.client_ip = client_ip.encode()
        self.set_peer(peer_id, self.ls.tls_mode != TLS_OFF)
        self.calls = []

    def request(self, bytes head, bytes body=b"", bint end=True, bint stream=False):
        """Start an exchange for an HTTP/1.1 request head (the shape every protocol's
        heads take), with the body bytes that came along it; stream: a body of unknown
        length as an HTTP/2 side hands it over (BODY_STREAM)."""
        cdef RequestHead h = RequestHead()
        if parse_request(h, head, 65536, 100) != len(head):
            raise ValueError(f"not one complete request head: {h.error_detail or head!r}")
        if stream:
            h.framing = BODY_STREAM
        self.head = h
        self.first_body = body
        self.first_end = end
        self.ex = Exchange.__new__(Exchange)
        self.ex.init(self, h)
        self.ex.start()

    def body(self, bytes data, bint end=True):
        """More request body from the client."""
        self.ex.request_data(data, 0, len(data), len(data), end)

    def trailers(self, list fields):
        """The request's trailers (a BODY_STREAM request)."""
        self.ex.request_trailers(fields)

    def blocked(self, bint blocked):
        self.write_blocked = blocked
        if self.ex is not None:
            self.ex.client_blocked(blocked)

    def time_out(self):
        self.ex.timed_out()

    def gone(self):
        self.ex.client_gone()
        self.ex = None

    @property
    def in_flight(self):
        return self.ex is not None

    def names(self):
        """The names of the calls, in order."""
        return [c[0] for c in self.calls]

    def response(self):
        """The ("response", ...) call, or None."""
        for c in self.calls:
            if c[0] == "response":
                return c
        return None

    # ClientSide
    cdef bint ending(self):
        return self.draining

    cdef void arm_deadline(self, double seconds):
        self.calls.append(("deadline", seconds))

    cdef void begin_body(self):
        self.calls.append(("begin_body",))
        if self.head.framing != BODY_NONE:
            self.ex.request_data(self.first_body, 0, len(self.first_body), len(self.first_body),
                                 self.first_end)

    cdef void pause_body(self, int why):
        self.calls.append(("pause", why))

    cdef void resume_body(self, int why):
        self.calls.append(("resume", why))

    cdef void send_informational(self, ResponseHead rh):
        self.calls.append(("informational", rh.status))

    cdef void send_response(self, ResponseHead rh, HeadEdit edit, object data, Py_ssize_t off,
                            Py_ssize_t n, bint end):
        self.calls.append(("response", rh.status, edit.fields(rh, [], True),
                           bytes(data[off:off + n]) if n else b"", end))

    cdef void send_data(self, object data, Py_ssize_t off, Py_ssize_t n, bint end):
        self.calls.append(("data", bytes(data[off:off + n]) if n else b"", end))

    cdef void send_trailers(self, list fields):
        self.calls.append(("trailers", fields))

    cdef Py_ssize_t local_reply(self, int status, str reason, str detail, bytes rid_line):
        self.calls.append(("local_reply", status, reason))
        return 0

    cdef void done(self):
        self.calls.append(("done",))
        self.ex = None

    cdef void abort(self):
        self.calls.append(("abort",))
        self.ex = None

    cdef object tunnel_open(self):
        self.calls.append(("tunnel_open",))
        return None

    cdef void tunnel_write(self, object data):
        self.calls.append(("tunnel", bytes(data)))


cdef class RecordingUpstream(UpstreamSide):
    """An upstream side with no connection, offered in an endpoint's idle pool so that
    the next exchange to pick that endpoint takes it. The calls it gets are appended to
    `calls`: ("request", request line, [(name, value)], body) ("data", bytes)
    ("pause_reading",) ("resume_reading",) ("release", request_complete) ("reset",)."""
    cdef readonly list calls
    cdef bint head_request

    def __init__(self, Worker w, str cluster, int endpoint=0):
        self.calls = []
        self.offer(w, cluster, endpoint)

    def offer(self, Worker w, str cluster, int endpoint=0):
        """Put this side in the idle pool of the cluster's endpoint (by index)."""
        self.ep = (<Cluster>w.clusters[cluster]).endpoints[endpoint]
        self.closed = False
        self.pooled = True
        self.ep.idle.append(self)

    @property
    def attached(self):
        return self.ex is not None

    def names(self):
        return [c[0] for c in self.calls]

    def respond(self, bytes head, bytes body=b"", bint end=True):
        """The upstream answers: a response head (1xx ones too), and body bytes."""
        cdef ResponseHead rh = _parse_response(head, self.head_request)
        cdef Exchange ex = self.ex
        ex.response_arriving()
        if rh.status < 200:
            ex.informational(rh, False)
        else:
            ex.response_head(rh, body, 0, len(body), end)

    def body(self, bytes data, bint end=True):
        self.ex.response_data(data, 0, len(data), len(data), end)

    def trailers(self, list fields):
        self.ex.response_trailers(fields)

    def lost(self, str why="closed the connection"):
        """The connection ends before the response is complete."""
        cdef Exchange ex = self.ex
        self.closed = True
        ex.upstream_closed(why, False)

    def malformed(self, str detail):
        self.ex.upstream_failed(502, "bad_gateway", "malformed response: " + detail)

    def blocked(self, bint blocked):
        self.ex.upstream_blocked(blocked)

    # UpstreamSide
    cdef void send_request(self, RequestHead h, HeadEdit edit, list body, bint end):
        self.head_request = h.method == b"HEAD"
        self.calls.append(("request", h.raw[h.start:h.line_end - 2], edit.fields(h, [], True),
                           b"".join(body) if body else b""))

    cdef void send_data(self, bytes data, bint end):
        if data:
            self.calls.append(("data", data))

    cdef void send_trailers(self, list fields):
        self.calls.append(("trailers", fields))

    cdef void pause_reading(self):
        self.calls.append(("pause_reading",))

    cdef void resume_reading(self):
        self.calls.append(("resume_reading",))

    cdef void release(self, bint request_complete):
        self.calls.append(("release", request_complete))

    cdef void reset(self):
        self.calls.append(("reset",))
        self.closed = True
