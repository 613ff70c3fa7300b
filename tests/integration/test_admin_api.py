"""SPEC §8 / §11 "Admin": every admin endpoint and its JSON shape, 404 for unknown paths,
405 for a known path with the wrong method, /config without key material, and
/requests/failed listing failed requests newest first with the trace id and the request
id their client saw.

One sidecar for the module, with a file-based identity (so /certs has something to show
and /config has key material to leave out), a traffic listener and three clusters."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import uuid

import pytest

from support.certs import make_ca, make_leaf, write_material
from support.observe import (HEX32, RFC3339_MS_UTC, Metrics, admin_call,
                             admin_port, wait_ready)
from support.procs import LOOPBACK, free_port, wait_until
from support.rawhttp import get

pytestmark = pytest.mark.timeout(60)

WEB = "spiffe://mesh.local/ns/default/sa/web"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def config(app: str, cert, key, trust) -> str:
    return f"""
[proxy]
admin = "${{listen:admin}}"
access_log = "off"
drain_timeout = "2s"

[identity]
id = "{WEB}"
cert = "{cert}"
key = "{key}"
trust = "{trust}"

[[listener]]
name = "main"
bind = "${{listen:main}}"

  [[listener.route]]
  name = "dead"
  prefix = "/dead"
  cluster = "dead"

  [[listener.route]]
  name = "api"
  host = "app"
  cluster = "app"

[cluster.app]
endpoints = ["{app}"]

[cluster.dead]
endpoints = ["{LOOPBACK}:{free_port()}"]

[cluster.guarded]
endpoints = ["{app}"]
  [cluster.guarded.circuit_breaker]
  max_failures = 3
"""


@pytest.fixture(scope="module")
def env(module_fastproxy, tmp_path_factory, shared_app):
    ca = make_ca("mesh.local")
    leaf = make_leaf(ca, WEB)
    cert, key, trust = write_material(tmp_path_factory.mktemp("identity"), leaf, ca)
    proxy = module_fastproxy(config(shared_app.addr(), cert, key, trust), name="admin")
    wait_ready(proxy)
    return {"proxy": proxy, "leaf": leaf, "ca": ca, "key_path": key, "app": shared_app}


def json_reply(proxy, method: str, path: str):
    reply = admin_call(proxy, method, path)
    assert reply.content_type.startswith("application/json"), (path, reply.headers)
    return reply.status, reply.json()


# ---------------------------------------------------------------- GET endpoints

def test_ready(env):
    status, body = json_reply(env["proxy"], "GET", "/ready")
    assert status == 200, body


def test_metrics_is_prometheus_text(env):
    reply = admin_call(env["proxy"], "GET", "/metrics")
    assert reply.status == 200
    assert reply.content_type.startswith("text/plain"), reply.content_type
    m = Metrics(reply.body.decode())    # prometheus_client's parser accepts all of it
    assert m.value("fastproxy_identity_expiry_timestamp_seconds") == \
        int(env["leaf"].cert.not_valid_after_utc.timestamp())


def values_in(data):
    """Every scalar anywhere in a JSON document."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield k
            yield from values_in(v)
    elif isinstance(data, list):
        for v in data:
            yield from values_in(v)
    else:
        yield data


def test_config_shape_and_no_key_material(env):
    proxy = env["proxy"]
    reply = admin_call(proxy, "GET", "/config")
    assert reply.status == 200 and reply.content_type.startswith("application/json")
    body = reply.json()
    assert {"generation", "loaded_at", "config", "last_error", "last_refused"} <= set(body), body.keys()
    assert isinstance(body["generation"], int) and body["generation"] >= 1
    assert RFC3339.fullmatch(body["loaded_at"]), body["loaded_at"]
    assert body["last_error"] is None and body["last_refused"] is None
    assert isinstance(body["config"], dict)
    scalars = {str(v) for v in values_in(body["config"])}
    for name in ("main", "api", "dead", "app", "guarded", WEB):
        assert name in scalars, f"{name!r} missing from the effective configuration"
    assert any(env["app"].addr() in s or str(env["app"].port) in s for s in scalars)
    text = reply.body.decode()
    key_pem = env["key_path"].read_text()
    assert "PRIVATE KEY" not in text
    for line in key_pem.splitlines():
        if line and not line.startswith("-----"):
            assert line not in text, "private key material in /config"


