"""The container image (issue: deploying on Kubernetes): built from the Dockerfile with
buildah on bases made from Debian packages (`make image`, deploy/image/build.sh), then
run — a sidecar from it serves /ready and proxies a real request, as uid 1337, also with
the whole root filesystem read-only — and measured against its size goal. The start time
is measured by `python -m bench.image`, not asserted here.

Skips, saying why, where images cannot be built or run (not root, buildah or mmdebstrap
missing, buildah not working); the first build takes a few minutes, later ones reuse
buildah's layer cache.
"""
from __future__ import annotations

import subprocess

import pytest

from bench import image
from support.mesh import client_context, https
from support.procs import free_port

why = image.unavailable()
pytestmark = pytest.mark.skipif(why is not None, reason=f"container image: {why}")


@pytest.fixture(scope="module")
def built():
    image.build()
    with image.container() as name:
        yield name


def in_container(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", "run", "--isolation", "chroot", name, "--", *args],
                          capture_output=True, text=True, timeout=60)


def test_the_image_is_small_and_runs_as_the_sidecar_uid(built):
    assert image.image_user() == "1337:1337"
    assert in_container(built, "id", "-u").stdout.strip() == "1337"
    assert image.rootfs_bytes(built) <= 150 * 1000 * 1000
    # what the injected init container runs: fastproxy iptables, on the image's iptables
    rules = in_container(built, "fastproxy", "iptables", "--proxy-uid", "1337", "--dry-run")
    assert rules.returncode == 0 and "-A FASTPROXY_OUTPUT" in rules.stdout, rules.stderr
    assert in_container(built, "iptables-restore", "--version").returncode == 0


@pytest.mark.parametrize("read_only", [False, True], ids=["buildah-run", "read-only-root"])
def test_a_sidecar_from_the_image_is_ready_and_proxies(built, tmp_path, shared_app, read_only):
    admin, outbound, inbound = free_port(), free_port(), free_port()
    tmp_path.chmod(0o755)
    image.sidecar_config(tmp_path, admin=admin, outbound=outbound, inbound=inbound, upstream=shared_app.addr())
    proc = image.run(built, tmp_path, ["fastproxy", "run", "-c", f"{image.CONFIG_DIR}/fastproxy.toml"],
                     read_only=read_only, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        image.until_ready(admin, proc)
        status, body = image.get(f"http://127.0.0.1:{outbound}/echo")
        assert status == 200 and b'"served_by": "app"' in body
        # the inbound listener: mTLS with the mesh identity the container was given
        material = client_context(trust=tmp_path / "certs/trust.pem", cert=tmp_path / "certs/cert.pem",
                                  key=tmp_path / "certs/key.pem")
        with https(inbound, material) as conn:
            conn.send(b"GET /echo HTTP/1.1\r\nHost: app\r\n\r\n")
            response = conn.read_response()
        assert response.status == 200 and b"spiffe://mesh.local/ns/default/sa/web" in response.body
    finally:
        code = image.stop(proc)
    if read_only:   # SIGTERM reaches the sidecar itself (buildah run kills its child instead)
        assert code == 0, proc.stderr.read().decode(errors="replace")
