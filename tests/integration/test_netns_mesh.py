"""Issue 16's mesh in network namespaces (fastproxy.intercept.mesh, also `make mesh-demo`):
three pods on a bridge, each with an unmodified application, a fastproxy sidecar and
`fastproxy iptables`, and kube-proxy's DNAT of a service address. Every behaviour the
mesh shows is one assertion: calls through both sidecars, only TLS on the bridge (a raw
packet capture), the caller's SPIFFE id at the inbound sidecar, 403 for a pod outside
`allow`, a 90/10 split by destination, a circuit opening, a TCP echo and a server-first
banner passed through, a plain caller of a permissive pod, and --cleanup.
Needs root, `ip netns` and iptables; says so when it skips.
"""
from __future__ import annotations

import pytest

from fastproxy.intercept.mesh import Mesh, run_checks
from support.namespaces import NEEDS_CURL, NEEDS_NAMESPACES

pytestmark = [pytest.mark.timeout(120), *NEEDS_NAMESPACES, NEEDS_CURL]


@pytest.fixture(scope="module")
def results():
    mesh = Mesh()
    try:
        mesh.up()
        yield {what: (held, detail) for what, held, detail in run_checks(mesh)}
    finally:
        mesh.down()


@pytest.mark.parametrize("what", [
    "web -> reviews through both sidecars",
    "the inbound sidecar saw web's SPIFFE id",
    "a 90/10 split by destination",
    "only TLS crossed between the pods",
    "a pod outside allow gets 403",
    "the circuit opens after more than 3 failures",
    "a TCP echo passes through untouched",
    "a server-first banner passes through",
    "a permissive pod accepts a plain caller",
    "--cleanup restores the namespace",
])
def test_the_mesh_shows(results, what):
    held, detail = results[what]
    assert held, detail
