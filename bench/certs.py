"""Certificates for the TLS scenarios, made fresh for every run with `cryptography`.

One throw-away CA and two workload certificates shaped like SPIFFE X.509-SVIDs (exactly
one spiffe:// URI SAN, CA:FALSE, EKU serverAuth+clientAuth), so fastproxy (SPEC §6),
nginx and HAProxy can all use the same files. Each also carries a DNS name, which nginx
and HAProxy check when they verify the server of an mTLS hop. ECDSA P-256 keys.

Must not be used for anything but the benchmark: keys live in the run's work directory.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "bench.local"


@dataclass
class WorkloadCert:
    spiffe_id: str
    dns_name: str
    cert: Path          # leaf certificate (PEM)
    key: Path           # its private key (PEM, mode 0600)
    combined: Path      # cert + key in one file, as HAProxy's `crt` wants it


@dataclass
class BenchCerts:
    ca: Path            # the trust bundle: the CA certificate
    server: WorkloadCert
    client: WorkloadCert


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def make_certs(directory: Path) -> BenchCerts:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fastproxy bench"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "fastproxy bench CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    ca_path = _write(directory / "ca.pem", ca_pem)

    def workload(role: str) -> WorkloadCert:
        key = ec.generate_private_key(ec.SECP256R1())
        spiffe_id = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/{role}"
        dns_name = f"{role}.{TRUST_DOMAIN}"
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier(spiffe_id),
                x509.DNSName(dns_name),
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        role_dir = directory / role
        role_dir.mkdir(exist_ok=True)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = _pem_key(key)
        _write(role_dir / "trust.pem", ca_pem)
        return WorkloadCert(
            spiffe_id=spiffe_id,
            dns_name=dns_name,
            cert=_write(role_dir / "cert.pem", cert_pem),
            key=_write(role_dir / "key.pem", key_pem, 0o600),
            combined=_write(role_dir / "combined.pem", cert_pem + key_pem, 0o600),
        )

    return BenchCerts(ca=ca_path, server=workload("server"), client=workload("client"))
