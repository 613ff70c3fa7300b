"""From measured rounds to figures: medians with min-max, ratios, results.json and results.md.

Every figure of a contender is the median over its rounds, shown with the min-max range.
Ratios divide a contender's median by the median of nginx or HAProxy measured in the same
scenario of the same run - never by a figure from another run - so results.json carries
everything needed to recompute them. Paired ratios divide round i of a contender by round i
of the comparator (they ran back to back, so the machine's drift between minutes cancels)
and take the median of those. For the fixed-rate scenario the latency a proxy adds
is its median minus direct's median.
Must not run anything; it only reads the run record the runner filled in.
"""
from __future__ import annotations

import datetime
import json
import statistics
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool = False
    kind: str = "number"      # "number" | "latency" (microseconds) | "count"


METRICS = [
    Metric("rps", "req/s", higher_is_better=True),
    Metric("p50_us", "p50", kind="latency"),
    Metric("p99_us", "p99", kind="latency"),
    Metric("p999_us", "p99.9", kind="latency"),
    Metric("cpu_us_per_request", "proxy CPU µs/req"),
    Metric("kernel_us_per_request", "of it in the kernel"),
    Metric("peak_rss_mib", "proxy peak RSS MiB"),
    Metric("errors", "errors", kind="count"),
]
COMPARATORS = ("envoy", "nginx", "haproxy")
COMPARATOR_LABELS = {"nginx": "nginx", "haproxy": "HAProxy", "envoy": "Envoy", "fastproxy": "fastproxy"}
LATENCY_KEYS = ("p50_us", "p99_us", "p999_us")
PAIRED_KEYS = ("rps", "cpu_us_per_request")


def figure(values: list[float]) -> dict | None:
    """Median, min and max of a figure over rounds (None without values)."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(rounds: list[dict]) -> dict:
    """Each metric's figure over the rounds (None where it does not apply to every round)."""
    summary = {}
    for metric in METRICS:
        values = [r[metric.key] for r in rounds if r.get(metric.key) is not None]
        summary[metric.key] = figure(values) if len(values) == len(rounds) else None
    return summary


def ratio(value: dict | None, reference: dict | None) -> float | None:
    if not value or not reference or not reference["median"]:
        return None
    return value["median"] / reference["median"]


def paired_ratio(rounds: list[dict], reference: list[dict], key: str) -> float | None:
    """Median over round numbers of this round's figure ÷ the reference's same round."""
    by_round = {r["round"]: r.get(key) for r in reference}
    values = [r[key] / by_round[r["round"]] for r in rounds
              if r.get(key) is not None and by_round.get(r["round"])]
    return statistics.median(values) if values else None


def add_figures(scenario: dict) -> None:
    """Fill in each contender's summary, its ratios to the comparators, and added latency."""
    contenders = scenario["contenders"]
    for contender in contenders.values():
        contender["summary"] = summarize(contender["rounds"]) if contender["rounds"] else None
    for name, contender in contenders.items():
        contender["ratios"] = {}
        if not contender["summary"]:
            continue
        # a fastproxy variant (observability on) is also compared with plain fastproxy
        for comparator in COMPARATORS + (("fastproxy",) if name.startswith("fastproxy-") else ()):
            reference = contenders.get(comparator, {}).get("summary")
            if reference and contender is not contenders[comparator]:
                contender["ratios"][comparator] = {
                    m.key: ratio(contender["summary"][m.key], reference[m.key]) for m in METRICS}
                contender.setdefault("paired_ratios", {})[comparator] = {
                    key: paired_ratio(contender["rounds"], contenders[comparator]["rounds"], key)
                    for key in PAIRED_KEYS}
    direct = contenders.get("direct", {}).get("summary")
    for name, contender in contenders.items():
        if scenario["fixed_rate"] and direct and contender["summary"] and name != "direct":
            contender["added_latency_us"] = {
                key: contender["summary"][key]["median"] - direct[key]["median"] for key in LATENCY_KEYS}


def write_json(run: dict, path: Path) -> Path:
    path.write_text(json.dumps(run, indent=2, sort_keys=False) + "\n")
    return path


