"""Helpers for the traffic-management tests (splits, circuit breaker, outlier ejection,
retries, admission): the admin API's /clusters, which worker serves a client connection,
and sequences of requests over a few keep-alive connections."""

from __future__ import annotations

import http.client
import json
import time
from collections import Counter

from .procs import LOOPBACK, socket_inodes_of, tcp_sockets, wait_until
from .rawhttp import RawConn, Response

ADMIN = '"${listen:admin}"'   # [proxy] admin = ADMIN in a config template


def admin_port(proxy) -> int:
    return int(proxy.config["proxy"]["admin"].rpartition(":")[2])


def admin_get(proxy, path: str, timeout: float = 10.0) -> tuple[int, dict]:
    c = http.client.HTTPConnection(LOOPBACK, admin_port(proxy), timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def wait_admin(proxy, deadline_s: float = 10.0) -> None:
    def answers():
        try:
            return admin_get(proxy, "/ready", timeout=2)[0] == 200
        except OSError:
            return False
    wait_until(answers, deadline_s=deadline_s, what="admin API /ready is 200")


def cluster_status(proxy, name: str) -> dict:
    """The /clusters entry of cluster `name` (SPEC §11 Admin)."""
    status, body = admin_get(proxy, "/clusters")
    assert status == 200, (status, body)
    found = [c for c in body["clusters"] if c["name"] == name]
    assert len(found) == 1, f"cluster {name} in /clusters: {body}"
    return found[0]


def circuit(proxy, name: str) -> dict:
    return cluster_status(proxy, name)["circuit"]


def endpoint_status(proxy, cluster: str) -> dict[str, dict]:
    """address -> the endpoint's /clusters entry."""
    return {e["address"]: e for e in cluster_status(proxy, cluster)["endpoints"]}


def ejected(proxy, cluster: str) -> set[str]:
    """Addresses /clusters reports as ejected now (ejected_until set)."""
    return {a for a, e in endpoint_status(proxy, cluster).items() if e["ejected_until"] is not None}


# ---------------------------------------------------------------- workers

def _server_side_inode(proxy_port: int, client_port: int) -> str | None:
    """Inode of the accepted socket (local proxy_port, remote client_port)."""
    for local, remote, _, inode in tcp_sockets():
        if local == proxy_port and remote == client_port:
            return inode
    return None


def worker_of(proxy, conn: RawConn, listener: str | None = None) -> int | None:
    """The pid of the worker process that holds the accepted side of `conn` (after at
    least one exchange on it, so the worker has accepted it)."""
    inode = _server_side_inode(proxy.port(listener), conn.sock.getsockname()[1])
    if inode is None:
        return None
    owners = [pid for pid in proxy.workers() if inode in socket_inodes_of(pid)]
    return owners[0] if len(owners) == 1 else None


def connection_per_worker(proxy, n_workers: int, *, path: str = "/status/200",
                          attempts: int = 64) -> dict[int, RawConn]:
    """Open connections until each of `n_workers` workers holds one; {pid: conn}. The
    extra connections are closed. SO_REUSEPORT spreads connections by their 4-tuple, so
    a few dozen connections reach every worker."""
    found: dict[int, RawConn] = {}
    for _ in range(attempts):
        c = RawConn(proxy.port())
        c.send(f"GET {path} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
        c.read_response()
        pid = worker_of(proxy, c)
        if pid is not None and pid not in found:
            found[pid] = c
            if len(found) == n_workers:
                return found
        else:
            c.close()
    for c in found.values():
        c.close()
    raise AssertionError(f"{attempts} connections reached only workers {sorted(found)} of "
                         f"{proxy.workers()}")


# ---------------------------------------------------------------- request sequences

def ask(conn: RawConn, path: str, *, host: str = "app", method: str = "GET",
        headers: list[tuple[str, str]] = (), body: bytes | None = None,
        timeout: float = 10.0) -> Response:
    """One request on a keep-alive connection."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
    if body is not None:
        extra += f"Content-Length: {len(body)}\r\n"
    conn.send(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode("latin-1")
              + (body or b""))
    return conn.read_response(method=method, timeout=timeout)


class Conns:
    """A few keep-alive client connections used in turn, one request at a time, so the
    proxy sees the requests in exactly the order they are sent."""

    def __init__(self, port: int, n: int = 4):
        self.conns = [RawConn(port) for _ in range(n)]
        self.i = 0

    def ask(self, path: str, **kw) -> Response:
        c = self.conns[self.i % len(self.conns)]
        self.i += 1
        return ask(c, path, **kw)

    def close(self):
        for c in self.conns:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def served_by(responses) -> list[str]:
    return [r.header("x-served-by") for r in responses]


def window_shares(sequence: list[str], window: int = 1000) -> tuple[dict[str, float], dict[str, float]]:
    """Min and max share of every value over every `window` consecutive items."""
    names = set(sequence)
    counts = Counter(sequence[:window])
    lo = {n: counts[n] / window for n in names}
    hi = dict(lo)
    for i in range(window, len(sequence)):
        counts[sequence[i]] += 1
        counts[sequence[i - window]] -= 1
        for n in names:
            share = counts[n] / window
            lo[n] = min(lo[n], share)
            hi[n] = max(hi[n], share)
    return lo, hi


def settle(seconds: float) -> None:
    """Let a configured duration (window, open_for, eject_for) pass. Never an assertion on
    timing: the tests only wait at least this long."""
    time.sleep(seconds)
