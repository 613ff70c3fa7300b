"""The mesh root CA on disk and what it signs (`fastproxy ca init` / `ca issue` / `ca serve`).

A CA directory holds `ca.pem` (the self-signed root: EC P-256, CA:TRUE pathlen 0, keyUsage
keyCertSign+cRLSign, URI SAN "spiffe://TRUST_DOMAIN" naming its trust domain, as SPIFFE
roots carry) and `ca-key.pem` (PKCS#8, mode 0600). Workload certificates (X509-SVIDs) carry
exactly one URI SAN with the SPIFFE id, CA:FALSE, keyUsage digitalSignature and
extendedKeyUsage serverAuth+clientAuth; the CA never signs an id outside its trust domain.
"""
from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import secrets
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fastproxy.identity.spiffe import InvalidSpiffeId, parse_spiffe_id, parse_trust_domain

__all__ = ["CA", "CAError", "CA_CERT", "CA_KEY", "init_ca", "issue_files"]

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
CA_LIFETIME = 10 * 365 * 86400 + 3 * 86400  # ~10 years
BACKDATE = 60.0  # seconds: issued certificates start a minute early, for clock skew
MAX_TTL = 366 * 86400.0


class CAError(Exception):
    """A CA operation failed; str() is one line naming the file or id and what is wrong."""


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def _not_after(cert: x509.Certificate) -> _dt.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=_dt.timezone.utc)


def _hash_for(key):
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return hashes.SHA256()


def _serial() -> int:
    # 159 random bits: positive, at most 20 octets (RFC 5280 4.1.2.2)
    return secrets.randbits(159) | 1


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _spiffe_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [uri for uri in san.get_values_for_type(x509.UniformResourceIdentifier) if uri.startswith("spiffe://")]


