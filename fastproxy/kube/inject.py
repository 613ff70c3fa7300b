"""`fastproxy inject` (SPEC §13): Kubernetes YAML in, the same YAML out with the sidecar
added to every Pod template. A round trip through ruamel.yaml keeps each document's
comments, key order and everything the injection does not touch.

Each Pod template (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob; in
multi-document files and `List`s) gets:

  - `fastproxy-init`, an init container running `fastproxy iptables` as root with
    NET_ADMIN and NET_RAW only; the ports of the application's own probes stay out of
    capture (the kubelet calls them in plain text);
  - `fastproxy`, the sidecar as a native sidecar (an init container with `restartPolicy:
    Always`: it starts before the application and stops after it) as uid 1337, read-only
    root filesystem, no privilege escalation, all capabilities dropped, startup and
    readiness probes on `/ready` at port 15021 (the ConfigMap's `health` listener, which
    forwards only that path to the admin API on loopback), resource requests, and its
    identity's SPIFFE id from the Pod's namespace and service account
    (FASTPROXY_IDENTITY_ID), so that one ConfigMap serves a whole namespace;
  - volumes: the configuration from a ConfigMap, and a projected service-account token
    with audience `fastproxy-ca` (the identity service issues the certificate of that
    service account; the key stays in the sidecar's memory).

Pods on the host's network are left alone (the rules would capture the node's traffic).
Annotations on the Pod template choose: `fastproxy.io/inject: disabled` (left alone),
`fastproxy.io/image`, `fastproxy.io/exclude-inbound-ports`, `fastproxy.io/exclude-outbound-ports`,
`fastproxy.io/exclude-outbound-cidrs`, `fastproxy.io/proxy-cpu`, `fastproxy.io/proxy-memory`.
An injected template is annotated `fastproxy.io/injected: "true"` and never injected again.
"""
from __future__ import annotations

import copy
import io
from dataclasses import dataclass

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from fastproxy.intercept.iptables import INBOUND_PORT, OUTBOUND_PORT, PROXY_UID

