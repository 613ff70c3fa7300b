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
