"""The container image, measured (`python -m bench.image`, after `make image`): the size of
its root filesystem, the time from starting a sidecar in it to `/ready` 200 (certificate
files present), the idle sidecar's memory, and the same start on a read-only root
filesystem. Also the helpers tests/integration/test_image.py runs the image with.

Containers run the way this machine can run them (no container runtime works here):
`buildah run --isolation chroot` on the host network as the image's user; and, for the
read-only root filesystem, the image's root mounted read-only in a private mount
namespace (`unshare -m`) and entered with `chroot --userspec` as uid 1337. Both need root.

    make image && python -m bench.image [--runs 10]      # results/<timestamp>-image.md
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from bench.processes import free_port
from bench.procstat import tree_rss_bytes
from bench.report import dated_results_file

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("IMAGE", "localhost/fastproxy:latest")
CONFIG_DIR = "/etc/fastproxy"          # where the sidecar's files are mounted in the container


def unavailable() -> str | None:
    """Why images cannot be built and run here, or None."""
    if os.geteuid() != 0:
        return "building and running images with buildah needs root"
    missing = [tool for tool in ("buildah", "mmdebstrap", "unshare", "chroot") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install buildah mmdebstrap)"
    probe = subprocess.run(["buildah", "images", "--quiet"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"buildah does not work here: {probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else probe.returncode}"
    return None


def build(image: str = IMAGE) -> None:
    """`make image`'s script (deploy/image/build.sh); raises with its output on failure."""
    done = subprocess.run([str(ROOT / "deploy/image/build.sh")], capture_output=True, text=True,
                          env={**os.environ, "IMAGE": image.removeprefix("localhost/")})
    if done.returncode != 0:
        raise RuntimeError(f"image build failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


@contextmanager
def container(image: str = IMAGE):
    """A working container of `image` (buildah from), removed afterwards."""
    name = subprocess.run(["buildah", "from", "--quiet", "--pull-never", image], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        yield name
    finally:
        subprocess.run(["buildah", "umount", name], capture_output=True)
        subprocess.run(["buildah", "rm", name], capture_output=True)


def image_user(image: str = IMAGE) -> str:
    return subprocess.run(["buildah", "inspect", "--type", "image", "--format", "{{.OCIv1.Config.User}}", image],
                          check=True, capture_output=True, text=True).stdout.strip()


def rootfs_bytes(name: str) -> int:
    """The size of the container's root filesystem: every file once (hard links too)."""
    root = subprocess.run(["buildah", "mount", name], check=True, capture_output=True, text=True).stdout.strip()
    seen, total = set(), 0
    for directory, _, files in os.walk(root):
        for entry in files:
            st = os.lstat(os.path.join(directory, entry))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def run(name: str, config_dir: Path, args: list[str], *, read_only: bool = False, **popen) -> subprocess.Popen:
    """Starts `args` in the container with `config_dir` at /etc/fastproxy (read-only), as
    the image's user, on the host network; `read_only` makes the whole root read-only."""
    if not read_only:
        return subprocess.Popen(["buildah", "run", "--isolation", "chroot", "--network", "host",
                                 "-v", f"{config_dir}:{CONFIG_DIR}:ro", name, "--", *args], **popen)
    root = subprocess.run(["buildah", "mount", name], check=True, capture_output=True, text=True).stdout.strip()
    script = (f'set -e; r="{root}"; mount --bind "$r" "$r"; mount -t proc proc "$r/proc"; '
              f'mount --bind "{config_dir}" "$r{CONFIG_DIR}"; mount -o remount,bind,ro "$r"; '
              'PATH=/opt/fastproxy/bin:/usr/sbin:/usr/bin exec chroot --userspec=1337:1337 "$r" "$@"')
    return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *args],
                            **popen)


