"""The validated configuration model: frozen, slotted dataclasses holding tuples and
read-only mappings, so a loaded `Config` is an immutable snapshot that can be shared by
every task of a worker and swapped whole on reload.

Defaults live here (and only here); the loader passes just the keys present in the file.
Durations are float seconds. Nothing in this module touches files; the compiled form for
the Cython core is built from these objects by `fastproxy.config.compile`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

__all__ = [
    "Address",
    "Limits",
    "Http2Settings",
    "ProxySettings",
    "Identity",
    "Tracing",
    "SplitMember",
    "Route",
    "Listener",
    "CircuitBreaker",
    "Outlier",
    "Cluster",
    "Config",
    "summary",
    "TLS_MODES",
    "LISTENER_TLS_MODES",
    "DIRECTIONS",
    "BALANCERS",
    "PROTOCOLS",
    "RETRY_ON",
    "PROPAGATORS",
    "ORIGINAL_DESTINATION",
]

TLS_MODES = ("off", "tls", "mtls")
# a listener may also take mTLS and plain connections on one port (SPEC §13)
LISTENER_TLS_MODES = TLS_MODES + ("permissive",)
DIRECTIONS = ("inbound", "outbound")
BALANCERS = ("round_robin", "least_request", "random")
PROTOCOLS = ("auto", "http1", "http2")
RETRY_ON = ("connect-failure", "reset", "5xx", "gateway-error",
            # gRPC statuses of trailers-only responses: 1, 4, 8, 13, 14
            "cancelled", "deadline-exceeded", "resource-exhausted", "internal", "unavailable")
PROPAGATORS = ("w3c", "b3")
# the built-in cluster of transparent listeners: each connection's original destination
ORIGINAL_DESTINATION = "original_destination"


@dataclass(frozen=True, slots=True)
class Address:
    """A host (IP literal without brackets, or DNS name) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        """True for an IPv4/IPv6 literal, False for a DNS name (resolved at run time)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-listener request limits; [limits] gives them, [listener.limits] overrides keys."""

    max_header_bytes: int = 65536
    max_headers: int = 100
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 10000


@dataclass(frozen=True, slots=True)
class Http2Settings:
    """[http2]: the HTTP/2 settings of both sides; [listener.http2_settings] overrides keys."""

    max_concurrent_streams: int = 100   # per client connection; beyond: REFUSED_STREAM
    stream_window: int = 65535          # initial receive window per stream, bytes
    connection_window: int = 1048576    # receive window per connection, bytes
    max_frame_size: int = 16384


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """[proxy]. `workers` is already resolved ("auto" -> os.cpu_count()); `admin` is None
    when disabled with ""."""

    workers: int = 1
    admin: Address | None = Address("127.0.0.1", 9901)
    drain_timeout: float = 10.0
    access_log: str = "stdout"
    metrics: bool = True      # request counters and histograms (docs/observability.md)


@dataclass(frozen=True, slots=True)
class Identity:
    """[identity]: this workload's SPIFFE id and where its certificate comes from.

    Either files (`cert`, `key`, `trust`) or automatic issuance (`ca_url`, `token_file`,
    `ca_trust`, `renew_at`); the other group is None. File paths are kept exactly as written:
    relative paths are relative to the process's current working directory, not to the
    configuration file (so `fastproxy run` from the repository root finds "certs/...").
    Loading the configuration never reads these files.
    """

    id: str
    cert: str | None = None
    key: str | None = None
    trust: str | None = None
    ca_url: str | None = None
    token_file: str | None = None
    ca_trust: str | None = None
    renew_at: float = 0.5

    @property
    def automatic(self) -> bool:
        """True when the certificate is issued by `fastproxy ca serve` (ca_url)."""
        return self.ca_url is not None


@dataclass(frozen=True, slots=True)
class Tracing:
    """[tracing]. `export` is "off" or "otlp+http://HOST:PORT"."""

    propagate: tuple[str, ...] = ("w3c", "b3")
    sample: float = 0.01
    export: str = "off"
    service_name: str = "fastproxy"

    @property
    def export_address(self) -> Address | None:
        """The OTLP/HTTP collector address, or None when export is off."""
        if self.export == "off":
            return None
        from fastproxy.config.values import parse_address

        return parse_address(self.export.removeprefix("otlp+http://"))


