"""The identity path of deploy/kubernetes/, run as processes on loopback (there is no
cluster here): `fastproxy ca serve` with the ca.toml of the CA's ConfigMap, and a sidecar
with the example namespace's fastproxy.toml as the injected Pod runs it — no id in the
file, FASTPROXY_IDENTITY_ID from the Pod's namespace and service account, the projected
service-account token kubelet mounts. Only addresses and file paths are this machine's.

What it shows: the sidecar obtains exactly its service account's identity; the kubelet's
probe port (the `health` listener) answers /ready once that certificate is in place and
reaches nothing else of the admin API; a Pod whose id does not match its token never gets
ready. (The transparent listeners are exercised in network namespaces: test_netns_mesh.)
"""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from support.configs import to_toml
from support.fastproxy import REPO
from support.kube import cluster_key, jwks_json, sa_token
from support.mesh import CAProcess, MeshCA
from support.observe import admin_call, ready_status
from support.procs import LOOPBACK, free_port, wait_until
from support.rawhttp import request

DEPLOY = REPO / "deploy/kubernetes"
FRONTEND = "spiffe://mesh.local/ns/shop/sa/frontend"


def configmap_file(manifest: str, name: str, key: str) -> dict:
    for doc in YAML(typ="safe").load_all((DEPLOY / manifest).read_text()):
        if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name:
            return tomllib.loads(doc["data"][key])
    raise AssertionError(f"no ConfigMap {name} in {manifest}")


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    """The mesh CA with deploy/kubernetes/ca.yaml's configuration and this test's cluster key."""
    work = tmp_path_factory.mktemp("kube-ca")
    mesh = MeshCA(work / "ca")
    key = cluster_key()
    (work / "jwks.json").write_text(jwks_json(key))
    config = configmap_file("ca.yaml", "fastproxy-ca", "ca.toml")
    port = free_port()
    config["ca"].update(dir=str(mesh.dir), bind=f"{LOOPBACK}:{port}")
    config["ca"]["kubernetes"]["jwks"] = str(work / "jwks.json")
    server = CAProcess(work, to_toml(config), port).start()
    yield {"url": server.url, "ca_pem": mesh.ca_pem, "key": key, "log": server.log}
    assert server.stop() == 0


def sidecar(fastproxy, tmp_path: Path, ca: dict, *, identity: str, token: str):
    """The example namespace's sidecar, started as the injected Pod starts it."""
    config = tomllib.loads((DEPLOY / "example/fastproxy.toml").read_text())
    (tmp_path / "token").write_text(token)
    config["identity"].update(ca_url=ca["url"], token_file=str(tmp_path / "token"), ca_trust=str(ca["ca_pem"]))
    config["proxy"]["admin"] = "${listen:admin}"
    config["cluster"]["admin"]["endpoints"] = ["${listen:admin}"]
    for listener in config["listener"]:
        listener["bind"] = "${listen:" + listener["name"] + "}"
    return fastproxy(to_toml(config), wait=False, env={"FASTPROXY_IDENTITY_ID": identity})


def test_a_sidecar_gets_its_service_accounts_identity_and_the_probe_port_only_ready(fastproxy, tmp_path, ca):
    proxy = sidecar(fastproxy, tmp_path, ca, identity=FRONTEND, token=sa_token(ca["key"], "shop", "frontend"))
    health = proxy.port("health")
    wait_until(lambda: ready_status(proxy) == 200, deadline_s=20, what="ready (the certificate arrived)")
    # as the kubelet probes: Host is the Pod's address
    assert request(health, b"GET /ready HTTP/1.1\r\nHost: 10.244.1.7:15021\r\n\r\n").status == 200
    certs = admin_call(proxy, "GET", "/certs").json()
    assert certs["identity"]["id"] == FRONTEND
    assert "token=kubernetes:shop/frontend" in ca["log"].read_text()
    # the probe port reaches /ready and nothing else: not /shutdown, not /config
    for line in (b"POST /shutdown HTTP/1.1\r\nHost: 10.244.1.7:15021\r\nContent-Length: 0\r\n\r\n",
                 b"GET /config HTTP/1.1\r\nHost: 10.244.1.7:15021\r\n\r\n",
                 b"GET /ready/x HTTP/1.1\r\nHost: 10.244.1.7:15021\r\n\r\n"):
        assert request(health, line).status == 404, line
    assert proxy.proc.poll() is None and admin_call(proxy, "GET", "/ready").status == 200


def test_a_pod_whose_id_is_not_its_tokens_never_gets_ready(fastproxy, tmp_path, ca):
    # the reviews id asked for with the frontend's token: the CA refuses, nothing serves
    wanted = "spiffe://mesh.local/ns/shop/sa/reviews"
    proxy = sidecar(fastproxy, tmp_path, ca, identity=wanted, token=sa_token(ca["key"], "shop", "frontend"))
    wait_until(lambda: f"id={wanted} decision=forbidden" in ca["log"].read_text(), deadline_s=20,
               what="the CA refusing the id")
    assert admin_call(proxy, "GET", "/ready").status == 503
    with pytest.raises(OSError):     # the probe is never answered: the listener does not serve
        request(proxy.port("health"), b"GET /ready HTTP/1.1\r\nHost: 10.244.1.8:15021\r\n\r\n", timeout=1.5)
