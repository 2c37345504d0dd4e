"""A signed run folder built through the real site and server code, without training; tampering helpers.

``signed_run`` (session scope, copied per test by ``run_copy``): two sites, three rounds each,
written by :class:`client.privacy.SitePrivacy` (ledger rows, signed heads, site keys) and
:class:`server.recorder.RunRecorder` (server ledger rows, recorded heads, ``ledger-head.json``):

* ``alpha``: σ=1.0, q=0.1, 10 steps per round; trains rounds 1-3; budget 10;
* ``beta``: σ=1.2, q=0.2, 5 steps per round; trains rounds 1-2, declines round 3 (budget between
  its ε after round 2 and after round 3).

Reported ε are dp-accounting's PLD + 0.005 (an upper bound like Opacus' PRV band) and its RDP:
the tampering tests are about integrity; recomputation is pinned in ``test_audit_recompute.py``.
"""

from __future__ import annotations

import dataclasses
import shutil
import types
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.config import PrivacySettings
from common.privacy.entry import GENESIS_HASH, LedgerEntry, entry_hash
from common.privacy.ledger import FIELDS, Ledger

FED, RUN, DELTA = "fed-audit", "run-1", 1e-5
SITES = {"alpha": (1.0, 0.1, 10), "beta": (1.2, 0.2, 5)}


def _privacy(site: str, budget: float, state: Path) -> Any:
    from client.privacy import SitePrivacy

    settings = PrivacySettings(enabled=True, target_epsilon=5.0, epsilon_budget=budget, delta=DELTA,
                               max_grad_norm=1.0, accountant="prv", secure_mode=False, max_records=1000)
    return SitePrivacy(site=site, dataset_id=f"{site}-data", settings=settings, num_examples=1000,
                       state_dir=state / site)


def _reply(site: str, sp: Any, event: str, rnd: int, eps: float, rdp: float, mech: tuple, head: dict) -> Any:
    from server.strategy import SiteReply

    sigma, q, steps = mech
    privacy = {"status": "trained" if event == "reserve" else "declined", "reason": "" if event == "reserve" else
               "lifetime budget", "site": site, "dataset-id": sp.dataset_id, "epsilon": eps, "epsilon-rdp": rdp,
               "accountant": "prv", "delta": DELTA, "target-epsilon": 5.0,
               "epsilon-budget": sp.settings.epsilon_budget, "noise-multiplier": sigma, "sample-rate": q,
               "steps": steps if event == "reserve" else 0, "max-grad-norm": 1.0, "secure-mode": False,
               "noise-seed": "secret"} | head
    return SiteReply(site, 1, privacy["status"], 100 if event == "reserve" else 0, privacy, {"num-examples": 1000.0})


def build_run(root: Path) -> Path:
    """Write the two-site, three-round signed run described in the module docstring; return the run folder."""
    from server.audit.recompute import cumulative_epsilons
    from server.recorder import RunRecorder

    out, state = root / "run", root / "run" / "sites"
    recorder = RunRecorder(out_dir=out, federation_id=FED, run_id=RUN, run_info={"scenario": "audit-test"})
    eps = {s: [cumulative_epsilons([("sample-level", *m)] * k, DELTA) for k in range(4)] for s, m in SITES.items()}
    budgets = {"alpha": 10.0, "beta": (eps["beta"][2][0] + eps["beta"][3][0]) / 2 + 0.005}
    sps = {s: _privacy(s, budgets[s], state) for s in SITES}
    for rnd in (1, 2, 3):
        replies = []
        for site, mech in SITES.items():
            sp = sps[site]
            ids = dict(site=site, round=rnd, federation_id=FED, run_id=RUN, dataset_id=sp.dataset_id,
                       noise_multiplier=mech[0], sample_rate=mech[1], max_grad_norm=1.0, delta=DELTA,
                       accountant="prv", target_epsilon=5.0)
            pld, rdp = eps[site][rnd]
            if pld + 0.005 <= budgets[site]:
                for event in ("reserve", "confirm"):
                    sp.ledger.append(LedgerEntry(event=event, steps=mech[2], epsilon=pld + 0.005, epsilon_rdp=rdp,
                                                 **ids))
                replies.append(_reply(site, sp, "reserve", rnd, pld + 0.005, rdp, mech,
                                      sp.sign_head(round=rnd, run_id=RUN)))
            else:
                before, before_rdp = eps[site][rnd - 1]
                sp.ledger.append(LedgerEntry(event="decline", steps=mech[2], epsilon=before + 0.005,
                                             epsilon_rdp=before_rdp, reason="lifetime budget", **ids))
                replies.append(_reply(site, sp, "decline", rnd, before + 0.005, before_rdp, mech,
                                      sp.sign_head(round=rnd, run_id=RUN)))
        recorder.on_train(rnd, replies)
    recorder.run_info["completed"] = True
    recorder.flush()
    return out


@pytest.fixture(scope="session")
def signed_run_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("signed-run"))


@pytest.fixture
def run_copy(signed_run_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the signed run: tamper with it freely."""
    dest = tmp_path / "run"
    shutil.copytree(signed_run_template, dest)
    return dest


# ------------------------------------------------------------------ what attackers do
def _drop_triggers(conn: sqlite3.Connection) -> None:
    for name in ("entries_no_update", "entries_no_delete", "heads_no_update", "heads_no_delete"):
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")


def raw_sql(path: Path, *statements: str) -> None:
    """Edit the file directly (no hash recomputation): drop the append-only triggers, run the statements."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    _drop_triggers(conn)
    for s in statements:
        conn.execute(s)
    conn.close()


def rewrite(path: Path, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    """Rewrite the ``entries`` table the way an attacker who knows the format would: apply ``change`` to
    the rows, then renumber them and recompute every prev_hash and hash so that the chain verifies."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    cols = ", ".join(f'"{f}"' for f in FIELDS)
    rows = [dict(zip(FIELDS, r)) for r in conn.execute(f"SELECT {cols} FROM entries ORDER BY seq")]
    rows = change(rows)
    prev, out = GENESIS_HASH, []
    for i, row in enumerate(rows, start=1):
        entry = LedgerEntry(**(row | {"seq": i, "prev_hash": prev, "hash": ""}))
        entry = dataclasses.replace(entry, hash=entry_hash(entry))
        out.append([getattr(entry, f) for f in FIELDS])
        prev = entry.hash
    _drop_triggers(conn)
    conn.execute("DELETE FROM entries")
    for values in out:
        conn.execute(f"INSERT INTO entries ({cols}) VALUES ({', '.join('?' for _ in FIELDS)})", values)
    conn.close()
    assert Ledger(path, read_only=True).verify() == []  # the forgery passes the chain check


def site_ledger(run: Path, site: str) -> Path:
    return run / "sites" / site / "ledger.sqlite"


def fails(report: Any, *, check: str | None = None, site: str | None = None) -> list[Any]:
    return [f for f in report.findings if f.level == "FAIL" and (check is None or f.check == check)
            and (site is None or f.site == site)]


@pytest.fixture
def attacker() -> types.SimpleNamespace:
    """The helpers above, for tests (conftest modules cannot be imported under --import-mode=importlib)."""
    return types.SimpleNamespace(raw_sql=raw_sql, rewrite=rewrite, site_ledger=site_ledger, fails=fails)
