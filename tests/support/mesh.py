"""Mesh identity for end-to-end tests: a real CA made by `fastproxy ca init`, SVIDs issued
by `fastproxy ca issue`, odd certificates from support.certs signed by that same CA, and
TLS clients (Python ssl) that present a client certificate and report what happened.

  MeshCA(directory, trust_domain="mesh.local")   -> .dir .ca_pem .issuer (support.certs.Issuer)
      .issue(spiffe_id, out_dir, ttl="24h")       -> Material (files written by `ca issue`)
  Material(dir)                                   -> .cert .key .trust (paths) .serial .id
  write_leaf(dir, leaf, trust)                    -> Material (cert.pem/key.pem/trust.pem)
  replace_file(path, data)                        atomic rewrite (write + rename), as tools do
  client_context(material=None, trust=...)        -> ssl.SSLContext presenting `material`
  https(port, ctx)                                -> RawConn over a TLS connection
  server_serial(port, ctx)                        -> serial of the certificate the server
                                                     presented on a new handshake
  refused(port, ctx, request)                     -> str: how the connection ended (asserts
                                                     that no HTTP response came back)
  identity_table(material, spiffe_id)             -> the [identity] table (dict)
  sidecar_config(material, id, listeners, clusters) -> a whole sidecar config (dict)
  CAProcess(workdir, config_text, port, name="ca-serve")
                                                  `fastproxy ca serve` on a fixed port: .start(wait=True)
                                                  .stop(sig) (restartable: a CA outage) .url .proc
                                                  .output() .exit_codes
  CAService(workdir, ca, tokens={token: [ids]}, ttl="1h")
                                                  a CAProcess whose config gives each token its
                                                  ids: .token_file(token) (a 0600 file)
  TLSUpstream(workdir)                            an HTTPS upstream (thread) presenting any
                                                  certificate: .use(cert_pem, key_pem, client_trust)
  admin_get(proxy, path)                          -> (status, JSON) from the sidecar's admin API
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .certs import Issuer, Leaf, pem, write_material
from .fastproxy import fastproxy_cmd, run_cli
from .procs import LOOPBACK, free_port, stop_group, wait_for_ports
from .rawhttp import RawConn

TD = "mesh.local"


def sid(path: str, trust_domain: str = TD) -> str:
    """spiffe://mesh.local/<path>"""
    return f"spiffe://{trust_domain}/{path}"


@dataclass
class Material:
    """Identity files of one workload (cert.pem, key.pem, trust.pem in `dir`)."""
    dir: Path

    @property
    def cert(self) -> Path:
        return self.dir / "cert.pem"

    @property
    def key(self) -> Path:
        return self.dir / "key.pem"

    @property
    def trust(self) -> Path:
        return self.dir / "trust.pem"

    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert.read_bytes())

    @property
    def serial(self) -> int:
        return self.leaf().serial_number

    @property
    def id(self) -> str:
        san = self.leaf().extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return san.get_values_for_type(x509.UniformResourceIdentifier)[0]


class MeshCA:
    """A mesh root CA created by `fastproxy ca init` (the product's own tooling)."""

    def __init__(self, directory: Path, trust_domain: str = TD):
        self.dir = Path(directory)
        self.trust_domain = trust_domain
        out = run_cli("ca", "init", str(self.dir), "--trust-domain", trust_domain)
        assert out.returncode == 0, f"ca init failed: {out.stdout}{out.stderr}"
        self.ca_pem = self.dir / "ca.pem"
        cert = x509.load_pem_x509_certificate(self.ca_pem.read_bytes())
        key = serialization.load_pem_private_key((self.dir / "ca-key.pem").read_bytes(), None)
        self.issuer = Issuer(cert, key, trust_domain)

    def issue(self, spiffe_id: str, out_dir: Path, ttl: str = "24h") -> Material:
        out = run_cli("ca", "issue", str(self.dir), "--id", spiffe_id, "--out", str(out_dir),
                      "--ttl", ttl)
        assert out.returncode == 0, f"ca issue {spiffe_id} failed: {out.stdout}{out.stderr}"
        return Material(Path(out_dir))


def write_leaf(directory: Path, leaf: Leaf, trust) -> Material:
    """support.certs material (any odd certificate) as identity files."""
    write_material(directory, leaf, trust)
    return Material(Path(directory))


