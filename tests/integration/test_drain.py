"""SPEC §8 / §9 graceful drain, triggered by SIGTERM, SIGINT or POST /shutdown:

- /ready turns 503 (the admin API keeps answering while the proxy drains);
- listeners stop accepting: new connections are refused;
- idle keep-alive connections are closed;
- requests in flight finish (here: held at the upstream until the test releases them) and
  their responses carry `Connection: close` — a keep-alive client learns mid-drain that
  this connection is done;
- the process exits 0 once they are done (with several workers: every process).

The upstream holds each slow request until the test releases it, so the drain is
observed while a request is certainly in flight; no timing is asserted."""

from __future__ import annotations

import signal
import threading
import uuid

import httpx
import pytest

from support.observe import admin_call, ready_status, wait_ready
from support.procs import LOOPBACK, port_accepts, wait_until
from support.rawhttp import RawConn

pytestmark = pytest.mark.timeout(60)


def config(app: str) -> str:
    return f"""
[proxy]
admin = "${{listen:admin}}"
access_log = "off"
drain_timeout = "30s"

[[listener]]
name = "main"
bind = "${{listen:main}}"
  [[listener.route]]
  cluster = "app"

[cluster.app]
endpoints = ["{app}"]
"""


def trigger_drain(proxy, how: str) -> None:
    if how == "SIGTERM":
        proxy.signal(signal.SIGTERM)
    elif how == "SIGINT":
        proxy.signal(signal.SIGINT)
    else:
        reply = admin_call(proxy, "POST", "/shutdown")
        assert 200 <= reply.status < 300, reply
        assert reply.content_type.startswith("application/json"), reply.headers


@pytest.mark.parametrize("how,workers", [("SIGTERM", None), ("SIGINT", None),
                                         ("POST /shutdown", None), ("SIGTERM", 2),
                                         ("POST /shutdown", 2)],
                         ids=["sigterm", "sigint", "post-shutdown", "sigterm-2-workers",
                              "post-shutdown-2-workers"])
def test_drain_finishes_in_flight_requests_and_exits_0(fastproxy, shared_app, how, workers):
    proxy = fastproxy(config(shared_app.addr()), workers=workers)
    wait_ready(proxy)
    if workers:
        wait_until(lambda: len(proxy.workers()) == workers, deadline_s=10, what="workers")
    port = proxy.port()
    raw_tag, httpx_tag = uuid.uuid4().hex, uuid.uuid4().hex

    # an idle keep-alive connection: drain closes it
    idle = RawConn(port)
    idle.send(b"GET /echo HTTP/1.1\r\nHost: app\r\n\r\n")
    assert idle.read_response().status == 200

    # two keep-alive clients with a request in flight: a raw one and httpx
    held = RawConn(port, timeout=30)
    held.send(b"GET /echo HTTP/1.1\r\nHost: app\r\n\r\n")
    assert held.read_response().status == 200          # keep-alive established
    held.send(f"GET /slow?hold={raw_tag} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
    result = {}

    def httpx_client():
        try:
            with httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=30) as hc:
                assert hc.get("/echo").status_code == 200
                result["resp"] = hc.get("/slow", params={"hold": httpx_tag})
        except Exception as e:   # reported below
            result["error"] = repr(e)
    t = threading.Thread(target=httpx_client, daemon=True)
    t.start()
    try:
        wait_until(lambda: shared_app.seen(raw_tag) and shared_app.seen(httpx_tag),
                   deadline_s=10, what="both slow requests reached the upstream")
        trigger_drain(proxy, how)

        wait_until(lambda: ready_status(proxy) == 503, deadline_s=10,
                   what="/ready is 503 while draining")
        wait_until(lambda: not port_accepts(port), deadline_s=10,
                   what="new connections refused while draining")
        try:
            assert idle.wait_closed(10) == b"", "bytes on an idle connection during drain"
        except TimeoutError:
            pytest.fail("an idle keep-alive connection stayed open during drain")
        assert proxy.proc.poll() is None, "exited before the in-flight requests finished"
        assert ready_status(proxy) == 503

        shared_app.release(raw_tag)
        shared_app.release(httpx_tag)
        r = held.read_response()
        assert (r.status, r.body) == (200, b"slow done"), r
        assert "close" in [v.strip().lower() for v in ",".join(r.header_all("connection")).split(",")], \
            f"a response finished during drain must carry Connection: close: {r!r}"
        try:
            assert held.wait_closed(10) == b""
        except TimeoutError:
            pytest.fail("the connection stayed open after its Connection: close response")
        t.join(timeout=30)
        assert "error" not in result, result
        resp = result["resp"]
        assert (resp.status_code, resp.content) == (200, b"slow done")
        assert resp.headers.get("connection", "").lower() == "close", resp.headers
    finally:
        shared_app.release(raw_tag)
        shared_app.release(httpx_tag)
        idle.close()
        held.close()
    assert proxy.wait(timeout=20) == 0
    wait_until(lambda: not proxy.pids(), deadline_s=5, what="every process of the proxy exited")


def test_a_request_arriving_on_an_open_connection_mid_drain_is_answered_with_close(
        fastproxy, shared_app):
    """A keep-alive connection that is busy when the drain starts and sends its next
    request before the proxy closes it (pipelined behind the in-flight one): that request
    is either answered, with `Connection: close`, or never read — it never gets an error
    status, and the connection ends after the last response."""
    proxy = fastproxy(config(shared_app.addr()))
    wait_ready(proxy)
    tag = uuid.uuid4().hex
    with RawConn(proxy.port(), timeout=30) as c:
        c.send(f"GET /slow?hold={tag} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
        wait_until(lambda: shared_app.seen(tag), deadline_s=10, what="slow request arrived")
        proxy.signal(signal.SIGTERM)
        wait_until(lambda: ready_status(proxy) == 503, deadline_s=10, what="draining")
        c.send(b"GET /echo HTTP/1.1\r\nHost: app\r\n\r\n")
        shared_app.release(tag)
        first = c.read_response()
        assert (first.status, first.body) == (200, b"slow done"), first
        responses = [first]
        closes = [v.strip().lower() for v in ",".join(first.header_all("connection")).split(",")]
        if "close" not in closes:
            second = c.read_response()
            assert second.status == 200, f"the pipelined request got an error: {second!r}"
            responses.append(second)
            assert (second.header("connection") or "").lower() == "close", \
                f"the last response before the drain closes the connection: {second!r}"
        try:
            assert c.wait_closed(10) == b"", "a response after Connection: close"
        except TimeoutError:
            pytest.fail(f"connection left open after {len(responses)} responses during drain")
    assert proxy.wait(timeout=20) == 0
