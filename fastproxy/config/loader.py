"""The sidecar configuration schema and its loader: file -> TOML -> `Config`.

Owns: reading the file, TOML syntax errors with line/column, every key, type, range and
cross-reference rule, and the "FILE: KEY.PATH: message" wording. `load()` either returns
a complete, immutable `Config` or raises `ConfigError` listing every error found; it never
raises anything else for bad input and never binds, resolves or opens certificate files.
Defaults are the model's (model.py); the schema tables below say what each key accepts.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from fastproxy.config.errors import ConfigError
from fastproxy.config.model import (
    BALANCERS,
    DIRECTIONS,
    PROTOCOLS,
    PROPAGATORS,
    RETRY_ON,
    TLS_MODES,
    LISTENER_TLS_MODES,
    ORIGINAL_DESTINATION,
    Address,
    CircuitBreaker,
    Cluster,
    Config,
    Http2Settings,
    Identity,
    Limits,
    Listener,
    Outlier,
    ProxySettings,
    RetryBudget,
    Route,
    SplitMember,
    Tracing,
)
from fastproxy.config.schema import (
    BAD,
    Conv,
    Ctx,
    address,
    array,
    boolean,
    choice,
    did_you_mean,
    duration,
    index_path,
    integer,
    key_path,
    leaf,
    name,
    number,
    record,
    string,
    table,
)
from fastproxy.config.values import (
    InvalidValue,
    parse_destination,
    check_host,
    check_hostname,
    check_name,
    check_spiffe_id,
    check_spiffe_pattern,
    check_token,
    parse_address,
    quote,
)

__all__ = ["load", "loads", "validate", "read_toml"]


# --- reading ---------------------------------------------------------------------------

_TOML_POSITION = re.compile(r"(?s)(.*) \(at line (\d+), column (\d+)\)")


def read_toml(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """(FILE as given, parsed document); I/O and syntax problems raise `ConfigError`."""
    file = path if isinstance(path, str) else os.fsdecode(os.fspath(path))
    try:
        with open(file, "rb") as stream:
            data = stream.read()
    except OSError as error:
        raise ConfigError(f"{file}: cannot read: {error.strerror or error}") from None
    return file, parse_toml(data, file)


def parse_toml(data: str | bytes, file: str) -> dict[str, Any]:
    """The parsed document; errors read "FILE: line L, column C: message"."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
            raise ConfigError(f"{file}: line {line}, column {column}: not valid UTF-8") from None
    else:
        text = data
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = _TOML_POSITION.fullmatch(message)
        if match:
            message, line, column = match.group(1), match.group(2), match.group(3)
        else:  # "... (at end of document)"
            message = message.removesuffix(" (at end of document)")
            lines = text.split("\n")
            line, column = str(len(lines)), str(len(lines[-1]) + 1)
        raise ConfigError(f"{file}: line {line}, column {column}: {message}") from None
    except RecursionError:
        raise ConfigError(f"{file}: arrays or inline tables are nested too deeply") from None


# --- leaf values specific to the sidecar -----------------------------------------------


def _workers(value: Any) -> int:
    if value == "auto" and isinstance(value, str):
        return os.cpu_count() or 1
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise InvalidValue('must be an integer >= 1 or "auto"')


def _admin(value: Any) -> Address | None:
    if value == "" and isinstance(value, str):
        return None
    return parse_address(value)


def _export(text: str) -> None:
    if text == "off":
        return
    message = 'must be "off" or "otlp+http://HOST:PORT"'
    if not text.startswith("otlp+http://"):
        raise InvalidValue(message)
    try:
        parse_address(text.removeprefix("otlp+http://"))
    except InvalidValue as error:
        raise InvalidValue(f"{message}: {error}") from None


def _ca_url(text: str) -> None:
    message = 'must be a URL like "https://127.0.0.1:8443"'
    if not text.startswith("https://"):
        raise InvalidValue(message)
    try:
        parse_address(text.removeprefix("https://").removesuffix("/"))
    except InvalidValue as error:
        raise InvalidValue(f"{message}: {error}") from None


