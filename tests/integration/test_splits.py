"""SPEC §2/§5/§11 weighted splits: each request decided on its own; over any 1,000
consecutive requests on one worker each cluster's share is within 1 percentage point of
its weight's share; header canaries win by route order; a member whose circuit is open or
that has no healthy endpoint gets no traffic and its share goes to the others in
proportion; only when none is left, 503 (circuit_open when all were excluded by open
circuits, else no_healthy_upstream).

One aiohttp process listens once per cluster; `x-served-by` names the cluster that
answered. Requests go one at a time over several keep-alive connections, so the proxy
sees them in the order they are sent."""

from __future__ import annotations

from collections import Counter

import pytest

from support.checks import assert_proxy_error
from support.configs import InlineTable
from support.rawhttp import get
from support.traffic import Conns, served_by, window_shares

pytestmark = pytest.mark.timeout(90)


def split_config(app, weights: dict[str, int], *, routes_before=(), routes_after=(),
                 cluster_extra: dict | None = None) -> dict:
    route = {"name": "split",
             "split": [InlineTable(cluster=name, weight=w) for name, w in weights.items()]}
    clusters = {}
    for name in weights:
        clusters[name] = {"endpoints": [app.addr(name)], **(cluster_extra or {}).get(name, {})}
    return {
        "proxy": {"admin": "", "drain_timeout": "2s", "access_log": "off"},
        "listener": [{"name": "main", "bind": "${listen:main}",
                      "route": [*routes_before, route, *routes_after]}],
        "cluster": clusters,
    }


@pytest.mark.parametrize("weights", [{"v1": 90, "v2": 10}, {"v1": 99, "v2": 1},
                                     {"v1": 999, "v2": 1}, {"v1": 5, "v2": 3, "v3": 2}],
                         ids=["90-10", "99-1", "999-1", "5-3-2"])
def test_split_shares_over_any_1000_consecutive_requests(fastproxy, app_upstream, weights):
    app = app_upstream(names=tuple(weights))
    proxy = fastproxy(split_config(app, weights))
    # 7 connections in turn: coprime with the 10- and 100-request cycles of these weights
    with Conns(proxy.port(), n=7) as conns:
        responses = [conns.ask("/status/200") for _ in range(2000)]
    assert all(r.status == 200 for r in responses), Counter(r.status for r in responses)
    seq = served_by(responses)
    total = sum(weights.values())
    lo, hi = window_shares(seq, 1000)
    for name, w in weights.items():
        want = w / total
        assert want - 0.01 <= lo.get(name, 0.0) and hi.get(name, 0.0) <= want + 0.01, (
            f"{name}: share over 1,000 consecutive requests ranged "
            f"{lo.get(name, 0.0):.3f}..{hi.get(name, 0.0):.3f}, weight share {want:.3f}; "
            f"totals {Counter(seq)}")
    if min(weights.values()) / total >= 0.01:
        # decided per request, not per connection: every connection saw every cluster
        per_conn = [set(seq[i::7]) for i in range(7)]
        assert all(s == set(weights) for s in per_conn), per_conn


def test_weight_zero_member_gets_nothing(fastproxy, app_upstream):
    app = app_upstream(names=("v1", "v2", "v3"))
    proxy = fastproxy(split_config(app, {"v1": 1, "v2": 0, "v3": 1}))
    with Conns(proxy.port(), n=3) as conns:
        seen = Counter(served_by(conns.ask("/status/200") for _ in range(200)))
    assert seen == {"v1": 100, "v3": 100}, seen
    assert app.hits()["v2"] == 0


def test_header_canary_takes_precedence_by_route_order(fastproxy, app_upstream):
    """Route 0 (x-canary: 1) sends everything to v2; route 1 is the 90/10 split, which
    matches every request, so route 2 (x-canary: 2 -> v2) is never reached."""
    app = app_upstream(names=("v1", "v2"))
    canary = {"name": "canary", "headers": InlineTable({"x-canary": "1"}), "cluster": "v2"}
    shadowed = {"name": "shadowed", "headers": InlineTable({"x-canary": "2"}), "cluster": "v2"}
    proxy = fastproxy(split_config(app, {"v1": 90, "v2": 10}, routes_before=[canary],
                                   routes_after=[shadowed]))
    plain, canaries, twos = [], [], []
    with Conns(proxy.port(), n=3) as conns:
        for i in range(300):
            plain.append(conns.ask("/status/200"))
            if i % 3 == 0:
                canaries.append(conns.ask("/status/200", headers=[("x-canary", "1")]))
                twos.append(conns.ask("/status/200", headers=[("x-canary", "2")]))
    assert Counter(served_by(canaries)) == {"v2": 100}
    # x-canary: 2 and no header both follow the split (the same split: 400 requests)
    split_seen = Counter(served_by(plain + twos))
    assert set(split_seen) == {"v1", "v2"}, split_seen
    assert 0.08 <= split_seen["v2"] / 400 <= 0.12, split_seen
    assert Counter(served_by(twos))["v1"] > 0, "x-canary: 2 matched the route after the split"


