"""HTTP/2 frame parsing: fastproxy's Cython frame layer (fastproxy/_core/http2.pyx) against
`hyperframe`.

The bytes of a typical request and its neighbours on a busy connection - HEADERS, DATA,
WINDOW_UPDATE (connection and stream), SETTINGS ACK, PING - fifty times over (300
frames) are split into frames, each checked, by both. The Cython reader is timed twice: `count()`, the loop the session runs
(frame headers read in place, every check, no Python object per frame), and `frames()`,
which also copies each payload out into a tuple. Figures, not pass/fail: `python -m pytest -q bench/micro --benchmark-only -k frames`.
"""
from __future__ import annotations

import pytest

http2 = pytest.importorskip("fastproxy._core.http2", reason="the Cython core is not built")
hf = pytest.importorskip("hyperframe.frame")

ROUNDS = 300
WIRE = (http2.frame(http2.HEADERS, 0x5, 1, b"\x82\x87\x84\x41\x8c" + b"x" * 60)
        + http2.frame(http2.DATA, 0x1, 3, b"y" * 512)
        + http2.frame(http2.WINDOW_UPDATE, 0, 0, (65535).to_bytes(4, "big"))
        + http2.frame(http2.WINDOW_UPDATE, 0, 1, (512).to_bytes(4, "big"))
        + http2.settings_frame(ack=True)
        + http2.frame(http2.PING, 0, 0, b"12345678"))
WIRE *= 50     # 300 frames per call, so the call's own cost does not count
FRAMES = 300


def _hyperframe(wire: bytes) -> list:
    view, at, out = memoryview(wire), 0, []
    while at < len(wire):
        frame, length = hf.Frame.parse_frame_header(view[at:at + 9])
        frame.parse_body(view[at + 9:at + 9 + length])
        out.append(frame)
        at += 9 + length
    return out


def run(benchmark, target, setup):
    return benchmark.pedantic(target, setup=setup, rounds=ROUNDS, warmup_rounds=100)


@pytest.mark.benchmark(group="h2 frames: 300 frames of a busy connection")
def test_frames_fastproxy_in_place(benchmark):
    assert run(benchmark, lambda r: r.count(WIRE), lambda: ((http2.FrameReader(),), {})) == FRAMES


@pytest.mark.benchmark(group="h2 frames: 300 frames of a busy connection")
def test_frames_fastproxy(benchmark):
    frames = run(benchmark, lambda r: r.frames(WIRE), lambda: ((http2.FrameReader(),), {}))
    assert len(frames) == FRAMES


@pytest.mark.benchmark(group="h2 frames: 300 frames of a busy connection")
def test_frames_hyperframe(benchmark):
    assert len(run(benchmark, _hyperframe, lambda: ((WIRE,), {}))) == FRAMES
