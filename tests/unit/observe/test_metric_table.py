"""The shared metric table and its Prometheus rendering (fastproxy/_core/telemetry.pxi,
fastproxy/observe/metrics.py): counts from several processes add up, series are found
again by key, histograms render consistently, and prometheus_client parses the output."""
from __future__ import annotations

import mmap
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastproxy._core.proxy import DURATION_BUCKETS, METRICS_BYTES, MetricTable
from fastproxy.observe.metrics import key, render


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_counts_from_forked_processes_add_up():
    buffer = mmap.mmap(-1, METRICS_BYTES)
    name = key("fastproxy_requests_total", "out", "app", 200)
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            table = MetricTable(buffer)
            for _ in range(2500):
                table.add(name)
            os._exit(0)
        children.append(pid)
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    series = dict(MetricTable(buffer).series())
    assert series[name][0] == 10_000


def test_per_worker_series_are_summed_and_labels_kept():
    table = MetricTable()
    table.set(key("fastproxy_upstream_connections", "app", "idle", worker=0), 3)
    table.set(key("fastproxy_upstream_connections", "app", "idle", worker=1), 4)
    table.set(key("fastproxy_upstream_connections", "app", "active", worker=1), 1)
    table.add(key("fastproxy_requests_total", "out", "", 404), 0, 2)
    parsed = families(render(table.series()))
    conns = {tuple(sorted(s.labels.items())): s.value
             for s in parsed["fastproxy_upstream_connections"].samples}
    assert conns == {(("cluster", "app"), ("state", "idle")): 7,
                     (("cluster", "app"), ("state", "active")): 1}
    [sample] = parsed["fastproxy_requests"].samples
    assert sample.labels == {"listener": "out", "cluster": "", "code": "404"}
    assert sample.value == 2


def test_a_histogram_renders_cumulative_buckets_sum_and_count():
    table = MetricTable()
    series = key("fastproxy_request_duration_seconds", "out", "app")
    n = len(DURATION_BUCKETS)
    # layout: a count per bucket (the last one +Inf), then the sum in ns
    table.add(series, 0, 2)          # two requests <= 0.5 ms
    table.add(series, 3, 1)          # one <= 5 ms
    table.add(series, n, 1)          # one over the largest bound
    table.add(series, n + 1, 20_000_000_000)
    [family] = [f for f in text_string_to_metric_families(render(table.series()))]
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("fastproxy_request_duration_seconds_bucket", "0.0005")] == 2
    assert samples[("fastproxy_request_duration_seconds_bucket", "0.005")] == 3
    assert samples[("fastproxy_request_duration_seconds_bucket", "10.0")] == 3
    assert samples[("fastproxy_request_duration_seconds_bucket", "+Inf")] == 4
    assert samples[("fastproxy_request_duration_seconds_count", None)] == 4
    assert samples[("fastproxy_request_duration_seconds_sum", None)] == pytest.approx(20.0)


def test_unknown_series_are_not_rendered():
    table = MetricTable()
    table.add("not_a_fastproxy_metric\x1fx")
    assert render(table.series()) == "\n"


def test_a_full_table_says_so_instead_of_overwriting():
    table = MetricTable()
    for i in range(4096):
        table.add(key("fastproxy_requests_total", "l", f"c{i}", 200))
    assert not table.full
    table.add(key("fastproxy_requests_total", "l", "one-too-many", 200))
    assert table.full
    assert len(table.series()) == 4096
