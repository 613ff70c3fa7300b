"""Small builders for fastproxy test configurations (TOML text with placeholders, see
fastproxy.py). Keep configs in tests readable: a test passes only what it cares about."""

from __future__ import annotations


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
