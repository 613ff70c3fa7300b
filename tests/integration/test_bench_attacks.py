"""`python -m bench.attacks` (issue 15) in a short run against fastproxy alone: it writes
the report, with a row per attack, and what it measured holds the protections' promises
(nothing reaches the application under rapid reset; memory stays within 64 MiB above
idle; the well-behaved client is served throughout). No speed is asserted.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def rows(markdown: str) -> dict[str, list[str]]:
    """attack -> the cells of fastproxy's row in its table."""
    found, attack = {}, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            attack = line[3:].strip()
        elif line.startswith("| fastproxy |") and attack:
            found[attack] = [cell.strip() for cell in line.strip("|").split("|")]
    return found


def test_a_short_attack_run_reports_each_attack_and_the_protections_hold(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench.attacks", "--time", "1", "--contender", "fastproxy",
         "--attack", "rapid-reset,slow-reader", "--results-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    (report,) = tmp_path.glob("*-attacks.md")
    table = rows(report.read_text())
    assert set(table) == {"none", "rapid-reset", "slow-reader"}
    # contender | connections | sent | upstream | CPU | memory | p99 | p99 x | client errors
    _, connections, _, upstream, _, memory, _, _, errors = table["rapid-reset"]
    assert int(connections.replace(",", "")) > 1          # the proxy closed the attacker's connections
    assert upstream == "0"
    for attack, cells in table.items():
        assert float(cells[5].split()[0]) <= 64, f"{attack}: {cells[5]} above idle"
        assert re.fullmatch(r"0 of [\d,]+", cells[8]), f"{attack}: client errors {cells[8]}"
