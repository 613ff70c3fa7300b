"""fastproxy.config.compile: a validated Config becomes the Snapshot the core installs.

The full example uses every key; each compiled value is checked against what the file
says, and the core installs the result (routes match, clusters carry their state across
a second install)."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from fastproxy.config import load, loads
from fastproxy.config.compile import BreakerSpec, BudgetSpec, compile_snapshot

REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def snapshot():
    return compile_snapshot(load(REPO / "config/example-full.toml"))


def test_clusters(snapshot):
    clusters = {c.name: c for c in snapshot.clusters}
    assert list(clusters) == ["app", "reviews-v1", "reviews-v2", "ratings"]
    v1 = clusters["reviews-v1"]
    assert v1.addresses == (("10.0.0.5", 15006, True), ("reviews-v1.default.svc", 15006, False))
    assert (v1.default_host, v1.sni) == (b"10.0.0.5:15006", "reviews-v1.default.svc")
    assert (v1.tls_mode, v1.peer) == (2, "spiffe://mesh.local/ns/default/sa/reviews")
    assert (v1.balance, v1.connect_timeout, v1.idle_timeout) == (0, 1.0, 60.0)
    assert (v1.max_connections, v1.max_pending) == (1024, 1024)
    assert (v1.outlier_failures, v1.eject_ms, v1.max_ejected) == (5, 30000, 0.5)
    assert v1.breaker == BreakerSpec(3, 10.0, 60.0, 1)
    assert v1.budget == BudgetSpec(0.2, 10.0)
    v2, app = clusters["reviews-v2"], clusters["app"]
    assert (v2.balance, v2.breaker, v2.outlier_failures, v2.sni) == (1, None, 0, None)
    assert v2.default_host == b"10.0.0.6:15006"
    assert (app.tls_mode, app.peer) == (0, None)


def test_listeners_and_routes(snapshot):
    inbound, outbound = snapshot.listeners
    assert (inbound.tls_mode, inbound.direction, inbound.proto_line) == (
        2, "inbound", b"x-forwarded-proto: https\r\n")
    assert inbound.xfcc_prefix == b"x-forwarded-client-cert: By=spiffe://mesh.local/ns/default/sa/web;URI="
    assert (inbound.max_headers, inbound.header_timeout) == (50, 5.0)
    assert inbound.routes[0].allow == ("spiffe://mesh.local/ns/ops/*",)
    assert outbound.proto_line == b"x-forwarded-proto: http\r\n"
    canary, split, ratings = outbound.routes
    assert (canary.host, canary.prefix, canary.method, canary.headers, canary.cluster) == (
        b"reviews", b"/", b"GET", ((b"x-canary", b"1"),), "reviews-v2")
    assert canary.budget is None and canary.retry_on == 1 | 2   # connect-failure, reset
    assert split.split == (("reviews-v1", 90), ("reviews-v2", 10)) and split.cluster is None
    assert (split.timeout, split.retries, split.retry_on) == (3.0, 2, 1 | 2 | 4)
    assert split.budget == BudgetSpec(0.1, 5.0)
    assert (ratings.host, ratings.host_suffix, ratings.path) == (None, b".ratings.svc", b"/v1/ratings")


def test_worker_settings(snapshot):
    assert snapshot.max_connections == 10000
    assert (snapshot.propagate, snapshot.sample, snapshot.export_spans) == (1 | 2, 0.01, False)
    assert (snapshot.access_log, snapshot.metrics) == (True, True)


def test_snapshot_is_immutable(snapshot):
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.max_connections = 1
    assert isinstance(snapshot.listeners, tuple) and isinstance(snapshot.clusters, tuple)


CONFIG = """
[proxy]
admin = ""
[[listener]]
name = "l"
bind = "127.0.0.1:1"
  [[listener.route]]
  name = "api"
  host = "*.example.com"
  cluster = "c"
[cluster.c]
endpoints = ["127.0.0.1:2", "127.0.0.1:3"]
{extra}
"""


def test_the_core_installs_it_and_carries_cluster_state_by_name():
    proxy = pytest.importorskip("fastproxy._core.proxy")
    http1 = pytest.importorskip("fastproxy._core.http1")
    worker = proxy.Worker(None)
    worker.install(compile_snapshot(loads(CONFIG.format(extra=""), "a.toml")))
    head = http1.parse_request_head(b"GET / HTTP/1.1\r\nHost: API.Example.com\r\n\r\n")
    assert worker.listeners["l"].match(head) == "api"
    first = worker.clusters["c"]
    assert [e.label for e in first.endpoints] == ["127.0.0.1:2", "127.0.0.1:3"]

    # the same cluster, other settings: a new Cluster, the same endpoints and slots
    worker.install(compile_snapshot(loads(CONFIG.format(extra='connect_timeout = "3s"'), "b.toml")))
    second = worker.clusters["c"]
    assert second is not first and (first.connect_timeout, second.connect_timeout) == (1.0, 3.0)
    assert second.endpoints is first.endpoints and second.admission is first.admission

    # TLS turned on: the pools of plain-text connections are not carried
    worker.install(compile_snapshot(loads(CONFIG.format(extra='tls = "tls"'), "c.toml")))
    third = worker.clusters["c"]
    assert third.admission is first.admission
    assert [e.label for e in third.endpoints] == ["127.0.0.1:2", "127.0.0.1:3"]
    assert not set(map(id, third.endpoints)) & set(map(id, first.endpoints))
