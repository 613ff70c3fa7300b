"""SPEC §3: `Upgrade` (WebSocket) — the tunnel opens only on a 101 from upstream, then
bytes flow both ways until either side closes. An Upgrade answered with anything else is
an ordinary response."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import websockets.exceptions
import websockets.sync.client as ws_client

from support.configs import simple_config
from support.procs import wait_until
from support.rawhttp import ConnectionClosed, RawConn

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def proxy(fastproxy, shared_app):
    return fastproxy(simple_config(shared_app.addr()))


def test_websocket_echo_through_the_proxy(proxy):
    with ws_client.connect(f"ws://127.0.0.1:{proxy.port()}/ws", open_timeout=10,
                           max_size=8 * 1024 * 1024) as ws:
        for i in range(20):
            ws.send(f"message {i}")
            assert ws.recv(timeout=10) == f"message {i}"
        big = bytes(range(256)) * 4096  # 1 MiB binary frame
        ws.send(big)
        assert ws.recv(timeout=10) == big
        ws.close()


def test_websocket_server_refusal_is_not_a_tunnel(proxy):
    """The `websockets` client gets the upstream's 200 as a rejected handshake."""
    with pytest.raises(websockets.exceptions.InvalidStatus) as e:
        ws_client.connect(f"ws://127.0.0.1:{proxy.port()}/upgrade-refused", open_timeout=10)
    assert e.value.response.status_code == 200
    assert e.value.response.body == b"no upgrade"


UPGRADE_REQUEST = (b"GET /upgrade HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\n"
                   b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def test_upgrade_answered_200_stays_http(fastproxy, raw_upstream):
    """After a 200 to an Upgrade request, the next bytes from the client are HTTP again:
    bytes that are not a request get a 400 (or a close), never reach the upstream."""
    up = raw_upstream({"rules": [{"prefix": "/upgrade", "actions": [
        {"send": "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nno upgrade"}]}]})
    proxy = fastproxy(simple_config(up.addr))
    with RawConn(proxy.port(), timeout=10) as c:
        c.send(UPGRADE_REQUEST)
        r = c.read_response()
        assert (r.status, r.body) == (200, b"no upgrade")
        c.send(b"NOT-HTTP tunnel bytes\r\n\r\n")
        try:
            after = c.read_response(timeout=5)
        except (ConnectionClosed, TimeoutError):
            after = None  # closed, or nothing came back: the upstream check below decides
        if after is not None:
            assert after.status == 400, after
    recorded = up.total_bytes()
    assert b"NOT-HTTP" not in recorded, "bytes after a non-101 response were tunnelled"
    # the upgrade request itself was forwarded as an upgrade attempt
    req = up.requests()[0]
    assert req.header("upgrade") == "websocket"
    assert "upgrade" in (req.header("connection") or "").lower()


def test_upgrade_answered_101_tunnels_raw_bytes(fastproxy, raw_upstream):
    """On 101 the proxy becomes a byte pipe: whatever the client sends afterwards reaches
    the upstream unparsed, and the upstream's bytes reach the client."""
    up = raw_upstream({"rules": [{"prefix": "/upgrade", "actions": [
        {"send": "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                 "server-hello"},
        {"hang": True}]}]})
    proxy = fastproxy(simple_config(up.addr))
    with RawConn(proxy.port(), timeout=10) as c:
        c.send(UPGRADE_REQUEST)
        r = c.read_head(deadline=time.monotonic() + 10)
        assert r.status == 101
        assert r.header("upgrade") == "websocket"
        assert c.read_bytes(len(b"server-hello")) == b"server-hello"
        c.send(b"\x00\x01 raw client bytes, not HTTP \xff")
        wait_until(lambda: b"raw client bytes" in up.total_bytes(), deadline_s=10,
                   what="client bytes reach the upstream through the tunnel")


@pytest.mark.timeout(90)
def test_finished_websocket_does_not_hold_up_drain(fastproxy, shared_app):
    """SPEC §9: on SIGTERM in-flight requests finish, idle connections close, exit 0. A
    WebSocket session that already ended is not in flight: drain must not sit out the
    whole drain_timeout for it."""
    proxy = fastproxy(simple_config(shared_app.addr(), drain_timeout="30s"))
    with ws_client.connect(f"ws://127.0.0.1:{proxy.port()}/ws", open_timeout=10) as ws:
        ws.send("bye")
        assert ws.recv(timeout=10) == "bye"
    proxy.signal(signal.SIGTERM)
    try:
        assert proxy.wait(timeout=10) == 0
    except subprocess.TimeoutExpired:
        proxy.kill()
        pytest.fail("with nothing in flight, SIGTERM did not exit within 10 s "
                    "(drain_timeout is 30 s): the closed tunnel is still counted")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("who_closes", ["client", "upstream"])
def test_finished_raw_tunnel_does_not_hold_up_drain(fastproxy, raw_upstream, who_closes):
    actions = [{"send": "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                        "Upgrade: websocket\r\n\r\nhello"}]
    if who_closes == "upstream":
        actions.append({"close": True})
    up = raw_upstream({"rules": [{"prefix": "/upgrade", "actions": actions}]})
    proxy = fastproxy(simple_config(up.addr, drain_timeout="30s"))
    with RawConn(proxy.port(), timeout=10) as c:
        c.send(UPGRADE_REQUEST)
        assert c.read_head(deadline=time.monotonic() + 10).status == 101
        assert c.read_bytes(5) == b"hello"
        if who_closes == "upstream":
            assert c.wait_closed(10) == b""
    # either way the proxy closes the other side of the tunnel
    wait_until(lambda: up.closed_by_peer(0), deadline_s=10, what="tunnel fully closed")
    proxy.signal(signal.SIGTERM)
    try:
        assert proxy.wait(timeout=10) == 0
    except subprocess.TimeoutExpired:
        proxy.kill()
        pytest.fail("with nothing in flight, SIGTERM did not exit within 10 s "
                    "(drain_timeout is 30 s): the closed tunnel is still counted")
