"""The configuration of `fastproxy ca serve` (docs/identity.md): a separate TOML file with one
[ca] table, validated with the same machinery and error format as the sidecar's.

Owns the [ca] keys only; signing, token checks and the HTTPS server live in the identity
package. Like the sidecar config, loading never reads the CA directory or token files;
relative paths are relative to the current working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from fastproxy.config.errors import ConfigError
from fastproxy.config.loader import read_toml
from fastproxy.config.model import Address
from fastproxy.config.schema import BAD, Ctx, address, array, duration, index_path, key_path, only_table, string, table
from fastproxy.config.values import check_host, check_spiffe_pattern

__all__ = ["CAToken", "CAKubernetes", "CAServer", "load_ca", "validate_ca"]


@dataclass(frozen=True, slots=True)
class CAToken:
    """A bearer token (given inline or read from `token_file`) and the SPIFFE ids it may
    obtain: exact ids or "spiffe://TD/prefix/*"."""

    ids: tuple[str, ...]
    token: str | None = None
    token_file: str | None = None


@dataclass(frozen=True, slots=True)
class CAKubernetes:
    """[ca.kubernetes]: projected service-account tokens as credentials (SPEC §13)."""

    jwks: str                        # the cluster issuer's public keys (a JWKS file)
    issuer: str | None = None        # the tokens' iss, when given
    audience: str = "fastproxy-ca"


@dataclass(frozen=True, slots=True)
class CAServer:
    path: str
    dir: str
    bind: Address
    ttl: float = 86400.0
    tokens: tuple[CAToken, ...] = ()
    kubernetes: CAKubernetes | None = None
    server_names: tuple[str, ...] = ()   # more names for its own certificate (a Service's DNS name)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


_TOKEN = {
    "token": string(),
    "token_file": string(),
    "ids": array(string(lambda text: check_spiffe_pattern(text, star=False)), min_items=1, unique=True),
}
_CA = {
    "dir": string(),
    "bind": address,
    "ttl": duration(positive=True),
    "token": lambda ctx, path, value: value,  # checked below
    "kubernetes": lambda ctx, path, value: _kubernetes(ctx, path, value),
    "server_names": array(string(check_host), min_items=1, unique=True),
}
_KUBERNETES = {"jwks": string(), "issuer": string(), "audience": string()}


def _kubernetes(ctx: Ctx, path: str, raw: Any) -> Any:
    values, ok = table(ctx, path, raw, _KUBERNETES, required=("jwks",))
    return CAKubernetes(**values) if ok else BAD


def _token(ctx: Ctx, path: str, raw: Any) -> CAToken:
    values, ok = table(ctx, path, raw, _TOKEN, required=("ids",))
    if not isinstance(raw, dict):
        return BAD
    if ("token" in raw) == ("token_file" in raw):
        ctx.error(path, 'needs exactly one of "token" or "token_file"')
        ok = False
    return CAToken(**values) if ok else BAD


def validate_ca(raw: Any, path: str = "<dict>") -> CAServer:
    ctx = Ctx(path)
    raw_ca = only_table(ctx, raw, "ca", "ca serve")
    values, ok = table(ctx, "ca", raw_ca, _CA, required=("dir", "bind"))
    tokens: list[CAToken] = []
    raw_tokens = raw_ca.get("token") if isinstance(raw_ca, dict) else None
    if isinstance(raw_ca, dict):
        if raw_tokens is None and "kubernetes" in raw_ca:
            pass                         # service-account tokens only
        elif not isinstance(raw_tokens, list) or not raw_tokens:
            ctx.error("ca.token", "at least one [[ca.token]] (or [ca.kubernetes]) is required")
        else:
            seen: dict[str, int] = {}
            for index, raw_token in enumerate(raw_tokens):
                token_path = index_path("ca.token", index)
                token = _token(ctx, token_path, raw_token)
                secret = raw_token.get("token") if isinstance(raw_token, dict) else None
                if isinstance(secret, str):
                    if secret in seen:
                        ctx.error(key_path(token_path, "token"), f"same token as ca.token[{seen[secret]}]")
                    seen.setdefault(secret, index)
                if token is not BAD:
                    tokens.append(token)
    if ctx.errors:
        raise ConfigError(ctx.errors)
    values.pop("token", None)
    if "server_names" in values:
        values["server_names"] = tuple(values["server_names"])
    return CAServer(path=path, tokens=tuple(tokens), raw=raw, **values)


def load_ca(path: str | os.PathLike[str]) -> CAServer:
    """Reads and validates a `ca serve` file; raises `ConfigError` with every problem."""
    file, raw = read_toml(path)
    return validate_ca(raw, file)
