"""The breaker's shared counters: increments from several processes at once are never lost.

Each process adds failures to the same slot of one anonymous MAP_SHARED mapping (as
forked workers do) through the same compare-and-swap path the proxy uses.
"""
from __future__ import annotations

import mmap
import multiprocessing

from fastproxy._core.proxy import SHARED_BYTES, SharedCounters, count_failures

PROCESSES = 4
EACH = 1_000_000


def _add(buffer, slot, n):
    count_failures(SharedCounters(buffer), slot, n, 100.0)


def test_concurrent_increments_from_several_processes_are_all_counted():
    buffer = mmap.mmap(-1, SHARED_BYTES)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add, args=(buffer, 3, EACH)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # counting zero more reads the window's total
    assert count_failures(SharedCounters(buffer), 3, 0, 100.0) == PROCESSES * EACH
    # a neighbouring slot is untouched
    assert count_failures(SharedCounters(buffer), 4, 0, 100.0) == 0


def test_a_private_buffer_works_without_a_mapping():
    counters = SharedCounters()
    assert count_failures(counters, 0, 7, 10.0) == 7
