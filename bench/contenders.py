"""The contenders: fastproxy, Envoy, nginx, HAProxy, and `direct` (no proxy at all).

For a scenario each contender turns into a `Deployment`: the URL the load generator
targets and the proxy processes to start (none for direct, two for the mTLS hop: an
"inbound" sidecar in front of the app and an "outbound" one the client talks to). The
configurations come from bench/templates/ and do the same job everywhere: one worker or
thread, upstream keep-alive, no access log, the same certificates. fastproxy runs with
its observability off (no request metrics, no trace headers, no access log); its variants
`fastproxy-observe` and `fastproxy-accesslog` (scenario h1-observe) turn it on, so what
it costs is measured in the same run.

A contender that cannot run a scenario raises `NotAvailable` with the reason. For
fastproxy a missing feature is found out by trying, never assumed, so the harness notices
the day it lands: `fastproxy check` refusing the scenario's config, the process failing to
start, or the deployment failing bench.verify (e.g. a `tls` listener that does not speak
TLS) - reported as "not available yet: fastproxy has no tls listener (issue 4)" once
fastproxy is known to work on plain HTTP.
Must not start processes or measure anything (that is bench.runner).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.backend import Backend
from bench.certs import BenchCerts
from bench.configs import write_config
from bench.processes import free_port, run_to_completion
from bench.scenarios import Scenario
from bench.tools import REPO_ROOT, Tool, find_tool


class NotAvailable(Exception):
    """This contender cannot run this scenario; the message says why."""


@dataclass
class DeployContext:
    workdir: Path
    backend: Backend
    certs: BenchCerts | None
    grpc_backend: Backend | None = None     # only when a gRPC scenario runs


def _upstream(scenario: Scenario, ctx: DeployContext) -> str:
    """The address the proxy forwards to: the gRPC backend for gRPC, else the HTTP/1.1 one."""
    return ctx.grpc_backend.address if scenario.protocol == "grpc" else ctx.backend.address


@dataclass
class ProxyProcess:
    name: str            # unique within the run, e.g. "nginx-tls" or "fastproxy-mtls-2hop-outbound"
    cmd: list[str]
    port: int            # ready once this port accepts a connection
    config: Path | None
    ready_timeout_s: float = 10.0
    cwd: Path | None = None


@dataclass
class Deployment:
    url: str
    port: int
    processes: list[ProxyProcess] = field(default_factory=list)   # in start order
    note: str = ""
    inbound_port: int | None = None     # mtls-2hop: the sidecar in front of the app (mTLS server)
    negotiated: str = ""                # TLS: the protocol and cipher the check before measuring got


def _hops(scenario: Scenario) -> list[str]:
    """Names of the proxy processes a scenario needs, app side first."""
    return ["inbound", "outbound"] if scenario.topology == "mtls-2hop" else [""]


class Contender:
    name = ""
    is_proxy = True           # False for direct: no proxy cost to measure
    protocols = ("h1", "h2c", "grpc")   # the client protocols of the scenarios it takes part in
    # what the two sidecars of mtls-2hop check of each other, for the report
    peer_checks = ""

    def problem(self) -> str | None:
        """Why this contender cannot run at all on this machine, or None."""
        return None

    def version(self) -> str | None:
        return None

    def deploy(self, scenario: Scenario, ctx: DeployContext) -> Deployment:
        raise NotImplementedError

    def failure(self, scenario: Scenario, reason: str) -> tuple[str, str]:
        """(status, message) for the report when this contender fails to start, to pass the
        check before measuring, or later."""
        return "failed", reason

    def measured(self, scenario: Scenario) -> None:
        """A round of `scenario` was measured with this contender's processes still running."""


class ToolContender(Contender):
    """A contender that is a binary found on this machine (bench.tools)."""

    def __init__(self, tool: Tool):
        self.tool = tool

    def problem(self) -> str | None:
        return None if self.tool.found else self.tool.missing_message()

    def version(self) -> str | None:
        return self.tool.version


def _chained(scenario: Scenario, processes: list[ProxyProcess], note: str = "") -> Deployment:
    """The deployment of proxy processes chained app side first: the client talks to the last."""
    entry = processes[-1].port
    return Deployment(url=f"{scenario.client_scheme}://127.0.0.1:{entry}{scenario.path}",
                      port=entry, processes=processes, note=note,
                      inbound_port=processes[0].port if scenario.topology == "mtls-2hop" else None)


