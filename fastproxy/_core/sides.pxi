# Included by proxy.pyx: the two interfaces an Exchange talks through - ClientSide and
# UpstreamSide - and HeadEdit, the changes the proxy makes to a head it forwards.
#
# A *side* is one request's view of a connection: today the current request of an
# HTTP/1.1 client connection (Downstream) and a pooled HTTP/1.1 upstream connection
# (Upstream); for HTTP/2, one stream. The Exchange owns the policy - routing, splits,
# breakers, admission, retries, timeouts, the report - and never reads or writes a byte
# format; the sides own the framing (content-length, chunked, head parsing and writing).
#
# Heads cross the interface as `RequestHead`/`ResponseHead`: offsets into one buffer of
# a start line and `name: value\r\n` lines, with each field's kind classified. An HTTP/1.1
# side parses into it directly; an HTTP/2 side will decode HPACK into the same shape.
# Body bytes travel in the framing the head names: when a head says BODY_CHUNKED they are
# HTTP/1.1 chunked encoding, so HTTP/1.1 -> HTTP/1.1 passes them through untouched; when it
# says BODY_STREAM (an HTTP/2 body of unknown length) they are plain data, the end comes
# with the last of them, and trailers as fields of their own.

cdef inline uint64_t _kinds(int a, int b=0, int c=0, int d=0, int e=0, int f=0, int g=0) noexcept:
    """A set of HeaderKinds as bits (H_OTHER, 0, is never in a set)."""
    return ((<uint64_t>1) << a | (<uint64_t>1) << b | (<uint64_t>1) << c | (<uint64_t>1) << d
            | (<uint64_t>1) << e | (<uint64_t>1) << f | (<uint64_t>1) << g) & ~(<uint64_t>1)

# hop-by-hop fields (RFC 9110 §7.6.1) and those only the proxy sets: never forwarded as received
cdef uint64_t REQUEST_HOP_BY_HOP = _kinds(H_CONNECTION, H_KEEP_ALIVE, H_PROXY_CONNECTION, H_TE,
                                          H_TRANSFER_ENCODING, H_X_FORWARDED_PROTO, H_XFCC)
cdef uint64_t RESPONSE_HOP_BY_HOP = _kinds(H_CONNECTION, H_KEEP_ALIVE, H_PROXY_CONNECTION, H_TE,
                                           H_TRANSFER_ENCODING, H_UPGRADE)
cdef uint64_t B3_FIELDS = _kinds(H_B3, H_B3_TRACEID, H_B3_SPANID, H_B3_PARENTSPANID, H_B3_SAMPLED,
                                H_B3_FLAGS)


@cython.final
@cython.freelist(64)
cdef class HeadEdit:
    """How the proxy changes a head it forwards: computed once per message by the Exchange,
    applied by the side that writes the head. An HTTP/1.1 side applies it as copy runs of
    the received bytes (untouched adjacent fields are one memcpy); an HTTP/2 side applies
    it while encoding fields. Fields marked `drop` by the parser (named by Connection) are
    always left out. A side uses an edit only during the call that passes it."""
    cdef uint64_t drop          # bit k set: leave out the fields of HeaderKind k
    cdef int append_field       # index of the field whose value gets `append`, or -1
    cdef bytes append           # e.g. b", 10.0.0.7" after the last x-forwarded-for
    cdef bytes authority        # a host for a request head without one, else None
    cdef list lines             # the proxy's own fields, each b"name: value\r\n", in order

    cdef inline bint keeps(self, Field* f) noexcept:
        return not f.drop and not (self.drop >> f.kind) & 1

    cdef list fields(self, Head h, list out, bint host):
        """Append the edited head to `out` as (name, value) pairs, names lowercased: what
        a side that encodes fields (HTTP/2) sends. host: Host goes too; else the side
        sends it as :authority."""
        cdef bytes raw = h.raw
        cdef Field* f
        cdef int i
        for i in range(h.nfields):
            f = &h.fields[i]
            if self.keeps(f) and (host or f.kind != H_HOST):
                value = raw[f.value_start:f.value_end]
                if i == self.append_field:
                    value += self.append
                out.append((raw[f.line_start:f.name_end].lower(), value))
        if host and self.authority is not None:
            out.append((b"host", self.authority))
        add_lines(out, self.lines)
        return out


