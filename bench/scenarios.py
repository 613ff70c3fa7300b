"""The scenarios (SPEC §10) and how long each run mode spends on them.

A scenario says what traffic the client sends (path, connections, closed loop with wrk or
a fixed rate), and which topology the proxy is part of: plain HTTP, TLS termination, or
the two-sidecar mTLS hop. `fastproxy_feature` names what fastproxy must support for the
scenario beyond plain HTTP/1.1 forwarding, so a missing feature is reported as such.
Must not know how a particular proxy is configured (that is bench.contenders).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    path: str                     # request path on the backend: "/" (12 bytes) or "/64k"
    connections: int
    topology: str = "plain"       # "plain" | "tls" (client TLS to the proxy) | "mtls-2hop"
    protocol: str = "h1"          # what the client speaks: "h1" (wrk) | "h2c" (h2load, prior
                                  # knowledge) | "grpc" (h2c unary calls to an HTTP/2 backend)
    streams: int = 1              # h2c: concurrent streams per connection
    fixed_rate: bool = False      # True: open-loop fixed request rate (bench.openloop), else wrk
    fastproxy_feature: str | None = None   # e.g. "tls listener (issue 4)"
    traffic: bool = False         # fastproxy routes through a split, a breaker and outlier detection
    # extra fastproxy contenders run side by side with the others, rounds alternating, so
    # their cost shows against fastproxy with everything off in the same run: "observe"
    # (metrics, W3C+B3 propagation sampled at 0.01 exported to the backend) and
    # "accesslog" (the same plus the JSON access log to a file), "mesh" (the split, breakers
    # and outlier detection of h1-traffic plus everything of "observe")
    variants: tuple[str, ...] = ()

    @property
    def http2(self) -> bool:
        return self.protocol in ("h2c", "grpc")

    @property
    def client_scheme(self) -> str:
        return "https" if self.topology == "tls" else "http"


SCENARIOS: list[Scenario] = [
    Scenario("h1-small", "HTTP/1.1 keep-alive, 12-byte responses, 32 connections; fastproxy "
             "also with its mesh features on", "/", 32, variants=("mesh",)),
    Scenario("h1-traffic", "h1-small through a 90/10 split, circuit breakers and outlier detection "
             "(fastproxy; the others forward plainly)", "/", 32, traffic=True),
    Scenario("h1-observe", "h1-small; fastproxy also with metrics and trace propagation (sample "
             "0.01, OTLP export) on, and with the access log to a file on top", "/", 32,
             variants=("observe", "accesslog")),
    Scenario("h1-conns", "HTTP/1.1 keep-alive, 12-byte responses, 1,000 connections", "/", 1000),
    Scenario("h1-64k", "HTTP/1.1 keep-alive, 64 KiB responses, 32 connections", "/64k", 32),
    Scenario("tls", "TLS termination (client HTTPS -> proxy -> plain HTTP), 32 connections", "/", 32,
             topology="tls", fastproxy_feature="tls listener"),
    Scenario("mtls-2hop", "client -> sidecar -> mTLS -> sidecar -> app, 32 connections; fastproxy "
             "also with its mesh features on", "/", 32, topology="mtls-2hop",
             fastproxy_feature="mtls listener and mtls cluster", variants=("mesh",)),
    Scenario("latency", "fixed rate, latency from each request's intended send time, 32 connections",
             "/", 32, fixed_rate=True),
    Scenario("h2-small", "HTTP/2 cleartext (prior knowledge), 32 connections x 10 streams, "
             "12-byte responses from the HTTP/1.1 backend", "/", 32, protocol="h2c", streams=10,
             fastproxy_feature="HTTP/2"),
    Scenario("grpc-unary", "gRPC unary calls, 32 connections x 10 streams, to an HTTP/2 backend "
             "answering with a message and grpc-status trailers", "/bench.Bench/Unary", 32,
             protocol="grpc", streams=10, fastproxy_feature="HTTP/2 and gRPC"),
]

BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}


@dataclass(frozen=True)
class Timing:
    rounds: int
    warmup_s: float            # once per contender and scenario, before its first round
    measure_s: float           # one measured run of a closed-loop scenario
    fixed_rate_measure_s: float  # one measured run of the fixed-rate scenario (needs more samples)
    rate: int                  # requests/s of the fixed-rate scenario


# wrk takes whole seconds, so 1 s is the shortest closed-loop run; warm-ups use the
# open-loop generator and may be shorter.
TIMINGS = {
    "smoke": Timing(rounds=1, warmup_s=0, measure_s=1, fixed_rate_measure_s=0.5, rate=500),
    "quick": Timing(rounds=2, warmup_s=0.5, measure_s=1, fixed_rate_measure_s=1.5, rate=2000),
    "default": Timing(rounds=3, warmup_s=2, measure_s=3, fixed_rate_measure_s=5, rate=2000),
}
