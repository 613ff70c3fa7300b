"""What the dashboard costs the sidecar while someone looks at it (`python -m bench.dashboard`).

The page asks the admin API for /config, /clusters, /requests/failed, /ready, /certs and
/metrics once per refresh (every 1.5 s). This starts `fastproxy demo` (traffic, a split,
a failing service), then, against the frontend sidecar, alternates windows of refreshes
made back to back with equally long windows of none, and reports the sidecar's CPU per
refresh: the difference between the two, divided by the refreshes. With nobody looking
the page costs nothing: none of it runs per request.
"""
from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import time

from bench.procstat import cpu_seconds as _cpu
from fastproxy.demo import PORTS

def cpu_seconds(pid: int) -> float:
    return _cpu(pid)[0]               # user + system


PATHS = ("/config", "/clusters", "/requests/failed", "/ready", "/certs", "/metrics")
REFRESH_S = 1.5


def sidecar_pid(config_name: str) -> int:
    """The `fastproxy run` process whose configuration file is `config_name`."""
    pid = subprocess.run(["pgrep", "-n", "-f", f"fastproxy run -c .*/{config_name}$"], capture_output=True,
                         text=True).stdout.strip()
    if not pid:
        raise RuntimeError(f"no sidecar runs {config_name}")
    return int(pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--refreshes", type=int, default=300, help="refreshes per window (default 300)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base-port", type=int, default=25000, help="the demo's ports (default 25000..25014)")
    args = parser.parse_args(argv)
    base = args.base_port
    demo = subprocess.Popen([sys.executable, "-m", "fastproxy", "demo", "--plain", "--base-port", str(base),
                             "--duration", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        admin = base + PORTS["admin:frontend"][0]
        deadline = time.monotonic() + 30
        while True:
            try:
                pid = sidecar_pid("frontend.toml")
                http.client.HTTPConnection("127.0.0.1", admin, timeout=1).request("GET", "/ready")
                break
            except (RuntimeError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        time.sleep(5)                         # some history in the metrics first
        costs = []
        for _ in range(args.rounds):
            conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
            before, started = cpu_seconds(pid), time.monotonic()
            for _ in range(args.refreshes):
                for path in PATHS:
                    conn.request("GET", path)
                    conn.getresponse().read()
            busy, took = cpu_seconds(pid) - before, time.monotonic() - started
            conn.close()
            before = cpu_seconds(pid)
            time.sleep(took)
            idle = cpu_seconds(pid) - before
            costs.append((busy - idle) / args.refreshes)
        per_refresh = statistics.median(costs)
        print(f"dashboard refresh ({len(PATHS)} admin requests) against the demo's frontend sidecar, "
              f"{args.rounds} rounds of {args.refreshes}:")
        print(f"  sidecar CPU per refresh: median {per_refresh * 1000:.2f} ms "
              f"(rounds: {', '.join(f'{c * 1000:.2f}' for c in costs)})")
        print(f"  one page open, refreshing every {REFRESH_S:g} s: {per_refresh / REFRESH_S * 100:.2f}% of a core")
    finally:
        demo.terminate()
        demo.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
