"""The recent failed requests of every worker, for the admin API's /requests/failed.

Each worker owns a ring of fixed-size entries in a shared mapping made before the
workers fork; the admin (in whichever worker serves it) reads every ring. An entry is
guarded by a sequence number (odd while being written), so a reader never returns a
half-written entry and writers never wait.
"""
from __future__ import annotations

import struct

import orjson

from fastproxy.observe.records import Record

ENTRIES = 128            # per worker
ENTRY_BYTES = 1024
_HEADER = struct.Struct("<II")   # sequence, length
_DATA = ENTRY_BYTES - _HEADER.size
RING_BYTES = ENTRIES * ENTRY_BYTES


def shared_bytes(workers: int) -> int:
    return RING_BYTES * workers


def entry(record: Record) -> dict:
    """What /requests/failed shows of one request (docs/observability.md)."""
    return {
        "time": record.end, "listener": record.listener, "route": record.route,
        "cluster": record.cluster, "status": record.status, "reason": record.error,
        "trace_id": record.trace_id, "request_id": record.request_id,
        "method": record.method, "path": record.path[:256], "authority": record.authority[:256],
        "upstream": record.upstream, "peer": record.peer,
        "original_destination": record.original_destination,
    }


class FailedRing:
    """One worker's view of the shared rings: it writes its own, reads them all."""

    def __init__(self, buffer, workers: int = 1, index: int = 0):
        self.buffer = buffer if buffer is not None else bytearray(shared_bytes(workers))
        self.workers = len(self.buffer) // RING_BYTES
        self.base = index * RING_BYTES
        self.next = 0

    def add(self, record: Record) -> None:
        data = orjson.dumps(entry(record))
        if len(data) > _DATA:       # very long strings (a client's request id, a peer id)
            data = orjson.dumps({k: v[:24] if isinstance(v, str) and k != "trace_id" else v
                                 for k, v in entry(record).items()})
        at = self.base + (self.next % ENTRIES) * ENTRY_BYTES
        self.next += 1
        seq = _HEADER.unpack_from(self.buffer, at)[0]
        seq += 1 if seq % 2 == 0 else 2
        _HEADER.pack_into(self.buffer, at, seq, len(data))            # odd: being written
        self.buffer[at + _HEADER.size:at + _HEADER.size + len(data)] = data
        _HEADER.pack_into(self.buffer, at, seq + 1, len(data))        # even: complete

    def recent(self, limit: int = 100) -> list[dict]:
        """The newest failed requests of every worker, newest first."""
        out = []
        for at in range(0, self.workers * RING_BYTES, ENTRY_BYTES):
            seq, length = _HEADER.unpack_from(self.buffer, at)
            if seq == 0 or seq % 2 or not 0 < length <= _DATA:
                continue
            data = bytes(self.buffer[at + _HEADER.size:at + _HEADER.size + length])
            if _HEADER.unpack_from(self.buffer, at)[0] != seq:
                continue      # rewritten while we read it
            try:
                out.append(orjson.loads(data))
            except orjson.JSONDecodeError:
                continue
        out.sort(key=lambda e: e["time"], reverse=True)
        return out[:limit]