def test_config_leaves_out_the_token(fastproxy, tmp_path):
    """A sidecar with automatic issuance (CA unreachable: it waits for its certificate):
    /config answers, /ready is 503, and the token never appears."""
    token = "s3cr3t-" + uuid.uuid4().hex
    (tmp_path / "token").write_text(token + "\n")
    ca = make_ca("mesh.local")
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    proxy = fastproxy(f"""
[proxy]
admin = "${{listen:admin}}"
access_log = "off"
drain_timeout = "1s"

[identity]
id = "{WEB}"
ca_url = "https://{LOOPBACK}:{free_port()}"
token_file = "{tmp_path / 'token'}"
ca_trust = "{tmp_path / 'ca.pem'}"

[[listener]]
name = "main"
bind = "${{listen:main}}"
  [[listener.route]]
  cluster = "app"

[cluster.app]
endpoints = ["127.0.0.1:9"]
""", wait=False)

    def config_reply():
        try:
            reply = admin_call(proxy, "GET", "/config", timeout=2)
        except OSError:
            return None
        return reply if reply.status == 200 else None
    reply = wait_until(config_reply, deadline_s=15, what="/config answers")
    assert token not in reply.body.decode(), "the token is in /config"
    assert "generation" in reply.json()
    assert admin_call(proxy, "GET", "/ready").status == 503


def test_clusters_shape(env):
    status, body = json_reply(env["proxy"], "GET", "/clusters")
    assert status == 200
    by_name = {c["name"]: c for c in body["clusters"]}
    assert set(by_name) == {"app", "dead", "guarded"}, by_name.keys()
    for c in by_name.values():
        assert c["circuit"]["state"] in ("closed", "open", "half_open"), c
        assert isinstance(c["circuit"]["failures"], int), c
        for e in c["endpoints"]:
            assert {"address", "healthy", "ejected_until", "active", "idle"} <= set(e), e
            assert isinstance(e["healthy"], bool) and isinstance(e["active"], int) \
                and isinstance(e["idle"], int), e
    assert [e["address"] for e in by_name["app"]["endpoints"]] == [env["app"].addr()]
    assert by_name["guarded"]["circuit"] == {**by_name["guarded"]["circuit"],
                                             "state": "closed", "failures": 0,
                                             "max_failures": 3, "window": 10.0, "open_for": 60.0}
    assert "opened_at" not in by_name["guarded"]["circuit"], "it never opened"


def test_dashboard_page_and_its_files(env):
    """GET / is the dashboard's page; the files it names are served under /ui/."""
    page = admin_call(env["proxy"], "GET", "/")
    assert page.status == 200 and page.content_type.startswith("text/html"), page
    html = page.body.decode()
    files = re.findall(r'(?:src|href)="(/ui/[^"]+)"', html)
    assert sorted(files) == ["/ui/dashboard.css", "/ui/dashboard.js"], files
    for path, kind in zip(sorted(files), ("text/css", "text/javascript")):
        reply = admin_call(env["proxy"], "GET", path)
        assert reply.status == 200 and reply.content_type.startswith(kind), (path, reply)
        assert len(reply.body) == int(reply.headers["content-length"]) > 0


def test_certs_shape(env):
    status, body = json_reply(env["proxy"], "GET", "/certs")
    assert status == 200
    leaf = env["leaf"]
    ident = body["identity"]
    assert ident["id"] == WEB
    assert int(ident["serial"], 16) == leaf.serial
    assert RFC3339.fullmatch(ident["not_before"]) and RFC3339.fullmatch(ident["not_after"]), ident
    assert len(body["trust"]) == 1
    assert {"subject", "not_after"} <= set(body["trust"][0])
    assert "fastproxy tests" in body["trust"][0]["subject"]


