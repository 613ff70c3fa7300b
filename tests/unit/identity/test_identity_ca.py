"""The mesh CA: init_ca, CA.load, issue_svid, issue_server_cert, issue_files."""

import datetime as dt
import ipaddress
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fastproxy.identity.ca import CA, CAError, init_ca, issue_files
from fastproxy.identity.svid import load_material, svid_id
from support.certs import ec_key, key_pem, make_ca, make_leaf, pem, rsa_key

WEB = "spiffe://mesh.local/ns/default/sa/web"


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ca") / "ca"
    init_ca(directory)
    return directory


@pytest.fixture(scope="module")
def ca(ca_dir):
    return CA.load(ca_dir)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def ext(cert, cls):
    return cert.extensions.get_extension_for_class(cls)


def test_init_writes_root_with_the_expected_shape(tmp_path):
    directory = tmp_path / "new" / "ca"
    made = init_ca(directory, "example.org")
    assert made.trust_domain == "example.org" and made.path == directory
    assert sorted(os.listdir(directory)) == ["ca-key.pem", "ca.pem"]
    assert mode(directory / "ca-key.pem") == 0o600
    assert mode(directory) == 0o700
    cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    assert cert == made.cert
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)  # self-signed
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=9 * 365) < life < dt.timedelta(days=11 * 365)
    assert cert.not_valid_before_utc <= dt.datetime.now(dt.timezone.utc)
    ext(cert, x509.SubjectKeyIdentifier)


def test_init_default_trust_domain(tmp_path):
    assert init_ca(tmp_path / "ca").trust_domain == "mesh.local"


def test_init_into_an_existing_empty_directory(tmp_path):
    init_ca(tmp_path)
    assert (tmp_path / "ca.pem").exists()


@pytest.mark.parametrize("existing", ["ca.pem", "ca-key.pem"])
def test_init_refuses_to_overwrite(tmp_path, existing):
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(CAError, match="already exists"):
        init_ca(tmp_path)
    assert (tmp_path / existing).read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == [existing]


def test_init_twice_keeps_the_first(tmp_path):
    first = init_ca(tmp_path)
    with pytest.raises(CAError, match="already exists"):
        init_ca(tmp_path)
    assert CA.load(tmp_path).cert == first.cert


@pytest.mark.parametrize("trust_domain", ["", "Mesh.local", "mesh.local:80", "mesh/x", "a b"])
def test_init_refuses_invalid_trust_domains(tmp_path, trust_domain):
    with pytest.raises(CAError, match="invalid trust domain"):
        init_ca(tmp_path / "ca", trust_domain)
    assert not (tmp_path / "ca").exists()


def test_load_round_trip(ca_dir, ca):
    assert ca.trust_domain == "mesh.local" and ca.path == ca_dir
    assert ca.cert_pem == (ca_dir / "ca.pem").read_bytes()


def test_load_missing_directory(tmp_path):
    with pytest.raises(CAError, match="ca.pem: no such file"):
        CA.load(tmp_path / "nothing")


def test_load_missing_key(tmp_path, ca_dir):
    (tmp_path / "ca.pem").write_bytes((ca_dir / "ca.pem").read_bytes())
    with pytest.raises(CAError, match="ca-key.pem: no such file"):
        CA.load(tmp_path)


def test_load_garbage(tmp_path, ca_dir):
    (tmp_path / "ca.pem").write_bytes(b"garbage")
    (tmp_path / "ca-key.pem").write_bytes((ca_dir / "ca-key.pem").read_bytes())
    with pytest.raises(CAError, match="not a PEM certificate"):
        CA.load(tmp_path)
    (tmp_path / "ca.pem").write_bytes((ca_dir / "ca.pem").read_bytes())
    (tmp_path / "ca-key.pem").write_bytes(b"garbage")
    with pytest.raises(CAError, match="not a PEM private key"):
        CA.load(tmp_path)


def test_load_unreadable(tmp_path, ca_dir):
    (tmp_path / "ca.pem").write_bytes((ca_dir / "ca.pem").read_bytes())
    (tmp_path / "ca-key.pem").mkdir()  # unreadable as a file, even for root
    with pytest.raises(CAError, match="ca-key.pem: cannot read"):
        CA.load(tmp_path)


def test_load_mismatched_key(tmp_path, ca_dir):
    (tmp_path / "ca.pem").write_bytes((ca_dir / "ca.pem").read_bytes())
    (tmp_path / "ca-key.pem").write_bytes(key_pem(ec_key()))
    with pytest.raises(CAError, match="does not match"):
        CA.load(tmp_path)


def test_load_refuses_a_leaf(tmp_path):
    issuer = make_ca()
    leaf = make_leaf(issuer)
    (tmp_path / "ca.pem").write_bytes(leaf.cert_pem)
    (tmp_path / "ca-key.pem").write_bytes(leaf.key_pem)
    with pytest.raises(CAError, match="not a CA"):
        CA.load(tmp_path)


def test_load_refuses_a_ca_without_trust_domain(tmp_path):
    issuer = make_ca(None)
    (tmp_path / "ca.pem").write_bytes(issuer.pem)
    (tmp_path / "ca-key.pem").write_bytes(issuer.key_pem)
    with pytest.raises(CAError, match="URI SAN"):
        CA.load(tmp_path)


def test_load_refuses_an_expired_ca(tmp_path):
    issuer = make_ca(not_before=-7200, not_after=-60)
    (tmp_path / "ca.pem").write_bytes(issuer.pem)
    (tmp_path / "ca-key.pem").write_bytes(issuer.key_pem)
    with pytest.raises(CAError, match="expired"):
        CA.load(tmp_path)


