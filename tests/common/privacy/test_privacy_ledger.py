"""The append-only, hash-chained SQLite ledger: round trips, tamper detection, accounting."""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from common.privacy.accountant import epsilon_from_history
from common.privacy.entry import GENESIS_HASH, LedgerEntry, canonical_json, entry_hash
from common.privacy.ledger import Ledger, LedgerIntegrityError


def reserve(site: str = "cleveland", round: int = 1, sigma: float = 1.1, q: float = 0.02, steps: int = 7,
            **kw) -> LedgerEntry:
    fields = dict(site=site, round=round, event="reserve", federation_id="fed", run_id="run-1", dataset_id="d1",
                  noise_multiplier=sigma, sample_rate=q, steps=steps, max_grad_norm=1.0, delta=3e-4,
                  accountant="prv", epsilon=0.5 * round, epsilon_rdp=0.6 * round, target_epsilon=2.0) | kw
    return LedgerEntry(**fields)


def filled(path: Path) -> Ledger:
    """Five rows: cleveland reserve/confirm r1, hungary reserve r1, cleveland reserve r2, a decline."""
    ledger = Ledger(path)
    ledger.append(reserve(round=1))
    ledger.append(reserve(round=1, event="confirm"))
    ledger.append(reserve(site="hungary", round=1, sigma=0.9))
    ledger.append(reserve(round=2, sigma=1.3))
    ledger.append(reserve(round=3, event="decline", reason="lifetime budget"))
    return ledger


