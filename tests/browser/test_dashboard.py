"""Issue 18, the dashboard (`GET /` on the admin address), in a real headless Chromium
against real fastproxy processes with traffic: the page must show what the proxy knows,
as a person reads it — a split's observed shares equal to what the upstreams answered,
a circuit turning open when its upstream fails, a failed request's trace id, a refused
reload with its error — with no error in the browser's console. The last test watches
the demo's frontend page (the ratings circuit opening and closing, the 90/10 split) and
saves its screenshot: build/dashboard.png on every run, and the one the README shows,
docs/images/dashboard.png, when FASTPROXY_UPDATE_SCREENSHOT=1 asks for it (so that a test
run leaves the tree as it was).

Every wait polls the page with a deadline; the page refreshes itself every 1.5 s."""

from __future__ import annotations

import os
import re
import secrets
from collections import Counter

import pytest

from support.configs import InlineTable
from support.demo import Demo, free_block
from support.fastproxy import REPO
from support.observe import admin_call, admin_port
from support.procs import LOOPBACK, wait_until
from support.rawhttp import get
from support.traffic import Conns, served_by, wait_admin

pytestmark = pytest.mark.timeout(90)

SCREENSHOTS = [REPO / "build" / "dashboard.png"] + (
    [REPO / "docs" / "images" / "dashboard.png"] if os.environ.get("FASTPROXY_UPDATE_SCREENSHOT") == "1" else [])


def mesh_config(app) -> dict:
    """A 75/25 split of route `web` and a cluster `flaky` behind a circuit breaker."""
    return {
        "proxy": {"admin": "${listen:admin}", "drain_timeout": "2s", "access_log": "off"},
        "listener": [{"name": "main", "bind": "${listen:main}", "route": [
            {"name": "flaky", "host": "flaky", "cluster": "flaky"},
            {"name": "web", "split": [InlineTable(cluster="stable", weight=75),
                                      InlineTable(cluster="canary", weight=25)]}]}],
        "cluster": {
            "stable": {"endpoints": [app.addr("stable")]},
            "canary": {"endpoints": [app.addr("canary")]},
            "flaky": {"endpoints": [app.addr("flaky")],
                      "circuit_breaker": {"max_failures": 3, "window": "30s", "open_for": "30s"}},
        },
    }


def test_the_page_shows_split_circuit_failed_requests_and_a_refused_reload(
        fastproxy, app_upstream, browser):
    app = app_upstream(names=("stable", "canary", "flaky"))
    proxy = fastproxy(mesh_config(app))
    wait_admin(proxy)
    with Conns(proxy.port()) as conns:   # 200 requests: every share is a whole 0.5 %
        answered = Counter(served_by(conns.ask("/status/200", host="web") for _ in range(200)))
    browser.open(f"http://{LOOPBACK}:{admin_port(proxy)}/")

    split = '#splits [data-route="main/web"]'
    for cluster, weight in (("stable", "75%"), ("canary", "25%")):
        row = f'{split} tr[data-cluster="{cluster}"]'
        share = f"{100 * answered[cluster] / 200:.1f}%"
        browser.wait_text(f"{row} .share", lambda t: t == share,
                          what=f"the observed share of {cluster} ({answered})")
        assert browser.text(f"{row} .weight") == weight

    flaky = '#clusters [data-cluster="flaky"]'
    assert browser.wait_text(f"{flaky} .state", bool) == "closed"
    app.set_mode("flaky", "fail")
    trace = secrets.token_hex(16)
    for i in range(4):   # more than max_failures = 3: the 4th opens the circuit
        traceparent = f"00-{trace}-{secrets.token_hex(8)}-01" if i == 3 else None
        r = get(proxy.port(), "/status/200", host="flaky",
                headers=[("traceparent", traceparent)] if traceparent else [])
        assert r.status == 500, r
    browser.wait_text(f"{flaky} .state", lambda t: t == "open", what="the circuit of flaky")
    assert browser.text(f"{flaky} .failures") == "4"
    facts = browser.text(f"{flaky} .facts")
    assert "/ max 3 in 30 s" in facts and "opened" in facts and "probes in" in facts, facts

    # the failed request our trace id travelled with, and what it was
    row = browser.wait_text("#failed", lambda t: trace in t, what=f"trace {trace} in the failed requests")
    line = " ".join(next(line for line in row.splitlines() if trace in line).split())
    assert re.search(rf"\b500 — main flaky flaky GET /status/200 {trace}$", line), line

    proxy.config_path.write_text(proxy.config_path.read_text() + "\n[cluster.broken\n")
    reply = admin_call(proxy, "POST", "/reload")
    assert reply.status == 400, reply
    error = reply.json()["error"].splitlines()[0]
    browser.wait_text("#config .refused", lambda t: error in t, what="the refused reload's error")
    assert browser.text("#config .generation") == "1"
    assert browser.console_errors() == []


def frontend_dashboard(demo: Demo) -> str | None:
    """The dashboard URL the demo printed for the frontend's sidecar, once it has."""
    for line in list(demo.lines):
        m = re.fullmatch(r"\s+frontend\s+(http://\S+/)", line)
        if m:
            return m[1]
    assert demo.proc.poll() is None, f"the demo ended:\n{demo.output()[-3000:]}"
    return None


def test_the_demo_frontend_page_shows_the_circuit_cycle_and_the_split(browser):
    """The URL the demo prints for the frontend sidecar; ratings fails 4 s into the load,
    its circuit (open_for 5 s) opens, probes while ratings is healthy again and closes,
    and opens again when ratings fails again: the screenshot is taken then."""
    demo = Demo("--base-port", str(free_block()), "--duration", "60",
                "--ratings-healthy", "4", "--ratings-failing", "4")
    try:
        browser.open(wait_until(lambda: frontend_dashboard(demo), deadline_s=40, interval=0.1,
                                what="the demo prints the frontend's dashboard URL"))
        ratings = '#clusters [data-cluster="ratings"] .state'
        seen = []
        for state in ("open", "closed", "open"):
            seen.append(browser.wait_text(ratings, lambda t: t == state, deadline_s=30,
                                          what=f"ratings circuit after {seen}"))
        split = '#splits [data-route="outbound/reviews"]'
        share = browser.text(f'{split} tr[data-cluster="reviews-v1"] .share')
        assert 85 <= float(share.rstrip("%")) <= 95, share
        assert browser.text(f'{split} tr[data-cluster="reviews-v1"] .weight') == "90%"
        assert "spiffe://demo.local/ns/default/sa/frontend" in browser.text("#identity .spiffe")
        for path in SCREENSHOTS:
            path.parent.mkdir(parents=True, exist_ok=True)
            browser.screenshot(path)
        assert browser.console_errors() == []
        assert demo.proc.poll() is None, demo.output()[-3000:]
    finally:
        demo.stop()