def test_load_accepts_another_ca_with_a_spiffe_uri(tmp_path):
    issuer = make_ca("other.org")
    (tmp_path / "ca.pem").write_bytes(issuer.pem)
    (tmp_path / "ca-key.pem").write_bytes(issuer.key_pem)
    assert CA.load(tmp_path).trust_domain == "other.org"


def test_svid_extensions(ca):
    key = ec_key()
    cert = ca.issue_svid(WEB, key.public_key(), 3600)
    cert.verify_directly_issued_by(ca.cert)
    assert cert.public_key() == key.public_key()
    san = ext(cert, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(WEB)]  # exactly one SAN, the URI
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.key_encipherment)
    eku = ext(cert, x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca.cert, x509.SubjectKeyIdentifier).value.digest
    assert svid_id(cert, {"mesh.local"}, "client") == WEB
    assert svid_id(cert, {"mesh.local"}, "server") == WEB
    assert 0 < cert.serial_number < 2**159


def test_svid_lifetime(ca):
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    cert = ca.issue_svid(WEB, ec_key().public_key(), 600)
    after = dt.datetime.now(dt.timezone.utc)
    assert cert.not_valid_before_utc <= before
    assert before - dt.timedelta(minutes=2) <= cert.not_valid_before_utc
    assert before + dt.timedelta(seconds=599) <= cert.not_valid_after_utc <= after + dt.timedelta(seconds=600)


def test_svid_lifetime_never_exceeds_the_ca(tmp_path):
    issuer = make_ca(not_after=3600)
    short = CA(issuer.cert, issuer.key, tmp_path)
    cert = short.issue_svid(WEB, ec_key().public_key(), 86400)
    assert cert.not_valid_after_utc <= issuer.cert.not_valid_after_utc


def test_serials_differ(ca):
    key = ec_key().public_key()
    assert ca.issue_svid(WEB, key, 60).serial_number != ca.issue_svid(WEB, key, 60).serial_number


def test_svid_for_an_rsa_key(ca):
    cert = ca.issue_svid(WEB, rsa_key().public_key(), 60)
    assert svid_id(cert) == WEB


@pytest.mark.parametrize(
    "spiffe_id, message",
    [
        ("spiffe://other.local/ns/default/sa/web", "outside the CA's trust domain 'mesh.local'"),
        ("spiffe://mesh.localx/web", "outside the CA's trust domain"),
        ("spiffe://mesh.local", "names a trust domain, not a workload"),
        ("spiffe://mesh.local/ns/../web", 'segment ".."'),
        ("spiffe://mesh.local:80/web", "port"),
        ("https://mesh.local/web", "scheme"),
    ],
)
def test_svid_refuses_bad_ids(ca, spiffe_id, message):
    with pytest.raises(CAError) as info:
        ca.issue_svid(spiffe_id, ec_key().public_key(), 60)
    assert message in str(info.value)


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), 400 * 86400, "x"])
def test_svid_refuses_bad_ttls(ca, ttl):
    with pytest.raises(CAError, match="ttl"):
        ca.issue_svid(WEB, ec_key().public_key(), ttl)


def test_server_cert(ca):
    cert, key = ca.issue_server_cert(["127.0.0.1", "localhost", "[::1]", "ca.mesh.internal"], 3600)
    cert.verify_directly_issued_by(ca.cert)
    assert cert.public_key() == key.public_key()
    assert key.curve.name == "secp256r1"
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "ca.mesh.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == []
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ext(cert, x509.BasicConstraints).value.ca is False
    assert ext(cert, x509.KeyUsage).value.digital_signature


@pytest.mark.parametrize("hosts", [[], ["bad host"], ["a/b"]])
def test_server_cert_refuses_bad_hosts(ca, hosts):
    with pytest.raises(CAError):
        ca.issue_server_cert(hosts, 60)


def test_issue_files_round_trip(ca, tmp_path):
    out = tmp_path / "out" / "web"
    cert = issue_files(ca, WEB, out, 3600)
    assert sorted(os.listdir(out)) == ["cert.pem", "key.pem", "trust.pem"]
    assert mode(out / "key.pem") == 0o600
    assert (out / "trust.pem").read_bytes() == ca.cert_pem
    assert x509.load_pem_x509_certificate((out / "cert.pem").read_bytes()) == cert
    material = load_material(
        (out / "cert.pem").read_bytes(), (out / "key.pem").read_bytes(), (out / "trust.pem").read_bytes(), WEB
    )
    assert material.spiffe_id == WEB and material.serial == cert.serial_number
    assert isinstance(material.cert.public_key(), ec.EllipticCurvePublicKey)


def test_issue_files_replaces_existing_material(ca, tmp_path):
    first = issue_files(ca, WEB, tmp_path, 3600)
    first_key = (tmp_path / "key.pem").read_bytes()
    second = issue_files(ca, WEB, tmp_path, 3600)
    assert first.serial_number != second.serial_number
    assert (tmp_path / "key.pem").read_bytes() != first_key
    assert mode(tmp_path / "key.pem") == 0o600
    assert sorted(os.listdir(tmp_path)) == ["cert.pem", "key.pem", "trust.pem"]  # no temporaries left


def test_issue_files_refuses_other_trust_domains_and_writes_nothing(ca, tmp_path):
    with pytest.raises(CAError, match="outside the CA's trust domain"):
        issue_files(ca, "spiffe://evil.org/web", tmp_path / "out", 60)
    assert not (tmp_path / "out").exists()


def test_issued_svid_works_with_pem_helpers(ca):
    cert = ca.issue_svid(WEB, ec_key().public_key(), 60)
    assert pem(cert).startswith(b"-----BEGIN CERTIFICATE-----")