def tamper(path: Path, *statements: str) -> None:
    """What an attacker with file access can do: drop the append-only triggers and rewrite rows."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("DROP TRIGGER entries_no_delete")
    for s in statements:
        conn.execute(s)
    conn.close()


# ---------------------------------------------------------------- writing
def test_append_assigns_the_chain_and_entries_round_trip_exactly(tmp_path: Path) -> None:
    # Prepare / Execute
    ledger = Ledger(tmp_path / "a" / "b" / "ledger.sqlite")  # parent folders created
    written = [ledger.append(reserve(round=r, sigma=1.1 + r / 3, q=1 / 7)) for r in (1, 2, 3)]
    # Assert
    assert [e.seq for e in written] == [1, 2, 3]
    assert written[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in written[1:]] == [e.hash for e in written[:-1]]
    assert all(e.hash == entry_hash(e) and len(e.hash) == 64 for e in written)
    ts = datetime.fromisoformat(written[0].ts)
    assert ts.tzinfo is not None and ts.utcoffset() == timezone.utc.utcoffset(None)
    assert Ledger(ledger.path).entries() == written  # reopened: floats and all fields bit-exact
    assert ledger.head() == (3, written[-1].hash)
    assert ledger.verify() == []


def test_head_of_an_empty_ledger(tmp_path: Path) -> None:
    assert Ledger(tmp_path / "l.sqlite").head() == (0, GENESIS_HASH)


def test_append_refuses_an_entry_with_chain_fields(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    first = ledger.append(reserve())
    with pytest.raises(ValueError, match="assigns seq"):
        ledger.append(first)


def test_update_and_delete_are_refused_by_the_file_itself(tmp_path: Path) -> None:
    ledger = filled(tmp_path / "l.sqlite")
    conn = sqlite3.connect(str(ledger.path))
    with pytest.raises(sqlite3.DatabaseError, match="append-only: UPDATE"):
        conn.execute("UPDATE entries SET epsilon = 0 WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only: DELETE"):
        conn.execute("DELETE FROM entries WHERE seq = 1")
    conn.close()


def test_a_foreign_sqlite_file_is_not_taken_for_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(str(path))
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('kind', 'something-else')")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerIntegrityError, match="something-else"):
        Ledger(path)


def _append_many(path: str, site: str, n: int) -> None:
    ledger = Ledger(Path(path))
    for r in range(n):
        ledger.append(reserve(site=site, round=r + 1))


def test_concurrent_writers_each_get_their_own_seq(tmp_path: Path) -> None:
    # Prepare: threads and forked processes append to one file at once. The processes are forked
    # first: SQLite state must not be mid-operation in another thread at fork() time.
    path = tmp_path / "l.sqlite"
    Ledger(path)
    threads = [threading.Thread(target=_append_many, args=(str(path), f"t{i}", 15)) for i in range(3)]
    procs = [multiprocessing.get_context("fork").Process(target=_append_many, args=(str(path), f"p{i}", 15))
             for i in range(2)]
    # Execute
    for w in (*procs, *threads):
        w.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    # Assert: a gap-free chain with every row
    ledger = Ledger(path)
    rows = ledger.entries()
    assert [e.seq for e in rows] == list(range(1, 76))
    assert sorted(e.site for e in rows) == sorted(f"{w}{i}" for w in "tp" for i in range(3 if w == "t" else 2)
                                                  for _ in range(15))
    assert ledger.verify() == []


# ------------------------------------------------------------ tampering
def test_an_edited_field_is_detected(tmp_path: Path) -> None:
    ledger = filled(tmp_path / "l.sqlite")
    tamper(ledger.path, "UPDATE entries SET noise_multiplier = 5.0 WHERE seq = 4")  # pretend more noise
    problems = ledger.verify()
    assert len(problems) == 1 and "seq=4" in problems[0] and "'cleveland'" in problems[0] and "round=2" in problems[0]
    assert "hash does not match" in problems[0]
    with pytest.raises(LedgerIntegrityError, match="refusing to account"):
        ledger.mechanism_history(site="cleveland")
    with pytest.raises(LedgerIntegrityError):
        ledger.spent(site="cleveland", delta=3e-4)


def test_a_deleted_row_is_detected(tmp_path: Path) -> None:
    ledger = filled(tmp_path / "l.sqlite")
    tamper(ledger.path, "DELETE FROM entries WHERE seq = 3")
    problems = ledger.verify()
    assert any("seq=4" in p and "expected seq 3" in p for p in problems)
    assert any("seq=4" in p and "prev_hash" in p for p in problems)


def test_reordered_rows_are_detected(tmp_path: Path) -> None:
    # rows 2 and 4 swap places (their seq numbers are swapped; everything else moves with the row)
    ledger = filled(tmp_path / "l.sqlite")
    tamper(ledger.path,
           "UPDATE entries SET seq = 99 WHERE seq = 2",
           "UPDATE entries SET seq = 2 WHERE seq = 4",
           "UPDATE entries SET seq = 4 WHERE seq = 99")
    problems = ledger.verify()
    assert any(p.startswith("seq=2") and "hash does not match" in p for p in problems)
    assert any(p.startswith("seq=4") and "hash does not match" in p for p in problems)
    assert any(p.startswith("seq=3") and "prev_hash" in p for p in problems)


def test_a_forged_row_with_a_bad_hash_is_detected(tmp_path: Path) -> None:
    ledger = filled(tmp_path / "l.sqlite")
    _, head_hash = ledger.head()
    tamper(ledger.path,
           "INSERT INTO entries (seq, ts, site, round, event, federation_id, run_id, dataset_id, noise_multiplier, "
           "sample_rate, steps, max_grad_norm, delta, accountant, epsilon, epsilon_rdp, target_epsilon, reason, "
           "prev_hash, hash) SELECT 6, ts, site, 9, event, federation_id, run_id, dataset_id, noise_multiplier, "
           "sample_rate, steps, max_grad_norm, delta, accountant, epsilon, epsilon_rdp, target_epsilon, reason, "
           f"'{head_hash}', '{'ab' * 32}' FROM entries WHERE seq = 1")
    problems = ledger.verify()
    assert problems == [p for p in problems if p.startswith("seq=6 (site='cleveland', round=9)")] and problems


def test_a_row_with_a_wrongly_typed_value_is_reported_not_crashed(tmp_path: Path) -> None:
    ledger = filled(tmp_path / "l.sqlite")
    tamper(ledger.path, "UPDATE entries SET epsilon = 'zero' WHERE seq = 1")
    problems = ledger.verify()
    assert any("seq=1" in p and "not a valid ledger entry" in p for p in problems)
    with pytest.raises(LedgerIntegrityError, match="seq=1"):
        ledger.entries()


# ------------------------------------------------------------ accounting
def test_mechanism_history_counts_every_reservation_of_the_site_in_order(tmp_path: Path) -> None:
    ledger = filled(tmp_path / "l.sqlite")
    ledger.append(reserve(round=4, sigma=2.0, dataset_id="d2"))
    ledger.append(LedgerEntry(site="cleveland", round=4, event="trained", noise_multiplier=2.0, sample_rate=0.1,
                              steps=7))  # a server row: not a reservation
    assert ledger.mechanism_history(site="cleveland") == [(1.1, 0.02, 7), (1.3, 0.02, 7), (2.0, 0.02, 7)]
    assert ledger.mechanism_history(site="cleveland", dataset_id="d2") == [(2.0, 0.02, 7)]
    assert ledger.mechanism_history(site="hungary") == [(0.9, 0.02, 7)]
    assert ledger.mechanism_history(site="nowhere") == []
    expected = epsilon_from_history([(1.1, 0.02, 7), (1.3, 0.02, 7), (2.0, 0.02, 7)], delta=3e-4, accountant="rdp")
    assert ledger.spent(site="cleveland", delta=3e-4, accountant="rdp") == expected
    assert ledger.spent(site="nowhere", delta=3e-4) == 0.0


# ------------------------------------------------------------ the entry
def test_canonical_json_and_hash_are_pinned() -> None:
    # Pinned format: changing it breaks every existing ledger (bump SCHEMA_VERSION if you must).
    e = LedgerEntry(site="va_long_beach", round=2, event="reserve", noise_multiplier=1, sample_rate=1 / 7, steps=14,
                    delta=4e-4, accountant="prv", epsilon=0.1 + 0.2, seq=5, ts="2026-11-28T04:00:00.000001+00:00",
                    prev_hash="0" * 64, hash="ignored")
    expected = (
        '{"accountant":"prv","dataset_id":"","delta":0.0004,"epsilon":0.30000000000000004,"epsilon_rdp":null,'
        '"event":"reserve","federation_id":"","max_grad_norm":null,"noise_multiplier":1.0,'
        '"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","reason":"",'
        '"round":2,"run_id":"","sample_rate":0.14285714285714285,"seq":5,"site":"va_long_beach","steps":14,'
        '"target_epsilon":null,"ts":"2026-11-28T04:00:00.000001+00:00"}')
    assert canonical_json(e) == expected
    assert entry_hash(e) == hashlib.sha256(expected.encode()).hexdigest()
    assert entry_hash(e) == "8d936b765b0d598d82d7d970b93d1324b56729e2ebae29167f9046da5344f447"


def test_infinite_epsilon_round_trips_and_nan_is_refused(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    e = ledger.append(LedgerEntry(site="s", round=1, event="failed", epsilon=math.inf, reason="é ünïcode"))
    assert ledger.entries() == [e] and ledger.verify() == []
    with pytest.raises(ValueError, match="not NaN"):
        LedgerEntry(site="s", round=1, event="failed", epsilon=math.nan)


@pytest.mark.parametrize("kw, match", [
    (dict(event="spent"), "expected one of"),
    (dict(noise_multiplier=None), r"needs \['noise_multiplier'\]"),
    (dict(steps=0), r"needs \['steps'\]"),
    (dict(accountant="gdp"), "a reserve row needs one of"),
    (dict(noise_multiplier=0.0), "σ must be finite and > 0"),
    (dict(sample_rate=1.5), r"q must be in \(0, 1\]"),
    (dict(delta=1.0), r"δ must be in \(0, 1\)"),
    (dict(epsilon=-0.1), "ε must be >= 0"),
    (dict(round=-1), "must be >= 0"),
    (dict(site=""), "must be non-empty"),
    (dict(steps=True), "must be an int"),
    (dict(site=3), "must be a str"),
])
def test_invalid_entries_say_why(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        reserve(**kw)


def test_server_rows_need_no_mechanism() -> None:
    e = LedgerEntry(site="s", round=1, event="failed", reason="")
    assert e.noise_multiplier is None and e.steps == 0