def replace_file(path: Path, data: bytes) -> None:
    """Rewrite a file the way tools do it: a new file renamed over the old one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def client_context(material: Material | None = None, *, trust: Path | bytes | None = None,
                   cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A TLS client context: verifies the server against `trust` (default: the material's
    trust.pem) without host name checks (mesh servers are identified by SPIFFE id), and
    presents the material's (or cert/key's) certificate, if any."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if trust is None and material is not None:
        trust = material.trust
    if isinstance(trust, bytes):
        ctx.load_verify_locations(cadata=trust.decode())
    elif trust is not None:
        ctx.load_verify_locations(cafile=str(trust))
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if material is not None:
        cert, key = material.cert, material.key
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def tls_socket(port: int, ctx: ssl.SSLContext, timeout: float = 5.0,
               session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
    """A TLS connection (handshake done); `session` offers to resume that session."""
    raw = socket.create_connection((LOOPBACK, port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, session=session)  # no SNI, as a sidecar to an IP endpoint
    except BaseException:
        raw.close()
        raise


def https(port: int, ctx: ssl.SSLContext, timeout: float = 10.0,
          session: ssl.SSLSession | None = None) -> RawConn:
    """A RawConn over a new TLS connection (handshake done); .sock is the SSLSocket."""
    return RawConn.wrap(tls_socket(port, ctx, timeout, session), timeout=timeout)


def server_serial(port: int, ctx: ssl.SSLContext) -> int:
    """The serial of the certificate the server presents on a new handshake."""
    with tls_socket(port, ctx) as s:
        der = s.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def refused(port: int, ctx: ssl.SSLContext, request: bytes, timeout: float = 5.0,
            session: ssl.SSLSession | None = None) -> str:
    """Connect, send `request`, read until the connection ends. Returns how it ended
    ("handshake: ..." / "after handshake: ..." / "closed"); raises AssertionError if any
    response byte arrives and TimeoutError if the connection stays open."""
    try:
        s = tls_socket(port, ctx, timeout, session)
    except ssl.SSLError as exc:
        return f"handshake: {exc.reason or exc}"
    except (ConnectionError, OSError) as exc:
        return f"handshake: {type(exc).__name__}"
    got = b""
    deadline = time.monotonic() + timeout
    try:
        with s:
            try:
                s.sendall(request)
            except (ssl.SSLError, OSError):
                pass  # already closed by the server: reading shows how
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"connection still open after {timeout}s; got {got[:200]!r}")
                s.settimeout(left)
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    raise TimeoutError(f"connection still open after {timeout}s; got {got[:200]!r}") from None
                if not chunk:
                    how = "closed"
                    break
                got += chunk
                if b"\r\n\r\n" in got:  # a whole response head: no need to wait longer
                    how = "answered"
                    break
    except ssl.SSLError as exc:
        how = f"after handshake: {exc.reason or exc}"
    except (ConnectionResetError, BrokenPipeError) as exc:
        how = f"after handshake: {type(exc).__name__}"
    assert got == b"", (f"the server answered a peer it should refuse"
                        f"{' (on a resumed TLS session)' if session is not None else ''}: {got[:300]!r}")
    return how


def identity_table(material: Material, spiffe_id: str) -> dict:
    return {"id": spiffe_id, "cert": str(material.cert), "key": str(material.key),
            "trust": str(material.trust)}


def sidecar_config(material: Material | None, spiffe_id: str, listeners: list, clusters: dict,
                   identity: dict | None = None) -> dict:
    """A sidecar config dict (for the fastproxy fixture): [identity] from `material` (or the
    given `identity` table), the listeners and clusters as given, no admin, no access log."""
    return {
        "proxy": {"admin": "", "drain_timeout": "2s", "access_log": "off"},
        "identity": identity or identity_table(material, spiffe_id),
        "listener": listeners,
        "cluster": clusters,
    }


class CAProcess:
    """`fastproxy ca serve -c FILE` as a user runs it, with the configuration text given,
    in `workdir` (relative paths in it are relative to that); on a port fixed at creation,
    so that it can be stopped (an outage) and started again at the same address."""

    def __init__(self, workdir: Path, config: str, port: int, name: str = "ca-serve"):
        self.workdir, self.port = Path(workdir), port
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / f"{name}.toml"
        self.config.write_text(config)
        self.log = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.exit_codes: list[int | None] = []

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def start(self, wait: bool = True) -> "CAProcess":
        assert self.proc is None, "already running"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                fastproxy_cmd("ca", "serve", "-c", str(self.config)), cwd=self.workdir,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if wait:
            wait_for_ports([self.port], proc=self.proc, deadline_s=15, what="ca serve", logs=(self.log,))
        return self

    def stop(self, sig=signal.SIGTERM) -> int | None:
        """`sig` (bounded); returns the exit code (None if it had to be killed)."""
        if self.proc is None:
            return None
        rc = stop_group(self.proc, sig=sig, grace_s=10)
        self.exit_codes.append(rc)
        self.proc = None
        return rc

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class CAService(CAProcess):
    """A CAProcess whose configuration gives each token (a 0600 file) its ids."""

    def __init__(self, workdir: Path, ca: MeshCA, tokens: dict[str, list[str]], ttl: str = "1h"):
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca = ca
        entries = []
        self.token_files: dict[str, Path] = {}
        for i, (token, ids) in enumerate(tokens.items()):
            path = self.token_files[token] = workdir / f"token-{i}"
            path.write_text(token + "\n")
            os.chmod(path, 0o600)
            entries.append(f'[[ca.token]]\ntoken_file = "{path}"\n'
                           f'ids = [{", ".join(json.dumps(i) for i in ids)}]\n')
        port = free_port()
        super().__init__(workdir, f'[ca]\ndir = "{ca.dir}"\nbind = "{LOOPBACK}:{port}"\n'
                         f'ttl = "{ttl}"\n\n' + "\n".join(entries), port)

    def token_file(self, token: str) -> Path:
        return self.token_files[token]


class TLSUpstream:
    """A small HTTPS upstream in this process (threads, loopback) presenting whatever
    certificate `use()` set last: for server certificates our CA tooling would never
    issue. Answers every request with `200 ok` and closes the connection (so a proxy never
    pools it). `.requests` counts requests received, `.handshakes` completed handshakes,
    `.resumed` those that resumed a session."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sock = socket.create_server((LOOPBACK, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.ctx: ssl.SSLContext | None = None
        self.requests = 0
        self.handshakes = 0
        self.resumed = 0
        self.errors: list[str] = []
        self._stop = False
        import threading
        self._threading = threading
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def addr(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def use(self, cert_pem: bytes, key_pem: bytes, client_trust: bytes | None) -> None:
        """Present cert/key from now on; require a client certificate chaining to
        `client_trust` (PEM) when given."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert, key = self.workdir / "cert.pem", self.workdir / "key.pem"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        ctx.load_cert_chain(str(cert), str(key))
        if client_trust is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=client_trust.decode())
        self.ctx = ctx

    def _accept_loop(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self._threading.Thread(target=self._serve, args=(conn, self.ctx), daemon=True).start()

    def _serve(self, conn: socket.socket, ctx: ssl.SSLContext) -> None:
        conn.settimeout(10)
        s = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        try:
            s.do_handshake()
            with self._lock:
                self.handshakes += 1
                self.resumed += s.session_reused
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    return
                data += chunk
            with self._lock:
                self.requests += 1
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        except (ssl.SSLError, OSError) as exc:
            self.errors.append(repr(exc))
            # a lingering close, as nginx's: closing with the client's request unread
            # would send a RST that can overtake the TLS alert just written
            try:
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass
            except OSError:
                pass
        finally:
            s.close()

    def stop(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()


def admin_get(proxy, path: str, timeout: float = 5.0) -> tuple[int, dict]:
    """GET an admin endpoint of a sidecar ([proxy] admin); (status, parsed JSON)."""
    host, _, port = proxy.config["proxy"]["admin"].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def pem_of(material: Material) -> tuple[bytes, bytes, bytes]:
    return material.cert.read_bytes(), material.key.read_bytes(), material.trust.read_bytes()


__all__ = ["TD", "sid", "Material", "MeshCA", "write_leaf", "replace_file", "client_context",
           "tls_socket", "https", "server_serial", "refused", "identity_table", "sidecar_config", "CAProcess", "CAService", "TLSUpstream", "admin_get", "pem_of", "pem"]