def _host_pattern(text: str) -> str:
    """Route host: exact name or IP, "*.suffix", or "[v6]"; stored lowercased."""
    host = text.lower()
    try:
        if host.startswith("[") and host.endswith("]"):
            ipaddress.IPv6Address(host[1:-1])
        elif host.startswith("*."):
            check_hostname(host[2:])
        else:
            check_host(host)
    except ValueError:
        raise InvalidValue(
            f'must be a host name without port, or "*.suffix" (got {quote(text)})'
        ) from None
    return host


def _url_path(text: str) -> None:
    if not text.startswith("/"):
        raise InvalidValue('must start with "/"')
    if not text.isascii() or any(c in text for c in " ?#"):
        raise InvalidValue(
            'must be ASCII without spaces, "?" or "#" (the query string is not matched; '
            "percent-encode other characters)"
        )


def _method(text: str) -> None:
    if not check_token(text) or text != text.upper():
        raise InvalidValue('must be an HTTP method like "GET" (methods are case-sensitive)')


def _headers(ctx: Ctx, path: str, value: Any) -> Any:
    """{ "x-canary" = "1" } -> (("x-canary", "1"),): names lowercased, values exact."""
    if not isinstance(value, dict):
        ctx.error(path, 'must be a table like { "x-canary" = "1" }')
        return BAD
    pairs: list[tuple[str, str]] = []
    ok = True
    for header, header_value in value.items():
        sub = key_path(path, header)
        lower = header.lower()
        if not check_token(header):
            ctx.error(sub, "is not a valid header name")
        elif any(lower == seen for seen, _ in pairs):
            ctx.error(sub, "is listed twice (header names are case-insensitive)")
        elif not isinstance(header_value, str):
            ctx.error(sub, "must be a string")
        elif (
            any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in header_value)
            or header_value != header_value.strip(" \t")
        ):
            ctx.error(sub, "must be a header value without control characters or outer whitespace")
        else:
            pairs.append((lower, header_value))
            continue
        ok = False
    return tuple(pairs) if ok else BAD


def _cluster_ref(cluster_names: frozenset[str]) -> Conv:
    def check(text: str) -> None:
        if text not in cluster_names and text != ORIGINAL_DESTINATION:   # built in
            hint = did_you_mean(text, sorted(cluster_names)) or (
                "" if cluster_names else " (no [cluster.NAME] tables are defined)"
            )
            raise InvalidValue(f"unknown cluster '{text}'{hint}")

    return string(check)


def _limit_overrides(ctx: Ctx, path: str, value: Any) -> Any:
    """[listener.limits]: the keys given, to be merged over the global [limits]."""
    values, ok = table(ctx, path, value, LIMITS)
    return values if ok else BAD


def _http2_overrides(ctx: Ctx, path: str, value: Any) -> Any:
    """[listener.http2_settings]: the keys given, to be merged over the global [http2]."""
    values, ok = table(ctx, path, value, HTTP2)
    return values if ok else BAD


def _passthrough(ctx: Ctx, path: str, value: Any) -> Any:
    """A key validated by hand by its parent."""
    return value


_allow = array(
    string(lambda text: check_spiffe_pattern(text, star=True)),
    min_items=1,
    unique=True,
    too_short='must not be empty (use ["*"] for any peer the trust bundle accepts)',
)
_peer = string(lambda text: check_spiffe_pattern(text, star=False))


# --- the schema ------------------------------------------------------------------------

PROXY: dict[str, Conv] = {
    "workers": leaf(_workers),
    "admin": leaf(_admin),
    "drain_timeout": duration(),
    "access_log": string(),  # "stdout" | "stderr" | "off" | a file path
    "metrics": boolean,      # false: no request metrics (gauges and /metrics stay)
}

LIMITS: dict[str, Conv] = {
    "max_header_bytes": integer(min=1),
    "max_headers": integer(min=1),
    "header_timeout": duration(positive=True),
    "idle_timeout": duration(positive=True),
    "max_connections": integer(min=1),
}

HTTP2: dict[str, Conv] = {
    "max_concurrent_streams": integer(min=1, max=2**31 - 1),
    "stream_window": integer(min=1, max=2**31 - 1),
    "connection_window": integer(min=65535, max=2**31 - 1),
    "max_frame_size": integer(min=16384, max=2**24 - 1),
}

