"""The per-request record the core hands to Python, and its field order.

The core builds a plain tuple (cheap) in exactly the order of `Record`'s fields, in one
place (`Exchange.record`, refusals included); Python wraps it with `Record._make`, which
raises on a tuple of another length, so every test that reads /failed or a span keeps
the two in step.
"""
from __future__ import annotations

from typing import NamedTuple


class Record(NamedTuple):
    start: float            # Unix time (s) the request head was complete
    end: float              # Unix time (s) the response ended (or the request was given up)
    listener: str
    direction: str          # "inbound" | "outbound": server or client span
    route: str | None       # the route's name; None without a route
    cluster: str | None
    upstream: str | None    # "host:port" of the endpoint that answered, or None
    method: str
    path: str               # the request target's path and query, as received
    authority: str          # Host / authority
    status: int             # the status sent to the client; 499 (as nginx logs it) when the
                            # client left before any response head
    error: str | None       # the reason of a proxy-made response (docs/http.md), else None
    bytes_in: int           # request body bytes
    bytes_out: int          # response body bytes
    peer: str | None        # the verified SPIFFE id of an mtls client
    trace_id: str | None    # 32 lowercase hex digits; None when tracing propagates nothing
    span_id: str | None     # the proxy's span: 16 lowercase hex digits
    parent_id: str | None   # the incoming parent span id, when a context was continued
    sampled: bool
    request_id: str
    overhead: float         # seconds spent inside the proxy, upstream time excluded
    protocol: str = "HTTP/1.1"      # the client's: "HTTP/1.1" or "HTTP/2"
    grpc_status: int | None = None  # a gRPC request's grpc-status, when one came
    original_destination: str | None = None   # transparent listeners: "host:port" before iptables

    @property
    def failed(self) -> bool:
        """What /requests/failed keeps: status >= 500 or a proxy-made error."""
        return self.status >= 500 or self.error is not None

    @property
    def duration(self) -> float:
        return self.end - self.start


class Drain:
    """Takes what the core recorded off the hot path on a timer and hands it on: the
    access log lines (written by the core) to the writer, sampled spans to the exporter,
    failures to /requests/failed. Large batches of records are handled in slices, letting
    the event loop serve traffic in between."""

    INTERVAL = 0.05   # seconds; also about the most a failed request waits to show in the admin
    SLICE = 256       # records handled between two turns of the event loop

    def __init__(self, core, failed, access_log=None, exporter=None):
        self.core = core
        self.failed = failed
        self.access_log = access_log
        self.exporter = exporter

    def flush(self) -> None:
        """Hand on everything recorded so far, at once (the admin and shutdown use it)."""
        self.write_log()
        self.handle(self.core.take_records())

    def write_log(self) -> None:
        lines = self.core.log.take()
        if self.access_log is not None:
            self.access_log.write(lines)

    def handle(self, batch: list[tuple]) -> None:
        exporter, failed = self.exporter, self.failed
        for fields in batch:    # the core records sampled requests and failures only
            record = Record._make(fields)
            if exporter is not None and record.sampled:
                exporter.submit(record)
            if record.failed:
                failed.add(record)

    async def run(self) -> None:
        import asyncio

        while True:
            await asyncio.sleep(self.INTERVAL)
            self.write_log()
            batch = self.core.take_records()
            for at in range(0, len(batch), self.SLICE):
                if at:
                    await asyncio.sleep(0)
                self.handle(batch[at:at + self.SLICE])

