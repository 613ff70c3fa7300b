"""Certificates for identity tests, built with `cryptography` directly (not our CA code),
so tests can make every odd certificate a peer might present.

  make_ca(trust_domain="mesh.local", *, parent=None, ...)      -> Issuer (.cert .key .trust_domain .pem)
      a root (or, with parent=Issuer, an intermediate) CA; URI SAN spiffe://TD unless uris=
  make_leaf(issuer, spiffe_id="spiffe://mesh.local/ns/default/sa/web", *, uris=None, ...)
                                                               -> Leaf (.cert .key .cert_pem .key_pem)
      an X509-SVID by default; every rule can be broken by a keyword: uris=[...] (any URI
      SANs, [] for none), ca=True, basic_constraints=False, key_cert_sign=True,
      crl_sign=True, digital_signature=False, key_usage=False, eku=("server",) / None,
      not_before / not_after (datetimes, or seconds relative to now), dns=[...], ips=[...]
  pem(cert_or_certs) / key_pem(key)                            -> bytes
  write_material(directory, leaf, trust, chain=())             -> (cert_path, key_path, trust_path)
      writes cert.pem (leaf + chain), key.pem (0600), trust.pem (trust: Issuer, cert or list)

`ec_key()` makes a P-256 key; `rsa_key()` a 2048-bit RSA key (cached: RSA generation is slow).
"""
from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_ID = "spiffe://mesh.local/ns/default/sa/web"

_EKU = {
    "server": ExtendedKeyUsageOID.SERVER_AUTH,
    "client": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code": ExtendedKeyUsageOID.CODE_SIGNING,
    "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
}


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _when(value, default_offset: float) -> dt.datetime:
    if value is None:
        value = default_offset
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return now() + dt.timedelta(seconds=float(value))


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@functools.lru_cache(maxsize=4)
def rsa_key(bits: int = 2048, index: int = 0) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _hash(key):
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def pem(certs) -> bytes:
    if isinstance(certs, Issuer):
        certs = certs.cert
    if isinstance(certs, x509.Certificate):
        certs = [certs]
    return b"".join(
        (c.cert if isinstance(c, Issuer) else c).public_bytes(serialization.Encoding.PEM) for c in certs
    )


def key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(*, digital_signature=False, key_cert_sign=False, crl_sign=False, key_encipherment=False):
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False,
        key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
        key_cert_sign=key_cert_sign, crl_sign=crl_sign, encipher_only=False, decipher_only=False,
    )


@dataclass
class Issuer:
    cert: x509.Certificate
    key: object
    trust_domain: str | None = None

    @property
    def pem(self) -> bytes:
        return pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)


@dataclass
class Leaf:
    cert: x509.Certificate
    key: object

    @property
    def cert_pem(self) -> bytes:
        return pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def serial(self) -> int:
        return self.cert.serial_number


def make_ca(
    trust_domain: str | None = "mesh.local",
    *,
    parent: Issuer | None = None,
    key=None,
    name: str | None = None,
    uris: Sequence[str] | None = None,
    ca: bool = True,
    path_length: int | None = None,
    key_cert_sign: bool = True,
    not_before=None,
    not_after=None,
) -> Issuer:
    """A CA certificate: self-signed root, or signed by `parent` (an intermediate).

    Roots default to pathlen 0, intermediates to None (unlimited) unless `path_length` is
    given; parent roots that should sign intermediates need make_ca(path_length=1)."""
    key = key or ec_key()
    if uris is None:
        uris = [f"spiffe://{trust_domain}"] if trust_domain else []
    if path_length is None and parent is None:
        path_length = 0
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fastproxy tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, name or f"test CA {trust_domain} {secrets.token_hex(4)}"),
    ])
    issuer_name = parent.cert.subject if parent else subject
    signing_key = parent.key if parent else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_when(not_before, -3600))
        .not_valid_after(_when(not_after, 10 * 86400))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
        .add_extension(_key_usage(key_cert_sign=key_cert_sign, crl_sign=True, digital_signature=not key_cert_sign), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if parent is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()), critical=False
        )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
        )
    return Issuer(builder.sign(signing_key, _hash(signing_key)), key, trust_domain)


def make_leaf(
    issuer: Issuer,
    spiffe_id: str | None = DEFAULT_ID,
    *,
    uris: Sequence[str] | None = None,
    dns: Iterable[str] = (),
    ips: Iterable[str] = (),
    key=None,
    ca: bool = False,
    basic_constraints: bool = True,
    key_usage: bool = True,
    digital_signature: bool = True,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
    eku: Sequence[str] | None = ("server", "client"),
    not_before=None,
    not_after=None,
    subject: str = "fastproxy test workload",
    signing_key=None,
) -> Leaf:
    """A leaf certificate signed by `issuer` (or by `signing_key`: a bad signature).

    By default a valid X509-SVID for `spiffe_id` (valid from an hour ago for a day)."""
    key = key or ec_key()
    if uris is None:
        uris = [spiffe_id] if spiffe_id else []
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_when(not_before, -3600))
        .not_valid_after(_when(not_after, 86400))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    )
    if basic_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if key_usage:
        builder = builder.add_extension(
            _key_usage(digital_signature=digital_signature, key_cert_sign=key_cert_sign, crl_sign=crl_sign),
            critical=True,
        )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([_EKU[e] for e in eku]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    signer = signing_key or issuer.key
    return Leaf(builder.sign(signer, _hash(signer)), key)


def write_material(directory, leaf: Leaf, trust, chain: Iterable = ()) -> tuple[Path, Path, Path]:
    """Write cert.pem (the leaf, then `chain`), key.pem (mode 0600) and trust.pem."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path, trust_path = directory / "cert.pem", directory / "key.pem", directory / "trust.pem"
    cert_path.write_bytes(pem([leaf.cert, *chain]))
    key_path.write_bytes(leaf.key_pem)
    os.chmod(key_path, 0o600)
    trust_path.write_bytes(pem(trust))
    return cert_path, key_path, trust_path
