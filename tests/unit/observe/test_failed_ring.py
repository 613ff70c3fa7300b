"""The shared rings of recent failed requests (fastproxy/observe/failed.py)."""
from __future__ import annotations

from fastproxy.observe.failed import ENTRIES, FailedRing, shared_bytes
from fastproxy.observe.records import Record


def record(t: float, status: int = 503, error: str | None = None, path: str = "/") -> Record:
    return Record(start=t - 0.01, end=t, listener="out", direction="outbound", route="r",
                  cluster="app", upstream="127.0.0.1:1", method="GET", path=path,
                  authority="svc", status=status, error=error, bytes_in=0, bytes_out=0,
                  peer=None, trace_id="ab" * 16, span_id="cd" * 8, parent_id=None,
                  sampled=False, request_id=f"rid-{t}", overhead=0.0)


def test_every_workers_failures_newest_first():
    buffer = bytearray(shared_bytes(2))
    first, second = FailedRing(buffer, index=0), FailedRing(buffer, index=1)
    first.add(record(1.0))
    second.add(record(2.0, 502, "upstream_reset"))
    first.add(record(3.0, 504, "upstream_timeout"))
    seen = FailedRing(buffer, index=0).recent()
    assert [e["request_id"] for e in seen] == ["rid-3.0", "rid-2.0", "rid-1.0"]
    assert seen[1] | {"time": None} == {
        "time": None, "listener": "out", "route": "r", "cluster": "app", "status": 502,
        "reason": "upstream_reset", "trace_id": "ab" * 16, "request_id": "rid-2.0",
        "method": "GET", "path": "/", "authority": "svc", "upstream": "127.0.0.1:1", "peer": None,
        "original_destination": None}


def test_a_ring_keeps_the_newest_entries_only():
    ring = FailedRing(bytearray(shared_bytes(1)))
    for i in range(ENTRIES + 10):
        ring.add(record(float(i)))
    seen = ring.recent(limit=1000)
    assert len(seen) == ENTRIES
    assert seen[0]["request_id"] == f"rid-{float(ENTRIES + 9)}"
    assert seen[-1]["request_id"] == "rid-10.0"


def test_a_huge_path_is_cut_not_lost():
    ring = FailedRing(bytearray(shared_bytes(1)))
    ring.add(record(1.0, path="/" + "x" * 5000))
    [entry] = ring.recent()
    assert entry["status"] == 503 and entry["path"].startswith("/xxx") and len(entry["path"]) <= 256


def test_an_entry_being_written_is_skipped():
    buffer = bytearray(shared_bytes(1))
    ring = FailedRing(buffer)
    ring.add(record(1.0))
    buffer[0] |= 1            # an odd sequence number: a writer is in the middle of it
    assert ring.recent() == []


def test_long_strings_everywhere_are_cut_so_the_entry_stays():
    ring = FailedRing(bytearray(shared_bytes(1)))
    long = "é" * 3000
    ring.add(record(1.0)._replace(request_id=long, peer=long, upstream=long, authority=long,
                                  route=long, cluster=long))
    [entry] = ring.recent()
    assert entry["status"] == 503 and entry["trace_id"] == "ab" * 16
    assert entry["request_id"].startswith("é")
