"""`fastproxy ca serve`: the identity service that signs workload CSRs (docs/identity.md).

The [ca] file (`fastproxy ca serve -c FILE`, default config/ca.toml; validated by
`fastproxy.config.load_ca`, errors exit 2)::

    [ca]
    dir = "certs/ca"            # made by `fastproxy ca init` (ca.pem, ca-key.pem); required
    bind = "127.0.0.1:8443"     # HTTPS address; required
    ttl = "24h"                 # lifetime of issued certificates; default "24h"
    server_names = ["fastproxy-ca.fastproxy-system.svc"]   # optional: more names for its
                                # own certificate (see below)

    [[ca.token]]                # one or more (or none, with [ca.kubernetes])
    token = "..."               # the bearer secret inline, or
    # token_file = "secrets/web.token"   # read once at start, surrounding whitespace stripped
    ids = ["spiffe://mesh.local/ns/default/sa/web", "spiffe://mesh.local/ns/jobs/*"]
                                # exact ids, or "spiffe://TD/prefix/*" for any id under prefix

    [ca.kubernetes]             # optional: projected service-account tokens too
    jwks = "cluster-jwks.json"  # the cluster issuer's keys; issuer = "..." optional

Relative paths are relative to the current directory. Exactly one of `token` /
`token_file` per entry; two entries may not share a secret (checked at start, also for
token files). Tokens never appear in logs: an entry is named by its key path, e.g.
`ca.token[1]`.

The server's own certificate is issued from the same CA at start (SANs: `server_names`
(say the Service's DNS name in Kubernetes), the bind host unless it is a wildcard address,
127.0.0.1, ::1, localhost, plus this machine's host name for a wildcard bind), so clients verify it with the CA certificate (`ca_trust`). It is
re-issued well before it expires.

API (HTTP/1.1 over TLS, h11):

    POST /v1/sign
    Authorization: Bearer TOKEN
    Content-Type: application/pkcs10      (not checked)
    <PEM certificate signing request>

    200  application/x-pem-file: the new certificate then the CA certificate (leaf first),
         lifetime `ttl`, the public key and the single URI SAN taken from the CSR
    400  bad_request: the CSR does not parse, its signature is wrong, or it does not carry
         exactly one URI SAN with a spiffe:// id (other SAN types are ignored; the
         certificate only ever carries the SPIFFE id), or its key type is not accepted
    401  unauthorized: no bearer token or an unknown one
    403  forbidden: the id is not a valid SPIFFE id, is outside the CA's trust domain, or
         is not allowed for the token
    404  not_found (any other path), 405 method_not_allowed (not POST), 413
         payload_too_large (body over 64 KiB), 431 header_too_large (head over 8 KiB),
         408 request_timeout (request not complete within 10 s), 400/501 for malformed
         HTTP

Errors carry `fastproxy-error: REASON` and a one-line body `fastproxy: REASON: DETAIL`;
any response other than 200 closes the connection. Every decision is one log line:

    ... INFO ca: sign token=ca.token[0] id=spiffe://mesh.local/ns/default/sa/web
        decision=issued status=200 serial=5f3a... not_after=2026-...Z peer=127.0.0.1:50312

SIGTERM/SIGINT stop it with exit 0; an address that cannot be bound exits 1 with one line
naming it; configuration problems (including an unreadable CA or token file) exit 2.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
import ssl
import sys
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fastproxy import https_endpoint
from fastproxy.config import ConfigError, load_ca
from fastproxy.https_endpoint import detail, quote
from fastproxy.identity.ca import CA, CAError
from fastproxy.identity.service_accounts import ServiceAccountError, ServiceAccounts
from fastproxy.identity.spiffe import InvalidSpiffeId, id_allowed, parse_spiffe_id
from fastproxy.identity.tls import load_chain

__all__ = ["main", "Signer", "Decision", "SignToken", "read_tokens", "MAX_BODY", "serve"]

log = logging.getLogger("fastproxy.ca")

SIGN_PATH = "/v1/sign"
MAX_BODY = 64 * 1024
SERVER_CERT_TTL = 7 * 86400.0  # the server's own certificate ...
SERVER_CERT_RENEW = 86400.0    # ... is re-issued every day
DEFAULT_CONFIG = "config/ca.toml"


# ---------------------------------------------------------------------------------------
# Signing decisions (no I/O)


@dataclass(frozen=True, slots=True)
class SignToken:
    """A bearer secret, the ids it may obtain, and its name for logs (`ca.token[N]`)."""

    name: str
    secret: bytes
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    status: int
    reason: str              # "issued" or the error reason (`fastproxy-error`)
    detail: str = ""
    body: bytes = b""
    token: str = "-"
    id: str = "-"
    serial: str = "-"
    not_after: str = "-"


def _accepted_key(key) -> str | None:
    """None when the public key type is acceptable for an SVID, else why not."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
            return f"EC curve {key.curve.name} is not accepted (use P-256, P-384 or P-521)"
        return None
    if isinstance(key, rsa.RSAPublicKey):
        return None if key.key_size >= 2048 else f"RSA key of {key.key_size} bits is too small (>= 2048)"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return None
    return f"key type {type(key).__name__} is not accepted"


