"""/metrics: the Prometheus text format, rendered from the shared metric table.

The core and every worker count into one shared table (see _core/telemetry.pxi); a
series' key is its metric name and label values joined by \\x1f. Series kept per worker
(gauges such as pool sizes, and counters that Python keeps) carry the worker's number as
their last label value, which is summed away here: every figure covers all workers.
"""
from __future__ import annotations

from collections import defaultdict

from fastproxy._core.proxy import DURATION_BUCKETS, OVERHEAD_BUCKETS

SEP = "\x1f"

# name -> (type, labels, help, per worker, histogram buckets)
FAMILIES: dict[str, tuple[str, tuple[str, ...], str, bool, tuple[float, ...] | None]] = {
    "fastproxy_requests_total": (
        "counter", ("listener", "cluster", "code"), "Requests answered, by status code.", False, None),
    "fastproxy_grpc_requests_total": (
        "counter", ("listener", "cluster", "grpc_status"), "gRPC requests answered, by "
        "grpc-status (\"none\": the response ended without one).", False, None),
    "fastproxy_http2_protocol_errors_total": (
        "counter", ("listener", "reason"), "HTTP/2 client connections closed for breaking the "
        "protocol or setting off a protection (rapid_reset, continuation_flood, "
        "hpack_bomb, refused_flood, control_flood, empty_frames, flow_control, compression, frame_size, ...).", False, None),
    "fastproxy_request_duration_seconds": (
        "histogram", ("listener", "cluster"), "Request duration, from a complete request head "
        "to the end of the response.", False, DURATION_BUCKETS),
    "fastproxy_proxy_overhead_seconds": (
        "histogram", ("listener",), "Time each request spent inside the proxy itself, "
        "upstream time excluded.", False, OVERHEAD_BUCKETS),
    "fastproxy_tls_handshake_failures_total": (
        "counter", ("listener",), "Client TLS handshakes that failed or presented an "
        "unacceptable identity.", False, None),
    "fastproxy_tls_handshakes_total": (
        "counter", ("listener", "session"), "Client TLS handshakes completed, by session: "
        "new (certificates checked) or resumed.", False, None),
    "fastproxy_plain_connections_total": (
        "counter", ("listener",), "Connections a permissive listener took without TLS (their "
        "requests have no peer identity).", False, None),
    "fastproxy_config_reloads_total": (
        "counter", ("result",), "Configuration reloads, by result.", False, None),
    "fastproxy_upstream_connections": (
        "gauge", ("cluster", "state"), "Upstream connections: HTTP/1.1 ones active or idle in the pool, and "
        "HTTP/2 ones (http2), each shared by many requests.", True, None),
    "fastproxy_downstream_connections": (
        "gauge", ("listener",), "Open client connections.", True, None),
    "fastproxy_downstream_connections_waiting": (
        "gauge", (), "Client connections accepted and waiting for a slot (max_connections).",
        True, None),
    "fastproxy_accept_paused_total": (
        "counter", ("reason",), "Times a worker stopped accepting connections, by reason: "
        "max_connections (as many wait as max_connections) or file_descriptors (near the "
        "descriptor limit).", True, None),
    "fastproxy_retry_budget_exhausted_total": (
        "counter", ("cluster",), "Retries not made because the retry budget (the route's, "
        "else the cluster's) was spent.", True, None),
    "fastproxy_records_dropped_total": (
        "counter", (), "Request records dropped because the drain fell behind.", True, None),
    "fastproxy_access_log_dropped_total": (
        "counter", (), "Access log lines dropped (writer too slow, or a write error).", True, None),
    "fastproxy_spans_exported_total": (
        "counter", (), "Spans sent to the OTLP collector.", True, None),
    "fastproxy_spans_dropped_total": (
        "counter", (), "Spans dropped because the export queue was full.", True, None),
    "fastproxy_span_export_failures_total": (
        "counter", (), "OTLP export requests that failed.", True, None),
}


def key(name: str, *labels, worker: int | None = None) -> str:
    """The table key of a series (worker: the number of a per-worker series)."""
    parts = [name, *map(str, labels)]
    if worker is not None:
        parts.append(str(worker))
    return SEP.join(parts)


def _number(value: float) -> str:
    if value == int(value):
        return str(int(value))
    return repr(value)


def _labels(names, values, extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def family(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> list[str]:
    """The lines of one counter or gauge family: samples are (labels, value)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{_labels(labels, labels.values())} {_number(value)}" for labels, value in samples]
    return lines


def render(series: list[tuple[str, tuple[int, ...]]], extra: list[str] = ()) -> str:
    """Prometheus text format of every shared series, then `extra` (lines made by
    `family` of this worker's own figures: identity, circuits)."""
    found: dict[str, dict[tuple[str, ...], list[int]]] = defaultdict(dict)
    for text, values in series:
        name, *labels = text.split(SEP)
        spec = FAMILIES.get(name)
        if spec is None:
            continue
        kind, names, _, per_worker, _ = spec
        if per_worker:
            labels = labels[:-1]
        labels_t = tuple(labels[:len(names)]) + ("",) * (len(names) - len(labels))
        have = found[name].get(labels_t)
        if have is None:
            found[name][labels_t] = list(values)
        else:   # another worker's share of the same series
            found[name][labels_t] = [a + b for a, b in zip(have, values)]
    lines: list[str] = []
    for name, (kind, names, help_text, _, buckets) in FAMILIES.items():
        samples = found.get(name)
        if not samples:
            continue
        if kind != "histogram":
            lines += family(name, kind, help_text, [(dict(zip(names, labels_t)), samples[labels_t][0])
                                                    for labels_t in sorted(samples)])
            continue
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels_t in sorted(samples):
            values = samples[labels_t]
            # +Inf and _count are the bucket total, so the buckets are consistent
            # even when read while a worker is counting
            n = len(buckets)
            cumulative = 0
            for bound, count in zip(buckets, values):
                cumulative += count
                le = f'le="{bound}"'
                lines.append(f"{name}_bucket{_labels(names, labels_t, le)} {cumulative}")
            cumulative += values[n]
            le = 'le="+Inf"'
            lines.append(f"{name}_bucket{_labels(names, labels_t, le)} {cumulative}")
            lines.append(f"{name}_sum{_labels(names, labels_t)} {_number(values[n + 1] / 1e9)}")
            lines.append(f"{name}_count{_labels(names, labels_t)} {cumulative}")
    lines.extend(extra)
    return "\n".join(lines) + "\n"