# ---------------------------------------------------------------- /requests/failed

def request(port: int, path: str, host: str = "app", headers=()) -> tuple[int, str]:
    r = get(port, path, host=host, headers=list(headers))
    request_id = r.header("x-request-id")
    assert request_id, r
    return r.status, request_id


def test_requests_failed_newest_first_with_trace_and_request_ids(env):
    proxy = env["proxy"]
    port = proxy.port()
    s1, upstream_500 = request(port, "/status/500", headers=[("traceparent", f"00-{TRACE}-00f067aa0ba902b7-01")])
    s2, no_route = request(port, "/x", host="nowhere")
    s3, upstream_404 = request(port, "/status/404")
    s4, connect_failed = request(port, "/dead")
    s5, fine = request(port, "/status/200")
    assert (s1, s2, s3, s4, s5) == (500, 404, 404, 503, 200)
    wanted = [connect_failed, no_route, upstream_500]      # newest first

    def listed():
        status, body = json_reply(proxy, "GET", "/requests/failed")
        assert status == 200
        ids = [e["request_id"] for e in body["requests"]]
        return body if all(i in ids for i in wanted) else None
    body = wait_until(listed, deadline_s=10, what="the failed requests are listed")
    entries = body["requests"]
    ids = [e["request_id"] for e in entries]
    assert upstream_404 not in ids and fine not in ids, "only failed requests are listed"
    assert [i for i in ids if i in wanted] == wanted, f"not newest first: {ids}"
    times = [e["time"] for e in entries]
    assert times == sorted(times, reverse=True), times
    by_id = {e["request_id"]: e for e in entries}
    for e in by_id.values():
        assert {"time", "listener", "route", "cluster", "status", "reason", "trace_id",
                "request_id"} <= set(e), e
        assert RFC3339_MS_UTC.fullmatch(e["time"]) or RFC3339.fullmatch(e["time"]), e
    e = by_id[upstream_500]
    assert (e["listener"], e["route"], e["cluster"], e["status"], e["trace_id"]) == \
        ("main", "api", "app", 500, TRACE), e
    assert e["reason"] is None, e
    e = by_id[no_route]
    assert (e["listener"], e["status"], e["reason"]) == ("main", 404, "no_route"), e
    assert e["route"] in (None, "") and e["cluster"] in (None, ""), e
    assert HEX32.fullmatch(e["trace_id"]), e
    e = by_id[connect_failed]
    assert (e["route"], e["cluster"], e["status"], e["reason"]) == \
        ("dead", "dead", 503, "connect_failed"), e
    assert HEX32.fullmatch(e["trace_id"]) and e["trace_id"] != TRACE, e


# ---------------------------------------------------------------- POST /reload

def test_post_reload_answers_success_and_the_new_generation(env):
    proxy = env["proxy"]
    _, before = json_reply(proxy, "GET", "/config")
    out = subprocess.run(["curl", "-sS", "-X", "POST", "-w", "\n%{http_code}", "--max-time", "10",
                          f"http://{LOOPBACK}:{admin_port(proxy)}/reload"],
                         capture_output=True, text=True, timeout=20)
    body, _, code = out.stdout.rpartition("\n")
    assert code == "200", out
    result = json.loads(body)
    assert result["result"] == "success", result
    assert result["generation"] == before["generation"] + 1, (before, result)
    _, after = json_reply(proxy, "GET", "/config")
    assert after["generation"] == result["generation"] and after["last_error"] is None
    assert get(proxy.port(), "/status/200").status == 200


