"""Shared fixtures for the whole test suite.

End-to-end fixtures (real processes, loopback only, every wait bounded):

  free_port()                      -> int, a free 127.0.0.1 port (never handed out twice)
  fastproxy(config, *, workers=None, args=(), wait=True, name=None, env=None, **values)
                                   -> ProxyProcess: config is TOML text (or a dict, written
                                      by support.configs.to_toml) with placeholders
                                      (${listen:NAME}, ${port:NAME}, ${KEY}=values[KEY]);
                                      .port(listener) .url(path) .proc .pids() .workers()
                                      .rss() .stdout() .stderr() .config_path .check_exit
                                      Teardown: SIGTERM, bounded wait, SIGKILL if needed;
                                      asserts exit code 0 (unless .check_exit = False) and
                                      that no process of its group is left.
  module_fastproxy                 the same launcher, shared by a test module
  raw_upstream(script=None)        -> RawUpstream: records every byte (.connections(),
                                      .requests(), .snapshot()/.bytes_since(), .addr, .port)
  app_upstream(names=("app",))     -> AppUpstream: the aiohttp app (.addr(name), .port,
                                      .progress/.seen/.release/.received control calls)
  shared_app                       -> one AppUpstream for the whole session (use unique tags)

The helpers live in tests/support/ (procs, rawhttp, upstreams, fastproxy, configs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.configs import to_toml  # noqa: E402
from support.fastproxy import ProxyProcess, render  # noqa: E402
from support.procs import free_port as _free_port  # noqa: E402
from support.upstreams import AppUpstream, GrpcUpstream, RawUpstream  # noqa: E402


@pytest.fixture
def free_port():
    return _free_port


class ProxyLauncher:
    """Starts fastproxy processes into one directory and stops them all at the end."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.started: list[ProxyProcess] = []

    def __call__(self, config: str | dict, *, workers: int | None = None, args: tuple = (),
                 wait: bool = True, name: str | None = None, nofile: int | None = None,
                 env: dict | None = None, **values) -> ProxyProcess:
        if isinstance(config, dict):
            config = to_toml(config)
        text, _ = render(config, **values)
        proxy = ProxyProcess(self.workdir, text, name=name or f"fastproxy{len(self.started)}",
                             workers=workers, extra_args=tuple(args), wait=False,
                             nofile=nofile, env=env)
        self.started.append(proxy)
        if wait:
            proxy.wait_ready()
        return proxy

    def finish(self, node=None) -> list[str]:
        problems = []
        for proxy in self.started:
            rc, was_running, leftovers = proxy.stop()
            if leftovers:
                problems.append(f"{proxy.name}: processes left running after the supervisor "
                                f"exited: {leftovers}")
            if was_running and proxy.check_exit and rc != 0:
                problems.append(f"{proxy.name}: SIGTERM exit code {rc} (expected 0)")
            if node is not None:
                node.add_report_section("teardown", f"{proxy.name} stderr", proxy.stderr()[-6000:])
        return problems


@pytest.fixture
def fastproxy(tmp_path, request):
    launcher = ProxyLauncher(tmp_path)
    yield launcher
    problems = launcher.finish(request.node)
    assert not problems, "; ".join(problems)


@pytest.fixture(scope="module")
def module_fastproxy(tmp_path_factory, request):
    """Like `fastproxy`, for a proxy shared by a whole test module."""
    launcher = ProxyLauncher(tmp_path_factory.mktemp("fastproxy"))
    yield launcher
    problems = launcher.finish()
    assert not problems, "; ".join(problems)


class _Upstreams:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.started = []

    def raw(self, script: dict | None = None) -> RawUpstream:
        up = RawUpstream(self.workdir, script, name=f"raw{len(self.started)}")
        self.started.append(up)
        return up

    def app(self, names=("app",)) -> AppUpstream:
        up = AppUpstream(self.workdir, names, tag=f"app{len(self.started)}")
        self.started.append(up)
        return up

    def grpc(self) -> GrpcUpstream:
        up = GrpcUpstream(self.workdir, tag=f"grpc{len(self.started)}")
        self.started.append(up)
        return up

    def stop(self):
        for up in self.started:
            up.stop()


@pytest.fixture
def upstreams(tmp_path):
    ups = _Upstreams(tmp_path)
    yield ups
    ups.stop()


@pytest.fixture(scope="module")
def module_upstreams(tmp_path_factory):
    ups = _Upstreams(tmp_path_factory.mktemp("upstreams"))
    yield ups
    ups.stop()


@pytest.fixture
def raw_upstream(upstreams):
    return upstreams.raw


@pytest.fixture
def app_upstream(upstreams):
    return upstreams.app


@pytest.fixture(scope="session")
def shared_app(tmp_path_factory):
    app = AppUpstream(tmp_path_factory.mktemp("shared-app"))
    yield app
    app.stop()
