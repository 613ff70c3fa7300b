"""The forwarding core: client connections, upstream pools and the exchange between them.

Owns everything a proxied request touches: accepting client connections, parsing request
heads, routing, pooled upstream connections, streaming bodies both ways with
backpressure, timeouts, and the proxy's own error responses. It never calls into Python
per request unless a feature asks for it; the Python layer hands a `Worker` a compiled
configuration snapshot (fastproxy.config.compile).

An `Exchange` is one request and its response. It owns the policy and no byte format: it
sees a *client side* and an *upstream side* (sides.pxi), today the HTTP/1.1 `Downstream`
and `Upstream`, which own parsing and framing. The phases of one request, in order:
  1. Downstream.process        parse the head (http1.parse_request), refuse bad input
  2. Exchange.start            authorize, route (404 no_route), split and circuit breaker
  3. Exchange.edit_request     the HeadEdit: hop-by-hop out, x-forwarded-*, x-request-id,
                               trace context
  4. ClientSide.begin_body     the body that came with the head; 100 Continue
  5. Exchange.connect/attach   a cluster slot, an endpoint, an idle pooled connection or a
                               new one (503 on failure); UpstreamSide.send_request
  6. Exchange.response_head/_data  the response as the upstream side parsed it, passed on
                               through ClientSide.send_response/send_data; retries, resends
  7. Exchange.finish           report, pool the upstream connection, hand the client
                               connection back to its next (pipelined) request

One extension assembled from per-concern include files (as uvloop's loop.pyx is), so the
classes call each other through typed attributes with no module boundary in between:
  heads.pxi        HeadWriter: outgoing heads as copy runs of received bytes plus our lines
  resilience.pxi   the shared circuit breaker, the retry budget, weighted splits
  telemetry.pxi    the shared metric table, trace context
  accesslog.pxi    access-log lines written by the core
  routing.pxi      compiled routes and listeners (Route, ListenerState, Port)
  pool.pxi         Endpoint (idle pool, ejection), Admission, Cluster (balancing, outliers)
  worker.pxi       Worker: connections, configuration snapshots, client admission, drain
  sides.pxi        ClientSide, UpstreamSide, HeadEdit: all the Exchange sees of a protocol
  client_h1.pxi    Downstream: an HTTP/1.1 client connection and its ClientSide
  exchange.pxi     Exchange: one request and its response, from routing to the report
  upstream_h1.pxi  Upstream: a pooled HTTP/1.1 connection and its UpstreamSide; _Connect
  testing.pxi      sides that record what an Exchange asks of them, for the unit tests
"""
import asyncio
import hashlib
import ipaddress
import logging
import os
import socket
from collections import deque

from fastproxy._core.tls import TLSContext, TLSError, TLSLink

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memcmp
from libc.stdint cimport uint32_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from fastproxy._core.http2 cimport (
    ClientSession, ServerSession, SessionHandler, check_trailers, request_head_bytes,
    response_head_bytes,
)
from fastproxy._core.http2 import H2Error, MalformedMessage
from fastproxy._core.http1 cimport (
    Head, RequestHead, ResponseHead, ChunkedReader, Field, parse_request, parse_response, ascii_ieq,
    H_OTHER, H_HOST, H_CONTENT_LENGTH, H_TRANSFER_ENCODING, H_CONNECTION, H_KEEP_ALIVE,
    H_PROXY_CONNECTION, H_TE, H_UPGRADE, H_EXPECT, H_X_FORWARDED_FOR, H_X_FORWARDED_PROTO,
    H_X_REQUEST_ID, H_XFCC, H_TRACEPARENT, H_TRACESTATE, H_B3, H_B3_TRACEID, H_B3_SPANID,
    H_B3_PARENTSPANID, H_B3_SAMPLED, H_B3_FLAGS,
    BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_UNTIL_CLOSE, BODY_STREAM,
)

cdef enum:
    REPLAY_LIMIT = 65536       # request bytes kept for a resend (docs/http.md, docs/traffic.md)
    QUEUE_LIMIT = 65536        # bytes held for an upstream that is still connecting
    PIPELINE_LIMIT = 65536     # pipelined bytes held while a request is in flight
    MAX_RESPONSE_HEAD = 65536
    MAX_RESPONSE_FIELDS = 256
    IDLE_PER_ENDPOINT = 1024
    RECORD_LIMIT = 16384       # records waiting for the drain timer; beyond: dropped, counted

