"""PNG charts of a run (matplotlib, Agg backend: no display needed).

throughput.png      requests/s per contender, one panel per scenario
cpu_per_request.png proxy CPU microseconds per request, one panel per scenario
latency.png         p50 / p99 / p99.9 per contender, one panel per scenario (log scale)

Bars are medians over rounds, whiskers the min-max range. A contender without figures in
a scenario (not available, failed, tool missing) has no bar and is labelled so.
Must not compute figures: it draws what bench.report summarized.
"""
from __future__ import annotations

from pathlib import Path

COLORS = {"direct": "#9e9e9e", "fastproxy": "#1f77b4", "envoy": "#9467bd", "nginx": "#2ca02c",
          "haproxy": "#d62728", "nghttpx": "#ff7f0e"}
LATENCY_LABELS = (("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9"))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _panels(plt, count: int, title: str):
    columns = min(3, max(1, count))
    rows = (count + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    figure.suptitle(title)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return figure, flat[:count]


def _metric_chart(plt, run: dict, key: str, title: str, ylabel: str, path: Path, proxies_only: bool) -> Path:
    scenarios = run["scenarios"]
    figure, axes = _panels(plt, len(scenarios), title)
    for ax, scenario in zip(axes, scenarios):
        names, medians, low, high, colors = [], [], [], [], []
        for name, contender in scenario["contenders"].items():
            if proxies_only and name == "direct":
                continue
            figure_ = (contender.get("summary") or {}).get(key)
            names.append(name if figure_ else f"{name}\n(n/a)")
            if figure_:
                medians.append(figure_["median"])
                low.append(figure_["median"] - figure_["min"])
                high.append(figure_["max"] - figure_["median"])
            else:
                medians.append(0)
                low.append(0)
                high.append(0)
            colors.append(COLORS.get(name) or ("#6baed6" if name.startswith("fastproxy-") else "#7f7f7f"))
        ax.bar(names, medians, yerr=[low, high], color=colors, capsize=4)
        ax.set_title(scenario["name"])
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelsize=8, labelrotation=30)
        ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _latency_chart(plt, run: dict, path: Path) -> Path:
    scenarios = run["scenarios"]
    figure, axes = _panels(plt, len(scenarios), "Latency percentiles (median over rounds, µs, log scale)")
    width = 0.8 / len(LATENCY_LABELS)
    for ax, scenario in zip(axes, scenarios):
        names = list(scenario["contenders"])
        for i, (key, label) in enumerate(LATENCY_LABELS):
            xs, values, low, high = [], [], [], []
            for x, name in enumerate(names):
                figure_ = (scenario["contenders"][name].get("summary") or {}).get(key)
                if figure_:
                    xs.append(x + (i - 1) * width)
                    values.append(figure_["median"])
                    low.append(figure_["median"] - figure_["min"])
                    high.append(figure_["max"] - figure_["median"])
            if xs:
                ax.bar(xs, values, width, yerr=[low, high], capsize=2, label=label)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n if scenario["contenders"][n].get("summary") else f"{n}\n(n/a)" for n in names],
                           fontsize=8)
        ax.set_yscale("log")
        ax.set_title(scenario["name"])
        ax.set_ylabel("µs")
        ax.grid(axis="y", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_charts(run: dict, directory: Path) -> list[Path]:
    """Draw the three charts; raises ImportError when matplotlib is missing."""
    plt = _pyplot()
    if not run["scenarios"]:
        return []
    return [
        _metric_chart(plt, run, "rps", "Throughput (requests/s, median over rounds)", "req/s",
                      directory / "throughput.png", proxies_only=False),
        _metric_chart(plt, run, "cpu_us_per_request", "Proxy CPU per request (µs, median over rounds)",
                      "CPU µs / request", directory / "cpu_per_request.png", proxies_only=True),
        _latency_chart(plt, run, directory / "latency.png"),
    ]