class Signer:
    """Turns (Authorization header, CSR body) into a `Decision`; signs with `ca`. The
    handler of the HTTPS endpoint (fastproxy.https_endpoint)."""

    path = SIGN_PATH
    name = "fastproxy-ca"
    max_body = MAX_BODY
    content_type = "application/x-pem-file"

    def __init__(self, ca, tokens: tuple[SignToken, ...] | list[SignToken], ttl: float,
                 service_accounts=None) -> None:
        self.ca = ca
        self.tokens = tuple(tokens)
        self.service_accounts = service_accounts   # ServiceAccounts, with [ca.kubernetes]
        self.ttl = float(ttl)
        self.chain_tail = ca.cert.public_bytes(serialization.Encoding.PEM)

    def find_token(self, authorization: str | None) -> SignToken | None:
        if not authorization:
            return None
        scheme, _, secret = authorization.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            return None
        presented = secret.encode("latin-1", "replace")
        found = None
        for token in self.tokens:  # no early exit: the time taken does not depend on which
            if hmac.compare_digest(presented, token.secret) and found is None:
                found = token
        return found

    def authorize(self, authorization: str | None) -> Decision | SignToken:
        token = self.find_token(authorization)
        secret = (authorization or "").strip().partition(" ")[2].strip()
        if token is None and self.service_accounts is not None and secret.count(".") == 2:
            try:   # a projected service-account token: it may obtain its own id only
                name, spiffe_id = self.service_accounts.verify(secret)
            except ValueError as exc:
                return Decision(401, "unauthorized", f"service-account token refused: {exc}")
            return SignToken(name, b"", (spiffe_id,))
        if token is None:
            what = "unknown bearer token" if authorization else "missing bearer token (Authorization: Bearer TOKEN)"
            return Decision(401, "unauthorized", what)
        return token

    def sign(self, authorization: str | None, body: bytes) -> Decision:
        found = self.authorize(authorization)
        if isinstance(found, Decision):
            return found
        return self.sign_for(found, body)

    def refusal(self, status: int, reason: str, text: str, token: SignToken | None = None) -> Decision:
        return Decision(status, reason, text, token=token.name if token else "-")

    def log(self, decision: Decision, peer: str) -> None:
        level = logging.INFO if decision.status in (200, 401, 403) else logging.WARNING
        line = (f"ca: sign token={decision.token} id={quote(decision.id)} decision={decision.reason} "
                f"status={decision.status} serial={decision.serial}")
        if decision.status == 200:
            line += f" not_after={decision.not_after}"
        else:
            line += f" detail={quote(decision.detail)}"
        log.log(level, "%s peer=%s", line, peer)

    def answer(self, token: SignToken, body: bytes) -> Decision:
        return self.sign_for(token, body)

    def sign_for(self, token: SignToken, body: bytes) -> Decision:
        def refuse(status: int, reason: str, detail: str, spiffe_id: str = "-") -> Decision:
            return Decision(status, reason, detail, token=token.name, id=spiffe_id)

        try:
            csr = x509.load_pem_x509_csr(body)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            return refuse(400, "bad_request", "the body is not a PEM certificate signing request")
        try:
            if not csr.is_signature_valid:
                return refuse(400, "bad_request", "the CSR signature does not verify")
            public_key = csr.public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            return refuse(400, "bad_request", f"the CSR cannot be checked ({detail(exc)})")
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return refuse(400, "bad_request", "the CSR has no subjectAltName (it needs exactly one spiffe:// URI)")
        except (ValueError, TypeError, x509.DuplicateExtension) as exc:
            return refuse(400, "bad_request", f"the CSR extensions do not parse ({detail(exc)})")
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1:
            shown = ", ".join(quote(u) for u in uris[:4])
            return refuse(400, "bad_request", f"the CSR must carry exactly one URI SAN, it has {len(uris)}"
                          + (f" ({shown})" if uris else ""), shown or "-")
        spiffe_id = uris[0]
        if not spiffe_id.startswith("spiffe://"):
            return refuse(400, "bad_request", f"the URI SAN {quote(spiffe_id)} is not a spiffe:// id", spiffe_id)
        problem = _accepted_key(public_key)
        if problem:
            return refuse(400, "bad_request", problem, spiffe_id)
        try:
            parsed = parse_spiffe_id(spiffe_id)
        except InvalidSpiffeId as exc:
            return refuse(403, "forbidden", f"{quote(spiffe_id)} is not a valid SPIFFE id: {detail(exc)}", spiffe_id)
        if parsed.is_trust_domain:
            return refuse(403, "forbidden", f"{spiffe_id} names a trust domain, not a workload", spiffe_id)
        if parsed.trust_domain != self.ca.trust_domain:
            return refuse(403, "forbidden", f"{spiffe_id} is outside this CA's trust domain {self.ca.trust_domain}",
                          spiffe_id)
        if not id_allowed(token.ids, spiffe_id):
            return refuse(403, "forbidden", f"{spiffe_id} is not allowed for this token", spiffe_id)
        try:
            cert = self.ca.issue_svid(spiffe_id, public_key, self.ttl)
        except CAError as exc:
            # The CA refuses ids outside its trust domain itself, too.
            return refuse(403, "forbidden", detail(exc), spiffe_id)
        leaf = cert.public_bytes(serialization.Encoding.PEM)
        return Decision(200, "issued", "", body=leaf + self.chain_tail, token=token.name, id=spiffe_id,
                        serial=format(cert.serial_number, "x"),
                        not_after=cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"))


def read_tokens(config) -> tuple[SignToken, ...]:
    """The `[[ca.token]]` entries with their secrets (token files read now, stripped).
    Raises ConfigError naming the file and key path of every problem."""
    errors: list[str] = []
    tokens: list[SignToken] = []
    seen: dict[bytes, str] = {}
    for index, entry in enumerate(config.tokens):
        name = f"ca.token[{index}]"
        if entry.token_file is not None:
            try:
                with open(entry.token_file, "rb") as stream:
                    secret = stream.read().strip()
            except OSError as exc:
                errors.append(f"{config.path}: {name}.token_file: cannot read {entry.token_file}: "
                              f"{exc.strerror or exc}")
                continue
            if not secret:
                errors.append(f"{config.path}: {name}.token_file: {entry.token_file} is empty")
                continue
            if any(b <= 32 or b == 127 for b in secret):
                errors.append(f"{config.path}: {name}.token_file: {entry.token_file}: the token must be one "
                              "word without spaces or control characters")
                continue
        else:
            secret = (entry.token or "").encode("utf-8")
            if not secret.strip() or secret != secret.strip():
                errors.append(f"{config.path}: {name}.token: must not be empty or have surrounding whitespace")
                continue
        if secret in seen:
            errors.append(f"{config.path}: {name}: same token as {seen[secret]}")
            continue
        seen[secret] = name
        tokens.append(SignToken(name, secret, tuple(entry.ids)))
    if errors:
        raise ConfigError(errors)
    return tuple(tokens)


# ---------------------------------------------------------------------------------------
# HTTPS server


def _server_hosts(host: str, names: tuple[str, ...] = ()) -> list[str]:
    hosts = ["127.0.0.1", "::1", "localhost"]
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard:
        extra = [socket.gethostname()]
        try:
            extra.append(socket.getfqdn())
        except OSError:
            pass
    else:
        extra = [host]
    for name in list(names) + extra:
        if name and name not in hosts:
            hosts.insert(0, name)
    return hosts


def _load_server_cert(context: ssl.SSLContext, ca, hosts: list[str]) -> x509.Certificate:
    """Issues a server certificate from `ca` and loads it into `context` (new handshakes
    use it)."""
    cert, key = ca.issue_server_cert(hosts, SERVER_CERT_TTL)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.cert.public_bytes(serialization.Encoding.PEM)
    load_chain(context, chain, key_pem)
    return cert


def _server_context(ca, hosts: list[str]) -> ssl.SSLContext:
    context = https_endpoint.server_context()
    _load_server_cert(context, ca, hosts)
    return context


async def serve(config, ca, tokens: tuple[SignToken, ...], *, ready=None, stop: asyncio.Event | None = None,
                service_accounts=None) -> int:
    """Serves until `stop` is set (or SIGTERM/SIGINT when `stop` is None); 0, or 1 when the
    address cannot be bound. `ready(server)` is called once it listens."""
    loop = asyncio.get_running_loop()
    hosts = _server_hosts(config.bind.host, config.server_names)
    context = _server_context(ca, hosts)

    async def renew_server_cert() -> None:
        while True:
            await asyncio.sleep(SERVER_CERT_RENEW)
            try:
                _load_server_cert(context, ca, hosts)
                log.info("ca: re-issued the server certificate")
            except Exception as exc:  # keep the current one; try again later
                log.error("ca: could not re-issue the server certificate: %s", detail(exc))

    def listening(server) -> None:
        log.info("ca: serving https://%s%s (trust domain %s, ttl %gs, %d token(s), server names %s)",
                 config.bind, SIGN_PATH, ca.trust_domain, config.ttl, len(tokens), ",".join(hosts))
        if ready is not None:
            ready(server)

    renewer = loop.create_task(renew_server_cert())
    try:
        return await https_endpoint.serve(Signer(ca, tokens, config.ttl, service_accounts), config.bind, context,
                                          command="ca serve", ready=listening, stop=stop)
    finally:
        renewer.cancel()


def main(args) -> int:
    """`fastproxy ca serve [-c FILE]`: 0 after SIGTERM/SIGINT, 1 when the address cannot be
    bound, 2 for a configuration problem (the file, an unreadable CA or token file)."""
    path = getattr(args, "config", None) or DEFAULT_CONFIG
    try:
        config = load_ca(path)
        tokens = read_tokens(config)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 2
    try:
        ca = CA.load(config.dir)
    except (CAError, OSError, ValueError) as exc:
        print(f"{config.path}: ca.dir: cannot load the CA from {config.dir}: {detail(exc)}", file=sys.stderr)
        return 2
    service_accounts = None
    if config.kubernetes is not None:
        k8s = config.kubernetes
        try:
            with open(k8s.jwks, encoding="utf-8") as stream:
                service_accounts = ServiceAccounts(stream.read(), ca.trust_domain, k8s.audience, k8s.issuer)
        except (OSError, ServiceAccountError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"{config.path}: ca.kubernetes.jwks: {k8s.jwks}: {why}", file=sys.stderr)
            return 2
    https_endpoint.setup_logging("fastproxy-ca")
    started = time.monotonic()
    code = https_endpoint.run(serve(config, ca, tokens, service_accounts=service_accounts))
    if code == 0:
        log.info("ca: stopped after %.0fs", time.monotonic() - started)
    return code
