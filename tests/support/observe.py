"""Helpers for the observability and lifecycle tests (SPEC §7-§9, §11): the admin API
(any method, JSON or text), /metrics parsed with prometheus_client's own parser, the JSON
access log, trace-context headers, and atomic rewrites of a running proxy's config file.

  admin_call(proxy, method, path, body=b"")   -> AdminReply (.status .headers .body .json())
  admin_json(proxy, path, method="GET")       -> (status, parsed JSON)
  wait_ready(proxy) / ready_status(proxy)     /ready is 200 / the status now (None: no answer)
  Metrics(text) / scrape(proxy)               parsed /metrics: .value(sample, **labels),
                                              .samples(sample) -> {labels tuple: value},
                                              .types {family: type}
  read_log(path_or_text) -> list[dict]        complete JSON lines (a torn last line is left)
  wait_log(source, predicate, n=1)            poll until n lines match; returns them
  parse_traceparent(value) -> TraceParent | None  strict W3C version-00 parsing
  b3_of(recorded_request) -> B3 | None        the B3 context a request carries (multi or single)
  replace_config(proxy, text)                 rewrite the config file atomically (one change)
"""

from __future__ import annotations

import http.client
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from prometheus_client.parser import text_string_to_metric_families

from .procs import LOOPBACK, wait_until

HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")
RFC3339_MS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


# ---------------------------------------------------------------- admin API

def admin_port(proxy) -> int:
    return int(proxy.config["proxy"]["admin"].rpartition(":")[2])


