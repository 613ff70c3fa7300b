"""Before a contender is measured: does it really do the job the scenario describes?

A proxy that accepts `tls = "tls"` in its config but serves plain HTTP would otherwise be
measured as if it terminated TLS, and a two-hop "mTLS" that is plain text underneath would
look cheap. So, once its processes listen, each deployment gets one request through it
(200, with the body size the backend sends) and, by topology:

  tls        the entry port completes a TLS handshake (verified against the bench CA);
  mtls-2hop  the inbound sidecar completes a handshake with the client certificate and
             answers 200, and refuses a client without a certificate - so the outbound
             sidecar, which got the first 200 through it, must have spoken mTLS.

An HTTP/2 scenario's request goes as cleartext HTTP/2 with prior knowledge (the `h2`
library as the client), as h2load will send it.

The protocol version and cipher of that handshake go into `deployment.negotiated`, for
the report. Returns None when all holds, else what did not. Must not measure anything.
"""
from __future__ import annotations

import http.client
import socket
import ssl

from bench.backend import GRPC_HEADERS, GRPC_PATH, GRPC_REPLY, GRPC_REQUEST
from bench.certs import BenchCerts
from bench.contenders import Deployment
from bench.scenarios import Scenario

TIMEOUT_S = 5
BODY_SIZES = {"/": 12, "/64k": 65536, GRPC_PATH: len(GRPC_REPLY)}


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


def _handshake(port: int, context: ssl.SSLContext) -> str:
    """Complete a TLS handshake with the port: "TLSv1.3 TLS_AES_256_GCM_SHA384"."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return f"{tls.version()} {tls.cipher()[0]}"


def _h2c_request(port: int, path: str, grpc: bool) -> tuple[int, int, dict]:
    """One request over cleartext HTTP/2 with prior knowledge - a GET, or a gRPC unary
    call: (status, body bytes, trailers)."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "POST" if grpc else "GET"), (":scheme", "http"),
               (":authority", f"127.0.0.1:{port}"), (":path", path), ("user-agent", "fastproxy-bench-verify")]
    if grpc:
        headers += [tuple(h.split(": ")) for h in GRPC_HEADERS]
    conn.send_headers(1, headers, end_stream=not grpc)
    if grpc:
        conn.send_data(1, GRPC_REQUEST, end_stream=True)
    status, size, trailers = 0, 0, {}
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed the connection without an HTTP/2 response")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    size += len(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h2.events.StreamEnded):
                    return status, size, trailers
                elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    raise ConnectionError(f"{type(event).__name__}: {event}")
            sock.sendall(conn.data_to_send())


def verify_deployment(scenario: Scenario, deployment: Deployment, certs: BenchCerts | None) -> str | None:
    inbound_port = deployment.inbound_port
    host = "127.0.0.1"
    if scenario.http2:
        grpc = scenario.protocol == "grpc"
        what = "a gRPC call" if grpc else "an HTTP/2 request"
        try:
            status, size, trailers = _h2c_request(deployment.port, scenario.path, grpc)
        except Exception as exc:    # any failure of the protocol is the answer here
            return f"{what} (cleartext, prior knowledge): {type(exc).__name__}: {exc}"
        expected = BODY_SIZES.get(scenario.path)
        if status != 200 or size != expected:
            return f"{what}: got status {status} with {size} body bytes, expected 200 with {expected}"
        if grpc and trailers.get("grpc-status") != "0":
            return f"a gRPC call: the trailers were {trailers}, expected grpc-status 0"
        return None
    if scenario.topology == "tls" and deployment.processes:
        try:
            deployment.negotiated = _handshake(deployment.port, _tls_context(certs, with_client_cert=False))
        except (OSError, ssl.SSLError) as exc:
            return f"its listener does not complete a TLS handshake ({type(exc).__name__}: {exc})"
        connection = http.client.HTTPSConnection(host, deployment.port, timeout=TIMEOUT_S,
                                                 context=_tls_context(certs, with_client_cert=False))
        return _expect_ok(connection, scenario.path, "a request over TLS")

    problem = _expect_ok(http.client.HTTPConnection(host, deployment.port, timeout=TIMEOUT_S),
                         scenario.path, "a request through it")
    if problem or scenario.topology != "mtls-2hop" or inbound_port is None:
        return problem

    try:
        deployment.negotiated = _handshake(inbound_port, _tls_context(certs, with_client_cert=True))
    except (OSError, ssl.SSLError) as exc:
        return f"the inbound sidecar does not complete an mTLS handshake ({type(exc).__name__}: {exc})"
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
