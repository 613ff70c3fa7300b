"""Assertions shared by the end-to-end tests."""

from __future__ import annotations

import time

from .procs import wait_until
from .rawhttp import Response


def assert_proxy_error(resp: Response, status: int, reason: str) -> None:
    """SPEC §4: status, `fastproxy-error: REASON`, one-line body `fastproxy: REASON: DETAIL`."""
    assert resp.status == status, f"expected {status} {reason}, got {resp!r}"
    assert resp.header("fastproxy-error") == reason, f"fastproxy-error header: {resp!r}"
    text = resp.body.decode("utf-8", "replace")
    assert text.startswith(f"fastproxy: {reason}: "), f"error body: {text!r}"
    assert "\n" not in text.rstrip("\r\n"), f"error body is not one line: {text!r}"


class RssSampler:
    """Samples a ProxyProcess's total RSS in the caller's loop (no thread needed when the
    caller polls anyway) or from a background thread via start()/stop()."""

    def __init__(self, proxy, interval: float = 0.05):
        import threading
        self.proxy = proxy
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        v = self.proxy.rss()
        self.peak = max(self.peak, v)
        return v

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()


def wait_stalled(read_value, *, quiet_polls: int = 4, interval: float = 0.25,
                 deadline_s: float = 60.0, what: str = "counter"):
    """Poll a growing counter until it stops changing for `quiet_polls` polls in a row;
    return the stalled value. Bounded by `deadline_s`."""
    last, same = None, 0

    def stalled():
        nonlocal last, same
        v = read_value()
        same = same + 1 if v == last else 0
        last = v
        return same >= quiet_polls

    wait_until(stalled, deadline_s=deadline_s, interval=interval, what=f"{what} stalls")
    return last
