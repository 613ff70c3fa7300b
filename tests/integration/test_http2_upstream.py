"""SPEC §12, HTTP/2 upstreams that refuse, go away, break or limit streams: a scripted h2c
server (tests/support/h2_upstream.py) behind a real fastproxy, HTTP/1.1 clients in front.

- REFUSED_STREAM and streams above a GOAWAY's last stream id never reached the
  application: sent again on a new connection, outside `retries` (the route has none),
  five times at most.
- A connection that breaks fails only the streams it carried; the next request opens a
  new one.
(The server's SETTINGS_MAX_CONCURRENT_STREAMS is checked on the client session itself, in
tests/unit/core/test_h2_client_session.py.)
"""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from support.configs import simple_config
from support.procs import free_port, stop_group, wait_for_ports, wait_until

pytestmark = pytest.mark.timeout(60)

SCRIPT = Path(__file__).resolve().parent.parent / "support" / "h2_upstream.py"


class H2Upstream:
    def __init__(self, workdir: Path, mode: str):
        self.port = free_port()
        self.record = workdir / f"h2-{mode}.jsonl"
        self.log = open(workdir / f"h2-{mode}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), "--port", str(self.port),
                                      "--mode", mode, "--record", str(self.record)],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_ports([self.port], proc=self.proc, what=f"h2 upstream ({mode})")

    def requests(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def stop(self):
        stop_group(self.proc, grace_s=2)
        self.log.close()


@pytest.fixture
def upstream(tmp_path, fastproxy):
    started = []

    def start(mode: str):
        up = H2Upstream(tmp_path, mode)
        started.append(up)
        proxy = fastproxy(simple_config(f"127.0.0.1:{up.port}", cluster='protocol = "http2"'))
        return up, proxy
    yield start
    for up in started:
        up.stop()


def get(proxy, path: str) -> httpx.Response:
    return httpx.get(proxy.url(path), timeout=10)


def test_a_refused_stream_is_sent_again_on_a_new_connection(upstream):
    up, proxy = upstream("refuse-first")
    r = get(proxy, "/one")
    (first, again) = up.requests()
    assert first["path"] == again["path"] == "/one" and first["conn"] != again["conn"]
    assert r.status_code == 200 and r.text == f"conn {again['conn']} stream 1"


def test_a_server_that_refuses_every_stream_gets_it_six_times_then_the_client_502(upstream):
    up, proxy = upstream("refuse-all")
    r = get(proxy, "/one")
    assert (r.status_code, r.headers["fastproxy-error"]) == (502, "upstream_reset")
    tries = up.requests()
    assert len(tries) == 6 and len({t["conn"] for t in tries}) == 6


def test_streams_above_a_goaway_are_sent_again_and_the_ones_below_finish(upstream):
    up, proxy = upstream("goaway-after-1")
    with ThreadPoolExecutor(5) as pool:
        replies = list(pool.map(lambda i: get(proxy, f"/r{i}"), range(5)))
    assert [r.status_code for r in replies] == [200] * 5
    answered_by = [r.text.split()[1] for r in replies]
    assert len(set(answered_by)) >= 2        # the GOAWAY moved some to new connections
    paths = [q["path"] for q in up.requests()]
    assert sorted(set(paths)) == sorted(f"/r{i}" for i in range(5))


def test_a_broken_connection_fails_only_its_streams_and_the_pool_recovers(upstream):
    up, proxy = upstream("drop-slow")
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(get, proxy, "/slow")
        wait_until(lambda: any(q["path"] == "/slow" for q in up.requests()), deadline_s=10,
                   what="the held request at the server")
        drop = get(proxy, "/drop")
        slow = slow.result()
    assert (slow.status_code, slow.headers["fastproxy-error"]) == (502, "upstream_reset")
    assert (drop.status_code, drop.headers["fastproxy-error"]) == (502, "upstream_reset")
    broken = {q["conn"] for q in up.requests()}
    assert len(broken) == 1                  # neither was sent again elsewhere
    after = get(proxy, "/after")
    assert after.status_code == 200 and int(after.text.split()[1]) not in broken

