"""X509-SVIDs: checking a certificate against the SPIFFE rules and loading own material.

`svid_id` is the per-connection identity check for a peer certificate whose chain the TLS
stack has already verified. `load_material` validates a cert/key/trust triple as one unit
(the key matches, the certificate chains to the bundle, is valid now, follows the SVID
rules and names the expected id) before it may replace the material in use.
(X509-SVID: https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md)
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from fastproxy.identity.spiffe import InvalidSpiffeId, parse_spiffe_id

__all__ = ["Material", "SVIDError", "load_material", "svid_id", "trust_domains"]


class SVIDError(ValueError):
    """A certificate or material refused; str() is the reason, one line."""


def _utc(now) -> _dt.datetime:
    """`now` as an aware UTC datetime: None (the current time), a datetime or epoch seconds."""
    if now is None:
        return _dt.datetime.now(_dt.timezone.utc)
    if isinstance(now, _dt.datetime):
        return now if now.tzinfo is not None else now.replace(tzinfo=_dt.timezone.utc)
    return _dt.datetime.fromtimestamp(float(now), _dt.timezone.utc)


def not_before(cert: x509.Certificate) -> _dt.datetime:
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=_dt.timezone.utc)


def not_after(cert: x509.Certificate) -> _dt.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=_dt.timezone.utc)


def _iso(moment: _dt.datetime) -> str:
    return moment.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _extension(cert: x509.Certificate, cls):
    """The extension value of type `cls`, or None; malformed extensions raise SVIDError."""
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension) as exc:
        raise SVIDError(f"malformed certificate extensions: {exc}") from None


def _check_validity(cert: x509.Certificate, now: _dt.datetime, what: str = "certificate") -> None:
    if now < not_before(cert):
        raise SVIDError(f"{what} not yet valid (valid from {_iso(not_before(cert))})")
    if now > not_after(cert):
        raise SVIDError(f"{what} expired at {_iso(not_after(cert))}")


def _is_ca(cert: x509.Certificate) -> bool:
    bc = _extension(cert, x509.BasicConstraints)
    return bc is not None and bc.ca


_USAGES = {"client": ExtendedKeyUsageOID.CLIENT_AUTH, "server": ExtendedKeyUsageOID.SERVER_AUTH}


def svid_id(
    cert: x509.Certificate,
    trust_domains: Iterable[str] | None = None,
    usage: str | None = None,
    now=None,
) -> str:
    """The SPIFFE id of leaf X509-SVID `cert`, or `SVIDError` naming the broken rule.

    Rules: within its validity period at `now`; exactly one URI SAN, a valid spiffe:// id
    with a workload path; its trust domain in `trust_domains` (when given); basicConstraints
    absent or CA:FALSE; keyUsage (when present) with digitalSignature and without
    keyCertSign / cRLSign; an extendedKeyUsage (when present) including clientAuth
    (usage="client") or serverAuth (usage="server"). Does not verify the chain.
    """
    if usage is not None and usage not in _USAGES:
        raise ValueError(f"usage must be 'client', 'server' or None, not {usage!r}")
    _check_validity(cert, _utc(now))
    san = _extension(cert, x509.SubjectAlternativeName)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier) if san is not None else []
    if not uris:
        raise SVIDError("no URI SAN: an X509-SVID carries its SPIFFE id as exactly one URI SAN")
    if len(uris) > 1:
        raise SVIDError(f"{len(uris)} URI SANs: an X509-SVID has exactly one")
    uri = uris[0]
    if not uri.startswith("spiffe://"):
        shown = uri if len(uri) <= 120 else uri[:117] + "..."
        raise SVIDError(f"URI SAN {shown!r} is not a spiffe:// id")
    try:
        parsed = parse_spiffe_id(uri)
    except InvalidSpiffeId as exc:
        raise SVIDError(str(exc)) from None
    if parsed.is_trust_domain:
        raise SVIDError(f"invalid SPIFFE id {uri!r}: a workload id needs a path")
    if trust_domains is not None:
        allowed = set(trust_domains)
        if parsed.trust_domain not in allowed:
            expected = ", ".join(sorted(allowed)) or "none"
            raise SVIDError(
                f"trust domain {parsed.trust_domain!r} of {uri!r} is not the bundle's ({expected})"
            )
    if _is_ca(cert):
        raise SVIDError(f"{uri}: a leaf SVID must not be a CA (basicConstraints CA:TRUE)")
    ku = _extension(cert, x509.KeyUsage)
    if ku is not None:
        if ku.key_cert_sign:
            raise SVIDError(f"{uri}: a leaf SVID must not have keyUsage keyCertSign")
        if ku.crl_sign:
            raise SVIDError(f"{uri}: a leaf SVID must not have keyUsage cRLSign")
        if not ku.digital_signature:
            raise SVIDError(f"{uri}: a leaf SVID needs keyUsage digitalSignature")
    if usage is not None:
        eku = _extension(cert, x509.ExtendedKeyUsage)
        if eku is not None and _USAGES[usage] not in eku and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
            name = "clientAuth" if usage == "client" else "serverAuth"
            raise SVIDError(f"{uri}: extendedKeyUsage without {name}")
    return str(parsed)


def trust_domains(trust: Iterable[x509.Certificate]) -> set[str]:
    """The trust domains named by the bundle certificates' spiffe:// URI SANs."""
    domains: set[str] = set()
    for cert in trust:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (x509.ExtensionNotFound, ValueError, x509.DuplicateExtension):
            continue
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith("spiffe://"):
                try:
                    domains.add(parse_spiffe_id(uri).trust_domain)
                except InvalidSpiffeId:
                    continue
    return domains


