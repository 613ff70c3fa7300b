"""The `fastproxy` command: run, check, demo, iptables, inject, injector, ca init|issue|serve
(docs/operations.md).

Exit codes: 0 after a clean shutdown, 2 for a configuration or usage error, 1 for a
runtime failure. Expected errors are one clear line each, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from fastproxy import __version__
from fastproxy.intercept import iptables

DEFAULT_CONFIG = "config/fastproxy.toml"


def _config_path(arg: str | None) -> str:
    return arg or os.environ.get("FASTPROXY_CONFIG") or DEFAULT_CONFIG


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("FASTPROXY_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s fastproxy[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _load(path: str):
    from fastproxy.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        raise SystemExit(2) from None


def cmd_check(args: argparse.Namespace) -> int:
    """Like `nginx -t`: the configuration and the files it names, but no binding."""
    from fastproxy.config import summary
    from fastproxy.runtime.launch import check_files
    from fastproxy.runtime.worker import StartError

    config = _load(_config_path(args.config))
    try:
        check_files(config)
    except StartError as exc:
        print(f"fastproxy: {exc}", file=sys.stderr)
        return 1
    print(f"ok: {summary(config)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fastproxy.runtime import run
    from fastproxy.runtime.sockets import BindError

    config = _load(_config_path(args.config))
    _setup_logging()
    from fastproxy.runtime.worker import StartError

    try:
        return run(config, workers=args.workers)
    except (BindError, StartError) as exc:
        print(f"fastproxy: {exc}", file=sys.stderr)
        return 1


def cmd_demo(args: argparse.Namespace) -> int:
    from fastproxy.demo import main as demo_main

    _setup_logging()
    return demo_main(args)


def cmd_iptables(args: argparse.Namespace) -> int:
    capture = None if args.cleanup else iptables.Capture(
        proxy_uid=args.proxy_uid, inbound_port=args.inbound_port, outbound_port=args.outbound_port,
        exclude_inbound_ports=args.exclude_inbound_ports, exclude_outbound_ports=args.exclude_outbound_ports,
        exclude_outbound_cidrs=args.exclude_outbound_cidrs)
    try:
        shown = iptables.apply(capture, args.dry_run)
    except iptables.InterceptError as exc:
        print(f"fastproxy: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(shown, end="")
    else:
        print("fastproxy: traffic capture " + ("removed" if args.cleanup else
              f"in place: outbound TCP -> :{args.outbound_port}, inbound TCP -> :{args.inbound_port}"))
    return 0


def cmd_inject(args: argparse.Namespace) -> int:
    from fastproxy.kube.inject import InjectError, Injection, inject

    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    except OSError as exc:
        print(f"fastproxy: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        out, count = inject(text, Injection(args.image, args.config_map, args.trust_domain))
    except InjectError as exc:
        print(f"fastproxy: {args.file}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(out)
    print(f"fastproxy: {count} pod template(s) injected", file=sys.stderr)
    return 0


def cmd_injector(args: argparse.Namespace) -> int:
    from fastproxy.kube.injector import main as injector_main

    return injector_main(args)


def _ports(text: str) -> list[int]:
    """An argparse type: a comma-separated list of TCP ports."""
    ports = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise argparse.ArgumentTypeError(f"{part!r} is not a port (1-65535)")
        ports.append(int(part))
    return ports


def _cidrs(text: str) -> list[str]:
    """An argparse type: a comma-separated list of IPv4/IPv6 addresses or CIDRs."""
    import ipaddress

    cidrs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            cidrs.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not an address or CIDR") from None
    return cidrs


def cmd_ca_init(args: argparse.Namespace) -> int:
    from fastproxy.identity.cli import cmd_ca_init as run_init

    return run_init(args)


def cmd_ca_issue(args: argparse.Namespace) -> int:
    from fastproxy.identity.cli import cmd_ca_issue as run_issue

    return run_issue(args)


def cmd_ca_serve(args: argparse.Namespace) -> int:
    from fastproxy.identity.ca_server import main as serve_main

    return serve_main(args)


def _at_least(minimum: int):
    """An argparse type: an integer >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, not {text!r}")
        return value
    return parse


_positive = _at_least(1)
_nonnegative = _at_least(0)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text!r}")
    return value


