"""TLS for listeners and clusters, built from this workload's identity and rotated in place.

Owns: the SSLContexts of tls/mtls listeners and clusters, the SPIFFE identity of each
peer (read once per connection from the certificate OpenSSL verified), and the watcher
that reloads the cert, key and trust files. Handshakes and records are OpenSSL's, driven
by the core (`fastproxy._core.tls`); nothing here runs per request.

Rotation without disturbing anyone: every new connection, accepted or opened, takes the
newest context, so established connections keep the session they have and new ones get
the new material. Invalid new material is refused and the old stays.
"""
from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509

from fastproxy.identity.spiffe import parse_spiffe_id
from fastproxy.identity.svid import Material, SVIDError, load_material, svid_id, trust_domains

log = logging.getLogger("fastproxy")

WATCH_INTERVAL = 1.0          # seconds between looks at the identity files
PEER_CACHE_SIZE = 4096        # verified peer certificates remembered (DER -> id)


def _load_chain(ctx: ssl.SSLContext, material: Material) -> None:
    load_chain(ctx, material.cert_pem, material.key_pem)


def load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """SSLContext only loads a chain from files: anonymous memory files (memfd, opened
    through /proc/self/fd) where the system has them, so the key never touches a disk and
    a read-only root filesystem is fine; else a directory only we can read."""
    try:
        fds = [os.memfd_create("fastproxy-cert", os.MFD_CLOEXEC), os.memfd_create("fastproxy-key", os.MFD_CLOEXEC)]
    except (AttributeError, OSError):
        fds = []
    try:
        if fds and os.path.exists(f"/proc/self/fd/{fds[0]}"):
            for fd, data in zip(fds, (cert_pem, key_pem)):
                with open(fd, "wb", closefd=False) as f:
                    f.write(data)
            ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
            return
    finally:
        for fd in fds:
            os.close(fd)
    with tempfile.TemporaryDirectory(prefix="fastproxy-tls-") as tmp:
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert.write_bytes(cert_pem)
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(key_pem)
        ctx.load_cert_chain(cert, key)