# ---- results.md ------------------------------------------------------------------------

def format_value(value: float | None, metric: Metric) -> str:
    if value is None:
        return "–"
    if metric.kind == "latency":
        return f"{value:,.0f} µs" if value < 1000 else f"{value / 1000:,.2f} ms"
    if metric.kind == "count" or metric.key == "rps":
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def format_figure(figure: dict | None, metric: Metric) -> str:
    if not figure:
        return "–"
    median = format_value(figure["median"], metric)
    low, high = format_value(figure["min"], metric), format_value(figure["max"], metric)
    if low == high:
        return median
    return f"{median} ({low}–{high})"


def format_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def status_text(contender: dict) -> str:
    """"failed: why", without repeating a status the message already starts with."""
    status, message = contender["status"], contender["message"] or ""
    return message if message.startswith(status) else f"{status}: {message}"


def render_markdown(run: dict) -> str:
    lines = [f"# fastproxy benchmark — {run['started_at']}", ""]
    lines += _header(run)
    lines += _idle_section(run)
    for scenario in run["scenarios"]:
        lines += _scenario_section(scenario)
    lines += _reading_notes(run)
    return "\n".join(lines) + "\n"


def _idle_section(run: dict) -> list[str]:
    idle = run.get("idle") or {}
    if not idle:
        return []
    out = ["## idle — resident memory of each proxy with one listener and one cluster, no traffic", "",
           "| contender | RSS MiB | ÷ Envoy |", "|---|---|---|"]
    envoy = idle.get("envoy")
    for name, value in idle.items():
        if isinstance(value, str):
            out.append(f"| {name} | {value} | – |")
            continue
        against = format_ratio(value / envoy) if isinstance(envoy, float) and envoy else "–"
        out.append(f"| {name} | {value:.1f} | {'·' if name == 'envoy' else against} |")
    return out + [""]


def _header(run: dict) -> list[str]:
    machine, tools, git = run["machine"], run["tools"], run["git"]
    timing = run["timing"]
    versions = ", ".join(info["short"] for info in tools.values())
    commit = (git["commit"] or "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    out = [
        f"- command: `{run['command']}` (mode {run['mode']}: {timing['rounds']} round(s), "
        f"{timing['warmup_s']:g} s warm-up per contender, {timing['measure_s']:g} s per measured run, "
        f"{timing['fixed_rate_measure_s']:g} s at {timing['rate']:,} req/s for the fixed-rate scenario)",
        f"- machine: {machine['cpu_model']}, {machine['cores']} cores, {machine['os']}, "
        f"Linux {machine['kernel']}, Python {machine['python']}",
        f"- fastproxy commit: {commit}",
        f"- tools: {versions}",
        f"- placement: {run['placement']['note']} (load + backend: CPU {run['placement']['load_and_backend_cpu']}, "
        f"proxy: CPU {run['placement']['proxy_cpu']})",
        f"- backend: {run['backend']}",
        f"- duration: {run['elapsed_s']:.0f} s" + (" — INTERRUPTED, results are partial" if run.get("interrupted") else ""),
        f"- load average (1 min) at start / end: {format_load(run.get('load_average_at_start'))} / "
        f"{format_load(run.get('load_average_at_end'))}" + (" — the machine was busy with other work: figures are noisy"
                                                       if (run.get("load_average_at_start") or 0) > 0.5 else ""),
    ]
    if run.get("error"):
        out += ["", f"**The run stopped early:** {run['error']}"]
    if run["missing_tools"]:
        out += ["", "**Missing tools** (what was not measured because of them):", ""]
        out += [f"- {message}" for message in run["missing_tools"]]
    return out + [""]


def format_load(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.2f}"


