"""`fastproxy injector` (SPEC §13): the mutating admission webhook, run as a user runs it,
asked the way the Kubernetes API server asks — an AdmissionReview v1 over HTTPS, its
certificate checked against the mesh CA (the webhook's caBundle) and its name.

The answer's JSONPatch is applied with the `jsonpatch` library (the oracle), and the Pod
it makes must validate against the Kubernetes 1.29 schemas and equal what `fastproxy
inject` makes of the same Pod.
"""
from __future__ import annotations

import base64
import http.client
import json
import shutil
import ssl
import subprocess

import jsonpatch
import kubernetes_validate
import pytest
from ruamel.yaml import YAML

from fastproxy.kube.inject import Injection, inject
from support.fastproxy import fastproxy_cmd, run_cli
from support.mesh import MeshCA, server_serial, client_context
from support.procs import LOOPBACK, free_port, stop_group, wait_for_ports, wait_until

POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"generateName": "reviews-7d9f-", "namespace": "shop", "labels": {"app": "reviews"}},
    "spec": {"serviceAccountName": "reviews",
             "containers": [{"name": "app", "image": "reviews:1", "ports": [{"containerPort": 9080}]}],
             "volumes": [{"name": "data", "emptyDir": {}}]},
}


def review(pod, *, kind: str = "Pod", operation: str = "CREATE", uid: str = "c0ffee") -> dict:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": kind},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": "shop", "operation": operation, "object": pod}}


class Injector:
    """`fastproxy injector -c FILE` with a serving certificate from the mesh CA."""

    def __init__(self, tmp_path):
        self.ca = MeshCA(tmp_path / "ca")
        self.tls = tmp_path / "tls"
        issued = run_cli("ca", "issue", str(self.ca.dir), "--dns", "localhost", "--dns", LOOPBACK,
                         "--out", str(self.tls))
        assert issued.returncode == 0, issued.stderr
        self.port = free_port()
        self.config = tmp_path / "injector.toml"
        self.config.write_text(f'[injector]\nbind = "{LOOPBACK}:{self.port}"\ncert = "{self.tls}/cert.pem"\n'
                               f'key = "{self.tls}/key.pem"\nimage = "registry.local/fastproxy:1"\n'
                               'trust_domain = "cluster.local"\n')
        self.log = tmp_path / "injector.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(fastproxy_cmd("injector", "-c", str(self.config)), stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for_ports([self.port], proc=self.proc, what="injector", logs=(self.log,))

    def post(self, body: bytes, path: str = "/inject") -> tuple[int, bytes]:
        # as the API server does: the CA bundle, and the name in the certificate checked
        ctx = ssl.create_default_context(cafile=str(self.ca.ca_pem))
        conn = http.client.HTTPSConnection(LOOPBACK, self.port, context=ctx, timeout=10)
        try:
            conn.request("POST", path, body=body, headers={"content-type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def admit(self, request: dict) -> dict:
        status, body = self.post(json.dumps(request).encode())
        assert status == 200, body
        answer = json.loads(body)
        assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
        assert answer["response"]["uid"] == request["request"]["uid"]
        return answer["response"]


@pytest.fixture
def injector(tmp_path):
    running = Injector(tmp_path)
    yield running
    assert stop_group(running.proc, grace_s=10) == 0


def patched(pod: dict, response: dict) -> dict:
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    return jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))


def test_a_pod_is_patched_exactly_as_inject_would_and_validates(injector):
    pod = patched(POD, injector.admit(review(POD)))
    kubernetes_validate.validate(pod, "1.29", strict=True)
    text, _ = inject(json.dumps(POD), Injection(image="registry.local/fastproxy:1", trust_domain="cluster.local"))
    assert pod == json.loads(json.dumps(YAML(typ="safe").load(text)))
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["fastproxy-init", "fastproxy"]
    assert [v["name"] for v in pod["spec"]["volumes"]][0] == "data"      # the Pod's own come first
    sidecar = pod["spec"]["initContainers"][1]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["FASTPROXY_IDENTITY_ID"] == "spiffe://cluster.local/ns/$(POD_NAMESPACE)/sa/$(POD_SERVICE_ACCOUNT)"
    # a Pod that has init containers and annotations of its own keeps them, after ours
    own = json.loads(json.dumps(POD))
    own["metadata"]["annotations"] = {"team": "shop"}
    own["spec"]["initContainers"] = [{"name": "migrate", "image": "reviews:1"}]
    pod = patched(own, injector.admit(review(own)))
    kubernetes_validate.validate(pod, "1.29", strict=True)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["fastproxy-init", "fastproxy", "migrate"]
    assert pod["metadata"]["annotations"] == {"team": "shop", "fastproxy.io/injected": "true"}