def _common(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """What every context of the core has: TLS 1.2 at least, no renegotiation (never
    needed here), ALPN http/1.1, and no key log (the core's SSL objects are not the ones
    CPython's key-log callback expects; create_default_context follows SSLKEYLOGFILE)."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.keylog_filename = None
    return ctx


def server_context(material: Material, require_client_cert: bool, http2: bool = False) -> ssl.SSLContext:
    ctx = _common(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    if http2:   # the client's preference decides between the two (RFC 7301)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
    # Sessions resume (one TLS 1.3 ticket per handshake, TLS 1.2 tickets and ids) only
    # within this context: its ticket keys and session cache are its own, and a rotation
    # makes a new context, so no client resumes past a rotation that dropped its CA.
    ctx.num_tickets = 1
    _load_chain(ctx, material)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=material.trust_pem.decode())
    return ctx


# what a client context offers by ALPN, by cluster protocol (config.model.PROTOCOLS order):
# auto lets the server choose, http2 insists
CLIENT_ALPN = (["h2", "http/1.1"], ["http/1.1"], ["h2"])


def mtls_client_context(material: Material, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = _common(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    # the server is identified by the SPIFFE id in its certificate, checked after the
    # handshake against the cluster's `peer`, not by a host name
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=material.trust_pem.decode())
    _load_chain(ctx, material)
    return ctx


def tls_client_context(material: Material | None, alpn: list[str] | None = None) -> ssl.SSLContext:
    """Plain server-authenticated TLS: the mesh trust bundle if there is one, else the system's."""
    if material is not None:
        ctx = _common(ssl.create_default_context(cadata=material.trust_pem.decode()))
    else:
        ctx = _common(ssl.create_default_context())
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


@dataclass
class IdentityState:
    """This workload's current identity material and everything built from it."""

    own_id: str
    material: Material | None = None
    server_contexts: dict[tuple[bool, bool], ssl.SSLContext] = field(default_factory=dict)  # (mtls, http2)
    # (mtls, cluster protocol index) -> the client context for new upstream connections
    client_contexts: dict[tuple[bool, int], ssl.SSLContext] = field(default_factory=dict)
    trust_domains: frozenset[str] = frozenset()
    rotations: int = 0
    rotation_failures: int = 0
    _peers: dict[tuple[bytes, str], tuple[str | None, str | None]] = field(default_factory=dict)
    _warned_serial: int | None = None

    def check_expiry(self, now: datetime | None = None) -> None:
        """Warn (once per certificate) when less than a tenth of its lifetime is left."""
        m = self.material
        if m is None or self._warned_serial == m.serial:
            return
        now = now or datetime.now(timezone.utc)
        left = m.not_after - now
        if left <= (m.not_after - m.not_before) / 10:
            self._warned_serial = m.serial
            log.warning("identity: certificate %x %s at %s", m.serial,
                        "expired" if left.total_seconds() <= 0 else "expires soon,",
                        m.not_after.isoformat())

    def install(self, material: Material) -> None:
        """Use new material for every handshake from now on."""
        self.server_contexts = {(m, h2): server_context(material, m, h2)
                                for m in (False, True) for h2 in (False, True)}
        self.client_contexts = {
            (mtls, protocol): (mtls_client_context if mtls else tls_client_context)(material, alpn)
            for mtls in (False, True) for protocol, alpn in enumerate(CLIENT_ALPN)}
        # a bundle whose CA certificates name no SPIFFE trust domain trusts our own
        self.trust_domains = frozenset(trust_domains(material.trust)
                                       or {parse_spiffe_id(self.own_id).trust_domain})
        self._peers.clear()
        if self.material is not None:
            self.rotations += 1
        self.material = material

    def _issued_by_trust(self, der: bytes) -> bool:
        cert = x509.load_der_x509_certificate(der)
        for anchor in self.material.trust:
            try:
                cert.verify_directly_issued_by(anchor)
                return True
            except Exception:
                continue
        return False

    def peer_id(self, link, usage: str) -> tuple[str | None, str | None]:
        """(SPIFFE id, None) for a verified peer that is a valid X509-SVID, else (None, why).
        `link` is the connection's TLSLink. The answer is remembered per certificate until
        the material changes."""
        der = link.peer_certificate()
        if not der:
            return None, "no peer certificate"
        key = (der, usage)
        found = self._peers.get(key)
        if found is None:
            if link.session_reused() and not self._issued_by_trust(der):
                # a resumed session skipped verification, and this certificate was not
                # verified under the current material: check its chain here
                return None, "resumed session of a certificate the trust bundle no longer accepts"
            try:
                found = (svid_id(x509.load_der_x509_certificate(der), self.trust_domains, usage), None)
            except (SVIDError, ValueError) as exc:
                found = (None, str(exc))
            if len(self._peers) >= PEER_CACHE_SIZE:
                self._peers.clear()
            self._peers[key] = found
        return found


def load_files(cert: str, key: str, trust: str, expected_id: str) -> Material:
    """Read and validate identity files; raises SVIDError naming the problem and files."""
    try:
        data = [Path(p).read_bytes() for p in (cert, key, trust)]
    except OSError as exc:
        raise SVIDError(f"cannot read {exc.filename}: {exc.strerror}") from None
    try:
        return load_material(*data, expected_id=expected_id)
    except SVIDError as exc:
        raise SVIDError(f"{exc} (cert {cert}, key {key}, trust {trust})") from None


class FileWatcher:
    """Reloads the identity files when they change (plain rewrites and symlink swaps)."""

    def __init__(self, state: IdentityState, cert: str, key: str, trust: str,
                 on_change=None):
        self.state = state
        self.paths = (cert, key, trust)
        self.on_change = on_change
        self.seen = self._signature()
        self.refused: tuple | None = None

    def _signature(self) -> tuple:
        out = []
        for p in self.paths:
            try:
                st = os.stat(p)  # follows symlinks: a Kubernetes ..data swap changes the inode
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def reload(self, force: bool = False) -> bool:
        """Load the files if they changed (or when forced, on SIGHUP). True if rotated."""
        signature = self._signature()
        if not force and (signature == self.seen or signature == self.refused):
            return False
        try:
            material = load_files(*self.paths, expected_id=self.state.own_id)
        except SVIDError as exc:
            if signature != self.refused:
                self.state.rotation_failures += 1
                log.error("identity: new material refused, the current certificate stays: %s", exc)
            self.refused = signature
            return False
        self.seen = signature
        self.refused = None
        if self.state.material is not None and material.cert_pem == self.state.material.cert_pem \
                and material.trust_pem == self.state.material.trust_pem:
            return False
        self.state.install(material)
        log.info("identity: rotated to serial %x, valid until %s", material.serial,
                 material.not_after.isoformat())
        if self.on_change is not None:
            self.on_change()
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                self.reload()
                self.state.check_expiry()
            except Exception:  # never let the watcher die: the old material stays in use
                log.exception("identity: reload failed")

