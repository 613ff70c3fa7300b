"""A short run of every fuzz target (fuzz/targets.py) on hypothesis's bytes, plus the
findings of long runs as regression cases. `make fuzz` runs them long under atheris."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.targets import TARGETS

SHORT = settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))

# bytes shaped like what each target reads, so the short run gets past the first checks
SEEDS = {
    "hpack_decode": st.binary(max_size=200),
    "h2_frames": st.lists(st.tuples(st.integers(0, 40), st.integers(0, 12), st.integers(0, 255),
                                    st.integers(0, 5), st.binary(max_size=40)), max_size=6).map(
        lambda fs: b"".join(n.to_bytes(3, "big") + bytes([t, fl]) + s.to_bytes(4, "big") + p[:n].ljust(n, b"\0")
                            for n, t, fl, s, p in fs)),
    "h2_session": st.binary(max_size=300).map(lambda b: b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b),
    "http1_request": st.sampled_from([b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"POST /x HTTP/1.0\r\n\r\n"]).flatmap(
        lambda base: st.binary(max_size=20).map(lambda junk: base[:len(junk) % len(base)] + junk + base[len(junk) % len(base):])),
    "chunked": st.binary(max_size=100).map(lambda b: b"5\r\nhello\r\n" + b),
}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_short_fuzz_run(name):
    @SHORT
    @given(st.one_of(st.binary(max_size=500), SEEDS[name]))
    def run(data):
        TARGETS[name](data)
    run()


FINDINGS = Path(__file__).parent / "fuzz_findings"


@pytest.mark.parametrize("finding", sorted(p.name for p in FINDINGS.iterdir()))
def test_what_long_runs_found_stays_fixed(finding):
    """Inputs a long run once failed on, named TARGET-what."""
    TARGETS[finding.split("-", 1)[0]]((FINDINGS / finding).read_bytes())
