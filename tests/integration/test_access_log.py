"""SPEC §8 / §11 access log: one JSON object per request, to a file, stdout or stderr, or
nothing at all with `access_log = "off"`.

Fields: time (RFC 3339 UTC with milliseconds), listener, route (the route's name; an
unnamed route is named by its index), method, path, authority, status, duration_ms,
bytes_in / bytes_out (body bytes, not wire bytes: chunk framing is not counted), cluster,
upstream, peer (null without mTLS), trace_id, request_id (the x-request-id the client got),
error (the §4 reason of a response the proxy made, else null)."""

from __future__ import annotations

import http.client
import json
import uuid
from datetime import datetime, timezone

import httpx
import pytest

from support.observe import HEX32, RFC3339_MS_UTC, json_lines, read_log, wait_log
from support.procs import LOOPBACK, free_port
from support.rawhttp import RawConn, get

pytestmark = pytest.mark.timeout(60)

FIELDS = {"time", "listener", "route", "method", "path", "authority", "status", "duration_ms",
          "bytes_in", "bytes_out", "cluster", "upstream", "peer", "trace_id", "request_id",
          "error"}


def config(app: str, access_log: str) -> str:
    return f"""
[proxy]
admin = ""
drain_timeout = "2s"
access_log = "{access_log}"

[[listener]]
name = "main"
bind = "${{listen:main}}"

  [[listener.route]]
  name = "api"
  prefix = "/api/"
  cluster = "app"

  [[listener.route]]
  prefix = "/dead"
  cluster = "dead"

  [[listener.route]]
  name = "rest"
  host = "app"
  cluster = "app"

[cluster.app]
endpoints = ["{app}"]

[cluster.dead]
endpoints = ["{LOOPBACK}:{free_port()}"]
"""


@pytest.fixture(scope="module")
def env(module_fastproxy, tmp_path_factory, shared_app):
    path = tmp_path_factory.mktemp("access-log") / "access.log"
    proxy = module_fastproxy(config(shared_app.addr(), str(path)), name="filelog")
    return {"proxy": proxy, "path": path, "app": shared_app}


def entry_for(env, request_id: str) -> dict:
    (line,) = wait_log(lambda: read_log(env["path"]), lambda e: e.get("request_id") == request_id,
                       what=f"the access log line of {request_id}")
    return line


def assert_time(value: str) -> None:
    assert RFC3339_MS_UTC.fullmatch(value), f"time {value!r} is not RFC 3339 UTC with ms"
    moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    # a sanity bound only (UTC, not local time; not the epoch): no timing assertion
    assert abs((datetime.now(timezone.utc) - moment).total_seconds()) < 600, value


# ---------------------------------------------------------------- to a file

def test_every_field_of_a_proxied_request(env):
    request_id = f"log-{uuid.uuid4().hex}"
    body = bytes(range(256)) * 4 + b"x" * 210          # 1234 bytes
    c = http.client.HTTPConnection(LOOPBACK, env["proxy"].port(), timeout=10)
    try:
        c.request("POST", "/api/echo", body=body,
                  headers={"Host": "app:8080", "x-request-id": request_id})
        r = c.getresponse()
        resp_body = r.read()
        assert r.status == 200 and r.getheader("x-request-id") == request_id
    finally:
        c.close()
    assert json.loads(resp_body)["body_len"] == 1234
    e = entry_for(env, request_id)
    assert FIELDS <= set(e), f"missing fields: {FIELDS - set(e)}"
    assert_time(e["time"])
    assert (e["listener"], e["route"], e["method"], e["path"], e["authority"], e["status"]) == \
        ("main", "api", "POST", "/api/echo", "app:8080", 200), e
    assert isinstance(e["duration_ms"], (int, float)) and e["duration_ms"] >= 0, e
    assert (e["bytes_in"], e["bytes_out"]) == (1234, len(resp_body)), e
    assert (e["cluster"], e["upstream"]) == ("app", env["app"].addr()), e
    assert e["peer"] is None and e["error"] is None, e
    assert isinstance(e["trace_id"], str) and HEX32.fullmatch(e["trace_id"]), e


def test_bytes_in_counts_a_chunked_request_body_without_framing(env):
    port = env["proxy"].port()
    request_id = f"log-{uuid.uuid4().hex}"
    pieces = [b"a" * 1000, b"b" * 2000, b"c" * 3000]
    with httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=10) as hc:
        # a generator body: httpx sends it chunked (three chunks)
        r = hc.post("/api/stream-upload", content=iter(pieces), headers={"x-request-id": request_id})
        assert r.status_code == 200 and r.json()["body_len"] == 6000, r.text
    e = entry_for(env, request_id)
    assert (e["bytes_in"], e["bytes_out"], e["route"]) == (6000, len(r.content), "api"), e


def test_bytes_out_counts_a_chunked_response_body_without_framing(env):
    port = env["proxy"].port()
    request_id = f"log-{uuid.uuid4().hex}"
    with httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=10) as hc:
        r = hc.get("/chunked", headers={"Host": "app", "x-request-id": request_id})
        assert r.status_code == 200 and r.content == b"alpha-beta-gamma", r
        assert r.headers.get("transfer-encoding") == "chunked"
    e = entry_for(env, request_id)
    assert (e["bytes_in"], e["bytes_out"], e["route"], e["path"]) == (0, 16, "rest", "/chunked"), e