def _base_port(text: str) -> int:
    from fastproxy.demo import PORT_SPAN

    value = _positive(text)
    if value + PORT_SPAN - 1 > 65535:
        raise argparse.ArgumentTypeError(f"must be at most {65536 - PORT_SPAN} (the demo uses "
                                         f"{PORT_SPAN} ports from it), not {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastproxy", description="a service-mesh sidecar proxy")
    p.add_argument("--version", action="version", version=f"fastproxy {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the sidecar")
    run.add_argument("-c", "--config", help=f"TOML file (default: $FASTPROXY_CONFIG, then {DEFAULT_CONFIG})")
    run.add_argument("--workers", type=_positive, help="worker processes (overrides [proxy] workers)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a configuration file without binding anything")
    check.add_argument("-c", "--config", help="TOML file")
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser("demo", help="a whole mesh on loopback: sidecars, mTLS, a split, a circuit breaker",
                          description="Starts demo services, each with its own sidecar and certificate, "
                          "sends them load and shows live what the mesh does. Ctrl-C stops everything.")
    demo.add_argument("--base-port", type=_base_port, default=15000, metavar="N",
                      help="the demo uses the 15 ports N..N+14 on 127.0.0.1 (default 15000)")
    demo.add_argument("--duration", type=_seconds, default=0, metavar="SECONDS",
                      help="stop after this many seconds of traffic (default: until Ctrl-C)")
    demo.add_argument("--rate", type=_nonnegative, default=100, metavar="N",
                      help="load generator requests per second to the frontend (default 100; 0: none)")
    demo.add_argument("--ratings-healthy", type=_seconds, default=15, metavar="SECONDS",
                      help="ratings answers well this long ... (default 15)")
    demo.add_argument("--ratings-failing", type=_seconds, default=12, metavar="SECONDS",
                      help="... then fails with 500s this long, repeating (default 12; 0: never fails)")
    demo.add_argument("--plain", action="store_true",
                      help="print plain lines instead of a refreshing screen (the default when "
                      "stdout is not a terminal)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the temporary directory (CA, certificates, configs, logs) at exit")
    demo.set_defaults(func=cmd_demo)

    ipt = sub.add_parser("iptables", help="capture this network namespace's TCP traffic for the sidecar",
                         description="The pod's init step: nat rules, through iptables-restore and "
                         "ip6tables-restore, that redirect outbound TCP (except the proxy's own uid) to "
                         "the outbound listener and inbound TCP to the inbound listener.")
    ipt.add_argument("--proxy-uid", type=_nonnegative, default=iptables.PROXY_UID, metavar="UID",
                     help=f"the sidecar's uid: its own connections are not captured (default {iptables.PROXY_UID})")
    ipt.add_argument("--inbound-port", type=_positive, default=iptables.INBOUND_PORT, metavar="PORT",
                     help=f"the inbound listener (default {iptables.INBOUND_PORT})")
    ipt.add_argument("--outbound-port", type=_positive, default=iptables.OUTBOUND_PORT, metavar="PORT",
                     help=f"the outbound listener (default {iptables.OUTBOUND_PORT})")
    ipt.add_argument("--exclude-inbound-ports", type=_ports, default=[], metavar="P,P",
                     help="inbound ports not captured (e.g. the admin port)")
    ipt.add_argument("--exclude-outbound-ports", type=_ports, default=[], metavar="P,P",
                     help="outbound destination ports not captured")
    ipt.add_argument("--exclude-outbound-cidrs", type=_cidrs, default=[], metavar="CIDR,CIDR",
                     help="outbound destinations not captured")
    ipt.add_argument("--dry-run", action="store_true", help="print the iptables-restore input, change nothing")
    ipt.add_argument("--cleanup", action="store_true", help="remove exactly the rules this command added")
    ipt.set_defaults(func=cmd_iptables)

    inj = sub.add_parser("inject", help="add the sidecar to the Pod templates of Kubernetes manifests",
                         description="Kubernetes YAML in (a file or stdin; several documents, Lists), "
                         "the same YAML out with the fastproxy sidecar in every Pod template.")
    inj.add_argument("-f", "--file", default="-", help="the manifests (default: stdin)")
    inj.add_argument("--image", default="fastproxy:latest", help="the sidecar image (default fastproxy:latest; "
                     "annotation fastproxy.io/image overrides it per pod)")
    inj.add_argument("--config-map", default="fastproxy", metavar="NAME",
                     help="the ConfigMap holding fastproxy.toml (default fastproxy)")
    inj.add_argument("--trust-domain", default="mesh.local", metavar="TD",
                     help="the mesh CA's trust domain: each sidecar's id is spiffe://TD/ns/NAMESPACE/sa/"
                     "SERVICE_ACCOUNT (default mesh.local)")
    inj.set_defaults(func=cmd_inject)

    injector = sub.add_parser("injector", help="the sidecar injector: a Kubernetes mutating admission webhook",
                              description="Answers the API server's AdmissionReviews for Pods with a JSONPatch "
                              "that adds the sidecar, as `fastproxy inject` would.")
    injector.add_argument("-c", "--config", required=True, help="the [injector] TOML file")
    injector.set_defaults(func=cmd_injector)

    ca = sub.add_parser("ca", help="the mesh certificate authority: init, issue, serve")
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="CA_COMMAND", required=True)
    ca_init = ca_sub.add_parser("init", help="create a mesh root CA (DIR/ca.pem, DIR/ca-key.pem)")
    ca_init.add_argument("dir", metavar="DIR", help="directory for ca.pem and ca-key.pem (created if needed)")
    ca_init.add_argument("--trust-domain", default="mesh.local", metavar="TD", help="trust domain (default mesh.local)")
    ca_init.set_defaults(func=cmd_ca_init)
    ca_issue = ca_sub.add_parser("issue", help="issue a workload certificate (X509-SVID), or a server "
                                 "certificate, from the CA in DIR")
    ca_issue.add_argument("dir", metavar="DIR", help="the CA directory (made by `ca init`)")
    issued = ca_issue.add_mutually_exclusive_group(required=True)
    issued.add_argument("--id", metavar="SPIFFE_ID", help="the workload's id, spiffe://TD/path")
    issued.add_argument("--dns", action="append", metavar="NAME",
                        help="instead: a TLS server certificate for this DNS name or address (repeatable), "
                        "e.g. the injector's Service name")
    ca_issue.add_argument("--out", required=True, metavar="OUTDIR", help="writes OUTDIR/cert.pem, key.pem, trust.pem")
    ca_issue.add_argument("--ttl", default="24h", help="lifetime, e.g. 1h or 24h (default 24h)")
    ca_issue.set_defaults(func=cmd_ca_issue)
    ca_serve = ca_sub.add_parser("serve", help="run the identity service that signs workload CSRs")
    ca_serve.add_argument("-c", "--config", default="config/ca.toml", help="TOML file (default config/ca.toml)")
    ca_serve.set_defaults(func=cmd_ca_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
