"""The core's own TLS (fastproxy._core.tls: OpenSSL over memory BIOs under uvloop's TCP
transports), end to end: bodies far larger than a TLS record both ways, backpressure,
pipelining, host-name checks of `tls` clusters, the handshake timeout.

Topology (module-wide):
    client -> frontend "outbound" (plain) -> mtls cluster -> backend "inbound" (mtls) -> app
    client (Python ssl) -> backend "https" (tls) -> app
    client -> frontend "outbound" -> tls clusters -> TLSUpstream servers (host-name checks)
The app is the aiohttp test app (echo, /bytes/N, /stream-upload).
"""
from __future__ import annotations

import json
import socket
import ssl
import time
import uuid

import pytest

from support.app_upstream import PATTERN, pattern_sha256
from support.certs import make_leaf
from support.checks import assert_proxy_error, wait_stalled
from support.mesh import MeshCA, TLSUpstream, client_context, https, sid, sidecar_config
from support.procs import LOOPBACK
from support.rawhttp import RawConn, get, read_body_sha256

pytestmark = pytest.mark.timeout(90)

MiB = 1 << 20
FRONTEND = sid("ns/default/sa/frontend")
BACKEND = sid("ns/default/sa/backend")
HANDSHAKE_TIMEOUT = 1.0   # header_timeout of the backend's listeners



class Mesh:
    pass


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, module_fastproxy, module_upstreams):
    d = tmp_path_factory.mktemp("tls-core")
    m = Mesh()
    m.ca = MeshCA(d / "ca")
    m.frontend = m.ca.issue(FRONTEND, d / "frontend")
    m.backend = m.ca.issue(BACKEND, d / "backend")
    m.app = module_upstreams.app()
    limits = {"header_timeout": f"{HANDSHAKE_TIMEOUT}s"}
    m.backend_proxy = module_fastproxy(sidecar_config(m.backend, BACKEND, [
        {"name": "inbound", "bind": "${listen:inbound}", "tls": "mtls", "allow": [FRONTEND],
         "limits": limits, "route": [{"cluster": "app"}]},
        {"name": "https", "bind": "${listen:https}", "tls": "tls", "limits": limits,
         "route": [{"cluster": "app"}]},
    ], {"app": {"endpoints": [m.app.addr()]}}), name="backend")

    # servers for the host-name checks of `tls` clusters, certified by the mesh CA
    m.named = TLSUpstream(d / "named")
    leaf = make_leaf(m.ca.issuer, None, dns=["localhost"], ips=["127.0.0.1"])
    m.named.use(leaf.cert_pem, leaf.key_pem, client_trust=None)
    m.other = TLSUpstream(d / "other")
    leaf = make_leaf(m.ca.issuer, None, dns=["other.test"])
    m.other.use(leaf.cert_pem, leaf.key_pem, client_trust=None)

    def tls(endpoint):
        return {"endpoints": [endpoint], "tls": "tls"}

    m.frontend_proxy = module_fastproxy(sidecar_config(m.frontend, FRONTEND, [
        {"name": "outbound", "bind": "${listen:outbound}", "route": [
            {"host": "backend", "cluster": "backend"},
            {"host": "by-name", "cluster": "by_name"},
            {"host": "by-ip", "cluster": "by_ip"},
            {"host": "wrong-name", "cluster": "wrong_name"},
            {"host": "wrong-ip", "cluster": "wrong_ip"},
        ]},
    ], {
        "backend": {"endpoints": [f"127.0.0.1:{m.backend_proxy.port('inbound')}"],
                    "tls": "mtls", "peer": BACKEND},
        "by_name": tls(f"localhost:{m.named.port}"),
        "by_ip": tls(f"127.0.0.1:{m.named.port}"),
        "wrong_name": tls(f"localhost:{m.other.port}"),
        "wrong_ip": tls(f"127.0.0.1:{m.other.port}"),
    }), name="frontend")
    yield m
    m.named.stop()
    m.other.stop()


def https_conn(mesh, timeout=60.0) -> RawConn:
    return https(mesh.backend_proxy.port("https"), client_context(trust=mesh.ca.ca_pem), timeout)


def upload(conn: RawConn, host: str, size: int) -> dict:
    """POST `size` pattern bytes to /stream-upload; the app's JSON (length, sha256)."""
    conn.send(f"POST /stream-upload HTTP/1.1\r\nHost: {host}\r\n"
              f"Content-Length: {size}\r\n\r\n".encode())
    full, rest = divmod(size, len(PATTERN))
    for _ in range(full):
        conn.sock.sendall(PATTERN)
    conn.sock.sendall(PATTERN[:rest])
    r = conn.read_response()
    assert r.status == 200, r
    return json.loads(r.body)


