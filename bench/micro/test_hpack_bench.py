"""HPACK: fastproxy's Cython codec (fastproxy/_core/hpack.pyx) against the `hpack` package.

A typical 12-field browser request, as the first block on a connection (literals, mostly
Huffman-coded) and as a repeated block (everything indexed from the dynamic table), is
decoded and encoded by both; assertions check they agree. Each round starts from fresh
codecs for the first block and from codecs that saw one block for the repeated one.
Figures, not pass/fail: `python -m pytest -q bench/micro --benchmark-only -k hpack`.
"""
from __future__ import annotations

import pytest

ours = pytest.importorskip("fastproxy._core.hpack", reason="the Cython core is not built")
hpack = pytest.importorskip("hpack")

ROUNDS = 3000
HEADERS = [
    (b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"www.example.com"),
    (b":path", b"/static/app/main.5f3c1a.js?v=20240101"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                    b"Chrome/124.0.0.0 Safari/537.36"),
    (b"accept", b"*/*"), (b"sec-fetch-site", b"same-origin"), (b"sec-fetch-mode", b"no-cors"),
    (b"referer", b"https://www.example.com/products/list?page=3&sort=price"),
    (b"accept-encoding", b"gzip, deflate, br, zstd"),
    (b"accept-language", b"en-US,en;q=0.9,de;q=0.8"),
    (b"cookie", b"session=3f2a9c7e1b; theme=dark; _ga=GA1.2.123456789.1700000000"),
]
FIRST = hpack.Encoder().encode(HEADERS)


def _repeated() -> bytes:
    encoder = hpack.Encoder()
    encoder.encode(HEADERS)
    return encoder.encode(HEADERS)


REPEATED = _repeated()


def run(benchmark, target, setup):
    return benchmark.pedantic(target, setup=setup, rounds=ROUNDS, warmup_rounds=100)


@pytest.mark.benchmark(group="hpack decode, first block")
def test_decode_first_fastproxy(benchmark):
    result = run(benchmark, lambda d: d.decode(FIRST), lambda: ((ours.Decoder(),), {}))
    assert result == HEADERS


@pytest.mark.benchmark(group="hpack decode, first block")
def test_decode_first_hpack(benchmark):
    result = run(benchmark, lambda d: d.decode(FIRST, raw=True), lambda: ((hpack.Decoder(),), {}))
    assert result == HEADERS


def _primed(make, decode):
    def setup():
        decoder = make()
        decode(decoder)
        return (decoder,), {}
    return setup


@pytest.mark.benchmark(group="hpack decode, repeated block")
def test_decode_repeated_fastproxy(benchmark):
    setup = _primed(ours.Decoder, lambda d: d.decode(FIRST))
    assert run(benchmark, lambda d: d.decode(REPEATED), setup) == HEADERS


@pytest.mark.benchmark(group="hpack decode, repeated block")
def test_decode_repeated_hpack(benchmark):
    setup = _primed(hpack.Decoder, lambda d: d.decode(FIRST, raw=True))
    assert run(benchmark, lambda d: d.decode(REPEATED, raw=True), setup) == HEADERS



@pytest.mark.benchmark(group="hpack encode, first block")
def test_encode_fastproxy(benchmark):
    block = run(benchmark, lambda e: e.encode(HEADERS), lambda: ((ours.Encoder(),), {}))
    assert hpack.Decoder().decode(block, raw=True) == HEADERS


@pytest.mark.benchmark(group="hpack encode, first block")
def test_encode_hpack(benchmark):
    run(benchmark, lambda e: e.encode(HEADERS), lambda: ((hpack.Encoder(),), {}))
