"""Route matching: the Cython route table against the same rules in pure Python.

A listener with twelve routes (hosts exact and `*.suffix`, prefixes, an exact path, a
method, a header match, a catch-all) and requests that stop at different depths of the
table. The Cython matcher compares offsets into the received head; the Python one works
on the fields a Python proxy would have (h11's Request event: lowercase names, bytes).
Both must pick the same route for every request.

    make bench-micro      (python -m pytest -q bench/micro --benchmark-only)
"""
from __future__ import annotations

import pytest

http1 = pytest.importorskip("fastproxy._core.http1", reason="the Cython core is not built (make build)")
proxy = pytest.importorskip("fastproxy._core.proxy")
h11 = pytest.importorskip("h11")

from fastproxy.config import loads  # noqa: E402
from fastproxy.config.compile import compile_snapshot  # noqa: E402

ROUTES = [
    dict(name="canary", host="reviews", headers={"x-canary": "1"}),
    dict(name="api-v2", host="api.example.com", prefix="/v2/"),
    dict(name="api-v1", host="api.example.com", prefix="/v1/"),
    dict(name="admin", host="*.internal", prefix="/admin"),
    dict(name="health", path="/healthz"),
    dict(name="static", host="*.cdn.example.com"),
    dict(name="uploads", method="POST", prefix="/upload"),
    dict(name="ratings", host="ratings"),
    dict(name="details", host="details", prefix="/d/"),
    dict(name="reviews", host="reviews"),
    dict(name="www", host="www.example.com"),
    dict(name="fallback"),
]


def _toml() -> str:
    lines = ['[proxy]\nadmin = ""\n[[listener]]\nname = "l"\nbind = "127.0.0.1:1"']
    for r in ROUTES:
        lines.append("  [[listener.route]]")
        for key, value in r.items():
            if key == "headers":
                lines.append("  headers = { " + ", ".join(f'"{k}" = "{v}"' for k, v in value.items()) + " }")
            else:
                lines.append(f'  {key} = "{value}"')
        lines.append('  cluster = "c"')
    lines.append('[cluster.c]\nendpoints = ["127.0.0.1:2"]')
    return "\n".join(lines)


def python_match(req: h11.Request) -> str | None:
    """The same first-match rules over an h11 Request (what a pure-Python proxy has)."""
    headers = {k: v for k, v in req.headers}
    host = headers.get(b"host", b"").split(b":")[0].lower()
    path = req.target.split(b"?", 1)[0]
    for r in ROUTES:
        h = r.get("host")
        if h is not None:
            if h.startswith("*."):
                suffix = h[1:].encode()
                if not (host.endswith(suffix) and len(host) > len(suffix)):
                    continue
            elif host != h.encode():
                continue
        if "path" in r and path != r["path"].encode():
            continue
        if "prefix" in r and not path.startswith(r["prefix"].encode()):
            continue
        if "method" in r and req.method != r["method"].encode():
            continue
        if any(headers.get(k.encode()) != v.encode() for k, v in r.get("headers", {}).items()):
            continue
        return r["name"]
    return None


REQUESTS = {
    "first-route": b"GET / HTTP/1.1\r\nHost: reviews\r\nx-canary: 1\r\n\r\n",
    "middle": b"GET /admin/users HTTP/1.1\r\nHost: db.internal\r\n\r\n",
    "deep": b"GET /r/1 HTTP/1.1\r\nHost: reviews\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n",
    "fallback": b"GET /x?y=1 HTTP/1.1\r\nHost: unknown.example.org\r\n\r\n",
}


@pytest.fixture(scope="module")
def listener():
    worker = proxy.Worker(None)
    worker.install(compile_snapshot(loads(_toml(), "bench.toml")))
    return worker.listeners["l"]


def _h11_request(raw: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    return conn.next_event()


@pytest.mark.parametrize("case", list(REQUESTS))
def test_cython_route_table(benchmark, listener, case):
    head = http1.parse_request_head(REQUESTS[case])
    expected = python_match(_h11_request(REQUESTS[case]))
    assert listener.match(head) == expected
    benchmark(listener.match, head)


@pytest.mark.parametrize("case", list(REQUESTS))
def test_python_route_table(benchmark, case):
    req = _h11_request(REQUESTS[case])
    benchmark(python_match, req)
