"""SPEC §9 / §11 "Lifecycle" hot reload: SIGHUP, POST /reload, or the config file
changing (applied within 5 s). The new file is parsed, validated and compiled first; an
invalid one changes nothing and is reported (log, fastproxy_config_reloads_total
{result="failure"}, /config last_error, POST /reload's 400 answer). Requests in flight
finish under the configuration they started with; added listeners open, removed ones
stop accepting and drain; no request fails because of a reload.

The upstream is the aiohttp app on two addresses, `a` and `b` (x-served-by tells them
apart); a reload moves the route between clusters `a` and `b`. Config files are
rewritten atomically (one change each)."""

from __future__ import annotations

import http.client
import signal
import threading
import time
import uuid

import httpx
import pytest

from support.observe import admin_call, admin_json, replace_config, scrape, wait_ready
from support.procs import LOOPBACK, free_port, port_accepts, wait_until
from support.rawhttp import RawConn, get

pytestmark = pytest.mark.timeout(90)

FILE_CHANGE_S = 5 + 2     # SPEC: within 5 s; 2 s of slack for a loaded machine


def make_config(ports: dict, app, *, cluster: str = "a", extra: bool = False,
                broken: bool = False) -> str:
    text = f"""
[proxy]
admin = "{LOOPBACK}:{ports['admin']}"
access_log = "off"
drain_timeout = "5s"

[[listener]]
name = "main"
bind = "{LOOPBACK}:{ports['main']}"
  [[listener.route]]
  name = "r"
  cluster = "{'nope' if broken else cluster}"
"""
    if extra:
        text += f"""
[[listener]]
name = "extra"
bind = "{LOOPBACK}:{ports['extra']}"
  [[listener.route]]
  cluster = "b"
"""
    return text + f"""
[cluster.a]
endpoints = ["{app.addr('a')}"]

[cluster.b]
endpoints = ["{app.addr('b')}"]
"""


@pytest.fixture
def env(fastproxy, app_upstream):
    app = app_upstream(names=("a", "b"))
    ports = {"admin": free_port(), "main": free_port(), "extra": free_port()}

    def start(workers=None, **kw):
        proxy = fastproxy(make_config(ports, app, **kw), workers=workers)
        wait_ready(proxy)
        return proxy

    def config(**kw):
        return make_config(ports, app, **kw)
    return {"app": app, "ports": ports, "start": start, "config": config}


def served_by(port: int, path: str = "/echo") -> str | None:
    r = get(port, path)
    assert r.status == 200, r
    return r.header("x-served-by")


def generation(proxy) -> int:
    return admin_json(proxy, "/config")[1]["generation"]


def reloads(proxy, result: str) -> float:
    return scrape(proxy).value("fastproxy_config_reloads_total", 0, result=result)


# ---------------------------------------------------------------- the three triggers

def test_post_reload_applies_a_route_change_at_once(env):
    proxy, app = env["start"](), env["app"]
    port = proxy.port()
    assert served_by(port) == "a"
    tag = uuid.uuid4().hex
    with RawConn(port, timeout=20) as held:
        held.send(f"GET /slow?hold={tag} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
        wait_until(lambda: app.seen(tag), deadline_s=10, what="held request reached a")
        g = generation(proxy)
        replace_config(proxy, env["config"](cluster="b"))
        reply = admin_call(proxy, "POST", "/reload")
        assert reply.status == 200, reply
        assert reply.json()["result"] == "success" and reply.json()["generation"] > g, reply.json()
        assert served_by(port) == "b", "the reload answered success before it was in force"
        app.release(tag)
        r = held.read_response()
        assert (r.status, r.header("x-served-by"), r.body) == (200, "a", b"slow done"), \
            "a request in flight finishes under the configuration it started with"


def test_sighup_reloads(env):
    proxy = env["start"]()
    port = proxy.port()
    g, s = generation(proxy), reloads(proxy, "success")
    proxy.signal(signal.SIGHUP)                    # the file is unchanged: a plain reload
    wait_until(lambda: generation(proxy) == g + 1, deadline_s=10, what="SIGHUP reload")
    assert reloads(proxy, "success") == s + 1
    replace_config(proxy, env["config"](cluster="b"))
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: served_by(port) == "b", deadline_s=10, what="route moved to b")
    assert admin_json(proxy, "/config")[1]["last_error"] is None


