"""SPEC §6 automatic issuance, §8 /ready and /certs, issue 4: sidecars obtain their SVIDs
from a real `fastproxy ca serve` (ca_url + token_file + ca_trust), serve only once the
first certificate is in place, renew at renew_at, and keep serving with the current
certificate while the CA is down.

The serial a sidecar presents is read from a new TLS handshake with its mtls listener."""

from __future__ import annotations

import json
import threading
import time

import pytest
from cryptography import x509

from support.mesh import (CAService, MeshCA, admin_get, client_context, https, server_serial,
                          sid)
from support.procs import wait_until
from support.rawhttp import RawConn

pytestmark = pytest.mark.timeout(60)

WEB = sid("ns/default/sa/web")
API = sid("ns/default/sa/api")
CLIENT = sid("ns/default/sa/client")
WEB_TOKEN = "web-token-5b1f0c2e9a"
API_TOKEN = "api-token-77d0e4b1c3"


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return MeshCA(tmp_path_factory.mktemp("issuance-ca") / "ca")


@pytest.fixture(scope="module")
def client_ctx(ca, tmp_path_factory):
    """A direct mTLS client (a file-based SVID from the same CA) for handshakes."""
    return client_context(ca.issue(CLIENT, tmp_path_factory.mktemp("issuance-client") / "id"))


@pytest.fixture
def ca_service(ca, tmp_path):
    """ca_service(ttl) -> a CAService (not started) for the web and api tokens; at the end
    each is stopped and must have exited 0 every time, without logging a token."""
    made = []

    def make(ttl: str = "1h") -> CAService:
        svc = CAService(tmp_path / f"ca-serve-{len(made)}", ca,
                        {WEB_TOKEN: [WEB], API_TOKEN: [API]}, ttl=ttl)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.stop()
        assert all(rc == 0 for rc in svc.exit_codes), (svc.exit_codes, svc.output()[-2000:])
        assert WEB_TOKEN not in svc.output() and API_TOKEN not in svc.output()


def auto_sidecar(fastproxy, svc: CAService, spiffe_id: str, token: str, listeners, clusters,
                 *, renew_at: float = 0.5, name: str):
    proxy = fastproxy({
        "proxy": {"admin": "${listen:admin}", "drain_timeout": "2s", "access_log": "off"},
        "identity": {"id": spiffe_id, "ca_url": svc.url, "token_file": str(svc.token_file(token)),
                     "ca_trust": str(svc.ca.ca_pem), "renew_at": renew_at},
        "listener": listeners,
        "cluster": clusters,
    }, name=name)
    return proxy


def api_sidecar(fastproxy, svc, app_addr, **kw):
    return auto_sidecar(fastproxy, svc, API, API_TOKEN, [
        {"name": "inbound", "bind": "${listen:inbound}", "tls": "mtls", "allow": [WEB, CLIENT],
         "route": [{"cluster": "app"}]},
    ], {"app": {"endpoints": [app_addr]}}, name="api", **kw)


def ready(proxy) -> bool:
    try:
        return admin_get(proxy, "/ready")[0] == 200
    except OSError:
        return False


def wait_ready(proxy, deadline_s: float = 20.0) -> None:
    try:
        wait_until(lambda: ready(proxy), deadline_s=deadline_s, interval=0.1, what="/ready 200")
    except TimeoutError:
        pytest.fail(f"{proxy.name} not ready within {deadline_s}s:\n{proxy.stderr()[-3000:]}")


def certs_serial(proxy) -> int:
    status, body = admin_get(proxy, "/certs")
    assert status == 200, body
    return int(body["identity"]["serial"], 16)


def get_on(conn: RawConn, path: str, host: str = "api"):
    conn.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return conn.read_response()


def xfcc(resp) -> list[str]:
    """The x-forwarded-client-cert values the app (/echo) received."""
    return [v for k, v in json.loads(resp.body)["headers"] if k.lower() == "x-forwarded-client-cert"]


# ---------------------------------------------------------------- first certificate