def test_web_pages_cannot_use_a_browser_to_reach_the_api(env):
    """The dashboard invites browsers: a page of another site must not read the API by
    DNS rebinding (its own name in Host) nor POST to it (a cross-site Origin)."""
    proxy = env["proxy"]
    port = admin_port(proxy)
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io"):
        reply = admin_call(proxy, "GET", "/config", headers={"Host": host})
        assert reply.status == 403 and b"localhost only" in reply.body, (host, reply)
    for host in (f"localhost:{port}", f"[::1]:{port}", f"{LOOPBACK}:{port}", LOOPBACK):
        assert admin_call(proxy, "GET", "/ready", headers={"Host": host}).status == 200, host
    for origin in ("https://evil.example", "null", f"http://localhost:{port + 1}"):
        reply = admin_call(proxy, "POST", "/shutdown", headers={"Origin": origin})
        assert reply.status == 403 and b"cross-site" in reply.body, (origin, reply)
    assert proxy.proc.poll() is None
    same_site = admin_call(proxy, "POST", "/reload", headers={"Origin": f"http://{LOOPBACK}:{port}"})
    assert same_site.status == 200 and same_site.json()["result"] == "success"
    # a page's GET with an Origin is answered (the dashboard's own requests carry none)
    assert admin_call(proxy, "GET", "/ready", headers={"Origin": "https://evil.example"}).status == 200


# ---------------------------------------------------------------- 404 and 405

UNKNOWN = [("GET", "/nope"), ("GET", "/metrics/extra"), ("GET", "/readyz"),
           ("POST", "/nope"), ("GET", "/config/x"), ("GET", "/ui/nope.js"),
           ("GET", "/ui/__init__.py"), ("GET", "/ui/../admin.py"), ("GET", "/ui/"),
           ("GET", "/ui/../ui/dashboard.js"), ("GET", "/ui/x/dashboard.js"), ("GET", "/ui/.x.js")]
WRONG_METHOD = [("POST", "/"), ("POST", "/ready"), ("POST", "/metrics"), ("PUT", "/config"),
                ("DELETE", "/clusters"), ("POST", "/certs"), ("POST", "/requests/failed"),
                ("GET", "/reload"), ("GET", "/shutdown"), ("PUT", "/shutdown")]
ALLOWED = {"/": "GET", "/ready": "GET", "/metrics": "GET", "/config": "GET", "/clusters": "GET",
           "/certs": "GET", "/requests/failed": "GET", "/reload": "POST", "/shutdown": "POST"}


def test_unknown_paths_are_404_on_one_keep_alive_connection(env):
    c = http.client.HTTPConnection(LOOPBACK, admin_port(env["proxy"]), timeout=10)
    try:
        for method, path in UNKNOWN:
            c.request(method, path)
            r = c.getresponse()
            r.read()
            assert r.status == 404, (method, path, r.status)
        c.request("GET", "/ready")
        r = c.getresponse()
        r.read()
        assert r.status == 200
    finally:
        c.close()


@pytest.mark.parametrize("method,path", WRONG_METHOD, ids=[f"{m}-{p}" for m, p in WRONG_METHOD])
def test_wrong_method_is_405(env, method, path):
    reply = admin_call(env["proxy"], method, path)
    assert reply.status == 405, (method, path, reply)


def test_405_names_the_allowed_method(env):
    """RFC 9110 15.5.6: a 405 response carries Allow."""
    for method, path in WRONG_METHOD:
        reply = admin_call(env["proxy"], method, path)
        allow = reply.headers.get("allow")
        assert allow is not None and ALLOWED[path] in allow, \
            f"{method} {path}: 405 without an Allow header naming {ALLOWED[path]}: {reply.headers}"


def test_get_shutdown_does_not_shut_down(env):
    proxy = env["proxy"]
    assert admin_call(proxy, "GET", "/shutdown").status == 405
    assert proxy.proc.poll() is None
    assert admin_call(proxy, "GET", "/ready").status == 200
    assert get(proxy.port(), "/status/200").status == 200