def _scenario_section(scenario: dict) -> list[str]:
    out = [f"## {scenario['name']} — {scenario['title']}", ""]
    header = "| contender | " + " | ".join(m.label for m in METRICS) + " |"
    out += [header, "|" + "---|" * (len(METRICS) + 1)]
    notes = []
    for name, contender in scenario["contenders"].items():
        if contender["summary"]:
            cells = [format_figure(contender["summary"][m.key], m) for m in METRICS]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        else:
            message = status_text(contender).replace("|", "\\|")
            out.append(f"| {name} | {message} |" + " |" * (len(METRICS) - 1))
        if contender["summary"] and contender["status"] != "ok":
            notes.append(f"- {name}: {status_text(contender)}")
        if contender.get("note"):
            notes.append(f"- {name}: {contender['note']}")
    out.append("")

    with_ratios = [(n, c) for n, c in scenario["contenders"].items() if c.get("ratios")]
    comparators = [c for c in COMPARATORS + ("fastproxy",)
                   if any(c in r["ratios"] for _, r in with_ratios)]
    if comparators:
        against = " / ".join(f"÷ {COMPARATOR_LABELS[c]}" for c in comparators)
        out += [f"Ratios, median ÷ median of the same run ({against}):", ""]
        out += ["| contender | " + " | ".join(m.label for m in METRICS) + " |",
                "|" + "---|" * (len(METRICS) + 1)]
        for name, contender in with_ratios:
            cells = [" / ".join(format_ratio(contender["ratios"].get(c, {}).get(m.key)) if c in contender["ratios"]
                                else "·" for c in comparators) for m in METRICS]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
        paired = [(n, c["paired_ratios"]) for n, c in with_ratios if c.get("paired_ratios")]
        labels = {m.key: m.label for m in METRICS}
        out += [f"Paired-round ratios, median of round i ÷ the comparator's round i ({against}):", "",
                "| contender | " + " | ".join(labels[k] for k in PAIRED_KEYS) + " |",
                "|" + "---|" * (len(PAIRED_KEYS) + 1)]
        for name, ratios in paired:
            cells = [" / ".join(format_ratio(ratios[c][k]) if c in ratios else "·" for c in comparators)
                     for k in PAIRED_KEYS]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")

    added = [(n, c["added_latency_us"]) for n, c in scenario["contenders"].items() if c.get("added_latency_us")]
    if added:
        out += ["Latency added over direct (median minus direct's median):", "",
                "| contender | p50 | p99 | p99.9 |", "|---|---|---|---|"]
        for name, figures in added:
            out.append(f"| {name} | " + " | ".join(f"{figures[k]:+,.0f} µs" for k in LATENCY_KEYS) + " |")
        out.append("")
    if notes:
        out += notes + [""]
    return out


def _reading_notes(run: dict) -> list[str]:
    return [
        "## How to read this",
        "",
        "- Each figure is the median over rounds, with (min–max) when rounds differ. Rounds alternate "
        "contenders (A B C, A B C, ...) after one warm-up per contender (open-loop generator, 5,000 req/s).",
        "- req/s: higher is better; every other figure: lower is better. A ratio below 1.00× in a "
        "lower-is-better column means cheaper/faster than that comparator; '·' marks the comparator itself.",
        "- Paired-round ratios compare rounds that ran back to back, so they are steadier than the "
        "ratio of medians when the machine's speed drifts during the run (it does on shared machines).",
        "- Latency in the closed-loop scenarios comes from wrk, where a slow response also delays the "
        "requests behind it; the fixed-rate `latency` scenario counts latency from each request's "
        "intended send time (no coordinated omission) and is the one to quote for added latency.",
        "- proxy CPU µs/req: utime+stime from /proc/<pid>/stat of all the proxy's processes (workers "
        "included; both sidecars in mtls-2hop) during the measured run, divided by the requests completed. "
        "Peak RSS: sum of VmHWM over those processes.",
        "- errors: socket errors (connect, read, write, timeout) plus responses that are not 2xx/3xx.",
        "",
    ]


def write_markdown(run: dict, path: Path) -> Path:
    path.write_text(render_markdown(run))
    return path


def dated_results_file(parent: Path, what: str) -> Path:
    """<parent>/<timestamp>-<what>.md for a tool's one-file report (bench.tls_costs,
    bench.attacks, bench.interception), the timestamp as bench.runner names its
    directories; never an existing file."""
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = parent / f"{stamp}-{what}.md", 1
    while path.exists():
        n += 1
        path = parent / f"{stamp}-{n}-{what}.md"
    return path
