"""SPEC §6 rotation, §11 "Identity", issue 4: the identity files of running sidecars are
replaced (plain rewrites, Kubernetes-style `..data` symlink swaps, a new trust bundle)
while connections are open and requests flow. Within 5 s new handshakes see the new
certificate; established connections continue; no request fails; invalid replacements are
refused and the old material stays.

The serial a sidecar presents is read from a new TLS handshake with its mtls listener."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import threading
import time

import pytest

from support.certs import make_ca, make_leaf, pem
from support.mesh import (MeshCA, Material, client_context, https, refused, replace_file,
                          server_serial, sid, sidecar_config, write_leaf)
from support.procs import wait_until
from support.rawhttp import RawConn

pytestmark = pytest.mark.timeout(60)

FRONTEND = sid("ns/default/sa/frontend")
BACKEND = sid("ns/default/sa/backend")
ROTATION_DEADLINE = 5.0  # SPEC §6: within 5 s of a change
REFUSED_LOG = "identity: new material refused"


def rotated_log(serial: int) -> str:
    return f"identity: rotated to serial {serial:x}"


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return MeshCA(tmp_path_factory.mktemp("rotation-ca") / "ca")


@pytest.fixture(scope="module")
def frontend(ca, tmp_path_factory):
    return ca.issue(FRONTEND, tmp_path_factory.mktemp("rotation-frontend") / "id")


def inbound_sidecar(fastproxy, material: Material, app_addr: str, *, name="backend", identity=None):
    return fastproxy(sidecar_config(material, BACKEND, [
        {"name": "inbound", "bind": "${listen:inbound}", "tls": "mtls", "route": [{"cluster": "app"}]},
    ], {"app": {"endpoints": [app_addr]}}, identity=identity), name=name)


def outbound_sidecar(fastproxy, material: Material, backend_port: int):
    return fastproxy(sidecar_config(material, FRONTEND, [
        {"name": "outbound", "bind": "${listen:outbound}", "route": [{"cluster": "backend"}]},
    ], {"backend": {"endpoints": [f"127.0.0.1:{backend_port}"], "tls": "mtls", "peer": BACKEND}}),
        name="frontend")


def write_pair(material: Material, source: Material) -> None:
    """Plain rewrite of cert and key in place (same files, new content), key first."""
    material.key.write_bytes(source.key.read_bytes())
    material.cert.write_bytes(source.cert.read_bytes())


def wait_serial(port: int, ctx, serial: int, what: str) -> None:
    """New handshakes present `serial` within the rotation deadline."""
    seen = []

    def check():
        seen.append(server_serial(port, ctx))
        return seen[-1] == serial

    try:
        wait_until(check, deadline_s=ROTATION_DEADLINE, interval=0.1, what=what)
    except TimeoutError:
        pytest.fail(f"{what}: new handshakes still present serial {seen[-1]:x}, "
                    f"not {serial:x}, {ROTATION_DEADLINE}s after the change")


def wait_log(proxy, text: str, count: int = 1, deadline_s: float = ROTATION_DEADLINE) -> None:
    try:
        wait_until(lambda: proxy.stderr().count(text) >= count, deadline_s=deadline_s,
                   interval=0.05, what=f"log {text!r}")
    except TimeoutError:
        pytest.fail(f"{proxy.name} did not log {text!r} (x{count}) within {deadline_s}s:\n"
                    f"{proxy.stderr()[-3000:]}")


def get_on(conn: RawConn, path: str) -> int:
    conn.send(f"GET {path} HTTP/1.1\r\nHost: backend\r\n\r\n".encode())
    return conn.read_response().status


# ---------------------------------------------------------------- valid rotations

def test_plain_rewrite_rotates_new_handshakes_and_keepalive_continues(
        fastproxy, shared_app, ca, frontend, tmp_path):
    material = ca.issue(BACKEND, tmp_path / "backend")
    old = material.serial
    backend = inbound_sidecar(fastproxy, material, shared_app.addr())
    port = backend.port("inbound")
    ctx = client_context(frontend)
    assert server_serial(port, ctx) == old

    with https(port, ctx) as kept:
        assert get_on(kept, "/echo/before") == 200
        new = ca.issue(BACKEND, tmp_path / "next")
        write_pair(material, new)
        wait_serial(port, ctx, new.serial, "plain rewrite")
        wait_log(backend, rotated_log(new.serial))
        # the connection opened with the old certificate keeps working
        for i in range(3):
            assert get_on(kept, f"/echo/after/{i}") == 200
        assert kept.sock.getpeercert(binary_form=True) is not None
    with https(port, ctx) as fresh:
        assert get_on(fresh, "/echo/fresh") == 200


def test_rotation_reaches_every_worker(fastproxy, shared_app, ca, frontend, tmp_path):
    """workers = 2: whichever worker takes a new connection presents the new certificate."""
    material = ca.issue(BACKEND, tmp_path / "backend")
    backend = fastproxy(sidecar_config(material, BACKEND, [
        {"name": "inbound", "bind": "${listen:inbound}", "tls": "mtls", "route": [{"cluster": "app"}]},
    ], {"app": {"endpoints": [shared_app.addr()]}}), workers=2, name="backend")
    port = backend.port("inbound")
    ctx = client_context(frontend)
    wait_until(lambda: len(backend.workers()) == 2, deadline_s=10, what="two workers")
    assert {server_serial(port, ctx) for _ in range(10)} == {material.serial}
    new = ca.issue(BACKEND, tmp_path / "next")
    write_pair(material, new)
    wait_log(backend, rotated_log(new.serial), count=2)  # one line per worker
    seen = [server_serial(port, ctx) for _ in range(40)]
    assert set(seen) == {new.serial}, f"{seen.count(material.serial)} of 40 handshakes got the old one"


def test_sighup_forces_a_reload(fastproxy, shared_app, ca, frontend, tmp_path):
    """A change a stat-based watcher cannot see (same file, same size, mtime put back) is
    applied on SIGHUP."""
    material = write_leaf(tmp_path / "backend", make_leaf(ca.issuer, BACKEND), ca.issuer)
    backend = inbound_sidecar(fastproxy, material, shared_app.addr())
    port = backend.port("inbound")
    ctx = client_context(frontend)
    # a handshake completes once the worker serves (and handles SIGHUP): only then signal
    assert server_serial(port, ctx) == material.serial
    stats = {p: os.stat(p) for p in (material.cert, material.key)}
    for _ in range(50):  # ECDSA signatures vary in length: find a same-size certificate
        leaf = make_leaf(ca.issuer, BACKEND)
        if len(leaf.cert_pem) == stats[material.cert].st_size \
                and len(leaf.key_pem) == stats[material.key].st_size:
            break
    else:
        pytest.fail("could not make a certificate of the same size")
    for path, data in ((material.key, leaf.key_pem), (material.cert, leaf.cert_pem)):
        path.write_bytes(data)  # in place: same inode
        os.utime(path, ns=(stats[path].st_atime_ns, stats[path].st_mtime_ns))
    backend.signal(signal.SIGHUP)
    wait_serial(port, ctx, leaf.serial, "after SIGHUP")
    wait_log(backend, rotated_log(leaf.serial))


def test_kubernetes_style_data_symlink_swap(fastproxy, shared_app, ca, frontend, tmp_path):
    """The layout of a Kubernetes secret volume: DIR/..2026_a/{cert,key,trust}.pem,
    DIR/..data -> ..2026_a, DIR/cert.pem -> ..data/cert.pem; an update writes a new
    timestamped directory and renames a new ..data link over the old one (atomic)."""
    vol = tmp_path / "secret-volume"
    vol.mkdir()
    first = ca.issue(BACKEND, vol / "..2026_11_25_10_00_00.000000001")
    os.symlink(first.dir.name, vol / "..data")
    for name in ("cert.pem", "key.pem", "trust.pem"):
        os.symlink(f"..data/{name}", vol / name)
    backend = inbound_sidecar(fastproxy, Material(vol), shared_app.addr())
    port = backend.port("inbound")
    ctx = client_context(frontend)
    assert server_serial(port, ctx) == first.serial

    with https(port, ctx) as kept:
        assert get_on(kept, "/echo/k8s-before") == 200
        second = ca.issue(BACKEND, vol / "..2026_11_25_11_00_00.000000002")
        os.symlink(second.dir.name, vol / "..data_tmp")
        os.replace(vol / "..data_tmp", vol / "..data")
        shutil.rmtree(first.dir)
        wait_serial(port, ctx, second.serial, "..data swap")
        wait_log(backend, rotated_log(second.serial))
        assert get_on(kept, "/echo/k8s-after") == 200


def test_rotation_under_load_has_zero_failures(fastproxy, shared_app, ca, tmp_path):
    """~100 requests/s through client -> outbound -> mtls -> inbound -> app on keep-alive
    connections, plus new mTLS handshakes straight to the inbound listener, while both
    sidecars' certificates are replaced."""
    b_material = ca.issue(BACKEND, tmp_path / "backend")
    f_material = ca.issue(FRONTEND, tmp_path / "frontend")
    backend = inbound_sidecar(fastproxy, b_material, shared_app.addr())
    front = outbound_sidecar(fastproxy, f_material, backend.port("inbound"))
    out_port, in_port = front.port("outbound"), backend.port("inbound")
    direct_ctx = client_context(ca.issue(FRONTEND, tmp_path / "direct-client"))

    stop = threading.Event()
    results = {"two-hop": [], "direct": []}
    failures = []

    def two_hop():
        conn, i = None, 0
        next_at = time.monotonic()
        try:
            while not stop.is_set():
                if conn is None or i % 50 == 0:  # a new client connection now and then
                    if conn is not None:
                        conn.close()
                    conn = RawConn(out_port, timeout=10)
                try:
                    status = get_on(conn, f"/echo/load/{i}")
                except Exception as exc:  # reported below
                    failures.append(f"two-hop #{i}: {exc!r}")
                    conn.close()
                    conn = None
                else:
                    results["two-hop"].append(status)
                    if status != 200:
                        failures.append(f"two-hop #{i}: status {status}")
                i += 1
                next_at += 0.01  # 100/s
                time.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            if conn is not None:
                conn.close()

    def direct():
        i = 0
        while not stop.is_set():
            try:
                with https(in_port, direct_ctx) as c:  # a full handshake every time
                    status = get_on(c, f"/echo/direct/{i}")
            except Exception as exc:  # reported below
                failures.append(f"direct #{i}: {exc!r}")
            else:
                results["direct"].append(status)
                if status != 200:
                    failures.append(f"direct #{i}: status {status}")
            i += 1
            time.sleep(0.04)

    threads = [threading.Thread(target=f, daemon=True) for f in (two_hop, direct)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(results["two-hop"]) >= 80 and len(results["direct"]) >= 10,
                   deadline_s=10, what="load running")
        b_new = ca.issue(BACKEND, tmp_path / "backend-next")
        f_new = ca.issue(FRONTEND, tmp_path / "frontend-next")
        write_pair(b_material, b_new)
        write_pair(f_material, f_new)
        wait_log(backend, rotated_log(b_new.serial))
        wait_log(front, rotated_log(f_new.serial))
        before = {k: len(v) for k, v in results.items()}
        # keep the load on after both rotations
        wait_until(lambda: len(results["two-hop"]) >= before["two-hop"] + 80
                   and len(results["direct"]) >= before["direct"] + 10,
                   deadline_s=10, what="load continues after the rotation")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    assert not failures, f"{len(failures)} failed requests during rotation: {failures[:10]}"
    assert all(s == 200 for v in results.values() for s in v)
    assert server_serial(in_port, direct_ctx) == b_new.serial


