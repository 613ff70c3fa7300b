"""SPEC §3: a pooled upstream connection that the upstream closes just as a request is sent
on it never surfaces as an error — the request is sent again once on a fresh connection
(idempotent, or body fully buffered). The upstream here answers each request with a
keep-alive response (no `Connection: close`) and then closes the connection, either at
once or after a short random idle, which is when a reused connection races the close."""

from __future__ import annotations

import http.client

import pytest

from support.configs import simple_config
from support.procs import LOOPBACK

pytestmark = pytest.mark.timeout(120)

BEHAVIOURS = {
    "close-right-after-response": [{"ok": True}, {"close": True}],
    "close-after-short-idle": [{"ok": True}, {"idle_close": [0.0, 0.004]}],
    "reset-after-short-idle": [{"ok": True}, {"sleep": 0.001}, {"reset": True}],
}


@pytest.mark.parametrize("behaviour", list(BEHAVIOURS))
def test_upstream_keepalive_close_race_is_invisible(fastproxy, raw_upstream, behaviour):
    up = raw_upstream({"default": BEHAVIOURS[behaviour]})
    proxy = fastproxy(simple_config(up.addr))
    conn = http.client.HTTPConnection(LOOPBACK, proxy.port(), timeout=10)
    failures = []
    total = 0
    for i in range(150):
        conn.request("GET", f"/get{i}")
        r = conn.getresponse()
        body = r.read()
        total += 1
        if r.status != 200 or body != f"raw:/get{i}".encode():
            failures.append((i, r.status, r.getheader("fastproxy-error"), body[:100]))
    for i in range(50):  # small bodies are fully buffered: they may be resent too
        conn.request("POST", f"/post{i}", body=b"x" * 100)
        r = conn.getresponse()
        body = r.read()
        total += 1
        if r.status != 200 or body != f"raw:/post{i}".encode():
            failures.append((i, r.status, r.getheader("fastproxy-error"), body[:100]))
    conn.close()
    assert not failures, f"{len(failures)}/{total} requests failed: {failures[:5]}"
    # the scenario really happened: the upstream closed connections under the proxy
    assert up.connection_count() > 1