def test_open_circuit_member_share_goes_to_the_others_in_proportion(fastproxy, app_upstream):
    """60/30/10; v2's circuit opens (max_failures = 0: the first failure trips it, open
    for far longer than the test): v2 gets nothing and v1/v3 split 60:10."""
    app = app_upstream(names=("v1", "v2", "v3"))
    breaker = {"circuit_breaker": {"max_failures": 0, "window": "60s", "open_for": "120s"}}
    proxy = fastproxy(split_config(app, {"v1": 60, "v2": 30, "v3": 10},
                                   cluster_extra={"v2": breaker}))
    app.set_mode("v2", "fail")
    with Conns(proxy.port(), n=4) as conns:
        first = [conns.ask("/status/200") for _ in range(20)]
        failures = [r for r in first if r.status == 500]
        assert len(failures) == 1 and failures[0].header("x-served-by") == "v2", \
            f"exactly one request reaches v2 before its circuit opens: {[r.status for r in first]}"
        v2_hits = app.hits()["v2"]
        responses = [conns.ask("/status/200") for _ in range(1000)]
    assert app.hits()["v2"] == v2_hits, "v2's circuit is open: it must receive nothing"
    assert all(r.status == 200 for r in responses), Counter(r.status for r in responses)
    seen = Counter(served_by(responses))
    assert set(seen) == {"v1", "v3"}, seen
    assert abs(seen["v1"] / 1000 - 60 / 70) <= 0.01, seen
    assert abs(seen["v3"] / 1000 - 10 / 70) <= 0.01, seen


def test_every_member_open_gives_503_circuit_open(fastproxy, app_upstream):
    app = app_upstream(names=("v1", "v2"))
    breaker = {"circuit_breaker": {"max_failures": 0, "window": "60s", "open_for": "120s"}}
    proxy = fastproxy(split_config(app, {"v1": 50, "v2": 50},
                                   cluster_extra={"v1": breaker, "v2": breaker}))
    app.set_mode("v1", "fail")
    app.set_mode("v2", "fail")
    with Conns(proxy.port(), n=2) as conns:
        statuses = [conns.ask("/status/200").status for _ in range(2)]
        assert statuses == [500, 500], statuses
        assert app.hits() == {"v1": 1, "v2": 1}
        for _ in range(5):
            assert_proxy_error(conns.ask("/status/200"), 503, "circuit_open")
    assert app.hits() == {"v1": 1, "v2": 1}, "open circuits: nothing may reach the upstreams"


def test_member_without_healthy_endpoint_is_skipped_then_no_healthy_upstream(fastproxy, app_upstream):
    """A member whose only endpoint is ejected (one endpoint may always be ejected) gets no
    traffic; when v2 is also out by its open circuit, the answer is no_healthy_upstream
    (not every member was excluded by an open circuit)."""
    app = app_upstream(names=("v1", "v2"))
    outlier = {"outlier": {"consecutive_failures": 1, "eject_for": "120s"}}
    breaker = {"circuit_breaker": {"max_failures": 0, "window": "60s", "open_for": "120s"}}
    proxy = fastproxy(split_config(app, {"v1": 50, "v2": 50},
                                   cluster_extra={"v1": outlier, "v2": breaker}))
    app.set_mode("v1", "fail")
    with Conns(proxy.port(), n=2) as conns:
        first = [conns.ask("/status/200") for _ in range(4)]
        assert [r.status for r in first].count(500) == 1, [r.status for r in first]
        rest = [conns.ask("/status/200") for _ in range(20)]
        assert Counter(served_by(rest)) == {"v2": 20}, "v1's only endpoint is ejected"
        assert app.hits()["v1"] == 1
        app.set_mode("v2", "fail")
        assert conns.ask("/status/200").status == 500   # trips v2's circuit
        for _ in range(3):
            assert_proxy_error(conns.ask("/status/200"), 503, "no_healthy_upstream")
    assert app.hits()["v1"] == 1


def test_route_to_a_cluster_with_every_endpoint_ejected_is_no_healthy_upstream(fastproxy, app_upstream):
    app = app_upstream(names=("a",))
    cfg = split_config(app, {"a": 1}, cluster_extra={
        "a": {"outlier": {"consecutive_failures": 2, "eject_for": "120s"}}})
    cfg["listener"][0]["route"] = [{"name": "plain", "cluster": "a"}]
    proxy = fastproxy(cfg)
    app.set_mode("a", "fail")
    assert [get(proxy.port(), "/x").status for _ in range(2)] == [500, 500]
    assert_proxy_error(get(proxy.port(), "/x"), 503, "no_healthy_upstream")
    assert app.hits()["a"] == 2
