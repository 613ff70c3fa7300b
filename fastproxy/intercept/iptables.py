"""`fastproxy iptables`: the pod's init step (SPEC §13). It captures the pod's TCP
traffic for the sidecar with nat rules in the current network namespace, written through
the real `iptables-restore` / `ip6tables-restore` in one transaction per family:

  OUTPUT      -> FASTPROXY_OUTPUT: connections the application opens, except the
                 proxy's own (its uid), loopback destinations, and the excluded ports and
                 CIDRs, go to FASTPROXY_REDIRECT (the outbound listener);
  PREROUTING  -> FASTPROXY_INBOUND: connections arriving at the pod, except the excluded
                 ports, go to FASTPROXY_IN_REDIRECT (the inbound listener).

Applying is idempotent (our previous rules are removed in the same transaction) and
`--cleanup` removes exactly what we added: the jumps from the built-in chains and our
chains, nothing else. `--dry-run` prints the iptables-restore input instead.
"""
from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass, field

PREFIX = "FASTPROXY_"
CHAINS = ("FASTPROXY_INBOUND", "FASTPROXY_IN_REDIRECT", "FASTPROXY_OUTPUT", "FASTPROXY_REDIRECT")
FAMILIES = {4: ("iptables-save", "iptables-restore"), 6: ("ip6tables-save", "ip6tables-restore")}
LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}
# the sidecar's uid and listeners, by default (the CLI and `fastproxy inject` use them)
PROXY_UID = 1337
INBOUND_PORT = 15006
OUTBOUND_PORT = 15001


class InterceptError(Exception):
    """Why the rules could not be written (one line, for the operator)."""


@dataclass
class Capture:
    proxy_uid: int = PROXY_UID
    inbound_port: int = INBOUND_PORT
    outbound_port: int = OUTBOUND_PORT
    exclude_inbound_ports: list[int] = field(default_factory=list)
    exclude_outbound_ports: list[int] = field(default_factory=list)
    exclude_outbound_cidrs: list[str] = field(default_factory=list)

    def rules(self, family: int) -> list[str]:
        """Our chains and rules for one address family, as iptables-restore lines."""
        lines = [f":{chain} - [0:0]" for chain in CHAINS]
        lines += [f"-A FASTPROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports {self.inbound_port}",
                  f"-A FASTPROXY_REDIRECT -p tcp -j REDIRECT --to-ports {self.outbound_port}",
                  "-A PREROUTING -p tcp -j FASTPROXY_INBOUND",
                  "-A OUTPUT -p tcp -j FASTPROXY_OUTPUT"]
        lines += [f"-A FASTPROXY_INBOUND -p tcp --dport {port} -j RETURN" for port in self.exclude_inbound_ports]
        lines.append("-A FASTPROXY_INBOUND -p tcp -j FASTPROXY_IN_REDIRECT")
        lines += [f"-A FASTPROXY_OUTPUT -m owner --uid-owner {self.proxy_uid} -j RETURN",
                  f"-A FASTPROXY_OUTPUT -d {LOOPBACK[family]} -j RETURN"]
        lines += [f"-A FASTPROXY_OUTPUT -p tcp --dport {port} -j RETURN" for port in self.exclude_outbound_ports]
        lines += [f"-A FASTPROXY_OUTPUT -d {cidr} -j RETURN" for cidr in self.exclude_outbound_cidrs
                  if ipaddress.ip_network(cidr).version == family]
        lines.append("-A FASTPROXY_OUTPUT -j FASTPROXY_REDIRECT")
        return lines


def removal(saved: str) -> list[str]:
    """iptables-restore lines (nat table) that remove what an earlier run added, read
    from `iptables-save -t nat`: our jumps in the built-in chains, then our chains."""
    jumps, ours = [], []
    for line in saved.splitlines():
        if line.startswith(":" + PREFIX):
            ours.append(line[1:].split()[0])
        elif line.startswith("-A ") and f"-j {PREFIX}" in line and not line.split()[1].startswith(PREFIX):
            jumps.append("-D " + line[3:])
    return jumps + [f"-F {chain}" for chain in ours] + [f"-X {chain}" for chain in ours]


def restore_input(lines: list[str]) -> str:
    return "*nat\n" + "".join(line + "\n" for line in lines) + "COMMIT\n"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise InterceptError(f"{name} not found: install iptables (Debian: apt-get install iptables)")
    return path


def _run(cmd: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        why = why[-1] if why else f"exit code {done.returncode}"
        hint = ""
        if "ermission denied" in why or "you must be root" in why:
            hint = " (this step needs the NET_ADMIN capability in the pod's network namespace)"
        raise InterceptError(f"{' '.join(cmd[:2])} failed: {why}{hint}")
    return done.stdout


def plan(capture: Capture | None, family: int) -> str:
    """The iptables-restore input for one family: our old rules out, and (unless this is
    a cleanup) the new ones in."""
    save, _ = FAMILIES[family]
    lines = removal(_run([_tool(save), "-t", "nat"]))
    if capture is not None:
        lines += capture.rules(family)
    return restore_input(lines)


def apply(capture: Capture | None, dry_run: bool, families=(4, 6)) -> str:
    """Write (or, with capture None, remove) the rules; returns what was (or would be)
    given to iptables-restore, per family."""
    shown = []
    for family in families:
        if dry_run and capture is not None:
            text = restore_input(capture.rules(family))     # what would be added
        else:
            text = plan(capture, family)
        shown.append(f"# {FAMILIES[family][1]}\n{text}")
        if not dry_run:
            _run([_tool(FAMILIES[family][1]), "--noflush"], stdin=text)
    return "".join(shown)
