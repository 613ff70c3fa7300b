"""X509-SVID rules (svid_id), trust domains of a bundle, and load_material's refusals.

The certificates are built with cryptography directly (support.certs), so every rule is
broken by a certificate nobody's CA code would make."""

import datetime as dt

import pytest

from fastproxy.identity.svid import Material, SVIDError, load_material, svid_id, trust_domains
from support.certs import DEFAULT_ID, ec_key, key_pem, make_ca, make_leaf, pem, rsa_key

WEB = DEFAULT_ID


@pytest.fixture(scope="module")
def root():
    return make_ca("mesh.local")


@pytest.fixture(scope="module")
def other_root():
    return make_ca("mesh.local", name="another CA of the same trust domain")


def test_a_good_svid(root):
    cert = make_leaf(root).cert
    assert svid_id(cert) == WEB
    assert svid_id(cert, {"mesh.local"}, "client") == WEB
    assert svid_id(cert, ["other", "mesh.local"], "server") == WEB


def test_optional_extensions_may_be_absent(root):
    cert = make_leaf(root, basic_constraints=False, key_usage=False, eku=None).cert
    assert svid_id(cert, {"mesh.local"}, "client") == WEB


def test_other_sans_next_to_the_uri_are_fine(root):
    cert = make_leaf(root, dns=["web.default.svc"], ips=["10.0.0.1"]).cert
    assert svid_id(cert) == WEB


def test_any_extended_key_usage_counts(root):
    assert svid_id(make_leaf(root, eku=("any",)).cert, usage="client") == WEB


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(uris=[]), "no URI SAN"),
        (dict(uris=[], dns=["web.default.svc"]), "no URI SAN"),
        (dict(uris=[WEB, "spiffe://mesh.local/ns/default/sa/db"]), "2 URI SANs"),
        (dict(uris=[WEB, WEB]), "2 URI SANs"),
        (dict(uris=["https://mesh.local/ns/default/sa/web"]), "is not a spiffe:// id"),
        (dict(uris=["urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66"]), "is not a spiffe:// id"),
        (dict(uris=["SPIFFE://mesh.local/web"]), "is not a spiffe:// id"),
        (dict(uris=["spiffe://mesh.local:8443/web"]), "port"),
        (dict(uris=["spiffe://admin@mesh.local/web"]), "userinfo"),
        (dict(uris=["spiffe://mesh.local/web?x=1"]), "query"),
        (dict(uris=["spiffe://mesh.local/web#x"]), "fragment"),
        (dict(uris=["spiffe://mesh.local/w%65b"]), "percent-encoding"),
        (dict(uris=["spiffe://mesh.local"]), "needs a path"),
        (dict(uris=["spiffe://mesh.local/"]), 'trailing "/"'),
        (dict(uris=["spiffe://mesh.local/ns/../web"]), 'segment ".."'),
        (dict(uris=["spiffe://mesh.local/ns/./web"]), 'segment "."'),
        (dict(uris=["spiffe://mesh.local//web"]), "empty path segment"),
        (dict(uris=["spiffe:///web"]), "trust domain is empty"),
        (dict(uris=["spiffe://Mesh.Local/web"]), "trust domain must be lowercase"),
        (dict(ca=True), "must not be a CA"),
        (dict(key_cert_sign=True), "keyCertSign"),
        (dict(crl_sign=True), "cRLSign"),
        (dict(digital_signature=False), "needs keyUsage digitalSignature"),
        (dict(not_before=-7200, not_after=-60), "expired"),
        (dict(not_before=3600, not_after=7200), "not yet valid"),
    ],
)
def test_svid_rules(root, kwargs, reason):
    cert = make_leaf(root, **kwargs).cert
    with pytest.raises(SVIDError) as info:
        svid_id(cert, {"mesh.local"})
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "eku, usage, ok",
    [
        (("server",), "client", False),
        (("server",), "server", True),
        (("client",), "server", False),
        (("client",), "client", True),
        (("code",), "client", False),
        (("code",), "server", False),
        (("server",), None, True),
    ],
)
def test_extended_key_usage(root, eku, usage, ok):
    cert = make_leaf(root, eku=eku).cert
    if ok:
        assert svid_id(cert, usage=usage) == WEB
    else:
        name = "clientAuth" if usage == "client" else "serverAuth"
        with pytest.raises(SVIDError, match=f"extendedKeyUsage without {name}"):
            svid_id(cert, usage=usage)


def test_bad_usage_argument(root):
    with pytest.raises(ValueError):
        svid_id(make_leaf(root).cert, usage="both")


