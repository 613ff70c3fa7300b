"""The Exchange's policy with fake sides: no sockets, no event loop.

`RecordingClient` and `RecordingUpstream` (fastproxy/_core/testing.pxi) stand in for a
protocol: the client starts a request the way a connection does, the upstream answers
the way a parsed response arrives, and both record every call the Exchange makes of
them. So routing, head edits, retries, breakers, admission, timeouts and backpressure
are checked here once for every protocol; a new protocol's sides get the same template.
"""
from __future__ import annotations

import uuid

import pytest

from fastproxy.config import loads
from fastproxy.config.compile import compile_snapshot

proxy = pytest.importorskip("fastproxy._core.proxy", reason="the Cython core is not built (make build)")
RecordingClient, RecordingUpstream = proxy.RecordingClient, proxy.RecordingUpstream

CONFIG = """
[proxy]
admin = ""

[[listener]]
name = "l"
bind = "127.0.0.1:1"
  [[listener.route]]
  prefix = "/retry"
  cluster = "two"
  retries = 1
  retry_on = ["reset", "5xx"]
  [[listener.route]]
  prefix = "/split"
  split = [ { cluster = "one", weight = 1 }, { cluster = "two", weight = 0 } ]
  [[listener.route]]
  prefix = "/guarded"
  cluster = "guarded"
  [[listener.route]]
  prefix = "/narrow"
  cluster = "narrow"
  [[listener.route]]
  host = "svc"
  prefix = "/"
  cluster = "one"
  timeout = "3s"

[cluster.one]
endpoints = ["127.0.0.1:2"]
[cluster.two]
endpoints = ["127.0.0.1:3", "127.0.0.1:4"]
[cluster.guarded]
endpoints = ["127.0.0.1:5"]
  [cluster.guarded.circuit_breaker]
  max_failures = 1
  window = "10s"
  open_for = "60s"
[cluster.narrow]
endpoints = ["127.0.0.1:6"]
max_connections = 1
max_pending = 1
"""

GET = b"GET /x HTTP/1.1\r\nHost: svc\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
P_UPSTREAM, P_QUEUE = 1, 2


@pytest.fixture
def worker():
    w = proxy.Worker(None)
    w.install(compile_snapshot(loads(CONFIG, "test.toml")))
    return w


def fields(call):
    """The (name, value) pairs of a recorded head, names lowercased, as str."""
    return [(n.decode().lower(), v.decode()) for n, v in call[2]]


def field(call, name):
    values = [v for n, v in fields(call) if n == name]
    assert len(values) <= 1, values
    return values[0] if values else None


def errors(w):
    """(status, error) of the records the worker made (errors and 5xx)."""
    return [(r[10], r[11]) for r in w.take_records()]


# -- the request going upstream --------------------------------------------------------------
def test_the_request_goes_upstream_with_hop_by_hop_fields_out_and_ours_in(worker):
    up = RecordingUpstream(worker, "one")
    client = RecordingClient(worker, "l", "10.1.2.3")
    client.request(b"GET /x?q=1 HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, x-secret\r\n"
                   b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Forwarded-Proto: https\r\n"
                   b"X-Custom: kept\r\n\r\n")
    assert client.names()[:2] == ["deadline", "begin_body"]
    assert client.calls[0] == ("deadline", 3.0)   # the route's timeout
    (name, line, _, body), = [c for c in up.calls if c[0] == "request"]
    sent = fields(up.calls[0])
    assert line == b"GET /x?q=1 HTTP/1.1" and body == b""
    names = [n for n, _ in sent]
    assert "connection" not in names and "keep-alive" not in names and "x-secret" not in names
    assert ("x-custom", "kept") in sent and ("host", "svc") in sent
    assert field(up.calls[0], "x-forwarded-for") == "10.1.2.3"
    assert field(up.calls[0], "x-forwarded-proto") == "http"   # ours, not the client's
    assert uuid.UUID(field(up.calls[0], "x-request-id"))   # a new one


def test_an_existing_forwarded_for_gets_the_client_appended_and_a_request_id_is_kept(worker):
    up = RecordingUpstream(worker, "one")
    client = RecordingClient(worker, "l", "10.1.2.3")
    client.request(b"GET / HTTP/1.1\r\nHost: svc\r\nX-Forwarded-For: 192.0.2.1\r\n"
                   b"X-Request-Id: abc\r\n\r\n")
    assert field(up.calls[0], "x-forwarded-for") == "192.0.2.1, 10.1.2.3"
    assert field(up.calls[0], "x-request-id") == "abc"
    up.respond(OK, b"ok")
    assert field(client.response(), "x-request-id") == "abc"   # the response carries it too


