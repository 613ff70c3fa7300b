"""What the tests in network namespaces need, as skip marks that say why they skip."""
from __future__ import annotations

import os
import shutil

import pytest

NEEDS_NAMESPACES = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="`ip` (iproute2) is not installed"),
    pytest.mark.skipif(shutil.which("iptables-restore") is None,
                       reason="iptables is not installed (apt-get install iptables; .ci/run installs it)"),
]
NEEDS_CURL = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
