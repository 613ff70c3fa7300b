"""`fastproxy inject` (SPEC §13): every Pod-template kind, multi-document files and Lists,
validated against the Kubernetes 1.29 schemas (kubernetes-validate, strict: no unknown
field), idempotent, `fastproxy.io/inject: disabled` respected, annotations applied, and
everything else — other documents, fields, comments — left as it was.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import kubernetes_validate
import pytest
from ruamel.yaml import YAML

from fastproxy.kube.inject import InjectError, Injection, inject

POD_SPEC = """\
      containers:
      - name: app   # the application
        image: reviews:1
        ports: [{containerPort: 9080}]"""


def manifest(kind: str, annotations: str = "") -> str:
    """A small manifest of `kind` whose Pod template has POD_SPEC (and `annotations`)."""
    meta = f"\n    metadata:\n      annotations:\n{textwrap.indent(annotations, '        ')}" if annotations else ""
    template = f"  template:{meta or chr(10) + '    metadata: {labels: {app: reviews}}'}\n    spec:\n{POD_SPEC}\n"
    if kind == "Pod":
        pod_meta = f"\n  annotations:\n{textwrap.indent(annotations, '    ')}" if annotations else ""
        return (f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: reviews{pod_meta}\nspec:\n"
                + textwrap.indent(textwrap.dedent(POD_SPEC), "  ") + "\n")
    api = {"Job": "batch/v1", "CronJob": "batch/v1"}.get(kind, "apps/v1")
    if kind == "CronJob":
        return (f"apiVersion: {api}\nkind: CronJob\nmetadata: {{name: reviews}}\nspec:\n  schedule: '*/5 * * * *'\n"
                "  jobTemplate:\n    spec:\n" + textwrap.indent(template.replace("    spec:", "    spec:\n      restartPolicy: Never", 1), "    "))
    head = f"apiVersion: {api}\nkind: {kind}\nmetadata: {{name: reviews}}\nspec:\n"
    if kind == "Job":
        return head + template.replace("    spec:", "    spec:\n      restartPolicy: Never", 1)
    selector = "  selector: {matchLabels: {app: reviews}}\n"
    if meta:
        template = template.replace("    metadata:\n      annotations:", "    metadata:\n      labels: {app: reviews}\n      annotations:", 1)
    extra = "  serviceName: reviews\n" if kind == "StatefulSet" else ""
    return head + selector + extra + template


KINDS = ["Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"]


def documents(text: str) -> list:
    return [d for d in YAML(typ="safe").load_all(text) if d is not None]


def pod_spec(doc: dict) -> dict:
    path = {"Pod": ("spec",), "CronJob": ("spec", "jobTemplate", "spec", "template", "spec")}.get(
        doc["kind"], ("spec", "template", "spec"))
    for key in path:
        doc = doc[key]
    return doc


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_gets_the_sidecar_and_validates(kind):
    out, count = inject(manifest(kind), Injection(image="registry.local/fastproxy:1", trust_domain="cluster.local"))
    (doc,) = documents(out)
    kubernetes_validate.validate(doc, "1.29", strict=True)
    spec = pod_spec(doc)
    init, sidecar = spec["initContainers"][:2]
    assert count == 1 and [c["name"] for c in spec["containers"]] == ["app"]
    assert init["command"][:2] == ["fastproxy", "iptables"] and "--proxy-uid" in init["command"]
    assert init["securityContext"]["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert sidecar["restartPolicy"] == "Always" and sidecar["image"] == "registry.local/fastproxy:1"
    assert sidecar["securityContext"] == {
        "runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": True, "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert sidecar["readinessProbe"]["httpGet"] == sidecar["startupProbe"]["httpGet"] == {"path": "/ready", "port": 15021}
    assert sidecar["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}
    env = {e["name"]: e for e in sidecar["env"]}   # its identity: the Pod's service account
    assert env["FASTPROXY_IDENTITY_ID"]["value"] == "spiffe://cluster.local/ns/$(POD_NAMESPACE)/sa/$(POD_SERVICE_ACCOUNT)"
    assert env["POD_SERVICE_ACCOUNT"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.serviceAccountName"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["fastproxy-config"]["configMap"]["name"] == "fastproxy"
    token = volumes["fastproxy-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "fastproxy-ca"


@pytest.mark.parametrize("kind", KINDS)
def test_injecting_twice_is_injecting_once(kind):
    once, _ = inject(manifest(kind))
    twice, count = inject(once)
    assert twice == once and count == 0


def test_disabled_pods_and_other_documents_are_left_exactly_as_they_were():
    service = "# the service\napiVersion: v1\nkind: Service\nmetadata: {name: reviews}  # same name\nspec:\n  ports: [{port: 9080}]\n"
    disabled = manifest("Deployment", 'fastproxy.io/inject: "disabled"')
    text = service + "---\n" + disabled
    out, count = inject(text)
    assert count == 0 and out == text


def test_a_list_and_several_documents_are_all_injected_and_comments_kept():
    items = textwrap.indent(manifest("Deployment"), "  ").replace("  apiVersion", "- apiVersion", 1)
    text = "# all of it\napiVersion: v1\nkind: List\nitems:\n" + items + "---\n" + manifest("Pod")
    out, count = inject(text)
    assert count == 2 and out.startswith("# all of it\n") and "# the application" in out
    listed, pod = documents(out)
    for doc in listed["items"] + [pod]:       # the schemas have no List: its items
        kubernetes_validate.validate(doc, "1.29", strict=True)


def test_annotations_choose_the_image_the_exclusions_and_the_resources():
    out, _ = inject(manifest("Deployment", "\n".join([
        'fastproxy.io/image: "mirror.local/fastproxy:2"',
        'fastproxy.io/exclude-inbound-ports: "9901"',
        'fastproxy.io/exclude-outbound-ports: "5432,6379"',
        'fastproxy.io/exclude-outbound-cidrs: "169.254.169.254/32"',
        'fastproxy.io/proxy-cpu: "200m"',
        'fastproxy.io/proxy-memory: "128Mi"'])))
    spec = pod_spec(documents(out)[0])
    init, sidecar = spec["initContainers"][:2]
    assert init["image"] == sidecar["image"] == "mirror.local/fastproxy:2"
    command = init["command"]
    assert command[command.index("--exclude-inbound-ports") + 1] == "15021,9901"
    assert command[command.index("--exclude-outbound-ports") + 1] == "5432,6379"
    assert command[command.index("--exclude-outbound-cidrs") + 1] == "169.254.169.254/32"
    assert sidecar["resources"]["requests"] == {"cpu": "200m", "memory": "128Mi"}


def test_application_probe_ports_stay_out_of_capture_and_host_network_pods_are_left_alone():
    # the kubelet probes in plain text; the mTLS inbound listener would refuse it
    probed = manifest("Deployment").replace("ports: [{containerPort: 9080}]", (
        "ports: [{name: http, containerPort: 9080}]\n"
        "        livenessProbe: {httpGet: {path: /healthz, port: http}}\n"
        "        readinessProbe: {tcpSocket: {port: 8081}}"))
    out, count = inject(probed)
    spec = pod_spec(documents(out)[0])
    kubernetes_validate.validate(documents(out)[0], "1.29", strict=True)
    command = spec["initContainers"][0]["command"]
    assert count == 1 and command[command.index("--exclude-inbound-ports") + 1] == "15021,9080,8081"
    assert {c["imagePullPolicy"] for c in spec["initContainers"]} == {"IfNotPresent"}
    host = manifest("DaemonSet").replace("    spec:\n", "    spec:\n      hostNetwork: true\n", 1)
    assert inject(host) == (host, 0)       # its rules would capture the node's own traffic


@pytest.mark.parametrize("text, message", [
    ("kind: Deployment\nspec: [oops\n", "not valid YAML"),
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: 1}\n",
     "document 1: Deployment has no Pod template at spec.template.spec"),
])
def test_what_cannot_be_injected_says_why(text, message):
    with pytest.raises(InjectError, match=message):
        inject(text)


def test_the_command_reads_stdin_or_a_file_and_fails_with_one_line(tmp_path):
    run = lambda *args, stdin="": subprocess.run([sys.executable, "-m", "fastproxy", "inject", *args],
                                                 input=stdin, capture_output=True, text=True)
    done = run(stdin=manifest("Pod"))
    assert done.returncode == 0 and "fastproxy-init" in done.stdout
    assert "1 pod template(s) injected" in done.stderr
    path = tmp_path / "app.yaml"
    path.write_text(manifest("Job"))
    assert run("-f", str(path), "--config-map", "mesh-config").stdout.count("name: mesh-config") == 1
    done = run("-f", str(tmp_path / "missing.yaml"))
    assert done.returncode == 1 and "No such file" in done.stderr and "Traceback" not in done.stderr
    done = run(stdin="kind: [\n")
    assert done.returncode == 1 and "not valid YAML" in done.stderr and "Traceback" not in done.stderr
