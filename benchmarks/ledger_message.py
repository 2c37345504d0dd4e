"""A site's ledger work per train message, before and after issue 15's cut, side by side in one process.

    .venv/bin/python benchmarks/ledger_message.py [--messages 10] [--repeats 5]

The message is what ``client/app.py`` and ``client/round.py`` ask of the ledger in a DP round, without training:
under the site's lock, the reply cache's look-up, ``SitePrivacy`` (the guard's check, the ledger's open), the
plan, the reservation, the confirmation, the report's reads and the signed head (with its mark file).

``before`` is this code with its changes undone in place (both run in one process, batches alternating): every
``Ledger(path)`` runs the schema's write transaction; the confirmation and the signed head are two transactions;
writes skip the in-transaction schema check; the guard reads the ledger five times and verifies every head's
signature again; the plan reads "released without DP" twice. Each batch counts its write transactions (``BEGIN
IMMEDIATE``) and connections per message: the old code's were 5 and 17 (measured there); now 2 and 11 (12 for
a site new to the process). Shapes:

* ``one-site``: messages to one site (the process already knows its ledger, as an actor that meets a site again);
* ``new-sites``: one message to each of N sites that trained once before and that the process has not opened
  (as a Ray actor meets most sites of a 1000-site run: the per-process memo is emptied first).

RDP accountant (accounting is not measured); SQLite's durable settings (rollback journal, synchronous=FULL) in both.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
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
from common.privacy import ledger_guard, ledger_schema
from common.privacy.ledger import Ledger
from common.privacy.ledger_guard import site_lock
from common.privacy.signing import verify_head
from common.storage import create_private_file

SITE = "s"
SETTINGS = PrivacySettings(enabled=True, target_epsilon=5.0, epsilon_budget=1e9, delta=1e-5, max_grad_norm=1.0,
                           accountant="rdp", secure_mode=False, max_records=1000)
COUNTS = {"writes": 0, "connections": 0}  # BEGIN IMMEDIATE statements and connections seen
ROUNDS = itertools.count(2)


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
    """Undo this code's changes in place (see the module docstring)."""
    init = Ledger.__init__

    def old_init(self, path, *, read_only=False):  # as it was: a write transaction at every open
        if read_only:
            return init(self, path, read_only=True)
        self.path, self.read_only = Path(path), False
        create_private_file(self.path)  # its folder exists: the site's lock file is in it
        os.chmod(self.path, 0o600)
        with self._transaction("IMMEDIATE") as conn:
            ledger_schema.ensure_schema(conn, self.path)

    def append_then_sign_later(self, entry):
        return self.ledger.append(entry)  # the report's sign_head signs in its own transaction

    def old_history(self):  # the plan read "unbounded" twice
        return [] if self.unbounded() else self.ledger.mechanism_history(site=self.site)

    def five_reads(self):  # the guard's reads after the open's (a benchmark's ledger has no problems)
        return self.verify(), self.verify_heads(), self.entries(), self.heads()

    with mock.patch.object(Ledger, "__init__", old_init), \
            mock.patch.object(Ledger, "_write", lambda self: self._transaction("IMMEDIATE")), \
            mock.patch.object(SitePrivacy, "_append_signed", append_then_sign_later), \
            mock.patch.object(SitePrivacy, "history", old_history), \
            mock.patch.object(SitePrivacy, "_history_and_unbounded", lambda sp: (sp.history(), sp.unbounded())), \
            mock.patch.object(Ledger, "verified", five_reads), \
            mock.patch.object(ledger_guard, "_verified_head", verify_head):
        yield


def _batch(style: str, shape: str, root: Path, n: int) -> tuple[float, ...]:
    """Wall ms, CPU ms, write transactions and connections per message of one batch."""
    if shape == "one-site":  # rounds go on from the last batch's
        if not (root / "one").exists():
            _message(root / "one", 1)
        states = [(root / "one", next(ROUNDS)) for _ in range(n)]
    else:
        states = [(root / f"site-{i}", 2) for i in range(n)]
        for state, _ in states:
            _message(state, 1)
        ledger_schema._KNOWN.clear()  # trained "in another process": nothing known of these ledgers
    before = dict(COUNTS)
    with _before() if style == "before" else contextlib.nullcontext():
        t0, c0 = time.perf_counter(), time.process_time()
        for state, rnd in states:
            _message(state, rnd)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return (1000 * seconds / n, 1000 * cpu / n, *((COUNTS[k] - before[k]) / n for k in ("writes", "connections")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10, help="messages per batch")
    ap.add_argument("--repeats", type=int, default=5, help="batches per (style, shape), alternating")
    args, real_connect = ap.parse_args(), sqlite3.connect

    def counting_connect(*a, **k):
        conn = real_connect(*a, **k)
        COUNTS["connections"] += 1
        conn.set_trace_callback(lambda s: COUNTS.__setitem__("writes", COUNTS["writes"] + s.startswith("BEGIN IMM")))
        return conn

    sqlite3.connect = counting_connect
    results: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        for rep in range(args.repeats):
            for shape in ("one-site", "new-sites"):
                for style in (("before", "after") if rep % 2 == 0 else ("after", "before")):
                    root = Path(tmp) / f"{style}-{shape}" / (str(rep) if shape == "new-sites" else "")
                    results.setdefault((shape, style), []).append(_batch(style, shape, root, args.messages))
    print(f"ledger work per DP train message (median of {args.repeats} batches of {args.messages}; "
          f"load {os.getloadavg()[0]:.1f}; {sqlite3.sqlite_version}; wall includes the fsyncs)")
    print(f"{'shape':10s} {'wall ms':>17s} {'after/before':>12s} {'CPU ms':>15s} {'after/before':>12s} "
          f"{'writes':>7s} {'connections':>11s}   (before / after, a message)")
    for shape in ("one-site", "new-sites"):
        (bw, bc, bn, bk), (aw, ac, an, ak) = ([statistics.median(x) for x in zip(*results[(shape, s)])]
                                              for s in ("before", "after"))
        print(f"{shape:10s} {bw:8.2f} / {aw:6.2f} {aw / bw:11.2f}x {bc:6.2f} / {ac:6.2f} {ac / bc:11.2f}x "
              f"{bn:3.0f} / {an:.0f} {bk:6.0f} / {ak:.0f}")

if __name__ == "__main__":
    main()