cdef void add_lines(list out, list lines):
    """Append the proxy's own `name: value\r\n` lines (one or more per item) to a field
    list, as (name, value) pairs: what a side that encodes fields sends of them."""
    cdef bytes block, line
    if lines is None:
        return
    for block in lines:
        for line in block.split(CRLF):
            if line:
                name, _, value = line.partition(b":")
                out.append((name, value.strip()))


cdef inline HeadEdit new_edit(uint64_t drop):
    cdef HeadEdit e = HeadEdit.__new__(HeadEdit)
    e.drop = drop
    e.append_field = -1
    return e


@cython.final
cdef class Destination:
    """Where a transparent listener's connection was going before iptables redirected it
    (SO_ORIGINAL_DST), worked out once per connection: for route matches, for the
    original_destination cluster and passthrough, and for logs and spans."""
    cdef readonly object address    # the address as an int (route destinations)
    cdef readonly int version       # 4 or 6
    cdef readonly int port
    cdef readonly str text          # "10.96.0.10:9080", "[fd00::1]:9080"
    cdef readonly str forward_host  # where it is forwarded: outbound the address itself,
                                    # inbound the application on loopback

    def __init__(self, str host, int port, bint outbound):
        address = ipaddress.ip_address(host)
        self.address, self.version, self.port = int(address), address.version, port
        self.text = f"[{host}]:{port}" if self.version == 6 else f"{host}:{port}"
        self.forward_host = host if outbound else LOOPBACK_OF[self.version]


cdef class ClientSide:
    """One request's view of a client connection, as its Exchange sees it.

    The Exchange calls, in order: `arm_deadline` and `begin_body` once the route is
    known; `pause_body`/`resume_body` as the upstream keeps up or not; then either
    `send_informational`* `send_response` `send_data`* (the last with end=True, or
    `send_trailers`), or `local_reply` for an answer of the proxy's own; and finally
    `done`, or `abort` when a
    response that already started cannot be completed. It calls the Exchange back with
    `Exchange.start`, `request_data`, `client_blocked`, `timed_out` and `client_gone`.
    """
    cdef Worker w
    cdef ListenerState ls
    cdef readonly bytes client_ip
    cdef readonly str peer_id       # the verified SPIFFE id of an mtls client, else None
    cdef bint h2                    # the client speaks HTTP/2
    cdef bint orig_h1               # ... for an HTTP/1.1 client behind a peer sidecar (SPEC §12)
    cdef bint grpc                  # the request is gRPC (content-type application/grpc*)
    cdef bytes forwarded_lines      # x-forwarded-for, -proto and -client-cert, for requests without XFF
    cdef bytes proto_lines          # x-forwarded-proto and -client-cert, for requests with XFF
    cdef bint denied                # the peer is not in the listener's allow
    cdef dict route_allowed         # per-route allow decisions for this peer
    cdef bint write_blocked         # the client is not taking response bytes now
    cdef Destination dest           # a transparent listener's connection: where it was going

    cdef void set_peer(self, str peer_id, bint tls):
        """Who the client is (peer_id: its verified SPIFFE id, None without mtls; tls: the
        connection is TLS), and so the x-forwarded-* and x-forwarded-client-cert lines its
        requests carry upstream. A plain caller of a permissive listener passes only
        where `allow` admits everyone."""
        cdef ListenerState ls = self.ls
        self.peer_id = peer_id
        self.proto_lines = ls.proto_line if tls else PLAIN_PROTO_LINE
        if peer_id is None:
            self.denied = ls.tls_mode == TLS_PERMISSIVE and not ls.allow_all
        else:
            self.denied = not ls.allow_all and not self.w.id_allowed(ls.allow, peer_id)
            self.proto_lines += ls.xfcc_prefix + peer_id.encode() + CRLF
        self.forwarded_lines = b"x-forwarded-for: " + self.client_ip + CRLF + self.proto_lines

    cdef void same_peer(self, ClientSide other):
        """The peer of another side of the same connection (an HTTP/2 stream's): what
        set_peer worked out for it, without working it out again."""
        self.client_ip = other.client_ip
        self.peer_id = other.peer_id
        self.forwarded_lines = other.forwarded_lines
        self.proto_lines = other.proto_lines
        self.denied = other.denied
        self.dest = other.dest

    cdef bint forbidden(self, Route route):
        """Whether this mtls peer may not use the route (listener and route allow)."""
        if self.denied:
            return True
        if route is None or route.allow is None:
            return False
        if self.peer_id is None:     # a plain caller of a permissive listener
            return "*" not in route.allow
        if self.route_allowed is None:
            self.route_allowed = {}
        ok = self.route_allowed.get(route)
        if ok is None:
            ok = self.route_allowed[route] = bool(self.w.id_allowed(route.allow, self.peer_id))
        return not ok

    cdef bint ending(self):
        """The connection will not carry another request (drain, listener gone, GOAWAY)."""
        return False

    cdef void arm_deadline(self, double seconds):
        """The request must be answered within `seconds` (the route's timeout)."""

    cdef void begin_body(self):
        """The request goes ahead: pass on the body bytes that came with the head, and
        ask the client for the rest (100 Continue). May end the exchange (a bad body)."""

    cdef void pause_body(self, int why):
        """Stop taking request body bytes (why: a P_* bit) until resume_body(why)."""

    cdef void resume_body(self, int why):
        pass

    cdef void send_informational(self, ResponseHead rh):
        """A 1xx response head, passed on where the client's protocol allows."""

    cdef void send_response(self, ResponseHead rh, HeadEdit edit, object data, Py_ssize_t off,
                            Py_ssize_t n, bint end):
        """The final response head, and the first n body bytes of data[off:]; end: that is
        the whole response."""

    cdef void send_data(self, object data, Py_ssize_t off, Py_ssize_t n, bint end):
        """n more response body bytes of data[off:]; end: the response is complete."""

    cdef void send_trailers(self, list fields):
        """The response's trailers [(name, value)], which complete it (BODY_STREAM)."""

    cdef Py_ssize_t local_reply(self, int status, str reason, str detail, bytes rid_line):
        """An answer of the proxy's own (docs/http.md); returns the size of its body."""
        return 0

    cdef void done(self):
        """The exchange is over: the side may serve its next request."""

    cdef void abort(self):
        """The response cannot be completed: end it so that the client sees it cut short."""

    # Upgrade tunnels (HTTP/1.1): after a 101, bytes flow both ways untouched
    cdef object tunnel_open(self):
        """The tunnel starts: returns the bytes the client already sent into it, or None."""
        return None

    cdef void tunnel_write(self, object data):
        pass

    cdef bint tunnel_write_eof(self):
        """Pass the upstream's half-close on; False when the transport cannot."""
        return False


