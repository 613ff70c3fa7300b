"""Compile a validated `Config` into the `Snapshot` the Cython core installs.

The core never reads the configuration dataclasses: it receives one immutable Snapshot
whose values are already in the form it matches on (lowercase bytes, enum numbers,
milliseconds where it counts in milliseconds) and swaps it whole. Requests in flight
keep the routes and clusters of the snapshot they started with; what must outlive a
reload (connection pools and ejections by endpoint, circuits, retry budgets and
admission by cluster name) is carried across by the core explicitly, by name.

The enum numbers follow the order of the tuples in `fastproxy.config.model`, which the
core's enums mirror (TLS off/tls/mtls, balancers, retry_on bits, propagators).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from fastproxy.config.model import (
    BALANCERS,
    PROPAGATORS,
    PROTOCOLS,
    RETRY_ON,
    TLS_MODES,
    LISTENER_TLS_MODES,
    ORIGINAL_DESTINATION,
    Cluster,
    Config,
    Listener,
    Route,
)


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    ratio: float
    min_per_second: float


@dataclass(frozen=True, slots=True)
class BreakerSpec:
    max_failures: int
    window: float
    open_for: float
    half_open_requests: int


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    name: str
    addresses: tuple[tuple[str, int, bool], ...]   # (host, port, is an IP literal)
    default_host: bytes          # Host for HTTP/1.0 clients that send none
    sni: str | None              # the first DNS name among the endpoints
    tls_mode: int                # index in TLS_MODES
    peer: str | None
    balance: int                 # index in BALANCERS
    connect_timeout: float
    idle_timeout: float
    max_connections: int
    max_pending: int
    outlier_failures: int        # 0: no outlier detection
    eject_ms: int
    max_ejected: float
    breaker: BreakerSpec | None
    budget: BudgetSpec
    protocol: int = 0            # index in PROTOCOLS
    original: bool = False       # original_destination: each connection's own (SPEC §13)


@dataclass(frozen=True, slots=True)
class RouteSpec:
    name: str
    host: bytes | None           # exact, lowercase
    host_suffix: bytes | None    # ".example.com" for "*.example.com"
    prefix: bytes | None
    path: bytes | None
    method: bytes | None
    headers: tuple[tuple[bytes, bytes], ...]   # (lowercase name, value)
    cluster: str | None
    split: tuple[tuple[str, int], ...]          # (cluster, weight)
    timeout: float
    retries: int
    retry_on: int                # RETRY_* bits
    budget: BudgetSpec | None    # None: the cluster's
    allow: tuple[str, ...] | None
    # transparent listeners: the original destination must be in this network, and on
    # this port (0: any): (address as an int, prefix length, IP version, port)
    destination: tuple[int, int, int, int] | None = None


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    name: str
    tls_mode: int                # index in LISTENER_TLS_MODES
    direction: str
    allow: tuple[str, ...]
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    idle_timeout: float
    proto_line: bytes            # x-forwarded-proto line
    xfcc_prefix: bytes | None    # x-forwarded-client-cert prefix, with an identity
    routes: tuple[RouteSpec, ...]
    http2: bool = True           # h2c prior knowledge; ALPN h2 on tls/mtls
    # (max_concurrent_streams, stream_window, connection_window, max_frame_size)
    h2_settings: tuple[int, int, int, int] = (100, 65535, 1048576, 16384)
    transparent: bool = False    # connections redirected by iptables: SO_ORIGINAL_DST
    detect_timeout: float = 0.1


@dataclass(frozen=True, slots=True)
class Snapshot:
    clusters: tuple[ClusterSpec, ...]
    listeners: tuple[ListenerSpec, ...]
    max_connections: int         # client connections served at once, per worker
    propagate: int               # PROPAGATE_* bits
    sample: float
    export_spans: bool
    access_log: bool
    metrics: bool


def _budget(budget) -> BudgetSpec | None:
    return None if budget is None else BudgetSpec(budget.ratio, budget.min_per_second)


def _cluster(c: Cluster) -> ClusterSpec:
    outlier = c.outlier
    breaker = c.circuit_breaker
    return ClusterSpec(
        name=c.name,
        addresses=tuple((e.host, e.port, e.is_ip) for e in c.endpoints),
        default_host=str(c.endpoints[0]).encode() if c.endpoints else b"",
        sni=next((e.host for e in c.endpoints if not e.is_ip), None),
        tls_mode=TLS_MODES.index(c.tls),
        peer=c.peer,
        balance=BALANCERS.index(c.balance),
        connect_timeout=c.connect_timeout,
        idle_timeout=c.idle_timeout,
        max_connections=c.max_connections,
        max_pending=c.max_pending,
        outlier_failures=outlier.consecutive_failures if outlier else 0,
        eject_ms=int(outlier.eject_for * 1000) if outlier else 0,
        max_ejected=outlier.max_ejected if outlier else 0.0,
        breaker=None if breaker is None else BreakerSpec(
            breaker.max_failures, breaker.window, breaker.open_for, breaker.half_open_requests),
        budget=_budget(c.retry_budget),
        protocol=PROTOCOLS.index(c.protocol),
    )


def _route(r: Route) -> RouteSpec:
    wildcard = r.host is not None and r.host.startswith("*.")
    return RouteSpec(
        name=r.name,
        host=None if r.host is None or wildcard else r.host.lower().encode(),
        host_suffix=r.host[1:].lower().encode() if wildcard else None,
        prefix=None if r.prefix is None else r.prefix.encode(),
        path=None if r.path is None else r.path.encode(),
        method=None if r.method is None else r.method.encode(),
        headers=tuple((n.lower().encode(), v.encode()) for n, v in r.headers),
        cluster=r.cluster,
        split=tuple((m.cluster, m.weight) for m in r.split),
        timeout=r.timeout,
        retries=r.retries,
        retry_on=sum(1 << RETRY_ON.index(name) for name in r.retry_on),
        budget=_budget(r.retry_budget),
        allow=r.allow,
        destination=_destination(r.destination),
    )


def _destination(destination: tuple[str, int] | None) -> tuple[int, int, int, int] | None:
    if destination is None:
        return None
    net = ipaddress.ip_network(destination[0])
    return int(net.network_address), net.prefixlen, net.version, destination[1]


# original_destination: no endpoints of its own, a cluster's defaults otherwise
ORIGINAL_CLUSTER = replace(_cluster(Cluster(ORIGINAL_DESTINATION, ())), original=True)


def _listener(lc: Listener, config: Config) -> ListenerSpec:
    identity = config.identity
    return ListenerSpec(
        name=lc.name,
        tls_mode=LISTENER_TLS_MODES.index(lc.tls),
        direction=lc.direction,
        allow=tuple(lc.allow),
        max_header_bytes=lc.limits.max_header_bytes,
        max_headers=lc.limits.max_headers,
        header_timeout=lc.limits.header_timeout,
        idle_timeout=lc.limits.idle_timeout,
        proto_line=b"x-forwarded-proto: " + (b"http" if lc.tls == "off" else b"https") + b"\r\n",
        xfcc_prefix=None if identity is None else
        b"x-forwarded-client-cert: By=" + identity.id.encode() + b";URI=",
        routes=tuple(_route(r) for r in lc.routes),
        http2=lc.http2,
        h2_settings=(lc.http2_settings.max_concurrent_streams, lc.http2_settings.stream_window,
                     lc.http2_settings.connection_window, lc.http2_settings.max_frame_size),
        transparent=lc.transparent,
        detect_timeout=lc.detect_timeout,
    )


def compile_snapshot(config: Config) -> Snapshot:
    """The core's form of `config` (which the loader has validated)."""
    tracing = config.tracing
    propagate = sum(1 << PROPAGATORS.index(name) for name in tracing.propagate)
    return Snapshot(
        clusters=tuple(_cluster(c) for c in config.clusters.values()) + (
            (ORIGINAL_CLUSTER,) if any(ORIGINAL_DESTINATION in r.clusters
                                       for lc in config.listeners for r in lc.routes) else ()),
        listeners=tuple(_listener(lc, config) for lc in config.listeners),
        max_connections=config.limits.max_connections,
        propagate=propagate,
        sample=tracing.sample,
        export_spans=tracing.export != "off" and propagate != 0,
        access_log=config.proxy.access_log != "off",
        metrics=config.proxy.metrics,
    )