def test_bytes_out_of_a_content_length_response(env):
    request_id = f"log-{uuid.uuid4().hex}"
    r = get(env["proxy"].port(), "/bytes/5000", headers=[("x-request-id", request_id)])
    assert r.status == 200 and len(r.body) == 5000
    e = entry_for(env, request_id)
    assert (e["bytes_in"], e["bytes_out"]) == (0, 5000), e


def test_proxy_errors_carry_their_reason(env):
    port = env["proxy"].port()
    no_route_id, dead_id, ok_id = (f"log-{uuid.uuid4().hex}" for _ in range(3))
    r = get(port, "/nowhere", host="elsewhere", headers=[("x-request-id", no_route_id)])
    assert (r.status, r.header("fastproxy-error")) == (404, "no_route"), r
    e = entry_for(env, no_route_id)
    assert (e["status"], e["error"], e["path"], e["authority"]) == \
        (404, "no_route", "/nowhere", "elsewhere"), e
    assert e["route"] in (None, "") and e["cluster"] in (None, ""), e

    r = get(port, "/dead", host="app", headers=[("x-request-id", dead_id)])
    assert (r.status, r.header("fastproxy-error")) == (503, "connect_failed"), r
    e = entry_for(env, dead_id)
    # the second route has no name: it is named by its index
    assert (e["status"], e["error"], e["route"], e["cluster"]) == (503, "connect_failed", "1", "dead"), e

    r = get(port, "/status/404", host="app", headers=[("x-request-id", ok_id)])
    assert r.status == 404 and r.header("fastproxy-error") is None, r
    e = entry_for(env, ok_id)
    assert (e["status"], e["error"], e["route"], e["cluster"]) == (404, None, "rest", "app"), e


@pytest.mark.parametrize("path,host,status", [("/nowhere", "elsewhere", 404), ("/dead", "app", 503)],
                         ids=["no_route", "connect_failed"])
def test_bytes_out_counts_the_proxys_own_error_body(env, path, host, status):
    """The one-line `fastproxy: REASON: DETAIL` body is body bytes sent to the client."""
    request_id = f"log-{uuid.uuid4().hex}"
    r = get(env["proxy"].port(), path, host=host, headers=[("x-request-id", request_id)])
    assert r.status == status and r.body.startswith(b"fastproxy: "), r
    e = entry_for(env, request_id)
    assert e["bytes_out"] == len(r.body), f"bytes_out must count the error body: {e} {r!r}"


def test_one_line_per_request_on_a_keep_alive_connection(env):
    port = env["proxy"].port()
    ids = []
    with RawConn(port) as c:
        for i in range(3):
            c.send(f"GET /api/k{i} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
            r = c.read_response()
            assert r.status == 200
            ids.append(r.header("x-request-id"))
    assert len(set(ids)) == 3 and None not in ids, ids
    for i, request_id in enumerate(ids):
        e = entry_for(env, request_id)
        assert (e["path"], e["route"]) == (f"/api/k{i}", "api"), e


# ---------------------------------------------------------------- stdout, stderr, off

def burst(port: int, n: int) -> list[str]:
    ids = [f"log-{uuid.uuid4().hex}" for _ in range(n)]
    for request_id in ids:
        assert get(port, "/api/echo", headers=[("x-request-id", request_id)]).status == 200
    return ids


def test_to_stdout_one_json_object_per_line(fastproxy, shared_app):
    proxy = fastproxy(config(shared_app.addr(), "stdout"))
    first = burst(proxy.port(), 2)
    wait_log(lambda: read_log(proxy.stdout()), lambda e: e.get("request_id") in first, n=2,
             what="two lines on stdout")
    last = burst(proxy.port(), 5)
    # on a clean exit nothing already answered is lost
    assert proxy.stop()[0] == 0
    text = proxy.stdout()
    assert text.endswith("\n"), "stdout ends with a torn line"
    lines = read_log(text)       # every line of stdout is one JSON object
    assert [e["request_id"] for e in lines if e["request_id"] in first + last] == first + last
    for e in lines:
        assert FIELDS <= set(e), e


def test_to_stderr(fastproxy, shared_app):
    proxy = fastproxy(config(shared_app.addr(), "stderr"))
    ids = burst(proxy.port(), 2)
    found = wait_log(lambda: json_lines(proxy.stderr()), lambda e: e.get("request_id") in ids,
                     n=2, what="two access log lines on stderr")
    assert all(FIELDS <= set(e) for e in found), found
    assert read_log(proxy.stdout()) == []


def test_off_writes_nothing(fastproxy, shared_app):
    proxy = fastproxy(config(shared_app.addr(), "off"))
    before = set(proxy.workdir.iterdir())
    ids = burst(proxy.port(), 3)
    assert proxy.stop()[0] == 0
    assert proxy.stdout() == "", proxy.stdout()
    stderr = proxy.stderr()
    assert not any(i in stderr for i in ids), stderr
    assert json_lines(stderr) == [], stderr
    created = set(proxy.workdir.iterdir()) - before
    assert not created, f"access_log = \"off\" created {created}"