def test_trust_bundle_rotation_to_a_new_ca(fastproxy, shared_app, ca, frontend, tmp_path):
    """Migrate to a new CA as cert-manager would: trust both, move the certificate to the
    new CA, then trust only the new one."""
    material = ca.issue(BACKEND, tmp_path / "backend")
    backend = inbound_sidecar(fastproxy, material, shared_app.addr())
    port = backend.port("inbound")
    new_ca = make_ca("mesh.local")
    both = pem([ca.issuer, new_ca])
    old_client = client_context(frontend, trust=both)
    new_client = client_context(
        write_leaf(tmp_path / "new-client", make_leaf(new_ca, FRONTEND), [ca.issuer, new_ca]), trust=both)
    request = b"GET /echo/trust HTTP/1.1\r\nHost: backend\r\n\r\n"

    refused(port, new_client, request)  # the new CA is not trusted yet

    # 1. trust both CAs (the certificate is unchanged)
    replace_file(material.trust, both)
    wait_log(backend, rotated_log(material.serial))
    wait_until(lambda: _status(port, new_client) == 200, deadline_s=ROTATION_DEADLINE,
               what="a client of the new CA accepted after the trust rotation")
    assert _status(port, old_client) == 200

    # 2. the certificate moves to the new CA
    leaf = make_leaf(new_ca, BACKEND)
    replace_file(material.key, leaf.key_pem)
    replace_file(material.cert, leaf.cert_pem)
    wait_serial(port, new_client, leaf.serial, "certificate from the new CA")

    # 3. only the new CA is trusted: the old CA's clients are refused
    replace_file(material.trust, pem(new_ca))
    wait_log(backend, rotated_log(leaf.serial), count=2)
    refused(port, old_client, request)
    assert _status(port, new_client) == 200