IDENTITY_ID_ENV = "FASTPROXY_IDENTITY_ID"    # [identity] id when the file leaves it out
IDENTITY_FILES = ("cert", "key", "trust")
IDENTITY_AUTO = ("ca_url", "token_file", "ca_trust")
IDENTITY: dict[str, Conv] = {
    "id": string(check_spiffe_id),
    "cert": string(),
    "key": string(),
    "trust": string(),
    "ca_url": string(_ca_url),
    "token_file": string(),
    "ca_trust": string(),
    "renew_at": number(0, 1, exclusive=True),
}

TRACING: dict[str, Conv] = {
    "propagate": array(choice(*PROPAGATORS), unique=True),
    "sample": number(0, 1),
    "export": string(_export),
    "service_name": string(),
}

LISTENER: dict[str, Conv] = {
    "name": name,
    "bind": address,
    "tls": choice(*LISTENER_TLS_MODES),
    "direction": choice(*DIRECTIONS),
    "allow": _allow,
    "limits": lambda ctx, path, value: _limit_overrides(ctx, path, value),
    "http2": boolean,
    "http2_settings": lambda ctx, path, value: _http2_overrides(ctx, path, value),
    "transparent": boolean,
    "detect_timeout": duration(positive=True),
    "route": _passthrough,
}

RETRY_BUDGET = record(RetryBudget, {
    "ratio": number(0, 1),
    "min_per_second": number(0, 100000),
})

ROUTE: dict[str, Conv] = {  # "cluster" and "split" are added per file (they need the cluster names)
    "name": name,
    "host": string(_host_pattern),
    "prefix": string(_url_path),
    "path": string(_url_path),
    "method": string(_method),
    "headers": _headers,
    "timeout": duration(positive=True),
    "retries": integer(min=0),
    "retry_on": array(choice(*RETRY_ON), unique=True),
    "retry_budget": RETRY_BUDGET,
    "allow": _allow,
    "destination": string(parse_destination),
}

CIRCUIT_BREAKER: dict[str, Conv] = {
    "max_failures": integer(min=0),
    "window": duration(positive=True),
    "open_for": duration(positive=True),
    "half_open_requests": integer(min=1),
}

OUTLIER: dict[str, Conv] = {
    "consecutive_failures": integer(min=1),
    "eject_for": duration(positive=True),
    "max_ejected": number(0, 1),
}

CLUSTER: dict[str, Conv] = {
    "endpoints": array(address, min_items=1, unique=True, too_short="needs at least one endpoint"),
    "tls": choice(*TLS_MODES),
    "peer": _peer,
    "protocol": choice(*PROTOCOLS),
    "balance": choice(*BALANCERS),
    "connect_timeout": duration(positive=True),
    "max_connections": integer(min=1),
    "max_pending": integer(min=0),
    "idle_timeout": duration(positive=True),
    "circuit_breaker": record(CircuitBreaker, CIRCUIT_BREAKER),
    "outlier": record(Outlier, OUTLIER),
    "retry_budget": RETRY_BUDGET,
}

TOP_LEVEL = ("proxy", "limits", "http2", "identity", "tracing", "listener", "cluster")

_MTLS_ONLY = 'only allowed with tls = "mtls"'
_PEERS_ONLY = 'only allowed with tls = "mtls" or "permissive"'
_TRANSPARENT_ONLY = "only allowed on a listener with transparent = true"


# --- sections --------------------------------------------------------------------------


