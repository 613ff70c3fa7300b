"""The access log writer (fastproxy/observe/accesslog.py): SPEC §8/§11 fields and
formats, whole lines on pipes shared by several workers, appends to files."""
from __future__ import annotations

import os
import re
import threading

import orjson

from fastproxy.observe.accesslog import PIPE_BUF, AccessLog, TimeFormat
from fastproxy.observe.records import Record

FIELDS = ["time", "listener", "route", "method", "path", "authority", "status", "duration_ms",
          "bytes_in", "bytes_out", "cluster", "upstream", "peer", "trace_id", "request_id", "error"]


def record(i: int = 0, **changes) -> Record:
    base = Record(start=1764105000.0125, end=1764105000.0360, listener="out", direction="outbound",
                  route="r", cluster="app", upstream="127.0.0.1:8080", method="POST",
                  path=f"/items/{i}?q=1", authority="svc:80", status=201, error=None,
                  bytes_in=5, bytes_out=12, peer=None, trace_id="0af7651916cd43dd8448eb211c80319c",
                  span_id="b7ad6b7169203331", parent_id=None, sampled=True,
                  request_id=f"req-{i}", overhead=0.00002)
    return base._replace(**changes)


def test_time_is_rfc3339_utc_with_milliseconds():
    fmt = TimeFormat()
    assert fmt(0.0) == "1970-01-01T00:00:00.000Z"
    assert fmt(1764105000.0125) == "2025-11-25T21:10:00.012Z"
    assert fmt(1764105001.999) == "2025-11-25T21:10:01.999Z"


def test_one_json_object_per_request_with_the_spec_fields(tmp_path):
    log = AccessLog(str(tmp_path / "access.log"))
    try:
        line = log.line(record(peer="spiffe://mesh.local/ns/default/sa/web"))
    finally:
        log.close()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    entry = orjson.loads(line)
    assert list(entry) == FIELDS
    assert entry["duration_ms"] == 23.5
    assert entry["peer"] == "spiffe://mesh.local/ns/default/sa/web"
    assert entry["error"] is None and entry["status"] == 201
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])


def test_batches_append_to_a_file(tmp_path):
    path = tmp_path / "access.log"
    path.write_bytes(b"kept\n")
    log = AccessLog(str(path))
    log.write([log.line(record(i)) for i in range(3)])
    log.write([log.line(record(i)) for i in range(3, 5)])
    log.close()
    lines = path.read_bytes().splitlines()
    assert lines[0] == b"kept"
    assert [orjson.loads(l)["request_id"] for l in lines[1:]] == [f"req-{i}" for i in range(5)]


def test_pipe_writes_stay_within_pipe_buf_and_end_on_a_line(monkeypatch):
    read_fd, write_fd = os.pipe()
    writes: list[bytes] = []
    real_write = os.write

    def spy(fd, data):
        if fd == write_fd:
            writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_fd, 65536), b"")))
    reader.start()
    monkeypatch.setattr("sys.stdout", os.fdopen(write_fd, "w", closefd=False))
    log = AccessLog("stdout")
    lines = [log.line(record(i)) for i in range(200)]
    log.write(lines)
    log.close()
    os.close(write_fd)
    reader.join(5)
    assert b"".join(chunks) == b"".join(lines)
    assert len(writes) > 1
    assert all(len(w) <= PIPE_BUF and w.endswith(b"\n") for w in writes)