def test_session_resumed_after_its_ca_left_the_bundle_is_refused(
        fastproxy, shared_app, ca, frontend, tmp_path):
    """A client of a CA that the new trust bundle dropped must not come back by resuming a
    TLS session (ticket or session id) from before the rotation."""
    material = ca.issue(BACKEND, tmp_path / "backend")
    backend = inbound_sidecar(fastproxy, material, shared_app.addr())
    port = backend.port("inbound")
    new_ca = make_ca("mesh.local")
    old_client = client_context(frontend, trust=pem([ca.issuer, new_ca]))
    request = b"GET /echo/resumed HTTP/1.1\r\nHost: backend\r\n\r\n"
    sessions = {}
    for version in ("TLSv1_3", "TLSv1_2"):
        ctx = client_context(frontend, trust=pem([ca.issuer, new_ca]))
        ctx.maximum_version = ctx.minimum_version = getattr(ssl.TLSVersion, version)
        with https(port, ctx) as c:
            assert get_on(c, f"/echo/{version}") == 200  # the response carries the tickets
            sessions[version] = (ctx, c.sock.session)
        # before the rotation the session is offered again and resumed
        with https(port, ctx, session=sessions[version][1]) as c:
            assert c.sock.session_reused, f"{version}: the sidecar did not resume the session"
            assert get_on(c, f"/echo/{version}/resumed") == 200

    leaf = make_leaf(new_ca, BACKEND)  # move to the new CA; trust only the new CA
    replace_file(material.key, leaf.key_pem)
    replace_file(material.cert, leaf.cert_pem)
    replace_file(material.trust, pem(new_ca))
    wait_serial(port, old_client, leaf.serial, "certificate from the new CA")
    wait_log(backend, rotated_log(leaf.serial))
    refused(port, old_client, request)  # a full handshake is refused
    answered = []
    for version, (ctx, session) in sessions.items():
        try:
            refused(port, ctx, request, session=session)
        except AssertionError:
            answered.append(version)
    assert not answered, (f"a client of the dropped CA was served by resuming a {answered} "
                          f"session from before the trust rotation")