class Direct(Contender):
    name = "direct"
    is_proxy = False
    protocols = ("h1", "grpc")   # HTTP/1.1 to the HTTP/1.1 backend, gRPC to the gRPC one

    def version(self) -> str:
        return "no proxy: the load generator talks to the backend"

    def deploy(self, scenario: Scenario, ctx: DeployContext) -> Deployment:
        note = ""
        if scenario.topology != "plain":
            note = "plain HTTP straight to the backend (no proxy, no TLS): the floor for the others"
        upstream = _upstream(scenario, ctx)
        return Deployment(url=f"http://{upstream}{scenario.path}", port=int(upstream.rpartition(":")[2]),
                          note=note)


class Nginx(ToolContender):
    name = "nginx"
    peer_checks = ("the outbound checks the server certificate's chain and DNS name, the inbound "
                   "requires a client certificate from the CA; nginx cannot check a spiffe:// URI SAN")

    def deploy(self, scenario: Scenario, ctx: DeployContext) -> Deployment:
        certs, upstream, processes = ctx.certs, _upstream(scenario, ctx), []
        for hop in _hops(scenario):
            name = "-".join(filter(None, ["nginx", scenario.name, hop]))
            port = free_port()
            listen_tls = server_tls = upstream_tls = ""
            scheme = "http"
            if scenario.http2:
                listen_tls = " http2"     # cleartext HTTP/2 with prior knowledge
            if scenario.topology == "tls" or hop == "inbound":
                listen_tls = " ssl"
                server_tls = (f"        ssl_certificate {certs.server.cert};\n"
                              f"        ssl_certificate_key {certs.server.key};\n"
                              f"        ssl_session_cache shared:{name.replace('-', '_')}:10m;\n"
                              f"        ssl_protocols TLSv1.3;")
                if hop == "inbound":
                    server_tls += (f"\n        ssl_client_certificate {certs.ca};\n"
                                   f"        ssl_verify_client on;")
            if hop == "outbound":
                scheme = "https"
                upstream_tls = (f"            proxy_ssl_certificate {certs.client.cert};\n"
                                f"            proxy_ssl_certificate_key {certs.client.key};\n"
                                f"            proxy_ssl_trusted_certificate {certs.ca};\n"
                                f"            proxy_ssl_verify on;\n"
                                f"            proxy_ssl_name {certs.server.dns_name};\n"
                                f"            proxy_ssl_session_reuse on;\n"
                                f"            proxy_ssl_protocols TLSv1.3;")
            if scenario.protocol == "grpc":
                location = "grpc_pass grpc://next_hop;"
            else:
                location = (f"proxy_pass {scheme}://next_hop;\n"
                            "            proxy_http_version 1.1;\n"
                            '            proxy_set_header Connection "";\n'
                            "            proxy_max_temp_file_size 0;    # stream large bodies through "
                            "memory buffers, never disk")
            (ctx.workdir / f"{name}-tmp").mkdir(exist_ok=True)
            config = write_config(
                ctx.workdir / f"{name}.conf", "nginx-proxy.conf", workdir=ctx.workdir, name=name,
                listen=f"127.0.0.1:{port}", listen_tls=listen_tls, server_tls=server_tls,
                upstream=upstream, location=location, upstream_tls=upstream_tls)
            cmd = [self.tool.path, "-p", str(ctx.workdir), "-e", str(ctx.workdir / f"{name}.error.log"),
                   "-c", str(config)]
            processes.append(ProxyProcess(name, cmd, port, config))
            upstream = f"127.0.0.1:{port}"
        return _chained(scenario, processes)