def test_wrong_trust_domain(root):
    cert = make_leaf(root, "spiffe://other.org/ns/default/sa/web").cert
    assert svid_id(cert) == "spiffe://other.org/ns/default/sa/web"  # no bundle given: not checked
    with pytest.raises(SVIDError, match=r"trust domain 'other.org' .* is not the bundle's \(mesh.local\)"):
        svid_id(cert, {"mesh.local"})
    with pytest.raises(SVIDError, match="not the bundle's"):
        svid_id(cert, set())


def test_validity_against_now(root):
    cert = make_leaf(root, not_before=-60, not_after=3600).cert
    moment = cert.not_valid_after_utc
    assert svid_id(cert, now=moment) == WEB  # the last second is still valid
    with pytest.raises(SVIDError, match="expired"):
        svid_id(cert, now=moment + dt.timedelta(seconds=1))
    with pytest.raises(SVIDError, match="expired"):
        svid_id(cert, now=(moment + dt.timedelta(seconds=1)).timestamp())
    with pytest.raises(SVIDError, match="not yet valid"):
        svid_id(cert, now=cert.not_valid_before_utc - dt.timedelta(seconds=1))
    naive = (cert.not_valid_before_utc + dt.timedelta(seconds=5)).replace(tzinfo=None)
    assert svid_id(cert, now=naive) == WEB


def test_trust_domains_of_a_bundle(root):
    assert trust_domains([root.cert]) == {"mesh.local"}
    assert trust_domains([root.cert, make_ca("b.org").cert, make_ca(None).cert]) == {"mesh.local", "b.org"}
    assert trust_domains([make_ca(None).cert]) == set()
    assert trust_domains([make_ca("x", uris=["https://x/", "spiffe://BAD/"]).cert]) == set()
    assert trust_domains([]) == set()


# --- load_material ---------------------------------------------------------------------


def material(leaf, trust, chain=(), expected=WEB, **kwargs):
    return load_material(pem([leaf.cert, *chain]), leaf.key_pem, pem(trust), expected, **kwargs)


def test_load_material(root):
    leaf = make_leaf(root)
    loaded = material(leaf, root)
    assert isinstance(loaded, Material)
    assert loaded.spiffe_id == WEB
    assert loaded.cert == leaf.cert and loaded.trust == (root.cert,)
    assert loaded.serial == leaf.cert.serial_number
    assert loaded.not_before == leaf.cert.not_valid_before_utc
    assert loaded.not_after == leaf.cert.not_valid_after_utc
    assert loaded.cert_pem == leaf.cert_pem and loaded.key_pem == leaf.key_pem
    assert loaded.trust_pem == root.pem
    assert "PRIVATE" not in repr(loaded)
    assert loaded.serial_hex == format(leaf.cert.serial_number, "x")


def test_load_material_without_expected_id(root):
    assert material(make_leaf(root), root, expected=None).spiffe_id == WEB


def test_load_material_with_a_bundle_of_several_cas(root, other_root):
    leaf = make_leaf(other_root)
    assert material(leaf, [root, other_root]).trust == (root.cert, other_root.cert)


def test_load_material_rsa(root):
    leaf = make_leaf(root, key=rsa_key())
    assert material(leaf, root).spiffe_id == WEB


def test_load_material_through_an_intermediate():
    top = make_ca(path_length=1)
    inter = make_ca(parent=top)
    leaf = make_leaf(inter)
    assert material(leaf, top, chain=[inter]).spiffe_id == WEB
    with pytest.raises(SVIDError, match="not signed by a CA of the trust bundle"):
        material(leaf, top)  # the intermediate is missing


def test_load_material_intermediate_refusals():
    top = make_ca(path_length=0)
    inter = make_ca(parent=top)
    with pytest.raises(SVIDError, match="pathlen 0"):
        material(make_leaf(inter), top, chain=[inter])
    top = make_ca(path_length=1)
    expired = make_ca(parent=top, not_before=-7200, not_after=-60)
    with pytest.raises(SVIDError, match="intermediate CA certificate expired"):
        material(make_leaf(expired), top, chain=[expired])
    stranger = make_ca(parent=make_ca(path_length=1))
    with pytest.raises(SVIDError, match="intermediate CA is not signed"):
        material(make_leaf(stranger), top, chain=[stranger])


def test_load_material_refuses_an_expired_trust_anchor():
    old = make_ca(not_before=-7200, not_after=-60)
    leaf = make_leaf(old, not_before=-3600, not_after=3600)
    with pytest.raises(SVIDError, match="trust bundle's CA certificate expired"):
        material(leaf, old)


