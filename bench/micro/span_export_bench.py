"""What the span exporter costs the event loop: microseconds per span for `submit` (called
by the records drain, on the event loop) and per batch for building an export request
(`_export_batch`, with the POST itself stubbed out: only the work before the first await
is the exporter's own pause).

    python bench/micro/span_export_bench.py                  # fastproxy/observe/tracing.py
    python bench/micro/span_export_bench.py --tracing FILE   # another version of it, to compare

The records look like the h1-observe bench scenario's (an inbound listener, one route and
cluster, "GET /", status 200), a quarter continuing a trace and a few errors. Prints the
best of --repeat runs (the machine is shared: the minimum is the least disturbed figure).
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fastproxy.observe.records import Record  # noqa: E402


def records(n: int) -> list[Record]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        start = 1_764_000_000.0 + i * 0.0015
        error = "upstream_timeout" if i % 97 == 0 else None
        out.append(Record(
            start=start, end=start + 0.00042, listener="main", direction="inbound",
            route=None if i % 50 == 0 else "default", cluster="next_hop",
            upstream="127.0.0.1:40123", method="GET", path="/" if i % 3 else "/api/v1/items?page=2",
            authority="127.0.0.1:40999", status=504 if error else 200, error=error,
            bytes_in=0, bytes_out=12, peer=None, trace_id=f"{rng.getrandbits(128) | 1:032x}",
            span_id=f"{rng.getrandbits(64) | 1:016x}",
            parent_id=f"{rng.getrandbits(64) | 1:016x}" if i % 4 == 0 else None, sampled=True,
            request_id=f"{rng.getrandbits(128):032x}", overhead=0.0001))
    return out


def load(path: str | None):
    if path is None:
        from fastproxy.observe import tracing
        return tracing
    spec = importlib.util.spec_from_file_location("tracing_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracing", help="a tracing.py to measure instead of fastproxy's")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--batches", type=int, default=8, help="batches per run")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    tracing = load(args.tracing)
    recs = records(args.batch * args.batches)

    async def ok(body: bytes) -> int:
        return 200

    async def run() -> tuple[float, float, int]:
        ex = tracing.SpanExporter("127.0.0.1", 9, "bench", max_queue=len(recs),
                                  batch_size=args.batch)
        ex._post = ok
        submit = ex.submit
        t0 = time.perf_counter()
        for r in recs:
            submit(r)
        t1 = time.perf_counter()
        export = 0.0
        sizes = []
        sent = ex._post

        async def measure(body: bytes) -> int:      # stop the clock at the POST
            nonlocal export
            export += time.perf_counter() - t
            sizes.append(len(body))
            return await sent(body)
        ex._post = measure
        while ex.queue:
            t = time.perf_counter()
            assert await ex._export_batch()
        assert ex.exported == len(recs), ex.exported
        return (t1 - t0) / len(recs), export / args.batches, sum(sizes) // len(sizes)

    best_submit = best_export = float("inf")
    for _ in range(args.repeat):
        submit, export, size = asyncio.run(run())
        best_submit, best_export = min(best_submit, submit), min(best_export, export)
    what = args.tracing or "fastproxy/observe/tracing.py"
    print(f"{what}: submit {best_submit * 1e6:.2f} µs/span, "
          f"export {best_export * 1e6:.0f} µs per {args.batch}-span batch "
          f"({best_export / args.batch * 1e6:.2f} µs/span), body {size} bytes")


if __name__ == "__main__":
    main()
