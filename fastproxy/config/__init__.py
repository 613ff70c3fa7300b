"""fastproxy configuration: a TOML file becomes a validated, immutable `Config`.

    cfg = load("config/fastproxy.toml")   # or raises ConfigError with every problem found
    print("ok:", summary(cfg))

Owns the configuration contract (docs/configuration.md: keys, defaults, validation and the
"FILE: KEY.PATH: message" errors). It does not bind sockets, resolve names or read
certificate files.

Modules: `model` (the dataclasses and defaults), `values` (syntax of durations,
addresses, SPIFFE ids...), `schema` (the generic error-collecting validator), `loader`
(the sidecar schema and `load`), `compile` (the Snapshot the Cython core installs), `ca`
(the `fastproxy ca serve` file).
"""

from fastproxy.config.ca import CAServer, CAToken, load_ca
from fastproxy.config.errors import ConfigError
from fastproxy.config.loader import file_signature, load, loads, validate
from fastproxy.config.model import (
    Address,
    CircuitBreaker,
    Cluster,
    Config,
    Identity,
    Limits,
    Listener,
    Outlier,
    ProxySettings,
    RetryBudget,
    Route,
    SplitMember,
    Tracing,
    summary,
)
from fastproxy.config.values import InvalidValue, parse_address, parse_duration

__all__ = [
    "file_signature",
    "load",
    "loads",
    "validate",
    "summary",
    "ConfigError",
    "InvalidValue",
    "parse_duration",
    "parse_address",
    "load_ca",
    "CAServer",
    "CAToken",
    "Address",
    "CircuitBreaker",
    "Cluster",
    "Config",
    "Identity",
    "Limits",
    "Listener",
    "Outlier",
    "RetryBudget",
    "ProxySettings",
    "Route",
    "SplitMember",
    "Tracing",
]