def test_file_change_is_applied_within_5_s(env):
    proxy = env["start"]()
    port = proxy.port()
    g = generation(proxy)
    replace_config(proxy, env["config"](cluster="b"))
    wait_until(lambda: served_by(port) == "b", deadline_s=FILE_CHANGE_S,
               what="the edited file applied")
    assert generation(proxy) > g
    for _ in range(5):
        assert served_by(port) == "b"


# ---------------------------------------------------------------- an invalid file

def test_invalid_file_keeps_the_old_configuration(env):
    proxy = env["start"]()
    port = proxy.port()
    path = str(proxy.config_path)
    key = "listener[0].route[0].cluster"
    g, f, s = generation(proxy), reloads(proxy, "failure"), reloads(proxy, "success")

    # the file changes: refused within 5 s, reported in /config and the metric
    replace_config(proxy, env["config"](broken=True))

    def refused():
        body = admin_json(proxy, "/config")[1]
        return body if body["last_error"] else None
    body = wait_until(refused, deadline_s=FILE_CHANGE_S, what="/config last_error set")
    assert path in body["last_error"] and key in body["last_error"], body["last_error"]
    assert body["generation"] == g
    assert reloads(proxy, "failure") == f + 1
    assert served_by(port) == "a", "the old configuration keeps serving"

    # POST /reload of the same file: 400 with the error, counted once more
    reply = admin_call(proxy, "POST", "/reload")
    assert reply.status == 400, reply
    result = reply.json()
    assert result["result"] == "failure" and key in result["error"], result
    m = scrape(proxy)
    assert m.value("fastproxy_config_reloads_total", 0, result="failure") == f + 2, m.text
    assert m.value("fastproxy_config_reloads_total", 0, result="success") == s, m.text
    assert generation(proxy) == g
    for _ in range(3):
        assert served_by(port) == "a"
    assert key in proxy.stderr(), "the refused reload is logged"

    # a valid file again: applied, and the error is gone
    replace_config(proxy, env["config"](cluster="b"))
    wait_until(lambda: served_by(port) == "b", deadline_s=FILE_CHANGE_S, what="valid file applied")
    body = admin_json(proxy, "/config")[1]
    assert body["last_error"] is None and body["generation"] > g, body
    assert reloads(proxy, "success") >= s + 1