@dataclass
class AdminReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def admin_call(proxy, method: str, path: str, body: bytes = b"", timeout: float = 10.0,
               headers: dict | None = None) -> AdminReply:
    c = http.client.HTTPConnection(LOOPBACK, admin_port(proxy), timeout=timeout)
    try:
        c.request(method, path, body=body or None, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return AdminReply(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        c.close()


def admin_json(proxy, path: str, method: str = "GET", timeout: float = 10.0):
    reply = admin_call(proxy, method, path, timeout=timeout)
    return reply.status, reply.json()


def ready_status(proxy) -> int | None:
    try:
        return admin_call(proxy, "GET", "/ready", timeout=2).status
    except OSError:
        return None


def wait_ready(proxy, deadline_s: float = 15.0) -> None:
    wait_until(lambda: ready_status(proxy) == 200, deadline_s=deadline_s,
               what="admin /ready is 200")


# ---------------------------------------------------------------- /metrics

class Metrics:
    """/metrics text parsed by prometheus_client (any syntax error raises here)."""

    def __init__(self, text: str):
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.types = {f.name: f.type for f in self.families}
        self._samples: dict[str, list[tuple[dict, float]]] = {}
        for family in self.families:
            for s in family.samples:
                self._samples.setdefault(s.name, []).append((dict(s.labels), s.value))

    def samples(self, name: str, **match) -> dict[tuple, float]:
        """Samples called `name` whose labels include `match`: {sorted label items: value}."""
        out = {}
        for labels, value in self._samples.get(name, []):
            if all(labels.get(k) == v for k, v in match.items()):
                out[tuple(sorted(labels.items()))] = value
        return out

    def value(self, name: str, default: float | None = None, **labels) -> float | None:
        """The one sample `name` with exactly these labels (default when absent)."""
        want = tuple(sorted(labels.items()))
        for got, value in self._samples.get(name, []):
            if tuple(sorted(got.items())) == want:
                return value
        return default

    def by(self, name: str, label: str, **match) -> dict[str, float]:
        """{value of `label`: sample value} over the samples matching `match`."""
        out = {}
        for labels, value in self._samples.get(name, []):
            if all(labels.get(k) == v for k, v in match.items()):
                out[labels.get(label)] = out.get(labels.get(label), 0) + value
        return out


def scrape(proxy) -> Metrics:
    reply = admin_call(proxy, "GET", "/metrics")
    assert reply.status == 200, reply
    assert reply.content_type.startswith("text/plain"), reply.content_type
    return Metrics(reply.body.decode())


def wait_metric(proxy, predicate: Callable[[Metrics], object], *, deadline_s: float = 10.0,
                what: str = "metric") -> Metrics:
    """Scrape until predicate(metrics) is truthy; return that scrape."""
    found = {}

    def check():
        m = scrape(proxy)
        if predicate(m):
            found["m"] = m
            return True
        found["last"] = m
        return False

    try:
        wait_until(check, deadline_s=deadline_s, interval=0.1, what=what)
    except TimeoutError as e:
        last = found.get("last")
        raise AssertionError(f"{e}; last /metrics:\n{last.text if last else '(none)'}") from None
    return found["m"]


# ---------------------------------------------------------------- access log

def read_log(source) -> list[dict]:
    """The complete JSON lines of an access log (a Path, or the text itself). Every
    complete line must be one JSON object; a torn last line (no newline yet) is left."""
    text = Path(source).read_text(errors="replace") if isinstance(source, Path) else source
    out = []
    lines = text.split("\n")
    for line in lines[:-1]:
        if not line.strip():
            continue
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        out.append(obj)
    return out


def json_lines(text: str) -> list[dict]:
    """JSON objects among lines of mixed output (stderr: log lines and access-log lines)."""
    out = []
    for line in text.split("\n")[:-1]:
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


def wait_log(read: Callable[[], list[dict]], predicate: Callable[[dict], bool], n: int = 1,
             deadline_s: float = 10.0, what: str = "access log lines") -> list[dict]:
    """Poll read() until at least n entries match predicate; return the matching ones."""
    got = {}

    def check():
        got["m"] = [e for e in read() if predicate(e)]
        return len(got["m"]) >= n

    wait_until(check, deadline_s=deadline_s, interval=0.05, what=what)
    return got["m"]


# ---------------------------------------------------------------- trace context

@dataclass
class TraceParent:
    trace_id: str
    parent_id: str
    flags: str

    @property
    def sampled(self) -> bool:
        return bool(int(self.flags, 16) & 1)


_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def parse_traceparent(value: str | None) -> TraceParent | None:
    """A valid W3C version-00 traceparent, or None (all-zero ids are invalid)."""
    if value is None:
        return None
    m = _TRACEPARENT.fullmatch(value)
    if not m or set(m.group(1)) == {"0"} or set(m.group(2)) == {"0"}:
        return None
    return TraceParent(*m.groups())


@dataclass
class B3:
    trace_id: str      # as written (16 or 32 hex)
    span_id: str
    sampled: bool | None
    form: str          # "multi" | "single"

    @property
    def trace_id32(self) -> str:
        return self.trace_id.rjust(32, "0")


_B3_ID = re.compile(r"[0-9a-f]{16}|[0-9a-f]{32}")


def _b3_sampled(value: str | None) -> bool | None:
    if value is None:
        return None
    return {"1": True, "d": True, "true": True, "0": False, "false": False}.get(value.lower())


def b3_of(rec) -> B3 | None:
    """The B3 context a recorded request carries (single `b3` or x-b3-*), asserting it
    is well-formed and that the two forms agree when both are present."""
    multi = single = None
    tid, sid = rec.header_all("x-b3-traceid"), rec.header_all("x-b3-spanid")
    if tid or sid:
        assert len(tid) == 1 and len(sid) == 1, f"x-b3-* headers: {rec.headers!r}"
        assert _B3_ID.fullmatch(tid[0]) and HEX16.fullmatch(sid[0]), rec.headers
        multi = B3(tid[0], sid[0], _b3_sampled(rec.header("x-b3-sampled")), "multi")
    singles = rec.header_all("b3")
    if singles:
        assert len(singles) == 1, singles
        parts = singles[0].split("-")
        assert len(parts) >= 2 and _B3_ID.fullmatch(parts[0]) and HEX16.fullmatch(parts[1]), singles
        single = B3(parts[0], parts[1], _b3_sampled(parts[2]) if len(parts) > 2 else None, "single")
    if multi and single:
        assert (multi.trace_id32, multi.span_id) == (single.trace_id32, single.span_id), \
            f"x-b3-* and b3 disagree: {rec.headers!r}"
    return multi or single


# ---------------------------------------------------------------- config files

def replace_config(proxy, text: str) -> None:
    """Rewrite the proxy's config file atomically (temp file + rename): one change."""
    path = Path(proxy.config_path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