class Haproxy(ToolContender):
    name = "haproxy"
    peer_checks = ("the outbound checks the server certificate's chain and DNS name (verifyhost), "
                   "the inbound requires a client certificate from the CA; no spiffe:// URI SAN check")

    def deploy(self, scenario: Scenario, ctx: DeployContext) -> Deployment:
        certs, upstream, processes = ctx.certs, _upstream(scenario, ctx), []
        for hop in _hops(scenario):
            name = "-".join(filter(None, ["haproxy", scenario.name, hop]))
            port = free_port()
            bind_tls = server_tls = ""
            if scenario.http2:
                bind_tls = " proto h2"
            if scenario.protocol == "grpc":
                server_tls = " proto h2"
            if scenario.topology == "tls":
                bind_tls = f" ssl crt {certs.server.combined} ssl-min-ver TLSv1.3"
            elif hop == "inbound":
                bind_tls = (f" ssl crt {certs.server.combined} ca-file {certs.ca} verify required"
                            f" ssl-min-ver TLSv1.3")
            elif hop == "outbound":
                server_tls = (f" ssl crt {certs.client.combined} ca-file {certs.ca} verify required"
                              f" verifyhost {certs.server.dns_name} ssl-min-ver TLSv1.3")
            config = write_config(
                ctx.workdir / f"{name}.cfg", "haproxy.cfg", workdir=ctx.workdir, name=name,
                listen=f"127.0.0.1:{port}", bind_tls=bind_tls, upstream=upstream, server_tls=server_tls)
            cmd = [self.tool.path, "-db", "-f", str(config)]
            processes.append(ProxyProcess(name, cmd, port, config))
            upstream = f"127.0.0.1:{port}"
        return _chained(scenario, processes)


class Envoy(ToolContender):
    """Envoy, the sidecar of Istio: one worker thread (`--concurrency 1`), the HTTP
    connection manager and the router, upstream keep-alive, no access log, its stats as
    shipped. In the mTLS hop both sides check the peer's spiffe:// URI SAN, as fastproxy does."""
    name = "envoy"
    peer_checks = "both sidecars check the peer certificate's exact spiffe:// URI SAN"

    def deploy(self, scenario: Scenario, ctx: DeployContext) -> Deployment:
        certs, upstream, processes = ctx.certs, _upstream(scenario, ctx), []
        for hop in _hops(scenario):
            name = "-".join(filter(None, ["envoy", scenario.name, hop]))
            port = free_port()
            listener_tls = cluster_tls = ""
            if scenario.topology == "tls":
                listener_tls = _envoy_tls("downstream", certs.server.cert, certs.server.key)
            elif hop == "inbound":
                listener_tls = _envoy_tls("downstream", certs.server.cert, certs.server.key, certs.ca,
                                          peer=certs.client.spiffe_id)
            elif hop == "outbound":
                cluster_tls = _envoy_tls("upstream", certs.client.cert, certs.client.key, certs.ca,
                                         peer=certs.server.spiffe_id)
            host, _, upstream_port = upstream.rpartition(":")
            config = write_config(ctx.workdir / f"{name}.yaml", "envoy.yaml", port=port,
                                  listener_tls=_indent(listener_tls, 6),
                                  cluster_protocol=ENVOY_HTTP2_UPSTREAM if scenario.protocol == "grpc" else "",
                                  cluster_tls=_indent(cluster_tls, 4), upstream_host=host,
                                  upstream_port=upstream_port)
            cmd = [self.tool.path, "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
                   "--log-level", "warn"]
            processes.append(ProxyProcess(name, cmd, port, config, ready_timeout_s=20))
            upstream = f"127.0.0.1:{port}"
        return _chained(scenario, processes)


class Nghttpx(ToolContender):
    """nghttpx, nghttp2's reverse proxy - the reference implementation of HTTP/2 - in the
    HTTP/2 scenarios: one worker, cleartext frontend, the HTTP/1.1 backend behind it."""
    name = "nghttpx"
    protocols = ("h2c", "grpc")

    def deploy(self, scenario: Scenario, ctx: DeployContext) -> Deployment:
        if scenario.topology != "plain":
            raise NotAvailable("nghttpx is measured in the cleartext HTTP/2 scenarios only")
        name, port = f"nghttpx-{scenario.name}", free_port()
        host, _, upstream_port = _upstream(scenario, ctx).rpartition(":")
        proto = ";;proto=h2" if scenario.protocol == "grpc" else ""
        cmd = [self.tool.path, "--conf=/dev/null", f"--frontend=127.0.0.1,{port};no-tls",
               f"--backend={host},{upstream_port}{proto}", "--workers=1", "--no-server-push",
               "--accesslog-file=/dev/null", f"--errorlog-file={ctx.workdir / (name + '.error.log')}",
               f"--pid-file={ctx.workdir / (name + '.pid')}", "--backend-keep-alive-timeout=300s"]
        return _chained(scenario, [ProxyProcess(name, cmd, port, None)])


ENVOY_HTTP2_UPSTREAM = """\
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }"""


