"""Test-side handles for the upstream server programs (raw_upstream.py, app_upstream.py).

Each handle starts its program in its own process group, waits until its ports accept,
and is stopped with `stop()` (the fixtures do it).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .procs import LOOPBACK, free_port, stop_group, wait_for_ports, wait_until

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable


def _spawn(args: list[str], logdir: Path, name: str) -> tuple[subprocess.Popen, tuple[Path, Path]]:
    logdir.mkdir(parents=True, exist_ok=True)
    out, err = logdir / f"{name}.stdout", logdir / f"{name}.stderr"
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=open(out, "wb"), stderr=open(err, "wb"),
        start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return proc, (out, err)


# ---------------------------------------------------------------- raw recording upstream

@dataclass
class RecordedRequest:
    method: str
    target: str
    version: str
    headers: list[tuple[bytes, bytes]]   # exactly as received (name case kept)
    body: bytes                          # de-chunked
    chunked: bool
    raw_head: bytes

    def header_all(self, name: str) -> list[str]:
        key = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == key]

    def header(self, name: str) -> str | None:
        v = self.header_all(name)
        return v[0] if v else None


def parse_recorded(data: bytes) -> list[RecordedRequest]:
    """Split the bytes one upstream connection received into requests (best effort:
    stops at the first thing that is not a complete, well-framed request)."""
    out = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        raw_head = data[pos:end + 4]
        lines = data[pos:end].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            break
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name, value.strip(b" \t")))
        pos = end + 4
        te = [v for k, v in headers if k.lower() == b"transfer-encoding"]
        cl = [v for k, v in headers if k.lower() == b"content-length"]
        body = b""
        chunked = bool(te) and te[-1].lower().endswith(b"chunked")
        if chunked:
            chunks = []
            while True:
                j = data.find(b"\r\n", pos)
                if j < 0:
                    break
                size = int(data[pos:j].split(b";")[0], 16)
                pos = j + 2
                if size == 0:
                    k = data.find(b"\r\n\r\n", pos - 2)
                    pos = (k + 4) if k >= 0 else len(data)
                    break
                chunks.append(data[pos:pos + size])
                pos += size + 2
            body = b"".join(chunks)
        elif cl:
            n = int(cl[0])
            body = data[pos:pos + n]
            pos += n
        out.append(RecordedRequest(parts[0].decode("latin-1"), parts[1].decode("latin-1"),
                                   parts[2].decode("latin-1"), headers, body, chunked, raw_head))
    return out


class RawUpstream:
    """The raw recording upstream. `script` is the JSON script described in
    raw_upstream.py (None: answer every request with 200 `raw:<target>`)."""

    def __init__(self, workdir: Path, script: dict | None = None, name: str = "raw"):
        self.port = free_port()
        self.record = workdir / f"{name}-record"
        self.record.mkdir(parents=True, exist_ok=True)
        args = [PYTHON, str(HERE / "raw_upstream.py"), "--port", str(self.port),
                "--record", str(self.record)]
        if script is not None:
            script_path = workdir / f"{name}-script.json"
            script_path.write_text(json.dumps(script))
            args += ["--script", str(script_path)]
        self.proc, self.logs = _spawn(args, workdir, name)
        wait_for_ports([self.port], proc=self.proc, what=name, logs=self.logs)
        # the readiness probe itself was a connection: forget it
        wait_until(self._conn_files, deadline_s=5, what=f"{name} records the probe")
        self._ignore = set(self._conn_files())

    @property
    def addr(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _conn_files(self) -> list[Path]:
        return sorted(self.record.glob("conn-*.bin"))

    def conn_files(self) -> list[Path]:
        return [p for p in self._conn_files() if p not in self._ignore]

    def connection_count(self) -> int:
        return len(self.conn_files())

    def connections(self) -> list[bytes]:
        return [p.read_bytes() for p in self.conn_files()]

    def closed_by_peer(self, index: int) -> bool:
        return self.conn_files()[index].with_suffix(".closed").exists()

    def snapshot(self) -> dict[Path, int]:
        """Sizes now; pass to `bytes_since` to see only what arrived later."""
        return {p: p.stat().st_size for p in self.conn_files()}

    def bytes_since(self, snap: dict[Path, int] | None = None) -> bytes:
        snap = snap or {}
        out = b""
        for p in self.conn_files():
            out += p.read_bytes()[snap.get(p, 0):]
        return out

    def total_bytes(self) -> bytes:
        return self.bytes_since(None)

    def requests(self) -> list[RecordedRequest]:
        out = []
        for data in self.connections():
            out += parse_recorded(data)
        return out

    def stop(self) -> None:
        stop_group(self.proc, grace_s=3)


# ---------------------------------------------------------------- aiohttp app upstream

class AppUpstream:
    """The aiohttp app. `names`: one listen port per name (x-served-by tells them apart)."""

    def __init__(self, workdir: Path, names=("app",), tag: str = "app"):
        self.ports = {name: free_port() for name in names}
        args = [PYTHON, str(HERE / "app_upstream.py")]
        for name, port in self.ports.items():
            args += ["--listen", f"{name}={port}"]
        self.proc, self.logs = _spawn(args, workdir, tag)
        wait_for_ports(self.ports.values(), proc=self.proc, what=tag, logs=self.logs)

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    def addr(self, name: str | None = None) -> str:
        port = self.ports[name] if name else self.port
        return f"{LOOPBACK}:{port}"

    def control(self, path: str, method: str = "GET") -> dict:
        """Call a /_ctl endpoint directly (not through the proxy)."""
        c = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        try:
            c.request(method, path)
            r = c.getresponse()
            return json.loads(r.read())
        finally:
            c.close()

    def progress(self, tag: str) -> dict:
        return self.control(f"/_ctl/progress/{tag}")

    def received(self, tag: str) -> int:
        return self.control(f"/_ctl/received/{tag}")["received"]

    def seen(self, tag: str) -> bool:
        return self.control(f"/_ctl/seen/{tag}")["seen"]

    def release(self, tag: str) -> None:
        self.control(f"/_ctl/release/{tag}", method="POST")

    def set_mode(self, name: str, mode: str, status: int | None = None) -> None:
        """How listen address `name` answers from now on: ok, fail (status, default 500),
        hang, reset or close (see app_upstream.py)."""
        query = f"?status={status}" if status is not None else ""
        self.control(f"/_ctl/mode/{name}/{mode}{query}", method="POST")

    def hits(self) -> dict[str, int]:
        """Requests each listen name received (outside /_ctl), every name present."""
        got = self.control("/_ctl/hits")
        return {name: got.get(name, 0) for name in self.ports}

    def log(self) -> list[tuple[str, str, str]]:
        """(name, method, path?query) of every request outside /_ctl, in arrival order."""
        return [tuple(item) for item in self.control("/_ctl/log")["log"]]

    def stop(self) -> None:
        stop_group(self.proc, grace_s=3)


# ---------------------------------------------------------------- gRPC upstream

class GrpcUpstream:
    """A real grpcio server of the Echo service (grpc_app.py) in its own process."""

    def __init__(self, workdir: Path, tag: str = "grpc"):
        self.port = free_port()
        self.gen = workdir / "grpc-stubs"
        from .grpc_app import stubs
        self.pb, self.rpc = stubs(self.gen)   # generated once, before the server imports them
        self.proc, self.logs = _spawn([PYTHON, str(HERE / "grpc_app.py"), "--port", str(self.port),
                                       "--gen", str(self.gen)], workdir, tag)
        wait_for_ports([self.port], proc=self.proc, what=tag, logs=self.logs)

    def addr(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        stop_group(self.proc, grace_s=3)