def key_pem(key) -> bytes:
    """A private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (refusing an existing file) with `mode`, and write `data`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_replace(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` atomically (temporary file + rename), with `mode`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# leaves (SVIDs and the CA service's own certificate) only sign: digitalSignature alone
LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
    encipher_only=False, decipher_only=False,
)


def _read(path: Path, hint: str = "") -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CAError(f"{path}: no such file{hint}") from None
    except OSError as exc:
        raise CAError(f"{path}: cannot read: {exc.strerror or exc}") from None


class CA:
    """A loaded CA: its certificate, private key, trust domain and directory."""

    def __init__(self, cert: x509.Certificate, key, path: Path | str, trust_domain: str | None = None) -> None:
        self.cert = cert
        self.key = key
        self.path = Path(path)
        if trust_domain is None:
            uris = _spiffe_uris(cert)
            if len(uris) != 1:
                raise CAError(f"{self.path / CA_CERT}: the CA certificate must carry one spiffe:// URI SAN naming its trust domain")
            try:
                trust_domain = parse_spiffe_id(uris[0]).trust_domain
            except InvalidSpiffeId as exc:
                raise CAError(f"{self.path / CA_CERT}: {exc}") from None
        self.trust_domain = trust_domain

    def __repr__(self) -> str:
        return f"CA(trust_domain={self.trust_domain!r}, path={str(self.path)!r})"

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "CA":
        """Load DIR/ca.pem and DIR/ca-key.pem; `CAError` if missing, unreadable or not a CA."""
        directory = Path(directory)
        cert_path, key_path = directory / CA_CERT, directory / CA_KEY
        cert_data = _read(cert_path, f" (create the CA with `fastproxy ca init {directory}`)")
        key_data = _read(key_path)
        try:
            certs = x509.load_pem_x509_certificates(cert_data)
        except ValueError:
            raise CAError(f"{cert_path}: not a PEM certificate") from None
        cert = certs[0]
        try:
            key = serialization.load_pem_private_key(key_data, password=None)
        except TypeError:
            raise CAError(f"{key_path}: the key is encrypted; fastproxy needs an unencrypted key") from None
        except (ValueError, UnsupportedAlgorithm):
            raise CAError(f"{key_path}: not a PEM private key") from None
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
            raise CAError(f"{key_path}: unsupported key type {type(key).__name__}")
        if _public_der(key.public_key()) != _public_der(cert.public_key()):
            raise CAError(f"{key_path}: the key does not match {cert_path}")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise CAError(f"{cert_path}: not a CA certificate (basicConstraints CA:TRUE missing)")
        try:
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            ku = None
        if ku is not None and not ku.key_cert_sign:
            raise CAError(f"{cert_path}: the CA certificate's keyUsage lacks keyCertSign")
        if _not_after(cert) <= _now():
            raise CAError(f"{cert_path}: the CA certificate expired at {_not_after(cert).isoformat()}")
        return cls(cert, key, directory)

    # --- issuing ---------------------------------------------------------------------------

    def _validity(self, ttl: float) -> tuple[_dt.datetime, _dt.datetime]:
        try:
            ttl = float(ttl)
        except (TypeError, ValueError):
            raise CAError(f"invalid ttl {ttl!r}") from None
        if not (ttl > 0) or ttl > MAX_TTL:
            raise CAError(f"the ttl must be > 0 and at most {int(MAX_TTL // 86400)} days, not {ttl!r} s")
        now = _now()
        not_before = now - _dt.timedelta(seconds=BACKDATE)
        not_after = min(now + _dt.timedelta(seconds=ttl), _not_after(self.cert))
        if not_after <= now:
            raise CAError(f"{self.path / CA_CERT}: the CA certificate expired")
        return not_before, not_after

    def _builder(self, subject: x509.Name, public_key, ttl: float) -> x509.CertificateBuilder:
        not_before, not_after = self._validity(ttl)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()), critical=False
            )
        )

    def issue_svid(self, spiffe_id: str, public_key, ttl: float) -> x509.Certificate:
        """An X509-SVID for `spiffe_id` and `public_key`, valid for `ttl` seconds.

        Exactly one URI SAN (the id), CA:FALSE, keyUsage digitalSignature (critical),
        extendedKeyUsage serverAuth+clientAuth. Refuses (`CAError`) invalid ids, the bare
        trust-domain id and ids outside this CA's trust domain; the lifetime never exceeds
        the CA's own.
        """
        try:
            parsed = parse_spiffe_id(spiffe_id)
        except InvalidSpiffeId as exc:
            raise CAError(str(exc)) from None
        if parsed.is_trust_domain:
            raise CAError(f"{spiffe_id!r} names a trust domain, not a workload: an SVID id needs a path")
        if parsed.trust_domain != self.trust_domain:
            raise CAError(
                f"{spiffe_id!r} is outside the CA's trust domain {self.trust_domain!r}"
            )
        if not isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
            raise CAError(f"unsupported public key type {type(public_key).__name__}")
        if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < 2048:
            raise CAError(f"RSA keys must have at least 2048 bits, not {public_key.key_size}")
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fastproxy")])
        builder = (
            self._builder(subject, public_key, ttl)
            .add_extension(LEAF_KEY_USAGE, critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(parsed))]), critical=False
            )
        )
        return builder.sign(self.key, _hash_for(self.key))

    def issue_server_cert(self, hosts: list[str], ttl: float) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A server certificate and its new EC P-256 key for `hosts` (DNS names or IP
        addresses, as SANs), extendedKeyUsage serverAuth — for `ca serve`'s own HTTPS."""
        hosts = list(hosts)
        if not hosts:
            raise CAError("a server certificate needs at least one host name or address")
        names: list[x509.GeneralName] = []
        for host in hosts:
            text = host.strip("[]") if isinstance(host, str) else str(host)
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(text)))
            except ValueError:
                if not text or any(c.isspace() or c in "/:@" for c in text):
                    raise CAError(f"invalid host name {host!r}") from None
                try:
                    names.append(x509.DNSName(text.encode("idna").decode("ascii") if not text.isascii() else text))
                except UnicodeError:
                    raise CAError(f"invalid host name {host!r}") from None
        key = ec.generate_private_key(ec.SECP256R1())
        common_name = str(hosts[0])[:64]
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fastproxy"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ])
        builder = (
            self._builder(subject, key.public_key(), ttl)
            .add_extension(LEAF_KEY_USAGE, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
        )
        return builder.sign(self.key, _hash_for(self.key)), key


def init_ca(directory: str | os.PathLike, trust_domain: str = "mesh.local") -> CA:
    """Create a root CA in `directory` (created if needed, mode 0700): DIR/ca.pem and
    DIR/ca-key.pem (mode 0600). Refuses (`CAError`) to overwrite an existing CA file and
    invalid trust domains."""
    try:
        trust_domain = parse_trust_domain(trust_domain)
    except InvalidSpiffeId as exc:
        raise CAError(f"invalid trust domain: {exc}") from None
    directory = Path(directory)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    for path in (cert_path, key_path):
        if os.path.lexists(path):
            raise CAError(f"{path}: already exists; refusing to overwrite a CA")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CAError(f"{directory}: cannot create the directory: {exc.strerror or exc}") from None
    if not directory.is_dir():
        raise CAError(f"{directory}: not a directory")

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fastproxy"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"fastproxy mesh root CA {trust_domain}"[:64]),
    ])
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(now - _dt.timedelta(seconds=BACKDATE))
        .not_valid_after(now + _dt.timedelta(seconds=CA_LIFETIME))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    try:
        _write_new(key_path, key_pem(key), 0o600)
    except FileExistsError:
        raise CAError(f"{key_path}: already exists; refusing to overwrite a CA") from None
    except OSError as exc:
        raise CAError(f"{key_path}: cannot write: {exc.strerror or exc}") from None
    try:
        _write_new(cert_path, cert_pem(cert), 0o644)
    except OSError as exc:
        try:
            os.unlink(key_path)
        except OSError:
            pass
        if isinstance(exc, FileExistsError):
            raise CAError(f"{cert_path}: already exists; refusing to overwrite a CA") from None
        raise CAError(f"{cert_path}: cannot write: {exc.strerror or exc}") from None
    return CA(cert, key, directory, trust_domain)


