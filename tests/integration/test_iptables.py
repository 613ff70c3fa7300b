"""`fastproxy iptables` (SPEC §13), the pod's init step, in network namespaces this test
creates: the rules it writes through the real iptables-restore, what they capture (an
application's connection lands on the outbound listener, the proxy's own uid does not),
idempotence, --dry-run, --cleanup leaving everything else as it was, and the errors
without iptables or without NET_ADMIN. Needs root and `ip netns`; says so when it skips.
"""
from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fastproxy.intercept.netns import IP
from fastproxy.intercept.netns import run as sh
from support.namespaces import NEEDS_NAMESPACES

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = NEEDS_NAMESPACES


def fastproxy(ns: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return sh(sys.executable, "-m", "fastproxy", "iptables", *args, ns=ns, check=False, cwd=REPO_ROOT, **kw)


def nat(ns: str, family: int = 4) -> list[str]:
    """The nat table's chains and rules, without counters and comments."""
    out = sh("iptables-save" if family == 4 else "ip6tables-save", "-t", "nat", ns=ns).stdout
    return [line.split(" [")[0] if line.startswith(":") else line
            for line in out.splitlines() if line and not line.startswith("#")]


@pytest.fixture
def ns():
    name = f"fp-ipt-{uuid.uuid4().hex[:8]}"
    sh(IP, "netns", "add", name)
    try:
        sh(IP, "link", "set", "lo", "up", ns=name)
        # an interface and a default route: connections to any address leave "the pod"
        sh(IP, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1", ns=name)
        sh(IP, "addr", "add", "10.77.0.2/24", "dev", "eth0", ns=name)
        sh(IP, "link", "set", "eth0", "up", ns=name)
        sh(IP, "link", "set", "eth1", "up", ns=name)
        sh(IP, "route", "add", "default", "dev", "eth0", ns=name)
        yield name
    finally:
        sh(IP, "netns", "delete", name, check=False)


def test_dry_run_prints_both_families_and_changes_nothing(ns):
    before = nat(ns)
    done = fastproxy(ns, "--dry-run", "--proxy-uid", "1337", "--exclude-outbound-cidrs",
                     "169.254.169.254/32,fd00::/8", "--exclude-inbound-ports", "15020")
    assert done.returncode == 0, done.stderr
    v4, v6 = done.stdout.split("# ip6tables-restore")
    assert "-A FASTPROXY_OUTPUT -m owner --uid-owner 1337 -j RETURN" in v4
    assert "-A FASTPROXY_OUTPUT -d 169.254.169.254/32 -j RETURN" in v4 and "fd00::/8" not in v4
    assert "-A FASTPROXY_OUTPUT -d fd00::/8 -j RETURN" in v6 and "169.254" not in v6
    assert "-A FASTPROXY_INBOUND -p tcp --dport 15020 -j RETURN" in v4
    assert nat(ns) == before


def test_rules_are_written_once_however_often_applied_and_cleanup_restores_the_rest(ns):
    # someone else's rule and chain in the same table must survive us
    sh("iptables", "-t", "nat", "-N", "KEEP_ME", ns=ns)
    sh("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "KEEP_ME", ns=ns)
    before4, before6 = nat(ns), nat(ns, 6)
    for _ in range(2):
        done = fastproxy(ns, "--exclude-outbound-ports", "5432")
        assert done.returncode == 0, done.stderr
    rules = nat(ns)
    assert rules.count("-A OUTPUT -p tcp -j FASTPROXY_OUTPUT") == 1
    assert rules.count("-A PREROUTING -p tcp -j FASTPROXY_INBOUND") == 1
    assert "-A FASTPROXY_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN" in rules
    assert "-A FASTPROXY_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in rules
    assert "-A FASTPROXY_OUTPUT -d ::1/128 -j RETURN" in nat(ns, 6)
    done = fastproxy(ns, "--cleanup")
    assert done.returncode == 0, done.stderr
    assert (nat(ns), nat(ns, 6)) == (before4, before6)


def test_an_application_connection_lands_on_the_outbound_listener_and_the_proxys_does_not(ns):
    """A listener on 15001 in the namespace stands for the sidecar: a connection to
    10.96.0.10:9080 from root (the application) is redirected to it and knows where it
    was going; the same connection from uid 1337 (the sidecar) is not."""
    assert fastproxy(ns).returncode == 0
    probe = r"""
import os, socket, struct, sys
listener = socket.socket(); listener.bind(("127.0.0.1", 15001)); listener.listen()
listener.settimeout(2)
def attempt():
    c = socket.socket(); c.settimeout(2)
    try:
        c.connect(("10.96.0.10", 9080)); c.sendall(b"x")
    except OSError as e:
        return "not captured: " + type(e).__name__
    conn, _ = listener.accept()
    raw = conn.getsockopt(socket.SOL_IP, 80, 16)          # SO_ORIGINAL_DST
    port, ip = struct.unpack("!2xH4s8x", raw)
    return "captured, going to %s:%d" % (socket.inet_ntoa(ip), port)
print(attempt())
os.setuid(1337)
print(attempt())
"""
    out = sh(sys.executable, "-c", probe, ns=ns).stdout.splitlines()
    assert out[0] == "captured, going to 10.96.0.10:9080"
    assert out[1].startswith("not captured")


def test_clear_errors_without_iptables_and_without_net_admin(ns, tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    done = fastproxy(ns, env={"PATH": str(bare)})
    assert done.returncode == 1
    assert "iptables-save not found: install iptables" in done.stderr and "Traceback" not in done.stderr
    done = fastproxy(ns, uid="65534")
    assert done.returncode == 1
    assert "needs the NET_ADMIN capability" in done.stderr and "Traceback" not in done.stderr
