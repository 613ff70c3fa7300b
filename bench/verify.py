"""Before a contender is measured: does it really do the job the scenario describes?

A proxy that accepts `tls = "tls"` in its config but serves plain HTTP would otherwise be
measured as if it terminated TLS, and a two-hop "mTLS" that is plain text underneath would
look cheap. So, once its processes listen, each deployment gets one request through it
(200, with the body size the backend sends) and, by topology:

  tls        the entry port completes a TLS handshake (verified against the bench CA);
  mtls-2hop  the inbound sidecar completes a handshake with the client certificate and
             answers 200, and refuses a client without a certificate - so the outbound
             sidecar, which got the first 200 through it, must have spoken mTLS.

Returns None when all holds, else what did not. Must not measure anything.
"""
from __future__ import annotations

import http.client
import socket
import ssl

from bench.certs import BenchCerts
from bench.contenders import Deployment
from bench.scenarios import Scenario

TIMEOUT_S = 5
BODY_SIZES = {"/": 12, "/64k": 65536}


def _get(connection: http.client.HTTPConnection, path: str) -> tuple[int, int]:
    connection.request("GET", path, headers={"User-Agent": "fastproxy-bench-verify"})
    response = connection.getresponse()
    return response.status, len(response.read())


def _tls_context(certs: BenchCerts, with_client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.check_hostname = False          # the CA is ours and fresh; the name is not the point
    if with_client_cert:
        context.load_cert_chain(str(certs.client.cert), str(certs.client.key))
    return context


def _expect_ok(connection: http.client.HTTPConnection, path: str, what: str) -> str | None:
    try:
        status, size = _get(connection, path)
    except (OSError, http.client.HTTPException) as exc:
        return f"{what}: {type(exc).__name__}: {exc}"
    finally:
        connection.close()
    expected = BODY_SIZES.get(path)
    if status != 200 or (expected is not None and size != expected):
        return f"{what}: got status {status} with {size} body bytes, expected 200 with {expected}"
    return None


def verify_deployment(scenario: Scenario, deployment: Deployment, certs: BenchCerts | None) -> str | None:
    inbound_port = deployment.inbound_port
    host = "127.0.0.1"
    if scenario.topology == "tls" and deployment.processes:
        try:
            with socket.create_connection((host, deployment.port), timeout=TIMEOUT_S) as raw:
                with _tls_context(certs, with_client_cert=False).wrap_socket(raw, server_hostname="localhost"):
                    pass
        except (OSError, ssl.SSLError) as exc:
            return f"its listener does not complete a TLS handshake ({type(exc).__name__}: {exc})"
        connection = http.client.HTTPSConnection(host, deployment.port, timeout=TIMEOUT_S,
                                                 context=_tls_context(certs, with_client_cert=False))
        return _expect_ok(connection, scenario.path, "a request over TLS")

    problem = _expect_ok(http.client.HTTPConnection(host, deployment.port, timeout=TIMEOUT_S),
                         scenario.path, "a request through it")
    if problem or scenario.topology != "mtls-2hop" or inbound_port is None:
        return problem

    with_cert = http.client.HTTPSConnection(host, inbound_port, timeout=TIMEOUT_S,
                                            context=_tls_context(certs, with_client_cert=True))
    problem = _expect_ok(with_cert, scenario.path, "the inbound sidecar, over TLS with a client certificate")
    if problem:
        return problem
    without_cert = http.client.HTTPSConnection(host, inbound_port, timeout=TIMEOUT_S,
                                               context=_tls_context(certs, with_client_cert=False))
    try:
        status, _ = _get(without_cert, scenario.path)
    except (OSError, http.client.HTTPException):
        return None                          # refused, as mTLS must
    finally:
        without_cert.close()
    if status == 200:
        return "the inbound sidecar answered 200 to a client without a certificate: not mutual TLS"
    return None
