"""The backend every contender forwards to: nginx `return 200`, or the built-in one.

It runs pinned to the load CPU (with the load generator), once for the whole run, and
serves `/` (12 bytes) and `/64k` (65,536 bytes). Without nginx the built-in uvloop server
(bench.builtin_backend) stands in, and the run says so: its cost per request is not
nginx's, so its figures compare only with runs that used the same backend.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from bench.configs import write_config
from bench.processes import ManagedProcess, Placement, ProcessRegistry, free_port
from bench.tools import REPO_ROOT, Tool

READY_TIMEOUT_S = 10


class BackendError(RuntimeError):
    pass


@dataclass
class Backend:
    kind: str                 # "nginx" | "builtin"
    port: int
    process: ManagedProcess
    description: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_backend(registry: ProcessRegistry, placement: Placement, nginx: Tool, workdir: Path) -> Backend:
    port = free_port()
    if nginx.found:
        body = workdir / "body-64k.bin"
        body.write_bytes(b"x" * 65536)
        body.chmod(0o644)
        (workdir / "backend-nginx-tmp").mkdir(exist_ok=True)
        config = write_config(workdir / "backend-nginx.conf", "nginx-backend.conf",
                              workdir=workdir, listen=f"127.0.0.1:{port}", body_64k=body)
        cmd = [nginx.path, "-p", str(workdir), "-e", str(workdir / "backend-nginx.error.log"), "-c", str(config)]
        kind, description = "nginx", f"nginx `return 200` (1 worker), {nginx.version}"
    else:
        cmd = [sys.executable, "-m", "bench.builtin_backend", "--port", str(port)]
        kind = "builtin"
        description = ("built-in uvloop backend (bench/builtin_backend.py) because nginx is missing; "
                       "its cost per request differs from nginx's, so compare these figures only "
                       "with runs that used the same backend")
    process = registry.start("backend", placement.pinned(cmd, placement.load_cpu), cwd=REPO_ROOT)
    problem = process.wait_ready(port, READY_TIMEOUT_S)
    if problem:
        raise BackendError(f"the backend did not start: {problem}")
    return Backend(kind=kind, port=port, process=process, description=description)


# A gRPC unary call and its answer: a 5-byte frame header (not compressed, length 7) and
# a protobuf message with one string field (tag 1), "hello" / "world".
GRPC_PATH = "/bench.Bench/Unary"
GRPC_REQUEST = b"\x00\x00\x00\x00\x07\x0a\x05hello"
GRPC_REPLY = b"\x00\x00\x00\x00\x07\x0a\x05world"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def start_grpc_backend(registry: ProcessRegistry, placement: Placement, nghttpd: Tool,
                       workdir: Path) -> Backend:
    """The backend of the gRPC scenario: nghttpd (nghttp2's server, one thread, cleartext
    HTTP/2) answering every call with GRPC_REPLY and a `grpc-status: 0` trailer. Far
    cheaper per call than the proxies in front of it (about 190,000 calls/s on one core)."""
    if not nghttpd.found:
        raise BackendError(f"no gRPC backend: {nghttpd.missing_message()}")
    port = free_port()
    root = workdir / "grpc-root"
    reply = root / GRPC_PATH.lstrip("/")
    reply.parent.mkdir(parents=True, exist_ok=True)
    reply.write_bytes(GRPC_REPLY)
    (workdir / "grpc-request.bin").write_bytes(GRPC_REQUEST)
    cmd = [nghttpd.path, "--no-tls", "-d", str(root), "--trailer=grpc-status: 0", "-a", "127.0.0.1",
           str(port)]
    process = registry.start("grpc-backend", placement.pinned(cmd, placement.load_cpu), cwd=REPO_ROOT)
    problem = process.wait_ready(port, READY_TIMEOUT_S)
    if problem:
        raise BackendError(f"the gRPC backend did not start: {problem}")
    return Backend(kind="nghttpd", port=port, process=process,
                   description=f"nghttpd (cleartext HTTP/2, `grpc-status: 0` trailers), {nghttpd.version}")
