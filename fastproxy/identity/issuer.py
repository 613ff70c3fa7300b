"""Automatic issuance in the sidecar ([identity] ca_url; docs/identity.md): obtain this
workload's X509-SVID from `fastproxy ca serve` and keep renewing it.

    issuer = AutoIssuer(identity.id, identity.ca_url, identity.token_file, identity.ca_trust,
                        identity.renew_at)          # or AutoIssuer.from_identity(identity)
    material = await issuer.obtain()                # one attempt; raises IssueError
    task = loop.create_task(issuer.run(on_material))  # forever; cancel it to stop

Each attempt generates a new EC P-256 key in memory (it never touches the disk), sends a
CSR whose only SAN is the SPIFFE id to `POST {ca_url}/v1/sign` with
`Authorization: Bearer <token_file contents, stripped>` over HTTPS, verifying the CA
service with the `ca_trust` bundle (the CA certificate) and its host name, and checks the
answer with `load_material` against the same bundle (the key matches, the certificate
chains to the bundle, is valid now and names exactly our id). The token file and the
bundle are read again on every attempt, so both can be rotated on disk.

`run` obtains the first certificate (retrying while the CA is unreachable or refuses),
hands it to `on_material`, sleeps until `renew_at` of its lifetime has passed and renews.
A failed renewal keeps the current material (`on_material` is not called) and is retried
with exponential backoff (0.5 s doubling, capped at 10 s, with jitter). The lifetime counts
from when the certificate arrived (the CA backdates `notBefore` a little for clock skew).
Every step is logged on the `fastproxy.identity.issuer` logger; a refusal by the CA (400,
401, 403) is logged with the CA's own message. `run` never raises: only cancellation ends
it (the CancelledError propagates, as asyncio expects).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import random
import ssl
import time
from typing import Callable
from urllib.parse import urlsplit

import h11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fastproxy.identity.spiffe import InvalidSpiffeId, parse_spiffe_id
from fastproxy.identity.svid import Material, SVIDError, load_material

__all__ = ["AutoIssuer", "IssueError", "CARefused", "SIGN_PATH"]

log = logging.getLogger("fastproxy.identity.issuer")

SIGN_PATH = "/v1/sign"
MAX_RESPONSE = 1024 * 1024
MIN_RENEW_DELAY = 0.5


class IssueError(Exception):
    """One attempt to obtain a certificate failed; str() is one line saying why."""


class CARefused(IssueError):
    """The CA answered with an error status; `status` and the CA's own `message`."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"the CA refused: {status} {message}")