cdef double WIND_DOWN_GRACE = 0.5   # seconds an idle connection stays open once told to close

# client connection states
cdef enum:
    S_IDLE = 0       # waiting for the first byte of a request head
    S_HEAD = 1       # part of a head received
    S_EXCHANGE = 2   # a request is being proxied
    S_TUNNEL = 3     # an Upgrade tunnel: bytes flow both ways
    S_CLOSED = 4
    S_H2 = 5         # the connection speaks HTTP/2: its H2Client has it
    S_LINGER = 6     # closing after a protocol error: what comes is read and dropped, so
                     # that the last frames (GOAWAY) are not lost to a reset
    S_PASS = 7       # a transparent listener's non-HTTP connection: bytes relayed as they are

cdef bytes PLAIN_PROTO_LINE = b"x-forwarded-proto: http\r\n"

# lingering, at most this much is read and dropped before the connection closes anyway
cdef Py_ssize_t LINGER_MAX_BYTES = 256 * 1024

# why a client connection is not being read
cdef enum:
    P_UPSTREAM = 1   # the upstream's write buffer is full
    P_QUEUE = 2      # the upstream is still connecting and enough is queued
    P_PIPELINE = 4   # enough pipelined requests are waiting
    P_ADMISSION = 8  # over max_connections: waits until a slot frees
    P_CLIENT = 16    # HTTP/2: the client does not take what we write

# why a worker stopped accepting connections (Worker.accept_paused bits)
cdef enum:
    A_WAITING = 1      # as many connections wait for a slot as max_connections
    A_DESCRIPTORS = 2  # file descriptors are running short

cdef double PAUSE_LOG_EVERY = 10.0   # seconds between warnings that accepting stopped

cdef dict REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 400: b"Bad Request",
    403: b"Forbidden", 404: b"Not Found", 408: b"Request Timeout",
    431: b"Request Header Fields Too Large", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout",
}

log = logging.getLogger("fastproxy")

# the numbers fastproxy.config.compile gives: the order of the tuples in config.model
cdef enum:
    TLS_OFF = 0
    TLS_SERVER = 1   # "tls": server-authenticated TLS
    TLS_MUTUAL = 2   # "mtls": both sides present SPIFFE certificates
    TLS_PERMISSIVE = 3   # listeners: "mtls" for TLS connections, plain ones taken too

cdef enum:
    RETRY_CONNECT = 1
    RETRY_RESET = 2
    RETRY_5XX = 4
    RETRY_GATEWAY = 8
    RETRY_GRPC_CANCELLED = 16
    RETRY_GRPC_DEADLINE = 32
    RETRY_GRPC_EXHAUSTED = 64
    RETRY_GRPC_INTERNAL = 128
    RETRY_GRPC_UNAVAILABLE = 256

# HTTP/2 error codes (RFC 9113 §7) the core sends or acts on
cdef enum:
    H2_NO_ERROR = 0
    H2_PROTOCOL_ERROR = 1
    H2_INTERNAL_ERROR = 2
    H2_REFUSED_STREAM = 7
    H2_CANCEL = 8
    H2_ENHANCE_YOUR_CALM = 11

# a cluster's protocol (SPEC §12), in the order of fastproxy.config.model.PROTOCOLS
cdef enum:
    PROTO_AUTO = 0
    PROTO_HTTP1 = 1
    PROTO_HTTP2 = 2

cdef enum:
    BALANCE_ROUND_ROBIN = 0
    BALANCE_LEAST_REQUEST = 1
    BALANCE_RANDOM = 2

cdef dict PARSE_REASONS = {400: "bad_request", 431: "header_too_large", 501: "not_implemented"}

cdef bytes CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
cdef bytes CRLF = b"\r\n"


cdef inline double monotonic() noexcept:
    """The event loop's clock (libuv reads CLOCK_MONOTONIC too), without a Python call."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef char* HEX = b"0123456789abcdef"


include "heads.pxi"
include "resilience.pxi"
include "telemetry.pxi"
include "accesslog.pxi"
include "routing.pxi"
include "pool.pxi"
include "worker.pxi"
include "sides.pxi"
include "client_h1.pxi"
include "upstream_h2.pxi"
include "client_h2.pxi"
include "exchange.pxi"
include "upstream_h1.pxi"
include "testing.pxi"