def _identity(ctx: Ctx, raw: Any) -> Identity | None:
    path = "identity"
    if isinstance(raw, dict) and "id" not in raw and os.environ.get(IDENTITY_ID_ENV):
        # one ConfigMap serves every workload of a namespace: the injected sidecar learns
        # its own id from the Pod (namespace and service account) through the environment
        raw = {**raw, "id": os.environ[IDENTITY_ID_ENV]}
    values, ok = table(ctx, path, raw, IDENTITY, required=("id",))
    if not isinstance(raw, dict):
        return BAD
    files = [key for key in IDENTITY_FILES if key in raw]
    auto = [key for key in IDENTITY_AUTO if key in raw]
    if files and auto:
        ctx.error(path, "use either cert, key and trust, or ca_url, token_file and ca_trust, not both")
        ok = False
    elif files or auto:
        group = IDENTITY_FILES if files else IDENTITY_AUTO
        together = f"{group[0]}, {group[1]} and {group[2]} go together"
        for key in group:
            if key not in raw:
                ctx.error(key_path(path, key), f"is required ({together})")
                ok = False
    else:
        ctx.error(path, "needs cert, key and trust, or ca_url, token_file and ca_trust")
        ok = False
    if "renew_at" in raw and not auto:
        ctx.error(key_path(path, "renew_at"), "only allowed with ca_url")
        ok = False
    return Identity(**values) if ok else BAD


def _tracing(ctx: Ctx, raw: Any, identity: Identity | None) -> Tracing:
    values, ok = table(ctx, "tracing", raw, TRACING)
    if "service_name" not in values and identity:
        values["service_name"] = identity.id.rstrip("/").rsplit("/", 1)[-1]
    return Tracing(**values) if ok else BAD


def _route(ctx: Ctx, path: str, raw: Any, index: int, schema: dict[str, Conv]) -> Route:
    values, ok = table(ctx, path, raw, schema)
    if not isinstance(raw, dict):
        return BAD
    if "cluster" in raw and "split" in raw:
        ctx.error(path, 'has both "cluster" and "split"; use one')
        ok = False
    elif "cluster" not in raw and "split" not in raw:
        ctx.error(path, 'needs "cluster" or "split"')
        ok = False
    if "prefix" in raw and "path" in raw:
        ctx.error(path, 'has both "prefix" and "path"; use one')
        ok = False
    split = values.get("split")
    if split:
        if not any(member.weight > 0 for member in split):
            ctx.error(key_path(path, "split"), "at least one weight must be > 0")
            ok = False
        seen: set[str] = set()
        for member_index, member in enumerate(split):
            if member.cluster in seen:
                sub = key_path(index_path(key_path(path, "split"), member_index), "cluster")
                ctx.error(sub, f"cluster '{member.cluster}' is already in this split")
                ok = False
            seen.add(member.cluster)
    if not ok:
        return BAD
    values.setdefault("name", str(index))
    return Route(**values)


def _listener(
    ctx: Ctx, path: str, raw: Any, limits: Limits, route_schema: dict[str, Conv],
    http2: Http2Settings,
) -> tuple[Listener, dict[str, Any]]:
    """(the listener or BAD, its valid values for the cross-listener checks)."""
    values, ok = table(
        ctx, path, raw, LISTENER, required=("name", "bind"),
        not_a_table="must be a table ([[listener]])",
    )
    if not isinstance(raw, dict):
        return BAD, values
    tls = values.get("tls", "off")
    mtls_checks = "tls" not in raw or "tls" in values  # skip them when tls itself is invalid
    if mtls_checks and tls not in ("mtls", "permissive") and "allow" in raw:
        ctx.error(key_path(path, "allow"), _PEERS_ONLY)
        ok = False

    routes_path = key_path(path, "route")
    raw_routes = raw.get("route")
    routes: list[Route] = []
    if "route" not in raw:
        ctx.error(routes_path, "at least one [[listener.route]] is required")
        ok = False
    elif not isinstance(raw_routes, list):
        ctx.error(routes_path, "must be an array of tables ([[listener.route]])")
        ok = False
    elif not raw_routes:
        ctx.error(routes_path, "at least one [[listener.route]] is required")
        ok = False
    else:
        names: dict[str, int] = {}
        for index, raw_route in enumerate(raw_routes):
            route_path = index_path(routes_path, index)
            route = _route(ctx, route_path, raw_route, index, route_schema)
            if mtls_checks and tls not in ("mtls", "permissive") and isinstance(raw_route, dict) \
                    and "allow" in raw_route:
                ctx.error(key_path(route_path, "allow"), _PEERS_ONLY)
                ok = False
            # Names are compared even when a route has other errors, so all are reported.
            route_name = raw_route.get("name", str(index)) if isinstance(raw_route, dict) else None
            if isinstance(route_name, str) and route_name in names:
                ctx.error(
                    key_path(route_path, "name") if "name" in raw_route else route_path,
                    f"duplicate route name '{route_name}' (also route[{names[route_name]}])",
                )
                ok = False
            if isinstance(route_name, str):
                names.setdefault(route_name, index)
            if route is BAD:
                ok = False
            else:
                routes.append(route)

    if not values.get("transparent", False):
        if "detect_timeout" in raw:
            ctx.error(key_path(path, "detect_timeout"), _TRANSPARENT_ONLY)
            ok = False
        for index, route in enumerate(routes):
            if route.destination is not None or ORIGINAL_DESTINATION in route.clusters:
                what = "destination" if route.destination is not None else "cluster"
                ctx.error(key_path(index_path(routes_path, index), what),
                          _TRANSPARENT_ONLY if what == "destination" else
                          f"the built-in cluster {ORIGINAL_DESTINATION} is {_TRANSPARENT_ONLY}")
                ok = False
    if not ok:
        return BAD, values
    overrides = values.pop("limits", {})
    h2_overrides = values.pop("http2_settings", {})
    values.pop("route", None)
    listener = Listener(**values, limits=replace(limits, **overrides), routes=tuple(routes),
                        http2_settings=replace(http2, **h2_overrides))
    return listener, values


