"""`fastproxy ca serve` (SPEC §6): a real server process, real HTTPS requests verified with
the CA certificate. Loopback only, every wait bounded."""

from __future__ import annotations

import http.client
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fastproxy.identity.ca import init_ca
from fastproxy.identity.svid import load_material
from support.kube import CLUSTER_ISSUER, cluster_key, jwks_json, sa_token
from support.mesh import CAProcess
from support.procs import free_port

TD = "mesh.local"
WEB = "spiffe://mesh.local/ns/default/sa/web"
WEB_SECRET = "web-secret-6f1d2c"
JOBS_SECRET = "jobs-secret-90ab"
TTL = 600


def make_workdir(tmp: Path) -> Path:
    init_ca(tmp / "ca", TD)
    (tmp / "web.token").write_text(f"  {WEB_SECRET}\n\n")   # stripped when read
    return tmp


def ca_toml(port: int, ttl: str = f"{TTL}s") -> str:
    return f"""
[ca]
dir = "ca"
bind = "127.0.0.1:{port}"
ttl = "{ttl}"

[[ca.token]]
token_file = "web.token"
ids = ["{WEB}"]

[[ca.token]]
token = "{JOBS_SECRET}"
ids = ["spiffe://mesh.local/ns/jobs/*"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    work = make_workdir(tmp_path_factory.mktemp("ca-serve"))
    ca = CAProcess(work, ca_toml(port), port, "ca").start()
    yield ca
    rc = ca.stop()
    assert rc == 0, ca.output()


def csr_for(*uris: str, key=None, dns: tuple[str, ...] = ()) -> tuple[object, bytes]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def context(server: CAProcess) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.workdir / "ca" / "ca.pem"))


def request(server: CAProcess, body: bytes = b"", *, token: str | None = WEB_SECRET, method: str = "POST",
            path: str = "/v1/sign", host: str = "127.0.0.1", auth: str | None = None,
            conn: http.client.HTTPSConnection | None = None):
    """(status, headers dict, body)."""
    own = conn is None
    conn = conn or http.client.HTTPSConnection(host, server.port, context=context(server), timeout=10)
    headers = {"Content-Type": "application/pkcs10"}
    if auth is not None:
        headers["Authorization"] = auth
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body if method not in ("GET", "HEAD") else None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        if own:
            conn.close()


def sign_ok(server, spiffe_id=WEB, token=WEB_SECRET):
    key, csr = csr_for(spiffe_id)
    status, headers, body = request(server, csr, token=token)
    assert status == 200, body
    return key, headers, body


# ------------------------------------------------------------------------------ success


def test_sign_returns_chain_leaf_first_with_id_and_lifetime(server):
    started = time.time()
    key, headers, body = sign_ok(server)
    assert headers["content-type"] == "application/x-pem-file"
    chain = x509.load_pem_x509_certificates(body)
    ca_cert = x509.load_pem_x509_certificate((server.workdir / "ca" / "ca.pem").read_bytes())
    assert len(chain) == 2 and chain[1] == ca_cert
    leaf = chain[0]
    leaf.verify_directly_issued_by(ca_cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    lifetime_left = leaf.not_valid_after_utc.timestamp() - started
    assert TTL - 5 <= lifetime_left <= TTL + 5
    # and it is valid own material for a sidecar
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    material = load_material(body, key_pem, ca_cert.public_bytes(serialization.Encoding.PEM), WEB)
    assert material.spiffe_id == WEB and material.serial == leaf.serial_number
    serial = format(leaf.serial_number, "x")
    line = next(l for l in server.output().splitlines() if f"serial={serial}" in l)
    assert "token=ca.token[0]" in line and f"id={WEB}" in line and "decision=issued" in line


def test_prefix_pattern_inline_token_and_keep_alive(server):
    conn = http.client.HTTPSConnection("localhost", server.port, context=context(server), timeout=10)
    try:
        serials = set()
        for name in ("batch", "cron"):
            _, csr = csr_for(f"spiffe://mesh.local/ns/jobs/{name}")
            status, _, body = request(server, csr, token=JOBS_SECRET, conn=conn)
            assert status == 200, body
            serials.add(x509.load_pem_x509_certificates(body)[0].serial_number)
        assert len(serials) == 2
    finally:
        conn.close()


def test_server_certificate_names(server):
    for host in ("127.0.0.1", "localhost"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            with context(server).wrap_socket(raw, server_hostname=host) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            context(server).wrap_socket(raw, server_hostname="example.com")


def test_rsa_key_accepted(server):
    _, csr = csr_for(WEB, key=rsa.generate_private_key(65537, 2048))
    assert request(server, csr)[0] == 200


# ------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("auth", [None, "Bearer nope", "Bearer ", f"Basic {WEB_SECRET}", WEB_SECRET,
                                  f"Bearer {WEB_SECRET}x", f"Bearer {WEB_SECRET[:-1]}"])
def test_unknown_or_missing_token_is_401(server, auth):
    _, csr = csr_for(WEB)
    status, headers, body = request(server, csr, token=None, auth=auth)
    assert status == 401, body
    assert headers["fastproxy-error"] == "unauthorized" and headers["www-authenticate"].startswith("Bearer")
    assert body.startswith(b"fastproxy: unauthorized: ")


@pytest.mark.parametrize("spiffe_id, token, why", [
    ("spiffe://mesh.local/ns/default/sa/api", WEB_SECRET, "not allowed for this token"),
    (WEB, JOBS_SECRET, "not allowed for this token"),
    ("spiffe://mesh.local/ns/jobs", JOBS_SECRET, "not allowed for this token"),
    ("spiffe://other.td/ns/default/sa/web", WEB_SECRET, "outside this CA's trust domain"),
    ("spiffe://other.td/ns/jobs/batch", JOBS_SECRET, "outside this CA's trust domain"),
    ("spiffe://mesh.local", WEB_SECRET, "names a trust domain"),
    ("spiffe://mesh.local/ns/../sa/web", WEB_SECRET, "not a valid SPIFFE id"),
    ("spiffe://Mesh.local/ns/default/sa/web", WEB_SECRET, "not a valid SPIFFE id"),
    ("spiffe://mesh.local:8443/ns/default/sa/web", WEB_SECRET, "not a valid SPIFFE id"),
])
def test_ids_not_allowed_are_403(server, spiffe_id, token, why):
    _, csr = csr_for(spiffe_id)
    status, headers, body = request(server, csr, token=token)
    assert status == 403, body
    assert headers["fastproxy-error"] == "forbidden" and why.encode() in body


def _tampered_csr() -> bytes:
    _, pem = csr_for(WEB)
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01   # inside the ECDSA signature value: still DER, no longer valid
    csr = x509.load_der_x509_csr(bytes(der))
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("body, why", [
    (b"garbage", b"not a PEM certificate signing request"),
    (b"", b"not a PEM certificate signing request"),
    (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", b"not a PEM"),
    (csr_for(WEB, "spiffe://mesh.local/ns/default/sa/other")[1], b"exactly one URI SAN, it has 2"),
    (csr_for()[1], b"no subjectAltName"),
    (csr_for(dns=("web.example",))[1], b"exactly one URI SAN, it has 0"),
    (csr_for("https://web.example/x")[1], b"not a spiffe:// id"),
    (_tampered_csr(), b"signature does not verify"),
    (csr_for(WEB, key=ec.generate_private_key(ec.SECP256K1()))[1], b"not accepted"),
])
def test_malformed_csr_is_400(server, body, why):
    status, headers, data = request(server, body)
    assert status == 400, data
    assert headers["fastproxy-error"] == "bad_request" and why in data


def test_paths_methods_and_size(server):
    _, csr = csr_for(WEB)
    assert request(server, csr, path="/")[0] == 404
    assert request(server, csr, path="/v1/sign/x")[0] == 404
    assert request(server, csr, path="/v2/sign")[0] == 404
    status, headers, _ = request(server, method="GET")
    assert status == 405 and headers["allow"] == "POST"
    assert request(server, csr, method="PUT")[0] == 405
    assert request(server, method="HEAD")[0] == 405
    status, headers, _ = request(server, b"-" * (64 * 1024 + 1))
    assert status == 413 and headers["fastproxy-error"] == "payload_too_large"
    assert request(server, csr, path="/v1/sign?x=1")[0] == 200   # the query is ignored


def test_expect_100_continue(server):
    _, csr = csr_for(WEB)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with context(server).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(f"POST /v1/sign HTTP/1.1\r\nHost: ca\r\nAuthorization: Bearer {WEB_SECRET}\r\n"
                        f"Expect: 100-continue\r\nContent-Length: {len(csr)}\r\n\r\n".encode())
            assert tls.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n")
            tls.sendall(csr)
            assert tls.recv(100).startswith(b"HTTP/1.1 200 OK\r\n")


def test_chunked_body_over_the_cap_is_413(server):
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context(server), timeout=10)
    try:
        conn.request("POST", "/v1/sign", body=iter([b"x" * 40000, b"y" * 40000]),
                     headers={"Authorization": f"Bearer {WEB_SECRET}", "Transfer-Encoding": "chunked"},
                     encode_chunked=True)
        assert conn.getresponse().status == 413
    finally:
        conn.close()


def test_bad_clients_do_not_crash_the_server(server):
    # plain TCP garbage at the TLS port, a TLS connection with HTTP garbage, a half request
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        raw.settimeout(5)
        try:
            raw.recv(100)
        except OSError:
            pass
    for junk in (b"\x00\x01garbage\r\n\r\n", b"POST /v1/sign HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
                 b"POST /v1/sign HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                 b"POST /v1/sign HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            with context(server).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(junk)
                assert tls.recv(100).startswith(b"HTTP/1.1 501" if b"gzip" in junk else b"HTTP/1.1 400"), junk
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with context(server).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"POST /v1/sign HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
            assert tls.recv(100).startswith(b"HTTP/1.1 431")
    # a request cut off in the middle of its body
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with context(server).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(f"POST /v1/sign HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WEB_SECRET}\r\n"
                        "Content-Length: 100\r\n\r\n-----BEGIN".encode())
    sign_ok(server)
    assert "Traceback" not in server.output()


def test_tokens_never_logged_and_every_decision_is(server):
    _, csr = csr_for("spiffe://mesh.local/ns/default/sa/nope")
    request(server, csr)
    request(server, csr, token="wrong-token-123")
    text = server.output()
    assert WEB_SECRET not in text and JOBS_SECRET not in text and "wrong-token-123" not in text
    assert "id=spiffe://mesh.local/ns/default/sa/nope decision=forbidden status=403" in text
    assert "token=- id=- decision=unauthorized status=401" in text


# ------------------------------------------------------------------------------ process


def test_exit_codes(tmp_path):
    port = free_port()
    work = make_workdir(tmp_path)
    # configuration errors: 2, one line each, no traceback
    bad = CAProcess(work, ca_toml(port).replace('ttl = "600s"', 'ttl = "soon"'), port, "bad").start(wait=False)
    assert bad.proc.wait(timeout=15) == 2
    assert "ca.ttl: must be a duration" in bad.output() and "Traceback" not in bad.output()
    missing = CAProcess(work, ca_toml(port).replace('dir = "ca"', 'dir = "nowhere"'), port, "missing").start(wait=False)
    assert missing.proc.wait(timeout=15) == 2
    assert "ca.dir" in missing.output() and "nowhere" in missing.output()
    (work / "empty.token").write_text("\n")
    empty = CAProcess(work, ca_toml(port).replace("web.token", "empty.token"), port, "empty").start(wait=False)
    assert empty.proc.wait(timeout=15) == 2
    assert "ca.token[0].token_file" in empty.output()
    (work / "dup.token").write_text(JOBS_SECRET)
    dup = CAProcess(work, ca_toml(port).replace("web.token", "dup.token"), port, "dup").start(wait=False)
    assert dup.proc.wait(timeout=15) == 2 and "same token" in dup.output()
    # the address in use: 1, one line naming it
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        busy = CAProcess(work, ca_toml(port), port, "busy").start(wait=False)
        assert busy.proc.wait(timeout=15) == 1
    assert f"127.0.0.1:{port}" in busy.output() and "Traceback" not in busy.output()
    # SIGINT: a clean exit 0
    ok = CAProcess(work, ca_toml(port), port, "ok").start()
    assert ok.stop(sig=signal.SIGINT) == 0, ok.output()


# ------------------------------------------------------------ service-account tokens (SPEC §13)

CA_SERVICE = "fastproxy-ca.fastproxy-system.svc"


@pytest.fixture(scope="module")
def k8s(tmp_path_factory):
    """A CA that takes projected service-account tokens of one cluster key (kid cluster-1)."""
    cluster = cluster_key()
    work = make_workdir(tmp_path_factory.mktemp("ca-k8s"))
    (work / "jwks.json").write_text(jwks_json(cluster))
    port = free_port()
    config = ca_toml(port).replace("[ca]\n", f'[ca]\nserver_names = ["{CA_SERVICE}"]\n', 1)
    config += f'\n[ca.kubernetes]\njwks = "jwks.json"\nissuer = "{CLUSTER_ISSUER}"\n'
    ca = CAProcess(work, config, port, "ca-k8s").start()
    yield ca, cluster
    assert ca.stop() == 0, ca.output()


def test_a_service_account_token_obtains_its_own_id(k8s):
    ca, key = k8s
    _, csr = csr_for("spiffe://mesh.local/ns/shop/sa/reviews")
    status, _, body = request(ca, csr, token=sa_token(key, "shop", "reviews"))
    assert status == 200, body
    leaf = x509.load_pem_x509_certificates(body)[0]
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://mesh.local/ns/shop/sa/reviews"]
    assert "token=kubernetes:shop/reviews" in ca.output()
    assert sign_ok(ca)                     # the static tokens still work beside it


def test_the_server_certificate_names_the_service(k8s):
    ca, _ = k8s
    ctx = ssl.create_default_context(cafile=str(ca.workdir / "ca" / "ca.pem"))
    with socket.create_connection(("127.0.0.1", ca.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=CA_SERVICE) as tls:   # verifies the name too
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("wanted", ["spiffe://mesh.local/ns/billing/sa/reviews",   # another namespace
                                    "spiffe://mesh.local/ns/shop/sa/admin",        # another account
                                    "spiffe://mesh.local/ns/shop/sa/reviews/x"])   # a longer path
def test_a_token_can_never_obtain_another_id(k8s, wanted):
    ca, key = k8s
    _, csr = csr_for(wanted)
    status, _, body = request(ca, csr, token=sa_token(key, "shop", "reviews"))
    assert status == 403 and b"not allowed for this token" in body


def test_forged_expired_wrong_audience_wrong_issuer_and_wrong_key_tokens_are_refused(k8s):
    import jwt

    ca, key = k8s
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _, csr = csr_for("spiffe://mesh.local/ns/shop/sa/reviews")
    valid = sa_token(key, "shop", "reviews")
    header, payload, signature = valid.split(".")
    forged_payload = jwt.utils.base64url_encode(jwt.utils.base64url_decode(payload).replace(
        b'"shop"', b'"prod"')).decode()
    cases = {
        "the signature does not verify": f"{header}.{forged_payload}.{signature}",   # claims changed
        "expired": sa_token(key, "shop", "reviews", expires_in=-60),
        "not for audience fastproxy-ca": sa_token(key, "shop", "reviews", audience="vault"),
        "not from issuer": sa_token(key, "shop", "reviews", issuer="https://evil.example"),
        "unknown key": sa_token(other_key, "shop", "reviews", kid="cluster-2"),
        "signature does not verify ": sa_token(other_key, "shop", "reviews"),        # right kid, wrong key
        "algorithm 'HS256' is not accepted": jwt.encode({"aud": "fastproxy-ca"}, "a-shared-secret-of-32-bytes-----", algorithm="HS256",
                                                        headers={"kid": "cluster-1"}),
    }
    for why, token in cases.items():
        status, _, body = request(ca, csr, token=token)
        assert status == 401, (why, body)
        assert why.strip() in body.decode(), (why, body)


def test_an_unreadable_jwks_is_a_configuration_error(tmp_path):
    work = make_workdir(tmp_path)
    port = free_port()
    ca = CAProcess(work, ca_toml(port) + '\n[ca.kubernetes]\njwks = "missing.json"\n', port, "bad-jwks")
    ca.start(wait=False)
    assert ca.proc.wait(timeout=15) == 2
    assert "ca.kubernetes.jwks: missing.json: No such file or directory" in ca.output()
    assert "Traceback" not in ca.output()
