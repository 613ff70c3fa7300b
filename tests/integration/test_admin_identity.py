"""The admin API's identity views (SPEC §8, §11 "Admin"): /certs, the expiry gauge in
/metrics, and /ready, on a sidecar with a certificate from our CA."""
from __future__ import annotations

import http.client
from datetime import timezone

import pytest

from support.mesh import MeshCA, admin_get, sid, sidecar_config
from support.procs import wait_until

pytestmark = pytest.mark.timeout(60)

WEB = sid("ns/default/sa/web")


def _metrics(proxy) -> dict[str, str]:
    host, _, port = proxy.config["proxy"]["admin"].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("content-type").startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    finally:
        conn.close()
    return {line.split(" ")[0]: line.split(" ")[1] for line in text.splitlines()
            if line and not line.startswith("#")}


def test_certs_ready_and_the_expiry_gauge(fastproxy, shared_app, tmp_path):
    ca = MeshCA(tmp_path / "ca")
    material = ca.issue(WEB, tmp_path / "web")
    config = sidecar_config(material, WEB, [{
        "name": "inbound", "bind": "${listen:inbound}", "tls": "mtls",
        "route": [{"cluster": "app"}]}], {"app": {"endpoints": [shared_app.addr()]}})
    config["proxy"]["admin"] = "${listen:admin}"
    proxy = fastproxy(config)

    # listening sockets are bound before the worker starts, so a port that accepts is not
    # yet a ready sidecar: /ready turns 200 once the certificate and listeners are in place
    wait_until(lambda: admin_get(proxy, "/ready")[0] == 200, deadline_s=10, what="/ready 200")
    status, ready = admin_get(proxy, "/ready")
    assert status == 200 and ready["ready"] is True

    status, certs = admin_get(proxy, "/certs")
    leaf = material.leaf()
    assert status == 200
    assert certs["identity"]["id"] == WEB
    assert int(certs["identity"]["serial"], 16) == leaf.serial_number
    assert certs["identity"]["not_after"] == \
        leaf.not_valid_after_utc.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    assert len(certs["trust"]) == 1 and "mesh.local" in certs["trust"][0]["subject"]

    metrics = _metrics(proxy)
    assert int(metrics["fastproxy_identity_expiry_timestamp_seconds"]) == \
        int(leaf.not_valid_after_utc.timestamp())
    assert metrics["fastproxy_identity_rotation_failures_total"] == "0"