def test_listeners_serve_only_once_the_first_certificate_arrives(
        fastproxy, shared_app, ca_service, client_ctx):
    svc = ca_service()  # not running yet
    api = api_sidecar(fastproxy, svc, shared_app.addr())
    port = api.port("inbound")

    status, body = wait_until(lambda: _admin_or_none(api, "/ready"), deadline_s=10,
                              what="admin API answers")
    assert status == 503, body

    result = {}

    def early_client():  # connects while the sidecar has no certificate
        try:
            with https(port, client_ctx, timeout=30) as c:
                result["serial"] = x509.load_der_x509_certificate(
                    c.sock.getpeercert(binary_form=True)).serial_number
                result["response"] = get_on(c, "/echo/first")
        except Exception as exc:  # reported below
            result["error"] = repr(exc)

    t = threading.Thread(target=early_client, daemon=True)
    t.start()
    t.join(1.0)
    assert t.is_alive() and not result, f"served without a certificate: {result}"
    assert admin_get(api, "/ready")[0] == 503
    assert "waiting for a certificate" in api.stderr()

    svc.start()
    t.join(20)
    assert not t.is_alive(), "the waiting client was never served"
    assert "error" not in result, result
    assert result["response"].status == 200, result["response"]
    assert xfcc(result["response"]) == [f"By={API};URI={CLIENT}"]
    wait_ready(api)
    assert certs_serial(api) == result["serial"]
    assert f"{result['serial']:x}" in svc.output(), "the CA did not log the certificate it issued"
    assert "decision=issued" in svc.output()
    assert API_TOKEN not in api.stderr()


def _admin_or_none(proxy, path):
    try:
        return admin_get(proxy, path)
    except OSError:
        return None


# ---------------------------------------------------------------- renewal

def test_two_auto_issued_sidecars_renew_short_lived_certificates(
        fastproxy, shared_app, ca_service, client_ctx):
    """client -> web (outbound) -> mtls -> api (inbound) -> app, both sidecars with 4 s
    certificates from ca serve, renewed at half their lifetime, while requests flow."""
    svc = ca_service(ttl="4s").start()
    api = api_sidecar(fastproxy, svc, shared_app.addr())
    web = auto_sidecar(fastproxy, svc, WEB, WEB_TOKEN, [
        {"name": "outbound", "bind": "${listen:outbound}", "route": [{"cluster": "api"}]},
    ], {"api": {"endpoints": [f"127.0.0.1:{api.port('inbound')}"], "tls": "mtls", "peer": API}},
        name="web")
    wait_ready(api)
    wait_ready(web)
    first_api, first_web = server_serial(api.port("inbound"), client_ctx), certs_serial(web)

    failures, count = [], 0
    with RawConn(web.port("outbound"), timeout=10) as conn:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = get_on(conn, f"/echo/renew/{count}")
            count += 1
            if r.status != 200 or xfcc(r) != [f"By={API};URI={WEB}"]:
                failures.append(r)
            if count % 10 == 0 and server_serial(api.port("inbound"), client_ctx) != first_api \
                    and certs_serial(web) != first_web:
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"no renewal within 15 s of 4 s certificates:\n{api.stderr()[-2000:]}")
        # the keep-alive connection (and the pooled mtls one behind it) continue
        for i in range(5):
            r = get_on(conn, f"/echo/after-renewal/{i}")
            assert r.status == 200, r
    assert not failures, f"{len(failures)} of {count} requests failed: {failures[:3]}"
    assert "renewed the certificate" in api.stderr() and "renewed the certificate" in web.stderr()


# ---------------------------------------------------------------- CA outage

def test_ca_outage_during_renewal_keeps_serving_with_the_current_certificate(
        fastproxy, shared_app, ca_service, client_ctx):
    svc = ca_service(ttl="10s").start()
    api = api_sidecar(fastproxy, svc, shared_app.addr(), renew_at=0.3)  # renews after ~3 s
    wait_ready(api)
    port = api.port("inbound")
    first = server_serial(port, client_ctx)
    assert certs_serial(api) == first

    assert svc.stop() == 0  # the CA goes away before the renewal is due
    keeping = f"keeping the current certificate (serial {first:x}"
    try:
        wait_until(lambda: api.stderr().count(keeping) >= 2, deadline_s=10,
                   what="two failed renewal attempts")
    except TimeoutError:
        pytest.fail(f"no failed renewal and retry logged:\n{api.stderr()[-3000:]}")

    # the CA is down and renewing failed twice: everything still works with the current one
    assert server_serial(port, client_ctx) == first
    with https(port, client_ctx) as c:
        r = get_on(c, "/echo/during-outage")
    assert r.status == 200, r
    assert ready(api)

    svc.start()  # back at the same address: the retry (backoff) gets a new certificate
    try:
        wait_until(lambda: server_serial(port, client_ctx) != first, deadline_s=15, interval=0.2,
                   what="renewal after the CA is back")
    except TimeoutError:
        pytest.fail(f"no renewal after the CA came back:\n{api.stderr()[-3000:]}")
    assert certs_serial(api) == server_serial(port, client_ctx)
    with https(port, client_ctx) as c:
        assert get_on(c, "/echo/after-outage").status == 200
