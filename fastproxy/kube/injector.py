"""`fastproxy injector -c FILE` (SPEC §13): `fastproxy inject` as a mutating admission
webhook, so that every Pod created in a namespace labelled `fastproxy.io/inject=enabled`
gets its sidecar without anyone editing manifests.

The API server POSTs an AdmissionReview (admission.k8s.io/v1) to `https://.../inject` for
each Pod being created (which Pods: the MutatingWebhookConfiguration's rules and
namespaceSelector, deploy/kubernetes/injector.yaml). The answer, an AdmissionReview with
the same uid, allows the Pod with a JSONPatch that adds exactly what `fastproxy inject`
adds (`fastproxy.kube.inject.pod_patch`), or with no patch when the Pod is left alone
(annotated `fastproxy.io/inject: disabled`, injected already, or not a Pod creation).
A Pod that cannot be injected is refused with a message saying why (the API server shows
it to whoever created the Pod); a request that is not an AdmissionReview gets 400.

The serving certificate and key (`cert`, `key`; issued from the mesh CA with
`fastproxy ca issue --dns NAME`) are re-read when their files change, as a mounted
Secret's do when it is updated. Every decision is one log line.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import ssl
import sys

from fastproxy import https_endpoint
from fastproxy.config import ConfigError, file_signature
from fastproxy.config.injector import load_injector
from fastproxy.https_endpoint import detail, quote
from fastproxy.kube.inject import Injection, pod_patch

__all__ = ["Admission", "Verdict", "main", "serve", "INJECT_PATH"]

log = logging.getLogger("fastproxy.injector")

INJECT_PATH = "/inject"
MAX_REVIEW = 4 * 1024 * 1024      # the API server sends at most ~3 MiB
CERT_CHECK_INTERVAL = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    status: int                   # the HTTP status: 200 for every AdmissionReview answered
    reason: str                   # injected | skipped | refused | the error reason
    detail: str = ""
    body: bytes = b""
    pod: str = "-"                # namespace/name of the Pod


class Admission:
    """AdmissionReview in, AdmissionReview out: the handler of the HTTPS endpoint
    (fastproxy.https_endpoint). The API server authenticates us by our certificate; we
    take requests from any client, since all we give is a patch for what it sends."""

    path = INJECT_PATH
    name = "fastproxy-injector"
    max_body = MAX_REVIEW
    content_type = "application/json"

    def __init__(self, injection: Injection) -> None:
        self.injection = injection

    def authorize(self, authorization: str | None) -> None:
        return None

    def refusal(self, status: int, reason: str, text: str, context=None) -> Verdict:
        return Verdict(status, reason, text)

    def log(self, verdict: Verdict, peer: str) -> None:
        level = logging.INFO if verdict.status == 200 and verdict.reason != "refused" else logging.WARNING
        line = f"injector: pod={quote(verdict.pod)} decision={verdict.reason} status={verdict.status}"
        if verdict.detail:
            line += f" detail={quote(verdict.detail)}"
        log.log(level, "%s peer=%s", line, peer)

    def answer(self, context, body: bytes) -> Verdict:
        try:
            review = json.loads(body)
        except (ValueError, RecursionError) as exc:     # RecursionError: absurdly deep nesting
            return Verdict(400, "bad_request", f"the body is not JSON ({detail(exc)})")
        request = review.get("request") if isinstance(review, dict) else None
        if (not isinstance(request, dict) or review.get("kind") != "AdmissionReview"
                or review.get("apiVersion") != "admission.k8s.io/v1" or not isinstance(request.get("uid"), str)):
            return Verdict(400, "bad_request", "expected an AdmissionReview (admission.k8s.io/v1) with a request uid")
        pod = request.get("object")
        metadata = pod.get("metadata") if isinstance(pod, dict) else None
        metadata = metadata if isinstance(metadata, dict) else {}
        name = metadata.get("name") or (f"{metadata['generateName']}*" if metadata.get("generateName") else "-")
        where = f"{request.get('namespace') or metadata.get('namespace') or '-'}/{name}"
        response: dict = {"uid": request["uid"], "allowed": True}
        kind = request.get("kind") if isinstance(request.get("kind"), dict) else {}
        if kind.get("kind") != "Pod" or request.get("operation", "CREATE") != "CREATE":
            verdict = Verdict(200, "skipped", f"{kind.get('kind', '?')} {request.get('operation', '?')}: "
                              "only Pod creations are injected", pod=where)
        elif not isinstance(pod, dict) or not isinstance(pod.get("spec"), dict):
            response = {"uid": request["uid"], "allowed": False,
                        "status": {"code": 400, "message": "fastproxy: the Pod has no spec to inject into"}}
            verdict = Verdict(200, "refused", "no spec", pod=where)
        else:
            try:
                patch = pod_patch(pod, self.injection)
            except Exception as exc:   # whatever an odd Pod trips over: say so, never crash
                log.debug("injector: cannot inject %s", where, exc_info=True)
                message = f"fastproxy: cannot inject the sidecar: {detail(exc)}"
                response = {"uid": request["uid"], "allowed": False, "status": {"code": 400, "message": message}}
                verdict = Verdict(200, "refused", message, pod=where)
            else:
                if patch:
                    response["patchType"] = "JSONPatch"
                    response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode("ascii")
                verdict = Verdict(200, "injected" if patch else "skipped",
                                  "" if patch else "disabled by annotation or injected already", pod=where)
        out = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        return dataclasses.replace(verdict, body=json.dumps(out).encode())


def _check_pair(cert: str, key: str) -> None:
    """Raises OSError or ssl.SSLError unless `cert` and `key` load as a matching pair (on a
    context of its own: a failed load may leave a context half changed)."""
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)


class _Certificate:
    """The serving certificate: loaded into the context, re-loaded when the files change."""

    def __init__(self, context: ssl.SSLContext, cert: str, key: str) -> None:
        self.context, self.cert, self.key = context, cert, key
        self.stamp = self._stamp()
        context.load_cert_chain(cert, key)

    def _stamp(self) -> tuple:
        return file_signature(self.cert), file_signature(self.key)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(CERT_CHECK_INTERVAL)
            stamp = self._stamp()
            if stamp == self.stamp:
                continue
            try:
                _check_pair(self.cert, self.key)
                self.context.load_cert_chain(self.cert, self.key)
                self.stamp = stamp
                log.info("injector: loaded the new serving certificate from %s", self.cert)
            except (OSError, ssl.SSLError) as exc:  # half-written or mismatched: keep the current one
                log.warning("injector: keeping the current certificate: %s", detail(exc))


async def serve(config, *, ready=None, stop: asyncio.Event | None = None) -> int:
    context = https_endpoint.server_context()
    certificate = _Certificate(context, config.cert, config.key)
    injection = Injection(config.image, config.config_map, config.trust_domain)

    def listening(server) -> None:
        log.info("injector: serving https://%s%s (image %s, ConfigMap %s, trust domain %s)",
                 config.bind, INJECT_PATH, injection.image, injection.config_map, injection.trust_domain)
        if ready is not None:
            ready(server)

    watcher = asyncio.get_running_loop().create_task(certificate.watch())
    try:
        return await https_endpoint.serve(Admission(injection), config.bind, context, command="injector",
                                          ready=listening, stop=stop)
    finally:
        watcher.cancel()


def main(args) -> int:
    """`fastproxy injector -c FILE`: 0 after SIGTERM/SIGINT, 1 when the address cannot be
    bound, 2 for a configuration problem (the file, an unreadable certificate or key)."""
    try:
        config = load_injector(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 2
    try:
        _check_pair(config.cert, config.key)
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else detail(exc)
        print(f"{config.path}: injector.cert/key: cannot load {config.cert} and {config.key}: {why}",
              file=sys.stderr)
        return 2
    https_endpoint.setup_logging("fastproxy-injector")
    return https_endpoint.run(serve(config))
