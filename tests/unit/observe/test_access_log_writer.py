"""Access log lines, written by the core (fastproxy/_core/accesslog.pxi), checked against
orjson as the oracle; and the writer (fastproxy/observe/accesslog.py): whole lines on
pipes shared by several workers, appends to files."""
from __future__ import annotations

import datetime as dt
import os
import re
import threading

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy._core.proxy import access_log_line
from fastproxy.observe.accesslog import PIPE_BUF, AccessLog
from fastproxy.observe.records import Record

FIELDS = ["time", "listener", "route", "method", "path", "authority", "status", "duration_ms",
          "bytes_in", "bytes_out", "cluster", "upstream", "peer", "trace_id", "request_id", "error",
          "protocol", "grpc_status", "original_destination"]


def record(i: int = 0, **changes) -> Record:
    base = Record(start=1764105000.0125, end=1764105000.0360, listener="out", direction="outbound",
                  route="r", cluster="app", upstream="127.0.0.1:8080", method="POST",
                  path=f"/items/{i}?q=1", authority="svc:80", status=201, error=None,
                  bytes_in=5, bytes_out=12, peer=None, trace_id="0af7651916cd43dd8448eb211c80319c",
                  span_id="b7ad6b7169203331", parent_id=None, sampled=True,
                  request_id=f"req-{i}", overhead=0.00002)
    return base._replace(**changes)


def expected(r: Record) -> dict:
    """What the line must say, built the plain way."""
    time = dt.datetime.fromtimestamp(r.start, dt.timezone.utc)
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time.microsecond // 1000:03d}Z",
        "listener": r.listener, "route": r.route, "method": r.method, "path": r.path,
        "authority": r.authority, "status": r.status,
        "duration_ms": round((r.end - r.start) * 1000, 3), "bytes_in": r.bytes_in,
        "bytes_out": r.bytes_out, "cluster": r.cluster, "upstream": r.upstream, "peer": r.peer,
        "trace_id": r.trace_id, "request_id": r.request_id, "error": r.error,
        "protocol": r.protocol, "grpc_status": r.grpc_status,
        "original_destination": r.original_destination,
    }


def test_a_line_has_the_spec_fields_in_order():
    line = access_log_line(record(peer="spiffe://mesh.local/ns/default/sa/web"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    entry = orjson.loads(line)
    assert list(entry) == FIELDS
    assert entry == expected(record(peer="spiffe://mesh.local/ns/default/sa/web"))
    assert entry["time"] == "2025-11-25T21:10:00.012Z" and entry["duration_ms"] == 23.5
    assert re.fullmatch(rb'\{"time":"[^"]+","listener":"out",.*"error":null,'
                        rb'"protocol":"HTTP/1.1","grpc_status":null,"original_destination":null\}\n', line)


def test_a_transparent_listeners_request_names_its_original_destination():
    r = record(original_destination="10.96.0.10:9080")
    assert orjson.loads(access_log_line(r)) == expected(r)


def test_nulls_for_what_a_refused_request_lacks():
    r = record(route=None, cluster=None, upstream=None, trace_id=None, request_id=None,
               method="", path="", authority="", status=400, error="bad_request")
    assert orjson.loads(access_log_line(r)) == expected(r)


latin1 = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=40)


@settings(max_examples=500, deadline=None)
@given(method=latin1, path=latin1, authority=latin1, request_id=latin1,
       status=st.integers(0, 599), duration_us=st.integers(0, 10**9),
       sizes=st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)),
       start=st.floats(0, 4e9), error=st.sampled_from([None, "no_route", "upstream_reset"]),
       trace=st.one_of(st.none(), st.integers(1, 2**128 - 1).map(lambda n: f"{n:032x}")),
       protocol=st.sampled_from(["HTTP/1.1", "HTTP/2"]),
       grpc_status=st.one_of(st.none(), st.integers(0, 16)))
def test_any_request_bytes_make_valid_json_that_says_the_same(method, path, authority, request_id,
                                                             status, duration_us, sizes, start,
                                                             error, trace, protocol, grpc_status):
    # start on a whole millisecond: the line truncates to milliseconds, like the oracle
    start = int(start * 1000) / 1000
    r = record(method=method, path=path, authority=authority, request_id=request_id,
               status=status, start=start, end=start + duration_us / 1e6, bytes_in=sizes[0],
               bytes_out=sizes[1], error=error, trace_id=trace, protocol=protocol,
               grpc_status=grpc_status)
    entry = orjson.loads(access_log_line(r))
    want = expected(r)
    assert entry.pop("duration_ms") == round(duration_us / 1000, 3)
    want.pop("duration_ms")
    assert entry.pop("time")[:19] == want.pop("time")[:19]
    assert entry == want


def test_batches_append_to_a_file(tmp_path):
    path = tmp_path / "access.log"
    path.write_bytes(b"kept\n")
    log = AccessLog(str(path))
    log.write(b"".join(access_log_line(record(i)) for i in range(3)))
    log.write(b"".join(access_log_line(record(i)) for i in range(3, 5)))
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
    lines = b"".join(access_log_line(record(i)) for i in range(200))
    long_line = access_log_line(record(path="/" + "x" * 6000))
    log.write(lines + long_line)
    log.close()
    os.close(write_fd)
    reader.join(5)
    assert b"".join(chunks) == lines + long_line
    assert len(writes) > 2 and writes[-1] == long_line      # a line longer than PIPE_BUF goes alone
    assert all(len(w) <= PIPE_BUF and w.endswith(b"\n") for w in writes[:-1])