def download(conn: RawConn, host: str, size: int) -> tuple[int, str]:
    conn.send(f"GET /bytes/{size} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = conn.read_head(deadline=time.monotonic() + 30)
    assert head.status == 200, head
    rest = bytes(conn.buf)
    conn.buf.clear()
    return read_body_sha256(conn.sock, rest, size)


# ---------------------------------------------------------------- bodies

@pytest.mark.parametrize("size", [1, 16 * 1024 - 1, 16 * 1024 + 1, 8 * MiB + 7])
def test_bodies_both_ways_through_two_tls_hops(mesh, size):
    """client -> sidecar -> mTLS -> sidecar -> app and back, record boundaries and all."""
    with RawConn(mesh.frontend_proxy.port("outbound"), timeout=60) as c:
        assert upload(c, "backend", size) == {"body_len": size, "body_sha256": pattern_sha256(size)}
        assert download(c, "backend", size) == (size, pattern_sha256(size))


def test_bodies_both_ways_through_a_tls_listener(mesh):
    size = 8 * MiB + 3
    with https_conn(mesh) as c:
        assert upload(c, "app", size) == {"body_len": size, "body_sha256": pattern_sha256(size)}
        assert download(c, "app", size) == (size, pattern_sha256(size))


def test_slow_tls_client_backpressures_the_upstream(mesh):
    """A client that stops reading: the proxy stops decrypting and reading upstream,
    instead of holding the body; then everything arrives intact."""
    size = 96 * MiB
    tag = uuid.uuid4().hex
    raw = socket.create_connection((LOOPBACK, mesh.backend_proxy.port("https")), timeout=60)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    with RawConn.wrap(client_context(trust=mesh.ca.ca_pem).wrap_socket(raw), timeout=60) as c:
        c.send(f"GET /bytes/{size}?tag={tag} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
        head = c.read_head(deadline=time.monotonic() + 30)
        assert head.status == 200
        sent = wait_stalled(lambda: mesh.app.progress(tag)["sent"], what="upstream writes")
        assert not mesh.app.progress(tag)["done"]
        assert sent < size // 2, f"the app wrote {sent / MiB:.0f} MiB of {size / MiB:.0f} into the proxy"
        rest = bytes(c.buf)
        c.buf.clear()
        assert read_body_sha256(c.sock, rest, size) == (size, pattern_sha256(size))


def test_pipelined_requests_in_one_tls_record(mesh):
    with https_conn(mesh) as c:
        c.send(b"".join(f"GET /echo/{i} HTTP/1.1\r\nHost: app\r\n\r\n".encode() for i in range(5)))
        paths = [json.loads(c.read_response().body)["path"] for _ in range(5)]
    assert paths == [f"/echo/{i}" for i in range(5)]


def test_request_head_in_one_byte_records(mesh):
    """Each byte its own TLS record: the head is parsed across records."""
    with https_conn(mesh) as c:
        for b in b"GET /echo/split HTTP/1.1\r\nHost: app\r\n\r\n":
            c.sock.sendall(bytes([b]))
        r = c.read_response()
    assert r.status == 200 and json.loads(r.body)["path"] == "/echo/split"


def test_client_that_sends_close_notify_after_its_request_is_answered(mesh):
    """TLS 1.3 lets a client end its half (close_notify) and still read: the request that
    came before it is answered, then the proxy closes. Python's ssl over memory buffers
    plays the client, since SSLSocket.unwrap() would wait for the server's close_notify."""
    ctx = client_context(trust=mesh.ca.ca_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    sock = socket.create_connection((LOOPBACK, mesh.backend_proxy.port("https")), timeout=10)

    def pump() -> bool:
        """Send what the client wrote; read what came (False: the server closed)."""
        if outgoing.pending:
            sock.sendall(outgoing.read())
        data = sock.recv(65536)
        if not data:
            incoming.write_eof()
            return False
        incoming.write(data)
        return True

    with sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                assert pump(), "closed during the handshake"
        tls.write(b"GET /echo/half-closed HTTP/1.1\r\nHost: app\r\n\r\n")
        try:
            tls.unwrap()   # sends close_notify, then wants the server's
        except ssl.SSLWantReadError:
            pass
        sock.sendall(outgoing.read())
        got, open_ = b"", True
        while open_:
            open_ = pump()
            try:
                while True:
                    got += tls.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
                pass
            except ssl.SSLError as exc:   # data after our close_notify: OpenSSL may refuse
                pytest.fail(f"reading the answer failed: {exc}")
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), got[:200]
    assert json.loads(body)["path"] == "/echo/half-closed"


# ---------------------------------------------------------------- tls clusters

@pytest.mark.parametrize("host", ["by-name", "by-ip"])
def test_tls_cluster_accepts_the_server_named_by_its_endpoint(mesh, host):
    r = get(mesh.frontend_proxy.port("outbound"), "/", host=host)
    assert r.status == 200 and r.body == b"ok", r


@pytest.mark.parametrize("host,why", [("wrong-name", "hostname mismatch"),
                                      ("wrong-ip", "IP address mismatch")])
def test_tls_cluster_refuses_a_server_certified_for_another_name(mesh, host, why):
    before = mesh.other.requests
    r = get(mesh.frontend_proxy.port("outbound"), "/", host=host)
    assert_proxy_error(r, 503, "upstream_tls")
    assert why in r.body.decode(), r.body
    assert mesh.other.requests == before, "a request reached a server that failed the check"


# ---------------------------------------------------------------- session resumption

@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_mtls_listener_resumes_sessions(mesh, version):
    """A client that offers its session back skips the certificates; it is still
    identified (the session carries its certificate) and served."""
    ctx = client_context(mesh.frontend)
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
    port = mesh.backend_proxy.port("inbound")
    with https(port, ctx) as c:
        c.send(b"GET /echo/first HTTP/1.1\r\nHost: app\r\n\r\n")
        assert c.read_response().status == 200   # the response carries the ticket
        session = c.sock.session
    with https(port, ctx, session=session) as c:
        assert c.sock.session_reused
        c.send(b"GET /echo/again HTTP/1.1\r\nHost: app\r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r
    headers = dict((k.lower(), v) for k, v in json.loads(r.body)["headers"])
    assert headers["x-forwarded-client-cert"] == f"By={BACKEND};URI={FRONTEND}"


@pytest.mark.parametrize("tls", ["tls", "mtls"])
def test_clusters_resume_sessions_on_new_connections(mesh, tmp_path, module_fastproxy, tls):
    """The server closes after each response, so every request is a new connection: after
    the first, each one resumes the session the last one got."""
    server = TLSUpstream(tmp_path / "resuming")
    try:
        if tls == "mtls":
            leaf = make_leaf(mesh.ca.issuer, BACKEND)
            server.use(leaf.cert_pem, leaf.key_pem, client_trust=mesh.ca.ca_pem.read_bytes())
            cluster = {"endpoints": [server.addr], "tls": "mtls", "peer": BACKEND}
        else:
            leaf = make_leaf(mesh.ca.issuer, None, ips=["127.0.0.1"])
            server.use(leaf.cert_pem, leaf.key_pem, client_trust=None)
            cluster = {"endpoints": [server.addr], "tls": "tls"}
        proxy = module_fastproxy(sidecar_config(mesh.frontend, FRONTEND, [
            {"name": "outbound", "bind": "${listen:outbound}", "route": [{"cluster": "up"}]},
        ], {"up": cluster}), name=f"resuming-{tls}")
        for i in range(4):
            r = get(proxy.port("outbound"), f"/{i}")
            assert r.status == 200 and r.body == b"ok", r
        assert server.handshakes == 4
        assert server.resumed == 3, f"{server.resumed} of 4 handshakes resumed"
    finally:
        server.stop()


# ---------------------------------------------------------------- handshakes

def test_a_client_that_never_starts_its_handshake_is_closed(mesh):
    """The handshake is bounded by the listener's header_timeout."""
    with socket.create_connection((LOOPBACK, mesh.backend_proxy.port("https")), timeout=10) as s:
        start = time.monotonic()
        assert s.recv(100) == b""
        waited = time.monotonic() - start
    assert HANDSHAKE_TIMEOUT * 0.8 <= waited < HANDSHAKE_TIMEOUT + 5, waited


def test_a_client_that_stops_in_the_middle_of_its_handshake_is_closed(mesh):
    """A ClientHello cut short: the server waits for the rest, then gives up."""
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32)
    with socket.create_connection((LOOPBACK, mesh.backend_proxy.port("https")), timeout=10) as s:
        s.sendall(hello)
        start = time.monotonic()
        assert s.recv(100) == b""
        waited = time.monotonic() - start
    assert HANDSHAKE_TIMEOUT * 0.8 <= waited < HANDSHAKE_TIMEOUT + 5, waited