def _one_line(data: bytes, limit: int = 300) -> str:
    text = " ".join(data.decode("utf-8", "replace").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _iso(moment: _dt.datetime) -> str:
    return moment.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class AutoIssuer:
    """Obtains and renews the SVID for `spiffe_id` from the CA service at `ca_url`."""

    def __init__(self, spiffe_id: str, ca_url: str, token_file: str, ca_trust: str,
                 renew_at: float = 0.5, *, timeout: float = 10.0, backoff_initial: float = 0.5,
                 backoff_max: float = 10.0) -> None:
        try:
            parse_spiffe_id(spiffe_id)
        except InvalidSpiffeId as exc:
            raise ValueError(str(exc)) from None
        if not 0.0 < float(renew_at) < 1.0:
            raise ValueError(f"renew_at must be between 0 and 1 (exclusive), not {renew_at!r}")
        url = urlsplit(ca_url)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"ca_url must be an https:// URL, not {ca_url!r}")
        if url.query or url.fragment or url.username or url.password:
            raise ValueError(f"ca_url must not have a query, a fragment or userinfo: {ca_url!r}")
        try:
            port = url.port or 443
        except ValueError:
            raise ValueError(f"ca_url has an invalid port: {ca_url!r}") from None
        self.spiffe_id = spiffe_id
        self.ca_url = ca_url.rstrip("/")
        self.token_file = token_file
        self.ca_trust = ca_trust
        self.renew_at = float(renew_at)
        self.timeout = float(timeout)
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.host = url.hostname
        self.port = port
        self.authority = url.netloc
        self.path = url.path.rstrip("/") + SIGN_PATH
        self.material: Material | None = None   # the last one handed to on_material
        self.renewals = 0                        # certificates obtained by run()
        self.failures = 0                        # failed attempts in run()

    @classmethod
    def from_identity(cls, identity, **kwargs) -> "AutoIssuer":
        """From a `fastproxy.config.Identity` with automatic issuance (`ca_url` set)."""
        return cls(identity.id, identity.ca_url, identity.token_file, identity.ca_trust,
                   identity.renew_at, **kwargs)

    def __repr__(self) -> str:
        return f"AutoIssuer({self.spiffe_id!r}, {self.ca_url!r})"

    # --- one attempt ----------------------------------------------------------------------

    def _read(self, path: str, what: str) -> bytes:
        try:
            with open(path, "rb") as stream:
                return stream.read()
        except OSError as exc:
            raise IssueError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None

    def _token(self) -> str:
        token = self._read(self.token_file, "token_file").strip()
        if not token:
            raise IssueError(f"token_file {self.token_file}: empty")
        if any(b <= 32 or b >= 127 for b in token):
            raise IssueError(f"token_file {self.token_file}: the token must be one word of printable ASCII")
        return token.decode("ascii")

    def _context(self, trust_pem: bytes) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=trust_pem.decode("ascii"))
        except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
            raise IssueError(f"ca_trust {self.ca_trust}: not a PEM certificate bundle ({exc})") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        return context

    def _csr(self) -> tuple[bytes, bytes]:
        """(key PEM, CSR PEM): a new EC P-256 key, a CSR whose only SAN is our URI."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(self.spiffe_id)]),
                           critical=True)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return key_pem, csr.public_bytes(serialization.Encoding.PEM)

    async def _post(self, context: ssl.SSLContext, token: str, body: bytes) -> tuple[int, bytes]:
        """POST `body` to the CA; (status, response body). Network trouble: IssueError."""
        where = f"{self.ca_url}{SIGN_PATH}"
        connected = False
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=context, server_hostname=self.host,
                    ssl_handshake_timeout=self.timeout)
                connected = True
                try:
                    return await self._exchange(reader, writer, token, body)
                finally:
                    writer.close()
                    try:
                        async with asyncio.timeout(1.0):
                            await writer.wait_closed()
                    except Exception:
                        pass
        except TimeoutError:
            raise IssueError(f"{where}: no answer within {self.timeout:g}s") from None
        except ssl.SSLCertVerificationError as exc:
            raise IssueError(f"{where}: the CA service's certificate does not verify with ca_trust "
                             f"{self.ca_trust}: {exc.verify_message or exc}") from None
        except ssl.SSLError as exc:
            raise IssueError(f"{where}: TLS failed: {exc.reason or exc}") from None
        except h11.ProtocolError as exc:
            raise IssueError(f"{where}: malformed HTTP response: {exc}") from None
        except OSError as exc:
            what = "connection failed" if connected else "cannot connect"
            raise IssueError(f"{where}: {what}: {exc.strerror or exc}") from None

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str,
                        body: bytes) -> tuple[int, bytes]:
        conn = h11.Connection(h11.CLIENT)
        data = conn.send(h11.Request(method="POST", target=self.path, headers=[
            ("host", self.authority),
            ("authorization", f"Bearer {token}"),
            ("content-type", "application/pkcs10"),
            ("accept", "application/x-pem-file"),
            ("content-length", str(len(body))),
            ("connection", "close"),
            ("user-agent", "fastproxy-issuer"),
        ]))
        data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        writer.write(data)
        await writer.drain()
        status = 0
        chunks = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(64 * 1024))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks += event.data
                if len(chunks) > MAX_RESPONSE:
                    raise IssueError(f"{self.ca_url}{SIGN_PATH}: response over {MAX_RESPONSE} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return status, bytes(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                raise IssueError(f"{self.ca_url}{SIGN_PATH}: the connection closed before a complete response")
            # InformationalResponse (1xx): keep reading

    async def obtain(self) -> Material:
        """One attempt: a new key, a CSR, the CA's answer, validated. Raises IssueError
        (CARefused when the CA answered with an error status)."""
        token = self._token()
        trust_pem = self._read(self.ca_trust, "ca_trust")
        context = self._context(trust_pem)
        key_pem, csr_pem = self._csr()
        status, body = await self._post(context, token, csr_pem)
        if status != 200:
            raise CARefused(status, _one_line(body) or "(no message)")
        try:
            chain = x509.load_pem_x509_certificates(body)
        except ValueError:
            raise IssueError(f"{self.ca_url}{SIGN_PATH}: the answer is not a PEM certificate chain") from None
        try:
            trusted = {c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(trust_pem)}
        except ValueError:
            trusted = set()
        # The leaf, and any intermediate the bundle does not already hold (a root is not sent).
        cert_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for i, c in enumerate(chain)
                            if i == 0 or c.public_bytes(serialization.Encoding.DER) not in trusted)
        try:
            return load_material(cert_pem, key_pem, trust_pem, self.spiffe_id)
        except SVIDError as exc:
            raise IssueError(f"the certificate from the CA is not acceptable: {exc}") from None

    # --- forever ----------------------------------------------------------------------------

    def renew_delay(self, material: Material, received: float | None = None) -> float:
        """Seconds from now until `renew_at` of the lifetime has passed; the lifetime starts
        at `received` (epoch seconds, default now) or notBefore if later."""
        now = time.time()
        received = now if received is None else received
        start = max(material.not_before.timestamp(), received)
        end = material.not_after.timestamp()
        renew = start + self.renew_at * max(0.0, end - start)
        return max(MIN_RENEW_DELAY, renew - now)

    def _backoff(self, failures: int) -> float:
        base = min(self.backoff_max, self.backoff_initial * (2 ** min(failures - 1, 30)))
        return base * random.uniform(0.8, 1.0)

    def _failed(self, exc: BaseException, delay: float) -> None:
        self.failures += 1
        current = self.material
        if isinstance(exc, CARefused):
            what = f"the CA refused the certificate for {self.spiffe_id}: {exc.status} {exc.message}"
        else:
            what = f"could not obtain a certificate for {self.spiffe_id}: {exc}"
        if current is None:
            log.error("identity: %s; no certificate yet, retrying in %.1fs", what, delay)
            return
        left = current.not_after.timestamp() - time.time()
        if left <= 0:
            log.error("identity: %s; the current certificate (serial %s) EXPIRED at %s; retrying in %.1fs",
                      what, current.serial_hex, _iso(current.not_after), delay)
        else:
            log.warning("identity: %s; keeping the current certificate (serial %s, valid until %s, "
                        "%.0fs left); retrying in %.1fs", what, current.serial_hex, _iso(current.not_after),
                        left, delay)

    async def run(self, on_material: Callable[[Material], None]) -> None:
        """Obtain, hand over, renew — until cancelled. Never raises anything else."""
        failures = 0
        log.info("identity: requesting a certificate for %s from %s", self.spiffe_id, self.ca_url)
        while True:
            try:
                try:
                    material = await self.obtain()
                    received = time.time()
                except IssueError as exc:
                    failures += 1
                    delay = self._backoff(failures)
                    self._failed(exc, delay)
                    await asyncio.sleep(delay)
                    continue
                try:
                    on_material(material)
                except Exception as exc:  # the consumer refused it: keep the current one, retry
                    failures += 1
                    delay = self._backoff(failures)
                    self._failed(IssueError(f"the new certificate could not be put in use: {exc!r}"), delay)
                    await asyncio.sleep(delay)
                    continue
                previous, self.material = self.material, material
                failures = 0
                self.renewals += 1
                delay = self.renew_delay(material, received)
                log.info("identity: %s certificate for %s: serial %s, valid until %s; renewing in %.1fs",
                         "renewed the" if previous is not None else "got the", material.spiffe_id,
                         material.serial_hex, _iso(material.not_after), delay)
                await asyncio.sleep(delay)
                log.info("identity: renewing the certificate for %s (serial %s)", self.spiffe_id,
                         material.serial_hex)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end issuance: log it and retry
                failures += 1
                delay = self._backoff(failures)
                self.failures += 1
                log.exception("identity: unexpected error while obtaining a certificate for %s: %r; "
                              "retrying in %.1fs", self.spiffe_id, exc, delay)
                await asyncio.sleep(delay)
