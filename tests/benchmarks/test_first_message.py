"""benchmarks/first_message.py stays runnable: one fresh process answers a real train message and the script prints
its timings and where its imports go (numbers not judged; which modules the message needs is)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.benchmarks.scripts import REPO


@pytest.mark.slow
def test_first_message_prints_the_import_table_for_a_tabular_site():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "first_message.py"), "--repeats", "1",
                           "--site", "3"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[1].split()[:4] == ["tree", "import", "client.app", "first"]
    assert lines[2].split()[0].endswith(REPO.name) and len(lines[2].split()) == 13  # 4 x "median / fastest"
    heaviest = lines[lines.index(f"{REPO}: heaviest top-level imports (cumulative ms, median)") + 1]
    assert "client.app" in heaviest and "opacus" in heaviest  # Opacus is first imported by the message
    loaded = lines[-1].split(": ", 1)[1].split(", ")
    # a DP-SGD message needs these (torch.optim imports torch._dynamo); a tabular site needs no image library
    assert {"torch", "opacus", "scipy", "torch._dynamo", "pandas"} <= set(loaded) and "PIL" not in loaded
