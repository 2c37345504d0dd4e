"""benchmarks/ledger_message.py stays runnable, and its "before" is the old code's transaction pattern.

The script undoes this code's ledger changes in place to time them side by side; the counts it prints per message
are what the code before them did (measured there: 5 write transactions, 17 connections), and what it does now.
"""

from __future__ import annotations

import re
import subprocess
import sys

from tests.benchmarks.scripts import REPO


def test_ledger_message_prints_both_styles_with_the_old_and_new_transaction_counts(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ledger_message.py"), "--messages", "2",
                           "--repeats", "1"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
        r"^(one-site|new-sites) .* (\d+ / \d+) +(\d+ / \d+)$", proc.stdout, re.MULTILINE)}
    assert rows == {"one-site": ("5 / 2", "17 / 11"), "new-sites": ("5 / 2", "17 / 12")}, proc.stdout
