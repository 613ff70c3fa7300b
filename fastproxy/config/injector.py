"""The configuration of `fastproxy injector` (SPEC §13; docs/kubernetes.md): one
[injector] table, validated with the same machinery and error format as the sidecar's.

    [injector]
    bind = "0.0.0.0:9443"        # HTTPS for the Kubernetes API server; required
    cert = "/etc/fastproxy-injector/tls.crt"   # its serving certificate, issued from the
    key = "/etc/fastproxy-injector/tls.key"    # mesh CA (`fastproxy ca issue --dns`); required
    image = "fastproxy:latest"   # what `fastproxy inject --image` and friends would take
    config_map = "fastproxy"
    trust_domain = "mesh.local"
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from fastproxy.config.errors import ConfigError
from fastproxy.config.loader import read_toml
from fastproxy.config.model import Address
from fastproxy.config.schema import Ctx, address, only_table, string, table
from fastproxy.config.values import check_spiffe_id

__all__ = ["InjectorConfig", "load_injector", "validate_injector"]


@dataclass(frozen=True, slots=True)
class InjectorConfig:
    path: str
    bind: Address
    cert: str
    key: str
    image: str = "fastproxy:latest"
    config_map: str = "fastproxy"
    trust_domain: str = "mesh.local"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _trust_domain(text: str) -> None:
    check_spiffe_id(f"spiffe://{text}", path_required=False)


_INJECTOR = {
    "bind": address,
    "cert": string(),
    "key": string(),
    "image": string(),
    "config_map": string(),
    "trust_domain": string(_trust_domain),
}


def validate_injector(raw: Any, path: str = "<dict>") -> InjectorConfig:
    ctx = Ctx(path)
    values, _ = table(ctx, "injector", only_table(ctx, raw, "injector", "injector"), _INJECTOR,
                      required=("bind", "cert", "key"))
    if ctx.errors:
        raise ConfigError(ctx.errors)
    return InjectorConfig(path=path, raw=raw, **values)


def load_injector(path: str | os.PathLike[str]) -> InjectorConfig:
    """Reads and validates an `injector` file; raises `ConfigError` with every problem."""
    file, raw = read_toml(path)
    return validate_injector(raw, file)
