"""SPEC §2/§11 routing: host exact and `*.suffix` (case-insensitive, port ignored, not the
bare suffix), path vs prefix (query ignored), method, headers, first match wins,
absolute-form targets, and 404 no_route. One aiohttp process serves every cluster on
its own port; `x-served-by` names the cluster that answered."""

from __future__ import annotations

import json

import pytest

from support.checks import assert_proxy_error
from support.rawhttp import request

pytestmark = pytest.mark.timeout(60)

CLUSTERS = ["exact", "wild", "path", "post", "canary", "api", "first", "second"]

ROUTES = """
[proxy]
admin = ""
drain_timeout = "2s"

[[listener]]
name = "main"
bind = "${listen:main}"

  [[listener.route]]
  name = "exact"
  host = "exact.test"
  cluster = "exact"

  [[listener.route]]
  host = "*.wild.test"
  cluster = "wild"

  [[listener.route]]
  path = "/exact"
  cluster = "path"

  [[listener.route]]
  prefix = "/api/"
  method = "POST"
  cluster = "post"

  [[listener.route]]
  prefix = "/api/"
  headers = { "x-canary" = "1" }
  cluster = "canary"

  [[listener.route]]
  prefix = "/api/"
  cluster = "api"

  [[listener.route]]
  host = "first.test"
  cluster = "first"

  [[listener.route]]
  host = "first.test"
  cluster = "second"
"""


@pytest.fixture(scope="module")
def proxy(module_fastproxy, module_upstreams):
    app = module_upstreams.app(names=CLUSTERS)
    clusters = "".join(f'\n[cluster.{n}]\nendpoints = ["{app.addr(n)}"]\n' for n in CLUSTERS)
    return module_fastproxy(ROUTES + clusters)


def send(proxy, host, path="/", method="GET", headers=()):
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
    length = "Content-Length: 0\r\n" if method == "POST" else ""
    return request(proxy.port(), f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{length}{extra}\r\n".encode())


CASES = [
    # (host, method, path, headers, expected cluster or None for no_route)
    ("exact.test", "GET", "/anything", (), "exact"),
    ("EXACT.Test", "GET", "/", (), "exact"),
    ("exact.test:8080", "GET", "/", (), "exact"),
    ("a.wild.test", "GET", "/", (), "wild"),
    ("a.b.wild.test", "GET", "/", (), "wild"),
    ("A.WILD.TEST", "GET", "/", (), "wild"),
    ("wild.test", "GET", "/", (), None),          # *.suffix does not match the bare suffix
    ("xwild.test", "GET", "/", (), None),         # ... nor a name that merely ends with it
    ("other.test", "GET", "/exact", (), "path"),
    ("other.test", "GET", "/exact?x=1", (), "path"),   # query ignored
    ("other.test", "GET", "/exact/", (), None),
    ("other.test", "GET", "/exactly", (), None),
    ("other.test", "POST", "/api/x", (), "post"),
    ("other.test", "GET", "/api/x", (("X-CANARY", "1"),), "canary"),
    ("other.test", "GET", "/api/x", (("x-canary", "2"),), "api"),
    ("other.test", "GET", "/api/x?y=/z", (), "api"),
    ("other.test", "GET", "/api", (), None),      # prefix "/api/" does not match "/api"
    ("other.test", "GET", "/api?/", (), None),    # ... not even through the query
    ("first.test", "GET", "/", (), "first"),      # first match wins
    ("exact.test", "POST", "/api/x", (), "exact"),
    ("nothing.test", "GET", "/nothing", (), None),
]


@pytest.mark.parametrize("host,method,path,headers,expected", CASES,
                         ids=[f"{c[1]}-{c[0]}{c[2]}-{c[4]}" for c in CASES])
def test_route_matching(proxy, host, method, path, headers, expected):
    r = send(proxy, host, path, method, headers)
    if expected is None:
        assert_proxy_error(r, 404, "no_route")
    else:
        assert r.status == 200, r
        assert r.header("x-served-by") == expected


def test_absolute_form_routes_by_authority(proxy):
    r = request(proxy.port(), b"GET http://exact.test/abs?q=1 HTTP/1.1\r\nHost: exact.test\r\n\r\n")
    assert r.status == 200 and r.header("x-served-by") == "exact"
    echo = json.loads(r.body)
    assert echo["path"] == "/abs"
    assert [v for k, v in echo["headers"] if k.lower() == "host"] == ["exact.test"]


def test_absolute_form_without_host_sets_host(proxy):
    """HTTP/1.0 may omit Host; the absolute-form authority routes and becomes the Host."""
    r = request(proxy.port(), b"GET http://a.wild.test/abs HTTP/1.0\r\n\r\n")
    assert r.status == 200 and r.header("x-served-by") == "wild"
    echo = json.loads(r.body)
    assert echo["path"] == "/abs"
    assert [v for k, v in echo["headers"] if k.lower() == "host"] == ["a.wild.test"]


def test_no_route_body_names_the_reason(proxy):
    r = send(proxy, "nothing.test", "/x")
    assert_proxy_error(r, 404, "no_route")
    assert r.header("x-served-by") is None
