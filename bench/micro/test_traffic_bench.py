"""Per-request costs of traffic management: the weighted split pick and the breaker.

- split: the Cython smooth weighted round-robin against the same algorithm in Python;
- breaker gate: what every request to a cluster with a circuit breaker pays (one atomic
  load of the shared state word), against a Python equivalent over a dict;
- breaker failure: what a failure pays (a CAS on its bucket word, then a window sum).

    make bench-micro      (python -m pytest -q bench/micro --benchmark-only)
"""
from __future__ import annotations

import time

import pytest

proxy = pytest.importorskip("fastproxy._core.proxy", reason="the Cython core is not built (make build)")

from fastproxy.config import loads  # noqa: E402
from fastproxy.config.compile import compile_snapshot  # noqa: E402

CONFIG = """
[proxy]
admin = ""
[[listener]]
name = "l"
bind = "127.0.0.1:1"
  [[listener.route]]
  split = [ { cluster = "v1", weight = 90 }, { cluster = "v2", weight = 9 }, { cluster = "v3", weight = 1 } ]
[cluster.v1]
endpoints = ["127.0.0.1:2"]
  [cluster.v1.circuit_breaker]
  max_failures = 1000000
[cluster.v2]
endpoints = ["127.0.0.1:3"]
[cluster.v3]
endpoints = ["127.0.0.1:4"]
"""


@pytest.fixture(scope="module")
def worker():
    w = proxy.Worker(None)
    w.install(compile_snapshot(loads(CONFIG, "bench.toml")))
    return w


class PythonSplit:
    """The same smooth weighted round-robin, in Python."""

    def __init__(self, members):
        self.members = members
        self.current = [0] * len(members)

    def next(self):
        total, best = 0, -1
        for i, (_, weight) in enumerate(self.members):
            self.current[i] += weight
            total += weight
            if best < 0 or self.current[i] > self.current[best]:
                best = i
        self.current[best] -= total
        return self.members[best][0]


def _shares(pick, n=1000):
    counts = {}
    for _ in range(n):
        name = pick()
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_split_pick_cython(benchmark, worker):
    split = worker.listeners["l"].routes[0].split
    assert _shares(split.next) == {"v1": 900, "v2": 90, "v3": 10}
    benchmark(split.next)


def test_split_pick_python(benchmark):
    split = PythonSplit([("v1", 90), ("v2", 9), ("v3", 1)])
    assert _shares(split.next) == {"v1": 900, "v2": 90, "v3": 10}
    benchmark(split.next)


def test_breaker_gate_cython(benchmark, worker):
    breaker = worker.clusters["v1"].breaker
    assert breaker.check() == 0
    benchmark(breaker.check)


def test_breaker_gate_python(benchmark):
    state = {"state": "closed", "open_until": 0.0}

    def gate():
        if state["state"] == "closed":
            return 0
        return 0 if time.monotonic() >= state["open_until"] else -1

    benchmark(gate)


def test_breaker_failure_cython(benchmark, worker):
    breaker = worker.clusters["v1"].breaker
    benchmark(breaker.outcome, True)
    assert breaker.snapshot()["failures"] > 0