cdef class UpstreamSide:
    """One request's view of an upstream connection, as its Exchange sees it.

    The Exchange calls `send_request` once attached (again on a fresh side for a retry
    or a resend), `send_data` for more request body and `send_trailers` for a BODY_STREAM
    body's trailers, `pause_reading`/`resume_reading` as
    the client keeps up or not, and finally `release` when the response is complete or
    `reset` to abandon it. The side calls the Exchange back with `response_arriving`,
    `informational`, `response_head`, `response_data`, `response_trailers`,
    `upstream_closed` and `upstream_blocked`.
    """
    cdef Endpoint ep
    cdef Exchange ex
    cdef bint closed
    cdef bint pooled             # in its endpoint's idle list

    cdef void send_request(self, RequestHead h, HeadEdit edit, list body, bint end):
        """The request head, and the body bytes that are ready (each in the head's
        framing); end: that is the whole request."""

    cdef void send_data(self, bytes data, bint end):
        """More request body bytes; end: the body is complete."""

    cdef void send_trailers(self, list fields):
        """The request's trailers [(name, value)], which complete it (BODY_STREAM)."""

    cdef void pause_reading(self):
        pass

    cdef void resume_reading(self):
        pass

    cdef void release(self, bint request_complete):
        """The response is complete: the connection goes back to the pool when it can
        carry another request (the whole request went out), else it closes."""

    cdef void reset(self):
        """Abandon the request: the connection closes."""

    cdef bint close_may_be_race(self):
        """A close of a reused connection before any response byte may be the keep-alive
        race (the server closed it idle as we sent): the request never reached the
        application and may go again. HTTP/1.1 yes; HTTP/2 says which streams it never
        took with GOAWAY, and without one a stream may have reached the application."""
        return True

    cdef void tunnel_write(self, object data):
        pass

    cdef bint tunnel_write_eof(self):
        return False
