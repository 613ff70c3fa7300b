"""Runs a benchmark from start to finish and writes its results.

The order of events: find the tools (saying what is missing and how to install it), pin
the harness itself to the load CPU, start the backend, make the certificates; then per
scenario deploy every contender, wait until each accepts connections, warm each up once,
and run the rounds - each round measures every contender once, always in the same order
(A B C, A B C), so drift over time hits them all alike. A scenario's processes are stopped
when it ends, and everything still running is stopped in a `finally` (errors, Ctrl-C,
SIGTERM). results.md, results.json and the charts are written even for a partial run.
Must not format results (bench.report, bench.charts) or know proxy configs (bench.contenders).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import resource
import shutil
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench import charts, report
from bench.backend import GRPC_HEADERS, BackendError, start_backend, start_grpc_backend
from bench.certs import make_certs
from bench.contenders import Contender, DeployContext, Deployment, NotAvailable, all_contenders
from bench.loadgen import LoadError, LoadResult, run_h2load, run_open_loop, run_wrk
from bench.procstat import TreeSnapshot, cpu_used_between, tree_rss_bytes
from bench.processes import ManagedProcess, Placement, ProcessRegistry
from bench.scenarios import BY_NAME, Scenario, Timing
from bench.tools import REPO_ROOT, Tool, find_tool, git_revision, load_average, machine_description
from bench.verify import verify_deployment

DEFAULT_RESULTS_DIR = REPO_ROOT / "bench" / "results"
WARMUP_RATE = 5000          # requests/s of the warm-up: enough to prime, not to saturate
BUSY_LOAD_AVERAGE = 0.5     # above this before we start, other work is competing for the CPUs


@dataclass
class RunOptions:
    scenarios: list[Scenario]
    contenders: list[str]
    timing: Timing
    mode: str
    command: str
    results_dir: Path = DEFAULT_RESULTS_DIR
    tool_paths: dict[str, str | None] = dataclasses.field(default_factory=dict)
    fastproxy_workers: int = 1
    keep_workdir: bool = False


class Progress:
    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, message: str) -> None:
        print(f"[{self.elapsed:6.1f}s] {message}", flush=True)


@dataclass
class Running:
    """A contender deployed for the current scenario."""
    contender: Contender
    deployment: Deployment
    processes: list[ManagedProcess]

    @property
    def root_pids(self) -> list[int]:
        return [p.pid for p in self.processes]


def _interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def _raise_open_files_limit() -> None:
    """1,000 client connections plus as many upstream ones need more than the usual 1,024 fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
        except (ValueError, OSError):
            pass