def test_a_request_without_host_gets_the_clusters_default_host(worker):
    up = RecordingUpstream(worker, "two")
    up2 = RecordingUpstream(worker, "two", 1)
    RecordingClient(worker, "l").request(b"GET /retry HTTP/1.0\r\n\r\n")
    request = next(c for u in (up, up2) for c in u.calls if c[0] == "request")
    assert field(request, "host") in ("127.0.0.1:3", "127.0.0.1:4")


# -- the response ----------------------------------------------------------------------------
def test_the_response_comes_back_and_the_upstream_is_released_before_the_client_moves_on(worker):
    up = RecordingUpstream(worker, "one")
    client = RecordingClient(worker, "l")
    client.request(GET)
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n"
               b"Keep-Alive: timeout=5\r\nX-App: 1\r\n\r\n", b"ok")
    status, body, end = client.response()[1], client.response()[3], client.response()[4]
    assert (status, body, end) == (200, b"ok", True)
    names = [n for n, _ in fields(client.response())]
    assert "connection" not in names and "keep-alive" not in names and "x-app" in names
    assert up.calls[-1] == ("release", True)
    assert client.calls[-1] == ("done",) and not client.in_flight
    assert errors(worker) == []


def test_a_streamed_body_goes_on_as_it_comes_both_ways(worker):
    up = RecordingUpstream(worker, "one")
    client = RecordingClient(worker, "l")
    client.request(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\n", b"abcd", end=False)
    assert up.calls[0][3] == b"abcd"
    client.body(b"efghij")
    assert up.calls[-1] == ("data", b"efghij")
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n", b"12", end=False)
    assert client.response()[3:] == (b"12", False)
    up.body(b"3456")
    assert client.calls[-2:] == [("data", b"3456", True), ("done",)]
    assert ("release", True) in up.calls


def test_trailers_pass_both_ways_and_are_kept_for_a_retry(worker):
    """An HTTP/2 side's body of unknown length (BODY_STREAM) ends with trailers: they go
    upstream after the body, again with it on a retry, and back to the client."""
    first, second = RecordingUpstream(worker, "two", 0), RecordingUpstream(worker, "two", 1)
    client = RecordingClient(worker, "l")
    client.request(b"POST /retry HTTP/1.1\r\nHost: svc\r\n\r\n", b"ab", end=False, stream=True)
    client.trailers([(b"x-sum", b"1")])
    attached = first if first.attached else second
    assert attached.calls[-1] == ("trailers", [(b"x-sum", b"1")])
    attached.respond(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
    other = second if attached is first else first
    assert other.names() == ["request", "trailers"] and other.calls[0][3] == b"ab"
    other.respond(b"HTTP/1.1 200 OK\r\n\r\n", b"x", end=False)
    other.trailers([(b"grpc-status", b"0")])
    assert client.names()[-3:] == ["response", "trailers", "done"]
    assert client.calls[-2] == ("trailers", [(b"grpc-status", b"0")])
    assert ("release", True) in other.calls


def test_informational_responses_are_relayed_before_the_final_one(worker):
    up = RecordingUpstream(worker, "one")
    client = RecordingClient(worker, "l")
    client.request(GET)
    up.respond(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
    up.respond(OK, b"ok")
    assert client.names()[-3:] == ["informational", "response", "done"]
    assert client.calls[-3] == ("informational", 103)


# -- answers of the proxy's own --------------------------------------------------------------
def test_no_route_is_a_404_and_nothing_goes_upstream(worker):
    up = RecordingUpstream(worker, "one")
    client = RecordingClient(worker, "l")
    client.request(b"GET / HTTP/1.1\r\nHost: elsewhere\r\n\r\n")
    assert client.calls == [("local_reply", 404, "no_route"), ("done",)]
    assert up.calls == [] and not up.attached
    assert errors(worker) == [(404, "no_route")]


def test_a_malformed_response_is_a_502_and_the_upstream_is_dropped(worker):
    up = RecordingUpstream(worker, "one")
    client = RecordingClient(worker, "l")
    client.request(GET)
    up.malformed("bad status line")
    assert client.calls[-2:] == [("local_reply", 502, "bad_gateway"), ("done",)]
    assert up.calls[-1] == ("reset",)
    assert errors(worker) == [(502, "bad_gateway")]


def test_the_route_timeout_is_a_504_before_the_response_and_a_cut_after(worker):
    up = RecordingUpstream(worker, "one")
    client = RecordingClient(worker, "l")
    client.request(GET)
    client.time_out()
    assert client.calls[-2:] == [("local_reply", 504, "upstream_timeout"), ("done",)]
    assert up.calls[-1] == ("reset",)

    up2 = RecordingUpstream(worker, "one")
    late = RecordingClient(worker, "l")
    late.request(GET)
    up2.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", b"par", end=False)
    late.time_out()
    assert late.calls[-1] == ("abort",)        # the client sees a cut, not a second head
    assert up2.calls[-1] == ("reset",)
    assert errors(worker) == [(504, "upstream_timeout"), (200, "upstream_timeout")]


def test_an_upstream_lost_mid_body_cuts_the_response(worker):
    up = RecordingUpstream(worker, "one")
    client = RecordingClient(worker, "l")
    client.request(GET)
    up.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", b"par", end=False)
    up.lost()
    assert client.calls[-1] == ("abort",)
    assert errors(worker) == [(200, "upstream_reset")]


def test_a_client_that_leaves_abandons_the_upstream(worker):
    up = RecordingUpstream(worker, "one")
    client = RecordingClient(worker, "l")
    client.request(GET)
    client.gone()
    assert up.calls[-1] == ("reset",)
    assert "done" not in client.names()


# -- retries, breakers, splits, admission -----------------------------------------------------
def test_a_5xx_is_retried_on_the_other_endpoint_with_the_kept_body(worker):
    ups = [RecordingUpstream(worker, "two", 0), RecordingUpstream(worker, "two", 1)]
    client = RecordingClient(worker, "l")
    client.request(b"POST /retry HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\n", b"hello")
    first = next(u for u in ups if u.attached)
    first.respond(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
    assert first.calls[-1] == ("reset",)
    second = next(u for u in ups if u.attached)
    assert second is not first
    a, b = first.calls[0], second.calls[0]
    assert a[1] == b[1] == b"POST /retry HTTP/1.1" and a[3] == b[3] == b"hello"
    assert field(a, "x-request-id") == field(b, "x-request-id")   # the same request
    second.respond(OK, b"ok")
    assert client.response()[1] == 200
    assert "local_reply" not in client.names()


def test_without_retries_a_5xx_goes_to_the_client(worker):
    up = RecordingUpstream(worker, "one")
    client = RecordingClient(worker, "l")
    client.request(GET)
    up.respond(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
    assert client.response()[1] == 503 and up.calls[-1] == ("release", True)
    assert errors(worker) == [(503, None)]


def test_the_circuit_opens_after_too_many_failures_and_refuses_without_calling_upstream(worker):
    for _ in range(2):                       # more than max_failures = 1
        up = RecordingUpstream(worker, "guarded")
        client = RecordingClient(worker, "l")
        client.request(b"GET /guarded HTTP/1.1\r\nHost: svc\r\n\r\n")
        up.respond(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
    up = RecordingUpstream(worker, "guarded")
    client = RecordingClient(worker, "l")
    client.request(b"GET /guarded HTTP/1.1\r\nHost: svc\r\n\r\n")
    assert client.calls[-2:] == [("local_reply", 503, "circuit_open"), ("done",)]
    assert not up.attached


def test_a_split_sends_to_the_weighted_cluster(worker):
    one = RecordingUpstream(worker, "one")
    two = [RecordingUpstream(worker, "two", 0), RecordingUpstream(worker, "two", 1)]
    for _ in range(3):
        client = RecordingClient(worker, "l")
        client.request(b"GET /split HTTP/1.1\r\nHost: svc\r\n\r\n")
        assert one.attached and not any(u.attached for u in two)
        one.respond(OK, b"ok")
        one.offer(worker, "one")


def test_beyond_max_connections_requests_wait_then_beyond_max_pending_get_503(worker):
    narrow = b"GET /narrow HTTP/1.1\r\nHost: svc\r\n\r\n"
    first_up = RecordingUpstream(worker, "narrow")
    first = RecordingClient(worker, "l")
    first.request(narrow)
    assert first_up.attached
    second = RecordingClient(worker, "l")
    second.request(narrow)                   # waits for the slot
    third = RecordingClient(worker, "l")
    third.request(narrow)
    assert third.calls[-2:] == [("local_reply", 503, "overloaded"), ("done",)]
    second_up = RecordingUpstream(worker, "narrow")
    assert not second_up.attached and second.in_flight
    first_up.respond(OK, b"ok")              # frees the slot: the waiting one goes
    assert second_up.attached


# -- backpressure ----------------------------------------------------------------------------
def test_backpressure_passes_both_ways(worker):
    up = RecordingUpstream(worker, "one")
    client = RecordingClient(worker, "l")
    client.request(GET)
    client.blocked(True)
    client.blocked(False)
    assert up.names()[-2:] == ["pause_reading", "resume_reading"]
    up.blocked(True)
    up.blocked(False)
    assert client.calls[-2:] == [("pause", P_UPSTREAM), ("resume", P_UPSTREAM)]


def test_a_client_already_blocked_gets_its_upstream_paused_on_attach(worker):
    up = RecordingUpstream(worker, "one")
    client = RecordingClient(worker, "l")
    client.blocked(True)
    client.request(GET)
    assert up.names()[-1] == "pause_reading"