def issue_files(ca: CA, spiffe_id: str, out_dir: str | os.PathLike, ttl: float) -> x509.Certificate:
    """Issue an SVID for `spiffe_id` with a new EC P-256 key and write OUTDIR/cert.pem,
    OUTDIR/key.pem (mode 0600) and OUTDIR/trust.pem (the CA certificate).

    Existing files are replaced atomically, each by a rename (key first, then cert, then
    trust), so a watching sidecar never reads a half-written file. Returns the certificate.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_svid(spiffe_id, key.public_key(), ttl)
    _write_files(ca, cert, key, out_dir)
    return cert


def issue_server_files(ca: CA, hosts: list[str], out_dir: str | os.PathLike, ttl: float) -> x509.Certificate:
    """Like `issue_files`, for a TLS server certificate naming `hosts` (DNS names or IP
    addresses): the injector's, whose clients verify it with the CA certificate."""
    cert, key = ca.issue_server_cert(hosts, ttl)
    _write_files(ca, cert, key, out_dir)
    return cert


def _write_files(ca: CA, cert: x509.Certificate, key, out_dir: str | os.PathLike) -> None:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise CAError(f"{out_dir}: cannot create the directory: {exc.strerror or exc}") from None
    for name, data, mode in (
        ("key.pem", key_pem(key), 0o600),
        ("cert.pem", cert_pem(cert), 0o644),
        ("trust.pem", ca.cert_pem, 0o644),
    ):
        path = out_dir / name
        try:
            _write_replace(path, data, mode)
        except OSError as exc:
            raise CAError(f"{path}: cannot write: {exc.strerror or exc}") from None