def _cluster(ctx: Ctx, path: str, cluster_name: str, raw: Any) -> Cluster:
    ok = True
    try:
        check_name(cluster_name)
    except InvalidValue as error:
        ctx.error(path, f"the cluster name {error}")
        ok = False
    if cluster_name == ORIGINAL_DESTINATION:
        ctx.error(path, f"{ORIGINAL_DESTINATION} is built in (each connection's original "
                        "destination) and cannot be defined")
        return BAD
    values, table_ok = table(ctx, path, raw, CLUSTER, required=("endpoints",))
    ok = ok and table_ok
    if not isinstance(raw, dict):
        return BAD
    if "tls" not in raw or "tls" in values:
        if values.get("tls", "off") == "mtls":
            if "peer" not in raw:
                ctx.error(key_path(path, "peer"), 'is required with tls = "mtls"')
                ok = False
        elif "peer" in raw:
            ctx.error(key_path(path, "peer"), _MTLS_ONLY)
            ok = False
    return Cluster(name=cluster_name, **values) if ok else BAD


def _overlaps(a: Address, b: Address) -> bool:
    """Whether binding both would collide: same port, and same host or a wildcard."""
    if a.port != b.port:
        return False
    if a.host.lower() == b.host.lower():
        return True
    return any(address.is_ip and ipaddress.ip_address(address.host).is_unspecified for address in (a, b))


# --- entry points ----------------------------------------------------------------------


def load(path: str | os.PathLike[str]) -> Config:
    """Reads, parses and validates a sidecar configuration file.

    Raises `ConfigError` listing every problem, each prefixed with `path` as given.
    """
    file, raw = read_toml(path)
    return validate(raw, file)


def loads(text: str | bytes, path: str = "<string>") -> Config:
    """Like `load()` for TOML text; `path` only names it in error messages."""
    return validate(parse_toml(text, path), path)