def test_a_request_waiting_for_a_cluster_slot_keeps_its_clusters_settings(env):
    """Cluster settings come from the configuration a request started under: one queued
    for the cluster's only connection slot when a reload turns the cluster's TLS on still
    goes out in plain text, and the slot is shared with the requests that come after;
    those are sent with TLS, never over a pooled plain-text connection. BUG at the time of
    writing: the reload changed the live cluster in place and kept its pool, so new
    requests went on over plain-text connections after TLS was turned on."""
    app = env["app"]
    limited = '[cluster.a]\nendpoints = ["%s"]\nmax_connections = 1\n' % app.addr("a")
    text = env["config"]().replace('[cluster.a]\nendpoints = ["%s"]\n' % app.addr("a"), limited)
    proxy = env["start"]()
    replace_config(proxy, text)
    assert admin_call(proxy, "POST", "/reload").status == 200
    port = proxy.port()
    tag = uuid.uuid4().hex
    with RawConn(port, timeout=20) as held, RawConn(port, timeout=20) as queued:
        held.send(f"GET /slow?hold={tag} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
        wait_until(lambda: app.seen(tag), deadline_s=10, what="the held request took the slot")
        queued.send(b"GET /echo?queued HTTP/1.1\r\nHost: app\r\n\r\n")
        time.sleep(0.3)   # the queued request is in (nothing observable tells)
        replace_config(proxy, text.replace(limited, limited + 'tls = "tls"\n'))
        assert admin_call(proxy, "POST", "/reload").status == 200
        app.release(tag)
        assert held.read_response().status == 200
        r = queued.read_response()
        assert (r.status, r.header("x-served-by")) == (200, "a"), r
    r = get(port, "/echo?after")
    assert (r.status, r.header("fastproxy-error")) == (503, "upstream_tls"), \
        "the new configuration is in force for new requests"


# ---------------------------------------------------------------- listeners

def test_listener_added_then_removed(env):
    proxy, app = env["start"](), env["app"]
    extra = env["ports"]["extra"]
    assert not port_accepts(extra)
    replace_config(proxy, env["config"](extra=True))
    reply = admin_call(proxy, "POST", "/reload")
    assert reply.status == 200 and reply.json()["result"] == "success", reply
    wait_until(lambda: port_accepts(extra), deadline_s=5, what="the added listener accepts")
    assert served_by(extra) == "b"
    assert served_by(proxy.port()) == "a"
    status, body = admin_json(proxy, "/config")
    assert "extra" in str(body["config"]), "the added listener is in /config"

    tag = uuid.uuid4().hex
    with RawConn(extra, timeout=20) as held:
        held.send(f"GET /slow?hold={tag} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
        wait_until(lambda: app.seen(tag), deadline_s=10, what="held request reached b")
        replace_config(proxy, env["config"]())
        reply = admin_call(proxy, "POST", "/reload")
        assert reply.status == 200 and reply.json()["result"] == "success", reply
        wait_until(lambda: not port_accepts(extra), deadline_s=5,
                   what="the removed listener stops accepting")
        assert served_by(proxy.port()) == "a"
        app.release(tag)
        r = held.read_response()
        assert (r.status, r.body) == (200, b"slow done"), "a removed listener drains its requests"
    assert not port_accepts(extra)


# ---------------------------------------------------------------- under load

def test_five_reloads_under_steady_load_with_zero_failures(env):
    proxy = env["start"](workers=2)
    wait_until(lambda: len(proxy.workers()) == 2, deadline_s=10, what="two workers")
    port = proxy.port()
    stop = threading.Event()
    results: dict[str, list] = {"keepalive": [], "fresh": []}
    errors: list[str] = []

    def keepalive_client():
        with httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=10) as hc:
            while not stop.is_set():
                try:
                    r = hc.get("/echo")
                    results["keepalive"].append((r.status_code, r.headers.get("x-served-by")))
                except Exception as e:      # every failure is reported below
                    errors.append(f"keep-alive: {e!r}")

    def fresh_client():
        while not stop.is_set():
            try:
                c = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
                c.request("GET", "/echo")
                r = c.getresponse()
                r.read()
                results["fresh"].append((r.status, r.getheader("x-served-by")))
                c.close()
            except Exception as e:
                errors.append(f"new connection: {e!r}")

    def slow_client():      # requests in flight at the moment of each reload
        with httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=10) as hc:
            while not stop.is_set():
                try:
                    r = hc.get("/slow", params={"delay": "0.05"})
                    results["slow"].append((r.status_code, r.headers.get("x-served-by")))
                except Exception as e:
                    errors.append(f"slow: {e!r}")

    results["slow"] = []
    threads = [threading.Thread(target=keepalive_client, daemon=True),
               threading.Thread(target=fresh_client, daemon=True),
               threading.Thread(target=slow_client, daemon=True)]
    for t in threads:
        t.start()
    try:
        for i in range(5):
            target = "b" if i % 2 == 0 else "a"
            replace_config(proxy, env["config"](cluster=target))
            if i % 2 == 0:
                reply = admin_call(proxy, "POST", "/reload")
                assert reply.status == 200 and reply.json()["result"] == "success", reply
            else:
                proxy.signal(signal.SIGHUP)
            # in force in both workers: a run of new connections all served by the target
            wait_until(lambda: all(served_by(port) == target for _ in range(10)),
                       deadline_s=10, what=f"reload {i + 1}: every worker routes to {target}")
            # steady load: every client goes on through each reload
            counts = {k: len(v) for k, v in results.items()}
            wait_until(lambda: all(len(results[k]) >= counts[k] + 5 for k in results),
                       deadline_s=10, what=f"load continues after reload {i + 1}")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    assert not errors, f"{len(errors)} client errors during reloads: {errors[:5]}"
    every = results["keepalive"] + results["fresh"]
    bad = [r for r in every if r[0] != 200]
    assert not bad, f"{len(bad)} failed responses during reloads: {bad[:5]}"
    assert all(len(v) >= 25 for v in results.values()), {k: len(v) for k, v in results.items()}
    assert {s for _, s in every} == {"a", "b"}
