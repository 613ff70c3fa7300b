"""SPEC §2 clusters as issue 2 scopes them: endpoints by address or DNS name, round-robin
balancing over a per-endpoint pool, and connect_timeout (simulated on loopback with a
listener whose accept queue is full, so SYNs are dropped)."""

from __future__ import annotations

import socket
from collections import Counter

import pytest

from support.checks import assert_proxy_error
from support.configs import simple_config
from support.procs import LOOPBACK
from support.rawhttp import get

pytestmark = pytest.mark.timeout(60)


def test_round_robin_uses_every_endpoint(fastproxy, app_upstream):
    app = app_upstream(names=("a", "b", "c"))
    proxy = fastproxy(simple_config([app.addr("a"), app.addr("b"), app.addr("c")]))
    seen = Counter(get(proxy.port(), "/echo").header("x-served-by") for _ in range(30))
    assert set(seen) == {"a", "b", "c"}, seen
    assert max(seen.values()) - min(seen.values()) <= 3, f"not round robin: {seen}"


def test_endpoint_by_dns_name(fastproxy, shared_app):
    proxy = fastproxy(simple_config(f"localhost:{shared_app.port}"))
    r = get(proxy.port(), "/echo")
    assert r.status == 200, r


def test_connect_timeout(fastproxy):
    """A listener that never accepts and whose backlog is full drops new SYNs: connecting
    hangs until connect_timeout, then 503 connect_failed."""
    black = socket.socket()
    black.bind((LOOPBACK, 0))
    black.listen(0)
    port = black.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue (backlog 0 still admits one or two)
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((LOOPBACK, port))
            fillers.append(s)
        proxy = fastproxy(simple_config(f"{LOOPBACK}:{port}", cluster='connect_timeout = "300ms"'))
        # the premise: a connection attempt now hangs rather than being refused
        with pytest.raises(socket.timeout):
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
        assert_proxy_error(get(proxy.port(), "/x", timeout=15), 503, "connect_failed")
    finally:
        for s in fillers:
            s.close()
        black.close()