def validate(raw: Any, path: str = "<dict>") -> Config:
    """Validates an already parsed TOML document (a dict) into a `Config`."""
    ctx = Ctx(path)
    if not isinstance(raw, dict):
        ctx.error("", "the document must be a TOML table")
        raise ConfigError(ctx.errors)
    for key in raw:
        if key not in TOP_LEVEL:
            ctx.error(key_path("", str(key)), "unknown key" + did_you_mean(str(key), TOP_LEVEL))

    raw_proxy = raw.get("proxy", {})
    proxy_values, proxy_ok = table(ctx, "proxy", raw_proxy, PROXY)
    proxy = ProxySettings(**proxy_values) if proxy_ok else BAD
    # The admin address is checked against the listeners even when [proxy] has other errors.
    admin_given = isinstance(raw_proxy, dict) and "admin" in raw_proxy
    admin = proxy_values.get("admin") if admin_given else ProxySettings().admin
    limits = record(Limits, LIMITS)(ctx, "limits", raw.get("limits", {}))
    http2 = record(Http2Settings, HTTP2)(ctx, "http2", raw.get("http2", {}))
    identity = _identity(ctx, raw["identity"]) if "identity" in raw else None
    tracing = _tracing(ctx, raw.get("tracing", {}), identity if identity is not BAD else None)

    raw_clusters = raw.get("cluster", {})
    cluster_names = frozenset(raw_clusters) if isinstance(raw_clusters, dict) else frozenset()
    route_schema = {
        **ROUTE,
        "cluster": _cluster_ref(cluster_names),
        "split": array(
            record(
                SplitMember,
                {"cluster": _cluster_ref(cluster_names), "weight": integer(min=0)},
                required=("cluster", "weight"),
            ),
            min_items=1,
            not_an_array='must be an array like [{ cluster = "v1", weight = 90 }, ...]',
        ),
    }

    # listeners: each one, then the checks across them
    listeners: list[Listener] = []
    seen: list[tuple[int, dict[str, Any]]] = []
    raw_listeners = raw.get("listener")
    if "listener" not in raw:
        ctx.error("listener", "at least one [[listener]] is required")
    elif not isinstance(raw_listeners, list):
        ctx.error("listener", "must be an array of tables ([[listener]])")
    elif not raw_listeners:
        ctx.error("listener", "at least one [[listener]] is required")
    else:
        for index, raw_listener in enumerate(raw_listeners):
            listener_path = index_path("listener", index)
            listener, values = _listener(
                ctx, listener_path, raw_listener, limits if limits is not BAD else Limits(), route_schema,
                http2 if http2 is not BAD else Http2Settings(),
            )
            for other_index, other in seen:
                if "name" in values and values["name"] == other.get("name"):
                    ctx.error(
                        key_path(listener_path, "name"),
                        f"duplicate listener name '{values['name']}' (also listener[{other_index}])",
                    )
                if "bind" in values and "bind" in other and _overlaps(values["bind"], other["bind"]):
                    ctx.error(
                        key_path(listener_path, "bind"),
                        f"{values['bind']} conflicts with listener[{other_index}].bind {other['bind']}",
                    )
            seen.append((index, values))
            if listener is not BAD:
                listeners.append(listener)

    if admin is not None:
        for index, values in seen:
            if "bind" in values and _overlaps(admin, values["bind"]):
                ctx.error(
                    "proxy.admin",
                    f"{admin} conflicts with listener[{index}].bind {values['bind']} "
                    "(the admin API needs its own port)",
                )

    clusters: dict[str, Cluster] = {}
    if not isinstance(raw_clusters, dict):
        ctx.error("cluster", "must be a table of clusters like [cluster.app]")
    else:
        for cluster_name, raw_cluster in raw_clusters.items():
            cluster = _cluster(ctx, key_path("cluster", cluster_name), cluster_name, raw_cluster)
            if cluster is not BAD:
                clusters[cluster_name] = cluster

    if "identity" not in raw:
        reason = next(
            (
                f'listener[{index}] has tls = "{values["tls"]}"'
                for index, values in seen
                if values.get("tls") in ("tls", "mtls", "permissive")
            ),
            None,
        ) or next(
            (
                f'{key_path("cluster", cluster_name)} has tls = "mtls"'
                for cluster_name, raw_cluster in (raw_clusters.items() if isinstance(raw_clusters, dict) else ())
                if isinstance(raw_cluster, dict) and raw_cluster.get("tls") == "mtls"
            ),
            None,
        )
        if reason:
            ctx.error("identity", f"is required because {reason}")

    if ctx.errors:
        raise ConfigError(ctx.errors)
    return Config(
        path=path,
        proxy=proxy,
        limits=limits,
        identity=identity,
        tracing=tracing,
        http2=http2,
        listeners=tuple(listeners),
        clusters=MappingProxyType(clusters),
        raw=raw,
    )


def file_signature(path: str) -> tuple[int, int, int] | None:
    """What tells a changed configuration file (mtime, size, inode: an atomic rename
    counts), or None when it cannot be read. Reload watchers poll it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
