"""A small table-driven validator: converters that check raw TOML values against a schema,
collect every error with its key path, and never raise for bad input.

A converter is `conv(ctx, path, value) -> typed value | BAD`. It reports problems with
`ctx.error(path, message)` and returns `BAD`; callers skip building whatever depended on a
`BAD` value but keep validating the rest, so one run reports every error of the file.
Leaf converters are plain parsers raising `InvalidValue`, wrapped by `leaf()`.

This module knows nothing of fastproxy's keys; `loader` holds the schema itself.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Callable, Iterable, Mapping

from fastproxy.config.errors import ConfigError
from fastproxy.config.values import (
    InvalidValue,
    check_name,
    parse_address,
    parse_duration,
    quote,
)

__all__ = [
    "BAD",
    "Ctx",
    "Conv",
    "key_path",
    "index_path",
    "did_you_mean",
    "leaf",
    "table",
    "record",
    "array",
    "integer",
    "number",
    "string",
    "choice",
    "duration",
    "address",
    "name",
]


class _Bad:
    __slots__ = ()

    def __repr__(self) -> str:
        return "BAD"


BAD: Any = _Bad()
"""Returned by a converter whose value was invalid (the error is already recorded)."""


class Ctx:
    """Error collection for one file."""

    __slots__ = ("file", "errors")

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{self.file}: {path}: {message}" if path else f"{self.file}: {message}")


Conv = Callable[[Ctx, str, Any], Any]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_path(parent: str, key: str) -> str:
    """"cluster" + "app" -> "cluster.app"; keys that are not bare TOML keys are quoted."""
    part = key if _BARE_KEY.fullmatch(key) else quote(key)
    return f"{parent}.{part}" if parent else part


def index_path(parent: str, index: int) -> str:
    return f"{parent}[{index}]"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """" (did you mean 'route'?)" for a close match, else ""."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def leaf(parse: Callable[[Any], Any]) -> Conv:
    """A converter from a parser that raises `InvalidValue` with the user-facing reason."""

    def conv(ctx: Ctx, path: str, value: Any) -> Any:
        try:
            return parse(value)
        except InvalidValue as error:
            ctx.error(path, str(error))
            return BAD

    return conv


def only_table(ctx: Ctx, raw: Any, name: str, command: str) -> Any:
    """The one table of a file that has nothing else (`ca serve`'s [ca], `injector`'s
    [injector]); anything else, or no such table, raises ConfigError."""
    if not isinstance(raw, dict):
        ctx.error("", "the document must be a TOML table")
        raise ConfigError(ctx.errors)
    for key in raw:
        if key != name:
            ctx.error(key_path("", str(key)), f"unknown key (a `{command}` file has only [{name}])")
    if name not in raw:
        ctx.error(name, "is required")
        raise ConfigError(ctx.errors)
    return raw[name]


def table(
    ctx: Ctx,
    path: str,
    raw: Any,
    schema: Mapping[str, Conv],
    required: Iterable[str] = (),
    *,
    not_a_table: str = "must be a table",
) -> tuple[dict[str, Any], bool]:
    """Converts the known keys of `raw`; returns (the valid values present, all valid?).

    Unknown keys are errors (with a close match suggested); missing `required` keys are
    errors; absent optional keys are simply not in the result, so the model's defaults
    apply.
    """
    if not isinstance(raw, dict):
        ctx.error(path, not_a_table)
        return {}, False
    values: dict[str, Any] = {}
    ok = True
    for key, value in raw.items():
        sub = key_path(path, str(key))
        conv = schema.get(key)
        if conv is None:
            ctx.error(sub, "unknown key" + did_you_mean(str(key), schema))
            ok = False
            continue
        result = conv(ctx, sub, value)
        if result is BAD:
            ok = False
        else:
            values[key] = result
    for key in required:
        if key not in raw:
            ctx.error(key_path(path, key), "is required")
            ok = False
    return values, ok