def test_injected_disabled_and_other_requests_are_allowed_unchanged(injector):
    once = patched(POD, injector.admit(review(POD)))
    disabled = json.loads(json.dumps(POD))
    disabled["metadata"]["annotations"] = {"fastproxy.io/inject": "disabled"}
    for request in (review(once), review(disabled), review(POD, operation="UPDATE"),
                    review({"metadata": {"name": "x"}}, kind="Service")):
        response = injector.admit(request)
        assert response["allowed"] is True and "patch" not in response
    assert "decision=injected" in injector.log.read_text() and "decision=skipped" in injector.log.read_text()


def test_what_cannot_be_injected_is_refused_with_a_message_and_the_injector_stays_up(injector):
    response = injector.admit(review({"metadata": {"name": "broken"}}))
    assert response["allowed"] is False and "no spec" in response["status"]["message"]
    odd = json.loads(json.dumps(POD))
    odd["spec"]["initContainers"] = "not a list"
    response = injector.admit(review(odd))
    assert response["allowed"] is False and response["status"]["message"].startswith("fastproxy: cannot inject")
    for body, reason in ((b"{not json", "not JSON"), (b'{"kind": "Pod"}', "expected an AdmissionReview"),
                         (b"[" * 200_000, "not JSON"),
                         
                         (json.dumps({**review(POD), "apiVersion": "admission.k8s.io/v1beta1"}).encode(),
                          "expected an AdmissionReview")):
        status, text = injector.post(body)
        assert status == 400 and reason in text.decode()
    nameless = {**POD, "metadata": None}      # no metadata at all: the patch creates it
    pod = patched(nameless, injector.admit(review(nameless)))
    assert pod["metadata"] == {"annotations": {"fastproxy.io/injected": "true"}}
    status, text = injector.post(b"{}", path="/mutate")
    assert status == 404 and b"no such endpoint" in text
    assert injector.admit(review(POD))["allowed"] is True
    assert "Traceback" not in injector.log.read_text()


def test_a_renewed_certificate_is_served_without_a_restart(injector):
    ctx = client_context(trust=injector.ca.ca_pem)
    before = server_serial(injector.port, ctx)
    staged = injector.tls.parent / "renewed"
    assert run_cli("ca", "issue", str(injector.ca.dir), "--dns", "localhost", "--dns", LOOPBACK,
                   "--out", str(staged)).returncode == 0

    def swap(*names):   # as the kubelet updates a mounted Secret: renamed into place
        for name in names:
            shutil.copy(staged / name, injector.tls / f".{name}")
            (injector.tls / f".{name}").replace(injector.tls / name)

    swap("cert.pem")    # the new certificate beside the old key: refused, the old pair stays
    wait_until(lambda: "keeping the current certificate" in injector.log.read_text(), deadline_s=15,
               what="the mismatched pair refused")
    assert server_serial(injector.port, ctx) == before and injector.admit(review(POD))["allowed"] is True
    swap("key.pem")
    wait_until(lambda: server_serial(injector.port, ctx) != before, deadline_s=15, what="the new certificate")
    assert injector.admit(review(POD))["allowed"] is True


@pytest.mark.parametrize("config, message", [
    ('[injector]\nbind = "127.0.0.1:1"\ncert = "c.pem"\n', "injector.key: is required"),
    ('[injector]\nbind = "127.0.0.1:1"\ncert = "c.pem"\nkey = "k.pem"\nimage_name = "x"\n', "injector.image_name"),
    ('[injector]\nbind = "127.0.0.1:1"\ncert = "missing.pem"\nkey = "k.pem"\n', "cannot load missing.pem"),
])
def test_configuration_problems_are_one_line_naming_the_key(tmp_path, config, message):
    path = tmp_path / "injector.toml"
    path.write_text(config)
    done = run_cli("injector", "-c", str(path), cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_an_address_in_use_is_named(tmp_path, injector):
    config = tmp_path / "again.toml"
    config.write_text(injector.config.read_text())
    done = run_cli("injector", "-c", str(config))
    assert done.returncode == 1 and f"cannot bind {LOOPBACK}:{injector.port}" in done.stderr
