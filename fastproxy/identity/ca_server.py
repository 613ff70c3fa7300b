"""`fastproxy ca serve`: the identity service that signs workload CSRs (docs/identity.md).

The [ca] file (`fastproxy ca serve -c FILE`, default config/ca.toml; validated by
`fastproxy.config.load_ca`, errors exit 2)::

    [ca]
    dir = "certs/ca"            # made by `fastproxy ca init` (ca.pem, ca-key.pem); required
    bind = "127.0.0.1:8443"     # HTTPS address; required
    ttl = "24h"                 # lifetime of issued certificates; default "24h"

    [[ca.token]]                # one or more
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

The server's own certificate is issued from the same CA at start (SANs: the bind host
unless it is a wildcard address, 127.0.0.1, ::1, localhost, plus this machine's host name
for a wildcard bind), so clients verify it with the CA certificate (`ca_trust`). It is
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
import os
import signal
import socket
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from http import HTTPStatus

import h11
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fastproxy.config import ConfigError, load_ca
from fastproxy.identity.ca import CA, CAError
from fastproxy.identity.service_accounts import ServiceAccountError, ServiceAccounts
from fastproxy.identity.spiffe import InvalidSpiffeId, id_allowed, parse_spiffe_id

__all__ = ["main", "Signer", "Decision", "SignToken", "read_tokens", "MAX_BODY", "serve"]

log = logging.getLogger("fastproxy.ca")

SIGN_PATH = "/v1/sign"
MAX_BODY = 64 * 1024
MAX_HEAD = 8 * 1024           # request line and headers (431 over it)
REQUEST_TIMEOUT = 10.0        # a whole request (head and body), and the TLS handshake
IDLE_TIMEOUT = 30.0           # between keep-alive requests
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


def _quote(text: str) -> str:
    """Log-safe: plain when printable ASCII without spaces or quotes, else repr()."""
    if text and all(33 <= ord(c) < 127 and c not in "\"'\\" for c in text):
        return text
    return repr(text)


def _detail(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


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
    """Turns (Authorization header, CSR body) into a `Decision`; signs with `ca`."""

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
            return refuse(400, "bad_request", f"the CSR cannot be checked ({_detail(exc)})")
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return refuse(400, "bad_request", "the CSR has no subjectAltName (it needs exactly one spiffe:// URI)")
        except (ValueError, TypeError, x509.DuplicateExtension) as exc:
            return refuse(400, "bad_request", f"the CSR extensions do not parse ({_detail(exc)})")
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1:
            shown = ", ".join(_quote(u) for u in uris[:4])
            return refuse(400, "bad_request", f"the CSR must carry exactly one URI SAN, it has {len(uris)}"
                          + (f" ({shown})" if uris else ""), shown or "-")
        spiffe_id = uris[0]
        if not spiffe_id.startswith("spiffe://"):
            return refuse(400, "bad_request", f"the URI SAN {_quote(spiffe_id)} is not a spiffe:// id", spiffe_id)
        problem = _accepted_key(public_key)
        if problem:
            return refuse(400, "bad_request", problem, spiffe_id)
        try:
            parsed = parse_spiffe_id(spiffe_id)
        except InvalidSpiffeId as exc:
            return refuse(403, "forbidden", f"{_quote(spiffe_id)} is not a valid SPIFFE id: {_detail(exc)}", spiffe_id)
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
            return refuse(403, "forbidden", _detail(exc), spiffe_id)
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


def _server_hosts(host: str) -> list[str]:
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
    for name in extra:
        if name and name not in hosts:
            hosts.insert(0, name)
    return hosts


def _load_server_cert(context: ssl.SSLContext, ca, hosts: list[str]) -> x509.Certificate:
    """Issues a server certificate from `ca` and loads it into `context` (new handshakes
    use it; ssl can only load key material from files, so a private temporary directory
    holds it for the duration of the call)."""
    cert, key = ca.issue_server_cert(hosts, SERVER_CERT_TTL)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.cert.public_bytes(serialization.Encoding.PEM)
    with tempfile.TemporaryDirectory(prefix="fastproxy-ca-") as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        with open(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(key_pem)
        with open(cert_path, "wb") as f:
            f.write(chain)
        context.load_cert_chain(cert_path, key_path)
    return cert


def _server_context(ca, hosts: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    _load_server_cert(context, ca, hosts)
    return context


class _Closed(Exception):
    """The peer went away, or the request was answered with a closing error."""


class CAService:
    """The HTTP side: one h11 connection per TLS connection, `Signer` for decisions."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer
        self.connections: set[asyncio.Task] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        peer = writer.get_extra_info("peername")
        peer_text = f"[{peer[0]}]:{peer[1]}" if peer and ":" in str(peer[0]) else (
            f"{peer[0]}:{peer[1]}" if peer else "-")
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            while True:
                try:
                    keep = await self._one_request(conn, reader, writer, peer_text)
                except _Closed:
                    if conn.our_state is h11.MUST_CLOSE or conn.our_state is h11.DONE:
                        await self._linger(reader)
                    return
                if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, ssl.SSLError, OSError):
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # never let one connection take the server down
            log.exception("ca: unexpected error on the connection from %s", peer_text)
        finally:
            if task is not None:
                self.connections.discard(task)
            writer.close()
            try:
                async with asyncio.timeout(2.0):
                    await writer.wait_closed()
            except Exception:
                pass

    @staticmethod
    async def _linger(reader: asyncio.StreamReader) -> None:
        """After an error answered before the request was read in full: discard what the
        client still sends (bounded), so that closing does not reset the connection and
        destroy the response before the client has read it."""
        try:
            async with asyncio.timeout(1.0):
                left = 4 * MAX_BODY
                while left > 0:
                    data = await reader.read(16 * 1024)
                    if not data:
                        return
                    left -= len(data)
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError):
            pass

    async def _event(self, conn: h11.Connection, reader: asyncio.StreamReader):
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await reader.read(16 * 1024)
            conn.receive_data(data)  # b"" means the peer closed

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int,
                    headers: list[tuple[str, str]], body: bytes, *, head: bool = False) -> None:
        headers = headers + [("content-length", str(len(body))), ("server", "fastproxy-ca")]
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase))
        data += conn.send(h11.Data(data=body)) if body and not head else b""
        data += conn.send(h11.EndOfMessage())
        writer.write(data)
        await writer.drain()

    async def _error(self, conn, writer, peer: str, decision: Decision, *, head: bool = False) -> None:
        self._log(decision, peer)
        headers = [("content-type", "text/plain; charset=utf-8"), ("fastproxy-error", decision.reason),
                   ("connection", "close")]
        if decision.status == 401:
            headers.append(("www-authenticate", 'Bearer realm="fastproxy-ca"'))
        elif decision.status == 405:
            headers.append(("allow", "POST"))
        body = f"fastproxy: {decision.reason}: {decision.detail}\n".encode("utf-8", "replace")
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._send(conn, writer, decision.status, headers, body, head=head)
        raise _Closed

    def _log(self, decision: Decision, peer: str) -> None:
        level = logging.INFO if decision.status in (200, 401, 403) else logging.WARNING
        line = (f"ca: sign token={decision.token} id={_quote(decision.id)} decision={decision.reason} "
                f"status={decision.status} serial={decision.serial}")
        if decision.status == 200:
            line += f" not_after={decision.not_after}"
        else:
            line += f" detail={_quote(decision.detail)}"
        log.log(level, "%s peer=%s", line, peer)

    async def _one_request(self, conn: h11.Connection, reader, writer, peer: str) -> bool:
        """Answers one request; True when the connection may carry another."""
        # Waiting for a request: the idle timeout; once bytes came, the request timeout.
        first = conn.their_state is h11.IDLE and not conn.trailing_data[0]
        try:
            async with asyncio.timeout(IDLE_TIMEOUT if first else REQUEST_TIMEOUT) as deadline:
                if first:
                    data = await reader.read(16 * 1024)
                    conn.receive_data(data)
                    deadline.reschedule(asyncio.get_running_loop().time() + REQUEST_TIMEOUT)
                return await self._request(conn, reader, writer, peer)
        except TimeoutError:
            if conn.their_state is h11.IDLE and conn.our_state is h11.IDLE:
                raise _Closed from None  # an idle keep-alive connection: just close
            await self._error(conn, writer, peer, Decision(408, "request_timeout",
                                                           f"request not complete within {REQUEST_TIMEOUT:g}s"))
        return False

    async def _request(self, conn: h11.Connection, reader, writer, peer: str) -> bool:
        try:
            event = await self._event(conn, reader)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint or 400
            reason = {431: "header_too_large", 501: "not_implemented"}.get(status, "bad_request")
            await self._error(conn, writer, peer, Decision(status, reason, _detail(exc)))
        if isinstance(event, h11.ConnectionClosed):
            raise _Closed
        if not isinstance(event, h11.Request):
            raise _Closed
        target = event.target.decode("latin-1")
        path = target.split("?", 1)[0]
        method = event.method.decode("latin-1")
        if path != SIGN_PATH:
            await self._error(conn, writer, peer, Decision(404, "not_found", f"no such endpoint {_quote(path)}"),
                              head=method == "HEAD")
        if method != "POST":
            await self._error(conn, writer, peer, Decision(405, "method_not_allowed",
                                                           f"{_quote(method)} {SIGN_PATH}: only POST"),
                              head=method == "HEAD")
        headers = {}
        for name, value in event.headers:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        length = headers.get("content-length")
        if length is not None and int(length) > MAX_BODY:  # h11 has checked the syntax
            await self._error(conn, writer, peer, Decision(413, "payload_too_large",
                                                           f"body of {length} bytes is over {MAX_BODY}"))
        found = self.signer.authorize(headers.get("authorization"))
        if isinstance(found, Decision):
            await self._error(conn, writer, peer, found)
        if conn.they_are_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")))
        body = bytearray()
        while True:
            try:
                event = await self._event(conn, reader)
            except h11.RemoteProtocolError as exc:
                await self._error(conn, writer, peer, Decision(400, "bad_request", _detail(exc), token=found.name))
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    await self._error(conn, writer, peer, Decision(413, "payload_too_large",
                                                                   f"body over {MAX_BODY} bytes", token=found.name))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # ConnectionClosed in the middle of the body
                raise _Closed
        decision = self.signer.sign_for(found, bytes(body))
        if decision.status != 200:
            await self._error(conn, writer, peer, decision)
        self._log(decision, peer)
        await self._send(conn, writer, 200, [("content-type", "application/x-pem-file")], decision.body)
        return True