@dataclass(frozen=True, slots=True)
class SplitMember:
    cluster: str
    weight: int


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Retries allowed over the last 10 seconds, per worker: `min_per_second` * 10 plus
    `ratio` of the requests (Linkerd's budget and defaults)."""

    ratio: float = 0.2
    min_per_second: float = 10.0


@dataclass(frozen=True, slots=True)
class Route:
    """One [[listener.route]]; routes are tried in order and the first match wins.

    Match keys (all that are set must hold; none set matches every request):
    `host` (lowercase; exact, or "*.suffix" = one or more labels before ".suffix"),
    `prefix` or `path` (both start with "/"; the query string is ignored), `method`
    (exact, case-sensitive), `headers` ((lowercase name, exact value) pairs, all must hold).
    Exactly one of `cluster` / `split` is set. `allow`, only on mtls listeners, narrows the
    listener's `allow` for this route: the peer must pass both, or the request gets 403.
    """

    name: str
    host: str | None = None
    prefix: str | None = None
    path: str | None = None
    method: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    cluster: str | None = None
    split: tuple[SplitMember, ...] = ()
    timeout: float = 15.0
    retries: int = 0
    retry_on: tuple[str, ...] = ("connect-failure", "reset")
    retry_budget: RetryBudget | None = None   # None: the cluster's
    allow: tuple[str, ...] | None = None
    destination: tuple[str, int] | None = None  # (CIDR, port or 0): transparent listeners

    @property
    def clusters(self) -> tuple[str, ...]:
        """Every cluster this route may send to."""
        if self.cluster is not None:
            return (self.cluster,)
        return tuple(member.cluster for member in self.split)


@dataclass(frozen=True, slots=True)
class Listener:
    """One [[listener]]. `direction` defaults (when None is passed) to "inbound" for
    tls/mtls listeners and "outbound" otherwise; after construction it is always set.
    `allow` entries are "*", exact SPIFFE ids or "spiffe://TD/prefix/*" (mtls only)."""

    name: str
    bind: Address
    tls: str = "off"
    direction: str | None = None
    allow: tuple[str, ...] = ("*",)
    limits: Limits = Limits()
    routes: tuple[Route, ...] = ()
    http2: bool = True                  # h2c prior knowledge; ALPN h2 on tls/mtls
    http2_settings: Http2Settings = Http2Settings()
    transparent: bool = False           # connections redirected by iptables (SPEC §13)
    detect_timeout: float = 0.1         # transparent: no byte by then is a server-first protocol

    def __post_init__(self) -> None:
        if self.direction is None:
            direction = "inbound" if self.tls != "off" else "outbound"
            object.__setattr__(self, "direction", direction)


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """Opens after more than `max_failures` failures within the sliding `window`."""

    max_failures: int = 3
    window: float = 10.0
    open_for: float = 60.0
    half_open_requests: int = 1


@dataclass(frozen=True, slots=True)
class Outlier:
    """Per-endpoint ejection after `consecutive_failures`."""

    consecutive_failures: int = 5
    eject_for: float = 30.0
    max_ejected: float = 0.5


@dataclass(frozen=True, slots=True)
class Cluster:
    """One [cluster.NAME]. `peer` is set exactly when tls is "mtls"; `circuit_breaker` and
    `outlier` are None unless their table is present."""

    name: str
    endpoints: tuple[Address, ...]
    tls: str = "off"
    peer: str | None = None
    protocol: str = "auto"      # "http1" | "http2" | "auto" (SPEC §12)
    balance: str = "round_robin"
    connect_timeout: float = 1.0
    max_connections: int = 1024
    max_pending: int = 1024
    idle_timeout: float = 60.0
    circuit_breaker: CircuitBreaker | None = None
    outlier: Outlier | None = None
    retry_budget: RetryBudget = RetryBudget()


def _no_clusters() -> Mapping[str, Cluster]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Config:
    """A whole validated configuration file.

    `path` is the file as given to `load()`; `clusters` is a read-only mapping in file
    order; `raw` is the parsed TOML document (for the admin /config endpoint), not
    compared and not to be mutated.
    """

    path: str
    proxy: ProxySettings = ProxySettings()
    limits: Limits = Limits()
    identity: Identity | None = None
    tracing: Tracing = Tracing()
    http2: Http2Settings = Http2Settings()
    listeners: tuple[Listener, ...] = ()
    clusters: Mapping[str, Cluster] = field(default_factory=_no_clusters)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def summary(config: Config) -> str:
    """One line for `fastproxy check` and the startup log, e.g.
    "2 listeners (inbound 0.0.0.0:15006, outbound 127.0.0.1:15001), 3 routes, 4 clusters, 1 worker"."""

    def count(n: int, noun: str) -> str:
        return f"{n} {noun}" if n == 1 else f"{n} {noun}s"

    listeners = ", ".join(f"{listener.name} {listener.bind}" for listener in config.listeners)
    routes = sum(len(listener.routes) for listener in config.listeners)
    return (
        f"{count(len(config.listeners), 'listener')} ({listeners}), {count(routes, 'route')}, "
        f"{count(len(config.clusters), 'cluster')}, {count(config.proxy.workers, 'worker')}"
    )
