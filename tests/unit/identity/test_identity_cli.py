"""`fastproxy ca init` and `fastproxy ca issue` as a user runs them (subprocess)."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from fastproxy.identity.svid import load_material

REPO = Path(__file__).resolve().parents[3]
WEB = "spiffe://mesh.local/ns/default/sa/web"


def fastproxy(*args, cwd=None):
    proc = subprocess.run(
        [sys.executable, "-m", "fastproxy", *map(str, args)],
        capture_output=True, text=True, timeout=60, cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def one_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli") / "ca"
    proc = fastproxy("ca", "init", directory)
    assert proc.returncode == 0, proc.stderr
    return directory


def test_init(tmp_path):
    directory = tmp_path / "certs" / "ca"
    proc = fastproxy("ca", "init", directory, "--trust-domain", "example.org")
    assert proc.returncode == 0, proc.stderr
    assert "example.org" in proc.stdout and str(directory / "ca.pem") in proc.stdout
    assert stat.S_IMODE(os.stat(directory / "ca-key.pem").st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]


def test_init_refuses_to_overwrite(ca_dir):
    before = (ca_dir / "ca-key.pem").read_bytes()
    proc = fastproxy("ca", "init", ca_dir)
    assert proc.returncode == 1
    assert "already exists" in one_line(proc) and "ca" in one_line(proc)
    assert (ca_dir / "ca-key.pem").read_bytes() == before


@pytest.mark.parametrize("trust_domain", ["Mesh.Local", "mesh.local:8443", "", "a/b"])
def test_init_bad_trust_domain(tmp_path, trust_domain):
    proc = fastproxy("ca", "init", tmp_path / "ca", "--trust-domain", trust_domain)
    assert proc.returncode == 2
    assert one_line(proc).startswith("fastproxy: --trust-domain: invalid SPIFFE id")
    assert not (tmp_path / "ca").exists()


def test_issue(ca_dir, tmp_path):
    out = tmp_path / "web"
    proc = fastproxy("ca", "issue", ca_dir, "--id", WEB, "--out", out, "--ttl", "1h")
    assert proc.returncode == 0, proc.stderr
    assert WEB in proc.stdout and "serial" in proc.stdout
    assert stat.S_IMODE(os.stat(out / "key.pem").st_mode) == 0o600
    material = load_material(
        (out / "cert.pem").read_bytes(), (out / "key.pem").read_bytes(), (out / "trust.pem").read_bytes(), WEB
    )
    assert 3590 <= material.lifetime - 60 <= 3600  # the ttl, started a minute early for skew
    assert (out / "trust.pem").read_bytes() == (ca_dir / "ca.pem").read_bytes()


def test_issue_a_server_certificate(ca_dir, tmp_path):
    # the injector's: a DNS name (and an address) the API server checks, chaining to the CA
    out = tmp_path / "injector"
    proc = fastproxy("ca", "issue", ca_dir, "--dns", "fastproxy-injector.fastproxy-system.svc",
                     "--dns", "127.0.0.1", "--out", out, "--ttl", "8760h")
    assert proc.returncode == 0, proc.stderr
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fastproxy-injector.fastproxy-system.svc"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert not san.get_values_for_type(x509.UniformResourceIdentifier)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    assert stat.S_IMODE(os.stat(out / "key.pem").st_mode) == 0o600
    assert (out / "trust.pem").read_bytes() == (ca_dir / "ca.pem").read_bytes()
    proc = fastproxy("ca", "issue", ca_dir, "--dns", "bad name", "--out", tmp_path / "x")
    assert proc.returncode == 1 and "invalid host name" in one_line(proc)


def test_issue_default_ttl_is_a_day(ca_dir, tmp_path):
    proc = fastproxy("ca", "issue", ca_dir, "--id", WEB, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    lifetime = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    assert 86400 <= lifetime <= 86400 + 120


def test_issue_relative_paths(ca_dir, tmp_path):
    proc = fastproxy("ca", "issue", ca_dir, "--id", WEB, "--out", "certs/web", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "certs/web/cert.pem").exists()


@pytest.mark.parametrize(
    "spiffe_id, message",
    [
        ("spiffe://other.org/ns/default/sa/web", "outside the CA's trust domain 'mesh.local'"),
        ("spiffe://mesh.local:80/web", "a port is not allowed"),
        ("spiffe://u@mesh.local/web", "userinfo"),
        ("spiffe://mesh.local/web?x", "query"),
        ("spiffe://mesh.local/web#x", "fragment"),
        ("spiffe://mesh.local/ns/../web", '".."'),
        ("spiffe://mesh.local", "names a trust domain, not a workload"),
        ("spiffe://mesh.local/", 'trailing "/"'),
        ("spiffe://MESH.local/web", "lowercase"),
        ("web", "scheme"),
    ],
)
def test_issue_bad_ids(ca_dir, tmp_path, spiffe_id, message):
    proc = fastproxy("ca", "issue", ca_dir, "--id", spiffe_id, "--out", tmp_path / "out")
    assert proc.returncode == 2
    line = one_line(proc)
    assert line.startswith("fastproxy: --id: ") and message in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("ttl", ["0", "0s", "soon", "-1h", "1 h"])
def test_issue_bad_ttl(ca_dir, tmp_path, ttl):
    proc = fastproxy("ca", "issue", ca_dir, "--id", WEB, "--out", tmp_path / "out", f"--ttl={ttl}")
    assert proc.returncode == 2
    assert one_line(proc).startswith("fastproxy: --ttl: ")
    assert not (tmp_path / "out").exists()


def test_issue_ttl_too_long(ca_dir, tmp_path):
    proc = fastproxy("ca", "issue", ca_dir, "--id", WEB, "--out", tmp_path / "out", "--ttl", "9000h")
    assert proc.returncode == 1
    assert "ttl" in one_line(proc)


def test_issue_without_a_ca(tmp_path):
    proc = fastproxy("ca", "issue", tmp_path / "nothing", "--id", WEB, "--out", tmp_path / "out")
    assert proc.returncode == 1
    line = one_line(proc)
    assert "ca.pem: no such file" in line and "fastproxy ca init" in line


def test_issue_with_a_broken_ca(tmp_path, ca_dir):
    (tmp_path / "ca.pem").write_bytes((ca_dir / "ca.pem").read_bytes())
    (tmp_path / "ca-key.pem").write_text("not a key")
    proc = fastproxy("ca", "issue", tmp_path, "--id", WEB, "--out", tmp_path / "out")
    assert proc.returncode == 1
    assert "ca-key.pem: not a PEM private key" in one_line(proc)


def test_issue_unwritable_output(ca_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    proc = fastproxy("ca", "issue", ca_dir, "--id", WEB, "--out", tmp_path / "file" / "out")
    assert proc.returncode == 1
    assert "cannot create the directory" in one_line(proc)


@pytest.mark.parametrize(
    "args",
    [
        ["ca"],
        ["ca", "init"],
        ["ca", "issue", "DIR", "--out", "x"],
        ["ca", "issue", "DIR", "--id", WEB],
        ["ca", "issue", "DIR", "--id", WEB, "--dns", "x", "--out", "x"],
        ["ca", "frobnicate"],
    ],
)
def test_usage_errors(args):
    proc = fastproxy(*args)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


def test_help_lists_the_ca_commands():
    proc = fastproxy("ca", "--help")
    assert proc.returncode == 0
    for name in ("init", "issue", "serve"):
        assert name in proc.stdout
    proc = fastproxy("ca", "serve", "--help")
    assert proc.returncode == 0 and "--config" in proc.stdout and "config/ca.toml" in proc.stdout
