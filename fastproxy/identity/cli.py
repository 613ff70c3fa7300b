"""`fastproxy ca init` and `fastproxy ca issue` (docs/operations.md); the argparse wiring is in
fastproxy/cli.py, which imports this module only when a `ca` command runs.

Exit codes: 0 on success; 2 for a usage error (invalid trust domain, SPIFFE id or ttl, an
id outside the CA's trust domain); 1 for a runtime failure (a CA that already exists, a
missing or unreadable CA, a file that cannot be written). One line on stderr, no traceback.
"""
from __future__ import annotations

import argparse
import sys

from fastproxy.identity.ca import CA, CAError, init_ca, issue_files, issue_server_files
from fastproxy.identity.spiffe import InvalidSpiffeId, parse_spiffe_id, parse_trust_domain


def _fail(message: str, code: int) -> int:
    print(f"fastproxy: {message}", file=sys.stderr)
    return code


def cmd_ca_init(args: argparse.Namespace) -> int:
    try:
        trust_domain = parse_trust_domain(args.trust_domain)
    except InvalidSpiffeId as exc:
        return _fail(f"--trust-domain: {exc}", 2)
    try:
        ca = init_ca(args.dir, trust_domain)
    except CAError as exc:
        return _fail(str(exc), 1)
    print(
        f"created CA for trust domain {ca.trust_domain}: "
        f"{ca.path / 'ca.pem'}, {ca.path / 'ca-key.pem'} (keep the key secret)"
    )
    return 0


def cmd_ca_issue(args: argparse.Namespace) -> int:
    from fastproxy.config import InvalidValue, parse_duration

    try:
        ttl = parse_duration(args.ttl)
    except InvalidValue as exc:
        return _fail(f"--ttl: {exc}", 2)
    if ttl <= 0:
        return _fail("--ttl: must be longer than 0", 2)
    if args.dns:
        return _issue_server(args, ttl)
    try:
        parsed = parse_spiffe_id(args.id)
    except InvalidSpiffeId as exc:
        return _fail(f"--id: {exc}", 2)
    if parsed.is_trust_domain:
        return _fail(f"--id: {args.id!r} names a trust domain, not a workload: add a path", 2)
    try:
        ca = CA.load(args.dir)
    except CAError as exc:
        return _fail(str(exc), 1)
    if parsed.trust_domain != ca.trust_domain:
        return _fail(
            f"--id: {args.id!r} is outside the CA's trust domain {ca.trust_domain!r}", 2
        )
    try:
        cert = issue_files(ca, str(parsed), args.out, ttl)
    except CAError as exc:
        return _fail(str(exc), 1)
    _issued(str(parsed), cert, args.out)
    return 0


def _issue_server(args: argparse.Namespace, ttl: float) -> int:
    """`ca issue --dns NAME ...`: a TLS server certificate (the injector's)."""
    try:
        ca = CA.load(args.dir)
        cert = issue_server_files(ca, args.dns, args.out, ttl)
    except CAError as exc:
        return _fail(str(exc), 1)
    _issued("server " + ",".join(args.dns), cert, args.out)
    return 0


def _issued(what: str, cert, out: str) -> None:
    valid_until = cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"issued {what} (serial {cert.serial_number:x}, valid until {valid_until}): "
          f"{out}/cert.pem, {out}/key.pem, {out}/trust.pem")
