"""A site's ledger work per train message, before and after issue 15's cut, side by side in one process.

    .venv/bin/python benchmarks/ledger_message.py [--messages 10] [--repeats 5]

The message is what ``client/app.py`` and ``client/round.py`` ask of the ledger in a DP round, with no training
in between: under the site's lock, the reply cache's look-up, ``SitePrivacy`` (the guard's check, the ledger's
open), the plan, the reservation, the confirmation, the report's reads and the signed head (with its mark file).

``before`` is this code with the three changes undone in place (so both run in one process, batches alternating):
every ``Ledger(path)`` runs the schema's write transaction again, as it did; the confirmation and the signed head
are two transactions (``append``, then the report's ``sign_head``); writes skip the in-transaction schema check.
Each batch counts its SQLite write transactions (``BEGIN IMMEDIATE``) per message, so the emulation is checked
against what the old code did (5 a message; after: 2). Shapes:

* ``one-site``: messages to one site (the process already knows its ledger, as an actor that meets a site again);
* ``new-sites``: one message to each of N sites that trained once before and that the process has not opened
  (as a Ray actor meets most sites of a 1000-site run: the per-process memo is emptied first).

The accountant is RDP (accounting is not what is measured). SQLite's durable settings are the same in both
(rollback journal, synchronous=FULL): the fsyncs are real, so run it on the file system of the sites' state.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

from client.privacy import SitePrivacy
from client.replay import ReplayCache
from common.config import PrivacySettings
from common.privacy import ledger_schema
from common.privacy.ledger import Ledger
from common.privacy.ledger_guard import site_lock

SITE = "s"
SETTINGS = PrivacySettings(enabled=True, target_epsilon=5.0, epsilon_budget=1e9, delta=1e-5, max_grad_norm=1.0,
                           accountant="rdp", secure_mode=False, max_records=1000)
WRITES = [0]  # BEGIN IMMEDIATE statements seen


def _message(state: Path, rnd: int) -> None:
    ids = dict(round=rnd, federation_id="f", run_id="r")
    with site_lock(state):
        ReplayCache(state, site=SITE).get("f", rnd, "0" * 64)
        sp = SitePrivacy(site=SITE, dataset_id="d", settings=SETTINGS, num_examples=1000, state_dir=state)
        plan = sp.reserve(sp.plan(sample_rate=0.1, steps=10, planned_steps=100), **ids)
        sp.confirm(plan, **ids)
        sp.history()  # client/round.py's _report: the history, the signed head, the rounds trained
        sp.sign_head(round=rnd, run_id="r")
        sp.rounds_trained()


@contextlib.contextmanager
def _before():
    """Undo the three changes in place (see the module docstring)."""
    init = Ledger.__init__

    def init_then_schema_transaction(self, path, *, read_only=False):
        init(self, path, read_only=read_only)
        if not read_only:
            with self._transaction("IMMEDIATE") as conn:
                ledger_schema.ensure_schema(conn, self.path)

    def append_then_sign_later(self, entry):
        return self.ledger.append(entry)  # the report's sign_head signs in its own transaction

    with mock.patch.object(Ledger, "__init__", init_then_schema_transaction), \
            mock.patch.object(Ledger, "_write", lambda self: self._transaction("IMMEDIATE")), \
            mock.patch.object(SitePrivacy, "_append_signed", append_then_sign_later):
        yield


def _batch(style: str, shape: str, root: Path, n: int) -> tuple[float, float]:
    """ms and write transactions per message of one batch."""
    if shape == "one-site":
        states = [(root / "one", r) for r in range(2, n + 2)]
        if not (root / "one").exists():
            _message(root / "one", 1)
    else:
        states = [(root / f"site-{i}", 2) for i in range(n)]
        for state, _ in states:
            _message(state, 1)
        ledger_schema._KNOWN.clear()  # trained "in another process": nothing known of these ledgers
    writes0 = WRITES[0]
    with _before() if style == "before" else contextlib.nullcontext():
        t0 = time.perf_counter()
        for state, rnd in states:
            _message(state, rnd)
        seconds = time.perf_counter() - t0
    return 1000 * seconds / n, (WRITES[0] - writes0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10, help="messages per batch")
    ap.add_argument("--repeats", type=int, default=5, help="batches per (style, shape), alternating")
    args = ap.parse_args()
    real_connect = sqlite3.connect

    def counting_connect(*a, **k):
        conn = real_connect(*a, **k)
        conn.set_trace_callback(lambda s: WRITES.__setitem__(0, WRITES[0] + s.startswith("BEGIN IMMEDIATE")))
        return conn

    sqlite3.connect = counting_connect
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        for rep in range(args.repeats):
            for shape in ("one-site", "new-sites"):
                for style in (("before", "after") if rep % 2 == 0 else ("after", "before")):
                    root = Path(tmp) / f"{style}-{shape}" / (str(rep) if shape == "new-sites" else "")
                    results.setdefault((shape, style), []).append(_batch(style, shape, root, args.messages))
    print(f"ledger work per DP train message (median of {args.repeats} batches of {args.messages}; "
          f"load {os.getloadavg()[0]:.1f}; {sqlite3.sqlite_version})")
    print(f"{'shape':10s} {'before ms':>10s} {'after ms':>10s} {'after/before':>13s} {'write txns before/after':>24s}")
    for shape in ("one-site", "new-sites"):
        (b_ms, b_w), (a_ms, a_w) = ([statistics.median(x) for x in zip(*results[(shape, s)])]
                                    for s in ("before", "after"))
        print(f"{shape:10s} {b_ms:10.2f} {a_ms:10.2f} {a_ms / b_ms:12.2f}x {b_w:14.0f} / {a_w:.0f}")


if __name__ == "__main__":
    main()
