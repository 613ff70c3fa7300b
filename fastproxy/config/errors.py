"""`ConfigError`: every problem found in one configuration file, as user-facing lines.

Each line reads "FILE: KEY.PATH: message" (or "FILE: line L, column C: message" for TOML
syntax, "FILE: cannot read: reason" for I/O), FILE being the path exactly as given to
`load()`. The CLI prints `str(error)` and exits 2; no traceback is meant to be shown.
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """Invalid configuration. `errors` lists every problem found, in file order."""

    def __init__(self, errors: Iterable[str] | str) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        # args holds the list itself so the exception pickles (workers, multiprocessing).
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)

    def __repr__(self) -> str:
        return f"ConfigError({self.errors!r})"