@dataclass(frozen=True)
class Material:
    """Validated own identity: the SVID (with any intermediate, leaf first, in `cert_pem`),
    its key and the trust bundle, as PEM bytes for the TLS stack and parsed for reporting."""

    spiffe_id: str
    cert_pem: bytes
    key_pem: bytes
    trust_pem: bytes
    cert: x509.Certificate
    trust: tuple[x509.Certificate, ...]
    not_before: _dt.datetime
    not_after: _dt.datetime
    serial: int

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "x")

    @property
    def lifetime(self) -> float:
        return (self.not_after - self.not_before).total_seconds()

    def __repr__(self) -> str:  # never show the key
        return (
            f"Material(spiffe_id={self.spiffe_id!r}, serial={self.serial_hex}, "
            f"not_after={_iso(self.not_after)}, trust={len(self.trust)} certs)"
        )


def _load_certs(data: bytes, what: str) -> list[x509.Certificate]:
    if isinstance(data, str):
        data = data.encode()
    if not data or not data.strip():
        raise SVIDError(f"{what} is empty")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise SVIDError(f"{what} is not a PEM certificate") from None


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False


def _chain_to(leaf: x509.Certificate, intermediates: list[x509.Certificate],
              anchors: list[x509.Certificate], now: _dt.datetime) -> None:
    """Raise SVIDError unless `leaf` is signed by an anchor, or by one of `intermediates`
    (a valid CA certificate) that an anchor signed."""
    for anchor in anchors:
        if _signed_by(leaf, anchor):
            _check_validity(anchor, now, "the trust bundle's CA certificate")
            return
    for inter in intermediates:
        if not _signed_by(leaf, inter):
            continue
        if not _is_ca(inter):
            raise SVIDError("the certificate's issuer in the chain is not a CA")
        ku = _extension(inter, x509.KeyUsage)
        if ku is not None and not ku.key_cert_sign:
            raise SVIDError("the intermediate CA's keyUsage lacks keyCertSign")
        _check_validity(inter, now, "the intermediate CA certificate")
        for anchor in anchors:
            if _signed_by(inter, anchor):
                bc = _extension(anchor, x509.BasicConstraints)
                if bc is not None and bc.path_length == 0:
                    raise SVIDError("the trust bundle's CA allows no intermediate (pathlen 0)")
                _check_validity(anchor, now, "the trust bundle's CA certificate")
                return
        raise SVIDError("the intermediate CA is not signed by a CA of the trust bundle")
    raise SVIDError("the certificate is not signed by a CA of the trust bundle")


def load_material(
    cert_pem: bytes,
    key_pem: bytes,
    trust_pem: bytes,
    expected_id: str | None,
    now=None,
    *,
    usage: str | None = None,
) -> Material:
    """Validate own identity material as a unit, or raise `SVIDError` with the reason.

    `cert_pem` is the SVID, optionally followed by one intermediate CA; `key_pem` an
    unencrypted private key that must match it; `trust_pem` the bundle (at least one CA
    certificate). Refused: empty or unparsable PEM, a key not matching the certificate, a
    certificate not signed by the bundle (directly or through the intermediate), outside
    its validity period, breaking the X509-SVID rules (`svid_id`, with the bundle's trust
    domains when its certificates name any), or with an id other than `expected_id`.
    `usage` ("client"/"server") additionally requires that extendedKeyUsage.
    """
    when = _utc(now)
    if isinstance(cert_pem, str):
        cert_pem = cert_pem.encode()
    if isinstance(key_pem, str):
        key_pem = key_pem.encode()
    if isinstance(trust_pem, str):
        trust_pem = trust_pem.encode()
    chain = _load_certs(cert_pem, "the certificate")
    leaf, intermediates = chain[0], chain[1:]
    if not key_pem or not key_pem.strip():
        raise SVIDError("the key is empty")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise SVIDError("the key is encrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise SVIDError("the key is not a PEM private key") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise SVIDError(f"unsupported key type {type(key).__name__}")
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise SVIDError("the key does not match the certificate")
    trust = _load_certs(trust_pem, "the trust bundle")
    anchors = [cert for cert in trust if _is_ca(cert)]
    if not anchors:
        raise SVIDError("the trust bundle has no CA certificate")
    _check_validity(leaf, when)
    _chain_to(leaf, intermediates, anchors, when)
    domains = trust_domains(anchors)
    spiffe_id = svid_id(leaf, domains or None, usage=usage, now=when)
    if expected_id is not None and spiffe_id != expected_id:
        raise SVIDError(f"the certificate is for {spiffe_id!r}, not the expected {expected_id!r}")
    return Material(
        spiffe_id=spiffe_id,
        cert_pem=cert_pem,
        key_pem=key_pem,
        trust_pem=trust_pem,
        cert=leaf,
        trust=tuple(trust),
        not_before=not_before(leaf),
        not_after=not_after(leaf),
        serial=leaf.serial_number,
    )