HEALTH_PORT = 15021                  # the probes' port (the admin API stays on loopback)
DEFAULT_IMAGE = "fastproxy:latest"
DEFAULT_CONFIG_MAP = "fastproxy"
DEFAULT_TRUST_DOMAIN = "mesh.local"
ANNOTATION = "fastproxy.io/"
TEMPLATE_PATHS = {                   # where each kind keeps its Pod template
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


class InjectError(Exception):
    """The input cannot be injected (one line, naming the document)."""


@dataclass(frozen=True, slots=True)
class Injection:
    """What every injected sidecar gets unless its Pod's annotations say otherwise."""

    image: str = DEFAULT_IMAGE
    config_map: str = DEFAULT_CONFIG_MAP
    trust_domain: str = DEFAULT_TRUST_DOMAIN


def _yaml() -> YAML:
    yaml = YAML()                    # round trip: comments and order kept
    yaml.preserve_quotes = True
    yaml.width = 4096
    return yaml


def inject(text: str, injection: Injection = Injection()) -> tuple[str, int]:
    """(the YAML with every Pod template injected, how many were injected now)."""
    yaml = _yaml()
    try:
        documents = list(yaml.load_all(text))
    except Exception as exc:         # ruamel's parser and scanner errors
        raise InjectError(f"not valid YAML: {str(exc).splitlines()[0]}") from None
    counts = [_inject_object(document, injection, f"document {index + 1}")
              for index, document in enumerate(documents)]
    sources = _document_texts(text)
    if len(sources) != len(documents):     # cannot tell which text is which: dump them all
        sources = [None] * len(documents)
    parts = []
    for document, count, source in zip(documents, counts, sources):
        if count or source is None:
            out = io.StringIO()
            yaml.dump(document, out)
            parts.append(out.getvalue())
        else:
            parts.append(source)          # untouched: exactly as it came
    return "---\n".join(parts), sum(counts)


def _document_texts(text: str) -> list[str]:
    """The text of each document of a multi-document stream, split at its `---` lines
    (a leading one opens the first document)."""
    parts, current = [], []
    for line in text.splitlines(keepends=True):
        if line.rstrip() == "---" or line.startswith("--- "):
            if current or parts:
                parts.append("".join(current))
            current = [] if line.rstrip() == "---" else [line[4:]]
        else:
            current.append(line)
    parts.append("".join(current))
    return [p if p.endswith("\n") or not p else p + "\n" for p in parts]


def _inject_object(obj, injection: Injection, where: str) -> int:
    if not isinstance(obj, dict):
        return 0
    kind = obj.get("kind")
    if kind == "List" or (isinstance(kind, str) and kind.endswith("List")):
        return sum(_inject_object(item, injection, f"{where}, item {i + 1}")
                   for i, item in enumerate(obj.get("items") or []))
    if kind not in TEMPLATE_PATHS:
        return 0
    template = obj
    for key in TEMPLATE_PATHS[kind]:
        template = template.get(key) if isinstance(template, dict) else None
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        raise InjectError(f"{where}: {kind} has no Pod template at {'.'.join(TEMPLATE_PATHS[kind] + ('spec',))}")
    return 1 if inject_template(template, injection) else 0


def inject_template(template: dict, injection: Injection) -> bool:
    """Adds the sidecar to one Pod template (or Pod: `metadata` and `spec`) in place;
    False when it is left alone (disabled by annotation, or injected already)."""
    metadata = template.get("metadata")
    if metadata is None:
        metadata = template["metadata"] = CommentedMap()
    annotations = metadata.get("annotations") or CommentedMap()
    if annotations.get(ANNOTATION + "inject") == "disabled" or annotations.get(ANNOTATION + "injected") == "true":
        return False
    spec = template["spec"]
    if any(c.get("name") in ("fastproxy", "fastproxy-init") for c in spec.get("initContainers") or []):
        return False
    if spec.get("hostNetwork"):      # its iptables rules would capture the node's own traffic
        return False
    annotations[ANNOTATION + "injected"] = "true"
    metadata["annotations"] = annotations
    _add_sidecar(spec, annotations, injection)
    return True


def _add_sidecar(spec: dict, annotations: dict, injection: Injection) -> None:
    image = annotations.get(ANNOTATION + "image", injection.image)
    iptables = ["fastproxy", "iptables", "--proxy-uid", str(PROXY_UID), "--inbound-port", str(INBOUND_PORT),
                "--outbound-port", str(OUTBOUND_PORT)]
    inbound_excluded = [str(HEALTH_PORT)] + _probe_ports(spec) + [p.strip() for p in str(
        annotations.get(ANNOTATION + "exclude-inbound-ports", "")).split(",") if p.strip()]
    iptables += ["--exclude-inbound-ports", ",".join(inbound_excluded)]
    for key in ("exclude-outbound-ports", "exclude-outbound-cidrs"):
        if annotations.get(ANNOTATION + key):
            iptables += [f"--{key}", str(annotations[ANNOTATION + key])]
    init = {
        "name": "fastproxy-init",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": iptables,
        "securityContext": {
            "runAsUser": 0, "runAsNonRoot": False, "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }
    def probe(**more) -> dict:      # a new dict each time: shared ones would be YAML anchors
        return {"httpGet": {"path": "/ready", "port": HEALTH_PORT}, "periodSeconds": 1, **more}
    sidecar = {
        "name": "fastproxy",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "args": ["run", "-c", "/etc/fastproxy/fastproxy.toml"],
        # the identity of the Pod's service account: one ConfigMap serves every workload
        # of a namespace ([identity] without id; Kubernetes expands the $(VAR)s)
        "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "POD_SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "FASTPROXY_IDENTITY_ID",
                 "value": f"spiffe://{injection.trust_domain}/ns/$(POD_NAMESPACE)/sa/$(POD_SERVICE_ACCOUNT)"}],
        "ports": [{"name": "fp-outbound", "containerPort": OUTBOUND_PORT},
                  {"name": "fp-inbound", "containerPort": INBOUND_PORT},
                  {"name": "fp-health", "containerPort": HEALTH_PORT}],
        "securityContext": {
            "runAsUser": PROXY_UID, "runAsGroup": PROXY_UID, "runAsNonRoot": True,
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "startupProbe": probe(failureThreshold=30),
        "readinessProbe": probe(),
        "resources": {"requests": {"cpu": str(annotations.get(ANNOTATION + "proxy-cpu", "50m")),
                                   "memory": str(annotations.get(ANNOTATION + "proxy-memory", "64Mi"))}},
        "volumeMounts": [{"name": "fastproxy-config", "mountPath": "/etc/fastproxy", "readOnly": True},
                         {"name": "fastproxy-token", "mountPath": "/var/run/secrets/fastproxy", "readOnly": True}],
    }
    spec["initContainers"] = [init, sidecar] + list(spec.get("initContainers") or [])
    spec["volumes"] = list(spec.get("volumes") or []) + [
        {"name": "fastproxy-config", "configMap": {"name": injection.config_map}},
        {"name": "fastproxy-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "fastproxy-ca", "expirationSeconds": 3600, "path": "token"}}]}},
    ]


def _probe_ports(spec: dict) -> list[str]:
    """The ports the kubelet probes the application's containers on: kept out of capture,
    since the kubelet speaks plain HTTP (or TCP, gRPC) and the inbound listener wants mTLS.
    Named ports are looked up in the container's own `ports`."""
    found: list[str] = []
    for container in spec.get("containers") or []:
        named = {p.get("name"): p.get("containerPort") for p in container.get("ports") or [] if isinstance(p, dict)}
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(kind) or {}
            for action in ("httpGet", "tcpSocket", "grpc"):
                port = (probe.get(action) or {}).get("port")
                port = named.get(port, port) if isinstance(port, str) and not port.isdigit() else port
                if port is not None and str(port).isdigit() and str(port) not in found:
                    found.append(str(port))
    return found


def pod_patch(pod: dict, injection: Injection) -> list[dict]:
    """The JSONPatch (RFC 6902) that injects the Pod `pod` as `inject_template` would;
    [] when it is left alone. Used by the admission webhook (fastproxy.kube.injector)."""
    after = copy.deepcopy(pod)
    if not inject_template(after, injection):
        return []
    metadata, spec = pod.get("metadata") or {}, pod["spec"]
    if not pod.get("metadata"):
        ops = [{"op": "add", "path": "/metadata", "value": after["metadata"]}]
    elif not metadata.get("annotations"):
        ops = [{"op": "add", "path": "/metadata/annotations", "value": after["metadata"]["annotations"]}]
    else:
        ops = [{"op": "add", "path": "/metadata/annotations/" + _pointer(ANNOTATION + "injected"), "value": "true"}]
    # ours go first (they start before the Pod's own init containers); volumes are appended
    ops.append({"op": "replace" if "initContainers" in spec else "add", "path": "/spec/initContainers",
                "value": after["spec"]["initContainers"]})
    if spec.get("volumes"):
        ops += [{"op": "add", "path": "/spec/volumes/-", "value": volume}
                for volume in after["spec"]["volumes"][len(spec["volumes"]):]]
    else:
        ops.append({"op": "add", "path": "/spec/volumes", "value": after["spec"]["volumes"]})
    return ops


def _pointer(key: str) -> str:
    """One JSON Pointer (RFC 6901) reference token."""
    return key.replace("~", "~0").replace("/", "~1")