async def serve(config, ca, tokens: tuple[SignToken, ...], *, ready=None, stop: asyncio.Event | None = None,
                service_accounts=None) -> int:
    """Serves until `stop` is set (or SIGTERM/SIGINT when `stop` is None); 0, or 1 when the
    address cannot be bound. `ready(server)` is called once it listens."""
    loop = asyncio.get_running_loop()
    hosts = _server_hosts(config.bind.host)
    context = _server_context(ca, hosts)
    service = CAService(Signer(ca, tokens, config.ttl, service_accounts))
    try:
        server = await asyncio.start_server(service.handle, config.bind.host, config.bind.port, ssl=context,
                                            ssl_handshake_timeout=REQUEST_TIMEOUT, reuse_address=True,
                                            limit=64 * 1024)
    except OSError as exc:
        print(f"fastproxy: ca serve: cannot bind {config.bind}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    own_stop = stop is None
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    async def renew_server_cert() -> None:
        while True:
            await asyncio.sleep(SERVER_CERT_RENEW)
            try:
                _load_server_cert(context, ca, hosts)
                log.info("ca: re-issued the server certificate")
            except Exception as exc:  # keep the current one; try again later
                log.error("ca: could not re-issue the server certificate: %s", _detail(exc))

    renewer = loop.create_task(renew_server_cert())
    log.info("ca: serving https://%s%s (trust domain %s, ttl %gs, %d token(s), server names %s)",
             config.bind, SIGN_PATH, ca.trust_domain, config.ttl, len(tokens), ",".join(hosts))
    try:
        if ready is not None:
            ready(server)
        await stop.wait()
        log.info("ca: stopping")
    finally:
        renewer.cancel()
        server.close()
        for task in list(service.connections):
            task.cancel()
        if service.connections:
            await asyncio.wait(list(service.connections), timeout=2.0)
        if own_stop:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    return 0


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("FASTPROXY_LOG_LEVEL", "INFO").upper(),
            format="%(asctime)s fastproxy-ca[%(process)d] %(levelname)s %(message)s",
            stream=sys.stderr,
        )


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
        print(f"{config.path}: ca.dir: cannot load the CA from {config.dir}: {_detail(exc)}", file=sys.stderr)
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
    _setup_logging()
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        factory = None
    started = time.monotonic()
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            code = runner.run(serve(config, ca, tokens, service_accounts=service_accounts))
        except KeyboardInterrupt:
            code = 0
    if code == 0:
        log.info("ca: stopped after %.0fs", time.monotonic() - started)
    return code