def _status(port, ctx) -> int | None:
    try:
        with https(port, ctx, timeout=5) as c:
            return get_on(c, "/echo/status")
    except Exception:
        return None


# ---------------------------------------------------------------- invalid replacements

def _invalid_cases(ca, tmp_path):
    other_ca = make_ca("mesh.local")

    def garbage(m):
        replace_file(m.cert, b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")

    def key_not_matching(m):  # a new certificate, but the old key left in place
        replace_file(m.cert, ca.issue(BACKEND, tmp_path / "mismatch").cert.read_bytes())

    def expired(m):
        leaf = make_leaf(ca.issuer, BACKEND, not_before=-7200, not_after=-60)
        replace_file(m.key, leaf.key_pem)
        replace_file(m.cert, leaf.cert_pem)

    def wrong_id(m):
        other = ca.issue(sid("ns/default/sa/someone-else"), tmp_path / "wrong-id")
        replace_file(m.key, other.key.read_bytes())
        replace_file(m.cert, other.cert.read_bytes())

    def empty_cert(m):
        replace_file(m.cert, b"")

    def empty_key(m):
        m.key.write_bytes(b"")  # truncated in place

    def other_ca_cert(m):
        leaf = make_leaf(other_ca, BACKEND)
        replace_file(m.key, leaf.key_pem)
        replace_file(m.cert, leaf.cert_pem)

    def trust_without_own_ca(m):
        replace_file(m.trust, pem(other_ca))

    return [("garbage", garbage), ("key-not-matching", key_not_matching), ("expired", expired),
            ("wrong-id", wrong_id), ("empty-cert", empty_cert), ("empty-key", empty_key),
            ("another-CA", other_ca_cert), ("trust-without-own-CA", trust_without_own_ca)]


def test_invalid_replacements_keep_the_old_material(fastproxy, shared_app, ca, frontend, tmp_path):
    material = ca.issue(BACKEND, tmp_path / "backend")
    good = {p: p.read_bytes() for p in (material.cert, material.key, material.trust)}
    old = material.serial
    backend = inbound_sidecar(fastproxy, material, shared_app.addr())
    port = backend.port("inbound")
    ctx = client_context(frontend)
    with https(port, ctx) as kept:
        assert get_on(kept, "/echo/invalid-before") == 200
        refusals = 0
        for case, spoil in _invalid_cases(ca, tmp_path):
            spoil(material)
            refusals += 1
            wait_log(backend, REFUSED_LOG, count=refusals)
            refusals = backend.stderr().count(REFUSED_LOG)  # a half-written pair may add one
            assert server_serial(port, ctx) == old, f"{case}: new handshakes use refused material"
            assert _status(port, ctx) == 200, f"{case}: the sidecar no longer serves new clients"
            assert get_on(kept, f"/echo/invalid/{case}") == 200, case
            for path, data in good.items():  # put the good files back
                replace_file(path, data)
        assert "rotated to serial" not in backend.stderr(), backend.stderr()[-2000:]
        # the watcher still works after all these refusals
        new = ca.issue(BACKEND, tmp_path / "finally-valid")
        write_pair(material, new)
        wait_serial(port, ctx, new.serial, "a valid replacement after refusals")
        assert get_on(kept, "/echo/invalid-after") == 200