@pytest.mark.parametrize(
    "case, reason",
    [
        ("key mismatch", "the key does not match the certificate"),
        ("other CA", "not signed by a CA of the trust bundle"),
        ("bad signature", "not signed by a CA of the trust bundle"),
        ("expired", "expired"),
        ("not yet valid", "not yet valid"),
        ("wrong id", "not the expected"),
        ("wrong trust domain", "not the bundle's"),
        ("garbage cert", "the certificate is not a PEM certificate"),
        ("garbage key", "the key is not a PEM private key"),
        ("garbage trust", "the trust bundle is not a PEM certificate"),
        ("empty cert", "the certificate is empty"),
        ("empty key", "the key is empty"),
        ("empty trust", "the trust bundle is empty"),
        ("blank cert", "the certificate is empty"),
        ("trust without CA", "the trust bundle has no CA certificate"),
        ("key only in cert file", "not a PEM certificate"),
        ("cert in key file", "the key is not a PEM private key"),
        ("ca as leaf", "must not be a CA"),
        ("no uri", "no URI SAN"),
        ("two uris", "2 URI SANs"),
        ("malformed id", "port"),
        ("encrypted key", "encrypted"),
    ],
)
def test_load_material_refusals(root, other_root, case, reason):
    leaf = make_leaf(root)
    cert, key, trust, expected = leaf.cert_pem, leaf.key_pem, root.pem, WEB
    if case == "key mismatch":
        key = key_pem(ec_key())
    elif case == "other CA":
        trust = other_root.pem
    elif case == "bad signature":
        cert = make_leaf(root, signing_key=ec_key(), key=leaf.key).cert_pem
    elif case == "expired":
        cert = make_leaf(root, key=leaf.key, not_before=-7200, not_after=-60).cert_pem
    elif case == "not yet valid":
        cert = make_leaf(root, key=leaf.key, not_before=600, not_after=7200).cert_pem
    elif case == "wrong id":
        expected = "spiffe://mesh.local/ns/default/sa/db"
    elif case == "wrong trust domain":
        cert = make_leaf(root, "spiffe://evil.org/web", key=leaf.key).cert_pem
        expected = "spiffe://evil.org/web"
    elif case == "garbage cert":
        cert = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
    elif case == "garbage key":
        key = b"garbage"
    elif case == "garbage trust":
        trust = b"\x00\x01garbage"
    elif case == "empty cert":
        cert = b""
    elif case == "empty key":
        key = b""
    elif case == "empty trust":
        trust = b""
    elif case == "blank cert":
        cert = b"\n  \n"
    elif case == "trust without CA":
        trust = make_leaf(root, "spiffe://mesh.local/other").cert_pem
    elif case == "key only in cert file":
        cert = key
    elif case == "cert in key file":
        key = cert
    elif case == "ca as leaf":
        cert = make_leaf(root, key=leaf.key, ca=True).cert_pem
    elif case == "no uri":
        cert = make_leaf(root, key=leaf.key, uris=[]).cert_pem
    elif case == "two uris":
        cert = make_leaf(root, key=leaf.key, uris=[WEB, WEB + "2"]).cert_pem
    elif case == "malformed id":
        cert = make_leaf(root, key=leaf.key, uris=["spiffe://mesh.local:1/web"]).cert_pem
    elif case == "encrypted key":
        from cryptography.hazmat.primitives import serialization

        key = leaf.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    with pytest.raises(SVIDError) as info:
        load_material(cert, key, trust, expected)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_load_material_usage(root):
    leaf = make_leaf(root, eku=("server",))
    assert material(leaf, root, usage="server").spiffe_id == WEB
    with pytest.raises(SVIDError, match="without clientAuth"):
        material(leaf, root, usage="client")


def test_load_material_at_a_given_time(root):
    leaf = make_leaf(root, not_before=-60, not_after=600)
    later = leaf.cert.not_valid_after_utc + dt.timedelta(seconds=1)
    with pytest.raises(SVIDError, match="expired"):
        material(leaf, root, now=later)


def test_load_material_accepts_str(root):
    leaf = make_leaf(root)
    loaded = load_material(leaf.cert_pem.decode(), leaf.key_pem.decode(), root.pem.decode(), WEB)
    assert isinstance(loaded.cert_pem, bytes) and loaded.spiffe_id == WEB


def test_trust_bundle_without_spiffe_uri_skips_the_domain_check():
    plain = make_ca(None)
    leaf = make_leaf(plain, "spiffe://anything.org/web")
    assert material(leaf, plain, expected=None).spiffe_id == "spiffe://anything.org/web"