def record(cls: Callable[..., Any], schema: Mapping[str, Conv], required: Iterable[str] = ()) -> Conv:
    """A converter for a table that becomes `cls(**values)`."""
    required = tuple(required)

    def conv(ctx: Ctx, path: str, value: Any) -> Any:
        values, ok = table(ctx, path, value, schema, required)
        return cls(**values) if ok else BAD

    return conv


def array(
    item: Conv,
    *,
    min_items: int = 0,
    unique: bool = False,
    not_an_array: str = "must be an array",
    too_short: str = "must not be empty",
) -> Conv:
    """A converter for an array whose items are checked with `item`; gives a tuple.

    With `unique`, an item equal (after conversion) to an earlier one is an error.
    """

    def conv(ctx: Ctx, path: str, value: Any) -> Any:
        if not isinstance(value, list):
            ctx.error(path, not_an_array)
            return BAD
        if len(value) < min_items:
            ctx.error(path, too_short)
            return BAD
        items: list[Any] = []
        ok = True
        for index, raw_item in enumerate(value):
            sub = index_path(path, index)
            result = item(ctx, sub, raw_item)
            if result is BAD:
                ok = False
            elif unique and result in items:
                ctx.error(sub, f"{quote(raw_item)} is listed twice")
                ok = False
            else:
                items.append(result)
        return tuple(items) if ok else BAD

    return conv


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # TOML bools are not integers


def integer(min: int | None = None, max: int | None = None) -> Conv:
    if min is not None and max is not None:
        message = f"must be an integer between {min} and {max}"
    elif min is not None:
        message = f"must be an integer >= {min}"
    else:
        message = "must be an integer"

    def parse(value: Any) -> int:
        if (
            not _is_int(value)
            or (min is not None and value < min)
            or (max is not None and value > max)
        ):
            raise InvalidValue(message)
        return value

    return leaf(parse)


def number(min: float, max: float, *, exclusive: bool = False) -> Conv:
    """An integer or float within [min, max] (or (min, max) when `exclusive`); gives float."""
    if exclusive:
        message = f"must be a number greater than {min:g} and less than {max:g}"
    else:
        message = f"must be a number between {min:g} and {max:g}"

    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidValue(message)
        try:
            number = float(value)
        except OverflowError:
            raise InvalidValue(message) from None
        inside = min < number < max if exclusive else min <= number <= max
        if not math.isfinite(number) or not inside:
            raise InvalidValue(message)
        return number

    return leaf(parse)


def _text(value: Any, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidValue("must be a string")
    if not value and not empty_ok:
        raise InvalidValue("must not be empty")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidValue("must not contain control characters")
    return value


def string(check: Callable[[str], Any] | None = None, *, empty_ok: bool = False) -> Conv:
    """A string without control characters, non-empty unless `empty_ok`. `check` may raise
    `InvalidValue` for further syntax, and may return a normalized value to use instead."""

    def parse(value: Any) -> Any:
        text = _text(value, empty_ok=empty_ok)
        if check is not None:
            normalized = check(text)
            if normalized is not None:
                return normalized
        return text

    return leaf(parse)


def choice(*options: str) -> Conv:
    message = "must be one of " + ", ".join(quote(option) for option in options)

    def parse(value: Any) -> str:
        if isinstance(value, str) and value in options:
            return value
        close = difflib.get_close_matches(value, options, n=1) if isinstance(value, str) else []
        raise InvalidValue(message + (f" (did you mean {quote(close[0])}?)" if close else ""))

    return leaf(parse)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue("must be true or false")
    return value


boolean: Conv = leaf(_boolean)


def duration(*, positive: bool = False) -> Conv:
    """Float seconds (see `parse_duration`); with `positive`, 0 is refused."""

    def parse(value: Any) -> float:
        seconds = parse_duration(value)
        if positive and seconds == 0:
            raise InvalidValue("must be greater than 0")
        return seconds

    return leaf(parse)


address: Conv = leaf(parse_address)
name: Conv = string(check_name)