def _results_path(parent: Path) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = parent / stamp, 1
    while path.exists():
        n += 1
        path = parent / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def run(options: RunOptions) -> tuple[Path, dict]:
    """Run the benchmark; the results directory and the record written to results.json."""
    progress = Progress()
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    # Ctrl-C must reach us even when started from a shell that ignores SIGINT for background jobs.
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    tools = {name: find_tool(name, options.tool_paths.get(name))
             for name in ("wrk", "h2load", "nginx", "haproxy", "envoy", "nghttpx", "nghttpd", "taskset")}
    placement = Placement(tools["taskset"].path)
    contenders = {name: c for name, c in all_contenders(tools, options.fastproxy_workers).items()
                  if name in options.contenders}
    results = _results_path(options.results_dir)
    workdir = Path(tempfile.mkdtemp(prefix="fastproxy-bench-"))
    workdir.chmod(0o755)    # nginx workers may run as another user and must read the 64 KiB body
    (workdir / "logs").mkdir()
    registry = ProcessRegistry(workdir / "logs")

    record = _new_record(options, tools, placement, contenders)

    progress.say(f"fastproxy benchmark ({options.mode}): scenarios {', '.join(s.name for s in options.scenarios)}; "
                 f"contenders {', '.join(contenders)}")
    progress.say(f"results: {results}")
    for message in _missing_tool_messages(tools, options):
        record["missing_tools"].append(message)
        progress.say(f"MISSING {message}")
    if (record["load_average_at_start"] or 0) > BUSY_LOAD_AVERAGE:
        progress.say(f"note: the machine is busy (load average {record['load_average_at_start']:.2f}); "
                     f"figures will be noisier than on an idle machine")
    if not placement.enough_cpus or not placement.taskset:
        progress.say(f"placement: {placement.describe()['note']}")

    try:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {placement.load_cpu})   # keep the proxy's CPU to the proxy
        _raise_open_files_limit()
        backend = start_backend(registry, placement, tools["nginx"], workdir)
        record["backend"] = backend.description
        progress.say(f"backend: {backend.description} on {backend.address}")
        needs_certs = any(s.topology != "plain" for s in options.scenarios)
        certs = make_certs(workdir / "certs") if needs_certs else None
        ctx = DeployContext(workdir=workdir, backend=backend, certs=certs)
        if any(s.protocol == "grpc" for s in options.scenarios):
            try:
                ctx.grpc_backend = start_grpc_backend(registry, placement, tools["nghttpd"], workdir)
                record["grpc_backend"] = ctx.grpc_backend.description
            except BackendError as exc:      # the other scenarios still run
                record["missing_tools"].append(f"{exc} — not run: grpc-unary")
                progress.say(f"MISSING {exc}")
        record["idle"] = measure_idle(contenders, ctx, registry, placement, progress)
        for scenario in options.scenarios:
            record["scenarios"].append(_scenario_record(scenario, options.timing))
            run_scenario(scenario, record["scenarios"][-1], contenders, ctx, tools, placement, registry,
                         options.timing, progress)
    except KeyboardInterrupt:
        record["interrupted"] = True
        progress.say("interrupted: stopping everything and writing the partial results")
        for scenario in record["scenarios"]:
            for contender in scenario["contenders"].values():
                if contender["status"] == "ok" and not contender["rounds"]:
                    contender.update(status="skipped", message="the run was interrupted before it was measured")
    except BackendError as exc:
        record["error"] = str(exc)
        progress.say(f"ERROR {exc}")
    except Exception as exc:       # a harness bug: still stop everything and keep what was measured
        record["error"] = f"{type(exc).__name__}: {exc}"
        progress.say(f"ERROR in the harness itself:\n{traceback.format_exc()}")
    finally:
        registry.stop_all()
        signal.signal(signal.SIGTERM, previous_sigterm)
        signal.signal(signal.SIGINT, previous_sigint)

    record["finished_at"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    record["elapsed_s"] = progress.elapsed
    record["load_average_at_end"] = load_average()
    _write_results(record, results, workdir, progress)
    if options.keep_workdir:
        progress.say(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    _point_latest_at(results)
    return results, record


def _new_record(options: RunOptions, tools: dict[str, Tool], placement: Placement,
                contenders: dict[str, Contender]) -> dict:
    """The run's record, as results.json will hold it (bench/results/README.md)."""
    record = {
        "format": 1,
        "started_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": options.command,
        "mode": options.mode,
        "timing": dataclasses.asdict(options.timing),
        "machine": machine_description(),
        "git": git_revision(),
        "tools": {name: {"path": tool.path, "version": tool.version, "short": tool.short_version}
                  for name, tool in tools.items()},
        "placement": placement.describe(),
        "load_average_at_start": load_average(),
        "backend": None,
        "missing_tools": [],
        "idle": {},
        "scenarios": [],
        "interrupted": False,
        "error": None,
    }
    fastproxy_version = contenders["fastproxy"].version() if "fastproxy" in contenders else None
    record["tools"]["fastproxy"] = {"path": str(REPO_ROOT), "version": fastproxy_version,
                                    "short": fastproxy_version or "fastproxy (not run)"}
    return record


def _missing_tool_messages(tools: dict[str, Tool], options: RunOptions) -> list[str]:
    messages = []
    closed_loop = [s.name for s in options.scenarios if not s.fixed_rate]
    if not tools["wrk"].found and closed_loop:
        messages.append(f"{tools['wrk'].missing_message()} — not run: {', '.join(closed_loop)}")
    if not tools["nginx"].found:
        what = "the nginx contender is skipped" if "nginx" in options.contenders else "nginx is not used"
        messages.append(f"{tools['nginx'].missing_message()} — {what}; the built-in backend stands in for nginx")
    if not tools["haproxy"].found and "haproxy" in options.contenders:
        messages.append(f"{tools['haproxy'].missing_message()} — the HAProxy contender is skipped")
    h2 = [s.name for s in options.scenarios if s.http2]
    if not tools["h2load"].found and h2:
        messages.append(f"{tools['h2load'].missing_message()} — not run: {', '.join(h2)}")
    if not tools["nghttpx"].found and "nghttpx" in options.contenders and h2:
        messages.append(f"{tools['nghttpx'].missing_message()} — the nghttpx contender is skipped")
    if not tools["envoy"].found and "envoy" in options.contenders:
        messages.append(f"{tools['envoy'].missing_message()} — the Envoy contender is skipped")
    if not tools["taskset"].found:
        messages.append(f"{tools['taskset'].missing_message()} — processes are not pinned to CPUs")
    return messages


IDLE_SETTLE_S = 1.0


def measure_idle(contenders: dict[str, Contender], ctx: DeployContext, registry: ProcessRegistry,
                 placement: Placement, progress: Progress) -> dict[str, float | str]:
    """Each proxy's resident memory when idle: deployed as in h1-small (one listener, one
    cluster), checked with one request, then left alone for a second. MiB, or why not."""
    idle: dict[str, float | str] = {}
    scenario = BY_NAME["h1-small"]
    for name, contender in contenders.items():
        if not contender.is_proxy or contender.problem() or "h1" not in contender.protocols:
            continue
        record = _contender_record("ok")
        started = _start(scenario, contender, ctx, registry, placement, record)
        if started is None or not _ready(scenario, started, ctx, registry, record):
            idle[name] = record["message"] or "did not start"
            continue
        time.sleep(IDLE_SETTLE_S)
        idle[name] = tree_rss_bytes(started.root_pids) / 2**20
        _stop(started, registry)
        progress.say(f"idle       {name:<9}  {idle[name]:6.1f} MiB RSS")
    return idle


def _scenario_record(scenario: Scenario, timing: Timing) -> dict:
    return {
        "name": scenario.name,
        "title": scenario.title,
        "path": scenario.path,
        "connections": scenario.connections,
        "topology": scenario.topology,
        "fixed_rate": scenario.fixed_rate,
        "rate": timing.rate if scenario.fixed_rate else None,
        "load_generator": "bench.openloop" if scenario.fixed_rate else
                          "h2load" if scenario.http2 else "wrk",
        "protocol": scenario.protocol,
        "contenders": {},
    }


def _contender_record(status: str, message: str | None = None) -> dict:
    return {"status": status, "message": message, "note": "", "url": None, "processes": [],
            "configs": [], "rounds": []}


def run_scenario(scenario: Scenario, result: dict, contenders: dict[str, Contender], ctx: DeployContext,
                 tools: dict[str, Tool], placement: Placement, registry: ProcessRegistry, timing: Timing,
                 progress: Progress) -> None:
    progress.say(f"{scenario.name}: {scenario.title}")
    running: dict[str, Running] = {}
    if scenario.variants and "fastproxy" in contenders:
        base = contenders["fastproxy"]
        at = list(contenders).index("fastproxy") + 1
        items = list(contenders.items())
        contenders = dict(items[:at] + [(f"fastproxy-{v}", base.variant(v)) for v in scenario.variants]
                          + items[at:])
    try:
        for name, contender in contenders.items():
            if scenario.protocol not in contender.protocols:
                continue
            result["contenders"][name] = record = _contender_record("ok")
            problem = contender.problem()
            generator = "h2load" if scenario.http2 else "wrk"
            if not scenario.fixed_rate and not tools[generator].found:
                problem = f"not run: {tools[generator].missing_message()}"
            if scenario.protocol == "grpc" and ctx.grpc_backend is None:
                problem = f"not run: no gRPC backend ({tools['nghttpd'].missing_message()})"
            if problem:    # a missing tool: already announced at the start
                record.update(status="skipped", message=problem)
                continue
            deployed = _start(scenario, contender, ctx, registry, placement, record)
            if deployed is None:
                progress.say(f"{scenario.name}  {name:<9}  {report.status_text(record)}")
                continue
            running[name] = deployed
        # All contenders start side by side (fastproxy takes a moment to import); now wait.
        for name, deployed in list(running.items()):
            record = result["contenders"][name]
            if not _ready(scenario, deployed, ctx, registry, record):
                progress.say(f"{scenario.name}  {name:<9}  {report.status_text(record)}")
                del running[name]

        for name, deployed in list(running.items()):
            if timing.warmup_s <= 0:
                continue
            progress.say(f"{scenario.name}  warm-up    {name:<9}  {timing.warmup_s:g}s")
            try:
                problem = _warm_up(scenario, deployed.deployment, tools, placement, timing.warmup_s,
                                   ctx.workdir)
                problem = _dead_process(deployed) or problem
            except LoadError as exc:
                problem = _dead_process(deployed) or str(exc)
            if problem:
                _give_up(scenario, name, deployed, result, f"warm-up failed: {problem}", registry, running,
                         progress, f"{scenario.name}  warm-up    {name:<9}")

        for round_number in range(1, timing.rounds + 1):
            for name, deployed in list(running.items()):
                label = f"{scenario.name}  round {round_number}/{timing.rounds}  {name:<9}"
                try:
                    figures = measure(scenario, deployed, tools, placement, timing, ctx.workdir)
                except LoadError as exc:
                    problem = _dead_process(deployed) or str(exc)
                    _give_up(scenario, name, deployed, result, f"round {round_number} failed: {problem}",
                             registry, running, progress, label)
                    continue
                figures["round"] = round_number
                result["contenders"][name]["rounds"].append(figures)
                progress.say(f"{label}  {_progress_figures(figures)}")
                problem = _dead_process(deployed)
                if problem:
                    _give_up(scenario, name, deployed, result, f"during round {round_number}: {problem}",
                             registry, running, progress, label)
                else:
                    deployed.contender.measured(scenario)
    finally:
        for deployed in running.values():
            _stop(deployed, registry)


def _start(scenario: Scenario, contender: Contender, ctx: DeployContext, registry: ProcessRegistry,
           placement: Placement, record: dict) -> Running | None:
    """Write the contender's configs and start its processes (without waiting for them)."""
    try:
        deployment = contender.deploy(scenario, ctx)
    except NotAvailable as exc:
        record.update(status="not available", message=str(exc))
        return None
    record.update(url=deployment.url, note=deployment.note,
                  processes=[p.name for p in deployment.processes],
                  configs=[p.config.name for p in deployment.processes if p.config])
    started = Running(contender, deployment, [])
    for spec in deployment.processes:
        process = registry.start(spec.name, placement.pinned(spec.cmd, placement.proxy_cpu), cwd=spec.cwd)
        started.processes.append(process)
    return started


def _ready(scenario: Scenario, started: Running, ctx: DeployContext, registry: ProcessRegistry,
           record: dict) -> bool:
    """Wait until every process listens, then check the deployment does the scenario's job."""
    problem = None
    for spec, process in zip(started.deployment.processes, started.processes):
        problem = process.wait_ready(spec.port, spec.ready_timeout_s)
        if problem:
            problem = f"did not start: {problem}"
            break
    else:
        problem = verify_deployment(scenario, started.deployment, ctx.certs)
        if problem:
            problem = f"check before measuring failed: {problem}"
        else:
            _describe_tls(scenario, started, record)
    if problem:
        _stop(started, registry)
        status, message = started.contender.failure(scenario, problem)
        record.update(status=status, message=message)
        return False
    return True


def _describe_tls(scenario: Scenario, started: Running, record: dict) -> None:
    """What the TLS of a deployment is, for the report: the protocol and cipher its check
    negotiated and, for the mTLS hop, what its two sidecars check of each other."""
    deployment = started.deployment
    if not deployment.negotiated:
        return
    record["tls"] = deployment.negotiated
    parts = [f"negotiated {deployment.negotiated}"]
    if scenario.topology == "mtls-2hop" and started.contender.peer_checks:
        parts.append(started.contender.peer_checks)
    record["note"] = "; ".join(filter(None, [record.get("note"), *parts]))


def _dead_process(deployed: Running) -> str | None:
    """Which of the contender's processes has exited, with its last words; None if all run."""
    for process in deployed.processes:
        if not process.alive():
            return f"{process.name} exited with code {process.exit_code()}: {process.log_tail()}"
    return None


def _give_up(scenario: Scenario, name: str, deployed: Running, result: dict, reason: str,
             registry: ProcessRegistry, running: dict[str, Running], progress: Progress, label: str) -> None:
    """A contender broke mid-scenario: record why (rounds so far stay), stop it, measure it no more."""
    status, message = deployed.contender.failure(scenario, reason)
    result["contenders"][name].update(status=status, message=message)
    progress.say(f"{label}  FAILED: {message}")
    _stop(deployed, registry)
    del running[name]


def _stop(deployed: Running, registry: ProcessRegistry) -> None:
    for process in reversed(deployed.processes):
        registry.stop(process)


def _warm_up(scenario: Scenario, deployment: Deployment, tools: dict[str, Tool], placement: Placement,
             duration_s: float, workdir: Path) -> str | None:
    """Prime the contender (connections, pools, caches) with the open-loop generator, which,
    unlike wrk, can run for a fraction of a second (HTTP/2: h2load, a second). Returns a
    problem, or None."""
    if scenario.http2:
        load = _h2load(scenario, deployment, tools, placement, duration_s, workdir)
        return None if load.requests else "no response during the warm-up"
    load = run_open_loop(placement, deployment.port, scenario.path, WARMUP_RATE, scenario.connections,
                         duration_s, tls=deployment.url.startswith("https:"))
    if load.requests == 0:
        return f"no response during the warm-up (errors: {load.errors})"
    return None


def _h2load(scenario: Scenario, deployment: Deployment, tools: dict[str, Tool], placement: Placement,
            duration_s: float, workdir: Path) -> LoadResult:
    grpc = scenario.protocol == "grpc"
    return run_h2load(tools["h2load"].path, placement, deployment.url, scenario.connections,
                      scenario.streams, duration_s, workdir, headers=GRPC_HEADERS if grpc else (),
                      data=workdir / "grpc-request.bin" if grpc else None)


def _load(scenario: Scenario, deployment: Deployment, tools: dict[str, Tool], placement: Placement,
          timing: Timing, duration_s: float, workdir: Path) -> LoadResult:
    if scenario.fixed_rate:
        return run_open_loop(placement, deployment.port, scenario.path, timing.rate, scenario.connections,
                             duration_s)
    if scenario.http2:
        return _h2load(scenario, deployment, tools, placement, duration_s, workdir)
    return run_wrk(tools["wrk"].path, placement, deployment.url, scenario.connections, duration_s)


def measure(scenario: Scenario, deployed: Running, tools: dict[str, Tool], placement: Placement,
            timing: Timing, workdir: Path) -> dict:
    """One measured run: the load, and the proxy processes' CPU and memory around it."""
    duration = timing.fixed_rate_measure_s if scenario.fixed_rate else timing.measure_s
    roots = deployed.root_pids
    before = TreeSnapshot.take(roots) if roots else None
    load = _load(scenario, deployed.deployment, tools, placement, timing, duration, workdir)
    after = TreeSnapshot.take(roots) if roots else None
    figures = {
        "requests": load.requests,
        "rps": load.rps,
        "p50_us": load.latency_us["p50"],
        "p99_us": load.latency_us["p99"],
        "p999_us": load.latency_us["p99.9"],
        "max_us": load.latency_us["max"],
        "errors": load.error_count,
        "errors_by_kind": load.errors,
        "cpu_s": None,
        "cpu_us_per_request": None,
        "kernel_us_per_request": None,
        "peak_rss_mib": None,
        "proxy_processes": None,
        "load": load.extra,
    }
    if deployed.contender.is_proxy and before and after:
        cpu, kernel = cpu_used_between(before, after), cpu_used_between(before, after, system=True)
        figures.update(cpu_s=cpu, peak_rss_mib=after.peak_rss / 2**20, proxy_processes=after.processes,
                       cpu_us_per_request=cpu / load.requests * 1e6 if load.requests else None,
                       kernel_us_per_request=kernel / load.requests * 1e6 if load.requests else None)
    return figures


def _progress_figures(figures: dict) -> str:
    parts = [f"{figures['rps']:>10,.0f} req/s", f"p99 {figures['p99_us']:>8,.0f} µs"]
    if figures["cpu_us_per_request"] is not None:
        parts.append(f"{figures['cpu_us_per_request']:6.1f} µs CPU/req")
    if figures["peak_rss_mib"] is not None:
        parts.append(f"{figures['peak_rss_mib']:6.1f} MiB")
    parts.append(f"errors {figures['errors']}")
    return "  ".join(parts)


def _write_results(record: dict, results: Path, workdir: Path, progress: Progress) -> None:
    for scenario in record["scenarios"]:
        report.add_figures(scenario)
    configs = results / "configs"
    configs.mkdir(exist_ok=True)
    for pattern in ("*.conf", "*.cfg", "*.toml"):
        for path in workdir.glob(pattern):
            shutil.copy2(path, configs / path.name)
    if (workdir / "logs").is_dir():
        shutil.copytree(workdir / "logs", results / "logs", dirs_exist_ok=True)
    record["charts"], record["charts_error"] = [], None
    try:
        record["charts"] = [p.name for p in charts.write_charts(record, results)]
    except ImportError as exc:
        record["charts_error"] = (f"charts not drawn: matplotlib is missing ({exc}); "
                                  f"install it with `.venv/bin/pip install matplotlib`")
        progress.say(record["charts_error"])
    except Exception as exc:   # a drawing bug must not cost the figures
        record["charts_error"] = f"charts not drawn: {type(exc).__name__}: {exc}"
        progress.say(record["charts_error"])
    report.write_json(record, results / "results.json")
    report.write_markdown(record, results / "results.md")
    progress.say(f"wrote {results / 'results.md'}, results.json, {', '.join(record['charts']) or 'no charts'}")


def _point_latest_at(results: Path) -> None:
    latest = results.parent / "latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(results.name)
    except OSError:
        pass
