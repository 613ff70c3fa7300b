"""Small builders for fastproxy test configurations (TOML text with placeholders, see
fastproxy.py). Keep configs in tests readable: a test passes only what it cares about."""

from __future__ import annotations

import re


def toml_list(items) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def simple_config(endpoints, *, proxy: str = "", limits: str = "", listener: str = "",
                  route: str = "", cluster: str = "", drain_timeout: str = "3s") -> str:
    """One listener `main` on a free port, one catch-all route to cluster `up`."""
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    return f"""
[proxy]
admin = ""
drain_timeout = "{drain_timeout}"
{proxy}

[limits]
{limits}

[[listener]]
name = "main"
bind = "${{listen:main}}"
{listener}

  [[listener.route]]
  cluster = "up"
{route}

[cluster.up]
endpoints = {toml_list(endpoints)}
{cluster}
"""


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(i) for i in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_value(k)} = {_value(i)}" for k, i in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _value(k)


def _is_table_array(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(i, dict) for i in v)


def to_toml(data: dict, _prefix: str = "") -> str:
    """dict -> TOML text. Nested dicts become [tables], lists of dicts [[arrays of tables]];
    a dict that must stay inline (route `headers`) can be passed as InlineTable(...)."""
    lines, tables = [], []
    for key, v in data.items():
        if isinstance(v, dict) and not isinstance(v, InlineTable):
            tables.append((key, v, False))
        elif _is_table_array(v):
            tables.append((key, v, True))
        else:
            lines.append(f"{_key(key)} = {_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, v, is_array in tables:
        name = f"{_prefix}{_key(key)}"
        for item in (v if is_array else [v]):
            out += f"\n[[{name}]]\n" if is_array else f"\n[{name}]\n"
            out += to_toml(item, name + ".")
    return out


class InlineTable(dict):
    """A dict written inline: `headers = { "x-canary" = "1" }`."""
