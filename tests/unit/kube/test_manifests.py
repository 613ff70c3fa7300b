"""deploy/kubernetes/ (SPEC §13): every manifest validates against the Kubernetes 1.29
schemas (kubernetes-validate, strict), the configuration files they carry validate with
fastproxy's own loaders, the pieces agree with each other (ports, paths, names), and the
example application injected by `fastproxy inject` validates too, twice = once.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
from ruamel.yaml import YAML

from fastproxy.config import load
from fastproxy.config.ca import validate_ca
from fastproxy.config.injector import validate_injector
from fastproxy.kube import inject as injection
from fastproxy.kube.injector import INJECT_PATH

DEPLOY = Path(__file__).resolve().parents[3] / "deploy/kubernetes"
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))


def documents(path: Path) -> list[dict]:
    return [d for d in YAML(typ="safe").load_all(path.read_text()) if d is not None]


def find(kind: str, name: str) -> dict:
    for path in MANIFESTS:
        for doc in documents(path):
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name} in deploy/kubernetes")


def test_the_manifests_are_all_there():
    names = {p.relative_to(DEPLOY).as_posix() for p in MANIFESTS}
    assert names == {"namespace.yaml", "rbac.yaml", "ca.yaml", "injector.yaml", "example/app.yaml"}
    for kind, name in [("Deployment", "fastproxy-ca"), ("Service", "fastproxy-ca"), ("Deployment", "fastproxy-injector"),
                       ("Service", "fastproxy-injector"), ("MutatingWebhookConfiguration", "fastproxy-injector"),
                       ("ServiceAccount", "fastproxy-ca"), ("Namespace", "fastproxy-system")]:
        find(kind, name)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_manifest_validates(path):
    for doc in documents(path):
        kubernetes_validate.validate(doc, "1.29", strict=True)


def test_the_control_plane_configurations_validate_and_agree():
    ca = validate_ca(tomllib.loads(find("ConfigMap", "fastproxy-ca")["data"]["ca.toml"]))
    assert "fastproxy-ca.fastproxy-system.svc" in ca.server_names
    ca_pod = find("Deployment", "fastproxy-ca")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in ca_pod["containers"][0]["volumeMounts"]}
    assert ca.dir == mounts["ca"] and ca.kubernetes.jwks.startswith(mounts["jwks"] + "/")
    assert ca_pod["containers"][0]["ports"][0]["containerPort"] == ca.bind.port

    injector = validate_injector(tomllib.loads(find("ConfigMap", "fastproxy-injector")["data"]["injector.toml"]))
    pod = find("Deployment", "fastproxy-injector")["spec"]["template"]["spec"]
    assert pod["containers"][0]["ports"][0]["containerPort"] == injector.bind.port
    tls_mount = next(m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"] == "tls")
    assert Path(injector.cert).parent.as_posix() == tls_mount == Path(injector.key).parent.as_posix()
    (webhook,) = find("MutatingWebhookConfiguration", "fastproxy-injector")["webhooks"]
    assert webhook["clientConfig"]["service"]["path"] == INJECT_PATH
    assert webhook["namespaceSelector"]["matchLabels"] == {"fastproxy.io/inject": "enabled"}
    assert find("Namespace", "shop")["metadata"]["labels"] == {"fastproxy.io/inject": "enabled"}


def test_the_example_sidecar_configuration_matches_what_is_injected(monkeypatch):
    monkeypatch.setenv("FASTPROXY_IDENTITY_ID", "spiffe://mesh.local/ns/shop/sa/frontend")
    config = load(DEPLOY / "example/fastproxy.toml")
    binds = {listener.name: listener.bind.port for listener in config.listeners}
    assert binds == {"health": injection.HEALTH_PORT, "inbound": injection.INBOUND_PORT,
                     "outbound": injection.OUTBOUND_PORT}
    assert config.identity.id == "spiffe://mesh.local/ns/shop/sa/frontend"
    assert config.identity.ca_url.startswith("https://fastproxy-ca.fastproxy-system.svc:")
    # the files the injected sidecar is given: the token volume and the ConfigMap's ca.pem
    injected = injection.inject(injection_sample())[0]
    sidecar = YAML(typ="safe").load(injected)["spec"]["initContainers"][1]
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    assert config.identity.token_file == mounts["fastproxy-token"] + "/token"
    assert Path(config.identity.ca_trust).parent.as_posix() == mounts["fastproxy-config"]
    assert sidecar["args"][-1] == mounts["fastproxy-config"] + "/fastproxy.toml"
    (split,) = [route.split for listener in config.listeners for route in listener.routes if route.split]
    assert sorted(entry.weight for entry in split) == [10, 90]


def injection_sample() -> str:
    return "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers: [{name: app, image: app:1}]\n"


def test_the_example_application_injected_validates_and_injecting_again_changes_nothing():
    text = (DEPLOY / "example/app.yaml").read_text()
    out, count = injection.inject(text)
    assert count == 4                          # frontend, reviews v1 and v2, ratings
    for doc in YAML(typ="safe").load_all(out):
        kubernetes_validate.validate(doc, "1.29", strict=True)
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            assert [c["name"] for c in spec["initContainers"]] == ["fastproxy-init", "fastproxy"]
            assert spec["containers"][0]["securityContext"]["runAsUser"] != injection.PROXY_UID
    assert injection.inject(out) == (out, 0)
    assert out.startswith("# An example meshed application")      # comments kept