def sidecar_config(directory: Path, *, admin: int, outbound: int, inbound: int, upstream: str) -> None:
    """A sidecar's files in `directory`: fastproxy.toml and an identity from a new mesh CA
    (issued with the fastproxy on this machine), an outbound listener to `upstream` and an
    mTLS inbound one."""
    fastproxy = [sys.executable, "-m", "fastproxy"]
    subprocess.run([*fastproxy, "ca", "init", str(directory / "ca")], check=True, capture_output=True)
    subprocess.run([*fastproxy, "ca", "issue", str(directory / "ca"), "--id", "spiffe://mesh.local/ns/default/sa/web",
                    "--out", str(directory / "certs")], check=True, capture_output=True)
    shutil.rmtree(directory / "ca")                        # the container needs no CA key
    for path in (directory, directory / "certs/key.pem"):  # readable by uid 1337 (a test's own key)
        os.chmod(path, 0o755)
    (directory / "fastproxy.toml").write_text(f"""\
[proxy]
admin = "127.0.0.1:{admin}"
access_log = "off"

[identity]
id = "spiffe://mesh.local/ns/default/sa/web"
cert = "{CONFIG_DIR}/certs/cert.pem"
key = "{CONFIG_DIR}/certs/key.pem"
trust = "{CONFIG_DIR}/certs/trust.pem"

[[listener]]
name = "outbound"
bind = "127.0.0.1:{outbound}"
  [[listener.route]]
  cluster = "app"

[[listener]]
name = "inbound"
bind = "127.0.0.1:{inbound}"
tls = "mtls"
  [[listener.route]]
  cluster = "app"

[cluster.app]
endpoints = ["{upstream}"]
""")


def get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def until_ready(admin: int, proc: subprocess.Popen, deadline_s: float = 20.0) -> float:
    """Seconds until /ready answers 200 (polled every 5 ms); raises if the process ends or
    the deadline passes."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if proc.poll() is not None:
            said = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
            raise RuntimeError(f"the sidecar exited with {proc.returncode}: {said}")
        try:
            if get(f"http://127.0.0.1:{admin}/ready", timeout=0.5)[0] == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"/ready not 200 within {deadline_s:g}s")


def stop(proc: subprocess.Popen) -> int | None:
    proc.terminate()
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def rss_bytes() -> int:
    """The resident memory of the newest sidecar started from the image."""
    pid = subprocess.run(["pgrep", "-n", "-f", "/opt/fastproxy/bin/fastproxy run"], capture_output=True,
                         text=True).stdout.strip()
    return tree_rss_bytes([int(pid)]) if pid else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.image", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="starts measured per mode (default 10)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench/results")
    args = parser.parse_args(argv)
    why = unavailable()
    if why is None and subprocess.run(["buildah", "inspect", "--type", "image", IMAGE], capture_output=True).returncode:
        why = f"no image {IMAGE}: make image first"
    if why:
        print(f"bench.image: {why}", file=sys.stderr)
        return 1
    backend_port = free_port()
    backend = subprocess.Popen([sys.executable, "-m", "bench.builtin_backend", "--port", str(backend_port)], cwd=ROOT)
    lines = []
    try:
        with container() as name, tempfile.TemporaryDirectory(prefix="fastproxy-image-") as tmp:
            os.chmod(tmp, 0o755)
            size = rootfs_bytes(name)
            rows = []
            for read_only in (False, True):
                times, rss = [], 0
                for _ in range(args.runs):
                    admin, outbound, inbound = free_port(), free_port(), free_port()
                    work = Path(tempfile.mkdtemp(dir=tmp))
                    sidecar_config(work, admin=admin, outbound=outbound, inbound=inbound,
                                   upstream=f"127.0.0.1:{backend_port}")
                    proc = run(name, work, ["fastproxy", "run", "-c", f"{CONFIG_DIR}/fastproxy.toml"],
                               read_only=read_only, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    try:
                        times.append(until_ready(admin, proc))
                        status, _ = get(f"http://127.0.0.1:{outbound}/")
                        if status != 200:
                            raise RuntimeError(f"a proxied request answered {status}")
                        rss = rss_bytes()
                    finally:
                        stop(proc)
                rows.append((("read-only root" if read_only else "buildah run"), times, rss))
        lines.append(f"# fastproxy image ({IMAGE}), {time.strftime('%Y-%m-%d %H:%M')}\n")
        lines.append(f"root filesystem: {size / 1e6:.1f} MB (goal <= 150 MB); user {image_user()}\n")
        lines.append("| started with | runs | to /ready 200, median | max | idle RSS |")
        lines.append("|---|---|---|---|---|")
        for mode, times, rss in rows:
            lines.append(f"| {mode} | {len(times)} | {statistics.median(times) * 1000:.0f} ms | "
                         f"{max(times) * 1000:.0f} ms | {rss / 2**20:.1f} MiB |")
    finally:
        stop(backend)
    text = "\n".join(lines) + "\n"
    path = dated_results_file(args.results, "image")
    path.write_text(text)
    print(text + f"\n(written to {path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