def _envoy_tls(side: str, cert: Path, key: Path, ca: Path | None = None, peer: str | None = None) -> str:
    """An Envoy transport_socket: TLS 1.3 only; with `peer`, the other side must present a
    certificate from `ca` whose URI SAN is exactly `peer`."""
    kind = "DownstreamTlsContext" if side == "downstream" else "UpstreamTlsContext"
    lines = ["transport_socket:",
             "  name: envoy.transport_sockets.tls",
             "  typed_config:",
             f'    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{kind}']
    if side == "downstream" and peer:
        lines.append("    require_client_certificate: true")
    lines += ["    common_tls_context:",
              "      tls_params: { tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3 }",
              "      tls_certificates:",
              f"      - certificate_chain: {{ filename: {cert} }}",
              f"        private_key: {{ filename: {key} }}"]
    if peer:
        lines += ["      validation_context:",
                  f"        trusted_ca: {{ filename: {ca} }}",
                  "        match_typed_subject_alt_names:",
                  f'        - {{ san_type: URI, matcher: {{ exact: "{peer}" }} }}']
    return "\n".join(lines)


def _indent(block: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line if line else line for line in block.splitlines())


class Fastproxy(Contender):
    name = "fastproxy"
    peer_checks = ("both sidecars check the peer's SPIFFE id (the cluster's `peer`, the "
                   "listener's `allow`)")

    def __init__(self, workers: int = 1, python: str = sys.executable, observe: str = "off"):
        self.workers = workers
        self.python = python
        self.observe = observe          # "off" | "observe" | "accesslog"
        self._plain_check: tuple[bool, str] | None = None
        self._plain_worked = False       # a plain HTTP scenario was measured in this run
        self._ctx: DeployContext | None = None

    def variant(self, observe: str) -> "Fastproxy":
        """This contender with its observability turned on ("observe" or "accesslog"), or
        with every mesh feature ("mesh": a 90/10 split, breakers, outlier detection,
        metrics, trace propagation sampled at 0.01 and exported)."""
        other = Fastproxy(self.workers, self.python, observe)
        other.name = f"fastproxy-{observe}"
        return other

    def version(self) -> str | None:
        try:
            import fastproxy
            return f"fastproxy {fastproxy.__version__}"
        except Exception as exc:   # a broken checkout must not stop the run
            return f"fastproxy (not importable: {exc})"

    def command(self, *args: str) -> list[str]:
        return [self.python, "-m", "fastproxy", *args]

    def check(self, config: Path) -> tuple[bool, str]:
        """`fastproxy check -c FILE`: (accepted, the first error line or summary)."""
        try:
            done = run_to_completion(self.command("check", "-c", str(config)), timeout=60, cwd=REPO_ROOT)
        except Exception as exc:
            return False, str(exc)
        lines = [l.strip() for l in (done.stderr + "\n" + done.stdout).splitlines() if l.strip()]
        if done.returncode == 0:
            return True, lines[0] if lines else "ok"
        errors = [l for l in lines if not l.startswith(("Traceback", "File ", "^"))]
        detail = errors[-1] if errors else f"exit code {done.returncode}"
        return False, f"exit code {done.returncode}: {detail}"

    def write_config(self, path: Path, listen: str, upstream: str, identity: str = "",
                     listener_tls: str = "", cluster_tls: str = "", traffic: bool = False,
                     observe: str = "off") -> Path:
        if traffic or observe == "mesh":
            routing = ('  [[listener.route]]\n'
                       '  split = [ { cluster = "next_hop", weight = 90 }, { cluster = "next_hop_b", weight = 10 } ]\n')
            for cluster in ("next_hop", "next_hop_b"):
                routing += (f'\n[cluster.{cluster}]\nendpoints = ["{upstream}"]\n{cluster_tls}\n'
                            f'  [cluster.{cluster}.circuit_breaker]\n  max_failures = 3\n'
                            f'  [cluster.{cluster}.outlier]\n  consecutive_failures = 5\n')
        else:
            routing = ('  [[listener.route]]\n  cluster = "next_hop"\n\n'
                       f'[cluster.next_hop]\nendpoints = ["{upstream}"]\n{cluster_tls}')
        if observe == "off":
            observe_keys = 'access_log = "off"\nmetrics = false\n\n[tracing]\npropagate = []\n'
        else:
            log = f'"{path.with_suffix(".access.log")}"' if observe == "accesslog" else '"off"'
            # the backend takes the spans (POST /v1/traces answers 200)
            observe_keys = (f'access_log = {log}\n\n[tracing]\nsample = 0.01\n'
                            f'export = "otlp+http://{self._ctx.backend.address}"\n')
        return write_config(path, "fastproxy.toml", workers=self.workers, listen=listen,
                            identity=identity, listener_tls=listener_tls, routing=routing,
                            observe=observe_keys)

    def plain_config_works(self, ctx: DeployContext) -> tuple[bool, str]:
        """Does fastproxy accept the simplest config at all? Tells "no TLS yet" from "broken"."""
        if self._plain_check is None:
            probe = self.write_config(ctx.workdir / "fastproxy-probe.toml", f"127.0.0.1:{free_port()}",
                                      ctx.backend.address)
            self._plain_check = self.check(probe)
        return self._plain_check

    def deploy(self, scenario: Scenario, ctx: DeployContext) -> Deployment:
        self._ctx = ctx
        certs, upstream, processes, note = ctx.certs, _upstream(scenario, ctx), [], ""
        for hop in _hops(scenario):
            name = "-".join(filter(None, [self.name, scenario.name, hop]))
            port = free_port()
            identity = listener_tls = cluster_tls = ""
            if scenario.topology == "tls" or hop == "inbound":
                identity = _identity_block(certs.server.spiffe_id, certs.server.cert, certs.server.key, certs.ca)
                listener_tls = 'tls = "mtls"' if hop == "inbound" else 'tls = "tls"'
            if hop == "outbound":
                identity = _identity_block(certs.client.spiffe_id, certs.client.cert, certs.client.key, certs.ca)
                cluster_tls = f'tls = "mtls"\npeer = "{certs.server.spiffe_id}"'
            elif scenario.protocol == "h2c":
                cluster_tls = 'protocol = "http1"'   # the backend speaks only HTTP/1.1
            config = self.write_config(ctx.workdir / f"{name}.toml", f"127.0.0.1:{port}", upstream,
                                       identity, listener_tls, cluster_tls, scenario.traffic,
                                       self.observe)
            accepted, detail = self.check(config)
            if not accepted:
                if self.plain_config_works(ctx)[0]:
                    raise NotAvailable(self._refusal(scenario, f"`fastproxy check` said {detail}"))
                # `check` refuses even a plain config, so it tells nothing about this
                # scenario: starting fastproxy is the real test.
                note = f"`fastproxy check` failed ({detail}); started it anyway"
            cmd = self.command("run", "-c", str(config), "--workers", str(self.workers))
            processes.append(ProxyProcess(name, cmd, port, config, ready_timeout_s=20, cwd=REPO_ROOT))
            upstream = f"127.0.0.1:{port}"
        return _chained(scenario, processes, note)

    def _refusal(self, scenario: Scenario, detail: str) -> str:
        if scenario.fastproxy_feature:
            return f"not available yet: fastproxy has no {scenario.fastproxy_feature} ({detail})"
        return f"fastproxy refused the config: {detail}"

    def measured(self, scenario: Scenario) -> None:
        if not scenario.fastproxy_feature:
            self._plain_worked = True

    def failure(self, scenario: Scenario, reason: str) -> tuple[str, str]:
        # Blame the missing feature only when fastproxy is known to work without it.
        if scenario.fastproxy_feature and self._ctx and (self._plain_worked or self.plain_config_works(self._ctx)[0]):
            return "not available", f"not available yet: fastproxy has no {scenario.fastproxy_feature} ({reason})"
        return "failed", reason


def _identity_block(spiffe_id: str, cert: Path, key: Path, trust: Path) -> str:
    return (f'\n[identity]\nid = "{spiffe_id}"\ncert = "{cert}"\nkey = "{key}"\ntrust = "{trust}"\n')


def all_contenders(tools: dict[str, Tool], fastproxy_workers: int) -> dict[str, Contender]:
    def tool(name: str) -> Tool:       # a caller may locate only the tools it needs
        return tools[name] if name in tools else find_tool(name)

    return {
        "direct": Direct(),
        "fastproxy": Fastproxy(fastproxy_workers),
        "envoy": Envoy(tool("envoy")),
        "nginx": Nginx(tool("nginx")),
        "haproxy": Haproxy(tool("haproxy")),
        "nghttpx": Nghttpx(tool("nghttpx")),
    }
