"""Running things in network namespaces (iproute2's `ip netns exec`): what the namespace
mesh, bench.interception and the interception tests share."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

IP = shutil.which("ip") or "/usr/sbin/ip"


class NetnsError(Exception):
    """A command in a namespace failed (one line: the command and what it said)."""


def run(*cmd: str, ns: str | None = None, uid: str | None = None, check: bool = True,
        timeout: float = 30, input: str | None = None, cwd: Path | None = None,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """`cmd` in namespace `ns` (the current one without), as `uid` when given, with `env`
    as its whole environment when given."""
    prefix = [IP, "netns", "exec", ns] if ns else []
    if uid is not None:
        prefix += ["setpriv", "--reuid", uid, "--regid", uid, "--clear-groups"]
    done = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=timeout, input=input,
                          cwd=cwd, env=env)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {(done.stderr or done.stdout).strip()}")
    return done


def start(ns: str, log: Path, *cmd: str, cwd: Path | None = None) -> subprocess.Popen:
    """A long-running `cmd` in `ns`, its output in `log`."""
    return subprocess.Popen([IP, "netns", "exec", ns, *cmd], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            cwd=cwd, start_new_session=True)


def wait_listening(ns: str, ports: list[int], proc: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    """Until every port listens in `ns`; NetnsError if `proc` ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while True:
        out = run("ss", "-ltnH", ns=ns).stdout
        if all(f":{p} " in out for p in ports):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise NetnsError(f"nothing listens on {ports}: {log.read_text(errors='replace')[-500:]}")
        time.sleep(0.1)


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
